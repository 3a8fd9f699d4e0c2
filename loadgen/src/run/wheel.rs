//! The timer wheel of a worker and the seeded coin of the loss simulation.

use std::time::{Duration, Instant};

/// A hashed timer wheel of (slot, generation) entries; see the module doc.
pub(super) struct Wheel {
    pub(super) base: Instant,
    tick: Duration,
    /// The last tick whose entries were handed out.
    current: u64,
    buckets: Vec<Vec<(u32, u32)>>,
}

impl Wheel {
    pub(super) fn new(timeout: Duration, clients: usize) -> Self {
        // Timers fire at most a tick late: 1/512 of the timeout, but no finer than a
        // millisecond (epoll_wait's unit).
        let tick = (timeout / 512).max(Duration::from_millis(1));
        let len = (timeout.as_nanos() / tick.as_nanos()) as usize + 2;
        let per_bucket = clients / len + 1;
        Self {
            base: Instant::now(),
            tick,
            current: 0,
            buckets: (0..len).map(|_| Vec::with_capacity(per_bucket)).collect(),
        }
    }

    /// epoll_wait's timeout: one tick, in whole milliseconds.
    pub(super) fn tick_ms(&self) -> libc::c_int {
        libc::c_int::try_from(self.tick.as_millis()).unwrap_or(libc::c_int::MAX)
    }

    pub(super) fn tick_of(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.base).as_nanos() / self.tick.as_nanos()) as u64
    }

    /// Files an entry to come due at the first tick at or after `at` (at most a wheel's turn
    /// ahead: a later deadline is filed again when that entry comes due).
    pub(super) fn insert(&mut self, at: Instant, index: u32, generation: u32) {
        let len = self.buckets.len() as u64;
        let tick = (self.tick_of(at) + 1).clamp(self.current + 1, self.current + len - 1);
        self.buckets[(tick % len) as usize].push((index, generation));
    }

    /// Moves every entry due by `now` into `due`.
    pub(super) fn expire(&mut self, now: Instant, due: &mut Vec<(u32, u32)>) {
        let target = self.tick_of(now);
        let len = self.buckets.len() as u64;
        while self.current < target {
            self.current += 1;
            due.append(&mut self.buckets[(self.current % len) as usize]);
        }
    }
}

/// A seeded generator for the loss simulation (splitmix64: fast and good enough for coins).
#[derive(Debug, Clone)]
pub(super) struct Rng(pub(super) u64);

impl Rng {
    /// True with probability `p`.
    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}
