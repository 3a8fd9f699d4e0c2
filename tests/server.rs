//! The server as a whole: many transfers at once, the I/O backends (io_uring by default; each
//! by flag, epoll by environment; what happens where io_uring is blocked), one main socket per
//! shard, and a graceful stop.

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ringtftp::packet::Mode as WireMode;

use crate::util::raw::{self, Peer};
use crate::util::{
    client, fetch_atftp, fetch_busybox, fetch_curl, fetch_tftp_hpa, pattern, sha256, sha256_file,
    write_file, Backend, Daemon, Mode, TempDir, ATFTP, BUSYBOX, CURL, TFTP_HPA,
};

// Many transfers at once, the backend asked for and a graceful stop are each executor's own.
backends!(
    two_hundred_concurrent_transfers_are_byte_exact,
    the_backend_asked_for_is_named_and_serves_with_a_main_socket_per_shard,
    sigterm_lets_a_running_transfer_finish_and_refuses_new_ones,
);

fn two_hundred_concurrent_transfers_are_byte_exact(backend: Backend) {
    // Kept apart from the 10 000-client test, whose clients run on 1 s timers.
    let _alone = crate::util::exclusive();
    const TRANSFERS: usize = 200;
    const FILES: usize = 10;
    let root = TempDir::new(&format!("two_hundred_concurrent_transfers-{backend}"));
    // 64 KiB to 1 MiB, none a multiple of any block size.
    let files: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..FILES)
            .map(|i| {
                let len = (64 << 10) + i * ((1 << 20) - (64 << 10)) / (FILES - 1) + 7 * i;
                let bytes = pattern(len, 1000 + i as u64);
                write_file(root.path(), &format!("f{i}"), &bytes);
                bytes
            })
            .collect(),
    );
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    let addr = daemon.addr();
    let start_line = Arc::new(Barrier::new(TRANSFERS));
    let start = Instant::now();
    let threads: Vec<_> = (0..TRANSFERS)
        .map(|t| {
            let (files, start_line) = (files.clone(), start_line.clone());
            thread::spawn(move || {
                let i = t % FILES;
                // Half ask for no options at all, half for large blocks and tsize.
                let options: &[(&str, &str)] = if t % 2 == 0 {
                    &[]
                } else {
                    &[("blksize", "1428"), ("tsize", "0")]
                };
                start_line.wait();
                let got = raw::download(addr, &format!("f{i}"), WireMode::Octet, options, |_| {})
                    .map_err(|e| format!("transfer {t}: {e}"))?;
                if got.data != files[i] {
                    return Err(format!(
                        "transfer {t} (f{i}, {options:?}): {} bytes, SHA-256 {}; expected {} \
                         bytes, {}",
                        got.data.len(),
                        sha256(&got.data),
                        files[i].len(),
                        sha256(&files[i])
                    ));
                }
                Ok(got.tid)
            })
        })
        .collect();
    let results: Vec<Result<_, String>> = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|_| Err("thread panicked".into())))
        .collect();
    let elapsed = start.elapsed();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {TRANSFERS} concurrent transfers on {backend} failed:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Each transfer had its own port (RFC 1350 §4).
    let tids: HashSet<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(
        tids.len(),
        TRANSFERS,
        "transfer ports were shared on {backend}"
    );
    eprintln!("{TRANSFERS} concurrent transfers on {backend} in {elapsed:.1?}");
}

/// One client's download into a local path.
type Fetch = Box<dyn Fn(&Path) -> Result<(), String>>;

