//! Running ringtftpd the way operators do: dropping root with `--user`, socket activation
//! through `systemd-socket-activate`, readiness and stopping over a `NOTIFY_SOCKET`, and what
//! `--metrics` and the log say (a UEFI size probe is routine, not an error).

use std::env;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringtftp::packet::{ErrorCode, Mode as WireMode};

use crate::server::udp_inodes_on_port;
use crate::util::{
    self, client, fetch_curl, free_udp_port, pattern, raw, run, sha256, sha256_file, write_file,
    Daemon, TempDir, CURL,
};

const REQUIRE: &str = "RINGTFTP_REQUIRE_CLIENTS";
const SIZE: usize = 300_000;
/// Long enough for a daemon that fails at start to have done so.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the tests run as root; prints why not (or panics in CI) otherwise.
fn root(what: &str) -> bool {
    if util::is_root() {
        return true;
    }
    let why = format!("{what} needs root");
    if env::var_os(REQUIRE).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{why} ({REQUIRE} is set)");
    }
    eprintln!("skipping: {why}");
    false
}

/// A served directory anyone can read, holding `name` with `SIZE` bytes.
fn served(label: &str, name: &str) -> (TempDir, Vec<u8>) {
    let dir = TempDir::new(label);
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let bytes = pattern(SIZE, 11);
    let file = write_file(dir.path(), name, &bytes);
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod file");
    (dir, bytes)
}

/// Downloads `name` with curl and asserts it arrived byte-exact.
fn fetch_exact(addr: SocketAddr, name: &str, bytes: &[u8]) {
    let out = TempDir::new("fetch");
    let local = out.join(name);
    fetch_curl(addr, name, &local, Some(1468)).unwrap_or_else(|e| panic!("curl: {e}"));
    assert_eq!(sha256_file(&local), sha256(bytes), "{name} differs");
}

/// One `Name:` line of a /proc status file.
fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or("")
        .trim()
        .to_owned()
}

#[test]
fn user_nobody_serves_and_every_task_runs_as_nobody() {
    if !root("--user") {
        return;
    }
    let Some(_) = client(CURL) else { return };
    let (dir, bytes) = served("user_nobody", "boot.img");
    let daemon = Daemon::start(dir.path(), &["--user", "nobody", "--shards", "2"]);
    fetch_exact(daemon.addr(), "boot.img", &bytes);
    // A file only root may read is now out of reach: files are opened as nobody.
    let secret = write_file(dir.path(), "secret", b"root only\n");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod secret");
    let out = TempDir::new("secret");
    assert!(
        fetch_curl(daemon.addr(), "secret", &out.join("secret"), None).is_err(),
        "a root-only file was served after the switch to nobody"
    );

    let tasks: Vec<_> = fs::read_dir(format!("/proc/{}/task", daemon.pid()))
        .expect("list tasks")
        .map(|t| t.expect("task").path())
        .collect();
    // The main thread and the two shards at least.
    assert!(tasks.len() >= 3, "tasks: {tasks:?}");
    for task in &tasks {
        let status = fs::read_to_string(task.join("status")).expect("read task status");
        let name = status_field(&status, "Name:");
        for field in ["Uid:", "Gid:"] {
            let ids = status_field(&status, field);
            assert!(
                ids.split_whitespace().all(|id| id == "65534") && !ids.is_empty(),
                "{} ({name}) {field} {ids}",
                task.display()
            );
        }
        assert_eq!(status_field(&status, "Groups:"), "65534", "{name}");
        for field in ["CapPrm:", "CapEff:", "CapAmb:"] {
            assert_eq!(
                status_field(&status, field),
                "0000000000000000",
                "{name} {field}"
            );
        }
    }
    let line = daemon
        .wait_for_log(&["running as nobody", "uid 65534"], Duration::from_secs(1))
        .expect("the switch is logged");
    assert!(line.contains("no capabilities"), "{line}");
}

