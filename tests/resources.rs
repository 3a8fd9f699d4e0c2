//! Resources running out and files changing under the server: descriptors (`ulimit -n`), the
//! memory budget for file data (`--max-buffer-mb`), a served file renamed over, truncated or
//! rewritten mid-transfer, and ten thousand clients at once.
//!
//! For exhaustion the pattern is the same: transfers are opened one by one and held (their
//! client pauses after the first block) until the server refuses one; the refusal must be a
//! clear "Server busy" ERROR, every held transfer must then finish byte-exact, and a new
//! request must succeed once they are done.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use ringtftp::packet::Mode as WireMode;

use crate::util::raw::{self, Download};
use crate::util::{exclusive, pattern, run, sha256, write_file, Backend, Daemon, TempDir};

/// How a held transfer's first block went.
enum Started {
    /// It has its first block and is paused.
    Holding,
    /// It ended before its first block, with this error.
    Refused(String),
}

/// Transfers held open, each a thread paused after its first block until released.
struct Holders {
    release: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Result<Download, String>>>,
}

impl Holders {
    /// Opens transfers of `name(i)` one at a time until one is refused or `max` are held;
    /// returns the holders and the refusal.
    fn until_refused(
        server: SocketAddr,
        mode: WireMode,
        name: impl Fn(usize) -> String,
        max: usize,
    ) -> (Holders, Option<String>) {
        let release = Arc::new(AtomicBool::new(false));
        let mut holders = Holders {
            release: release.clone(),
            threads: Vec::new(),
        };
        for i in 0..max {
            let (started, first) = mpsc::channel();
            let release = release.clone();
            let name = name(i);
            let handle = thread::spawn(move || {
                let result = raw::download(server, &name, mode, &[], |block| {
                    if block == 1 {
                        let _ = started.send(Started::Holding);
                        // Paused, the server retransmits block 2 with backoff; well within its
                        // patience (12 s).
                        let deadline = Instant::now() + Duration::from_secs(8);
                        while !release.load(Ordering::Relaxed) && Instant::now() < deadline {
                            thread::sleep(Duration::from_millis(10));
                        }
                    }
                });
                if let Err(e) = &result {
                    let _ = started.send(Started::Refused(e.clone()));
                }
                result
            });
            let outcome = first
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or(Started::Refused("no first block within 10 s".into()));
            match outcome {
                Started::Holding => holders.threads.push(handle),
                Started::Refused(e) => {
                    let _ = handle.join();
                    return (holders, Some(e));
                }
            }
        }
        (holders, None)
    }

    fn len(&self) -> usize {
        self.threads.len()
    }

    /// Lets every held transfer go on and returns how each ended.
    fn finish(self) -> Vec<Result<Download, String>> {
        self.release.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err("holder panicked".into())))
            .collect()
    }
}

/// Every held transfer finished with exactly `expected`.
fn all_exact(results: Vec<Result<Download, String>>, expected: &[u8]) {
    let want = sha256(expected);
    for (i, result) in results.into_iter().enumerate() {
        let got = result.unwrap_or_else(|e| panic!("held transfer {i} failed: {e}"));
        assert_eq!(sha256(&got.data), want, "held transfer {i} corrupted");
    }
}

fn fetch_exact(server: SocketAddr, name: &str, expected: &[u8]) {
    let got = raw::download(server, name, WireMode::Octet, &[], |_| {})
        .unwrap_or_else(|e| panic!("{name} after recovery: {e}"));
    assert_eq!(sha256(&got.data), sha256(expected), "{name} corrupted");
}

/// Has `cmd` start with its descriptor limit (soft and hard) set to `fds`: always when
/// lowering it; when raising it, only where allowed (root), else the limit is left as it is.
fn set_nofile(cmd: &mut Command, fds: u64, required: bool) {
    let limit = libc::rlimit {
        rlim_cur: fds,
        rlim_max: fds,
    };
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 && required {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The calling process's descriptor limits (soft, hard).
fn nofile() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (limit.rlim_cur, limit.rlim_max)
}

// Descriptors, buffers and reads are each executor's own (registered files and buffers,
// READ_FIXED, plain reads), so each runs these.
backends!(
    out_of_descriptors_new_requests_are_busy_and_running_transfers_finish,
    out_of_buffer_memory_new_requests_are_busy_and_running_transfers_finish,
    a_file_changed_mid_transfer_is_never_served_as_a_mix,
);

/// Starts the daemon with its descriptor limit (soft and hard) set to `fds` (or left as it is
/// where raising it is not allowed and `required` is false).
fn daemon_with_fd_limit(dir: &Path, fds: u64, required: bool, extra: &[&str]) -> Daemon {
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    Daemon::spawn(ip, |port| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
        cmd.arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .args(extra)
            .env("NO_COLOR", "1");
        set_nofile(&mut cmd, fds, required);
        cmd
    })
}

