//! The transfer's unit tests on a fake clock, byte literals in and `Transmit`s out:
//! `timers.rs` (retransmission, backoff, the adaptive and spurious-timeout logic),
//! `flow.rs` (blocks, ACKs, windows, errors, the main port), `simulation.rs` (the lossy
//! simulation against the real client, and the property test).

use super::*;
use crate::options::Limits;
use crate::packet::Options;

mod flow;
mod simulation;
mod timers;

/// A fake clock: one base instant, captured once per test; every time is an offset from it.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn new() -> Self {
        Self(Instant::now())
    }

    fn ms(self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn negotiated(raw: &[u8]) -> Negotiated {
    Negotiated::negotiate(&Options::parse(raw), &Limits::default(), || None).unwrap()
}

fn ack(block: u16) -> [u8; 4] {
    let [hi, lo] = block.to_be_bytes();
    [0, 4, hi, lo]
}

fn error(code: u16, message: &str) -> Vec<u8> {
    let mut dgram = vec![0, 5];
    dgram.extend_from_slice(&code.to_be_bytes());
    dgram.extend_from_slice(message.as_bytes());
    dgram.push(0);
    dgram
}

fn blocks(first: u64, count: u16, retransmit: bool) -> Option<Transmit> {
    Some(Transmit::Blocks(Blocks {
        first,
        count,
        retransmit,
    }))
}

/// Everything `poll_transmit` has to send at `now`.
fn drain(t: &mut Transfer, now: Instant) -> Vec<Transmit> {
    std::iter::from_fn(|| t.poll_transmit(now)).collect()
}

/// Fires the timer at its deadline and returns that deadline.
fn fire(t: &mut Transfer) -> Instant {
    let deadline = t.poll_timeout().expect("the timer is armed");
    t.handle_timeout(deadline);
    deadline
}

/// Asserts the transfer has ended with `outcome` and is inert.
fn assert_ended(t: &mut Transfer, now: Instant, outcome: Outcome) {
    assert_eq!(t.outcome(), Some(outcome));
    assert_eq!(t.poll_transmit(now), None);
    assert_eq!(t.poll_timeout(), None);
    assert!(t.stats().ended.is_some());
}

/// A lock-step transfer of 512-byte blocks without options: DATA 1 is sent at once.
fn lockstep(c: Clock, len: u64, config: Config) -> Transfer {
    let mut t = Transfer::new(c.ms(0), Negotiated::DEFAULT, len, config);
    assert_eq!(t.poll_transmit(c.ms(0)), blocks(1, 1, false));
    t
}
