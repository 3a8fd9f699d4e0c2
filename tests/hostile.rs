//! Hostile input against the real daemon: a corpus of malformed, illegal and abusive datagrams
//! on the main port, a stray transfer ID during a transfer, a garbage flood, a client that
//! vanishes mid-transfer and one that closes its port. After each, the server must still be
//! up, must not have leaked a path or a byte from outside its root, and must serve a normal
//! transfer byte-exact.

use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use ringtftp::packet::Mode as WireMode;

use crate::util::raw::{self, describe, parse_error, Peer};
use crate::util::{pattern, sha256, write_file, Backend, Daemon, TempDir};

/// What the server must answer a hostile datagram with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// An ERROR with this code.
    Error(u16),
    /// Nothing at all.
    Silence,
}

/// A served file, downloaded in lock-step after the abuse, must arrive intact.
fn still_serves(server: SocketAddr, expected: &[u8]) {
    let got = raw::download(
        server,
        "ok.bin",
        WireMode::Octet,
        &[("blksize", "1468")],
        |_| {},
    )
    .unwrap_or_else(|e| panic!("a normal transfer failed after hostile input: {e}"));
    assert_eq!(
        sha256(&got.data),
        sha256(expected),
        "normal transfer corrupted"
    );
}

fn hostile_root(label: &str) -> (TempDir, Vec<u8>) {
    let root = TempDir::new(label);
    let good = pattern(100_000, 7);
    write_file(root.path(), "ok.bin", &good);
    write_file(root.path(), "sub/inner.txt", b"inner");
    symlink("/etc/passwd", root.join("passwd")).expect("symlink");
    symlink("/etc", root.join("etc")).expect("symlink");
    (root, good)
}

fn request(opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut datagram = vec![0, opcode];
    datagram.extend_from_slice(body);
    datagram
}