/// A small descriptor limit (some container runtimes and old init systems give 256) still
/// serves many transfers at once: only a few descriptors per shard are kept back.
#[test]
fn a_small_descriptor_limit_still_serves_many_transfers_at_once() {
    let root = TempDir::new("small_fd_limit");
    let body = pattern(40 * 512 + 100, 12);
    write_file(root.path(), "f.bin", &body);
    let daemon = daemon_with_fd_limit(root.path(), 256, true, &["--shards", "2"]);
    let server = daemon.addr();
    let (holders, refused) =
        Holders::until_refused(server, WireMode::Octet, |_| "f.bin".into(), 150);
    let held = holders.len();
    let results = holders.finish();
    assert!(
        refused.is_none(),
        "refused after {held} transfers at ulimit -n 256: {refused:?}\n{}",
        daemon.log()
    );
    assert_eq!(held, 150);
    all_exact(results, &body);
    assert!(!daemon.log().contains("allows only 1 "), "{}", daemon.log());
}

fn out_of_descriptors_new_requests_are_busy_and_running_transfers_finish(backend: Backend) {
    let root = TempDir::new(&format!("out_of_fds-{backend}"));
    let body = pattern(40 * 512 + 100, 11);
    write_file(root.path(), "f.bin", &body);
    // About a dozen descriptors go to the process itself; the rest to transfer sockets.
    // --max-transfers above the limit is kept (with a warning), so the limit is what bites.
    let daemon = daemon_with_fd_limit(
        root.path(),
        48,
        true,
        &backend.with(&["--shards", "1", "--max-transfers", "1000"]),
    );
    backend.assert_serving(&daemon.log());
    let server = daemon.addr();
    let (holders, refused) =
        Holders::until_refused(server, WireMode::Octet, |_| "f.bin".into(), 60);
    let held = holders.len();
    let refused = refused.unwrap_or_else(|| panic!("{held} transfers held, none refused"));
    let results = holders.finish();
    assert!(
        refused.contains("ERROR 0") && refused.contains("Server busy: out of file descriptors"),
        "refusal after {held} held transfers on {backend}: {refused}\n{}",
        daemon.log()
    );
    assert!(
        held >= 20,
        "only {held} transfers on {backend} before the limit bit"
    );
    all_exact(results, &body);
    // Descriptors are back: the server serves again.
    fetch_exact(server, "f.bin", &body);
    assert!(daemon.log().contains("out of file descriptors"));
    assert!(!daemon.log().contains("panicked"));
    println!("descriptor limit 48 on {backend}: {held} transfers held, then \"{refused}\"");
}

fn out_of_buffer_memory_new_requests_are_busy_and_running_transfers_finish(backend: Backend) {
    let root = TempDir::new(&format!("out_of_buffers-{backend}"));
    let body = pattern(100_000, 12);
    write_file(root.path(), "f.bin", &body);
    let text: Vec<u8> = b"line\n".iter().copied().cycle().take(400_000).collect();
    write_file(root.path(), "big.txt", &text);
    // No shared cache, so each transfer holds its own 64 KiB chunk: 1 MiB holds 16.
    let daemon = Daemon::start_backend(
        backend,
        root.path(),
        &["--shards", "1", "--cache-mb", "0", "--max-buffer-mb", "1"],
    );
    let server = daemon.addr();
    // A netascii request of 400 KB needs room for three times that (raw bytes and encoding):
    // more than the whole budget, so it could never be served — ERROR 3, not "busy" (which
    // would have the client retry for ever).
    let peer = raw::Peer::new(server);
    let (code, message, _) =
        peer.expect_error(&raw::rrq("big.txt", WireMode::Netascii, &[]), server);
    assert_eq!(
        (code, message.as_str()),
        (3, "File too large for netascii mode")
    );

    let (holders, refused) =
        Holders::until_refused(server, WireMode::Octet, |_| "f.bin".into(), 40);
    let held = holders.len();
    let refused = refused.unwrap_or_else(|| panic!("{held} transfers held, none refused"));
    let results = holders.finish();
    assert!(
        refused.contains("ERROR 0") && refused.contains("Server busy: out of memory for file data"),
        "refusal after {held} held transfers on {backend}: {refused}\n{}",
        daemon.log()
    );
    assert!(
        (8..=20).contains(&held),
        "{held} transfers held on {backend} within a 1 MiB budget of 64 KiB chunks"
    );
    all_exact(results, &body);
    fetch_exact(server, "f.bin", &body);
    println!("--max-buffer-mb 1 on {backend}: {held} transfers held, then \"{refused}\"");
}

