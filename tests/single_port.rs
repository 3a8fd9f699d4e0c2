//! `--single-port`: every transfer answered from the main port, told apart by the client's
//! address and port — real clients byte-exact, windows, shards that keep each client's packets
//! to themselves, a client that asks again from the same port, and strays that change nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use ringtftp::packet::Mode as WireMode;

use crate::util::raw::{ack, data, parse_error, rrq, Peer};
use crate::util::{
    client, fetch_atftp, fetch_busybox, fetch_curl, fetch_tftp_hpa, pattern, sha256, sha256_file,
    write_file, Backend, Daemon, Mode, TempDir, ATFTP, BUSYBOX, CURL, TFTP_HPA,
};

/// A lock-step download of `name` (no options: 512-byte blocks) that insists every reply comes
/// from `server` itself: the main port, never a transfer port of its own.
fn download_from_main_port(peer: &Peer, server: SocketAddr, name: &str) -> Result<Vec<u8>, String> {
    let request = rrq(name, WireMode::Octet, &[]);
    peer.send_to(&request, server);
    let mut last = request;
    let mut got = Vec::new();
    let mut next = 1u16;
    let mut silent = 0;
    loop {
        let Some((reply, from)) = peer.recv(Duration::from_secs(1)) else {
            silent += 1;
            if silent > 8 {
                return Err(format!("{name}: silent after {} bytes", got.len()));
            }
            peer.send_to(&last, server);
            continue;
        };
        silent = 0;
        if from != server {
            return Err(format!(
                "{name}: a reply came from {from}, not the main port {server}"
            ));
        }
        if let Some((code, message)) = parse_error(&reply) {
            return Err(format!("{name}: ERROR {code} {message:?}"));
        }
        if reply.len() < 4 || reply[..2] != [0, 3] {
            return Err(format!("{name}: not DATA: {reply:?}"));
        }
        let block = u16::from_be_bytes([reply[2], reply[3]]);
        if block == next {
            got.extend_from_slice(&reply[4..]);
            next = next.wrapping_add(1);
        }
        last = ack(block);
        peer.send_to(&last, server);
        if block == next.wrapping_sub(1) && reply.len() < 4 + 512 {
            return Ok(got);
        }
    }
}

// Each executor routes a shared main socket's datagrams to its transfers its own way. epoll
// matters most: it runs where io_uring is blocked (a container's default seccomp profile),
// which is where single-port mode is most needed.
backends!(
    real_clients_are_served_from_the_main_port,
    shards_keep_each_client_on_its_shard,
    a_client_asking_again_from_its_port_gets_its_new_file,
    strays_on_the_main_port_never_disturb_a_transfer,
);

fn real_clients_are_served_from_the_main_port(backend: Backend) {
    let root = TempDir::new(&format!("single_port_real_clients-{backend}"));
    let sizes = [0usize, 513, 1 << 20];
    let files: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .map(|&len| {
            let name = format!("f{len}");
            let bytes = pattern(len, len as u64 + 7);
            write_file(root.path(), &name, &bytes);
            (name, bytes)
        })
        .collect();
    let daemon = Daemon::start_backend(backend, root.path(), &["--single-port"]);
    let addr = daemon.addr();
    // The first reply comes from the main port itself.
    let peer = Peer::new(addr);
    let got = download_from_main_port(&peer, addr, "f513").expect("raw download");
    assert_eq!(got, files[1].1);
    for (name, bytes) in &files {
        let want = sha256(bytes);
        let out = root.join(format!("{name}.out"));
        let mut fetched = Vec::new();
        if client(CURL).is_some() {
            fetch_curl(addr, name, &out, Some(1468)).unwrap_or_else(|e| panic!("curl {name}: {e}"));
            fetched.push(("curl", sha256_file(&out)));
        }
        if client(TFTP_HPA).is_some() {
            fetch_tftp_hpa(addr, name, &out, Mode::Octet)
                .unwrap_or_else(|e| panic!("tftp-hpa {name}: {e}"));
            fetched.push(("tftp-hpa", sha256_file(&out)));
        }
        if client(ATFTP).is_some() {
            // A window of 16 large blocks: one GSO send from the main socket per window.
            fetch_atftp(
                addr,
                name,
                &out,
                &[("blksize", "1468"), ("windowsize", "16")],
            )
            .unwrap_or_else(|e| panic!("atftp {name}: {e}"));
            fetched.push(("atftp windowsize 16", sha256_file(&out)));
        }
        if client(BUSYBOX).is_some() {
            fetch_busybox(addr, name, &out, Some(1468))
                .unwrap_or_else(|e| panic!("busybox {name}: {e}"));
            fetched.push(("busybox", sha256_file(&out)));
        }
        for (who, sha) in fetched {
            assert_eq!(sha, want, "{who} fetched {name} on {backend}");
        }
    }
    assert!(
        daemon.log().contains("transfer complete"),
        "{}",
        daemon.log()
    );
}

