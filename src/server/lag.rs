//! A shard's knowledge of how far behind its clients run, shared by its transfers (both
//! backends keep one per shard).

use std::time::{Duration, Instant};

/// What the shard's spurious timeouts teach it about its clients: the round trip one of them
/// took when a timeout fired too early, a floor under every transfer's timeout for a while.
///
/// In a storm the clients share a fate — one test rig, one rack's uplink, one overloaded PXE
/// relay — and when they fall behind, they all do: without this, each of thousands of transfers
/// would learn it with a spurious retransmission of its own (a duplicate DATA and a duplicate
/// ACK each). The floor halves every [`Lag::HALF_LIFE`], so a passing stall costs fast loss
/// recovery only briefly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lag {
    floor: Duration,
    at: Instant,
}

impl Lag {
    const HALF_LIFE: Duration = Duration::from_secs(2);
    /// A floor never above this: a client gone silent must still be retried within seconds.
    const MAX: Duration = Duration::from_secs(1);

    pub(crate) fn new(now: Instant) -> Self {
        Self {
            floor: Duration::ZERO,
            at: now,
        }
    }

    /// The floor at `now`.
    pub(crate) fn floor(&self, now: Instant) -> Duration {
        if self.floor.is_zero() {
            return Duration::ZERO;
        }
        let halves =
            now.saturating_duration_since(self.at).as_secs_f64() / Self::HALF_LIFE.as_secs_f64();
        self.floor.mul_f64(0.5f64.powf(halves))
    }

    /// A transfer's timeout proved spurious; its timeout is now `rto` (grown past the round
    /// trip it measured).
    pub(crate) fn learn(&mut self, now: Instant, rto: Duration) {
        self.floor = self.floor(now).max(rto.min(Self::MAX));
        self.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_learned_lag_is_a_floor_that_fades() {
        let t0 = Instant::now();
        let mut lag = Lag::new(t0);
        assert_eq!(lag.floor(t0), Duration::ZERO);
        lag.learn(t0, ms(120));
        assert_eq!(lag.floor(t0), ms(120));
        let later = lag.floor(t0 + Duration::from_secs(2));
        assert!(later > ms(59) && later < ms(61), "{later:?}");
        // A shorter lag learned later does not lower the floor.
        lag.learn(t0 + Duration::from_secs(2), ms(10));
        assert!(lag.floor(t0 + Duration::from_secs(2)) > ms(59));
        // Never above the maximum.
        lag.learn(t0, Duration::from_secs(30));
        assert_eq!(lag.floor(t0), Lag::MAX);
    }
}
