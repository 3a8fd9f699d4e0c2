//! How long a shard's clients take to answer, learned from all of its transfers together: a
//! floor under every transfer's retransmission timeout (RFC 1123 §4.2.3.2 has the timeout
//! adapt; this is what it adapts to beyond one transfer's own samples).
//!
//! In a storm the clients share a fate: one test rig, one rack's uplink, one overloaded PXE
//! relay, one client process serving its transfers in batches. When the delay grows with the
//! load, it grows for all of them at once, and a transfer whose own estimate has not caught up
//! yet would take the delay for a loss and send its block twice (and draw a second ACK). Delay
//! is not loss: no transfer's timer may fire sooner than [`MARGIN`] times the round trip that
//! nine in ten of the shard's recent samples stay under.
//!
//! The samples are those of the last [`SLOTS`] periods of [`PERIOD`], in a histogram per period
//! with four buckets per doubling, so the floor holds for as long as the delay lasts (the
//! transfers keep sampling it) and is gone `SLOTS × PERIOD` after it ends. A quantile rather
//! than the maximum: one client descheduled for a second, or one sample that waited behind a
//! burst of other work on the machine, must not hold up the repair of every other transfer's
//! losses; under random loss with no queueing (2 % loss, tens of clients) the floor stays at a
//! few milliseconds, far under the transfers' own 20 ms minimum.
//!
//! The floor learns from round trips that came back; at the very start of a storm, when every
//! client asks at once, none has come back yet and every transfer's first window may wait in
//! the same queue. So the shard also keeps a budget of retransmissions: in any
//! [`BUDGET_PERIOD`] it acts on at most [`BUDGET_MIN`] timeouts plus one for every
//! [`BUDGET_SHARE`] ACKs that made progress in it and the period before; the other timeouts wait
//! a period and are tried again (their ACK usually comes first). Independent losses time out
//! a few windows among many ACKs and never meet the budget; a shared delay times out many at
//! once with few ACKs, and only a handful of them are resent. A real outage of every client
//! is then repaired at a pace that grows with the ACKs coming back, as TCP's slow start does.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long one slot of the window covers.
const PERIOD: Duration = Duration::from_millis(500);
/// Slots in the window: the floor remembers a delay for `SLOTS × PERIOD` after its last sample.
const SLOTS: usize = 4;
/// The quantile of recent round trips the floor is taken from, in per mille.
const QUANTILE: u64 = 900;
/// The floor's margin over that quantile: the delay may still be growing, and a client serving
/// its transfers in bursts answers some of them up to about twice as late as most.
const MARGIN: u32 = 2;
/// A floor never above this: a client that is really gone must still be retried within
/// seconds, and firmware repeats its ACK after 1–4 s anyway.
const MAX: Duration = Duration::from_secs(2);
/// Histogram buckets: four per doubling of the round trip in microseconds, up to 2^26 µs
/// (67 s, past any timeout).
const BUCKETS: usize = 26 * 4;
/// Samples between two computations of the floor within one period, at most: computing it walks
/// the histogram, which is too much to do for every datagram. (Sooner while the floor rests on
/// few samples: after one sample in sixteen of those it was computed from.)
const RECOMPUTE_EVERY: u64 = 64;

/// How long one period of the retransmission budget covers.
const BUDGET_PERIOD: Duration = Duration::from_millis(20);
/// Timeouts acted on in a period whatever the ACKs.
const BUDGET_MIN: u32 = 4;
/// ACKs that made progress per timeout acted on beyond [`BUDGET_MIN`].
const BUDGET_SHARE: u32 = 8;

/// A shard's recent round trips, as the floor of its transfers' timeouts.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    origin: Instant,
    /// The period the newest slot covers, counted from `origin`.
    period: u64,
    /// Samples of each period by bucket, in a ring indexed by period.
    slots: [[u32; BUCKETS]; SLOTS],
    /// The floor as last computed, the period it was computed in, the samples it was computed
    /// from and the samples since.
    cached: Cell<Cached>,
    /// The retransmission budget's period, and its ACKs and timeouts acted on in this period
    /// and the one before.
    budget_period: u64,
    acks: [u32; 2],
    fired: [u32; 2],
}