#[test]
fn hostile_corpus_gets_errors_or_silence_and_leaks_nothing() {
    let (root, good) = hostile_root("hostile_corpus");
    let daemon = Daemon::start(root.path(), &[]);
    let server = daemon.addr();
    let root_text = root.path().to_string_lossy().into_owned();

    let flood: Vec<u8> = (0..400)
        .flat_map(|i| format!("opt{i}\0{i}\0").into_bytes())
        .collect();
    let huge_options = {
        let mut body = b"ok.bin\0octet\0".to_vec();
        body.extend_from_slice(&flood);
        body
    };
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("empty datagram", vec![], Expect::Silence),
        ("one byte", vec![0], Expect::Silence),
        ("unknown opcode 9", vec![0, 9, 1, 2, 3], Expect::Error(4)),
        // Shorter than the smallest packet (4 bytes): silence rather than a 10x larger ERROR.
        ("opcode 0, 2 bytes", vec![0, 0], Expect::Silence),
        (
            "opcode 0xffff, 3 bytes",
            vec![0xff, 0xff, 0],
            Expect::Silence,
        ),
        ("opcode 0", vec![0, 0, 0, 0], Expect::Error(4)),
        ("opcode 0xffff", vec![0xff, 0xff, 0, 0], Expect::Error(4)),
        (
            "RRQ without terminators",
            request(1, b"ok.bin"),
            Expect::Error(4),
        ),
        (
            "RRQ without mode terminator",
            request(1, b"ok.bin\0octet"),
            Expect::Error(4),
        ),
        (
            "RRQ empty filename",
            request(1, b"\0octet\0"),
            Expect::Error(4),
        ),
        (
            "RRQ mode mail",
            request(1, b"ok.bin\0mail\0"),
            Expect::Error(0),
        ),
        (
            "RRQ mode binary",
            request(1, b"ok.bin\0binary\0"),
            Expect::Error(0),
        ),
        (
            "RRQ control byte",
            request(1, b"ok\x01.bin\0octet\0"),
            Expect::Error(2),
        ),
        (
            "RRQ newline in name",
            request(1, b"ok\n.bin\0octet\0"),
            Expect::Error(2),
        ),
        (
            "RRQ invalid UTF-8",
            request(1, b"\xff\xfe\0octet\0"),
            Expect::Error(2),
        ),
        (
            "RRQ ../ escape",
            request(1, b"../../../../etc/passwd\0octet\0"),
            Expect::Error(2),
        ),
        (
            "RRQ sub/../../ escape",
            request(1, b"sub/../../x\0octet\0"),
            Expect::Error(2),
        ),
        (
            "RRQ backslash escape",
            request(1, b"..\\..\\etc\\passwd\0octet\0"),
            Expect::Error(2),
        ),
        (
            "RRQ symlink to /etc/passwd",
            request(1, b"passwd\0octet\0"),
            Expect::Error(2),
        ),
        (
            "RRQ through a symlinked dir",
            request(1, b"etc/passwd\0octet\0"),
            Expect::Error(2),
        ),
        (
            "RRQ absolute path through the etc symlink",
            request(1, b"/etc/passwd\0octet\0"),
            Expect::Error(2),
        ),
        (
            "RRQ absolute path outside",
            request(1, b"/usr/bin/env\0octet\0"),
            Expect::Error(1),
        ),
        (
            "RRQ the root itself",
            request(1, b"/\0octet\0"),
            Expect::Error(2),
        ),
        (
            "RRQ a directory",
            request(1, b"sub\0octet\0"),
            Expect::Error(2),
        ),
        (
            "RRQ /proc",
            request(1, b"/proc/self/environ\0octet\0"),
            Expect::Error(1),
        ),
        (
            "blksize 0",
            request(1, b"ok.bin\0octet\0blksize\x000\0"),
            Expect::Error(8),
        ),
        (
            "blksize 7",
            request(1, b"ok.bin\0octet\0blksize\x007\0"),
            Expect::Error(8),
        ),
        (
            "blksize text",
            request(1, b"ok.bin\0octet\0blksize\0big\0"),
            Expect::Error(8),
        ),
        (
            "blksize negative",
            request(1, b"ok.bin\0octet\0blksize\0-5\0"),
            Expect::Error(8),
        ),
        (
            "timeout 0",
            request(1, b"ok.bin\0octet\0timeout\x000\0"),
            Expect::Error(8),
        ),
        (
            "timeout 1000",
            request(1, b"ok.bin\0octet\0timeout\x001000\0"),
            Expect::Error(8),
        ),
        (
            "timeout text",
            request(1, b"ok.bin\0octet\0timeout\0soon\0"),
            Expect::Error(8),
        ),
        (
            "windowsize 0",
            request(1, b"ok.bin\0octet\0windowsize\x000\0"),
            Expect::Error(8),
        ),
        (
            "huge option flood (over 512 bytes)",
            request(1, &huge_options),
            Expect::Error(4),
        ),
        ("WRQ", request(2, b"new.bin\0octet\0"), Expect::Error(2)),
        (
            "WRQ with an escape",
            request(2, b"../evil\0octet\0"),
            Expect::Error(2),
        ),
        (
            "DATA on the main port",
            request(3, b"\x00\x01hello"),
            Expect::Error(4),
        ),
        (
            "ACK on the main port",
            request(4, b"\x00\x01"),
            Expect::Error(4),
        ),
        (
            "OACK on the main port",
            request(6, b"blksize\x00512\0"),
            Expect::Error(4),
        ),
        (
            "ERROR on the main port",
            request(5, b"\x00\x01oops\0"),
            Expect::Silence,
        ),
    ];

    let mut failures = Vec::new();
    for (name, datagram, expect) in &cases {
        let peer = Peer::new(server);
        peer.send_to(datagram, server);
        let replies = peer.collect(Duration::from_millis(300));
        let outcome = match replies.as_slice() {
            [] => Expect::Silence,
            [(reply, _)] => match parse_error(reply) {
                Some((code, message)) => {
                    if message.contains(&root_text) || message.contains("/tmp") {
                        failures.push(format!("{name}: ERROR text leaks a path: {message:?}"));
                    }
                    Expect::Error(code)
                }
                None => {
                    failures.push(format!("{name}: answered {}", describe(reply)));
                    continue;
                }
            },
            more => {
                failures.push(format!("{name}: {} replies", more.len()));
                continue;
            }
        };
        if outcome != *expect {
            failures.push(format!("{name}: expected {expect:?}, got {outcome:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "hostile cases answered wrongly:\n{}",
        failures.join("\n")
    );
    assert!(!root.join("new.bin").exists(), "a WRQ wrote a file");
    assert!(
        !root.path().parent().unwrap().join("evil").exists(),
        "a WRQ escaped the root"
    );
    still_serves(server, &good);
    assert!(
        !daemon.log().contains("panicked"),
        "the daemon panicked:\n{}",
        daemon.log()
    );
}

// The corpus above is decided by admission, the same code on every backend; what follows goes
// through each executor's receives, timers and descriptors.
backends!(
    a_stray_tid_does_not_disturb_a_transfer,
    a_garbage_flood_is_survived,
    a_vanished_client_is_given_up_and_its_resources_released,
    a_closed_client_port_ends_the_transfer_at_once,
);

fn a_stray_tid_does_not_disturb_a_transfer(backend: Backend) {
    let (root, good) = hostile_root(&format!("stray_tid-{backend}"));
    let big = pattern(2_000_000, 11);
    write_file(root.path(), "big.bin", &big);
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    let server = daemon.addr();
    let stray = Peer::new(server);
    let mut peppered = 0;
    let got = raw::download(
        server,
        "big.bin",
        WireMode::Octet,
        &[("blksize", "1468")],
        |n| {
            // Once the transfer port is known, pepper it from another port with ACKs for blocks
            // far ahead, ERRORs and garbage: the kernel drops them (the transfer socket is
            // connected to the real client), so nothing may change.
            if n % 50 == 0 {
                if let Some(port) = transfer_port(&daemon) {
                    let to = SocketAddr::new(server.ip(), port);
                    stray.send_to(&raw::ack(60000), to);
                    stray.send_to(&raw::error(ringtftp::packet::ErrorCode::Undefined, "x"), to);
                    stray.send_to(b"garbage", to);
                    peppered += 1;
                }
            }
        },
    )
    .expect("download with a stray sender");
    assert!(peppered > 0, "the transfer port was never found");
    assert_eq!(sha256(&got.data), sha256(&big));
    still_serves(server, &good);
}

/// The transfer port of the one running transfer, from /proc/net/udp (its connected socket).
fn transfer_port(daemon: &Daemon) -> Option<u16> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    // A connected socket shows the remote address; the main socket's is 0.
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?;
        let remote = fields.get(2)?;
        let inode = fields.get(9)?;
        if remote.ends_with(":0000") || !owned_by(daemon.pid(), inode) {
            return None;
        }
        u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
    })
}

