//! Test support, shared by the core's unit tests, its property tests and the fuzz targets
//! (compiled for `cfg(test)` and with the `sim` feature, hidden from the documentation):
//!
//! - [`Rng`], the one seeded generator, and [`pattern`], the bytes of every simulated file;
//! - [`Pair`], the protocol's [`Transfer`] and the real [`Client`] over a lossy in-memory
//!   [`Link`] on a virtual clock that jumps to the earliest wake-up (quinn-proto's `Pair` is the
//!   model), with the server's main port played by [`transfer::inbound`] and
//!   [`Negotiated::negotiate`];
//! - [`Shard`], the server's real sessions (`server::session`), as many as a [`Storm`] asks,
//!   sharing one pace and executed exactly as the session's module doc says, against as many
//!   real clients over a [`Net`]: per direction a lossy link behind a bottleneck queue whose
//!   delay grows with the load ([`Path`]), and a client CPU that serves every client in late
//!   batches ([`Lag`]); its [`StormReport`] says whether every byte arrived once and in order,
//!   how much DATA went twice, how long losses held transfers up, and how each one ended;
//! - [`Checked`] and [`CheckedSession`], drivers of one `Transfer` and of one server session
//!   that check their invariants after every [`Event`] or [`SessionEvent`]: the invariant
//!   checkers of the property tests and of the `transfer_events` fuzz target.
//!
//! A seed fixes everything random, so a run reproduces exactly. Nothing here is part of the
//! library's API; it may change with any commit.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::client::{self, Client};
use crate::options::{Ask, Limits, Negotiated};
use crate::packet::{self, Packet};
use crate::transfer::{self, Config, Inbound, Outcome, Stats, Transfer, Transmit};

/// xorshift64* (Vigna 2014): enough randomness for a link model, without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose sequence is fixed by `seed` (0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The file's bytes: a position hash, so a misplaced block shows.
pub fn pattern(len: usize) -> Vec<u8> {
    pattern_at(0, len)
}

/// `len` bytes of [`pattern`] from offset `from`, for files too large to hold.
pub fn pattern_at(from: u64, len: usize) -> Vec<u8> {
    (from..from + len as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect()
}

/// What one direction of the link does to each datagram.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// The chance that a datagram is lost.
    pub loss: f64,
    /// The chance that a datagram arrives twice.
    pub dup: f64,
    /// The chance that a datagram is held back by up to `reorder_delay`.
    pub reorder: f64,
    /// The one-way delay.
    pub latency: Duration,
    /// The most a reordered datagram is held back.
    pub reorder_delay: Duration,
}

impl Link {
    /// `loss`, half as many duplicates and half as many reorderings, 1 ms each way.
    pub fn lossy(loss: f64) -> Self {
        Self {
            loss,
            dup: loss / 2.0,
            reorder: loss / 2.0,
            latency: Duration::from_millis(1),
            reorder_delay: Duration::from_millis(20),
        }
    }
}

/// One direction: datagrams in flight, by arrival time, then by sending order.
#[derive(Debug, Default)]
struct Wire {
    queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    seq: u64,
}

impl Wire {
    fn send(&mut self, now: Instant, dgram: Vec<u8>, link: &Link, rng: &mut Rng) {
        if rng.chance(link.loss) {
            return;
        }
        let copies = if rng.chance(link.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let mut at = now + link.latency;
            if rng.chance(link.reorder) {
                let max = link.reorder_delay.as_micros() as u64;
                at += Duration::from_micros(rng.below(max + 1));
            }
            self.seq += 1;
            self.queue.push(Reverse((at, self.seq, dgram.clone())));
        }
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((at, _, _))| *at)
    }

    fn pop(&mut self) -> Option<Vec<u8>> {
        self.queue.pop().map(|Reverse((_, _, dgram))| dgram)
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// One simulated download.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// The link's loss rate each way (see [`Link::lossy`]).
    pub loss: f64,
    /// The window the client asks for (1: none asked).
    pub windowsize: u16,
    /// The block size the client asks for (512: none asked).
    pub blksize: u16,
    /// The file's length.
    pub len: usize,
    /// The link's seed.
    pub seed: u64,
    /// The chance that a datagram is held back, and by how much at most; `None`: half the
    /// loss rate, up to 20 ms.
    pub reorder: Option<(f64, Duration)>,
    /// A client that ACKs every block out of sequence, as edk2 does
    /// ([`client::Config::reack_every_stray`]).
    pub edk2: bool,
}

