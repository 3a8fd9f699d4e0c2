//! The lossy simulation (the real [`Transfer`] against the real [`Client`](crate::client) over
//! [`sim::Pair`]'s link) across a blksize x windowsize x loss matrix, and the property test that
//! drives one transfer through [`sim::Checked`], the invariant checker the fuzz target shares.

use proptest::prelude::*;

use super::*;
use crate::client;
use crate::options::Negotiated;
use crate::packet::{self, Options};
use crate::sim::{self, Checked, CheckedSession, Event, SessionEvent, Store};

/// The most retransmissions a case may take: a window's worth per lost block, four times
/// over, plus slack for a small file.
fn retransmit_bound(blocks: u64, windowsize: u16, loss: f64) -> u64 {
    (blocks as f64 * f64::from(windowsize) * (loss * 4.0 + 0.02)) as u64 + 50
}

/// Runs one case and checks it; returns its report and bound.
fn simulate(case: sim::Case) -> (sim::Report, u64) {
    let blocks = case.len as u64 / u64::from(case.blksize) + 1;
    let bound = retransmit_bound(blocks, case.windowsize, case.loss);
    let max_steps = 20 * (bound + blocks) + 1000;
    let mut pair = sim::Pair::new(&case);
    let report = pair.run(max_steps, Duration::from_secs(3600));
    assert_eq!(
        report.outcome,
        Some(Outcome::Complete),
        "{case:?}: {report:?}"
    );
    assert_eq!(
        report.client,
        Some(client::Outcome::Complete),
        "{case:?}: {report:?}"
    );
    assert!(report.identical, "{case:?}: the file differs");
    // Both ends agree on what was negotiated: an OACK exactly when options were asked.
    let server = pair
        .server
        .as_ref()
        .expect("the request reached the server");
    assert_eq!(pair.client.options().blksize(), server.options().blksize());
    assert_eq!(
        pair.client.options().windowsize(),
        server.options().windowsize()
    );
    assert_eq!(pair.client.options().tsize(), server.options().tsize());
    assert_eq!(
        pair.client.oacked(),
        case.blksize != 512 || case.windowsize != 1
    );
    let stats = report.stats.expect("the server ran");
    assert_eq!(stats.bytes, case.len as u64);
    assert_eq!(stats.blocks, blocks);
    assert!(
        stats.retransmits <= bound,
        "{case:?}: {} retransmits > {bound}: {report:?}",
        stats.retransmits
    );
    if case.loss == 0.0 {
        assert_eq!(stats.retransmits, 0, "{case:?}: {report:?}");
        assert_eq!(report.client_stats, client::Stats::default(), "{case:?}");
    }
    (report, bound)
}

/// The matrix at one loss rate: every window, block size and interesting file size.
fn simulate_matrix(loss: f64) {
    let started = std::time::Instant::now();
    let mut lines = Vec::new();
    let mut worst = 0.0f64;
    for windowsize in [1u16, 4, 16, 64] {
        for blksize in [512u16, 1428, 8192] {
            let b = usize::from(blksize);
            let sizes = [0, 1, b - 1, b, b + 1, 3 * b * usize::from(windowsize) + 7];
            let (mut min, mut max) = (u64::MAX, 0);
            for (i, len) in sizes.into_iter().enumerate() {
                let seed = (loss * 1000.0) as u64 * 1_000_003
                    + u64::from(windowsize) * 10_007
                    + u64::from(blksize) * 101
                    + i as u64;
                let case = sim::Case {
                    loss,
                    windowsize,
                    blksize,
                    len,
                    seed,
                    reorder: None,
                    edk2: false,
                };
                let (report, bound) = simulate(case);
                let r = report.stats.map_or(0, |s| s.retransmits);
                (min, max) = (min.min(r), max.max(r));
                worst = worst.max(r as f64 / bound as f64);
                if i == sizes.len() - 1 {
                    lines.push(format!(
                        "loss {:>4.0}% w {windowsize:>2} blksize {blksize:>4}: retransmits \
                         {min}..={max} (largest file: {} blocks, {r} <= bound {bound}, \
                         {} steps, {:?} virtual)",
                        loss * 100.0,
                        report.blocks,
                        report.steps,
                        report.elapsed,
                    ));
                }
            }
        }
    }
    for line in &lines {
        println!("{line}");
    }
    println!(
        "loss {:.0}%: 72 cases in {:?}, worst retransmits/bound {worst:.2}",
        loss * 100.0,
        started.elapsed()
    );
}