fn owned_by(pid: u32, inode: &str) -> bool {
    let needle = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy() == needle)
        })
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

fn a_garbage_flood_is_survived(backend: Backend) {
    let (root, good) = hostile_root(&format!("garbage_flood-{backend}"));
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    let server = daemon.addr();
    let peer = Peer::new(server);
    // Bounded: 20 000 datagrams of pseudo-random bytes and lengths, as fast as they go.
    let noise = pattern(20_000 * 64, 3);
    for (i, chunk) in noise.chunks(64).enumerate() {
        peer.send_to(&chunk[..i % 64], server);
    }
    still_serves(server, &good);
    assert!(!daemon.log().contains("panicked"));
}

/// Starts a lock-step download of a 4 MB file from `daemon` and acknowledges its first 20
/// blocks; returns the client's socket, the daemon's descriptors before the transfer, and the
/// transfer's port.
fn take_20_blocks(daemon: &Daemon) -> (Peer, usize, SocketAddr) {
    let server = daemon.addr();
    let idle = open_fds(daemon.pid());
    let peer = Peer::new(server);
    peer.send_to(&raw::rrq("big.bin", WireMode::Octet, &[]), server);
    let mut block = 0u16;
    let mut tid = server;
    while block < 20 {
        let (reply, from) = peer
            .recv(Duration::from_secs(2))
            .expect("DATA from the server");
        if let Ok(ringtftp::packet::Packet::Data { block: b, .. }) =
            ringtftp::packet::Packet::parse(&reply)
        {
            if b == block.wrapping_add(1) {
                block = b;
            }
            tid = from;
            peer.send_to(&raw::ack(b), from);
        }
    }
    assert!(
        open_fds(daemon.pid()) > idle,
        "a running transfer holds a socket and the file"
    );
    (peer, idle, tid)
}

/// Waits up to 5 s for the daemon to be back to `idle` descriptors.
fn assert_released(daemon: &Daemon, idle: usize, backend: Backend) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds(daemon.pid()) > idle && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        open_fds(daemon.pid()),
        idle,
        "descriptors leaked by an abandoned transfer on {backend}"
    );
}

fn a_vanished_client_is_given_up_and_its_resources_released(backend: Backend) {
    let (root, good) = hostile_root(&format!("vanished_client-{backend}"));
    let big = pattern(4_000_000, 5);
    write_file(root.path(), "big.bin", &big);
    let daemon = Daemon::start_backend(backend, root.path(), &["--retries", "2"]);
    // Take 20 blocks, then vanish without a word. The socket stays open but silent, as when a
    // machine loses power: a closed port would draw an ICMP error that ends the transfer at
    // once (see the next test).
    let (peer, idle, _) = take_20_blocks(&daemon);
    // The server retries with backoff and gives up after its patience (12 s).
    let line = daemon.wait_for_log(&["timed out"], Duration::from_secs(30));
    let line = line.unwrap_or_else(|| panic!("no give-up logged on {backend}:\n{}", daemon.log()));
    assert!(line.contains("outcome=\"timeout\""), "{line}");
    assert_released(&daemon, idle, backend);
    drop(peer);
    still_serves(daemon.addr(), &good);
}

