//! Transfers against one simulated shard: the server's real [`Session`]s, all sharing one
//! [`Pace`], executed exactly as the session's module doc says an executor must, against as
//! many real [`Client`]s over a [`Net`] on a virtual clock. One transfer is a storm of one.
//!
//! The executor here, like the server's:
//!
//! - after every input it calls `poll_io` until `None`; a [`Io::Send`]'s pieces are
//!   concatenated and cut every `segment` bytes (UDP GSO), each piece of the cut a datagram on
//!   the wire, and the send completes at once with [`Sent::Ok`] (`handle_sent`); an
//!   [`Io::Arm`] replaces the session's timer; after [`Io::Close`] the transfer's port is
//!   closed and what still arrives for it is dropped;
//! - at each instant it hands in every datagram that has arrived for the server before it fires
//!   any timer (the delay is not the server's to take for a loss);
//! - the main port starts a session for an RRQ (negotiating as the server does) and answers a
//!   repeated request with `handle_repeat` (RFC 1350 §4).
//!
//! What it measures, in a [`StormReport`]:
//!
//! - every byte delivered exactly once and in order: each client's in-sequence payloads are
//!   compared with the file as they are delivered, and their total with its length;
//! - the DATA the server sent more than once, counted on the wire: in a loss-free storm every
//!   duplicate is a spurious retransmission, delay taken for loss (RFC 1123 §4.2.3.2);
//! - how long a loss holds a transfer up: from the datagram dropped until the server has the
//!   acknowledgment of the block it carried (or acknowledged);
//! - how every transfer ended, on both sides.
//!
//! The counts are cross-checked against the transfer's own [`Stats`]: a session that sent a
//! block its transfer did not count (or the reverse) fails the run.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::net::{Channel, Cpu, Fate, Net};
use super::{pattern, Rng, UNCAPPED};
use crate::client::{self, Client};
use crate::options::{Ask, Limits, Negotiated};
use crate::packet::{Mode, Packet};
use crate::resolve::FileId;
use crate::server::sans_io::{
    Data, Datagrams, Ending, FileHandle, Io, Meta, Pace, Piece, ReadError, Sent, Session,
};
use crate::transfer::{self, Inbound, Stats, Transfer};

/// A storm: `transfers` clients fetching the same file from one shard at about the same time.
#[derive(Debug, Clone, Copy)]
pub struct Storm {
    /// How many transfers.
    pub transfers: usize,
    /// The file's length.
    pub len: usize,
    /// The block size the clients ask for (512: none asked).
    pub blksize: u16,
    /// The window the clients ask for (1: none asked).
    pub windowsize: u16,
    /// The requests are sent evenly spread over this time (zero: all at once).
    pub spread: Duration,
    /// The network.
    pub net: Net,
    /// Whether the transfers' sockets take UDP GSO (a window is then one send).
    pub gso: bool,
    /// The server's retransmission settings.
    pub config: transfer::Config,
    /// The server's caps on options.
    pub limits: Limits,
    /// The network's seed.
    pub seed: u64,
}

impl Storm {
    /// `transfers` transfers of `len` bytes in 1468-byte blocks (iPXE's and edk2's, one
    /// Ethernet frame) lock-step, all asked within 50 ms, with the server's defaults.
    pub fn new(transfers: usize, len: usize, net: Net, seed: u64) -> Self {
        Self {
            transfers,
            len,
            blksize: 1468,
            windowsize: 1,
            spread: Duration::from_millis(50),
            net,
            gso: true,
            config: transfer::Config::default(),
            limits: Limits::default(),
            seed,
        }
    }

    /// One transfer over `net`, the server more patient than its defaults (as [`super::Pair`]'s
    /// is) and within [`UNCAPPED`]: at 20 % loss each way a first reply and every answer to it
    /// can be lost several times over.
    pub fn single(len: usize, blksize: u16, windowsize: u16, net: Net, seed: u64) -> Self {
        Self {
            blksize,
            windowsize,
            spread: Duration::ZERO,
            config: transfer::Config {
                retries: 10,
                retries_unanswered: 10,
                ..transfer::Config::default()
            },
            limits: UNCAPPED,
            ..Self::new(1, len, net, seed)
        }
    }
}