#[test]
fn a_switch_that_cannot_be_made_refuses_to_serve() {
    let (dir, _) = served("cannot_switch", "f");
    let unknown = run(
        ringtftpd(
            dir.path(),
            &["0", "-b", "127.0.0.1", "--user", "no-such-user-ringtftp"],
        ),
        START_TIMEOUT,
    );
    assert_refused(&unknown, "no user named no-such-user-ringtftp");

    if !root("switching users as nobody through setpriv") {
        return;
    }
    let Some(setpriv) = client("setpriv") else {
        return;
    };
    // As nobody, asked to become root: setgroups fails, and the daemon must not serve.
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ringtftpd"))
        .args(["0", "-b", "127.0.0.1", "--user", "root", "--directory"])
        .arg(dir.path())
        .env("NO_COLOR", "1");
    let done = run(cmd, START_TIMEOUT);
    assert_refused(&done, "cannot become root");
}

fn ringtftpd(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
    cmd.args(args)
        .arg("--directory")
        .arg(dir)
        .env("NO_COLOR", "1");
    cmd
}

fn assert_refused(done: &util::Finished, needle: &str) {
    let status = done
        .status
        .unwrap_or_else(|| panic!("still running:\n{}", done.describe()));
    assert!(!status.success(), "{}", done.describe());
    assert!(
        done.stderr.contains(needle),
        "stderr should say {needle:?}:\n{}",
        done.describe()
    );
}

#[test]
fn serves_through_a_socket_passed_by_systemd_socket_activate() {
    let Some(activate) = client("systemd-socket-activate") else {
        return;
    };
    let Some(_) = client(CURL) else { return };
    let (dir, bytes) = served("socket_activate", "kernel");
    // The daemon's own PORT and --bind point elsewhere: the socket passed must win.
    let daemon = Daemon::spawn(Ipv4Addr::LOCALHOST.into(), |port| {
        let mut cmd = Command::new(&activate);
        cmd.args(["--datagram", "-l", &format!("127.0.0.1:{port}")])
            .arg(env!("CARGO_BIN_EXE_ringtftpd"))
            .args(["1", "--bind", "127.0.0.2", "--shards", "2", "--directory"])
            .arg(dir.path())
            .env("NO_COLOR", "1");
        cmd
    });
    fetch_exact(daemon.addr(), "kernel", &bytes);
    let log = daemon.log();
    // systemd-socket-activate sets no SO_REUSEPORT, so both shards read the socket passed.
    assert!(
        log.contains("every shard reads the one passed"),
        "log:\n{log}"
    );
    assert!(
        log.contains(&format!("on 127.0.0.1:{} with 2 shards", daemon.port())),
        "log:\n{log}"
    );
    let sockets = udp_inodes_on_port(daemon.port());
    assert_eq!(sockets.len(), 1, "one socket on the port: {sockets:?}");
    let status = daemon.stop();
    assert!(status.success(), "exit status {status}");
}

/// Every shard reads the one socket passed, so a client's repeated request reaches whichever
/// shard is free: it must still be a repeat there, never a second transfer (which the client
/// would meet as a stray transfer ID). 200 clients each send their RRQ twice from one port;
/// before the shards shared what they had started, about one in ten got two transfers. Then
/// 64 downloads at once through the same socket, each byte-exact.
#[test]
fn a_repeated_request_on_a_shared_passed_socket_never_starts_a_second_transfer() {
    let Some(activate) = client("systemd-socket-activate") else {
        return;
    };
    let (dir, bytes) = served("socket_activate_repeat", "kernel");
    let daemon = Daemon::spawn(Ipv4Addr::LOCALHOST.into(), |port| {
        let mut cmd = Command::new(&activate);
        cmd.args(["--datagram", "-l", &format!("127.0.0.1:{port}")])
            .arg(env!("CARGO_BIN_EXE_ringtftpd"))
            .args(["--shards", "2", "--directory"])
            .arg(dir.path())
            .env("NO_COLOR", "1");
        cmd
    });
    assert!(daemon.log().contains("every shard reads the one passed"));
    let request = raw::rrq("kernel", WireMode::Octet, &[]);
    let mut doubled = 0;
    for _ in 0..200 {
        let peer = raw::Peer::new(daemon.addr());
        peer.send_to(&request, daemon.addr());
        peer.send_to(&request, daemon.addr());
        let mut tids = Vec::new();
        // The first DATA, then anything else the two requests drew.
        if let Some((_, from)) = peer.recv(Duration::from_secs(2)) {
            tids.push(from);
        }
        for (_, from) in peer.collect(Duration::from_millis(30)) {
            if !tids.contains(&from) {
                tids.push(from);
            }
        }
        assert!(!tids.is_empty(), "no answer to a request");
        doubled += usize::from(tids.len() > 1);
        for tid in tids {
            peer.send_to(&raw::error(ErrorCode::Undefined, "done"), tid);
        }
    }
    assert_eq!(
        doubled, 0,
        "{doubled} of 200 repeated requests started a second transfer"
    );

    let downloads: Vec<_> = (0..64)
        .map(|_| {
            let addr = daemon.addr();
            std::thread::spawn(move || raw::download(addr, "kernel", WireMode::Octet, &[], |_| {}))
        })
        .collect();
    for d in downloads {
        let got = d.join().expect("a download thread").expect("a download");
        assert_eq!(sha256(&got.data), sha256(&bytes), "a download differs");
    }
    assert!(daemon.stop().success());
}