#[test]
fn simulation_lossless() {
    simulate_matrix(0.0);
}

#[test]
fn simulation_loss_1_percent() {
    simulate_matrix(0.01);
}

#[test]
fn simulation_loss_5_percent() {
    simulate_matrix(0.05);
}

#[test]
fn simulation_loss_20_percent() {
    simulate_matrix(0.20);
}

/// More than 65536 blocks of 8 bytes: the block numbers roll over under loss.
fn simulate_rollover(loss: f64) {
    let started = std::time::Instant::now();
    let case = sim::Case {
        loss,
        windowsize: 16,
        blksize: 8,
        len: 70_000 * 8 + 5,
        seed: 65_536 + (loss * 100.0) as u64,
        reorder: None,
        edk2: false,
    };
    let (report, bound) = simulate(case);
    assert!(report.blocks > 65_536);
    println!(
        "rollover loss {:.0}%: {} blocks, {} retransmits <= bound {bound}, {} ACKs again, {} \
         steps, {:?} virtual, {:?} real",
        loss * 100.0,
        report.blocks,
        report.stats.map_or(0, |s| s.retransmits),
        report.client_stats.reacks,
        report.steps,
        report.elapsed,
        started.elapsed()
    );
}

#[test]
fn simulation_rollover_lossless() {
    simulate_rollover(0.0);
}

#[test]
fn simulation_rollover_loss_5_percent() {
    simulate_rollover(0.05);
}

/// What the property test feeds: the checker's events, with datagrams owned.
#[derive(Debug, Clone)]
enum Fed {
    Datagram(Vec<u8>),
    Event(Event<'static>),
}

fn fed() -> impl Strategy<Value = Fed> {
    let e = |event: Event<'static>| Fed::Event(event);
    prop_oneof![
        2 => any::<u16>().prop_map(move |b| e(Event::Ack(b))),
        8 => (-3i8..70).prop_map(move |d| e(Event::AckNearAcked(d))),
        2 => (-3i8..3).prop_map(move |d| e(Event::AckNearSent(d))),
        1 => (any::<u16>(), any::<bool>())
            .prop_map(move |(code, datagram)| e(Event::Error { code, datagram })),
        2 => (0u32..3_000_000).prop_map(move |us| e(Event::Advance(us))),
        4 => Just(e(Event::Timeout)),
        1 => Just(e(Event::EarlyTimeout)),
        1 => Just(e(Event::Repeat)),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Fed::Datagram),
        8 => Just(e(Event::Drain)),
        2 => Just(e(Event::PollOne)),
        1 => (0u16..20).prop_map(move |r| e(Event::Run(r))),
        1 => any::<u16>().prop_map(move |c| e(Event::Abort(c))),
    ]
}

