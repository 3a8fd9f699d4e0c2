//! The event loop against the real server library, and its timer wheel and address layout.

use super::sys::decode_addr;
use super::*;
use crate::client::{Config, Expect};
use crate::scenario::{Leg, StepInfo};
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
        arrivals: None,
        timeline: false,
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
        probe: false,
        msftwindow: false,
        reack_every_stray: false,
    }
}

/// A boot of one transfer.
fn one_step(config: &Config, name: &str) -> Sequence {
    Sequence {
        steps: vec![StepInfo {
            file: name.to_owned(),
            profile: "-".to_owned(),
            options: String::new(),
        }],
        legs: vec![Leg {
            step: 0,
            delay: Duration::ZERO,
            config: config.clone(),
            rrq: crate::client::emit_rrq(name, config).unwrap(),
        }],
    }
}

fn run_plan(plan: &Plan, config: &Config, name: &str) -> Stats {
    run_seq(plan, &one_step(config, name))
}

fn run_seq(plan: &Plan, seq: &Sequence) -> Stats {
    let live = Live::default();
    let stats = run(plan, seq, &live, |_| {}).unwrap();
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
    assert!(stats.counts.coalesced > 0, "no window arrived whole");
    // Without GRO the same trains arrive as single datagrams.
    let mut p = plan(server, 2, 4);
    p.gro = false;
    let stats = run_plan(&p, &c, "file");
    assert_eq!((stats.ok, stats.failed()), (4, 0), "{:?}", stats.failures);
    assert_eq!(stats.counts.coalesced, 0);
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
    assert!(stats.counts.dropped_in + stats.counts.dropped_out > 0);
    assert!(stats.counts.retransmits + stats.counts.reacks > 0);
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
    assert_eq!(stats.counts.retransmits, 4);
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

#[test]
fn a_wave_of_edk2_machines_boots_a_sequence() {
    use crate::profile::{Overrides, Profile};
    use crate::scenario::{Defaults, Step};
    let file: Vec<u8> = (0..9000u32).map(|i| (i * 31 % 255) as u8).collect();
    let served = Served::new(&file);
    let step = |profile, think| Step {
        file: "file".into(),
        profile: Some(profile),
        think,
        expect: Expect::Bytes(file.clone()),
        overrides: Overrides::default(),
    };
    let steps = [
        step(Profile::Edk2, Duration::ZERO),
        step(Profile::Grub, Duration::from_millis(20)),
    ];
    let defaults = Defaults {
        timeout: Some(Duration::from_millis(200)),
        ..Defaults::default()
    };
    let seq = Sequence::build(&steps, &defaults).unwrap();
    let mut plan = plan(served.addr(), 1, 1);
    plan.arrivals = Some(Arrivals {
        machines: 12,
        spacing: Duration::from_millis(10),
    });
    plan.threads = 2;
    plan.timeline = true;
    let started = Instant::now();
    let stats = run_seq(&plan, &seq);
    assert_eq!(
        (stats.booted, stats.machines_failed()),
        (12, 0),
        "{:?}",
        stats.failures
    );
    // Each machine: a probe refused with ERROR 8, then two checked downloads.
    assert_eq!(stats.probes, 12);
    assert_eq!(stats.ok, 24);
    assert_eq!(stats.spans.as_ref().map(Vec::len), Some(36));
    // The last machine powered on 110 ms after the start and thought for 20 ms.
    assert!(
        stats.last_boot >= Duration::from_millis(130),
        "{:?}",
        stats.last_boot
    );
    assert!(started.elapsed() >= Duration::from_millis(130));
    assert!(stats.boot.min() >= 20_000, "think time is part of the boot");
    assert_eq!(stats.steps.len(), 2);
    assert_eq!(stats.steps[1].len(), 12);

    // A missing second file fails every machine at step 2.
    let mut steps = steps;
    steps[1].file = "missing".into();
    let seq = Sequence::build(&steps, &defaults).unwrap();
    let stats = run_seq(&plan, &seq);
    assert_eq!(stats.booted, 0);
    assert_eq!(stats.boot_failures.get(&1), Some(&12));
    assert_eq!(stats.failures.get(&Failure::Error(1)), Some(&12));
}