impl Pace {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            origin: now,
            period: 0,
            slots: [[0; BUCKETS]; SLOTS],
            cached: Cell::new(Cached::default()),
            budget_period: 0,
            acks: [0; 2],
            fired: [0; 2],
        }
    }

    /// A transfer measured a round trip of `rtt` (an ACK for a block sent once).
    pub(crate) fn sample(&mut self, now: Instant, rtt: Duration) {
        self.roll_budget(now);
        self.acks[1] = self.acks[1].saturating_add(1);
        let period = self.advance(now);
        self.slots[period as usize % SLOTS][bucket(rtt)] += 1;
        let mut cached = self.cached.get();
        cached.since += 1;
        self.cached.set(cached);
    }

    /// The floor under every transfer's timeout at `now`.
    pub(crate) fn floor(&self, now: Instant) -> Duration {
        let period = self.period_of(now);
        let cached = self.cached.get();
        let fresh = cached.since == 0
            || (cached.since < RECOMPUTE_EVERY && cached.since * 16 <= cached.basis);
        if period == cached.period && fresh {
            return cached.floor;
        }
        let (floor, basis) = self.compute(period);
        self.cached.set(Cached {
            floor,
            period,
            basis,
            since: 0,
        });
        floor
    }

    /// The floor in `period`, and the samples it rests on.
    fn compute(&self, period: u64) -> (Duration, u64) {
        if period >= self.period + SLOTS as u64 {
            return (Duration::ZERO, 0);
        }
        // Slots older than the window were cleared when it moved; those it has not reached yet
        // (the periods between the newest sample and now) are empty.
        let stale = (period - self.period.min(period)) as usize;
        let mut merged = [0u64; BUCKETS];
        for age in 0..SLOTS - stale.min(SLOTS) {
            let slot = &self.slots[(self.period as usize + SLOTS - age) % SLOTS];
            for (sum, &n) in merged.iter_mut().zip(slot) {
                *sum += u64::from(n);
            }
        }
        let total: u64 = merged.iter().sum();
        if total == 0 {
            return (Duration::ZERO, 0);
        }
        let want = (total * QUANTILE).div_ceil(1000);
        let mut seen = 0;
        for (b, &n) in merged.iter().enumerate() {
            seen += n;
            if seen >= want {
                return ((upper(b) * MARGIN).min(MAX), total);
            }
        }
        (MAX, total)
    }

    /// Whether a transfer whose timeout is due at `now` may retransmit now (and counts it),
    /// or must wait [`Pace::deferral`] and ask again.
    pub(crate) fn retransmit(&mut self, now: Instant) -> bool {
        self.roll_budget(now);
        let allowed = BUDGET_MIN + (self.acks[0] + self.acks[1]) / BUDGET_SHARE;
        if self.fired[0] + self.fired[1] >= allowed {
            return false;
        }
        self.fired[1] += 1;
        true
    }

    /// How long a timeout the budget refused waits.
    pub(crate) fn deferral() -> Duration {
        BUDGET_PERIOD
    }

    fn roll_budget(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.origin);
        let period = (since.as_micros() / BUDGET_PERIOD.as_micros()) as u64;
        match period.saturating_sub(self.budget_period) {
            0 => return,
            1 => {
                self.acks = [self.acks[1], 0];
                self.fired = [self.fired[1], 0];
            }
            _ => {
                self.acks = [0; 2];
                self.fired = [0; 2];
            }
        }
        self.budget_period = period;
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
                self.slots[p as usize % SLOTS] = [0; BUCKETS];
            }
            self.period = period;
        }
        self.period
    }
}

/// The floor as [`Pace::floor`] last computed it.
#[derive(Debug, Clone, Copy, Default)]
struct Cached {
    floor: Duration,
    period: u64,
    basis: u64,
    since: u64,
}

/// The bucket of a round trip: four per doubling of its microseconds.
fn bucket(rtt: Duration) -> usize {
    let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
    let exp = 63 - micros.leading_zeros() as usize;
    // The two bits after the leading one say which quarter of the doubling.
    let quarter = if exp >= 2 {
        (micros >> (exp - 2)) as usize & 3
    } else {
        (micros << (2 - exp)) as usize & 3
    };
    (exp * 4 + quarter).min(BUCKETS - 1)
}

/// The largest round trip bucket `b` holds.
fn upper(b: usize) -> Duration {
    let (exp, quarter) = (b / 4, b % 4);
    let micros = (1u64 << exp) * (5 + quarter as u64) / 4;
    Duration::from_micros(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_bound_their_samples() {
        for micros in [1, 2, 3, 5, 7, 100, 999, 1000, 1024, 12_345, 2_000_000] {
            let rtt = Duration::from_micros(micros);
            let b = bucket(rtt);
            assert!(
                upper(b) >= rtt,
                "{micros} µs in bucket {b} up to {:?}",
                upper(b)
            );
            assert!(
                upper(b) <= rtt * 3 / 2 + Duration::from_micros(1),
                "{micros}"
            );
        }
    }

    #[test]
    fn the_floor_holds_while_samples_last_and_falls_after() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        assert_eq!(pace.floor(t0), Duration::ZERO);
        for _ in 0..100 {
            pace.sample(t0, ms(100));
        }
        let first = pace.floor(t0);
        assert!(first >= ms(200) && first <= ms(260), "{first:?}");
        // A delay that lasts keeps the floor up, however long.
        for i in 1..20 {
            let now = t0 + PERIOD * i;
            for _ in 0..100 {
                pace.sample(now, ms(80));
            }
            assert!(pace.floor(now) >= ms(160), "{i}: {:?}", pace.floor(now));
        }
        // Once the samples stop, the floor is gone within the window.
        let last = t0 + PERIOD * 19;
        assert_eq!(pace.floor(last + PERIOD * SLOTS as u32), Duration::ZERO);
    }

    #[test]
    fn a_few_slow_samples_do_not_hold_up_the_rest() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        for i in 0..1000 {
            // Five in a hundred waited behind something else on the machine.
            let rtt = if i % 20 == 0 { ms(900) } else { ms(2) };
            pace.sample(t0, rtt);
        }
        let floor = pace.floor(t0);
        assert!(floor <= ms(6), "{floor:?}");
    }

    #[test]
    fn timeouts_beyond_the_acks_wait() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        // Many timeouts at once with no ACK: a handful act, the rest wait.
        let acted = (0..300).filter(|_| pace.retransmit(t0)).count();
        assert_eq!(acted, BUDGET_MIN as usize);
        // With ACKs flowing, scattered timeouts all act.
        let later = t0 + Duration::from_secs(1);
        for _ in 0..400 {
            pace.sample(later, ms(2));
        }
        let acted = (0..40).filter(|_| pace.retransmit(later)).count();
        assert_eq!(acted, 40);
        // The budget renews with time.
        let much_later = later + Duration::from_secs(1);
        assert!(pace.retransmit(much_later));
    }

    #[test]
    fn the_floor_is_bounded() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        pace.sample(t0, Duration::from_secs(30));
        assert_eq!(pace.floor(t0), MAX);
    }
}