/// A client that leaves mid-transfer and closes its socket (a firmware that gave up, a killed
/// process): the next DATA draws an ICMP port unreachable, which the transfer socket reports
/// as `ECONNREFUSED`, and the transfer ends within a few retransmissions — long before the
/// 12 s a silent client is given.
fn a_closed_client_port_ends_the_transfer_at_once(backend: Backend) {
    let (root, good) = hostile_root(&format!("closed_port-{backend}"));
    let big = pattern(4_000_000, 5);
    write_file(root.path(), "big.bin", &big);
    let daemon = Daemon::start_backend(backend, root.path(), &[]);
    let (peer, idle, tid) = take_20_blocks(&daemon);
    let closed = Instant::now();
    drop(peer);
    let needles = ["port is closed", "file=big.bin "];
    let line = daemon.wait_for_log(&needles, Duration::from_secs(8));
    let line = line.unwrap_or_else(|| {
        panic!(
            "no \"port is closed\" within 8 s of closing the client's port (transfer port \
             {tid}) on {backend}:\n{}",
            daemon.log()
        )
    });
    let took = closed.elapsed();
    assert!(line.contains("outcome=\"unreachable\""), "{line}");
    assert!(
        !daemon.log().contains("timed out"),
        "the transfer waited for a silent client instead:\n{}",
        daemon.log()
    );
    assert_released(&daemon, idle, backend);
    println!("closed client port noticed on {backend} after {took:.2?}");
    still_serves(daemon.addr(), &good);
}

/// Old PXE ROMs read DHCP's boot filename past its end and append DHCP's `end` option, 0xFF,
/// to the name (netboot.xyz issue 1198: `netboot.xyz.efi` then `ff 00` on the wire). Sent byte
/// for byte, the file meant is served; the trimmed name is confined like any other, and 0xFF
/// inside a name is still refused.
#[test]
fn trailing_ff_junk_after_a_filename_serves_the_file_meant() {
    let outer = TempDir::new("trailing_ff");
    let root = outer.join("root");
    let bytes = pattern(3000, 11);
    write_file(&root, "netboot.xyz.efi", &bytes);
    write_file(outer.path(), "secret", b"outside the root\n");
    let daemon = Daemon::start(&root, &[]);
    let server = daemon.addr();
    for junk in [&b"\xff"[..], b"\xff\xff\xff\xff\xff"] {
        let mut rrq = b"\x00\x01netboot.xyz.efi".to_vec();
        rrq.extend_from_slice(junk);
        rrq.extend_from_slice(b"\x00octet\x00");
        let peer = Peer::new(server);
        peer.send_to(&rrq, server);
        let (first, tid) = peer
            .recv(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("no answer to {rrq:?}"));
        // DATA 1 (lock-step, 512 bytes) of the file meant.
        assert_eq!(&first[..4], b"\x00\x03\x00\x01", "{}", describe(&first));
        assert_eq!(&first[4..], &bytes[..512]);
        peer.send_to(
            &raw::error(ringtftp::packet::ErrorCode::Undefined, "enough"),
            tid,
        );
    }
    let refused: [(&[u8], u16); 3] = [
        // Trimmed to `../secret`: outside the root.
        (b"\x00\x01../secret\xff\x00octet\x00", 2),
        // 0xFF within the name: not UTF-8, not a name ("Invalid request, bad filename").
        (b"\x00\x01netboot\xff.xyz.efi\x00octet\x00", 2),
        // Nothing but junk: no name at all, an ill-formed request.
        (b"\x00\x01\xff\xff\x00octet\x00", 4),
    ];
    for (rrq, code) in refused {
        let peer = Peer::new(server);
        let (got, message, _) = peer.expect_error(rrq, server);
        assert_eq!(got, code, "{rrq:?}: {message}");
        assert!(!message.contains("outside"), "{message}");
    }
    let got = raw::download(server, "netboot.xyz.efi", WireMode::Octet, &[], |_| {})
        .unwrap_or_else(|e| panic!("netboot.xyz.efi: {e}"));
    assert_eq!(got.data, bytes);
}
