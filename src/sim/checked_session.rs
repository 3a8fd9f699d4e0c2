//! One server [`Session`] driven by arbitrary [`SessionEvent`]s as an executor drives it (the
//! drain order of `server::session`'s module doc: after every input, `poll_io` until `None`),
//! its invariants checked after each:
//!
//! - one send at a time: no [`Io::Send`] while one is in flight, and none after the end;
//! - every send is well formed: an OACK or an ERROR alone, or consecutive DATA blocks within
//!   `1..=last_block`, each a header and the block's bytes taken from the right place of the
//!   source (the memory, or the chunk handed in for that part of the file), several in one send
//!   only with GSO on, each then exactly `segment` bytes but the last, at most 64 of them and
//!   65 000 bytes (UDP GSO's limits); never the final block of a file that changed;
//! - a read is asked for at most once until it is answered, only within the file, never for a
//!   source in memory;
//! - [`Io::Close`] exactly once, never while a send is in flight, nothing after it; its
//!   [`Ending`] agrees with what happened (the final ACK, an ERROR, three refusals in a row, a
//!   replacement, a changed file, a failed read);
//! - a session that has not ended always waits on something: a send, a read, or a timer it
//!   armed, and that timer is never later than its transfer's deadline, or one deferral of the
//!   shard's retransmission budget from now (it cannot hang);
//! - without progress the timer fires a bounded number of times, a client that never answers
//!   draws a bounded number of datagrams, and what left is never more than the transfer counted;
//! - once the session is dropped every chunk it held is given back to the budget.
//!
//! Time only moves forward. A broken invariant panics with what broke.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::pattern_at;
use crate::options::Negotiated;
use crate::packet::{self, ErrorCode, Mode, Packet, DATA_HEADER_LEN};
use crate::resolve::{FileId, Layout};
use crate::server::sans_io::{
    Budget, Chunk, ChunkMemory, Data, Datagrams, Ending, FileHandle, Io, Meta, Pace, Piece,
    ReadError, Sent, Session, CHUNK,
};
use crate::transfer::{Config, Outcome, Transfer};

/// What happens next to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent<'a> {
    /// Any bytes from the client's transfer ID.
    Datagram(&'a [u8]),
    /// An ACK for a block near the acknowledged one.
    AckNearAcked(i8),
    /// An ACK for a block near the highest one sent.
    AckNearSent(i8),
    /// An ACK for any wire block number.
    Ack(u16),
    /// An ERROR from the client with this code.
    Error(u16),
    /// The armed timer fires (time moves to it if it is ahead).
    Timeout,
    /// A wake-up before the armed instant: `handle_timeout` at the current time.
    EarlyTimeout,
    /// Time passes (microseconds).
    Advance(u32),
    /// The client repeats its request (handed in only when the session says it is one).
    Repeat,
    /// A receive reports the client's port closed (ICMP port unreachable).
    Refused,
    /// A new request from the client's port ends the transfer (single-port mode).
    Replace,
    /// The send in flight completes: `Ok`, `Refused`, `Rejected` or `Failed` (this value
    /// modulo 4).
    Sent(u8),
    /// An outstanding read completes (the `pick`-th, modulo their number), with its chunk or
    /// with a read error.
    Read {
        /// Which.
        pick: u8,
        /// Whether it succeeded.
        ok: bool,
    },
    /// The file changes on disk (a source in memory does not).
    Change,
    /// The executor completes one thing: the send in flight (`Ok`), else the oldest read.
    Next,
    /// The executor completes every send (`Ok`) and read (with its chunk) until the session
    /// waits on the client or a timer.
    Settle,
    /// A well-behaved client and executor for up to this many round trips: settle, then
    /// acknowledge the highest block sent a little later.
    Run(u16),
}

/// Where the session's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Bytes in memory (files up to [`MEMORY_MAX`]; larger ones are served as a file).
    Memory,
    /// An open file, read in chunks, which the events may change.
    File,
}

/// The largest source [`Store::Memory`] holds.
pub const MEMORY_MAX: u64 = 1 << 20;

/// What [`SessionEvent::Run`] may spend, in round trips plus sends: [`super::RUN_BUDGET`], as
/// for a transfer, which is enough for a window of 64 small blocks (one GSO send) to cross the
/// block-number rollover.
const RUN_BUDGET: u64 = super::RUN_BUDGET;

