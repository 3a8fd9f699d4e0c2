//! The network between a simulated shard and its clients: per direction a lossy [`Link`]
//! behind an optional bottleneck queue ([`Path`]), and optionally one client CPU that serves
//! every client's datagrams in batches ([`Lag`]).
//!
//! A boot storm makes delay grow with load, and the two models here are the two places it grows
//! (DESIGN.md, "Delay is not loss"; RFC 1123 §4.2.3.2 asks the timeout to adapt to it):
//!
//! - **a queue** (a switch port, the server's NIC, a PXE relay): each datagram waits behind
//!   those already queued for one service time each, so with N transfers in flight the round
//!   trip grows with N;
//! - **a client CPU** (a test rig, a tokio runtime on one core serving thousands of sockets):
//!   it looks at its sockets only every `tick`, then handles every datagram that has arrived,
//!   transfer after transfer, at `cost` each; the ACKs of many transfers leave late, and
//!   together.
//!
//! Everything random is drawn from the one seeded [`Rng`] in a fixed order, so a seed
//! reproduces a run exactly.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{Link, Rng};

/// One direction of the network.
#[derive(Debug, Clone, Copy)]
pub struct Path {
    /// Loss, duplication, reordering and the propagation delay, after the queue.
    pub link: Link,
    /// The bottleneck's time to serve one datagram (zero: no queue). Every datagram of every
    /// transfer goes through the one queue, first come first served.
    pub service: Duration,
}

impl Path {
    /// `link` without a queue.
    pub fn link(link: Link) -> Self {
        Self {
            link,
            service: Duration::ZERO,
        }
    }
}

/// The client side's one CPU: the clients' datagrams are handled in batches, late. (Their
/// timers fire on time: at a second or more they are not what the batches delay.)
#[derive(Debug, Clone, Copy)]
pub struct Lag {
    /// The CPU looks at its sockets only at multiples of this (zero: as soon as it is idle).
    pub tick: Duration,
    /// CPU time to handle one datagram (and send the ACK it draws).
    pub cost: Duration,
}

/// The whole network of a simulated shard.
#[derive(Debug, Clone, Copy)]
pub struct Net {
    /// From the server to the clients (OACK, DATA, ERROR).
    pub down: Path,
    /// From the clients to the server (RRQ, ACK).
    pub up: Path,
    /// The clients' CPU; `None`: every client answers the moment a datagram arrives.
    pub lag: Option<Lag>,
}

impl Net {
    /// [`Link::lossy`] both ways, no queue, no lag.
    pub fn lossy(loss: f64) -> Self {
        Self {
            down: Path::link(Link::lossy(loss)),
            up: Path::link(Link::lossy(loss)),
            lag: None,
        }
    }

    /// Loss-free, 1 ms each way, with a bottleneck queue on the way to the clients that takes
    /// `service` per datagram (the DATA direction, where the bytes are).
    pub fn queue(service: Duration) -> Self {
        let mut net = Self::lossy(0.0);
        net.down.service = service;
        net
    }

    /// Loss-free, 1 ms each way, with the clients on one CPU that looks at its sockets every
    /// `tick` and spends `cost` per datagram.
    pub fn bursty(tick: Duration, cost: Duration) -> Self {
        Self {
            lag: Some(Lag { tick, cost }),
            ..Self::lossy(0.0)
        }
    }
}

/// What became of a datagram handed to a [`Channel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Lost,
    Queued,
}

/// A datagram on its way: when it arrives, its place in the sending order (for ties), the
/// transfer it is for (or from), its bytes.
type Flight = (Instant, u64, usize, Vec<u8>);

/// A datagram that arrived at the clients' host: when, and its bytes.
type Arrived = (Instant, Vec<u8>);

/// One direction's datagrams in flight, by arrival time, then by sending order.
#[derive(Debug)]
pub(super) struct Channel {
    path: Path,
    queue: BinaryHeap<Reverse<Flight>>,
    seq: u64,
    /// When the bottleneck has served everything queued so far.
    free_at: Instant,
    /// The longest a datagram waited in the bottleneck.
    pub(super) max_wait: Duration,
}

impl Channel {
    pub(super) fn new(path: Path, now: Instant) -> Self {
        Self {
            path,
            queue: BinaryHeap::new(),
            seq: 0,
            free_at: now,
            max_wait: Duration::ZERO,
        }
    }

