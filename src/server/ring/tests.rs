//! The engine on a real ring and real loopback sockets, with its kernel-shared tables made tiny
//! so that running out of them is certain: every transfer must still arrive byte-exact.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{mpsc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::sync::watch;

use super::{run_with, Counts, Tuning};
use crate::resolve::DirectoryResolver;
use crate::server::{Config, Server};

/// A one-shard engine serving `body` as `f` from a scratch directory.
struct Engine {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: JoinHandle<Counts>,
    dir: PathBuf,
}

impl Engine {
    fn start(name: &str, body: &[u8], tuning: Tuning) -> Engine {
        let dir =
            std::env::temp_dir().join(format!("ringtftp-engine-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        std::fs::write(dir.join("f"), body).expect("write the served file");
        let config = Config {
            shards: 1,
            ..Config::default()
        };
        let resolver = DirectoryResolver::new(&dir).expect("resolver");
        let server =
            Server::bind("127.0.0.1:0".parse().expect("address"), resolver, config).expect("bind");
        let Server {
            mut sockets,
            local,
            shared,
        } = server;
        let socket = sockets.pop().expect("one shard's socket");
        let (stop, stop_rx) = watch::channel(false);
        let (ready, ready_rx) = mpsc::channel();
        let thread =
            thread::spawn(
                move || match run_with(0, socket, shared, stop_rx, ready, tuning) {
                    Ok(counts) => counts,
                    Err((e, _)) => panic!("io_uring engine unavailable: {e}"),
                },
            );
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the engine reports its backend");
        Engine {
            addr: local,
            stop,
            thread,
            dir,
        }
    }

    fn stop(self) -> Counts {
        self.stop.send(true).expect("the engine listens for a stop");
        let counts = self.thread.join().expect("the engine thread");
        let _ = std::fs::remove_dir_all(&self.dir);
        counts
    }
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 511) as u8).collect()
}

/// A lock-step RFC 1350 read of `f` (no options: 512-byte blocks). `before_first_ack` runs once
/// DATA 1 has arrived, before it is acknowledged.
fn fetch(server: SocketAddr, before_first_ack: impl FnOnce()) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("client socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let rrq = b"\x00\x01f\x00octet\x00";
    socket.send_to(rrq, server).expect("RRQ");
    let mut before_first_ack = Some(before_first_ack);
    let mut data = Vec::new();
    let mut next = 1u16;
    let mut tid = None;
    let mut last: Vec<u8> = rrq.to_vec();
    let mut silent = 0;
    loop {
        let mut buf = [0u8; 1024];
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(_) => {
                silent += 1;
                assert!(silent < 10, "the server went silent at block {next}");
                socket
                    .send_to(&last, tid.unwrap_or(server))
                    .expect("send again");
                continue;
            }
        };
        let tid = *tid.get_or_insert(from);
        if from != tid {
            continue;
        }
        silent = 0;
        let packet = &buf[..n];
        assert_eq!(packet[..2], [0, 3], "DATA expected: {packet:?}");
        let block = u16::from_be_bytes([packet[2], packet[3]]);
        if block == next {
            data.extend_from_slice(&packet[4..]);
            next += 1;
        }
        if let Some(hook) = before_first_ack.take() {
            hook();
        }
        last = vec![0, 4, packet[2], packet[3]];
        socket.send_to(&last, tid).expect("ACK");
        if block == next - 1 && n < 4 + 512 {
            return data;
        }
    }
}

#[test]
fn receives_short_of_buffers_are_armed_again_and_lose_nothing() {
    // Two receive buffers for 32 transfers at once: most turns of the ring find more ACKs
    // waiting than buffers, so multishot receives end with ENOBUFS (no MORE flag) and must be
    // armed again; the ACKs wait in their sockets meanwhile.
    let body = body(200 * 1024);
    let engine = Engine::start(
        "recv",
        &body,
        Tuning {
            recv_entries: 2,
            fixed_files: None,
        },
    );
    let addr = engine.addr;
    let clients: Vec<_> = (0..32)
        .map(|_| thread::spawn(move || fetch(addr, || {})))
        .collect();
    for client in clients {
        assert!(client.join().expect("client") == body, "byte-exact");
    }
    let counts = engine.stop();
    assert!(counts.starved > 0, "no receive ran short: {counts:?}");
    assert!(counts.rearmed >= counts.starved, "{counts:?}");
}

#[test]
fn a_full_fixed_file_table_leaves_transfers_on_plain_descriptors() {
    // Eight transfers held open at once against a table of two slots.
    let body = body(64 * 1024 + 100);
    let engine = Engine::start(
        "fixed",
        &body,
        Tuning {
            recv_entries: 64,
            fixed_files: Some(2),
        },
    );
    let addr = engine.addr;
    let all_started = std::sync::Arc::new(Barrier::new(8));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let all_started = all_started.clone();
            thread::spawn(move || {
                fetch(addr, move || {
                    all_started.wait();
                })
            })
        })
        .collect();
    for client in clients {
        assert!(client.join().expect("client") == body, "byte-exact");
    }
    let counts = engine.stop();
    assert!(counts.unfixed >= 6, "{counts:?}");
}