/// A download paused at block `at` while `change` alters the served file.
fn download_with_change(
    server: SocketAddr,
    name: &str,
    at: u64,
    change: impl FnOnce(),
) -> Result<Download, String> {
    let mut change = Some(change);
    raw::download(server, name, WireMode::Octet, &[], |block| {
        if block == at {
            if let Some(change) = change.take() {
                change();
            }
        }
    })
}

fn a_file_changed_mid_transfer_is_never_served_as_a_mix(backend: Backend) {
    let root = TempDir::new(&format!("changed_file-{backend}"));
    let old = pattern(1 << 20, 21);
    let new = pattern(1 << 20, 22);
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    let server = daemon.addr();
    let path = root.join("f.bin");

    // Renamed over (how a new image is installed): the open descriptor still reads the old
    // file, a consistent snapshot, and the transfer completes with it.
    write_file(root.path(), "f.bin", &old);
    let got = download_with_change(server, "f.bin", 50, || {
        write_file(root.path(), "f.new", &new);
        std::fs::rename(root.join("f.new"), &path).expect("rename");
    })
    .unwrap_or_else(|e| panic!("a renamed-over file on {backend}: {e}"));
    assert_eq!(
        sha256(&got.data),
        sha256(&old),
        "not the snapshot on {backend}"
    );
    // The next transfer gets the new file, not cached bytes of the old one.
    fetch_exact(server, "f.bin", &new);

    // Truncated in place: the transfer ends with an ERROR.
    write_file(root.path(), "f.bin", &old);
    let result = download_with_change(server, "f.bin", 50, || {
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(10_000).expect("truncate");
    });
    match result {
        Err(e) => assert!(
            e.contains("File changed while being served"),
            "{backend}: {e}"
        ),
        Ok(got) => panic!(
            "a truncated file was served as a success on {backend} ({} bytes)",
            got.data.len()
        ),
    }

    // Rewritten in place, same size: the bytes after the change are new, so the transfer must
    // not end as a success, and must end when the next chunk of the file comes in (64 KiB:
    // block 128 at 512 bytes), not before the last block: a client writing to flash as it
    // receives has not taken megabytes of the wrong file by then.
    write_file(root.path(), "f.bin", &old);
    thread::sleep(Duration::from_millis(20));
    let mut last = 0;
    let mut change = Some(|| {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&new, 0).expect("rewrite");
    });
    let result = raw::download(server, "f.bin", WireMode::Octet, &[], |block| {
        last = last.max(block);
        if block == 50 {
            if let Some(change) = change.take() {
                change();
            }
        }
    });
    match result {
        Err(e) => {
            assert!(
                e.contains("File changed while being served"),
                "{backend}: {e}"
            );
            assert!(
                last <= 2 * 128,
                "{backend}: {last} blocks of 2048 went out before the rewrite was caught"
            );
        }
        Ok(got) => panic!(
            "a rewritten file was served as a success on {backend} ({})",
            if got.data == old {
                "old bytes"
            } else {
                "mixed bytes"
            }
        ),
    }
    fetch_exact(server, "f.bin", &new);
    assert!(!daemon.log().contains("panicked"));
}

/// Descriptors open in process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

/// The soft descriptor limit of process `pid`, from /proc/PID/limits.
fn max_open_files(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(0)
}