/// DATA blocks a session may hand out to send, in all: past them the events are no longer fed
/// (the checks still run). The session does per block what a transfer does per window, and a
/// window may be thousands of small blocks sent one by one: this bounds what one input costs a
/// fuzzer (a few milliseconds), while a run still crosses many chunks of a file. (The rollover
/// past block 65535 is the transfer's, which [`super::Checked`] takes past it.)
const BLOCK_BUDGET: u64 = 1 << 14;

/// The silent client's turns [`CheckedSession::finish`] waits through before it calls the
/// session hung: every timeout of both phases, with room to spare.
const FINISH_TURNS: u32 = 1000;

/// A file whose changes the events decide.
#[derive(Debug, Default)]
struct SimFile {
    changed: Cell<bool>,
}

impl FileHandle for SimFile {
    fn unchanged(&self, _: &FileId) -> bool {
        !self.changed.get()
    }
}

/// An executor that checks everything its session asks; see the [module doc](self).
pub struct CheckedSession {
    s: Session<SimFile>,
    pace: Pace,
    now: Instant,
    opts: Negotiated,
    config: Config,
    len: u64,
    /// The bytes, for a source in memory.
    memory: Option<Arc<[u8]>>,
    file: Rc<SimFile>,
    budget: Arc<Budget>,
    /// Whether the socket cuts sends (until a send is rejected).
    gso: bool,
    /// The send handed out and not completed: its pieces, and whether it held several blocks.
    in_flight: Option<(Vec<Piece>, bool, u64)>,
    /// Reads asked for and not answered, in the order asked.
    reads: Vec<u64>,
    /// The chunk last handed in for each index, to recognise a piece's source.
    given: HashMap<u64, Rc<Chunk>>,
    armed: Option<Instant>,
    closed: Option<Ending>,
    /// The highest DATA block sent.
    top: u64,
    /// Sends and DATA blocks handed out, datagrams (OACK and DATA) that left, ERRORs handed
    /// out.
    sends: u64,
    blocks: u64,
    datagrams: u64,
    errors: u64,
    /// Whether the client ever answered, for the silent client's bound.
    answered: bool,
    /// Timer fires since the client last made progress, and the acknowledged block then.
    fires: u32,
    acked: u64,
    /// Refusals since the last datagram handed in, and whether they ever reached the three
    /// that end the session (the ending is decided then, even if `Close` waits for a send).
    refused: u32,
    unreachable: bool,
    replaced: bool,
    read_failed: bool,
    /// DATA blocks handed out although already acknowledged (see [`Self::stale_blocks`]).
    stale: u64,
    budget_run: u64,
}