/// The SO_REUSEPORT hash is over the whole address pair, so a client's ACKs reach the shard
/// that took its request: were they spread, transfers would stall on the other shard.
fn shards_keep_each_client_on_its_shard(backend: Backend) {
    const CLIENTS: usize = 64;
    let root = TempDir::new(&format!("single_port_shards-{backend}"));
    let body = pattern(300 * 1024 + 11, 3);
    write_file(root.path(), "f", &body);
    let daemon = Daemon::start_backend(backend, root.path(), &["--single-port", "--shards", "2"]);
    let addr = daemon.addr();
    let line = Arc::new(Barrier::new(CLIENTS));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let line = line.clone();
            thread::spawn(move || {
                let peer = Peer::new(addr);
                line.wait();
                download_from_main_port(&peer, addr, "f")
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let got = c
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("client {i} on {backend}: {e}"));
        assert!(
            got == body,
            "client {i} on {backend}: {} bytes, not byte-exact",
            got.len()
        );
    }
    // A client is done once its final ACK is sent; the server logs the transfer when that ACK
    // arrives, a moment later on a loaded machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut log = daemon.log();
    while log.matches("transfer complete").count() < CLIENTS && std::time::Instant::now() < deadline
    {
        thread::sleep(std::time::Duration::from_millis(20));
        log = daemon.log();
    }
    assert_eq!(log.matches("transfer complete").count(), CLIENTS, "{log}");
}

fn a_client_asking_again_from_its_port_gets_its_new_file(backend: Backend) {
    let root = TempDir::new(&format!("single_port_again-{backend}"));
    let first = pattern(100 * 1024, 1);
    let second = pattern(2000, 2);
    write_file(root.path(), "first", &first);
    write_file(root.path(), "second", &second);
    let daemon = Daemon::start_backend(backend, root.path(), &["--single-port"]);
    let addr = daemon.addr();
    let peer = Peer::new(addr);
    peer.send_to(&rrq("first", WireMode::Octet, &[]), addr);
    let (reply, from) = peer.recv(Duration::from_secs(2)).expect("DATA 1 of first");
    assert_eq!(from, addr);
    assert_eq!(reply[..4], [0, 3, 0, 1]);
    peer.send_to(&ack(1), addr);
    let (reply, _) = peer.recv(Duration::from_secs(2)).expect("DATA 2 of first");
    assert_eq!(reply[..4], [0, 3, 0, 2]);
    // The client has heard from its transfer and now asks for another file from the same
    // port: the first transfer ends, the second is served in full.
    let got = download_from_main_port(&peer, addr, "second").expect("second download");
    assert_eq!(got, second);
    let log = daemon
        .wait_for_log(&["asked again from the same port"], Duration::from_secs(5))
        .unwrap_or_else(|| daemon.log());
    assert!(log.contains("asked again from the same port"), "{log}");
}

fn strays_on_the_main_port_never_disturb_a_transfer(backend: Backend) {
    let root = TempDir::new(&format!("single_port_strays-{backend}"));
    let body = pattern(64 * 1024 + 3, 9);
    write_file(root.path(), "f", &body);
    let daemon = Daemon::start_backend(backend, root.path(), &["--single-port"]);
    let addr = daemon.addr();
    let client = Peer::new(addr);
    let stray = Peer::new(addr);
    client.send_to(&rrq("f", WireMode::Octet, &[]), addr);
    let (reply, _) = client.recv(Duration::from_secs(2)).expect("DATA 1");
    assert_eq!(reply[..4], [0, 3, 0, 1]);
    // An ACK from an address with no transfer (a late one, from a transfer just ended) gets no
    // answer; DATA on the main port is an illegal operation, answered to its sender only.
    stray.send_to(&ack(1), addr);
    assert!(
        stray.recv(Duration::from_millis(300)).is_none(),
        "a stray ACK was answered"
    );
    let (code, _, from) = stray.expect_error(&data(1, b"xyz"), addr);
    assert_eq!((code, from), (4, addr));
    // The client carries on from block 1 and gets the whole file.
    let mut got = reply[4..].to_vec();
    client.send_to(&ack(1), addr);
    let mut next = 2u16;
    loop {
        let (reply, from) = client.recv(Duration::from_secs(2)).expect("next DATA");
        assert_eq!(from, addr);
        let block = u16::from_be_bytes([reply[2], reply[3]]);
        if block == next {
            got.extend_from_slice(&reply[4..]);
            next += 1;
        }
        client.send_to(&ack(block), addr);
        if reply.len() < 4 + 512 {
            break;
        }
    }
    assert!(got == body, "byte-exact after the strays on {backend}");
}