    /// Sends `dgram` of transfer `to` at `now`.
    pub(super) fn send(&mut self, now: Instant, to: usize, dgram: Vec<u8>, rng: &mut Rng) -> Fate {
        let link = &self.path.link;
        // Through the bottleneck first: a datagram lost further on still took its turn.
        let mut left = now;
        if !self.path.service.is_zero() {
            left = self.free_at.max(now) + self.path.service;
            self.free_at = left;
            self.max_wait = self.max_wait.max(left - now);
        }
        if rng.chance(link.loss) {
            return Fate::Lost;
        }
        let copies = if rng.chance(link.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut at = left + link.latency;
            if rng.chance(link.reorder) {
                let max = link.reorder_delay.as_micros() as u64;
                at += Duration::from_micros(rng.below(max + 1));
            }
            self.seq += 1;
            self.queue.push(Reverse((at, self.seq, to, dgram.clone())));
        }
        Fate::Queued
    }

    pub(super) fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, ..))| *at)
    }

    /// The next datagram to arrive, if it has by `now`: its transfer and bytes.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(usize, Vec<u8>)> {
        if self.next_arrival()? > now {
            return None;
        }
        self.queue
            .pop()
            .map(|Reverse((_, _, to, dgram))| (to, dgram))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The clients' CPU of [`Lag`]: datagrams wait in its inbox until it looks, then each is
/// handled at its own instant, one `cost` after the one before.
#[derive(Debug)]
pub(super) struct Cpu {
    lag: Lag,
    origin: Instant,
    /// Arrived and not looked at: when, for which transfer, what.
    inbox: VecDeque<(Instant, usize, Vec<u8>)>,
    /// Looked at and scheduled: when each is handled (never decreasing).
    scheduled: VecDeque<(Instant, usize, Vec<u8>)>,
    /// When the CPU has handled everything scheduled.
    free_at: Instant,
    /// The longest a datagram waited from its arrival to its handling.
    pub(super) max_wait: Duration,
}

impl Cpu {
    pub(super) fn new(lag: Lag, now: Instant) -> Self {
        Self {
            lag,
            origin: now,
            inbox: VecDeque::new(),
            scheduled: VecDeque::new(),
            free_at: now,
            max_wait: Duration::ZERO,
        }
    }

    pub(super) fn arrive(&mut self, now: Instant, to: usize, dgram: Vec<u8>) {
        self.inbox.push_back((now, to, dgram));
    }

    /// When something is next to happen: the CPU looks at its sockets, or handles a datagram.
    pub(super) fn next_event(&self) -> Option<Instant> {
        let look = self.inbox.front().map(|(at, ..)| self.look_at(*at));
        let handle = self.scheduled.front().map(|(at, ..)| *at);
        look.into_iter().chain(handle).min()
    }

    /// When the CPU looks at a datagram that arrived at `at`: once idle, at the next tick.
    fn look_at(&self, at: Instant) -> Instant {
        let ready = at.max(self.free_at);
        if self.lag.tick.is_zero() {
            return ready;
        }
        let since = ready.saturating_duration_since(self.origin).as_nanos();
        let tick = self.lag.tick.as_nanos();
        let ticks = since.div_ceil(tick);
        self.origin + Duration::from_nanos((ticks * tick) as u64)
    }

    /// Looks at the sockets if it is time: every datagram arrived by now is scheduled, those of
    /// one transfer together (one task drains its socket), transfers in the order they woke.
    pub(super) fn look(&mut self, now: Instant) {
        let Some(&(first, ..)) = self.inbox.front() else {
            return;
        };
        if self.look_at(first) > now {
            return;
        }
        let mut batch: Vec<(usize, Vec<Arrived>)> = Vec::new();
        let mut place = HashMap::new();
        for (at, to, dgram) in self.inbox.drain(..) {
            let i = *place.entry(to).or_insert_with(|| {
                batch.push((to, Vec::new()));
                batch.len() - 1
            });
            batch[i].1.push((at, dgram));
        }
        let mut at = now;
        for (to, dgrams) in batch {
            for (arrived, dgram) in dgrams {
                at += self.lag.cost;
                self.max_wait = self.max_wait.max(at - arrived);
                self.scheduled.push_back((at, to, dgram));
            }
        }
        self.free_at = at;
    }

    /// The next datagram whose handling is due by `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(usize, Vec<u8>)> {
        if self.scheduled.front()?.0 > now {
            return None;
        }
        self.scheduled.pop_front().map(|(_, to, dgram)| (to, dgram))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.inbox.is_empty() && self.scheduled.is_empty()
    }
}