/// Downloads a 1 MiB and a 513-byte file with up to two installed clients; returns how many
/// downloads ran (each verified by SHA-256).
fn fetch_with_two_clients(daemon: &Daemon, root: &Path, label: &str) -> usize {
    let out = TempDir::new(&format!("{label}-out"));
    let mut checked = 0;
    for (name, len) in [("mib", 1 << 20), ("odd", 513)] {
        let bytes = pattern(len, len as u64);
        write_file(root, name, &bytes);
        let expected = sha256(&bytes);
        let addr = daemon.addr();
        let fetches: [(&str, Fetch); 4] = [
            (
                TFTP_HPA,
                Box::new(move |l: &Path| fetch_tftp_hpa(addr, name, l, Mode::Octet)),
            ),
            (
                CURL,
                Box::new(move |l: &Path| fetch_curl(addr, name, l, Some(1468))),
            ),
            (
                ATFTP,
                Box::new(move |l: &Path| {
                    fetch_atftp(addr, name, l, &[("blksize", "1468"), ("windowsize", "16")])
                }),
            ),
            (
                BUSYBOX,
                Box::new(move |l: &Path| fetch_busybox(addr, name, l, None)),
            ),
        ];
        let mut used = 0;
        for (program, fetch) in &fetches {
            if used == 2 || client(program).is_none() {
                continue;
            }
            used += 1;
            let local = out.join(format!("{program}-{name}"));
            fetch(&local).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(
                sha256_file(&local),
                expected,
                "{label}: {program} fetched {name}"
            );
            checked += 1;
        }
    }
    checked
}

/// The backend named by the start-up line, "serving DIR on ADDR with N shards (BACKEND)".
fn startup_line(daemon: &Daemon) -> String {
    daemon
        .wait_for_log(&["serving ", " shard"], Duration::from_secs(2))
        .unwrap_or_else(|| panic!("no start-up line in the log:\n{}", daemon.log()))
}

/// `--backend io-uring`, `tokio-uring` and `epoll` each start with the line naming it, with
/// registered buffers where the memlock limit allows them (always as root), one main socket per
/// shard, and serve. (The real clients fetch from each in clients.rs.)
fn the_backend_asked_for_is_named_and_serves_with_a_main_socket_per_shard(backend: Backend) {
    let root = TempDir::new(&format!("backend_by_flag-{backend}"));
    let daemon = Daemon::start_backend(backend, root.path(), &["--shards", "2"]);
    let line = startup_line(&daemon);
    let named = match backend {
        Backend::IoUring => "io_uring (registered buffers)",
        Backend::TokioUring => "tokio-uring (registered buffers)",
        Backend::Epoll => "epoll",
    };
    let expected = format!("with 2 shards ({named})");
    if crate::util::is_root() || backend == Backend::Epoll {
        assert!(line.contains(&expected), "start-up line: {line}");
    } else {
        // Without CAP_IPC_LOCK the buffers may not fit RLIMIT_MEMLOCK: then one warning.
        assert!(
            line.contains(&expected) || daemon.log().contains("cannot register"),
            "start-up line: {line}"
        );
    }
    let others = [Backend::IoUring, Backend::TokioUring, Backend::Epoll]
        .into_iter()
        .filter(|&b| b != backend);
    for other in others {
        assert!(!line.contains(other.startup()), "{line}");
    }
    assert_eq!(
        main_sockets(&daemon),
        2,
        "main sockets with --shards 2 on {backend}"
    );
    raw_download_is_exact(&daemon, root.path());
}

tftptest!(epoll_backend_by_environment_serves_byte_exact, |root| {
    let daemon = Daemon::start_with_env(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        root.path(),
        &[],
        &[("RINGTFTP_BACKEND", "epoll")],
    );
    let line = startup_line(&daemon);
    assert!(
        line.contains("(epoll)"),
        "start-up line should name epoll: {line}"
    );
    fetch_with_two_clients(&daemon, root.path(), "epoll by environment");
});

// Where io_uring is blocked (a container's default seccomp profile fails `io_uring_setup`
// with EPERM), `--backend io-uring` and `--backend tokio-uring` refuse to start, naming the
// backend and the reason, while `auto` (the default) warns once and serves on epoll. The
// daemon runs under a seccomp filter of the test's own that blocks just that system call.
tftptest!(
    where_io_uring_is_blocked_the_ring_backends_refuse_and_auto_serves_on_epoll,
    |root| {
        let ringtftpd = |port: u16, backend: &str| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
            cmd.arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--directory"])
                .arg(root.path())
                .args(["--backend", backend])
                .env("NO_COLOR", "1");
            block_io_uring(&mut cmd);
            cmd
        };
        for backend in [Backend::IoUring, Backend::TokioUring] {
            let done = crate::util::run(ringtftpd(0, backend.value()), Duration::from_secs(10));
            assert!(
                done.status.is_some_and(|s| !s.success()),
                "--backend {backend} with io_uring blocked should exit with an error:\n{}",
                done.describe()
            );
            for needle in [
                &format!("cannot run the {backend} backend"),
                "Operation not permitted",
            ] {
                assert!(
                    done.stderr.contains(needle),
                    "--backend {backend} with io_uring blocked should say {needle:?}:\n{}",
                    done.describe()
                );
            }
        }
        let daemon = Daemon::spawn(IpAddr::V4(Ipv4Addr::LOCALHOST), |port| {
            ringtftpd(port, "auto")
        });
        Backend::Epoll.assert_serving(&daemon.log());
        let warnings = daemon.log().matches("io_uring is unavailable").count();
        assert_eq!(warnings, 1, "one warning:\n{}", daemon.log());
        raw_download_is_exact(&daemon, root.path());
    }
);