impl CheckedSession {
    /// A session for a transfer of `len` bytes with `opts` and `config` from `store`, on a
    /// socket that takes GSO if `gso`, started at `now` and drained once.
    pub fn new(
        now: Instant,
        opts: Negotiated,
        len: u64,
        config: Config,
        store: Store,
        gso: bool,
    ) -> Self {
        let budget = Budget::new(usize::MAX);
        let file = Rc::new(SimFile::default());
        let memory = match store {
            Store::Memory if len <= MEMORY_MAX => Some(memory()),
            _ => None,
        };
        let data = match &memory {
            Some(bytes) => Data::Memory(bytes.clone()),
            None => Data::File(file.clone(), FILE_ID, Layout::Whole),
        };
        let meta = Meta {
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 4069)),
            filename: Box::from("file"),
            mode: Mode::Octet,
            asked: Box::from(""),
        };
        let mut s = Session::new(meta, Transfer::new(now, opts, len, config), data);
        s.set_gso(gso);
        let mut c = Self {
            s,
            pace: Pace::new(now),
            now,
            opts,
            config,
            len,
            memory,
            file,
            budget,
            gso: gso && opts.window_max().get() > 1,
            in_flight: None,
            reads: Vec::new(),
            given: HashMap::new(),
            armed: None,
            closed: None,
            top: 0,
            sends: 0,
            blocks: 0,
            datagrams: 0,
            errors: 0,
            answered: false,
            fires: 0,
            acked: 0,
            refused: 0,
            unreachable: false,
            replaced: false,
            read_failed: false,
            stale: 0,
            budget_run: RUN_BUDGET,
        };
        c.drain();
        c.check();
        c
    }

    /// The transfer inside the session.
    pub fn transfer(&self) -> &Transfer {
        self.s.transfer()
    }

    /// DATA blocks handed out to send although the client had acknowledged them already: the
    /// rest of a run cut for GSO, kept while an ACK moved the window past it, goes out anyway.
    /// Harmless (the client drops them), but not sent by the transfer's own rule that a new
    /// window supersedes what is not sent yet.
    pub fn stale_blocks(&self) -> u64 {
        self.stale
    }

    /// Feeds `event`, drains the session, then checks every invariant; once the session has
    /// sent its [`BLOCK_BUDGET`], only checks.
    pub fn apply(&mut self, event: SessionEvent<'_>) {
        if self.blocks > BLOCK_BUDGET {
            self.check();
            return;
        }
        match event {
            SessionEvent::Datagram(bytes) => {
                self.answered |= matches!(
                    Packet::parse(bytes),
                    Ok(Packet::Ack { .. } | Packet::Error { .. })
                );
                self.datagram(bytes);
            }
            SessionEvent::AckNearAcked(delta) => {
                let block = self
                    .transfer()
                    .acked()
                    .wrapping_add_signed(i64::from(delta));
                self.ack(block);
            }
            SessionEvent::AckNearSent(delta) => {
                self.ack(self.top.wrapping_add_signed(i64::from(delta)));
            }
            SessionEvent::Ack(block) => self.ack(u64::from(block)),
            SessionEvent::Error(code) => {
                self.answered = true;
                let mut buf = [0; 64];
                let n = packet::emit_error(ErrorCode::from_u16(code), "fuzz", &mut buf)
                    .expect("an ERROR fits 64 bytes");
                self.datagram(&buf[..n]);
            }
            SessionEvent::Timeout => self.fire(),
            SessionEvent::EarlyTimeout => {
                // The session forgets the instant it armed and arms again when polled.
                self.armed = None;
                self.timeout();
            }
            SessionEvent::Advance(us) => self.now += Duration::from_micros(u64::from(us)),
            SessionEvent::Repeat => {
                if self.s.repeats("file") {
                    self.answered = true;
                    self.s.handle_repeat(self.now);
                }
            }
            SessionEvent::Refused => self.refuse(),
            SessionEvent::Replace => {
                self.replaced = true;
                self.s.close(Ending::Replaced);
            }
            SessionEvent::Sent(kind) => {
                let sent = match kind % 4 {
                    0 => Sent::Ok,
                    1 => Sent::Refused,
                    2 => Sent::Rejected,
                    _ => Sent::Failed,
                };
                self.complete_send(sent);
            }
            SessionEvent::Read { pick, ok } => self.read(usize::from(pick), ok),
            // Bytes in memory never change.
            SessionEvent::Change => self.file.changed.set(self.memory.is_none()),
            SessionEvent::Next => match self.in_flight {
                Some(_) => self.complete_send(Sent::Ok),
                None => self.read(0, true),
            },
            SessionEvent::Settle => self.settle(),
            SessionEvent::Run(rounds) => self.run(rounds),
        }
        self.drain();
        self.check();
    }

    /// The end of the story: the executor completes what is in flight and the client falls
    /// silent; the session must end within its retries, and once dropped give every chunk
    /// back.
    pub fn finish(mut self) {
        for _ in 0..FINISH_TURNS {
            self.settle();
            if self.closed.is_some() {
                break;
            }
            self.fire();
            self.drain();
            self.check();
        }
        assert!(
            self.closed.is_some(),
            "a silent client never ends the session"
        );
        let budget = self.budget.clone();
        drop(self);
        assert_eq!(budget.used(), 0, "chunks outlived their session");
    }

    /// Checks every invariant that holds between events.
    pub fn check(&mut self) {
        let t = self.s.transfer();
        let stats = t.stats();
        // (The client may acknowledge blocks not handed out yet: the transfer took them for
        // sent when the run was cut for GSO.)
        assert!(t.acked() <= t.last_block());
        assert!(self.errors <= 1, "{} ERRORs", self.errors);
        // What left is what the transfer counted, less what an ending dropped.
        assert!(
            self.datagrams <= stats.sent,
            "{} datagrams left, {} counted",
            self.datagrams,
            stats.sent
        );
        if self.closed.is_none() {
            // Not over: it waits on a send, a read or its timer; never on nothing.
            let waits = self.in_flight.is_some() || !self.reads.is_empty();
            if !waits {
                assert_eq!(t.outcome(), None, "over and not closed");
                let armed = self.armed.expect("a live session without a timer");
                if let Some(deadline) = t.poll_timeout() {
                    // A timeout the shard's budget put off waits one deferral from when it
                    // came, and no more.
                    let bound = deadline.max(self.now + Pace::deferral());
                    assert!(armed <= bound, "armed {armed:?} past {deadline:?}");
                }
            }
        }
        // Without progress the timer fires at most `retries + 1` times per phase (the OACK,
        // then the data), the last one ending the transfer.
        assert!(
            self.fires <= 2 * (self.config.retries + 1),
            "{} timeouts without progress and still going",
            self.fires
        );
        if !self.answered {
            let tries = u64::from(self.config.retries.min(self.config.retries_unanswered));
            let window = u64::from(self.opts.window_max().get());
            assert!(
                self.datagrams <= (1 + tries) * window,
                "{} datagrams drawn by a silent client",
                self.datagrams
            );
        }
    }

    /// Does what the session asks until it asks nothing more.
    fn drain(&mut self) {
        while let Some(io) = self.s.poll_io(self.now, &self.pace) {
            assert_eq!(self.closed, None, "{io:?} after the close");
            match io {
                Io::Send(datagrams) => self.send(datagrams),
                Io::Read(index) => {
                    assert!(self.memory.is_none(), "read {index} of bytes in memory");
                    assert!(
                        index.saturating_mul(CHUNK as u64) < self.len,
                        "read {index} past the end of {} bytes",
                        self.len
                    );
                    assert!(!self.reads.contains(&index), "read {index} asked twice");
                    self.reads.push(index);
                }
                Io::Arm(at) => self.armed = Some(at),
                Io::Close(ending) => self.close(ending),
            }
        }
        if self.acked != self.transfer().acked() {
            self.acked = self.transfer().acked();
            self.fires = 0;
        }
    }

    fn send(&mut self, Datagrams { pieces, segment }: Datagrams) {
        assert!(self.in_flight.is_none(), "a send while one is in flight");
        self.sends += 1;
        let t = self.s.transfer();
        let blksize = usize::from(self.opts.blksize().get());
        let mut datagrams: Vec<(usize, Option<u64>)> = Vec::new();
        let mut i = 0;
        while i < pieces.len() {
            match &pieces[i] {
                Piece::Owned(bytes) => {
                    assert_eq!(pieces.len(), 1, "an OACK or ERROR shares a send");
                    assert_eq!(segment, None);
                    match Packet::parse(bytes) {
                        Ok(Packet::Oack(_)) => {
                            assert!(self.opts.has_oack(), "OACK without accepted options");
                            assert_eq!(self.top, 0, "OACK after DATA");
                            datagrams.push((bytes.len(), None));
                        }
                        Ok(Packet::Error { .. }) => self.errors += 1,
                        other => panic!("sent {other:?} alone"),
                    }
                    i += 1;
                }
                Piece::Header(header) => {
                    let Ok(Packet::Data { block, .. }) = Packet::parse(header) else {
                        panic!("a header that is no DATA header: {header:?}");
                    };
                    // The absolute block nearest the highest sent so far.
                    let delta = block.wrapping_sub(self.top as u16) as i16;
                    let abs = self.top.saturating_add_signed(i64::from(delta));
                    assert!(
                        (1..=t.last_block()).contains(&abs),
                        "block {abs} of {}",
                        t.last_block()
                    );
                    if let Some((_, Some(before))) = datagrams.last() {
                        assert_eq!(abs, before + 1, "a send of blocks not consecutive");
                    }
                    if abs == t.last_block() {
                        assert!(
                            !self.file.changed.get(),
                            "the final block of a changed file"
                        );
                    }
                    if abs <= t.acked() {
                        self.stale += 1;
                    }
                    self.blocks += 1;
                    self.top = self.top.max(abs);
                    i += 1;
                    let want = t.block_len(abs);
                    let mut at = t.offset(abs);
                    let mut got = 0;
                    while let Some(piece) = pieces
                        .get(i)
                        .filter(|p| matches!(p, Piece::Memory(..) | Piece::Chunk(..)))
                    {
                        self.check_payload(piece, at);
                        at += piece.len() as u64;
                        got += piece.len();
                        i += 1;
                    }
                    assert_eq!(got, want, "block {abs}: {got} bytes for {want}");
                    assert!(want <= blksize);
                    datagrams.push((DATA_HEADER_LEN + got, Some(abs)));
                }
                piece => panic!("a payload without a header: {piece:?}"),
            }
        }
        let n = datagrams.len();
        assert!(n >= 1 || self.errors > 0, "an empty send");
        assert_eq!(
            segment.is_some(),
            n > 1,
            "{n} datagrams, segment {segment:?}"
        );
        if let Some(segment) = segment {
            assert!(self.gso, "several blocks in one send without GSO");
            assert_eq!(usize::from(segment), DATA_HEADER_LEN + blksize);
            assert!(n <= 64, "{n} GSO segments");
            let bytes: usize = datagrams.iter().map(|(len, _)| len).sum();
            assert!(bytes <= 65_000, "{bytes} bytes in one GSO send");
            for (len, _) in &datagrams[..n - 1] {
                assert_eq!(
                    *len,
                    usize::from(segment),
                    "a short segment before the last"
                );
            }
        }
        self.in_flight = Some((pieces, n > 1, n as u64));
    }

    /// Checks that `piece` holds the file's bytes from offset `at`.
    fn check_payload(&self, piece: &Piece, at: u64) {
        match piece {
            Piece::Memory(bytes, start, _) => {
                let memory = self.memory.as_ref().expect("memory pieces of a file");
                assert!(Arc::ptr_eq(bytes, memory), "bytes of another source");
                assert_eq!(*start as u64, at, "bytes from the wrong place");
            }
            Piece::Chunk(chunk, start, len) => {
                let index = at / CHUNK as u64;
                let held = self.given.get(&index).expect("a chunk never handed in");
                assert!(Rc::ptr_eq(chunk, held), "another chunk than {index}'s");
                assert_eq!(
                    index * CHUNK as u64 + *start as u64,
                    at,
                    "bytes from the wrong place"
                );
                assert!(start + len <= CHUNK, "a piece past its chunk");
            }
            _ => unreachable!("only payload pieces are checked"),
        }
    }

    fn complete_send(&mut self, sent: Sent) {
        let Some((pieces, several, n)) = self.in_flight.take() else {
            return;
        };
        match sent {
            // Refused: the datagrams left, the ICMP came back.
            Sent::Ok | Sent::Failed | Sent::Refused => self.datagrams += n,
            // Never left; the session sends the run again, one block at a time.
            Sent::Rejected if several => self.gso = false,
            Sent::Rejected => {}
        }
        self.s.handle_sent(sent, pieces);
        if sent == Sent::Refused {
            self.count_refusal();
        }
    }

    fn read(&mut self, pick: usize, ok: bool) {
        if self.reads.is_empty() {
            return;
        }
        let index = self.reads.remove(pick % self.reads.len());
        let chunk = match ok {
            true => {
                let start = index * CHUNK as u64;
                let len = self.len.saturating_sub(start).min(CHUNK as u64) as usize;
                let lease = self.budget.lease(len);
                let chunk = Rc::new(Chunk::new(Zeros, len, lease));
                self.given.insert(index, chunk.clone());
                Ok(chunk)
            }
            false => {
                self.read_failed = true;
                Err(ReadError::Failed)
            }
        };
        self.s.handle_read(self.now, index, chunk);
    }

    fn datagram(&mut self, bytes: &[u8]) {
        if self.closed.is_none() {
            self.refused = 0;
        }
        self.s.handle_datagram(self.now, bytes, &mut self.pace);
    }

    fn ack(&mut self, block: u64) {
        self.answered = true;
        let mut buf = [0; 4];
        let n = Packet::Ack {
            block: Transfer::wire_block(block),
        }
        .emit(&mut buf)
        .expect("an ACK is 4 bytes");
        self.datagram(&buf[..n]);
    }

    fn refuse(&mut self) {
        self.s.handle_refused();
        self.count_refusal();
    }

    fn count_refusal(&mut self) {
        self.refused += 1;
        // The session's REFUSED_MAX.
        self.unreachable |= self.refused >= 3;
    }

    /// The armed timer fires: time moves to it.
    fn fire(&mut self) {
        let Some(at) = self.armed.take() else {
            return;
        };
        self.now = self.now.max(at);
        self.timeout();
    }

    /// `handle_timeout` now, counting a fire the transfer acted on: one that ended it or moved
    /// its deadline. A timeout the shard's retransmission budget put off is not one.
    fn timeout(&mut self) {
        let before = self.s.transfer().poll_timeout();
        self.s.handle_timeout(self.now, &mut self.pace);
        let t = self.s.transfer();
        if before.is_some_and(|d| d <= self.now) && t.poll_timeout() != before {
            self.fires += 1;
        }
    }

    fn close(&mut self, ending: Ending) {
        assert!(self.in_flight.is_none(), "closed with a send in flight");
        let t = self.s.transfer();
        match ending {
            Ending::Complete => {
                assert_eq!(t.outcome(), Some(Outcome::Complete));
                assert_eq!(t.acked(), t.last_block(), "complete before the final ACK");
            }
            Ending::Unreachable => assert!(self.unreachable, "unreachable after {}", self.refused),
            Ending::Replaced => assert!(self.replaced),
            Ending::FileChanged => assert!(self.file.changed.get(), "the file did not change"),
            Ending::ReadFailed => assert!(self.read_failed, "no read failed"),
            Ending::Probe | Ending::Cancelled(_) | Ending::TimedOut | Ending::Protocol(_) => {
                assert!(t.outcome().is_some(), "{ending:?} while the transfer runs");
            }
            Ending::Internal | Ending::NotStarted => panic!("{ending:?}"),
        }
        self.closed = Some(ending);
        self.armed = None;
    }

    /// The executor completes every send and read until the session waits on the client.
    fn settle(&mut self) {
        loop {
            if self.in_flight.is_some() {
                self.complete_send(Sent::Ok);
            } else if !self.reads.is_empty() {
                self.read(0, true);
            } else {
                break;
            }
            self.drain();
        }
    }

    fn run(&mut self, rounds: u16) {
        self.answered = true;
        for _ in 0..rounds {
            if self.budget_run == 0 || self.closed.is_some() {
                break;
            }
            let before = self.sends;
            self.settle();
            // Each send costs as much as a round trip: a window without GSO is a send per
            // block.
            self.budget_run = self.budget_run.saturating_sub(1 + (self.sends - before));
            if self.closed.is_some() {
                break;
            }
            self.now += Duration::from_micros(300);
            // ACK 0 answers the OACK; afterwards the highest block sent.
            self.ack(self.top);
            self.drain();
            self.check();
        }
    }
}

