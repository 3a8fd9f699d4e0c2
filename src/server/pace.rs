//! How long a shard's clients take to answer, learned from all of its transfers together: a
//! floor under every transfer's retransmission timeout (RFC 1123 §4.2.3.2 has the timeout
//! adapt; this is what it adapts to beyond one transfer's own samples).
//!
//! In a storm the clients share a fate: one test rig, one rack's uplink, one overloaded PXE
//! relay, one client process serving its transfers in batches. When the delay grows with the
//! load, it grows for all of them at once, and a transfer whose own estimate has not caught up
//! yet would take the delay for a loss and send its block twice (and draw a second ACK). Delay
//! is not loss: no transfer's timer may fire sooner than the slowest round trip the shard has
//! seen lately, with a margin for a delay still growing.
//!
//! The floor is a windowed maximum (as BBR keeps its bandwidth filter): the largest round trip
//! sampled in each of the last [`SLOTS`] periods of [`PERIOD`]. It holds for as long as the
//! delay lasts, because the transfers keep sampling it, and falls within
//! `SLOTS × PERIOD` once the delay is over, so a loss after a storm is again repaired in
//! milliseconds. Under random loss with no queueing (2 % loss, tens of clients) the largest
//! round trip stays small and the floor stays far under the transfers' own 20 ms minimum.

use std::time::{Duration, Instant};

/// How long one slot of the window covers.
const PERIOD: Duration = Duration::from_millis(500);
/// Slots in the window: the floor remembers a delay for `SLOTS × PERIOD` after its last sample.
const SLOTS: usize = 4;
/// The floor's margin over the largest recent round trip, as a ratio: the delay may still be
/// growing, and the next round trip may be the slowest yet.
const MARGIN: (u32, u32) = (3, 2);
/// A floor never above this: a client that is really gone must still be retried within
/// seconds, and firmware repeats its ACK after 1–4 s anyway.
const MAX: Duration = Duration::from_secs(2);

/// A shard's recent round trips, as the floor of its transfers' timeouts.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    origin: Instant,
    /// The period the newest slot covers, counted from `origin`.
    period: u64,
    /// The largest sample of each period, in a ring indexed by period.
    slots: [Duration; SLOTS],
}

impl Pace {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            origin: now,
            period: 0,
            slots: [Duration::ZERO; SLOTS],
        }
    }

    /// A transfer measured a round trip of `rtt` (an ACK for a block sent once, or the slow
    /// round trip a spurious timeout revealed).
    pub(crate) fn sample(&mut self, now: Instant, rtt: Duration) {
        let period = self.advance(now);
        let slot = &mut self.slots[period as usize % SLOTS];
        *slot = (*slot).max(rtt);
    }

    /// The floor under every transfer's timeout at `now`.
    pub(crate) fn floor(&self, now: Instant) -> Duration {
        let period = self.period_of(now);
        if period >= self.period + SLOTS as u64 {
            return Duration::ZERO;
        }
        // Slots older than the window were cleared when it moved; those it has not reached yet
        // (the periods between the newest sample and now) are empty.
        let stale = (period - self.period.min(period)) as usize;
        let largest = (0..SLOTS - stale.min(SLOTS))
            .map(|age| self.slots[(self.period as usize + SLOTS - age) % SLOTS])
            .max()
            .unwrap_or_default();
        (largest * MARGIN.0 / MARGIN.1).min(MAX)
    }

    fn period_of(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_millis() / PERIOD.as_millis()) as u64
    }

    /// Moves the window to `now`'s period, clearing the slots it passes; returns that period.
    fn advance(&mut self, now: Instant) -> u64 {
        let period = self.period_of(now);
        if period > self.period {
            let passed = (period - self.period).min(SLOTS as u64);
            for p in period + 1 - passed..=period {
                self.slots[p as usize % SLOTS] = Duration::ZERO;
            }
            self.period = period;
        }
        self.period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_floor_holds_while_samples_last_and_falls_after() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        assert_eq!(pace.floor(t0), Duration::ZERO);
        pace.sample(t0, ms(100));
        assert_eq!(pace.floor(t0), ms(150));
        // A delay that lasts keeps the floor up, however long.
        for i in 1..20 {
            let now = t0 + PERIOD * i;
            pace.sample(now, ms(80));
            assert!(pace.floor(now) >= ms(120), "{i}: {:?}", pace.floor(now));
        }
        let last = t0 + PERIOD * 19;
        // The largest of the window, not the latest.
        pace.sample(last, ms(10));
        assert_eq!(pace.floor(last), ms(120));
        // Once the samples stop, the floor is gone within the window.
        assert_eq!(pace.floor(last + PERIOD * SLOTS as u32), Duration::ZERO);
        // A single slow sample falls out of the window, the quick ones after it stay.
        let later = last + PERIOD * 10;
        pace.sample(later, ms(400));
        for i in 1..=SLOTS as u32 {
            pace.sample(later + PERIOD * i, ms(4));
        }
        assert_eq!(pace.floor(later + PERIOD * SLOTS as u32), ms(6));
    }

    #[test]
    fn the_floor_is_bounded() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        pace.sample(t0, Duration::from_secs(30));
        assert_eq!(pace.floor(t0), MAX);
    }
}