/// Has `cmd` run under a seccomp filter that fails `io_uring_setup` with EPERM, as Docker's
/// and Podman's default profiles do, and allows everything else.
fn block_io_uring(cmd: &mut Command) {
    use libc::{sock_filter, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        // The system call's number: `seccomp_data.nr`, at offset 0.
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),
        op(
            BPF_JMP | BPF_JEQ | BPF_K,
            0,
            1,
            libc::SYS_io_uring_setup as u32,
        ),
        op(
            BPF_RET | BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        op(BPF_RET | BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: prctl is async-signal-safe; the filter is the child's own copy, alive until exec
    // (the kernel copies it at PR_SET_SECCOMP).
    unsafe {
        cmd.pre_exec(move || {
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            // Required to install a filter without CAP_SYS_ADMIN; harmless with it.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

// clap reads RINGTFTP_BACKEND when --backend is not given; the flag wins over it.
backends!(the_backend_flag_wins_over_the_environment);

fn the_backend_flag_wins_over_the_environment(backend: Backend) {
    let root = TempDir::new(&format!("backend_flag_over_env-{backend}"));
    let other = match backend {
        Backend::Epoll => "tokio-uring",
        _ => "epoll",
    };
    let daemon = Daemon::start_with_env(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        root.path(),
        &backend.args(),
        &[("RINGTFTP_BACKEND", other)],
    );
    backend.assert_serving(&daemon.log());
    raw_download_is_exact(&daemon, root.path());
}

/// A lock-step download with large blocks, through the raw client, compared byte for byte.
fn raw_download_is_exact(daemon: &Daemon, root: &Path) {
    let bytes = pattern(300_001, 77);
    write_file(root, "raw", &bytes);
    let got = raw::download(
        daemon.addr(),
        "raw",
        WireMode::Octet,
        &[("blksize", "8192"), ("tsize", "0")],
        |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(got.data == bytes, "raw download differs");
}

/// The inodes of the UDP sockets bound to `port` (any address) according to /proc/net/udp and
/// /proc/net/udp6, read five times 20 ms apart: the kernel lists them a page of text at a time,
/// and a read can skip a hash slot — every socket of one port — while other tests open and close
/// thousands of sockets. The sockets asked about stay put between reads.
pub(crate) fn udp_inodes_on_port(port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for _ in 0..5 {
        read_udp_inodes(port, &mut inodes);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    inodes
}

fn read_udp_inodes(port: u16, inodes: &mut HashSet<u64>) {
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        // "sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout
        // inode ...", local_address as HEXIP:HEXPORT.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (fields.get(1), fields.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                if let Ok(inode) = inode.parse() {
                    inodes.insert(inode);
                }
            }
        }
    }
}

/// The socket inodes the process `pid` holds open (its /proc/PID/fd links `socket:[INODE]`).
fn socket_inodes_of(pid: u32) -> HashSet<u64> {
    let dir = format!("/proc/{pid}/fd");
    fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// How many sockets on the daemon's main port the daemon itself holds.
fn main_sockets(daemon: &Daemon) -> usize {
    let ours = socket_inodes_of(daemon.pid());
    udp_inodes_on_port(daemon.port())
        .intersection(&ours)
        .count()
}

tftptest!(
    io_uring_is_the_default_with_one_main_socket_per_shard,
    |root| {
        let daemon = Daemon::start(root.path(), &["--shards", "3"]);
        let line = startup_line(&daemon);
        assert!(
            line.contains("with 3 shards (io_uring"),
            "start-up line should say 3 shards on io_uring: {line}"
        );
        assert_eq!(
            main_sockets(&daemon),
            3,
            "main sockets of pid {} on port {} (SO_REUSEPORT, one per shard)",
            daemon.pid(),
            daemon.port()
        );
        // Cross-check with ss where iproute2 is installed.
        if let Some(ss) = ["/usr/bin/ss", "/bin/ss", "/usr/sbin/ss", "/sbin/ss"]
            .into_iter()
            .find(|p| Path::new(p).exists())
        {
            let mut cmd = std::process::Command::new(ss);
            cmd.args(["-Hulpn", &format!("sport = :{}", daemon.port())]);
            let done = crate::util::run(cmd, Duration::from_secs(10));
            let pid = format!("pid={},", daemon.pid());
            let count = done.stdout.lines().filter(|l| l.contains(&pid)).count();
            assert_eq!(
                count,
                3,
                "ss -Hulpn sport = :{}:\n{}",
                daemon.port(),
                done.stdout
            );
        }
        fetch_with_two_clients(&daemon, root.path(), "io_uring with 3 shards");
        raw_download_is_exact(&daemon, root.path());
    }
);

/// SIGTERM stops new requests at once but lets a running transfer finish, then exits 0.
fn sigterm_lets_a_running_transfer_finish_and_refuses_new_ones(backend: Backend) {
    const LEN: usize = 40 << 20;
    let root = TempDir::new(&format!("sigterm_lets_a_running_transfer_finish-{backend}"));
    let bytes = Arc::new(pattern(LEN, 4040));
    write_file(root.path(), "big", &bytes);
    write_file(root.path(), "small", b"small file\n");
    // A generous grace: a loaded CI machine must not turn this into a timing test.
    let mut daemon = Daemon::start_backend(backend, root.path(), &["--grace", "60"]);
    let addr = daemon.addr();
    let (started, running) = mpsc::channel();
    let downloader = thread::spawn(move || {
        let mut started = Some(started);
        raw::download(addr, "big", WireMode::Octet, &[], |n| {
            if n == 2000 {
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
        })
    });
    running
        .recv_timeout(Duration::from_secs(30))
        .expect("the 40 MiB download did not reach block 2000 within 30 s");
    daemon.terminate();
    thread::sleep(Duration::from_millis(200));
    assert!(
        daemon.exit_status().is_none(),
        "the daemon on {backend} exited while a transfer was running; log:\n{}",
        daemon.log()
    );
    // A new request now gets no answer at all.
    let late = Peer::new(addr);
    late.send_to(&raw::rrq("small", WireMode::Octet, &[]), addr);
    if let Some((reply, from)) = late.recv(Duration::from_millis(500)) {
        panic!(
            "an RRQ after SIGTERM on {backend} got {} from {from}",
            raw::describe(&reply)
        );
    }
    let got = downloader
        .join()
        .expect("downloader panicked")
        .unwrap_or_else(|e| {
            panic!("the running transfer broke off after SIGTERM on {backend}: {e}")
        });
    assert_eq!(got.data.len(), LEN);
    assert!(
        got.data == *bytes,
        "the 40 MiB download on {backend} differs"
    );
    let status = daemon.wait_exit();
    assert!(
        status.success(),
        "daemon exit after SIGTERM on {backend}: {status}; log:\n{}",
        daemon.log()
    );
}

/// SIGHUP (`systemctl reload`, log rotation) must not kill the daemon: it is logged and the
/// server goes on serving.
#[test]
fn sighup_is_logged_and_the_daemon_keeps_serving() {
    let root = TempDir::new("sighup_keeps_serving");
    let bytes = pattern(3000, 77);
    write_file(root.path(), "f", &bytes);
    let mut daemon = Daemon::start(root.path(), &[]);
    // SAFETY: kill takes no pointers; the pid is our own child's.
    let sent = unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(sent, 0, "kill -HUP failed");
    let line = daemon.wait_for_log(&["SIGHUP"], Duration::from_secs(5));
    assert!(line.is_some(), "SIGHUP not logged:\n{}", daemon.log());
    assert!(daemon.exit_status().is_none(), "the daemon died of SIGHUP");
    let got = raw::download(daemon.addr(), "f", WireMode::Octet, &[], |_| {})
        .unwrap_or_else(|e| panic!("after SIGHUP: {e}"));
    assert_eq!(got.data, bytes);
}
