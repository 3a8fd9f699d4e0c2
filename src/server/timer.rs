//! The shard's retransmission timers: a hashed wheel of millisecond ticks.
//!
//! Thousands of transfers each hold one deadline, and nearly every ACK moves it later; so an
//! entry is only ever added when a deadline moves *earlier* than the one already in the wheel,
//! and an entry that comes due before its transfer's current deadline is simply re-added (the
//! transfer, not the wheel, knows the deadline). Adding and expiring are O(1) per entry.

use std::time::{Duration, Instant};

/// The wheel's resolution. A deadline is rounded up to it, so a timer never fires early.
const TICK: Duration = Duration::from_millis(1);
/// Slots: one lap is 4.096 s, past the largest RTO; later deadlines wait for their lap.
const SLOTS: usize = 4096;

/// What a timer names: a transfer's slot and generation.
pub(crate) type Key = (u32, u32);

#[derive(Debug, Clone, Copy)]
struct Entry {
    at: u64,
    key: Key,
}

/// A timer wheel keyed by transfer.
#[derive(Debug)]
pub(crate) struct Wheel {
    base: Instant,
    slots: Vec<Vec<Entry>>,
    /// The first tick not yet expired.
    next: u64,
    len: usize,
}

impl Wheel {
    pub(crate) fn new(base: Instant) -> Self {
        Self {
            base,
            slots: vec![Vec::new(); SLOTS],
            next: 0,
            len: 0,
        }
    }

    /// The tick `at` falls in, rounded up.
    pub(crate) fn tick(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        nanos.div_ceil(TICK.as_nanos()) as u64
    }

    /// Adds a timer for `key` at `at`; returns the tick it will fire at.
    pub(crate) fn insert(&mut self, at: Instant, key: Key) -> u64 {
        let at = self.tick(at).max(self.next);
        self.slots[at as usize % SLOTS].push(Entry { at, key });
        self.len += 1;
        at
    }

    /// Moves every timer due at or before `now` into `out`, with the tick it was set for.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<(Key, u64)>) {
        // A timer set for tick `at` is due once `at` ms have fully passed: its deadline was
        // rounded up to `at`, so it is never early.
        let upto = (now.saturating_duration_since(self.base).as_nanos() / TICK.as_nanos()) as u64;
        if upto < self.next {
            return;
        }
        if self.len == 0 {
            self.next = upto + 1;
            return;
        }
        // Past a whole lap, every slot is visited once.
        let laps = (upto - self.next + 1).min(SLOTS as u64);
        for tick in self.next..self.next + laps {
            let slot = &mut self.slots[tick as usize % SLOTS];
            let mut i = 0;
            while i < slot.len() {
                if slot[i].at <= upto {
                    let entry = slot.swap_remove(i);
                    out.push((entry.key, entry.at));
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
        }
        self.next = upto + 1;
    }

    /// When the next timer is due, if any.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let mut earliest = u64::MAX;
        for tick in self.next..self.next + SLOTS as u64 {
            for entry in &self.slots[tick as usize % SLOTS] {
                if entry.at == tick {
                    return Some(self.instant(tick));
                }
                earliest = earliest.min(entry.at);
            }
        }
        Some(self.instant(earliest))
    }

    fn instant(&self, tick: u64) -> Instant {
        self.base + Duration::from_millis(tick)
    }

    /// Timers set.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn timers_fire_once_due_and_never_early() {
        let base = Instant::now();
        let mut wheel = Wheel::new(base);
        let t5 = wheel.insert(base + ms(5), (1, 0));
        wheel.insert(base + ms(3) + Duration::from_micros(10), (2, 0));
        let mut out = Vec::new();
        wheel.expire(base + ms(3), &mut out);
        assert!(out.is_empty(), "3.01 ms rounds up to tick 4: {out:?}");
        assert_eq!(wheel.next_due(), Some(base + ms(4)));
        wheel.expire(base + ms(4), &mut out);
        assert_eq!(out, vec![((2, 0), 4)]);
        out.clear();
        wheel.expire(base + ms(6), &mut out);
        assert_eq!(out, vec![((1, 0), t5)]);
        assert_eq!(wheel.len(), 0);
        assert_eq!(wheel.next_due(), None);
    }

    #[test]
    fn deadlines_past_a_lap_wait_for_their_lap() {
        let base = Instant::now();
        let mut wheel = Wheel::new(base);
        wheel.insert(base + ms(SLOTS as u64 + 7), (9, 1));
        wheel.insert(base + ms(7), (8, 1));
        let mut out = Vec::new();
        wheel.expire(base + ms(100), &mut out);
        assert_eq!(out, vec![((8, 1), 7)], "the same slot, one lap apart");
        out.clear();
        assert_eq!(wheel.next_due(), Some(base + ms(SLOTS as u64 + 7)));
        wheel.expire(base + ms(SLOTS as u64 + 7), &mut out);
        assert_eq!(out, vec![((9, 1), SLOTS as u64 + 7)]);
    }

    #[test]
    fn ticks_past_2_to_the_32_ms_still_name_their_instant() {
        // 50 days of uptime: a tick count past u32, which must not be clamped.
        let base = Instant::now();
        let mut wheel = Wheel::new(base);
        let day50 = base + Duration::from_secs(50 * 86_400);
        let mut out = Vec::new();
        wheel.expire(day50, &mut out);
        wheel.insert(day50 + ms(500), (1, 1));
        assert_eq!(wheel.next_due(), Some(day50 + ms(500)));
    }

    #[test]
    fn a_long_silence_expires_everything_due_in_one_pass() {
        let base = Instant::now();
        let mut wheel = Wheel::new(base);
        for i in 0..100u32 {
            wheel.insert(base + ms(u64::from(i) * 97), (i, 0));
        }
        let mut out = Vec::new();
        wheel.expire(base + ms(20_000), &mut out);
        assert_eq!(out.len(), 100);
        assert_eq!(wheel.len(), 0);
    }

    #[test]
    fn a_deadline_in_the_past_fires_at_the_next_expiry() {
        let base = Instant::now();
        let mut wheel = Wheel::new(base);
        let mut out = Vec::new();
        wheel.expire(base + ms(50), &mut out);
        let at = wheel.insert(base + ms(10), (3, 3));
        assert_eq!(at, 51, "not behind the wheel");
        wheel.expire(base + ms(51), &mut out);
        assert_eq!(out, vec![((3, 3), 51)]);
    }
}