/// The daemon's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn ten_thousand_clients_at_once_complete_within_bounded_memory() {
    let Some(loadgen) = crate::util::loadgen() else {
        return;
    };
    if !loadgen.is_file() {
        let what = format!("{} not built", loadgen.display());
        crate::util::skip::missing(&what, "cargo build -p loadgen");
        return;
    }
    let _alone = exclusive();
    let root = TempDir::new("ten_thousand");
    // 23 blocks of 1468 bytes each: short, so the run stays short, yet long enough that all
    // 10 000 transfers are in flight on the server together (its descriptors say so).
    let body = pattern(32 * 1024, 31);
    write_file(root.path(), "boot.efi", &body);
    // 10 000 sockets on each side: raise the limits where allowed (root, as in CI).
    const FDS: u64 = 65_536;
    if nofile().1 < 12_000 && !crate::util::is_root() {
        crate::util::skip::missing(
            "10 000 clients need ulimit -Hn of 12 000 or more",
            "run as root, or raise the hard limit",
        );
        return;
    }
    // Two shards whatever the machine, so the registered pools (8 MiB each) do not scale the
    // bound with the core count.
    let daemon = daemon_with_fd_limit(root.path(), FDS, false, &["--shards", "2"]);
    let daemon_fds = max_open_files(daemon.pid());
    if daemon_fds < 12_000 {
        // Root without CAP_SYS_RESOURCE (some containers) cannot raise it.
        crate::util::skip::missing(
            &format!("the daemon's descriptor limit is {daemon_fds}: 10 000 clients need 12 000"),
            "run with CAP_SYS_RESOURCE",
        );
        return;
    }
    let idle = peak_rss_kib(daemon.pid());
    let mut cmd = Command::new(&loadgen);
    set_nofile(&mut cmd, FDS, false);
    cmd.arg(daemon.addr().to_string())
        .arg("boot.efi")
        .args([
            "--clients",
            "10000",
            "--transfers",
            "10000",
            "--blksize",
            "1468",
        ])
        .args([
            "--sha256",
            &sha256(&body),
            "--timeout",
            "1s",
            "--retries",
            "5",
        ])
        // Spread over source addresses, as a hall of machines is (and under the per-client cap).
        .args(["--sources", "127.0.0.1-127.0.0.64"])
        .args(["--max-failures", "0", "--json", "-"]);
    let running = thread::spawn(move || run(cmd, Duration::from_secs(300)));
    // The server's own count of transfers at once: its open descriptors, one socket each.
    let mut peak_fds = 0;
    while !running.is_finished() {
        peak_fds = peak_fds.max(open_fds(daemon.pid()));
        thread::sleep(Duration::from_millis(20));
    }
    let done = running.join().expect("loadgen runner");
    let peak = peak_rss_kib(daemon.pid());
    assert!(
        done.success(),
        "10 000 clients: failures or a hang\n{}",
        done.describe()
    );
    println!(
        "10 000 clients x 32 KiB: up to {peak_fds} descriptors open in the daemon, {:.1} s, \
         daemon peak RSS {:.1} MiB (idle {:.1} MiB)",
        done.elapsed.as_secs_f64(),
        peak as f64 / 1024.0,
        idle as f64 / 1024.0
    );
    assert!(
        peak_fds >= 9_000,
        "the daemon never held more than {peak_fds} descriptors: not 10 000 transfers at once"
    );
    assert!(
        peak <= 96 * 1024,
        "peak RSS {peak} KiB with 10 000 clients at once"
    );
    assert!(!daemon.log().contains("panicked"));
}

/// A memory cgroup for the daemon, v2 or v1 (whichever this machine mounts), removed when
/// dropped; `None` where none can be made (not root, no memory controller).
struct MemoryCgroup {
    dir: std::path::PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    fn new(label: &str, limit: u64) -> Option<MemoryCgroup> {
        let name = format!("ringtftp-test-{label}-{}", std::process::id());
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let dir = if v2 {
            // The controller must be on for the root's children (it is where systemd runs).
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
            Path::new("/sys/fs/cgroup").join(name)
        } else {
            Path::new("/sys/fs/cgroup/memory").join(name)
        };
        std::fs::create_dir(&dir).ok()?;
        let cgroup = MemoryCgroup { dir, v2 };
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(cgroup.dir.join(file), limit.to_string()).ok()?;
        // No swap to hide in, where the machine has it: over the limit is an OOM kill.
        let _ = std::fs::write(cgroup.dir.join("memory.swap.max"), "0");
        let _ = std::fs::write(
            cgroup.dir.join("memory.memsw.limit_in_bytes"),
            limit.to_string(),
        );
        Some(cgroup)
    }