/// Single-port mode on a socket the shards cannot each join: a transfer's ACKs come to that
/// socket too and must reach the transfer's shard, so one shard serves.
#[test]
fn single_port_mode_on_a_shared_passed_socket_serves_with_one_shard() {
    let Some(activate) = client("systemd-socket-activate") else {
        return;
    };
    let Some(_) = client(CURL) else { return };
    let (dir, bytes) = served("socket_activate_single_port", "kernel");
    let daemon = Daemon::spawn(Ipv4Addr::LOCALHOST.into(), |port| {
        let mut cmd = Command::new(&activate);
        cmd.args(["--datagram", "-l", &format!("127.0.0.1:{port}")])
            .arg(env!("CARGO_BIN_EXE_ringtftpd"))
            .args(["--single-port", "--shards", "2", "--directory"])
            .arg(dir.path())
            .env("NO_COLOR", "1");
        cmd
    });
    fetch_exact(daemon.addr(), "kernel", &bytes);
    let log = daemon.log();
    assert!(log.contains("serving with one shard"), "log:\n{log}");
    assert!(log.contains("with 1 shard "), "log:\n{log}");
    assert!(daemon.stop().success());
}

/// Listens on a `NOTIFY_SOCKET` of its own: `READY=1` arrives before any request is answered,
/// and `STOPPING=1` on SIGTERM.
#[test]
fn tells_systemd_ready_before_answering_and_stopping_on_sigterm() {
    let (dir, _) = served("notify", "f");
    let sockets = TempDir::new("notify-socket");
    let notify_path = sockets.join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    notify.set_nonblocking(true).expect("nonblocking");
    let port = free_udp_port(Ipv4Addr::LOCALHOST.into());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let logs = TempDir::new("notify-log");
    let log = fs::File::create(logs.join("log")).expect("log");
    let mut child = ringtftpd(dir.path(), &[&port.to_string(), "-b", "127.0.0.1"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start ringtftpd");
    let show_log = || fs::read_to_string(logs.join("log")).unwrap_or_default();

    let probe = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("probe");
    probe.set_nonblocking(true).expect("nonblocking");
    let rrq = [&[0, 1][..], b"no-such-file\0octet\0"].concat();
    let mut notes = Vec::new();
    let mut buf = [0u8; 512];
    let read_notes = |notes: &mut Vec<String>| {
        let mut buf = [0u8; 512];
        while let Ok(n) = notify.recv(&mut buf) {
            notes.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    let start = Instant::now();
    let answered = loop {
        assert!(
            start.elapsed() < START_TIMEOUT,
            "no answer within {START_TIMEOUT:?}; notes {notes:?}; log:\n{}",
            show_log()
        );
        read_notes(&mut notes);
        // Requests sent from the start queue on the port once it is bound: none may be
        // answered before READY=1 was sent.
        let _ = probe.send_to(&rrq, addr);
        std::thread::sleep(Duration::from_millis(5));
        if let Ok((n, _)) = probe.recv_from(&mut buf) {
            break buf[..n].to_vec();
        }
    };
    // READY=1 was sent before the answer, so it is in the queue by now if not read already.
    read_notes(&mut notes);
    assert_eq!(&answered[..2], &[0, 5], "an ERROR (file not found)");
    let ready = notes.iter().position(|n| n.lines().any(|l| l == "READY=1"));
    assert!(
        ready.is_some(),
        "no READY=1 before the first answer: {notes:?}"
    );

    let pid = child.id().to_string();
    let sent = Command::new("sh")
        .args(["-c", r#"kill -TERM "$1""#, "sh", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(40), "no exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit {status}; log:\n{}", show_log());
    read_notes(&mut notes);
    let stopping = notes
        .iter()
        .position(|n| n.lines().any(|l| l == "STOPPING=1"));
    assert!(
        stopping.is_some_and(|s| Some(s) > ready),
        "STOPPING=1 after READY=1: {notes:?}"
    );
}

/// A passed socket with `SO_REUSEPORT`, from a process of the same user: every other shard binds
/// its own socket on the port, and the kernel spreads clients over them.
#[test]
fn shards_join_a_passed_socket_that_reuses_its_port() {
    let Some(_) = client(CURL) else { return };
    let (dir, bytes) = served("join", "initrd");
    let daemon = Daemon::spawn(Ipv4Addr::LOCALHOST.into(), |port| {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .expect("socket");
        socket.set_reuse_port(true).expect("SO_REUSEPORT");
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
            .expect("bind");
        // Passed as descriptor 3, as sd_listen_fds(3) expects, to a shell that sets LISTEN_PID
        // to its own PID and becomes the daemon.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$@""#, "sh"])
            .arg(env!("CARGO_BIN_EXE_ringtftpd"))
            .args(["--shards", "3", "--directory"])
            .arg(dir.path())
            .env("NO_COLOR", "1");
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe calls (dup2, fcntl) on a descriptor the closure keeps open.
        unsafe {
            cmd.pre_exec(move || {
                let fd = socket.as_raw_fd();
                let rc = if fd == 3 {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    });
    fetch_exact(daemon.addr(), "initrd", &bytes);
    let sockets = udp_inodes_on_port(daemon.port());
    assert_eq!(sockets.len(), 3, "one socket per shard: {sockets:?}");
    let log = daemon.log();
    assert!(
        !log.contains("every shard reads the one passed"),
        "log:\n{log}"
    );
    assert!(daemon.stop().success());
}

/// The units in dist/systemd pass `systemd-analyze verify` without a word (it runs without
/// systemd as PID 1), pointed at the binary under test.
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let Some(analyze) = client("systemd-analyze") else {
        return;
    };
    let units = TempDir::new("units");
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd");
    for name in ["ringtftpd.service", "ringtftpd.socket"] {
        let text = fs::read_to_string(dist.join(name)).expect("read unit");
        let text = text.replace("/usr/sbin/ringtftpd", env!("CARGO_BIN_EXE_ringtftpd"));
        fs::write(units.join(name), text).expect("write unit");
    }
    let mut cmd = Command::new(analyze);
    cmd.arg("verify")
        .arg(units.join("ringtftpd.socket"))
        .arg(units.join("ringtftpd.service"))
        .env("SYSTEMD_LOG_COLOR", "0");
    let done = run(cmd, Duration::from_secs(60));
    assert!(done.success(), "{}", done.describe());
    let said = format!("{}{}", done.stdout, done.stderr);
    assert!(said.trim().is_empty(), "{}", done.describe());
}

/// `--metrics`: after a transfer, a refusal, a busy refusal and a client that vanished, the
/// counters say so, and the text parses as Prometheus exposition.
#[test]
fn metrics_count_what_happened_and_parse_as_prometheus_text() {
    let Some(_) = client(CURL) else { return };
    let (dir, bytes) = served("metrics", "pxelinux.0");
    let daemon = Daemon::start(
        dir.path(),
        &[
            "--metrics",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--max-transfers",
            "1",
            "--timeout",
            "0.1",
            "--retries",
            "3",
        ],
    );
    let metrics_addr = metrics_addr(&daemon);
    let before = scrape(metrics_addr);
    assert_eq!(sum(&before, "ringtftp_shards", &[]), 2.0);
    assert_eq!(
        sum(
            &before,
            "ringtftp_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(sum(&before, "ringtftp_backend_info", &[]), 1.0);

    // A transfer.
    fetch_exact(daemon.addr(), "pxelinux.0", &bytes);
    // A refusal: no such file.
    let out = TempDir::new("missing");
    assert!(fetch_curl(daemon.addr(), "missing", &out.join("missing"), None).is_err());
    // A client that takes the only transfer and vanishes (its socket stays open and silent, so
    // the transfer times out rather than meet a closed port) ...
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    silent
        .send_to(
            &[&[0, 1][..], b"pxelinux.0\0octet\0"].concat(),
            daemon.addr(),
        )
        .expect("send RRQ");
    let mut buf = [0u8; 1024];
    let (n, _) = silent.recv_from(&mut buf).expect("DATA 1");
    assert_eq!(&buf[..2], &[0, 3], "DATA, got {:?}", &buf[..n]);
    // ... while a second client is refused: --max-transfers 1 is taken.
    let other = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    other
        .send_to(
            &[&[0, 1][..], b"pxelinux.0\0octet\0"].concat(),
            daemon.addr(),
        )
        .expect("send RRQ");
    let (n, _) = other.recv_from(&mut buf).expect("ERROR");
    assert_eq!(&buf[..2], &[0, 5], "busy ERROR, got {:?}", &buf[..n]);
    daemon
        .wait_for_log(&["transfer timed out"], Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no timeout; log:\n{}", daemon.log()));

    let after = scrape(metrics_addr);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sum(&after, name, labels) - sum(&before, name, labels)
    };
    let ended = |outcome| delta("ringtftp_transfers_ended_total", &[("outcome", outcome)]);
    let refused = |reason| delta("ringtftp_requests_refused_total", &[("reason", reason)]);
    assert_eq!(
        delta("ringtftp_transfers_started_total", &[]),
        2.0,
        "the transfer and the silent one"
    );
    assert_eq!(ended("completed"), 1.0);
    assert_eq!(ended("timeout"), 1.0);
    assert_eq!(delta("ringtftp_transfers_ended_total", &[]), 2.0);
    assert_eq!(sum(&after, "ringtftp_transfers_active", &[]), 0.0);
    assert_eq!(refused("not_found"), 1.0);
    assert_eq!(refused("busy_max_transfers"), 1.0);
    assert_eq!(delta("ringtftp_requests_refused_total", &[]), 2.0);
    assert_eq!(delta("ringtftp_requests_total", &[]), 4.0);
    // The bytes the client acknowledged: the whole file, then nothing of the silent one.
    assert_eq!(delta("ringtftp_sent_bytes_total", &[]), SIZE as f64);
    // The silent transfer resent DATA 1 (fewer retries while a client has never answered).
    assert!(delta("ringtftp_data_retransmitted_total", &[]) >= 1.0);
    assert_eq!(delta("ringtftp_transfer_duration_seconds_count", &[]), 2.0);
    // The timed-out transfer lasted at least its retransmissions' 0.1 s timeouts.
    assert!(delta("ringtftp_transfer_duration_seconds_sum", &[]) >= 0.1);
    assert_eq!(
        delta(
            "ringtftp_transfer_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        2.0
    );

    // Both log formats carry the per-transfer record.
    let line = daemon
        .wait_for_log(&["transfer complete", "pxelinux.0"], Duration::from_secs(1))
        .expect("the transfer's line");
    for field in [
        "asked=",
        "blksize=1468",
        "retransmits=",
        "spurious=",
        "ms=",
        "outcome=\"completed\"",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert!(daemon.stop().success());
}

// UEFI firmware (edk2) asks for a file's size before every download: an RRQ with `tsize 0`,
// `blksize` and `windowsize`, answered by the OACK, which the firmware ends with ERROR 8 before
// any DATA. Routine, so it must count as a probe and stay out of the default log, on every
// executor (each reports how its transfers end).
backends!(a_uefi_tsize_probe_is_counted_as_a_probe_and_logged_at_debug_only);

fn a_uefi_tsize_probe_is_counted_as_a_probe_and_logged_at_debug_only(backend: util::Backend) {
    let (dir, bytes) = served(&format!("uefi-probe-{backend}"), "bootx64.efi");
    // The default level (info), then debug, where the probe's line must appear: its absence
    // at info then means the line is at debug, not that there is none.
    for level in [None, Some("debug")] {
        let daemon = Daemon::spawn(Ipv4Addr::LOCALHOST.into(), |port| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
            cmd.arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--directory"])
                .arg(dir.path())
                .args(backend.args())
                .args(["--metrics", "127.0.0.1:0"])
                .args(level.map(|l| ["--log-level", l]).into_iter().flatten())
                .env("NO_COLOR", "1")
                // The level under test is the daemon's default, not whatever the caller set.
                .env_remove("RUST_LOG");
            cmd
        });
        backend.assert_serving(&daemon.log());
        let metrics = metrics_addr(&daemon);
        let before = scrape(metrics);

        // The probe, as edk2's PXE client sends it.
        let server = daemon.addr();
        let peer = util::raw::Peer::new(server);
        let probe = util::raw::rrq(
            "bootx64.efi",
            ringtftp::packet::Mode::Octet,
            &[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")],
        );
        peer.send_to(&probe, server);
        let (reply, tid) = peer
            .recv(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("no answer to the probe on {backend}"));
        let oack = util::raw::parse_oack(&reply).unwrap_or_else(|| {
            panic!(
                "the probe on {backend} got {}, not an OACK",
                util::raw::describe(&reply)
            )
        });
        let tsize = oack.iter().find(|(name, _)| name == "tsize");
        assert_eq!(
            tsize.map(|(_, v)| v.as_str()),
            Some(SIZE.to_string().as_str()),
            "tsize in the OACK on {backend}: {oack:?}"
        );
        peer.send_to(
            &util::raw::error(ringtftp::packet::ErrorCode::OptionRefused, "tsize only"),
            tid,
        );
        // Then the download itself, as the firmware goes on to do.
        let got = util::raw::download(
            server,
            "bootx64.efi",
            ringtftp::packet::Mode::Octet,
            &[("blksize", "1468"), ("windowsize", "4")],
            |_| {},
        )
        .unwrap_or_else(|e| panic!("the download after the probe on {backend}: {e}"));
        assert!(
            got.data == bytes,
            "the download after the probe on {backend}"
        );

        // Both have ended once the download's line is written (the probe's came first).
        daemon
            .wait_for_log(&["transfer complete"], Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no complete line on {backend}:\n{}", daemon.log()));
        let ended = |text: &str, outcome| {
            sum(
                text,
                "ringtftp_transfers_ended_total",
                &[("outcome", outcome)],
            )
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut after = scrape(metrics);
        while ended(&after, "probe") - ended(&before, "probe") < 1.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            after = scrape(metrics);
        }
        let delta = |outcome| ended(&after, outcome) - ended(&before, outcome);
        let counts = ["probe", "completed", "client_error", "protocol", "timeout"]
            .map(|outcome| (outcome, delta(outcome)));
        assert_eq!(
            counts,
            [
                ("probe", 1.0),
                ("completed", 1.0),
                ("client_error", 0.0),
                ("protocol", 0.0),
                ("timeout", 0.0)
            ],
            "transfers ended by outcome on {backend} (level {level:?})"
        );

        let log = daemon.log();
        match level {
            // Nothing but the download's own line names the file: no line for the probe at
            // info or above (such as "transfer ended by the client").
            None => assert!(
                log.lines()
                    .filter(|l| l.contains("bootx64.efi"))
                    .all(|l| l.contains("transfer complete")),
                "the probe is logged at the default level on {backend}:\n{log}"
            ),
            Some(_) => {
                let line = log
                    .lines()
                    .find(|l| l.contains("tsize probe answered"))
                    .unwrap_or_else(|| {
                        panic!("no line for the probe at debug level on {backend}:\n{log}")
                    });
                for needle in ["DEBUG", "file=bootx64.efi", "outcome=\"probe\"", "code=8"] {
                    assert!(line.contains(needle), "{needle} in {line}");
                }
            }
        }
        assert!(daemon.stop().success());
    }
}

/// `--metrics` is bounded whatever connects to it: hundreds of idle connections (a port scan,
/// a scraper that never sends its request) start no thread each, and once they are gone a
/// scrape is answered again.
#[test]
fn idle_metrics_connections_take_no_thread_each() {
    let (dir, _) = served("metrics-idle", "pxelinux.0");
    let daemon = Daemon::start(dir.path(), &["--metrics", "127.0.0.1:0", "--shards", "2"]);
    let addr = metrics_addr(&daemon);
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = threads();
    let idle: Vec<std::net::TcpStream> = (0..300)
        .filter_map(|_| std::net::TcpStream::connect(addr).ok())
        .collect();
    assert!(idle.len() >= 250, "only {} connections", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let during = threads();
    assert!(
        during <= before + 2,
        "{during} threads with {} idle connections (before: {before})",
        idle.len()
    );
    drop(idle);
    // The queued idle connections time out (2 s each, two at a time); then scrapes answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answered = std::panic::catch_unwind(|| scrape(addr));
        if answered.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no scrape answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(daemon.stop().success());
}

/// The address `--metrics 127.0.0.1:0` bound, from the daemon's log.
fn metrics_addr(daemon: &Daemon) -> SocketAddr {
    let line = daemon
        .wait_for_log(&["metrics at http://"], Duration::from_secs(5))
        .expect("the metrics address is logged");
    let url = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an address after http://");
    url.trim_end_matches("/metrics")
        .parse()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// One scrape of http://ADDR/metrics; checks the status, the content type and that the body
/// parses as the Prometheus text format.
fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to --metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send GET");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse_exposition(body);
    body.to_owned()
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text)
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .sum()
}

struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn samples(text: &str) -> impl Iterator<Item = Sample> + '_ {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
}

/// Checks the text exposition format (version 0.0.4): `# HELP` and `# TYPE` lines, one TYPE
/// per family before its samples, samples `name{label="value",...} value` with legal names and
/// escapes, and histograms with cumulative buckets ending in `+Inf` equal to `_count`.
fn parse_exposition(text: &str) {
    use std::collections::HashMap;
    assert!(text.ends_with('\n'), "the text ends with a newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut buckets: HashMap<String, Vec<(String, f64)>> = HashMap::new();
    let mut counts: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(legal_name(name), "bad metric name in {line:?}");
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "bad type in {line:?}"
                    );
                    assert!(
                        types.insert(name.to_owned(), t.to_owned()).is_none(),
                        "TYPE twice: {line:?}"
                    );
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "blank line in the exposition");
        let sample = parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let family = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .find_map(|suffix| {
                let base = sample.name.strip_suffix(suffix)?;
                types.contains_key(base).then(|| base.to_owned())
            })
            .unwrap_or_else(|| sample.name.clone());
        let t = types
            .get(&family)
            .unwrap_or_else(|| panic!("no TYPE before {line:?}"));
        if t == "counter" {
            assert!(sample.value >= 0.0, "negative counter {line:?}");
        }
        if t == "histogram" {
            let series: String = sample
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| format!("{k}={v},"))
                .collect();
            if sample.name.ends_with("_bucket") {
                let le = sample
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("bucket without le: {line:?}"));
                buckets.entry(series).or_default().push((le, sample.value));
            } else if sample.name.ends_with("_count") {
                counts.insert(series, sample.value);
            }
        }
    }
    for (series, list) in &buckets {
        assert!(
            list.windows(2).all(|w| w[0].1 <= w[1].1),
            "buckets of {series} not cumulative"
        );
        let (le, last) = list.last().expect("a bucket");
        assert_eq!(le, "+Inf", "{series} ends with le=\"+Inf\"");
        assert_eq!(
            Some(last),
            counts.get(series),
            "{series}: +Inf bucket == _count"
        );
    }
    assert!(!types.is_empty(), "no metric families");
}

fn legal_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or("no value after the metric name")?;
    let name = &line[..name_end];
    if !legal_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find("=\"").ok_or("a label without =\"")?;
            let key = &rest[..eq];
            if !legal_name(key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let close = loop {
                match chars.next().ok_or("an unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("a dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.to_owned(), value));
            rest = &rest[eq + 2 + close + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let mut fields = rest.trim_start_matches(' ').split(' ');
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}