/// How a [`Pair`] run ended.
#[derive(Debug)]
pub struct Report {
    /// The server's outcome (`None`: no request ever reached it).
    pub outcome: Option<Outcome>,
    /// The client's outcome.
    pub client: Option<client::Outcome>,
    /// Whether the client received the file byte for byte.
    pub identical: bool,
    /// The server's final block.
    pub blocks: u64,
    /// The server's counters.
    pub stats: Option<Stats>,
    /// The client's counters.
    pub client_stats: client::Stats,
    /// Events handled.
    pub steps: u64,
    /// Virtual time taken.
    pub elapsed: Duration,
}

/// The server and the client, the link between them, and the virtual clock.
#[derive(Debug)]
pub struct Pair {
    /// The virtual time.
    pub now: Instant,
    start: Instant,
    /// The server's transfer, once an RRQ reached its main port.
    pub server: Option<Transfer>,
    /// The reader.
    pub client: Client,
    /// What the client received, in sequence.
    pub received: Vec<u8>,
    file: Vec<u8>,
    limits: Limits,
    config: Config,
    link: Link,
    rng: Rng,
    to_client: Wire,
    to_server: Wire,
    /// Events handled so far.
    pub steps: u64,
}

/// The default caps without the bound on a window's bytes, which exists for real sockets'
/// receive buffers; the simulated link has none.
pub const UNCAPPED: Limits = Limits {
    blksize_max: crate::options::BLKSIZE_MAX,
    windowsize_max: 64,
    window_bytes_max: usize::MAX,
};

impl Pair {
    /// A client about to ask for a file of `case.len` bytes with `case`'s options (and `tsize`
    /// when it asks any), a server that answers within [`UNCAPPED`].
    pub fn new(case: &Case) -> Self {
        let now = Instant::now();
        let mut ask = Ask {
            blksize: (case.blksize != 512).then_some(case.blksize),
            windowsize: (case.windowsize != 1).then_some(case.windowsize),
            ..Ask::default()
        };
        ask.tsize = !ask.is_empty();
        let client = Client::new(
            client::Config {
                ask,
                timeout: Duration::from_secs(1),
                retries: 30,
                reack_every_stray: case.edk2,
                ..client::Config::default()
            },
            now,
        );
        let mut link = Link::lossy(case.loss);
        if let Some((chance, delay)) = case.reorder {
            link.reorder = chance;
            link.reorder_delay = delay;
        }
        Self {
            now,
            start: now,
            server: None,
            client,
            received: Vec::new(),
            file: pattern(case.len),
            limits: UNCAPPED,
            // More patient than the default: at 20 % loss each way a first reply and every
            // answer to it can be lost several times over, and a one-block file is over for
            // the client before the server heard anything from it.
            config: Config {
                retries: 10,
                retries_unanswered: 10,
                ..Config::default()
            },
            link,
            rng: Rng::new(case.seed),
            to_client: Wire::default(),
            to_server: Wire::default(),
            steps: 0,
        }
    }