proptest! {
    #[test]
    fn arbitrary_events_never_panic_and_keep_the_invariants(
        blksize in prop_oneof![Just(8u16), Just(512)],
        windowsize in prop_oneof![Just(1u16), Just(2), Just(4), Just(64)],
        tsize in any::<bool>(),
        timeout in prop_oneof![Just(None), Just(Some("1")), Just(Some("0.05"))],
        len in 0u64..3000,
        retries in 0u32..6,
        events in prop::collection::vec(fed(), 0..300),
    ) {
        let mut raw = [0u8; 128];
        let mut n = 0;
        if blksize != 512 {
            packet::push_option(&mut raw, &mut n, "blksize", &blksize.to_string()).unwrap();
        }
        if windowsize != 1 {
            packet::push_option(&mut raw, &mut n, "windowsize", &windowsize.to_string())
                .unwrap();
        }
        if tsize {
            packet::push_option(&mut raw, &mut n, "tsize", "0").unwrap();
        }
        if let Some(t) = timeout {
            packet::push_option(&mut raw, &mut n, "timeout", t).unwrap();
        }
        let opts = Negotiated::negotiate(&Options::parse(&raw[..n]), &sim::UNCAPPED, || Some(len))
            .unwrap();
        let config = Config { retries, ..Config::default() };
        let mut checked = Checked::new(Instant::now(), opts, len, config);
        for fed in &events {
            match fed {
                Fed::Datagram(bytes) => checked.apply(Event::Datagram(bytes)),
                Fed::Event(event) => checked.apply(*event),
            }
        }
        checked.drain();
        checked.check();
        let t = checked.transfer();
        prop_assert!(t.acked() <= t.last_block());
    }
}