    /// Makes `cmd`'s process join this cgroup before it runs anything.
    fn enter(&self, cmd: &mut Command) {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))
            .expect("cgroup.procs");
        // SAFETY: the child writes to a descriptor it inherited (async-signal-safe); "0" moves
        // the writing process itself, in v1 and v2.
        unsafe {
            cmd.pre_exec(move || {
                use std::os::fd::AsRawFd;
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Processes the kernel killed for memory in this cgroup.
    fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The most memory the cgroup was charged, where the kernel says (v1, and v2 since 5.19).
    fn peak(&self) -> Option<u64> {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Under a 64 MiB memory cgroup, the defaults fit: 500 concurrent downloads of distinct 1 MiB
/// files on 2 shards and on 16 end without an OOM kill, each byte-exact or refused with ERROR
/// 0 "Server busy" (the file-data budget, sized to the limit, says when to refuse), and the
/// log says what was chosen.
#[test]
fn under_a_64_mib_memory_limit_the_defaults_fit() {
    if !crate::util::is_root() {
        crate::util::skip::missing("a memory cgroup needs root", "run the tests as root");
        return;
    }
    let _alone = exclusive();
    const FILES: usize = 500;
    const LIMIT: u64 = 64 << 20;
    let root = TempDir::new("memory_limit");
    let files: Vec<Vec<u8>> = (0..FILES).map(|i| pattern(1 << 20, i as u64)).collect();
    for (i, bytes) in files.iter().enumerate() {
        write_file(root.path(), &format!("f{i}"), bytes);
    }
    let files = Arc::new(files);
    for shards in ["2", "16"] {
        let Some(cgroup) = MemoryCgroup::new(&format!("s{shards}"), LIMIT) else {
            // A host without the controller (or a container that may not make cgroups): no
            // install fixes that.
            crate::util::skip::unsupported("cannot create a memory cgroup here");
            return;
        };
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let mut daemon = Daemon::spawn(ip, |port| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
            cmd.arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--shards", shards, "--directory"])
                .arg(root.path())
                .env("NO_COLOR", "1");
            cgroup.enter(&mut cmd);
            cmd
        });
        let chosen = daemon
            .wait_for_log(&["memory limit 64 MiB"], Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no line on the memory limit:\n{}", daemon.log()));
        let addr = daemon.addr();
        let threads: Vec<_> = (0..FILES)
            .map(|i| {
                let files = files.clone();
                thread::spawn(move || {
                    let name = format!("f{i}");
                    match raw::download(
                        addr,
                        &name,
                        WireMode::Octet,
                        &[("blksize", "1468")],
                        |_| {},
                    ) {
                        Ok(got) => {
                            assert!(got.data == files[i], "{name} differs");
                            true
                        }
                        Err(e) => {
                            assert!(e.contains("Server busy"), "{name}: {e}");
                            false
                        }
                    }
                })
            })
            .collect();
        let done = threads
            .into_iter()
            .map(|t| t.join().expect("a download panicked"))
            .filter(|&whole| whole)
            .count();
        assert_eq!(cgroup.oom_kills(), 0, "OOM-killed:\n{}", daemon.log());
        assert!(
            daemon.exit_status().is_none(),
            "the daemon died:\n{}",
            daemon.log()
        );
        // The cgroup's peak counts the page cache, which fills up to the limit and is
        // reclaimed there; the daemon's own peak is its VmHWM.
        eprintln!(
            "{shards} shards: {done} of {FILES} whole, the rest busy; peak resident {} MiB, \
             cgroup peak {:?} MiB of 64; {chosen}",
            peak_rss_kib(daemon.pid()) >> 10,
            cgroup.peak().map(|p| p >> 20)
        );
        assert!(done > 0, "nothing served");
        // The process keeps its own pages within five eighths of the limit and the sockets'
        // queues within another eighth; past that the kernel reclaims the page cache the
        // files are read through until reads stall, and a slower machine times out.
        let peak = peak_rss_kib(daemon.pid()) << 10;
        assert!(
            peak <= LIMIT / 4 * 3,
            "{shards} shards: peak resident {} MiB, over three quarters of the limit",
            peak >> 20
        );
        assert!(daemon.stop().success());
    }
}
