//! The event loop against the real server library, and its timer wheel and address layout.

use super::sys::decode_addr;
use super::*;
use crate::client::Expect;
use ringtftp::packet::Mode;
use std::net::UdpSocket;

/// The real server library (`ringtftp::server`) on 127.0.0.1:0, one shard, serving `file`
/// as `"file"` from a scratch directory; it stops, and the directory goes, on drop.
struct Served {
    handle: Option<ringtftp::server::Handle>,
    dir: std::path::PathBuf,
}

impl Served {
    fn new(file: &[u8]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Relaxed);
        let dir = std::env::temp_dir().join(format!("loadgen-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("file"), file).unwrap();
        let mut config = ringtftp::server::Config::default();
        config.shards = 1;
        let addr = "127.0.0.1:0".parse().unwrap();
        let handle = ringtftp::server::serve_directory(addr, &dir, config).unwrap();
        Self {
            handle: Some(handle),
            dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.handle.as_ref().expect("serving").local_addr()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.stopper().stop();
            drop(handle);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn plan(server: SocketAddr, clients: usize, transfers: u64) -> Plan {
    Plan {
        server,
        sources: vec![],
        clients,
        transfers: Some(transfers),
        duration: None,
        deadline: Duration::from_secs(60),
        threads: 1,
        loss: 0.0,
        seed: 1,
        spin: Duration::ZERO,
        gro: true,
    }
}

fn config(file: &[u8]) -> Config {
    Config {
        mode: Mode::Octet,
        blksize: None,
        windowsize: None,
        tsize: false,
        timeout: Duration::from_millis(100),
        timeout_option: false,
        retries: 20,
        expect: Expect::Bytes(file.to_vec()),
    }
}

fn run_plan(plan: &Plan, config: &Config, name: &str) -> Stats {
    let rrq = crate::client::emit_rrq(name, config).unwrap();
    let live = Live::default();
    let stats = run(plan, config, &rrq, &live, |_| {}).unwrap();
    assert_eq!(live.active.load(Relaxed), 0);
    stats
}

#[test]
fn event_loop_runs_the_budget_with_every_byte_checked() {
    let file: Vec<u8> = (0..3000u32).map(|i| (i * 13 % 256) as u8).collect();
    let served = Served::new(&file);
    let server = served.addr();
    let stats = run_plan(&plan(server, 8, 40), &config(&file), "file");
    assert_eq!((stats.ok, stats.failed()), (40, 0), "{:?}", stats.failures);
    assert_eq!(stats.bytes, 40 * 3000);
    assert_eq!(stats.transfer.len(), 40);
    assert!(stats.peak_active <= 8);

    // Windows, two threads and several source addresses.
    let mut plan = plan(server, 6, 30);
    plan.threads = 2;
    plan.sources = vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
    let mut c = config(&file);
    c.blksize = Some(256);
    c.windowsize = Some(4);
    let stats = run_plan(&plan, &c, "file");
    assert_eq!((stats.ok, stats.failed()), (30, 0), "{:?}", stats.failures);
}

#[test]
fn gso_windows_are_taken_whole_and_split_with_gro() {
    let file: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 253) as u8).collect();
    // The server sends each window as one GSO train (`UDP_SEGMENT` = 4 + blksize).
    let served = Served::new(&file);
    let server = served.addr();
    let mut c = config(&file);
    c.blksize = Some(1000);
    c.windowsize = Some(8);
    let stats = run_plan(&plan(server, 2, 4), &c, "file");
    assert_eq!((stats.ok, stats.failed()), (4, 0), "{:?}", stats.failures);
    assert!(stats.coalesced > 0, "no window arrived whole");
    // Without GRO the same trains arrive as single datagrams.
    let mut p = plan(server, 2, 4);
    p.gro = false;
    let stats = run_plan(&p, &c, "file");
    assert_eq!((stats.ok, stats.failed()), (4, 0), "{:?}", stats.failures);
    assert_eq!(stats.coalesced, 0);
}

#[test]
fn event_loop_recovers_from_simulated_loss() {
    let file: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let served = Served::new(&file);
    let mut plan = plan(served.addr(), 4, 8);
    plan.loss = 0.05;
    plan.seed = 7;
    let mut c = config(&file);
    c.blksize = Some(1024);
    c.windowsize = Some(4);
    let stats = run_plan(&plan, &c, "file");
    assert_eq!((stats.ok, stats.failed()), (8, 0), "{:?}", stats.failures);
    assert!(stats.dropped_in + stats.dropped_out > 0);
    assert!(stats.retransmits + stats.reacks > 0);
}

#[test]
fn event_loop_counts_errors_and_timeouts() {
    let served = Served::new(&[1; 10]);
    let stats = run_plan(&plan(served.addr(), 2, 3), &config(&[1; 10]), "missing");
    assert_eq!(stats.failures.get(&Failure::Error(1)), Some(&3));
    assert!(
        stats
            .describe(&Failure::Error(1))
            .starts_with("ERROR 1 (\"File not found"),
        "{}",
        stats.describe(&Failure::Error(1))
    );

    // Nobody listens: every transfer times out after its retries, in bounded time.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = config(&[]);
    c.timeout = Duration::from_millis(10);
    c.retries = 2;
    let stats = run_plan(&plan(silent.local_addr().unwrap(), 2, 2), &c, "file");
    assert_eq!(stats.failures.get(&Failure::Timeout), Some(&2));
    assert_eq!(stats.retransmits, 4);
}

#[test]
fn hard_deadline_aborts_what_is_running() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut plan = plan(silent.local_addr().unwrap(), 3, 3);
    plan.deadline = Duration::from_millis(50);
    let stats = run_plan(&plan, &config(&[]), "file");
    assert_eq!(stats.failures.get(&Failure::Aborted), Some(&3));
}

#[test]
fn wheel_hands_out_entries_when_due() {
    let mut wheel = Wheel::new(Duration::from_millis(512), 10);
    let base = wheel.base;
    wheel.insert(base + Duration::from_millis(5), 1, 0);
    wheel.insert(base + Duration::from_millis(2), 2, 0);
    // Beyond a turn of the wheel: filed at the last bucket, to be filed again then.
    wheel.insert(base + Duration::from_secs(5), 3, 0);
    let mut due = Vec::new();
    wheel.expire(base + Duration::from_millis(1), &mut due);
    assert!(due.is_empty());
    wheel.expire(base + Duration::from_millis(3), &mut due);
    assert_eq!(due, [(2, 0)]);
    wheel.expire(base + Duration::from_millis(6), &mut due);
    assert_eq!(due, [(2, 0), (1, 0)]);
    due.clear();
    wheel.expire(base + Duration::from_millis(600), &mut due);
    assert_eq!(due, [(3, 0)]);
}

#[test]
fn addresses_survive_the_kernel_layout() {
    for addr in ["127.0.0.1:69", "[::1]:6969", "10.1.2.3:65535"] {
        let addr: SocketAddr = addr.parse().unwrap();
        assert_eq!(decode_addr(&RawAddr::new(addr).storage), Some(addr));
    }
}