/// How long losses held transfers up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Losses repaired.
    pub count: u64,
    /// The longest.
    pub max: Duration,
    /// All of them together.
    pub total: Duration,
}

impl Recovery {
    /// The mean (zero without any).
    pub fn mean(&self) -> Duration {
        match u32::try_from(self.count) {
            Ok(0) | Err(_) => Duration::ZERO,
            Ok(n) => self.total / n,
        }
    }

    fn add(&mut self, took: Duration) {
        self.count += 1;
        self.max = self.max.max(took);
        self.total += took;
    }
}

/// How a storm went; equal for equal storms (same seed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormReport {
    /// Transfers in the storm.
    pub transfers: usize,
    /// Transfers the server completed and whose client received the file exactly.
    pub complete: usize,
    /// How the server's sessions ended, by label, sorted (`never_started`: no request of
    /// the client reached the server before it gave up).
    pub endings: Vec<(&'static str, usize)>,
    /// Transfers whose client received something other than the file, in sequence.
    pub corrupt: usize,
    /// Blocks in all the transfers.
    pub blocks: u64,
    /// DATA datagrams the server sent.
    pub data_sent: u64,
    /// DATA datagrams the server sent beyond the first of each block.
    pub duplicates: u64,
    /// Blocks the server sent more than once.
    pub resent_blocks: u64,
    /// Timeouts the transfers proved spurious (RFC 3522) and undid.
    pub spurious: u64,
    /// The first duplicates: when (since the start), which transfer, which block.
    pub first_duplicates: Vec<(Duration, usize, u64)>,
    /// Datagrams the links dropped.
    pub losses: u64,
    /// Losses of the request, the OACK or its ACK 0: repaired by the first timeouts, before
    /// any round trip was measured.
    pub handshake_recovery: Recovery,
    /// Losses of DATA and of the ACKs of DATA.
    pub recovery: Recovery,
    /// The longest a datagram waited in a bottleneck queue.
    pub max_queue_wait: Duration,
    /// The longest a datagram waited for the clients' CPU.
    pub max_cpu_wait: Duration,
    /// Until the last transfer ended.
    pub elapsed: Duration,
    /// The longest transfer, from its request to the session's end.
    pub slowest: Duration,
    /// Events handled.
    pub steps: u64,
    /// A digest of every datagram put on the wire: when, which way, for whom, how long, and
    /// its first bytes.
    pub digest: u64,
}

impl StormReport {
    /// DATA sent more than once, as a share of the blocks.
    pub fn duplicate_share(&self) -> f64 {
        self.duplicates as f64 / self.blocks.max(1) as f64
    }
}

/// A source that is never a file: the simulation serves from memory.
pub(super) enum NoFile {}

impl FileHandle for NoFile {
    fn unchanged(&self, _: &FileId) -> bool {
        match *self {}
    }
}

/// One transfer: its client, its session once the request reached the server, and what the
/// simulation learnt of it.
struct Slot {
    start: Instant,
    peer: SocketAddr,
    client: Option<Client>,
    /// The deadline last queued for the client, so each is queued once.
    client_timer: Option<Instant>,
    session: Option<Session<NoFile>>,
    /// The instant of the session's last [`Io::Arm`], until it is handled.
    armed: Option<Instant>,
    ending: Option<Ending>,
    ended_at: Option<Instant>,
    /// Payload bytes delivered in sequence, and whether any differed from the file.
    delivered: u64,
    corrupt: bool,
    /// Times each block was sent (indexed by block), the highest sent, OACKs sent.
    sends: Vec<u16>,
    top: u64,
    oacks: u64,
    /// Losses not repaired yet: the block whose acknowledgment repairs each, when it was lost,
    /// and whether it was a loss of the handshake.
    losses: Vec<(u64, Instant, bool)>,
    stats: Option<Stats>,
}

/// A shard serving a [`Storm`]; see the [module documentation](self).
pub struct Shard {
    storm: Storm,
    now: Instant,
    start: Instant,
    file: Arc<[u8]>,
    slots: Vec<Slot>,
    /// The next slot to start (slots start in order).
    next_start: usize,
    pace: Pace,
    rng: Rng,
    down: Channel,
    up: Channel,
    cpu: Option<Cpu>,
    /// Session timers and client timers, by instant; an entry is stale unless it matches the
    /// slot's current one.
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    client_timers: BinaryHeap<Reverse<(Instant, usize)>>,
    losses: u64,
    handshake_recovery: Recovery,
    recovery: Recovery,
    first_duplicates: Vec<(Duration, usize, u64)>,
    digest: u64,
    steps: u64,
}

