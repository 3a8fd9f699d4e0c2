//! Running ringtftpd the way operators do: dropping root with `--user`, socket activation
//! through `systemd-socket-activate`, readiness and stopping over a `NOTIFY_SOCKET`.

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

use crate::server::udp_inodes_on_port;
use crate::util::{
    self, client, fetch_curl, free_udp_port, pattern, run, sha256, sha256_file, write_file, Daemon,
    TempDir, CURL,
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
        let text = text.replace("/usr/bin/ringtftpd", env!("CARGO_BIN_EXE_ringtftpd"));
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
