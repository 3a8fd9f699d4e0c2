//! Requests the server must refuse, and packets it must answer or ignore on its main port:
//! missing files seen through each client, escapes from the root, directories, write requests,
//! stray DATA/ACK/OACK/ERROR, and a repeated RRQ.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use ringtftp::packet::{ErrorCode, Mode as WireMode, Packet};

use crate::util::raw::{self, Peer};
use crate::util::{
    client, fetch_atftp, fetch_busybox, fetch_curl, fetch_tftp_hpa, pattern, run, write_file,
    Backend, Daemon, Mode, TempDir, ATFTP, BUSYBOX, CURL, TFTP_HPA,
};

const FILE_NOT_FOUND: u16 = 1;
const ACCESS_VIOLATION: u16 = 2;
const ILLEGAL_OPERATION: u16 = 4;

tftptest!(missing_file_is_error_1_for_every_client, |root| {
    let out = TempDir::new("missing_file_is_error_1_for_every_client-out");
    let daemon = Daemon::start(root.path(), &[]);
    let addr = daemon.addr();

    let peer = Peer::new(addr);
    let (code, message, _) = peer.expect_error(&raw::rrq("nope", WireMode::Octet, &[]), addr);
    assert_eq!(code, FILE_NOT_FOUND, "raw RRQ: ERROR {code} {message:?}");

    let local = out.join("nope");
    let mut failures = Vec::new();
    // Each client reports an ERROR its own way (see tests/util/clients.rs).
    let mut check = |name: &str, result: Result<(), String>, signal: &str| match result {
        Ok(()) => failures.push(format!("{name}: succeeded fetching a missing file")),
        Err(e) if !e.contains(signal) => {
            failures.push(format!("{name}: failure without {signal:?}:\n{e}"))
        }
        Err(_) => {}
    };
    if client(TFTP_HPA).is_some() {
        let result = fetch_tftp_hpa(addr, "nope", &local, Mode::Octet);
        check("tftp-hpa", result, "Error code 1:");
    }
    if client(ATFTP).is_some() {
        let result = fetch_atftp(addr, "nope", &local, &[("tsize", "")]);
        check(
            "atftp",
            result,
            &format!("error received from server <{message}>"),
        );
    }
    if client(CURL).is_some() {
        // curl 7.88 loses the message; exit 68 is its "file not found".
        check(
            "curl",
            fetch_curl(addr, "nope", &local, None),
            "exit status: 68",
        );
    }
    if client(BUSYBOX).is_some() {
        check(
            "busybox",
            fetch_busybox(addr, "nope", &local, None),
            "server error: (1)",
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
});

/// The root `outer/root` with a secret beside it and escapes of every kind inside it.
struct Escapes {
    outer: TempDir,
}

impl Escapes {
    fn new(label: &str) -> Escapes {
        let outer = TempDir::new(label);
        write_file(outer.path(), "secret", b"secret beside the root\n");
        write_file(outer.path(), "root/inside", b"inside the root\n");
        write_file(outer.path(), "root/sub/file", b"in a subdirectory\n");
        let root = outer.join("root");
        symlink("/etc/passwd", root.join("passwd")).expect("symlink passwd");
        symlink("/etc", root.join("etc-link")).expect("symlink etc-link");
        symlink("..", root.join("up")).expect("symlink up");
        symlink("../secret", root.join("secret-link")).expect("symlink secret-link");
        symlink(outer.join("secret"), root.join("absolute-link")).expect("symlink absolute");
        Escapes { outer }
    }

    fn root(&self) -> std::path::PathBuf {
        self.outer.join("root")
    }

    /// Panics unless each of `names` is refused with ERROR 1 or 2 naming no server path.
    fn assert_refused(&self, server: std::net::SocketAddr, names: &[&str]) {
        let peer = Peer::new(server);
        for name in names {
            let (code, message, _) =
                peer.expect_error(&raw::rrq(name, WireMode::Octet, &[]), server);
            assert!(
                code == FILE_NOT_FOUND || code == ACCESS_VIOLATION,
                "RRQ {name:?}: ERROR {code} {message:?}, expected 1 or 2"
            );
            self.assert_no_path(name, &message);
        }
    }

    /// Panics if an ERROR message names a server path.
    fn assert_no_path(&self, name: &str, message: &str) {
        let outer = self.outer.path().to_string_lossy();
        for leak in [&*outer, "ringtftp-test", "/tmp", "/etc", "/root"] {
            assert!(
                !message.contains(leak),
                "ERROR for {name:?} leaks a server path ({leak}): {message:?}"
            );
        }
    }
}

#[test]
fn escapes_from_the_root_are_access_violations() {
    let tree = Escapes::new("escapes_from_the_root_are_access_violations");
    let daemon = Daemon::start(&tree.root(), &[]);
    let peer = Peer::new(daemon.addr());
    for name in [
        "../secret",
        "sub/../../secret",
        "..\\secret",
        "sub/../../root/inside",
        "..",
        "passwd",
        "etc-link/passwd",
        "up/secret",
        "secret-link",
        "absolute-link",
    ] {
        let (code, message, _) =
            peer.expect_error(&raw::rrq(name, WireMode::Octet, &[]), daemon.addr());
        assert_eq!(
            code, ACCESS_VIOLATION,
            "RRQ {name:?}: ERROR {code} {message:?}"
        );
        tree.assert_no_path(name, &message);
    }
}

/// An absolute name is taken relative to the root (`/pxelinux.0`, as PXE ROMs ask, is
/// `pxelinux.0` beneath it; see `DirectoryResolver`), so an absolute path elsewhere on the host
/// is never served: the answer is an ERROR, never DATA.
#[test]
fn absolute_paths_stay_beneath_the_root() {
    let tree = Escapes::new("absolute_paths_stay_beneath_the_root");
    let daemon = Daemon::start(&tree.root(), &[]);
    let secret = tree.outer.join("secret").to_string_lossy().into_owned();
    tree.assert_refused(
        daemon.addr(),
        &["/etc/passwd", secret.as_str(), "//etc/passwd", "/../secret"],
    );
    // The same leading slash in front of a file that is beneath the root serves it.
    let got = raw::download(daemon.addr(), "/inside", WireMode::Octet, &[], |_| {})
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.data, b"inside the root\n");
}

#[test]
fn directories_are_refused_without_naming_paths() {
    let tree = Escapes::new("directories_are_refused_without_naming_paths");
    let daemon = Daemon::start(&tree.root(), &[]);
    tree.assert_refused(daemon.addr(), &["sub", "sub/", ".", "/", "sub/.."]);
}

/// Every file and directory beneath `dir` with its length and modification time.
fn listing(dir: &Path) -> BTreeMap<String, (u64, Option<SystemTime>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("dir entry");
            let meta = entry.path().symlink_metadata().expect("metadata");
            let rel = entry
                .path()
                .strip_prefix(dir)
                .expect("beneath")
                .to_string_lossy()
                .into_owned();
            out.insert(rel, (meta.len(), meta.modified().ok()));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

tftptest!(write_requests_are_refused_and_nothing_is_written, |root| {
    let out = TempDir::new("write_requests_are_refused_and_nothing_is_written-out");
    write_file(root.path(), "existing", b"do not overwrite\n");
    let upload = write_file(out.path(), "upload.bin", &pattern(3000, 9));
    let before = listing(root.path());
    let daemon = Daemon::start(root.path(), &[]);
    let addr = daemon.addr();

    let peer = Peer::new(addr);
    for (name, mode) in [
        ("new.bin", WireMode::Octet),
        ("existing", WireMode::Octet),
        ("new.txt", WireMode::Netascii),
        ("sub/new.bin", WireMode::Octet),
    ] {
        let wrq = raw::wrq(name, mode, &[("blksize", "1428"), ("tsize", "3000")]);
        let (code, message, from) = peer.expect_error(&wrq, addr);
        assert_eq!(
            code, ACCESS_VIOLATION,
            "WRQ {name:?}: ERROR {code} {message:?}"
        );
        assert!(
            message.to_ascii_lowercase().contains("read-only"),
            "WRQ {name:?}: the ERROR should say the server is read-only: {message:?}"
        );
        assert_eq!(from, addr, "WRQ {name:?} answered from another port");
        // A client that goes on regardless: its DATA 1 is not part of any transfer.
        let (code, _, _) = peer.expect_error(&raw::data(1, b"overwrite!"), addr);
        assert_eq!(code, ILLEGAL_OPERATION, "DATA 1 after WRQ {name:?}");
    }

    let local = upload.to_string_lossy().into_owned();
    let port = addr.port().to_string();
    let mut failures = Vec::new();
    if client(TFTP_HPA).is_some() {
        // tftp-hpa exits 0 on an ERROR: the ERROR line on stdout is the signal.
        let mut cmd = Command::new(TFTP_HPA);
        cmd.args(["-4", "-v", "-m", "octet", "127.0.0.1", &port, "-c", "put"])
            .args([&local, "hpa.bin"]);
        let done = run(cmd, Duration::from_secs(60));
        if !done.stdout.contains("Error code 2:") {
            failures.push(format!("tftp-hpa put: no ERROR 2\n{}", done.describe()));
        }
    }
    if client(CURL).is_some() {
        let mut cmd = Command::new(CURL);
        cmd.args(["-sS", "-T", &local])
            .arg(format!("tftp://127.0.0.1:{port}/curl.bin"));
        let done = run(cmd, Duration::from_secs(60));
        // 69: curl's "access violation" (TFTP ERROR 2).
        if done.status.and_then(|s| s.code()) != Some(69) {
            failures.push(format!("curl -T: expected exit 69\n{}", done.describe()));
        }
    }
    if client(ATFTP).is_some() {
        let mut cmd = Command::new(ATFTP);
        cmd.args(["--put", "-l", &local, "-r", "atftp.bin", "127.0.0.1", &port]);
        let done = run(cmd, Duration::from_secs(60));
        if done.success() || !done.stderr.contains("read-only") {
            failures.push(format!("atftp --put: not refused\n{}", done.describe()));
        }
    }
    if client(BUSYBOX).is_some() {
        let mut cmd = Command::new(BUSYBOX);
        cmd.args([
            "tftp",
            "-p",
            "-l",
            &local,
            "-r",
            "busybox.bin",
            "127.0.0.1",
            &port,
        ]);
        let done = run(cmd, Duration::from_secs(60));
        if done.success() || !done.stderr.contains("server error: (2)") {
            failures.push(format!("busybox tftp -p: not refused\n{}", done.describe()));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(listing(root.path()), before, "the served directory changed");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
});

tftptest!(
    data_ack_and_oack_on_the_main_port_are_illegal_operations,
    |root| {
        let daemon = Daemon::start(root.path(), &[]);
        let peer = Peer::new(daemon.addr());
        for (what, datagram) in [
            ("DATA 1", raw::data(1, b"hello")),
            ("empty DATA 7", raw::data(7, b"")),
            ("ACK 0", raw::ack(0)),
            ("ACK 1", raw::ack(1)),
            ("OACK", raw::oack(&[("blksize", "1428")])),
        ] {
            let (code, message, from) = peer.expect_error(&datagram, daemon.addr());
            assert_eq!(
                code, ILLEGAL_OPERATION,
                "{what} on the main port: ERROR {code} {message:?}"
            );
            assert_eq!(from, daemon.addr(), "{what}: answered from another port");
        }
        // An empty OACK is 2 bytes, shorter than any packet: not worth a 25 times larger ERROR.
        peer.send_to(&raw::oack(&[]), daemon.addr());
        assert!(peer.collect(Duration::from_millis(300)).is_empty());
    }
);

tftptest!(error_on_the_main_port_gets_no_reply, |root| {
    let daemon = Daemon::start(root.path(), &[]);
    let peer = Peer::new(daemon.addr());
    for datagram in [
        raw::error(ErrorCode::FileNotFound, "whatever"),
        raw::error(ErrorCode::UnknownTid, ""),
        raw::error(ErrorCode::Other(99), "odd code"),
    ] {
        peer.send_to(&datagram, daemon.addr());
        if let Some((reply, from)) = peer.recv(Duration::from_millis(300)) {
            panic!(
                "ERROR on the main port got {} from {from}; RFC 1350 says an ERROR is never \
                 answered",
                raw::describe(&reply)
            );
        }
    }
    // Still serving: the same peer gets its answer.
    let (code, _, _) = peer.expect_error(&raw::rrq("nope", WireMode::Octet, &[]), daemon.addr());
    assert_eq!(code, FILE_NOT_FOUND);
});

// RFC 1350 §4 (and the Sorcerer's Apprentice): a client that repeats its RRQ before the first
// answer arrives must not get two transfers. Nothing is acknowledged here, so each transfer
// would send its first packet (and perhaps retransmit it) from its own port.
// Which requests repeat a running transfer is decided by admission, but each executor finds
// the transfer to hand the repeat to.
backends!(a_repeated_rrq_does_not_start_a_second_transfer);

fn a_repeated_rrq_does_not_start_a_second_transfer(backend: Backend) {
    let root = TempDir::new(&format!("a_repeated_rrq-{backend}"));
    write_file(root.path(), "file", &pattern(100_000, 5));
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    for options in [&[][..], &[("blksize", "1428"), ("tsize", "0")][..]] {
        let peer = Peer::new(daemon.addr());
        let rrq = raw::rrq("file", WireMode::Octet, options);
        for _ in 0..3 {
            peer.send_to(&rrq, daemon.addr());
        }
        let got = peer.collect(Duration::from_millis(500));
        assert!(!got.is_empty(), "no answer to RRQ with {options:?}");
        let sources: std::collections::BTreeSet<SocketAddr> =
            got.iter().map(|(_, from)| *from).collect();
        let kinds: Vec<String> = got
            .iter()
            .map(|(d, from)| format!("{} from {from}", raw::describe(d)))
            .collect();
        assert_eq!(
            sources.len(),
            1,
            "RRQ x3 with {options:?} on {backend} answered from {} ports: {kinds:?}",
            sources.len()
        );
        let tid = *sources.iter().next().unwrap();
        assert_ne!(tid, daemon.addr(), "transfer answered from the main port");
        for (datagram, _) in &got {
            let first = match Packet::parse(datagram) {
                Ok(Packet::Data { block, .. }) => block == 1 && options.is_empty(),
                Ok(Packet::Oack(_)) => !options.is_empty(),
                _ => false,
            };
            assert!(
                first,
                "unexpected {kinds:?} for options {options:?} on {backend}"
            );
        }
        // End the transfer politely.
        peer.send_to(&raw::error(ErrorCode::Undefined, "test done"), tid);
    }
}

/// Hardware that asks for options it cannot take never acknowledges the OACK, then asks again
/// (NVIDIA DGX firmware, fbtftp issue 51). Once its OACKs have gone unanswered through their
/// retries twice in a row, that client's next request for the file is answered without options
/// (RFC 2347 lets a server ignore them): DATA 1 of 512 bytes. Another client, or another file,
/// still gets its OACK; and a client that then answers an OACK for the file takes options
/// again.
#[test]
fn a_client_that_never_answers_the_oack_is_next_answered_without_options() {
    let root = TempDir::new("unanswered_oack");
    let bytes = pattern(4000, 5);
    write_file(root.path(), "boot.img", &bytes);
    write_file(root.path(), "other.img", &bytes);
    let daemon = Daemon::start(root.path(), &["--timeout", "0.05", "--retries", "1"]);
    let server = daemon.addr();
    let rrq = |name: &str| raw::rrq(name, WireMode::Octet, &[("blksize", "1468")]);
    let first_reply = |from: Peer, name: &str| -> Vec<u8> {
        from.send_to(&rrq(name), server);
        let (reply, tid) = from
            .recv(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("no answer for {name}"));
        // Ends the transfer, whatever it is.
        from.send_to(&raw::error(ErrorCode::Undefined, "enough"), tid);
        reply
    };

    // The OACK, never answered, twice: each transfer gives up after its retries. After the
    // first, options still stand (one lost OACK proves nothing).
    for attempt in 1..=2 {
        let silent = Peer::new(server);
        silent.send_to(&rrq("boot.img"), server);
        let (oack, _) = silent.recv(Duration::from_secs(2)).expect("an OACK");
        assert!(
            raw::parse_oack(&oack).is_some(),
            "attempt {attempt}: {}",
            raw::describe(&oack)
        );
        let start = std::time::Instant::now();
        while daemon.log().matches("never answered the OACK").count() < attempt {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the transfer did not give up:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    let again = first_reply(Peer::new(server), "boot.img");
    assert_eq!(
        &again[..4],
        b"\x00\x03\x00\x01",
        "{}",
        raw::describe(&again)
    );
    assert_eq!(&again[4..], &bytes[..512], "not plain 512-byte blocks");
    // Another file from the same client, and the same file from another client: options.
    let other_file = first_reply(Peer::new(server), "other.img");
    assert!(
        raw::parse_oack(&other_file).is_some(),
        "{}",
        raw::describe(&other_file)
    );
    let other_client = first_reply(
        Peer::bind(std::net::Ipv4Addr::new(127, 0, 0, 2).into()),
        "boot.img",
    );
    assert!(
        raw::parse_oack(&other_client).is_some(),
        "{}",
        raw::describe(&other_client)
    );
    // A whole download without options, byte-exact.
    let got = raw::download(
        server,
        "boot.img",
        WireMode::Octet,
        &[("blksize", "1468")],
        |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.data, bytes);
    assert!(got.oack.is_empty(), "options granted: {:?}", got.oack);
}