/// How many of the first duplicates a report lists.
const DUPLICATES_LISTED: usize = 8;

impl Shard {
    /// The shard and the clients of `storm`, before anything happened.
    pub fn new(storm: &Storm) -> Self {
        let now = Instant::now();
        let n = storm.transfers;
        let slots = (0..n)
            .map(|i| {
                let offset = match n {
                    0 | 1 => Duration::ZERO,
                    _ => storm.spread * i as u32 / (n as u32 - 1),
                };
                let [a, b] = (i as u16).to_be_bytes();
                Slot {
                    start: now + offset,
                    peer: SocketAddr::from((
                        Ipv4Addr::new(10, 0, a, b),
                        1024 + (i % 60_000) as u16,
                    )),
                    client: None,
                    client_timer: None,
                    session: None,
                    armed: None,
                    ending: None,
                    ended_at: None,
                    delivered: 0,
                    corrupt: false,
                    sends: Vec::new(),
                    top: 0,
                    oacks: 0,
                    losses: Vec::new(),
                    stats: None,
                }
            })
            .collect();
        Self {
            storm: *storm,
            now,
            start: now,
            file: pattern(storm.len).into(),
            slots,
            next_start: 0,
            pace: Pace::new(now),
            rng: Rng::new(storm.seed),
            down: Channel::new(storm.net.down, now),
            up: Channel::new(storm.net.up, now),
            cpu: storm.net.lag.map(|lag| Cpu::new(lag, now)),
            timers: BinaryHeap::new(),
            client_timers: BinaryHeap::new(),
            losses: 0,
            handshake_recovery: Recovery::default(),
            recovery: Recovery::default(),
            first_duplicates: Vec::new(),
            digest: FNV_OFFSET,
            steps: 0,
        }
    }

    /// Runs until every session has ended (or its client gave up before reaching the server)
    /// and nothing is in flight; panics past `max_steps` events or `max_time` of virtual time.
    pub fn run(&mut self, max_steps: u64, max_time: Duration) -> StormReport {
        loop {
            self.step();
            if self.over() {
                break;
            }
            self.steps += 1;
            assert!(self.steps <= max_steps, "more than {max_steps} steps");
            let next = self.next_event().expect("something is in flight or armed");
            self.now = self.now.max(next);
            assert!(
                self.now - self.start <= max_time,
                "over {max_time:?}: {} of {} sessions ended",
                self.slots.iter().filter(|s| s.ending.is_some()).count(),
                self.slots.len()
            );
        }
        self.report()
    }