/// The memory of every chunk the checker hands in: a piece is checked by where it points, never
/// by its bytes, so no chunk needs bytes of its own (a fuzzer would spend its time zeroing
/// them).
struct Zeros;

static ZEROS: [u8; CHUNK] = [0; CHUNK];

// SAFETY: a static never moves or changes, and holds CHUNK initialised bytes, as many as any
// chunk is made of.
unsafe impl ChunkMemory for Zeros {
    fn as_ptr(&self) -> *const u8 {
        ZEROS.as_ptr()
    }

    fn len(&self) -> usize {
        CHUNK
    }
}

/// [`MEMORY_MAX`] bytes of [`pattern_at`], made once: a source in memory is a prefix of them
/// (the session reads no further than its transfer's length).
fn memory() -> Arc<[u8]> {
    static MEMORY: OnceLock<Arc<[u8]>> = OnceLock::new();
    MEMORY
        .get_or_init(|| pattern_at(0, MEMORY_MAX as usize).into())
        .clone()
}

/// The identity of the simulated file: any will do, it is never looked up.
const FILE_ID: FileId = FileId {
    dev: 0,
    ino: 0,
    mtime_sec: 0,
    mtime_nsec: 0,
    size: 0,
    ctime_sec: 0,
    ctime_nsec: 0,
    within: None,
};