    /// Runs until the server has ended (or the client gave up before reaching it) and nothing
    /// is in flight; each event (an arrival or a timer) is one step.
    pub fn run(&mut self, max_steps: u64, max_time: Duration) -> Report {
        loop {
            self.drive_server();
            self.drive_client();
            let over = match &self.server {
                Some(server) => server.outcome().is_some(),
                None => self.client.outcome().is_some(),
            };
            if over && self.to_client.is_empty() && self.to_server.is_empty() {
                break;
            }
            self.steps += 1;
            assert!(self.steps <= max_steps, "more than {max_steps} steps");
            let server_timer = self.server.as_ref().and_then(Transfer::poll_timeout);
            let next = [
                self.to_server.next_arrival(),
                self.to_client.next_arrival(),
                server_timer,
                self.client.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("something is in flight or a timer is armed");
            self.now = self.now.max(next);
            assert!(self.now - self.start <= max_time, "over {max_time:?}");
            let due = |at: Option<Instant>| at.is_some_and(|at| at <= self.now);
            // Arrivals before timers at a tie, the earlier arrival first.
            let up = self.to_server.next_arrival();
            let down = self.to_client.next_arrival();
            if due(up) && (down.is_none() || up <= down) {
                let dgram = self.to_server.pop().expect("a datagram is due");
                self.server_receives(&dgram);
            } else if due(down) {
                let dgram = self.to_client.pop().expect("a datagram is due");
                if let Some(data) = self.client.handle_datagram(self.now, &dgram) {
                    self.received.extend_from_slice(data);
                }
            } else if due(server_timer) {
                if let Some(server) = &mut self.server {
                    server.handle_timeout(self.now);
                }
            } else {
                self.client.handle_timeout(self.now);
            }
        }
        Report {
            outcome: self.server.as_ref().and_then(Transfer::outcome),
            client: self.client.outcome(),
            identical: self.received == self.file,
            blocks: self.server.as_ref().map_or(0, Transfer::last_block),
            stats: self.server.as_ref().map(|s| *s.stats()),
            client_stats: self.client.stats(),
            steps: self.steps,
            elapsed: self.now - self.start,
        }
    }

    /// Plays the server's main port and transfer socket: an RRQ starts the transfer (or repeats
    /// its request), anything else goes to the transfer while it runs.
    fn server_receives(&mut self, dgram: &[u8]) {
        if let Inbound::Read(request) = transfer::inbound(dgram) {
            match &mut self.server {
                Some(server) => server.handle_repeat(self.now),
                None => {
                    let len = self.file.len() as u64;
                    let opts = Negotiated::negotiate(&request.options, &self.limits, || Some(len))
                        .expect("the client asks for legal options");
                    self.server = Some(Transfer::new(self.now, opts, len, self.config));
                }
            }
            return;
        }
        // Once ended, the server's socket is closed.
        if let Some(server) = self.server.as_mut().filter(|s| s.outcome().is_none()) {
            server.handle_datagram(self.now, dgram);
        }
    }

    /// Plays the server's driver: sends everything the transfer asks for.
    fn drive_server(&mut self) {
        let now = self.now;
        let Some(server) = &mut self.server else {
            return;
        };
        while let Some(transmit) = server.poll_transmit(now) {
            let mut buf = vec![0; 512];
            match transmit {
                Transmit::Oack => {
                    let n = server.emit_oack(&mut buf).expect("an OACK fits 512 bytes");
                    buf.truncate(n);
                    self.to_client.send(now, buf, &self.link, &mut self.rng);
                }
                Transmit::Blocks(run) => {
                    for block in run.iter() {
                        let mut header = [0; packet::DATA_HEADER_LEN];
                        packet::emit_data_header(Transfer::wire_block(block), &mut header);
                        let offset = server.offset(block) as usize;
                        let len = server.block_len(block);
                        let mut dgram = header.to_vec();
                        dgram.extend_from_slice(&self.file[offset..offset + len]);
                        self.to_client.send(now, dgram, &self.link, &mut self.rng);
                    }
                }
                Transmit::Error { code, message } => {
                    let n = packet::emit_error(code, message, &mut buf).expect("fits");
                    buf.truncate(n);
                    self.to_client.send(now, buf, &self.link, &mut self.rng);
                }
            }
        }
    }

    /// Plays the client's driver: sends the RRQ or the ACK it asks for.
    fn drive_client(&mut self) {
        while let Some(transmit) = self.client.poll_transmit() {
            let mut buf = vec![0; 512];
            let n = match transmit {
                client::Transmit::Rrq => self.client.config().emit_rrq("file", &mut buf),
                client::Transmit::Ack(block) => Packet::Ack { block }.emit(&mut buf),
            }
            .expect("an RRQ or ACK fits 512 bytes");
            buf.truncate(n);
            self.to_server
                .send(self.now, buf, &self.link, &mut self.rng);
        }
    }
}

mod checked;
mod checked_session;
mod net;
mod shard;
pub use checked::{Checked, Event, RUN_BUDGET};
pub use checked_session::{CheckedSession, SessionEvent, Store, MEMORY_MAX};
pub use net::{Lag, Net, Path};
pub use shard::{Recovery, Shard, Storm, StormReport};

#[cfg(test)]
mod tests;