/// What the session's property test feeds: the checker's events, with datagrams owned.
#[derive(Debug, Clone)]
enum FedSession {
    Datagram(Vec<u8>),
    Event(SessionEvent<'static>),
}

fn fed_session() -> impl Strategy<Value = FedSession> {
    let e = |event: SessionEvent<'static>| FedSession::Event(event);
    prop_oneof![
        8 => (-3i8..70).prop_map(move |d| e(SessionEvent::AckNearAcked(d))),
        2 => (-3i8..3).prop_map(move |d| e(SessionEvent::AckNearSent(d))),
        1 => any::<u16>().prop_map(move |b| e(SessionEvent::Ack(b))),
        1 => any::<u16>().prop_map(move |code| e(SessionEvent::Error(code))),
        4 => Just(e(SessionEvent::Timeout)),
        1 => Just(e(SessionEvent::EarlyTimeout)),
        2 => (0u32..3_000_000).prop_map(move |us| e(SessionEvent::Advance(us))),
        1 => Just(e(SessionEvent::Repeat)),
        1 => Just(e(SessionEvent::Refused)),
        1 => Just(e(SessionEvent::Replace)),
        // Ok, Refused, Rejected, Failed: mostly Ok.
        8 => prop_oneof![5 => Just(0u8), 1 => Just(1), 1 => Just(2), 1 => Just(3)]
            .prop_map(move |k| e(SessionEvent::Sent(k))),
        6 => (any::<u8>(), prop::bool::weighted(0.95))
            .prop_map(move |(pick, ok)| e(SessionEvent::Read { pick, ok })),
        1 => Just(e(SessionEvent::Change)),
        4 => Just(e(SessionEvent::Next)),
        4 => Just(e(SessionEvent::Settle)),
        1 => (0u16..20).prop_map(move |r| e(SessionEvent::Run(r))),
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(FedSession::Datagram),
    ]
}

proptest! {
    /// The server's session under arbitrary datagrams, timers, send completions (GSO refused,
    /// the port closed, a full buffer), reads (out of order, failing), file changes and
    /// replacements, checked by [`sim::CheckedSession`], the fuzz target's checker.
    #[test]
    fn arbitrary_session_events_never_panic_and_keep_the_invariants(
        blksize in prop_oneof![Just(8u16), Just(512), Just(1468)],
        windowsize in prop_oneof![Just(1u16), Just(4), Just(64)],
        len in prop_oneof![0u64..3000, 60_000u64..300_000],
        retries in 0u32..6,
        file in any::<bool>(),
        gso in any::<bool>(),
        events in prop::collection::vec(fed_session(), 0..200),
    ) {
        let mut raw = [0u8; 128];
        let mut n = 0;
        if blksize != 512 {
            packet::push_option(&mut raw, &mut n, "blksize", &blksize.to_string()).unwrap();
        }
        if windowsize != 1 {
            packet::push_option(&mut raw, &mut n, "windowsize", &windowsize.to_string())
                .unwrap();
        }
        let opts = Negotiated::negotiate(&Options::parse(&raw[..n]), &sim::UNCAPPED, || Some(len))
            .unwrap();
        let config = Config { retries, ..Config::default() };
        let store = if file { Store::File } else { Store::Memory };
        let mut checked = CheckedSession::new(Instant::now(), opts, len, config, store, gso);
        for fed in &events {
            match fed {
                FedSession::Datagram(bytes) => checked.apply(SessionEvent::Datagram(bytes)),
                FedSession::Event(event) => checked.apply(*event),
            }
        }
        prop_assert!(checked.transfer().acked() <= checked.transfer().last_block());
        checked.finish();
    }
}

/// A well-behaved client acknowledges every window: the checked transfer completes, past the
/// rollover with 8-byte blocks.
#[test]
fn a_checked_transfer_runs_to_completion() {
    let raw = b"blksize\x008\x00windowsize\x0064\x00";
    let opts = Negotiated::negotiate(&Options::parse(raw), &sim::UNCAPPED, || None).unwrap();
    let len = 70_000 * 8;
    let mut checked = Checked::new(Instant::now(), opts, len, Config::default());
    checked.apply(Event::Run(u16::MAX));
    checked.apply(Event::Drain);
    assert_eq!(checked.transfer().outcome(), Some(Outcome::Complete));
    assert_eq!(checked.transfer().acked(), 70_001);
}

/// Windows under loss never multiply traffic (edk2's list reports a 1.7 MB download with
/// windowsize 4 that became ~20 GB when loss and reordering made client and server answer each
/// other's repeats). At 1 % loss each way (and half as many duplicates), without reordering and
/// with 1 % of datagrams held back by up to one round trip or by ten, against a client that
/// re-ACKs every block out of sequence (edk2's Mtftp4) and one that re-ACKs once per burst
/// (RFC 7440 §4), the DATA the server sends stays within 25 % of the unavoidable cost: an RFC
/// 7440 client discards what follows a gap, so each loss or reordering costs about
/// (windowsize + 1) / 2 blocks, about 1.03x, 1.06x and 1.11x the file for windows of 4, 8
/// and 16. Resending a window on every partial ACK cost 1.4x-3.5x here.
#[test]
fn windows_under_loss_and_reordering_never_multiply_traffic() {
    let blksize = 1468u16;
    let len = 4 << 20;
    let blocks = len as u64 / u64::from(blksize) + 1;
    let mut lines = Vec::new();
    for (reorder, held_ms) in [(0.0, 0), (0.01, 2), (0.01, 20)] {
        for (windowsize, unavoidable) in [(4u16, 1.03), (8, 1.06), (16, 1.11)] {
            for edk2 in [true, false] {
                let (mut worst, mut slowest) = (0.0f64, Duration::ZERO);
                for seed in 0..3u64 {
                    let case = sim::Case {
                        loss: 0.01,
                        windowsize,
                        blksize,
                        len,
                        seed: 7_000 + seed * 31 + u64::from(windowsize),
                        reorder: Some((reorder, Duration::from_millis(held_ms))),
                        edk2,
                    };
                    let mut pair = sim::Pair::new(&case);
                    let report = pair.run(10_000_000, Duration::from_secs(3600));
                    assert_eq!(report.outcome, Some(Outcome::Complete), "{case:?}");
                    assert!(report.identical, "{case:?}: the file differs");
                    let stats = report.stats.expect("the server ran");
                    // Every DATA datagram the server sent (the OACK aside), over the file's.
                    worst = worst.max((stats.sent - 1) as f64 / blocks as f64);
                    slowest = slowest.max(report.elapsed);
                }
                lines.push(format!(
                    "reordered {:.0}% by <= {held_ms:>2} ms, window {windowsize:>2}, {}: \
                     {worst:.3}x the file (unavoidable ~{unavoidable:.2}x), slowest {slowest:?}",
                    reorder * 100.0,
                    if edk2 { "edk2   " } else { "rfc7440" }
                ));
                assert!(
                    worst <= unavoidable * 1.25,
                    "{}",
                    lines.last().expect("just pushed")
                );
            }
        }
    }
    for line in &lines {
        println!("{line}");
    }
}