    /// Everything due at `now`: the client side first, then every datagram that has reached
    /// the server, then the server's timers.
    fn step(&mut self) {
        let now = self.now;
        while self.next_start < self.slots.len() && self.slots[self.next_start].start <= now {
            self.start_client(self.next_start);
            self.next_start += 1;
        }
        while let Some((i, dgram)) = self.down.pop_due(now) {
            match &mut self.cpu {
                Some(cpu) => cpu.arrive(now, i, dgram),
                None => self.client_receives(i, &dgram),
            }
        }
        if let Some(cpu) = &mut self.cpu {
            cpu.look(now);
        }
        while let Some((i, dgram)) = self.cpu.as_mut().and_then(|cpu| cpu.pop_due(now)) {
            self.client_receives(i, &dgram);
        }
        while let Some(&Reverse((at, i))) = self.client_timers.peek() {
            if at > now {
                break;
            }
            self.client_timers.pop();
            let slot = &mut self.slots[i];
            if slot.client_timer != Some(at) {
                continue;
            }
            slot.client_timer = None;
            if let Some(client) = &mut slot.client {
                client.handle_timeout(now);
            }
            self.client_sends(i);
        }
        // The session's module doc: every datagram that has arrived goes in before a timer.
        while let Some((i, dgram)) = self.up.pop_due(now) {
            self.server_receives(i, &dgram);
        }
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let slot = &mut self.slots[i];
            if slot.armed != Some(at) {
                continue;
            }
            slot.armed = None;
            if let Some(session) = &mut slot.session {
                session.handle_timeout(now, &mut self.pace);
            }
            self.drain(i);
        }
    }

    fn next_event(&self) -> Option<Instant> {
        let start = self.slots.get(self.next_start).map(|s| s.start);
        let peek = |heap: &BinaryHeap<Reverse<(Instant, usize)>>| heap.peek().map(|r| r.0 .0);
        [
            start,
            self.down.next_arrival(),
            self.cpu.as_ref().and_then(Cpu::next_event),
            peek(&self.client_timers),
            self.up.next_arrival(),
            peek(&self.timers),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn over(&self) -> bool {
        let settled = |s: &Slot| match &s.session {
            Some(_) => s.ending.is_some(),
            None => s.client.as_ref().is_some_and(|c| c.outcome().is_some()),
        };
        self.next_start == self.slots.len()
            && self.slots.iter().all(settled)
            && self.down.is_empty()
            && self.up.is_empty()
            && self.cpu.as_ref().is_none_or(Cpu::is_empty)
    }

    fn start_client(&mut self, i: usize) {
        let storm = &self.storm;
        let mut ask = Ask {
            blksize: (storm.blksize != 512).then_some(storm.blksize),
            windowsize: (storm.windowsize != 1).then_some(storm.windowsize),
            ..Ask::default()
        };
        ask.tsize = !ask.is_empty();
        let config = client::Config {
            ask,
            timeout: Duration::from_secs(1),
            retries: 30,
            ..client::Config::default()
        };
        self.slots[i].client = Some(Client::new(config, self.now));
        self.client_sends(i);
    }

    /// The client of slot `i` gets `dgram` (from its server's transfer ID: each client has
    /// its own).
    fn client_receives(&mut self, i: usize, dgram: &[u8]) {
        let now = self.now;
        let slot = &mut self.slots[i];
        let Some(client) = &mut slot.client else {
            return;
        };
        if let Some(data) = client.handle_datagram(now, dgram) {
            let from = usize::try_from(slot.delivered).unwrap_or(usize::MAX);
            let expected = from
                .checked_add(data.len())
                .and_then(|to| self.file.get(from..to));
            slot.corrupt |= expected != Some(data);
            slot.delivered += data.len() as u64;
        }
        self.client_sends(i);
    }

    /// Sends what the client of slot `i` asks to, and queues its timer.
    fn client_sends(&mut self, i: usize) {
        let now = self.now;
        let slot = &mut self.slots[i];
        let Some(client) = &mut slot.client else {
            return;
        };
        while let Some(transmit) = client.poll_transmit() {
            let mut buf = vec![0; 512];
            let n = match transmit {
                client::Transmit::Rrq => client.config().emit_rrq("file", &mut buf),
                client::Transmit::Ack(block) => Packet::Ack { block }.emit(&mut buf),
            }
            .expect("an RRQ or ACK fits 512 bytes");
            buf.truncate(n);
            // What the datagram's loss would hold up: the block it acknowledges (the first
            // block for the request and ACK 0).
            let block = client.blocks();
            self.digest = digest(self.digest, now - self.start, 1, i, &buf);
            if self.up.send(now, i, buf, &mut self.rng) == Fate::Lost {
                self.losses += 1;
                let acked = slot.session.as_ref().map_or(0, |s| s.transfer().acked());
                if block.max(1) > acked && slot.ending.is_none() {
                    slot.losses.push((block.max(1), now, block == 0));
                }
            }
        }
        let deadline = client.poll_timeout();
        if deadline.is_some() && deadline != slot.client_timer {
            slot.client_timer = deadline;
            if let Some(at) = deadline {
                self.client_timers.push(Reverse((at, i)));
            }
        }
    }

    /// Plays the server's main port and transfer port for slot `i`.
    fn server_receives(&mut self, i: usize, dgram: &[u8]) {
        let now = self.now;
        let slot = &mut self.slots[i];
        if let Inbound::Read(request) = transfer::inbound(dgram) {
            match &mut slot.session {
                Some(session) if session.repeats(request.filename) => session.handle_repeat(now),
                Some(_) => return,
                None => {
                    let len = self.file.len() as u64;
                    let opts =
                        Negotiated::negotiate(&request.options, &self.storm.limits, || Some(len))
                            .expect("the simulated clients ask for legal options");
                    let t = Transfer::new(now, opts, len, self.storm.config);
                    slot.sends = vec![0; t.last_block() as usize + 1];
                    let meta = Meta {
                        peer: slot.peer,
                        filename: request.filename.into(),
                        mode: Mode::Octet,
                        asked: Box::from(""),
                    };
                    let mut session = Session::new(meta, t, Data::Memory(self.file.clone()));
                    session.set_gso(self.storm.gso);
                    slot.session = Some(session);
                }
            }
            self.drain(i);
            return;
        }
        // Once the session closed, its port is closed: the datagram is dropped.
        let Some(session) = slot.session.as_mut().filter(|_| slot.ending.is_none()) else {
            return;
        };
        session.handle_datagram(now, dgram, &mut self.pace);
        let acked = session.transfer().acked();
        let (handshake, recovery) = (&mut self.handshake_recovery, &mut self.recovery);
        slot.losses.retain(|&(block, at, early)| {
            if block > acked {
                return true;
            }
            match early {
                true => handshake.add(now - at),
                false => recovery.add(now - at),
            }
            false
        });
        self.drain(i);
    }

    /// Does what the session of slot `i` asks until it asks nothing more.
    fn drain(&mut self, i: usize) {
        let now = self.now;
        let slot = &mut self.slots[i];
        let Some(session) = &mut slot.session else {
            return;
        };
        while let Some(io) = session.poll_io(now, &self.pace) {
            // (A session that went on after its close would hold this loop forever.)
            assert!(
                slot.ending.is_none(),
                "{}: {io:?} after the close",
                slot.peer
            );
            match io {
                Io::Send(Datagrams { pieces, segment }) => {
                    for dgram in cut(&pieces, segment) {
                        let block = match Packet::parse(&dgram) {
                            Ok(Packet::Data { block, .. }) => {
                                // The absolute block nearest the highest sent so far.
                                let delta = block.wrapping_sub(slot.top as u16) as i16;
                                let abs = slot.top.saturating_add_signed(i64::from(delta));
                                slot.top = slot.top.max(abs);
                                let times = slot.sends.get_mut(abs as usize);
                                let times = times.expect("a block of the file");
                                *times += 1;
                                if *times > 1 && self.first_duplicates.len() < DUPLICATES_LISTED {
                                    let since = now - self.start;
                                    self.first_duplicates.push((since, i, abs));
                                }
                                Some(abs)
                            }
                            Ok(Packet::Oack(_)) => {
                                slot.oacks += 1;
                                Some(0)
                            }
                            _ => None,
                        };
                        self.digest = digest(self.digest, now - self.start, 0, i, &dgram);
                        let fate = self.down.send(now, i, dgram, &mut self.rng);
                        if fate == Fate::Lost {
                            self.losses += 1;
                            if let Some(block) = block {
                                slot.losses.push((block.max(1), now, block == 0));
                            }
                        }
                    }
                    session.handle_sent(Sent::Ok, pieces);
                }
                // Bytes in memory are never read; an executor answers as the server's do.
                Io::Read(index) => session.handle_read(now, index, Err(ReadError::Failed)),
                Io::Arm(at) => {
                    slot.armed = Some(at);
                    self.timers.push(Reverse((at, i)));
                }
                Io::Close(ending) => {
                    slot.ending = Some(ending);
                    slot.ended_at = Some(now);
                    slot.armed = None;
                    slot.losses.clear();
                    let stats = *session.transfer().stats();
                    if ending == Ending::Complete {
                        check_counts(slot.peer, slot.oacks, &slot.sends, &stats);
                    }
                    slot.stats = Some(stats);
                }
            }
        }
    }

    fn report(&self) -> StormReport {
        let mut endings: Vec<(&'static str, usize)> = Vec::new();
        let (mut complete, mut corrupt) = (0, 0);
        let (mut blocks, mut data_sent, mut duplicates, mut resent, mut spurious) = (0, 0, 0, 0, 0);
        let mut slowest = Duration::ZERO;
        for slot in &self.slots {
            let label = slot.ending.map_or("never_started", Ending::label);
            match endings.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => *n += 1,
                None => endings.push((label, 1)),
            }
            let exact = !slot.corrupt && slot.delivered == self.file.len() as u64;
            let client_done = slot
                .client
                .as_ref()
                .is_some_and(|c| c.outcome() == Some(client::Outcome::Complete));
            corrupt += usize::from(slot.corrupt);
            complete += usize::from(slot.ending == Some(Ending::Complete) && client_done && exact);
            blocks += slot.sends.len().saturating_sub(1) as u64;
            for &times in slot.sends.iter().skip(1) {
                data_sent += u64::from(times);
                duplicates += u64::from(times.saturating_sub(1));
                resent += u64::from(times > 1);
            }
            spurious += slot.stats.map_or(0, |s| s.spurious);
            if let Some(end) = slot.ended_at {
                slowest = slowest.max(end - slot.start);
            }
        }
        endings.sort_unstable();
        let ended = self.slots.iter().filter_map(|s| s.ended_at).max();
        StormReport {
            transfers: self.slots.len(),
            complete,
            endings,
            corrupt,
            blocks,
            data_sent,
            duplicates,
            resent_blocks: resent,
            spurious,
            first_duplicates: self.first_duplicates.clone(),
            losses: self.losses,
            handshake_recovery: self.handshake_recovery,
            recovery: self.recovery,
            max_queue_wait: self.down.max_wait.max(self.up.max_wait),
            max_cpu_wait: self.cpu.as_ref().map_or(Duration::ZERO, |c| c.max_wait),
            elapsed: ended.unwrap_or(self.now) - self.start,
            slowest,
            steps: self.steps,
            digest: self.digest,
        }
    }
}

/// What a completed transfer counted is what went on the wire: each DATA and OACK datagram
/// sent, every DATA block sent again as a retransmission, and OACKs sent again too unless they
/// answered a repeated request (neither a timeout nor a partial window: not counted).
fn check_counts(peer: SocketAddr, oacks: u64, sends: &[u16], stats: &Stats) {
    let (mut sent, mut repeats) = (oacks, 0);
    for &times in sends.iter().skip(1) {
        sent += u64::from(times);
        repeats += u64::from(times.saturating_sub(1));
    }
    assert_eq!(stats.sent, sent, "{peer}: datagrams sent");
    let oack_repeats = stats.retransmits.checked_sub(repeats);
    assert!(
        oack_repeats.is_some_and(|r| r < oacks.max(1)),
        "{peer}: {} retransmissions counted, {repeats} DATA and {oacks} OACKs sent",
        stats.retransmits
    );
}

/// The bytes of a piece the simulation can see: all but a chunk's, which a source in memory
/// never sends.
pub(super) fn piece_bytes(piece: &Piece) -> Option<&[u8]> {
    match piece {
        Piece::Header(h) => Some(h),
        Piece::Memory(bytes, start, len) => bytes.get(*start..start.checked_add(*len)?),
        Piece::Owned(v) => Some(v),
        Piece::Chunk(..) => None,
    }
}

/// The datagrams of one send: the pieces concatenated, cut every `segment` bytes as UDP GSO
/// cuts them, or one datagram without.
pub(super) fn cut(pieces: &[Piece], segment: Option<u16>) -> Vec<Vec<u8>> {
    let mut bytes = Vec::new();
    for piece in pieces {
        let part = piece_bytes(piece).expect("a source in memory sends no chunk");
        bytes.extend_from_slice(part);
    }
    match segment {
        Some(s) => bytes
            .chunks(usize::from(s).max(1))
            .map(<[u8]>::to_vec)
            .collect(),
        None => vec![bytes],
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over what identifies a datagram on the wire: when, which way, for whom, its length
/// and its first bytes (the header, and enough of a payload to tell blocks apart).
fn digest(mut h: u64, at: Duration, way: u8, to: usize, dgram: &[u8]) -> u64 {
    let head = &dgram[..dgram.len().min(12)];
    let fields = [
        &at.as_nanos().to_le_bytes()[..],
        &[way],
        &(to as u64).to_le_bytes(),
        &(dgram.len() as u64).to_le_bytes(),
        head,
    ];
    for byte in fields.into_iter().flatten() {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
