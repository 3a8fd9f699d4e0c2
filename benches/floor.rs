//! The floor: the least CPU this kernel spends on one lock-step TFTP cycle.
//!
//! A "server" thread sends a 1468-byte datagram and waits for a 4-byte reply on a connected UDP
//! socket, with plain blocking system calls and nothing else; a "client" thread answers each
//! datagram with 4 bytes. The server thread's CPU time per cycle (from
//! `CLOCK_THREAD_CPUTIME_ID`) is the floor that ringtftpd's CPU per DATA/ACK cycle is compared
//! with (server CPU seconds from `/proc/PID/stat` divided by the blocks it sent).
//!
//! Two shapes are measured. One flow: the sender sleeps in every `recv` and is woken by the
//! reply, as a server with one client does. 64 flows: the sender sends on 64 sockets, then
//! receives on each in turn, so a reply has nearly always arrived by the time it is read and
//! the thread never sleeps — as a server in a boot storm, always busy, runs. The second is the
//! floor a storm's cost is compared with: two system calls and the kernel's UDP path on both
//! ends of the loopback per cycle, nothing else.
//!
//! ```text
//! cargo bench --bench floor               # 200 000 cycles of each on 127.0.0.1
//! cargo bench --bench floor -- 1000000    # more cycles
//! ```

use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn main() {
    let cycles: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    measure(cycles, 1);
    measure(cycles, 64);
}

/// Runs `cycles` send + receive cycles over `flows` connected pairs: the sender sends one
/// datagram on each flow, then takes each reply in turn; prints its CPU and wall time per cycle.
fn measure(cycles: u64, flows: usize) {
    let (senders, answerers): (Vec<UdpSocket>, Vec<UdpSocket>) =
        (0..flows).map(|_| connected_pair()).unzip();
    let rounds = cycles.div_ceil(flows as u64);
    let answering = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let ack = [0u8, 4, 0, 0];
        'rounds: for _ in 0..rounds {
            for client in &answerers {
                if client.recv(&mut buf).is_err() {
                    break 'rounds;
                }
                let _ = client.send(&ack);
            }
        }
    });

    let data = [0x5au8; 4 + 1468];
    let mut reply = [0u8; 64];
    let cpu_start = thread_cpu();
    let wall_start = Instant::now();
    let mut done = 0u64;
    'run: for _ in 0..rounds {
        for server in &senders {
            if server.send(&data).is_err() {
                break 'run;
            }
        }
        for server in &senders {
            if server.recv(&mut reply).is_err() {
                break 'run;
            }
            done += 1;
        }
    }
    let wall = wall_start.elapsed();
    let cpu = thread_cpu() - cpu_start;
    let _ = answering.join();

    let per_cycle_ns = cpu.as_nanos() as f64 / done.max(1) as f64;
    match flows {
        1 => println!(
            "floor, one flow: {done} cycles of send(1472 B) + recv(4 B) on a connected UDP socket"
        ),
        _ => println!(
            "floor, {flows} flows: {done} cycles of send(1472 B) + recv(4 B), the sender never idle"
        ),
    }
    println!(
        "  sender CPU per cycle: {:.2} µs   ({:.0} cycles/s of sender CPU)",
        per_cycle_ns / 1000.0,
        1e9 / per_cycle_ns
    );
    println!(
        "  wall time per cycle:  {:.2} µs   ({:.0} cycles/s)",
        wall.as_nanos() as f64 / done.max(1) as f64 / 1000.0,
        done as f64 / wall.as_secs_f64()
    );
}

/// A "server" and a "client" socket on 127.0.0.1, connected to each other.
fn connected_pair() -> (UdpSocket, UdpSocket) {
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind server socket");
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind client socket");
    server
        .connect(client.local_addr().expect("client address"))
        .expect("connect server socket");
    client
        .connect(server.local_addr().expect("server address"))
        .expect("connect client socket");
    for s in [&server, &client] {
        // Nothing is lost on loopback at this rate; the timeout only ends a stuck run.
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
    }
    (server, client)
}

/// CPU time consumed by the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
