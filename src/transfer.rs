//! The read transfer: a sans-IO state machine for one RRQ, from the OACK to the final ACK.
//!
//! It implements the sender side of RFC 1350 §2 (lock-step DATA/ACK), RFC 2347 (OACK, answered
//! by ACK 0), RFC 2348/2349 (block size, timeout) and RFC 7440 (windows), with the corrections
//! that RFC 1123 §4.2.3.1 demands: a duplicate ACK never causes a retransmission (the Sorcerer's
//! Apprentice bug) and the retransmission timeout adapts to the measured round-trip time
//! (RFC 1123 §4.2.3.2, computed as in RFC 6298 with Karn's rule). A timeout that the client's
//! next ACK proves spurious is undone, in the spirit of RFC 3522 (Eifel detection) and RFC 4015
//! (Eifel response): a server too busy to read an ACK before its timer fires learns the real
//! round trip from it instead of backing off and resending every block twice.
//!
//! # Driving a transfer
//!
//! A driver owns the socket connected to the client, the file and the buffers; the transfer owns
//! every decision. Time only enters as the `now` arguments, which must never decrease. After the
//! transfer is created, and again after anything happens, the driver:
//!
//! 1. feeds what happened: each datagram from the client to [`Transfer::handle_datagram`], an
//!    expired timer to [`Transfer::handle_timeout`], a local failure (a short read) to
//!    [`Transfer::abort`];
//! 2. sends what [`Transfer::poll_transmit`] returns until it returns `None`: the OACK
//!    ([`Transfer::emit_oack`]), a run of blocks (each a header — [`emit_data_header`], or
//!    any copy of those four bytes — and the payload at [`Transfer::offset`] for
//!    [`Transfer::block_len`] bytes), or an ERROR; a driver that submits its sends in batches,
//!    after `poll_transmit`, then reports when they left with [`Transfer::handle_sent`];
//! 3. stops if [`Transfer::outcome`] is `Some`, otherwise sleeps until [`Transfer::poll_timeout`]
//!    or the next datagram, whichever comes first.
//!
//! Blocks are numbered absolutely from 1 (`u64`); the wire number is the low 16 bits, so block
//! numbers roll over from 65535 to 0 and files of any size transfer, as tftp-hpa, atftpd and
//! dnsmasq do.
//!
//! [`emit_data_header`]: crate::packet::emit_data_header

use std::time::{Duration, Instant};

use crate::options::Negotiated;
use crate::packet::{BufferTooSmall, ErrorCode, Packet, Request};

/// Retransmission settings, shared by all transfers of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Retransmissions of the same packet without progress before the transfer is abandoned.
    pub retries: u32,
    /// Retransmissions while the client has not answered at all. An RRQ with a forged source
    /// address (to turn the server on a victim) then draws at most `1 + retries_unanswered`
    /// first packets; a real client whose first reply was lost repeats its request, which
    /// [`Transfer::handle_repeat`] answers at once (at most `retries` times, so forged repeats
    /// draw one reply each, as many fresh requests would, and cannot keep a transfer alive).
    pub retries_unanswered: u32,
    /// The retransmission timeout before the first round-trip sample (RFC 6298 §2.1).
    pub rto_initial: Duration,
    /// The floor of the adaptive timeout.
    pub rto_min: Duration,
    /// The ceiling of the adaptive timeout, backoff included.
    pub rto_max: Duration,
    /// The least silence after which a transfer may be abandoned, however short its timeout:
    /// the last wait is stretched to reach it, so a fast link does not give up on a client that
    /// pauses for a moment.
    pub patience: Duration,
}

impl Default for Config {
    /// Retry 5 times; start at 1 s (RFC 6298), adapt between 20 ms and 4 s; be patient 12 s.
    ///
    /// The 20 ms floor is about a hundred LAN round trips, so a loss costs milliseconds where a
    /// fixed one-second timer costs a second, yet a queueing delay does not cause a spurious
    /// retransmission storm. Five retries with backoff reach the 4 s ceiling, past the 1–4 s
    /// that boot firmware waits before re-sending an ACK.
    fn default() -> Self {
        Self {
            retries: 5,
            retries_unanswered: 1,
            rto_initial: Duration::from_secs(1),
            rto_min: Duration::from_millis(20),
            rto_max: Duration::from_secs(4),
            // Longer than the 5 s that atftp and tftp-hpa wait before repeating an ACK, twice:
            // a client that ignores a repeated block (atftp answers a duplicate only once) is
            // not abandoned just before it speaks again.
            patience: Duration::from_secs(12),
        }
    }
}

/// What the driver must send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Transmit {
    /// The OACK: write it with [`Transfer::emit_oack`].
    Oack,
    /// Consecutive DATA blocks, sent back to back (one GSO send where the driver can).
    Blocks(Blocks),
    /// An ERROR that ends the transfer.
    Error {
        /// The error code.
        code: ErrorCode,
        /// The message.
        message: &'static str,
    },
}

/// A run of consecutive blocks to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    /// The absolute number of the first block (from 1).
    pub first: u64,
    /// How many blocks, at least 1.
    pub count: u16,
    /// Whether this is a retransmission after a timeout.
    pub retransmit: bool,
}

impl Blocks {
    /// The absolute block numbers of the run.
    pub fn iter(&self) -> std::ops::Range<u64> {
        self.first..self.first + u64::from(self.count)
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The final block was acknowledged.
    Complete,
    /// The client ended it with an ERROR (UEFI firmware does so after a `tsize` probe).
    Cancelled(ErrorCode),
    /// The client went silent for all retries.
    TimedOut,
    /// The server ended it with an ERROR: the client broke the protocol, or the driver aborted.
    Failed(ErrorCode),
}

/// Counters for the transfer's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Payload bytes the client acknowledged.
    pub bytes: u64,
    /// Blocks the client acknowledged.
    pub blocks: u64,
    /// Datagrams sent (OACK and DATA, retransmissions included).
    pub sent: u64,
    /// Datagrams sent again after a timeout or a partial window acknowledgment.
    pub retransmits: u64,
    /// Timeouts proven spurious and undone: the ACK that ended them came back sooner after the
    /// retransmission than the client could have answered it, so it answered the earlier copy
    /// (RFC 3522). Each also drew a duplicate of the blocks resent, and usually a duplicate ACK.
    /// Many of them mean the server reads its ACKs late (it is saturated), not that the network
    /// loses packets.
    pub spurious: u64,
    /// When the transfer started.
    pub started: Instant,
    /// When it ended, once it has.
    pub ended: Option<Instant>,
}

impl Stats {
    /// The transfer's duration up to its end, or up to `now` while it runs.
    pub fn duration(&self, now: Instant) -> Duration {
        self.ended
            .unwrap_or(now)
            .saturating_duration_since(self.started)
    }
}

/// What the main port does with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A read request: resolve the file and start a transfer.
    Read(Request<'a>),
    /// Answer with this ERROR and start nothing.
    Reject {
        /// The error code.
        code: ErrorCode,
        /// The message.
        message: &'static str,
    },
    /// Drop it silently.
    Ignore,
}

/// Decides what the main port does with `datagram` (RFC 1350 §4: only requests start transfers).
///
/// A WRQ is refused, since nothing is ever written. DATA, ACK and OACK belong on a transfer's
/// own port and get ERROR 4. An ERROR is ignored (nobodd: it can only end a transfer that never
/// started), and so is a datagram shorter than 4 bytes, which no client sends; anything
/// else malformed gets the ERROR its [`ParseError`](crate::packet::ParseError) names.
pub fn inbound(datagram: &[u8]) -> Inbound<'_> {
    // Too short to be any TFTP packet (the smallest, an ACK, has 4 bytes): not worth an ERROR
    // that would be ten times its size to whatever address it claims to come from.
    if datagram.len() < MIN_ANSWERED {
        return Inbound::Ignore;
    }
    match Packet::parse(datagram) {
        Ok(Packet::Rrq(req)) => Inbound::Read(req),
        Ok(Packet::Wrq(_)) => Inbound::Reject {
            code: ErrorCode::AccessViolation,
            message: "Write requests are refused: this server is read-only",
        },
        Ok(Packet::Data { .. } | Packet::Ack { .. } | Packet::Oack(_)) => Inbound::Reject {
            code: ErrorCode::IllegalOperation,
            message: "Illegal TFTP operation: no transfer on this port",
        },
        // RFC 1350 §7: an ERROR is never acknowledged or answered.
        Ok(Packet::Error { .. }) => Inbound::Ignore,
        Err(e) => Inbound::Reject {
            code: e.code(),
            message: e.message(),
        },
    }
}

/// Datagrams shorter than this get no answer on the main port (see [`inbound`]).
const MIN_ANSWERED: usize = 4;

/// The state of one read transfer; see the [module documentation](self) for how to drive it.
#[derive(Debug, Clone)]
pub struct Transfer {
    opts: Negotiated,
    config: Config,
    /// Bytes to send: the file's size, or its encoded size in netascii.
    len: u64,
    /// The absolute number of the final block, the first shorter than `blksize`.
    last: u64,
    /// The OACK is outstanding until ACK 0 arrives.
    oack: bool,
    /// The highest block acknowledged (0: none, or only the OACK).
    acked: u64,
    /// The highest block sent so far.
    sent: u64,
    /// What `poll_transmit` returns next.
    pending: Option<Transmit>,
    /// A second run to send after `pending` (the last block of a probe).
    then: Option<Transmit>,
    /// When to retransmit; `None` once finished.
    deadline: Option<Instant>,
    /// Timeouts since the last progress.
    tries: u32,
    /// Repeated requests answered. A client repeats its request at most as often as it retries;
    /// more is a forger keeping the transfer (and its replies) alive, and goes unanswered.
    repeats: u32,
    /// Whether anything came back from the client yet (proof that its address is real).
    answered: bool,
    /// The exponent of the RTO backoff: raised by each timeout, kept across progress until a
    /// round-trip sample is taken (RFC 6298 §5.5–5.7, Karn's algorithm), so a client that slowed
    /// down past the RTO is eventually measured instead of being sent every block several times.
    backoff: u32,
    /// When the client last made progress (or the transfer started).
    progress_at: Instant,
    rtt: RttEstimator,
    /// When the last run was sent, and the first block of it sent for the first time (0: a first
    /// OACK, `u64::MAX`: none). Only an ACK for such a block is a round-trip sample (Karn's rule:
    /// an ACK for a retransmitted packet is ambiguous).
    flight_at: Instant,
    fresh_from: u64,
    /// When the last run was sent, and the wait the timer was armed with then: what
    /// [`handle_sent`](Self::handle_sent) re-arms from when the run really left later.
    sent_at: Instant,
    wait: Duration,
    /// What the first timeout since the last progress gave up on, kept until the next progress
    /// so that an ACK proving it spurious can undo it.
    undo: Option<Undo>,
    stats: Stats,
    outcome: Option<Outcome>,
}

impl Transfer {
    /// Starts a transfer of `len` bytes with the options `opts` at `now`.
    ///
    /// The first [`poll_transmit`](Self::poll_transmit) yields the OACK when `opts` accepted any
    /// option, otherwise DATA 1.
    pub fn new(now: Instant, opts: Negotiated, len: u64, config: Config) -> Self {
        let blksize = u64::from(opts.blksize.max(1));
        let oack = opts.has_oack();
        let mut t = Self {
            opts,
            config,
            len,
            // An exact multiple of blksize (and an empty file) ends with a short, empty block.
            last: len / blksize + 1,
            oack,
            acked: 0,
            sent: 0,
            pending: None,
            then: None,
            deadline: None,
            tries: 0,
            repeats: 0,
            answered: false,
            backoff: 0,
            progress_at: now,
            rtt: RttEstimator::new(config.rto_initial),
            flight_at: now,
            fresh_from: u64::MAX,
            sent_at: now,
            wait: Duration::ZERO,
            undo: None,
            stats: Stats {
                bytes: 0,
                blocks: 0,
                sent: 0,
                retransmits: 0,
                spurious: 0,
                started: now,
                ended: None,
            },
            outcome: None,
        };
        t.pending = Some(if oack {
            Transmit::Oack
        } else {
            t.window(false)
        });
        t
    }

    /// Handles a datagram from the client's transfer ID.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) {
        if self.outcome.is_some() {
            // Once ended, nothing is answered and the outcome stands.
            return;
        }
        match Packet::parse(datagram) {
            Ok(Packet::Ack { block }) => self.handle_ack(now, block),
            Ok(Packet::Error { code, .. }) => self.handle_error(now, code),
            // A reader has no business sending anything else on a read transfer.
            Ok(_) => self.fail(
                now,
                ErrorCode::IllegalOperation,
                "Illegal TFTP operation: only ACK and ERROR are expected",
            ),
            // A corrupted or truncated datagram may be followed by a good one: wait for it.
            Err(_) => {}
        }
    }

    /// Handles an ACK for wire block number `block`.
    pub fn handle_ack(&mut self, now: Instant, block: u16) {
        if self.outcome.is_some() {
            return;
        }
        self.answered = true;
        if self.oack {
            // Only ACK 0 answers an OACK; anything else is a stray from another life.
            if block == 0 {
                self.oack = false;
                self.progress(now, 0);
                self.queue(self.window(false));
            }
            return;
        }
        let in_flight = self.sent - self.acked;
        let ahead = u64::from(block.wrapping_sub(wire(self.acked + 1)));
        if ahead < in_flight {
            let block = self.acked + 1 + ahead;
            let newly = block - self.acked;
            self.stats.blocks += newly;
            self.stats.bytes += (self.acked + 1..=block)
                .map(|b| self.block_len(b) as u64)
                .sum::<u64>();
            self.acked = block;
            self.progress(now, block);
            if self.acked == self.last {
                self.finish(now, Outcome::Complete);
            } else {
                // RFC 7440 §4: the next window starts after the acknowledged block, even when
                // that resends blocks of the last window the client did not get.
                self.queue(self.window(false));
            }
            return;
        }
        // Duplicates (RFC 1123 §4.2.3.1) and stale ACKs from before a rollover are ignored;
        // half the sequence space behind the window counts as the past.
        let behind = wire(self.acked).wrapping_sub(block);
        if behind < 0x8000 {
            return;
        }
        self.fail(
            now,
            ErrorCode::IllegalOperation,
            "Invalid request, invalid block number requested",
        );
    }

    /// Handles an ERROR from the client: the transfer ends quietly (RFC 1350 §7).
    pub fn handle_error(&mut self, now: Instant, code: ErrorCode) {
        if self.outcome.is_none() {
            self.finish(now, Outcome::Cancelled(code));
        }
    }

    /// Handles the retransmission timer; does nothing before [`poll_timeout`](Self::poll_timeout).
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline || self.outcome.is_some() {
            return;
        }
        if self.tries >= self.retries() {
            self.finish(now, Outcome::TimedOut);
            return;
        }
        if self.undo.is_none() {
            // Kept from the first timeout since the last progress: an ACK too quick to answer
            // the first retransmission answers none of the later ones either.
            self.undo = Some(Undo {
                orig_at: self.flight_at,
                fresh_from: self.fresh_from,
                retx_at: None,
            });
        }
        self.tries += 1;
        self.backoff = (self.backoff + 1).min(16);
        self.deadline = None;
        if self.oack {
            self.queue(Transmit::Oack);
        } else if self.tries == 1 && self.acked > 0 {
            // RFC 7440 §4: the window is sent again from the last acknowledged block. (Before
            // the client has acknowledged any data, a probe does as well and draws far less
            // from a client that only answered the OACK.)
            self.queue(self.window(true));
        } else {
            self.probe();
        }
    }

    /// Handles the client repeating its request (the same RRQ from the same port) while this
    /// transfer runs: its first reply was lost, so it is sent again now rather than at the
    /// next timeout (RFC 1350 §4 has the client time out and repeat). Once the transfer is past
    /// its first packet, a repeat is stale and ignored; so is any beyond `retries` repeats, so a
    /// stream of forged requests cannot keep a transfer alive.
    pub fn handle_repeat(&mut self, _now: Instant) {
        if self.outcome.is_some() || self.pending.is_some() || self.repeats >= self.config.retries {
            return;
        }
        self.repeats += 1;
        if self.oack {
            self.queue(Transmit::Oack);
        } else if self.acked == 0 && !self.opts.has_oack() {
            self.probe();
        }
    }

    /// Ends the transfer with an ERROR to the client, for a failure the driver met (a read
    /// error, a file that shrank).
    pub fn abort(&mut self, now: Instant, code: ErrorCode, message: &'static str) {
        if self.outcome.is_none() {
            self.fail(now, code, message);
        }
    }

    /// Handles the datagrams of the run last returned by [`poll_transmit`](Self::poll_transmit)
    /// leaving at `at`, for a driver that queues its sends and submits them in a batch a little
    /// later. The round trip and the retransmission timer then count from when the datagrams
    /// left, not from when they were queued: the driver's own queueing is neither measured as
    /// the client's delay nor charged against the client's time to answer. The timer is re-armed
    /// for `at` plus the wait it was armed with.
    ///
    /// Does nothing when `at` is not later than the time given to `poll_transmit`, once the
    /// transfer has ended, and while nothing is in flight (an ACK or a timeout came first and
    /// the next run awaits `poll_transmit`). A driver that never calls it keeps
    /// `poll_transmit`'s time.
    pub fn handle_sent(&mut self, at: Instant) {
        if self.outcome.is_some() || self.deadline.is_none() || at <= self.sent_at {
            return;
        }
        // `arm` stamped `flight_at` only if the last run carried a block sent for the first
        // time; otherwise it still holds an earlier run's time, which is right as it is.
        if self.fresh_from != u64::MAX {
            self.flight_at = at;
        }
        if let Some(undo) = &mut self.undo {
            if undo.retx_at == Some(self.sent_at) {
                undo.retx_at = Some(at);
            }
        }
        self.sent_at = at;
        self.deadline = Some(at + self.wait);
    }

    /// What to send now, if anything. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let transmit = self.pending.take().or_else(|| self.then.take())?;
        match transmit {
            Transmit::Oack => {
                let first = self.tries == 0;
                self.stats.sent += 1;
                self.stats.retransmits += u64::from(!first);
                self.arm(now, first.then_some(0));
            }
            Transmit::Blocks(run) => {
                let end = run.first + u64::from(run.count) - 1;
                let resent = self.sent.min(end).saturating_sub(run.first - 1);
                let fresh = (end > self.sent).then(|| run.first.max(self.sent + 1));
                self.stats.sent += u64::from(run.count);
                self.stats.retransmits += resent;
                self.sent = self.sent.max(end);
                self.arm(now, fresh);
            }
            Transmit::Error { .. } => {}
        }
        Some(transmit)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called; `None` once finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// How the transfer ended, once it has; the driver then closes the socket.
    pub fn outcome(&self) -> Option<Outcome> {
        if self.pending.is_some() || self.then.is_some() {
            // An ERROR still has to go out first.
            return None;
        }
        self.outcome
    }

    /// Writes the OACK for the negotiated options into `buf`; returns its length.
    pub fn emit_oack(&self, buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
        self.opts.emit_oack(buf)
    }

    /// The options in force.
    pub fn options(&self) -> &Negotiated {
        &self.opts
    }

    /// The byte offset in the (encoded) file of absolute block `block`.
    pub fn offset(&self, block: u64) -> u64 {
        block.saturating_sub(1) * u64::from(self.opts.blksize)
    }

    /// The payload length of absolute block `block`: `blksize`, less for the final block.
    pub fn block_len(&self, block: u64) -> usize {
        let rest = self.len.saturating_sub(self.offset(block));
        rest.min(u64::from(self.opts.blksize)) as usize
    }

    /// The wire number of absolute block `block`.
    pub fn wire_block(block: u64) -> u16 {
        wire(block)
    }

    /// The absolute number of the final block.
    pub fn last_block(&self) -> u64 {
        self.last
    }

    /// The highest block acknowledged so far (0 before the first).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The bytes the transfer sends in all.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the transfer sends no bytes (one empty DATA block).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The counters for the log line.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The current retransmission timeout, before backoff.
    pub fn rto(&self) -> Duration {
        self.base_rto()
    }

    /// The retransmissions allowed now: fewer while the client has never answered.
    fn retries(&self) -> u32 {
        if self.answered {
            self.config.retries
        } else {
            self.config.retries.min(self.config.retries_unanswered)
        }
    }

    /// Makes `transmit` the next thing to send, replacing whatever was queued before: a new
    /// window or probe supersedes any part of an older one not yet sent.
    fn queue(&mut self, transmit: Transmit) {
        self.pending = Some(transmit);
        self.then = None;
    }

    /// Queues a probe of a window the client stayed silent through: its first and last blocks
    /// rather than all of them. A live client answers at once — the first block is the one it
    /// lacks if it reported a gap whose ACK was lost (RFC 7440 §4), the last makes it repeat its
    /// final ACK if it already has everything (RFC 1350 dallying) — and a vanished one draws two
    /// blocks per try rather than a window.
    fn probe(&mut self) {
        let count = (self.last - self.acked).min(u64::from(self.opts.windowsize.max(1)));
        let one = |first| {
            Transmit::Blocks(Blocks {
                first,
                count: 1,
                retransmit: true,
            })
        };
        self.queue(one(self.acked + 1));
        if count > 1 {
            self.then = Some(one(self.acked + count));
        }
    }

    /// The window starting after the last acknowledged block.
    fn window(&self, retransmit: bool) -> Transmit {
        let count = (self.last - self.acked).min(u64::from(self.opts.windowsize.max(1)));
        Transmit::Blocks(Blocks {
            first: self.acked + 1,
            // At most `windowsize`, a u16.
            count: count as u16,
            retransmit,
        })
    }

    /// Arms the timer for what was just sent; `fresh` is the first block of it (0 for the OACK)
    /// sent for the first time, if any.
    fn arm(&mut self, now: Instant, fresh: Option<u64>) {
        match fresh {
            Some(first) => {
                self.flight_at = now;
                self.fresh_from = first;
            }
            None => self.fresh_from = u64::MAX,
        }
        if let Some(undo) = &mut self.undo {
            // The first send after a timeout is its retransmission.
            undo.retx_at.get_or_insert(now);
        }
        let mut wait = self.base_rto();
        if self.opts.timeout.is_none() {
            // RFC 6298 §5.5: back off exponentially while the client stays silent, and keep
            // the backoff until the next sample (§5.7).
            wait = wait
                .saturating_mul(1 << self.backoff)
                .min(self.config.rto_max);
        }
        if self.answered && self.tries >= self.retries() {
            // The last wait: stretch it so the silence before giving up reaches `patience`
            // (only for a client that has answered: a forged request holds nothing for long).
            let silent = now.saturating_duration_since(self.progress_at);
            wait = wait.max(self.config.patience.saturating_sub(silent));
        }
        self.sent_at = now;
        self.wait = wait;
        self.deadline = Some(now + wait);
    }

    fn base_rto(&self) -> Duration {
        match self.opts.timeout {
            Some(fixed) => fixed,
            None => self.rtt.rto(&self.config),
        }
    }

    /// The client acknowledged `block` (0: the OACK), new progress.
    fn progress(&mut self, now: Instant, block: u64) {
        // Karn's rule: the ACK of a block the last run sent for the first time is a sample.
        let mut sample_from = (block >= self.fresh_from).then_some(self.flight_at);
        if let Some(undo) = self.undo.take() {
            // A block first sent by the retransmission (`sample_from` is set) proves the client
            // answered it. Otherwise the ACK is timed from the run the timer gave up on only if
            // the block had a single copy in flight before the timeout: a block that went twice
            // (a window slid over a gap) may have been answered by the older copy.
            if sample_from.is_none() && block >= undo.fresh_from && self.too_soon(now, &undo) {
                // RFC 4015's response, with the sample its timestamps would give: the backoff
                // collapses as after any sample (RFC 6298 §5.7) and `tries` restarts below, both
                // back where they were before the timeout (0: the record is taken at the first
                // one), and the sample is the slow round trip that made the timer fire early,
                // so the RTO grows past it.
                self.stats.spurious += 1;
                sample_from = Some(undo.orig_at);
            }
        }
        if let Some(at) = sample_from {
            self.rtt.sample(now.saturating_duration_since(at));
            self.backoff = 0;
        }
        self.tries = 0;
        self.progress_at = now;
        self.deadline = None;
    }

    /// Whether an ACK at `now` came back too soon after the retransmission to answer it, so it
    /// answered the copy sent before the timeout: the timeout was spurious (RFC 3522 detects
    /// this with timestamps; a TFTP ACK carries none, so the time it took is the evidence).
    ///
    /// The client cannot answer faster than the path's round trip, and the least round trip
    /// measured on this transfer bounds it; half of that leaves a margin for a minimum that was
    /// itself inflated by queueing, or a clock tick of error. RACK (RFC 8985) makes the same
    /// inference from the whole minimum. A wrong call errs the safe way: a genuine loss taken
    /// for spurious gives a sample of about one RTO, which raises the RTO (a slower recovery
    /// from the next loss), never lowers it. Before any sample there is no bound at all, and a
    /// wrong call would seed SRTT with the whole initial RTO (1 s), so the timeout stands as
    /// Karn's rule has it; so it does when the clock is too coarse to see the round trip (0).
    fn too_soon(&self, now: Instant, undo: &Undo) -> bool {
        let (Some(retx_at), Some(min)) = (undo.retx_at, self.rtt.min) else {
            return false;
        };
        now.saturating_duration_since(retx_at) < min / 2
    }

    fn fail(&mut self, now: Instant, code: ErrorCode, message: &'static str) {
        self.finish(now, Outcome::Failed(code));
        self.pending = Some(Transmit::Error { code, message });
    }

    /// Ends the transfer; a retransmission not yet sent is dropped with the timer.
    fn finish(&mut self, now: Instant, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.pending = None;
        self.then = None;
        self.deadline = None;
        self.stats.ended = Some(now);
    }
}

/// The wire block number of an absolute block: its low 16 bits (RFC 1350 leaves rollover
/// unspecified; 65535 is followed by 0, as in tftp-hpa and dnsmasq).
fn wire(block: u64) -> u16 {
    block as u16
}

/// What a timeout gave up on, to undo it if the client's next ACK proves it spurious.
#[derive(Debug, Clone, Copy)]
struct Undo {
    /// When the run the timer was armed for left (the original transmission), and the first
    /// block of it sent for the first time (`u64::MAX`: none).
    orig_at: Instant,
    fresh_from: u64,
    /// When the retransmission left; `None` until it has.
    retx_at: Option<Instant>,
}

/// The smoothed round-trip time and its variation (RFC 6298 §2), and the least round trip.
#[derive(Debug, Clone, Copy)]
struct RttEstimator {
    initial: Duration,
    srtt: Option<Duration>,
    rttvar: Duration,
    /// The least sample: the bound on how fast the client can answer (see `too_soon`).
    min: Option<Duration>,
}

impl RttEstimator {
    fn new(initial: Duration) -> Self {
        Self {
            initial,
            srtt: None,
            rttvar: Duration::ZERO,
            min: None,
        }
    }

    fn sample(&mut self, r: Duration) {
        self.min = Some(self.min.map_or(r, |min| min.min(r)));
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                // RTTVAR <- 3/4 RTTVAR + 1/4 |SRTT - R'|; SRTT <- 7/8 SRTT + 1/8 R'.
                let delta = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
    }

    /// RTO <- SRTT + max(G, 4 RTTVAR), within the configured floor and ceiling.
    fn rto(&self, config: &Config) -> Duration {
        let Some(srtt) = self.srtt else {
            return self.initial;
        };
        // G, the clock granularity: the drivers' timers tick in milliseconds.
        let granularity = Duration::from_millis(1);
        // max-then-min rather than clamp: a misconfigured floor above the ceiling must not panic.
        (srtt + (self.rttvar * 4).max(granularity))
            .max(config.rto_min)
            .min(config.rto_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Limits;
    use crate::packet::Options;

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

    #[test]
    fn oack_is_retransmitted_with_backoff_until_ack_0_then_data_1() {
        let c = Clock::new();
        let config = Config {
            retries_unanswered: 5,
            ..Config::default()
        };
        let mut t = Transfer::new(c.ms(0), negotiated(b"blksize\x001024\x00"), 5000, config);
        assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
        assert_eq!(t.poll_transmit(c.ms(0)), None);
        let mut buf = [0; 64];
        let n = t.emit_oack(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x00\x06blksize\x001024\x00");
        assert_eq!(t.poll_timeout(), Some(c.ms(1000)));
        // Early timer calls do nothing.
        t.handle_timeout(c.ms(999));
        assert_eq!(t.poll_transmit(c.ms(999)), None);
        // 1 s, then 2 s, then 4 s.
        assert_eq!(fire(&mut t), c.ms(1000));
        assert_eq!(t.poll_transmit(c.ms(1000)), Some(Transmit::Oack));
        assert_eq!(t.poll_timeout(), Some(c.ms(3000)));
        assert_eq!(fire(&mut t), c.ms(3000));
        assert_eq!(t.poll_transmit(c.ms(3000)), Some(Transmit::Oack));
        assert_eq!(t.poll_timeout(), Some(c.ms(7000)));
        // Only ACK 0 answers an OACK.
        t.handle_datagram(c.ms(3500), &ack(1));
        assert_eq!(t.poll_transmit(c.ms(3500)), None);
        assert_eq!(t.poll_timeout(), Some(c.ms(7000)));
        t.handle_datagram(c.ms(3500), &ack(0));
        assert_eq!(t.poll_transmit(c.ms(3500)), blocks(1, 1, false));
        assert_eq!(t.poll_transmit(c.ms(3500)), None);
        assert!(t.poll_timeout().unwrap() > c.ms(3500));
        assert_eq!((t.stats().sent, t.stats().retransmits), (4, 2));
        // A late copy of ACK 0 is a duplicate.
        let deadline = t.poll_timeout();
        t.handle_datagram(c.ms(3600), &ack(0));
        assert_eq!(t.poll_transmit(c.ms(3600)), None);
        assert_eq!(t.poll_timeout(), deadline);
        assert_eq!(t.outcome(), None);
    }

    #[test]
    fn without_options_data_1_goes_at_once() {
        let c = Clock::new();
        let mut t = Transfer::new(c.ms(0), Negotiated::DEFAULT, 1300, Config::default());
        assert!(!t.options().has_oack());
        assert_eq!(t.poll_transmit(c.ms(0)), blocks(1, 1, false));
        assert_eq!(t.poll_transmit(c.ms(0)), None);
        assert_eq!(t.poll_timeout(), Some(c.ms(1000)));
        // A stray ACK 0 is no answer to an OACK that was never sent.
        t.handle_datagram(c.ms(5), &ack(0));
        assert_eq!(t.poll_transmit(c.ms(5)), None);
        t.handle_datagram(c.ms(10), &ack(1));
        assert_eq!(t.poll_transmit(c.ms(10)), blocks(2, 1, false));
        assert_eq!(t.stats().sent, 2);
    }

    #[test]
    fn block_is_retransmitted_after_the_rto() {
        let c = Clock::new();
        let mut t = lockstep(c, 4000, Config::default());
        // Before any sample the RTO is the initial 1 s.
        assert_eq!(t.rto(), ms(1000));
        assert_eq!(t.poll_timeout(), Some(c.ms(1000)));
        assert_eq!(fire(&mut t), c.ms(1000));
        assert_eq!(t.poll_transmit(c.ms(1000)), blocks(1, 1, true));
        assert_eq!(t.stats().retransmits, 1);
        // ACK 1 after the retransmission; then a clean 100 ms round trip sets the RTO to
        // SRTT + 4 RTTVAR = 100 + 4 * 50 = 300 ms.
        t.handle_datagram(c.ms(1100), &ack(1));
        assert_eq!(t.poll_transmit(c.ms(1100)), blocks(2, 1, false));
        t.handle_datagram(c.ms(1200), &ack(2));
        assert_eq!(t.rto(), ms(300));
        assert_eq!(t.poll_transmit(c.ms(1200)), blocks(3, 1, false));
        assert_eq!(t.poll_timeout(), Some(c.ms(1500)));
        t.handle_timeout(c.ms(1499));
        assert_eq!(t.poll_transmit(c.ms(1499)), None);
        t.handle_timeout(c.ms(1500));
        assert_eq!(t.poll_transmit(c.ms(1500)), blocks(3, 1, true));
        assert_eq!(t.stats().retransmits, 2);
    }

    #[test]
    fn adaptive_timeout_backs_off_exponentially_up_to_the_ceiling() {
        let c = Clock::new();
        let config = Config {
            retries: 8,
            retries_unanswered: 8,
            rto_initial: ms(100),
            rto_max: ms(1000),
            ..Config::default()
        };
        let mut t = lockstep(c, 4000, config);
        let mut sent_at = c.ms(0);
        let mut waits = Vec::new();
        while t.outcome().is_none() {
            let deadline = fire(&mut t);
            waits.push((deadline - sent_at).as_millis());
            sent_at = deadline;
            drain(&mut t, deadline);
        }
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1000, 1000, 1000, 1000, 1000],
            "each wait doubles, up to rto_max"
        );
        assert_eq!(t.outcome(), Some(Outcome::TimedOut));
        assert_eq!(t.stats().retransmits, 8);
    }

    #[test]
    fn a_timeout_fixed_by_the_client_is_used_as_is() {
        let c = Clock::new();
        let opts = Negotiated::negotiate(
            &Options::parse(b"timeout\x002\x00"),
            &Limits::default(),
            || None,
        )
        .unwrap();
        assert_eq!(opts.timeout, Some(ms(2000)));
        let mut t = Transfer::new(c.ms(0), opts, 100_000, Config::default());
        assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
        assert_eq!(t.poll_timeout(), Some(c.ms(2000)));
        assert_eq!(fire(&mut t), c.ms(2000));
        assert_eq!(t.poll_transmit(c.ms(2000)), Some(Transmit::Oack));
        assert_eq!(t.poll_timeout(), Some(c.ms(4000)), "no backoff");
        t.handle_datagram(c.ms(4005), &ack(0));
        assert_eq!(t.poll_transmit(c.ms(4005)), blocks(1, 1, false));
        assert_eq!(t.poll_timeout(), Some(c.ms(6005)));
        // Fast round trips teach it nothing: the client's interval stands.
        t.handle_datagram(c.ms(4010), &ack(1));
        assert_eq!(t.rto(), ms(2000));
        assert_eq!(t.poll_transmit(c.ms(4010)), blocks(2, 1, false));
        let mut at = c.ms(4010);
        for _ in 0..5 {
            assert_eq!(t.poll_timeout(), Some(at + ms(2000)));
            at = fire(&mut t);
            assert_eq!(t.poll_transmit(at), blocks(2, 1, true));
        }
        // Five retries (the default), the last wait already past `patience`.
        assert_eq!(t.poll_timeout(), Some(at + ms(2000)));
        let end = fire(&mut t);
        assert_ended(&mut t, end, Outcome::TimedOut);
        assert_eq!(end, c.ms(4010 + 6 * 2000));
    }

    #[test]
    fn gives_up_after_exactly_retries_retransmissions() {
        let c = Clock::new();
        let config = Config {
            retries_unanswered: 5,
            ..Config::default()
        };
        let mut t = lockstep(c, 4000, config);
        // Waits 1, 2, 4, 4 (ceiling), 4, 4 s: five retransmissions, then the end.
        let mut deadlines = Vec::new();
        loop {
            let deadline = t.poll_timeout().unwrap();
            t.handle_timeout(deadline - ms(1));
            assert_eq!(t.poll_transmit(deadline - ms(1)), None);
            assert_eq!(t.outcome(), None);
            t.handle_timeout(deadline);
            deadlines.push(deadline);
            if t.outcome().is_some() {
                break;
            }
            assert_eq!(t.poll_transmit(deadline), blocks(1, 1, true));
        }
        let expected: Vec<Instant> = [1000, 3000, 7000, 11000, 15000, 19000]
            .map(|m| c.ms(m))
            .to_vec();
        assert_eq!(deadlines, expected);
        assert_ended(&mut t, c.ms(19000), Outcome::TimedOut);
        assert_eq!((t.stats().sent, t.stats().retransmits), (6, 5));
        assert_eq!(t.stats().ended, Some(c.ms(19000)));
        // The end is final.
        t.handle_datagram(c.ms(19001), &ack(1));
        assert_ended(&mut t, c.ms(19001), Outcome::TimedOut);
    }

    #[test]
    fn the_last_wait_is_stretched_to_patience() {
        let c = Clock::new();
        let config = Config {
            retries: 3,
            rto_initial: ms(10),
            rto_min: ms(10),
            patience: ms(5000),
            ..Config::default()
        };
        let mut t = lockstep(c, 4000, config);
        // The client answers block 1 at once (a 10 ms timeout after a 0 ms sample), then
        // falls silent.
        t.handle_ack(c.ms(0), 1);
        assert_eq!(t.poll_transmit(c.ms(0)), blocks(2, 1, false));
        let mut deadlines = Vec::new();
        while t.outcome().is_none() {
            let deadline = fire(&mut t);
            deadlines.push(deadline);
            drain(&mut t, deadline);
        }
        // 10, 20, 40 ms, then the last wait reaches 5 s of silence.
        let expected: Vec<Instant> = [10, 30, 70, 5000].map(|m| c.ms(m)).to_vec();
        assert_eq!(deadlines, expected);
        assert_eq!(t.stats().retransmits, 3);
        assert_ended(&mut t, c.ms(5000), Outcome::TimedOut);
    }

    #[test]
    fn a_client_that_never_answers_draws_few_replies() {
        // A forged RRQ: 1 + retries_unanswered (1) copies of DATA 1, then the end, with no
        // wait stretched to `patience`.
        let c = Clock::new();
        let mut t = lockstep(c, 4000, Config::default());
        let mut sent = 1;
        while t.outcome().is_none() {
            let deadline = fire(&mut t);
            sent += drain(&mut t, deadline).len();
        }
        assert_eq!(sent, 2);
        assert_eq!(t.outcome(), Some(Outcome::TimedOut));
        assert_eq!(
            t.stats().ended,
            Some(c.ms(3000)),
            "1 s, then 2 s: no stretch"
        );
    }

    #[test]
    fn a_repeated_request_resends_the_first_packet_at_once() {
        let c = Clock::new();
        let mut t = lockstep(c, 4000, Config::default());
        t.handle_repeat(c.ms(5));
        assert_eq!(t.poll_transmit(c.ms(5)), blocks(1, 1, true));
        assert_eq!(t.stats().retransmits, 1);
        // Once the transfer is under way, a stale repeat changes nothing.
        t.handle_ack(c.ms(6), 1);
        assert_eq!(t.poll_transmit(c.ms(6)), blocks(2, 1, false));
        t.handle_repeat(c.ms(7));
        assert_eq!(t.poll_transmit(c.ms(7)), None);

        let mut t = Transfer::new(
            c.ms(0),
            negotiated(b"blksize\x001024\x00"),
            5000,
            Config::default(),
        );
        assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
        t.handle_repeat(c.ms(3));
        assert_eq!(t.poll_transmit(c.ms(3)), Some(Transmit::Oack));
    }

    #[test]
    fn a_stream_of_repeated_requests_is_answered_a_bounded_number_of_times() {
        let c = Clock::new();
        let config = Config::default();
        let mut t = lockstep(c, 4000, config);
        let mut answered = 0;
        let mut at = 0;
        // A forged RRQ every 100 ms for a minute, never an ACK.
        while t.outcome().is_none() && at < 60_000 {
            at += 100;
            t.handle_timeout(c.ms(at));
            t.handle_repeat(c.ms(at));
            while t.poll_transmit(c.ms(at)).is_some() {
                answered += 1;
            }
        }
        assert_eq!(
            t.outcome(),
            Some(Outcome::TimedOut),
            "kept alive for {at} ms"
        );
        assert!(
            answered <= config.retries + config.retries_unanswered,
            "{answered} replies drawn"
        );
    }

    #[test]
    fn a_silent_window_is_resent_once_then_probed_with_one_block() {
        let c = Clock::new();
        let mut t = Transfer::new(
            c.ms(0),
            negotiated(b"windowsize\x0016\x00"),
            512 * 64,
            Config::default(),
        );
        assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
        t.handle_ack(c.ms(1), 0);
        assert_eq!(t.poll_transmit(c.ms(1)), blocks(1, 16, false));
        // Before any data is acknowledged, a silent window is only probed.
        let deadline = fire(&mut t);
        assert_eq!(
            drain(&mut t, deadline),
            [blocks(1, 1, true).unwrap(), blocks(16, 1, true).unwrap()]
        );
        let now = deadline + ms(1);
        t.handle_ack(now, 16);
        assert_eq!(t.poll_transmit(now), blocks(17, 16, false));
        // Afterwards the first timeout resends the window (RFC 7440 §4), later ones probe.
        let deadline = fire(&mut t);
        assert_eq!(drain(&mut t, deadline), [blocks(17, 16, true).unwrap()]);
        let deadline = fire(&mut t);
        assert_eq!(
            drain(&mut t, deadline),
            [blocks(17, 1, true).unwrap(), blocks(32, 1, true).unwrap()]
        );
        // The probe's answer slides the window as any ACK does.
        t.handle_ack(deadline + ms(1), 32);
        assert_eq!(t.poll_transmit(deadline + ms(1)), blocks(33, 16, false));
    }

    /// Found by fuzzing (fuzz/regressions/transfer_events/stale_probe_tail_after_ack): an ACK
    /// that arrives before a probe is drained must drop the probe's second block.
    #[test]
    fn an_ack_drops_a_probe_not_yet_sent() {
        let c = Clock::new();
        let mut t = Transfer::new(
            c.ms(0),
            negotiated(b"windowsize\x008\x00"),
            10361,
            Config::default(),
        );
        t.handle_datagram(c.ms(0), &ack(0));
        drain(&mut t, c.ms(0));
        let at = fire(&mut t);
        t.handle_datagram(at, &ack(8));
        assert_eq!(drain(&mut t, at), [blocks(9, 8, false).unwrap()]);
    }

    #[test]
    fn a_floor_above_the_ceiling_does_not_panic() {
        let config = Config {
            rto_min: ms(500),
            rto_max: ms(100),
            ..Config::default()
        };
        let mut rtt = RttEstimator::new(ms(10));
        rtt.sample(ms(1));
        assert_eq!(rtt.rto(&config), ms(100));
    }

    /// The default caps without the bound on a window's bytes, which exists for real sockets'
    /// receive buffers; the simulated link has none.
    const UNCAPPED: Limits = Limits {
        blksize_max: crate::options::BLKSIZE_MAX,
        windowsize_max: 64,
        window_bytes_max: usize::MAX,
    };

    /// Drives one lock-step block against a client that answers the first copy of each DATA
    /// `rtt` later, firing the timer whenever it comes due first, as a driver would. Returns the
    /// time of the ACK and the retransmissions it took.
    fn exchange(t: &mut Transfer, now: Instant, rtt: Duration) -> (Instant, u64) {
        let before = t.stats().retransmits;
        let sent = drain(t, now);
        assert!(matches!(sent[..], [Transmit::Blocks(_)]), "{sent:?}");
        let ack_at = now + rtt;
        while let Some(deadline) = t.poll_timeout() {
            if deadline >= ack_at {
                break;
            }
            t.handle_timeout(deadline);
            drain(t, deadline);
        }
        assert_eq!(t.outcome(), None);
        t.handle_datagram(ack_at, &ack(wire(t.acked() + 1)));
        (ack_at, t.stats().retransmits - before)
    }

    #[test]
    fn adaptive_timeout_converges_to_the_measured_round_trip() {
        let c = Clock::new();
        // Unclamped, 5 ms round trips bring the RTO down towards SRTT + G = 6 ms.
        let config = Config {
            rto_min: ms(1),
            ..Config::default()
        };
        let mut t = lockstep(c, 512 * 1000, config);
        t.handle_datagram(c.ms(5), &ack(1));
        // The first sample: SRTT = 5 ms, RTTVAR = 2.5 ms.
        assert_eq!(t.rto(), ms(15));
        let mut now = c.ms(5);
        let mut last = t.rto();
        for _ in 0..60 {
            (now, _) = exchange(&mut t, now, ms(5));
            assert!(t.rto() <= last, "{:?} then {:?}", last, t.rto());
            last = t.rto();
        }
        assert!(t.rto() >= ms(6) && t.rto() < ms(7), "{:?}", t.rto());

        // With the default floor it sits at 20 ms.
        let mut t = lockstep(c, 512 * 1000, Config::default());
        t.handle_datagram(c.ms(5), &ack(1));
        assert_eq!(t.rto(), ms(20));
        let mut now = c.ms(5);
        for _ in 0..30 {
            (now, _) = exchange(&mut t, now, ms(5));
            assert_eq!(t.rto(), ms(20));
        }
        // The client slows down to 300 ms: the early timeouts back off until an ACK comes for
        // a block sent once, then the RTO follows the new round trip.
        let mut retransmits = Vec::new();
        for _ in 0..40 {
            let r;
            (now, r) = exchange(&mut t, now, ms(300));
            retransmits.push(r);
        }
        assert!(t.rto() > ms(300), "{:?} {retransmits:?}", t.rto());
        assert!(t.rto() < ms(400), "{:?}", t.rto());
        assert!(
            retransmits[5..].iter().all(|&r| r == 0),
            "the RTO never learnt the slower round trip: {retransmits:?}"
        );
        assert!(retransmits.iter().sum::<u64>() <= 6, "{retransmits:?}");
    }

    #[test]
    fn karn_no_sample_from_a_retransmitted_block_and_the_backoff_is_kept() {
        let c = Clock::new();
        let mut t = lockstep(c, 512 * 10, Config::default());
        t.handle_datagram(c.ms(100), &ack(1));
        assert_eq!(t.rto(), ms(300));
        assert_eq!(t.poll_transmit(c.ms(100)), blocks(2, 1, false));
        assert_eq!(fire(&mut t), c.ms(400));
        assert_eq!(t.poll_transmit(c.ms(400)), blocks(2, 1, true));
        // Was that ACK for the first copy (350 ms) or the second (50 ms)? Neither counts.
        t.handle_datagram(c.ms(450), &ack(2));
        assert_eq!(t.rto(), ms(300), "no sample after a retransmission");
        // The backed-off timeout stays until a sample is taken (RFC 6298 §5.7).
        assert_eq!(t.poll_transmit(c.ms(450)), blocks(3, 1, false));
        assert_eq!(t.poll_timeout(), Some(c.ms(450 + 600)));
        // A clean 100 ms sample: SRTT 100, RTTVAR 37.5 → 250 ms, and the backoff collapses.
        t.handle_datagram(c.ms(550), &ack(3));
        assert_eq!(t.rto(), ms(250));
        assert_eq!(t.poll_transmit(c.ms(550)), blocks(4, 1, false));
        assert_eq!(t.poll_timeout(), Some(c.ms(550 + 250)));
    }

    #[test]
    fn karn_only_blocks_sent_once_give_a_sample_in_a_partly_resent_window() {
        let c = Clock::new();
        let mut t = Transfer::new(
            c.ms(0),
            negotiated(b"windowsize\x004\x00"),
            512 * 40,
            Config::default(),
        );
        assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
        // ACK 0 for the first OACK: a 100 ms sample, RTO 300 ms.
        t.handle_datagram(c.ms(100), &ack(0));
        assert_eq!(t.rto(), ms(300));
        assert_eq!(t.poll_transmit(c.ms(100)), blocks(1, 4, false));
        // Block 3 lost: the ACK of 2 is a sample for blocks sent once (40 ms).
        t.handle_datagram(c.ms(140), &ack(2));
        let rto = t.rto();
        assert_ne!(rto, ms(300));
        // Blocks 3 and 4 go again with 5 and 6 new.
        assert_eq!(t.poll_transmit(c.ms(140)), blocks(3, 4, false));
        assert_eq!(t.stats().retransmits, 2);
        // The ACK of 4, sent twice, says nothing.
        t.handle_datagram(c.ms(150), &ack(4));
        assert_eq!(t.rto(), rto);
        // 5 and 6 go a second time, 7 and 8 a first: the ACK of 6 says nothing.
        assert_eq!(t.poll_transmit(c.ms(150)), blocks(5, 4, false));
        assert_eq!(t.stats().retransmits, 4);
        t.handle_datagram(c.ms(160), &ack(6));
        assert_eq!(t.rto(), rto);
        // 7 and 8 go a second time, 9 and 10 a first: the ACK of 10 is a sample.
        assert_eq!(t.poll_transmit(c.ms(160)), blocks(7, 4, false));
        t.handle_datagram(c.ms(200), &ack(10));
        assert_ne!(t.rto(), rto);
    }

    /// A lock-step transfer whose first round trip took 10 ms (SRTT 10, RTTVAR 5, RTO 30 ms, the
    /// least round trip 10 ms), and whose DATA 2, sent at 10 ms, was retransmitted at 40 ms.
    fn retransmitted_after_a_10_ms_round_trip(c: Clock) -> Transfer {
        let mut t = lockstep(c, 512 * 10, Config::default());
        t.handle_datagram(c.ms(10), &ack(1));
        assert_eq!(t.rto(), ms(30));
        assert_eq!(t.poll_transmit(c.ms(10)), blocks(2, 1, false));
        assert_eq!(fire(&mut t), c.ms(40));
        assert_eq!(t.poll_transmit(c.ms(40)), blocks(2, 1, true));
        t
    }

    #[test]
    fn a_spurious_timeout_is_undone_and_the_rto_learns_the_slow_round_trip() {
        let c = Clock::new();
        let mut t = retransmitted_after_a_10_ms_round_trip(c);
        // ACK 2, 1 ms after the retransmission, far sooner than the 5 ms (half the least round
        // trip) the client needs to answer it: it answers DATA 2 sent at 10 ms, 31 ms ago.
        t.handle_datagram(c.ms(41), &ack(2));
        assert_eq!((t.stats().spurious, t.stats().retransmits), (1, 1));
        // The sample: SRTT (7 * 10 + 31) / 8 = 12.625, RTTVAR (3 * 5 + 21) / 4 = 9 → 48.625 ms,
        // more than the round trip that fooled the timer.
        let rto = Duration::from_micros(48_625);
        assert_eq!(t.rto(), rto);
        assert!(t.rto() >= ms(31));
        // The backoff is undone: DATA 3 waits one RTO, not two (nor two of the old 30 ms).
        assert_eq!(t.poll_transmit(c.ms(41)), blocks(3, 1, false));
        assert_eq!(t.poll_timeout(), Some(c.ms(41) + rto));
        // The client's ACK of the duplicate DATA 2 is a duplicate: nothing is sent or rearmed.
        t.handle_datagram(c.ms(51), &ack(2));
        assert_eq!(t.poll_transmit(c.ms(51)), None);
        assert_eq!(t.poll_timeout(), Some(c.ms(41) + rto));
        assert_eq!(t.stats().spurious, 1);
    }

    #[test]
    fn a_genuine_loss_is_not_taken_for_a_spurious_timeout() {
        let c = Clock::new();
        let t = retransmitted_after_a_10_ms_round_trip(c);
        // ACK 2 a whole round trip after the retransmission (it answers it), or exactly half
        // the least round trip after: Karn's rule stands, no sample and the backoff is kept.
        for at in [50, 45] {
            let mut t = t.clone();
            t.handle_datagram(c.ms(at), &ack(2));
            assert_eq!(t.stats().spurious, 0, "ACK at {at} ms");
            assert_eq!(t.rto(), ms(30), "ACK at {at} ms");
            assert_eq!(t.poll_transmit(c.ms(at)), blocks(3, 1, false));
            assert_eq!(t.poll_timeout(), Some(c.ms(at + 60)), "ACK at {at} ms");
        }
        // Just under half: spurious.
        let mut t = t.clone();
        t.handle_datagram(c.ms(45) - Duration::from_micros(1), &ack(2));
        assert_eq!(t.stats().spurious, 1);

        // Before any sample nothing bounds how fast the client answers: even an ACK at the
        // very moment of the retransmission may answer it.
        let mut t = lockstep(c, 512 * 10, Config::default());
        assert_eq!(fire(&mut t), c.ms(1000));
        assert_eq!(t.poll_transmit(c.ms(1000)), blocks(1, 1, true));
        t.handle_datagram(c.ms(1000), &ack(1));
        assert_eq!(t.stats().spurious, 0);
        assert_eq!(t.rto(), ms(1000));
        assert_eq!(t.poll_transmit(c.ms(1000)), blocks(2, 1, false));
        assert_eq!(t.poll_timeout(), Some(c.ms(3000)));
    }

    #[test]
    fn a_saturated_server_learns_its_lag_from_one_spurious_timeout_and_never_backs_off() {
        let c = Clock::new();
        let mut t = lockstep(c, 512 * 100, Config::default());
        // A quiet start: a 5 ms round trip, RTO 20 ms (the floor).
        t.handle_datagram(c.ms(5), &ack(1));
        assert_eq!(t.rto(), ms(20));
        let mut now = c.ms(5);
        let mut retransmits = Vec::new();
        // Then the server falls `lag` behind: it gets to its timer and the client's (prompt)
        // ACK only `lag` after each send, the timer first, the ACK 1 ms later.
        for lag in [200, 200, 200, 200, 200, 1000, 1000, 1000, 1000, 1000] {
            let before = t.stats().retransmits;
            assert!(matches!(drain(&mut t, now)[..], [Transmit::Blocks(_)]));
            let busy = now + ms(lag);
            t.handle_timeout(busy);
            drain(&mut t, busy);
            now = busy + ms(1);
            t.handle_datagram(now, &ack(wire(t.acked() + 1)));
            retransmits.push(t.stats().retransmits - before);
            // Never a backoff to escalate, and the RTO covers the round trip it has seen.
            assert_eq!(t.backoff, 0, "{retransmits:?}");
            assert!(t.rto() >= ms(lag + 1), "{:?} {retransmits:?}", t.rto());
        }
        // One spurious retransmission each time the lag grows, none once it is learnt. (Karn's
        // rule alone kept the backoff and resent blocks 2 to 5: 40, 80, 160 ms were all short.)
        assert_eq!(retransmits, [1, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(t.stats().spurious, 2);
    }

    #[test]
    fn a_spurious_timeout_of_a_window_is_undone() {
        let c = Clock::new();
        let mut t = Transfer::new(
            c.ms(0),
            negotiated(b"windowsize\x004\x00"),
            512 * 40,
            Config::default(),
        );
        assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
        t.handle_datagram(c.ms(10), &ack(0));
        assert_eq!(t.poll_transmit(c.ms(10)), blocks(1, 4, false));
        // Two 10 ms samples: SRTT 10, RTTVAR 3.75, RTO 25 ms.
        t.handle_datagram(c.ms(20), &ack(4));
        assert_eq!(t.rto(), ms(25));
        assert_eq!(t.poll_transmit(c.ms(20)), blocks(5, 4, false));
        assert_eq!(fire(&mut t), c.ms(45));
        assert_eq!(t.poll_transmit(c.ms(45)), blocks(5, 4, true));
        assert_eq!(t.stats().retransmits, 4);
        // The ACK of the whole original window, 1 ms after the window went again.
        t.handle_datagram(c.ms(46), &ack(8));
        assert_eq!(t.stats().spurious, 1);
        // A 26 ms sample: SRTT (7 * 10 + 26) / 8 = 12, RTTVAR (3 * 3.75 + 16) / 4 = 6.8125,
        // RTO 39.25 ms, and no backoff.
        let rto = Duration::from_micros(39_250);
        assert_eq!(t.rto(), rto);
        assert_eq!(t.poll_transmit(c.ms(46)), blocks(9, 4, false));
        assert_eq!(t.poll_timeout(), Some(c.ms(46) + rto));
        // The client's ACK of the duplicate window changes nothing.
        t.handle_datagram(c.ms(48), &ack(8));
        assert_eq!(t.poll_transmit(c.ms(48)), None);
        assert_eq!(t.poll_timeout(), Some(c.ms(46) + rto));

        // Block 11 lost: the ACK of 10 slides the window, resending 11 and 12 with 13 and 14
        // new (a 4 ms sample: the least round trip is now 4 ms).
        t.handle_datagram(c.ms(50), &ack(10));
        assert_eq!(t.poll_transmit(c.ms(50)), blocks(11, 4, false));
        let at = fire(&mut t);
        assert_eq!(t.poll_transmit(at), blocks(11, 4, true));
        let rto = t.rto();
        // ACK 14 1 ms later answers the run sent at 50 ms, where 14 went first: spurious.
        let mut whole = t.clone();
        whole.handle_datagram(at + ms(1), &ack(14));
        assert_eq!(whole.stats().spurious, 2);
        assert_ne!(whole.rto(), rto);
        // ACK 12 as soon: 12 also went in the window sent at 46 ms, and either copy may have
        // drawn it. No sample, and the timeout stands.
        t.handle_datagram(at + ms(1), &ack(12));
        assert_eq!(t.stats().spurious, 1);
        assert_eq!(t.rto(), rto);
        assert_eq!(t.poll_transmit(at + ms(1)), blocks(13, 4, false));
        assert_eq!(t.poll_timeout(), Some(at + ms(1) + rto * 2));
    }

    #[test]
    fn handle_sent_times_the_flight_from_when_it_left() {
        let c = Clock::new();
        let mut t = lockstep(c, 512 * 10, Config::default());
        assert_eq!(t.poll_timeout(), Some(c.ms(1000)));
        // DATA 1, polled at 0 ms, left in a batch at 3 ms: the timer moves with it.
        t.handle_sent(c.ms(3));
        assert_eq!(t.poll_timeout(), Some(c.ms(1003)));
        // Not later than the stamp: nothing changes.
        t.handle_sent(c.ms(2));
        t.handle_sent(c.ms(3));
        assert_eq!(t.poll_timeout(), Some(c.ms(1003)));
        // The round trip counts from 3 ms: a 10 ms sample, RTO 30 ms (13 ms would give 39).
        t.handle_datagram(c.ms(13), &ack(1));
        assert_eq!(t.rto(), ms(30));
        // Nothing in flight until DATA 2 is polled.
        t.handle_sent(c.ms(14));
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.poll_transmit(c.ms(14)), blocks(2, 1, false));
        assert_eq!(t.poll_timeout(), Some(c.ms(44)));
        // A retransmission polled at 44 ms leaves at 50 ms: its timer (backed off to 60 ms)
        // moves, and ACK 2 at 51 ms is 1 ms after it left (7 ms after it was polled, which
        // would not prove the timeout spurious). The original DATA 2 keeps its time: a 37 ms
        // sample, SRTT 13.375, RTTVAR 10.5, RTO 55.375 ms.
        assert_eq!(fire(&mut t), c.ms(44));
        assert_eq!(t.poll_transmit(c.ms(44)), blocks(2, 1, true));
        assert_eq!(t.poll_timeout(), Some(c.ms(104)));
        let mut unsent = t.clone();
        t.handle_sent(c.ms(50));
        assert_eq!(t.poll_timeout(), Some(c.ms(110)));
        t.handle_datagram(c.ms(51), &ack(2));
        assert_eq!(t.stats().spurious, 1);
        assert_eq!(t.rto(), Duration::from_micros(55_375));
        unsent.handle_datagram(c.ms(51), &ack(2));
        assert_eq!(unsent.stats().spurious, 0);
        // Once ended, nothing moves.
        assert_eq!(t.poll_transmit(c.ms(51)), blocks(3, 1, false));
        t.handle_datagram(c.ms(52), &error(0, "bye"));
        t.handle_sent(c.ms(60));
        assert_ended(&mut t, c.ms(60), Outcome::Cancelled(ErrorCode::Undefined));
        assert_eq!(t.stats().ended, Some(c.ms(52)));
    }

    /// Runs a lock-step transfer of `len` bytes to the end with instant ACKs; returns the blocks
    /// sent with their lengths.
    fn run_lockstep(len: u64) -> (Transfer, Vec<(u64, usize)>) {
        let c = Clock::new();
        let mut t = Transfer::new(c.ms(0), Negotiated::DEFAULT, len, Config::default());
        let mut sent = Vec::new();
        for step in 0.. {
            let now = c.ms(step);
            for tx in drain(&mut t, now) {
                let Transmit::Blocks(run) = tx else {
                    panic!("{tx:?}")
                };
                for b in run.iter() {
                    sent.push((b, t.block_len(b)));
                    t.handle_datagram(now, &ack(Transfer::wire_block(b)));
                }
            }
            if t.outcome().is_some() {
                break;
            }
        }
        assert_ended(&mut t, c.ms(99_999), Outcome::Complete);
        (t, sent)
    }

    #[test]
    fn the_final_block_is_short() {
        let (mut t, sent) = run_lockstep(1300);
        assert_eq!(sent, [(1, 512), (2, 512), (3, 276)]);
        // Late datagrams change nothing.
        t.handle_datagram(Instant::now(), &ack(3));
        t.handle_datagram(Instant::now(), b"\x00\x01f\x00octet\x00");
        assert_ended(&mut t, Instant::now(), Outcome::Complete);
        assert_eq!(t.last_block(), 3);
        assert_eq!((t.offset(1), t.offset(2), t.offset(3)), (0, 512, 1024));
        assert_eq!((t.stats().bytes, t.stats().blocks), (1300, 3));
    }

    #[test]
    fn an_exact_multiple_ends_with_an_empty_block() {
        let (t, sent) = run_lockstep(1024);
        assert_eq!(sent, [(1, 512), (2, 512), (3, 0)]);
        assert_eq!((t.stats().bytes, t.stats().blocks), (1024, 3));
    }

    #[test]
    fn an_empty_file_is_one_empty_block() {
        let (t, sent) = run_lockstep(0);
        assert_eq!(sent, [(1, 0)]);
        assert!(t.is_empty());
        assert_eq!((t.stats().bytes, t.stats().blocks), (0, 1));
    }

    #[test]
    fn block_numbers_roll_over_past_65535() {
        const BLOCKS: u64 = 70_000;
        for windowsize in [1u16, 64] {
            let c = Clock::new();
            let raw = format!("blksize\x008\x00windowsize\x00{windowsize}\x00");
            let len = BLOCKS * 8 - 3;
            let mut t = Transfer::new(c.ms(0), negotiated(raw.as_bytes()), len, Config::default());
            assert_eq!(t.last_block(), BLOCKS);
            assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
            t.handle_datagram(c.ms(1), &ack(0));
            let mut wires = Vec::with_capacity(BLOCKS as usize);
            let mut now = c.ms(1);
            while t.outcome().is_none() {
                let mut last = None;
                for tx in drain(&mut t, now) {
                    let Transmit::Blocks(run) = tx else {
                        panic!("{tx:?}")
                    };
                    assert!(!run.retransmit);
                    wires.extend(run.iter().map(Transfer::wire_block));
                    last = run.iter().last();
                }
                now += ms(1);
                t.handle_datagram(now, &ack(Transfer::wire_block(last.unwrap())));
            }
            assert_ended(&mut t, now, Outcome::Complete);
            assert_eq!(wires.len() as u64, BLOCKS);
            assert_eq!(&wires[65533..65539], [65534, 65535, 0, 1, 2, 3]);
            assert!(wires.iter().enumerate().all(|(i, &w)| w == (i + 1) as u16));
            assert_eq!(
                (t.stats().blocks, t.stats().bytes, t.stats().retransmits),
                (BLOCKS, len, 0)
            );
        }
    }

    #[test]
    fn duplicate_ack_sends_nothing_and_keeps_the_timer() {
        let c = Clock::new();
        let mut t = lockstep(c, 512 * 10, Config::default());
        // The Sorcerer's Apprentice: DATA 1 is retransmitted, and both copies are ACKed.
        assert_eq!(fire(&mut t), c.ms(1000));
        assert_eq!(t.poll_transmit(c.ms(1000)), blocks(1, 1, true));
        t.handle_datagram(c.ms(1010), &ack(1));
        assert_eq!(t.poll_transmit(c.ms(1010)), blocks(2, 1, false));
        let deadline = t.poll_timeout();
        let sent = t.stats().sent;
        for at in [1020, 1030, 1500] {
            t.handle_datagram(c.ms(at), &ack(1));
            assert_eq!(
                t.poll_transmit(c.ms(at)),
                None,
                "a duplicate ACK sends nothing"
            );
            assert_eq!(t.poll_timeout(), deadline, "nor moves the timer");
        }
        assert_eq!(t.stats().sent, sent);
        assert_eq!(t.outcome(), None);
        // With a window the duplicate of the window's end is just as inert.
        let mut t = Transfer::new(
            c.ms(0),
            negotiated(b"windowsize\x004\x00"),
            512 * 20,
            Config::default(),
        );
        drain(&mut t, c.ms(0));
        t.handle_datagram(c.ms(1), &ack(0));
        assert_eq!(t.poll_transmit(c.ms(1)), blocks(1, 4, false));
        t.handle_datagram(c.ms(2), &ack(4));
        assert_eq!(t.poll_transmit(c.ms(2)), blocks(5, 4, false));
        let deadline = t.poll_timeout();
        t.handle_datagram(c.ms(3), &ack(4));
        t.handle_datagram(c.ms(3), &ack(0));
        assert_eq!(t.poll_transmit(c.ms(3)), None);
        assert_eq!(t.poll_timeout(), deadline);
    }

    #[test]
    fn stale_acks_are_ignored_even_across_the_rollover() {
        let c = Clock::new();
        let mut t = lockstep(c, 512 * 100, Config::default());
        for b in 1..=10u16 {
            t.handle_datagram(c.ms(u64::from(b)), &ack(b));
            drain(&mut t, c.ms(u64::from(b)));
        }
        assert_eq!(t.acked(), 10);
        let deadline = t.poll_timeout();
        // Anything up to half the sequence space behind the last ACK is the past.
        for stale in [3, 0, 9, 10, 10u16.wrapping_sub(0x7fff)] {
            t.handle_datagram(c.ms(20), &ack(stale));
            assert_eq!(t.poll_transmit(c.ms(20)), None, "ACK {stale}");
            assert_eq!(t.poll_timeout(), deadline);
        }
        assert_eq!(t.outcome(), None);

        // Past the rollover, ACK 65535 (absolute 65535) is behind absolute 65537 (wire 1).
        let raw = b"blksize\x008\x00windowsize\x0064\x00";
        let mut t = Transfer::new(c.ms(0), negotiated(raw), 8 * 70_000, Config::default());
        drain(&mut t, c.ms(0));
        t.handle_datagram(c.ms(0), &ack(0));
        while t.acked() < 65537 {
            let run = match drain(&mut t, c.ms(0))[..] {
                [Transmit::Blocks(run)] => run,
                ref other => panic!("{other:?}"),
            };
            let to = (run.first + u64::from(run.count) - 1).min(65537);
            t.handle_datagram(c.ms(0), &ack(wire(to)));
        }
        assert_eq!(t.poll_transmit(c.ms(0)), blocks(65538, 64, false));
        for stale in [65535, 65534, 0, 1] {
            t.handle_datagram(c.ms(1), &ack(stale));
            assert_eq!(t.poll_transmit(c.ms(1)), None, "ACK {stale}");
        }
        assert_eq!(t.outcome(), None);
        // Wire 2 is absolute 65538, in flight.
        t.handle_datagram(c.ms(1), &ack(2));
        assert_eq!(t.acked(), 65538);
    }

    #[test]
    fn ack_for_a_block_never_sent_is_an_error() {
        let c = Clock::new();
        let mut t = lockstep(c, 512 * 10, Config::default());
        t.handle_datagram(c.ms(5), &ack(2));
        // The ERROR must go out before the outcome shows.
        assert_eq!(t.outcome(), None);
        assert_eq!(
            t.poll_transmit(c.ms(5)),
            Some(Transmit::Error {
                code: ErrorCode::IllegalOperation,
                message: "Invalid request, invalid block number requested",
            })
        );
        assert_ended(
            &mut t,
            c.ms(5),
            Outcome::Failed(ErrorCode::IllegalOperation),
        );
        assert_eq!(t.stats().ended, Some(c.ms(5)));

        // Past the end of the window, too.
        let mut t = Transfer::new(
            c.ms(0),
            negotiated(b"windowsize\x004\x00"),
            512 * 20,
            Config::default(),
        );
        drain(&mut t, c.ms(0));
        t.handle_datagram(c.ms(1), &ack(0));
        assert_eq!(t.poll_transmit(c.ms(1)), blocks(1, 4, false));
        t.handle_datagram(c.ms(2), &ack(5));
        assert!(matches!(
            t.poll_transmit(c.ms(2)),
            Some(Transmit::Error {
                code: ErrorCode::IllegalOperation,
                ..
            })
        ));
        assert_ended(
            &mut t,
            c.ms(2),
            Outcome::Failed(ErrorCode::IllegalOperation),
        );
    }

    #[test]
    fn error_from_the_client_cancels_quietly() {
        let c = Clock::new();
        let mut t = lockstep(c, 512 * 10, Config::default());
        t.handle_datagram(c.ms(5), &ack(1));
        drain(&mut t, c.ms(5));
        t.handle_datagram(c.ms(7), &error(0, "user cancelled"));
        assert_ended(&mut t, c.ms(7), Outcome::Cancelled(ErrorCode::Undefined));
        assert_eq!(t.stats().ended, Some(c.ms(7)));
        // Nothing revives it, nor turns it into a failure: an ERROR is never answered.
        t.handle_datagram(c.ms(8), &ack(2));
        t.handle_datagram(c.ms(8), b"\x00\x03\x00\x02data");
        assert_eq!(t.poll_transmit(c.ms(8)), None);
        t.handle_timeout(c.ms(100_000));
        t.abort(c.ms(9), ErrorCode::Undefined, "late");
        assert_ended(&mut t, c.ms(9), Outcome::Cancelled(ErrorCode::Undefined));
    }

    #[test]
    fn error_8_after_the_oack_is_an_edk2_size_probe() {
        let c = Clock::new();
        let opts = Negotiated::negotiate(
            &Options::parse(b"tsize\x000\x00blksize\x001468\x00windowsize\x004\x00"),
            &Limits::default(),
            || Some(123_456),
        )
        .unwrap();
        let mut t = Transfer::new(c.ms(0), opts, 123_456, Config::default());
        assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
        let mut buf = [0; 128];
        let n = t.emit_oack(&mut buf).unwrap();
        assert_eq!(
            &buf[..n],
            b"\x00\x06tsize\x00123456\x00blksize\x001468\x00windowsize\x004\x00"
        );
        t.handle_datagram(c.ms(3), &error(8, "tsize only"));
        assert_ended(
            &mut t,
            c.ms(3),
            Outcome::Cancelled(ErrorCode::OptionRefused),
        );
        assert_eq!(t.stats().sent, 1);
    }

    #[test]
    fn anything_but_ack_or_error_fails_the_transfer_and_garbage_is_dropped() {
        let c = Clock::new();
        let mut t = lockstep(c, 512 * 10, Config::default());
        let deadline = t.poll_timeout();
        for garbage in [
            &b""[..],
            b"\x00",
            b"\x00\x04",
            b"\x00\x09ab",
            b"\x00\x05\x00\x01x",
        ] {
            t.handle_datagram(c.ms(1), garbage);
            assert_eq!(t.poll_transmit(c.ms(1)), None, "{garbage:?}");
            assert_eq!(t.poll_timeout(), deadline);
        }
        t.handle_datagram(c.ms(2), b"\x00\x03\x00\x01hello");
        assert_eq!(
            t.poll_transmit(c.ms(2)),
            Some(Transmit::Error {
                code: ErrorCode::IllegalOperation,
                message: "Illegal TFTP operation: only ACK and ERROR are expected",
            })
        );
        assert_ended(
            &mut t,
            c.ms(2),
            Outcome::Failed(ErrorCode::IllegalOperation),
        );
    }

    #[test]
    fn windows_slide_from_the_acknowledged_block() {
        for windowsize in [1u16, 4, 16, 64] {
            let c = Clock::new();
            let w = u64::from(windowsize);
            let raw = format!("blksize\x008\x00windowsize\x00{windowsize}\x00");
            let last = 10 * w + 3;
            let mut t = Transfer::new(
                c.ms(0),
                negotiated(raw.as_bytes()),
                8 * last - 1,
                Config::default(),
            );
            assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
            t.handle_datagram(c.ms(1), &ack(0));
            assert_eq!(t.poll_transmit(c.ms(1)), blocks(1, windowsize, false));
            assert_eq!(t.poll_transmit(c.ms(1)), None);
            let mut expected_retransmits = 0;
            let mut first = w + 1;
            if w > 1 {
                // The client lost block mid + 1: the next window starts right after `mid`,
                // and the blocks of the last window sent again count as retransmissions.
                let mid = w / 2;
                t.handle_datagram(c.ms(2), &ack(wire(mid)));
                assert_eq!(t.poll_transmit(c.ms(2)), blocks(mid + 1, windowsize, false));
                expected_retransmits += w - mid;
                assert_eq!(t.stats().retransmits, expected_retransmits);
                assert_eq!(t.poll_timeout(), Some(c.ms(2) + t.rto()));
                first = mid + w + 1;
            }
            // The ACK of a window's last block slides it fully.
            t.handle_datagram(c.ms(3), &ack(wire(first - 1)));
            assert_eq!(t.poll_transmit(c.ms(3)), blocks(first, windowsize, false));
            assert_eq!(t.stats().retransmits, expected_retransmits);
            // A timeout resends the window from the last ACK (RFC 7440 §4).
            let at = fire(&mut t);
            assert_eq!(t.poll_transmit(at), blocks(first, windowsize, true));
            expected_retransmits += w;
            assert_eq!(t.stats().retransmits, expected_retransmits);
            // Full windows to the end; the final one is cut short.
            let mut now = at;
            loop {
                now += ms(1);
                let end = (first + w - 1).min(last);
                t.handle_datagram(now, &ack(wire(end)));
                if end == last {
                    break;
                }
                first = end + 1;
                let count = (last - end).min(w) as u16;
                assert_eq!(t.poll_transmit(now), blocks(first, count, false));
            }
            assert_ended(&mut t, now, Outcome::Complete);
            assert_eq!(t.stats().retransmits, expected_retransmits);
            assert_eq!(t.stats().blocks, last);
            assert_eq!(t.stats().bytes, 8 * last - 1);
        }
    }

    #[test]
    fn inbound_classifies_what_the_main_port_receives() {
        let Inbound::Read(req) =
            inbound(b"\x00\x01boot/pxelinux.0\x00octet\x00blksize\x001468\x00")
        else {
            panic!("an RRQ starts a transfer")
        };
        assert_eq!(req.filename, "boot/pxelinux.0");
        assert_eq!(req.options.get("blksize"), Some(&b"1468"[..]));
        let reject = |dgram: &[u8]| match inbound(dgram) {
            Inbound::Reject { code, .. } => code,
            other => panic!("{dgram:?}: {other:?}"),
        };
        assert_eq!(
            reject(b"\x00\x02upload\x00octet\x00"),
            ErrorCode::AccessViolation
        );
        for wrong_port in [
            &b"\x00\x03\x00\x01data"[..],
            b"\x00\x04\x00\x01",
            b"\x00\x06blksize\x00512\x00",
        ] {
            assert_eq!(reject(wrong_port), ErrorCode::IllegalOperation);
        }
        assert_eq!(reject(b"\x00\x09whatever"), ErrorCode::IllegalOperation);
        assert_eq!(
            reject(b"\x00\x01ok.bin"),
            ErrorCode::IllegalOperation,
            "unterminated, but long enough to answer"
        );
        assert_eq!(reject(b"\x00\x01f\x00mail\x00"), ErrorCode::Undefined);
        assert_eq!(
            reject(b"\x00\x01a\x1bb\x00octet\x00"),
            ErrorCode::AccessViolation
        );
        assert_eq!(inbound(b"\x00\x05\x00\x01oops\x00"), Inbound::Ignore);
        assert_eq!(inbound(b""), Inbound::Ignore);
        assert_eq!(inbound(b"\x01"), Inbound::Ignore);
        // Shorter than any packet: an ERROR would be ten times the size.
        assert_eq!(inbound(b"\x00\x04\x00"), Inbound::Ignore);
        assert_eq!(inbound(b"\x00\x00"), Inbound::Ignore);
    }

    #[test]
    fn stats_count_what_was_sent_and_acknowledged() {
        let c = Clock::new();
        let mut t = Transfer::new(
            c.ms(0),
            negotiated(b"blksize\x00512\x00"),
            1300,
            Config::default(),
        );
        assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
        t.handle_datagram(c.ms(10), &ack(0));
        assert_eq!(t.poll_transmit(c.ms(10)), blocks(1, 1, false));
        t.handle_datagram(c.ms(20), &ack(1));
        assert_eq!((t.stats().bytes, t.stats().blocks), (512, 1));
        assert_eq!(t.stats().duration(c.ms(25)), ms(25));
        assert_eq!(t.poll_transmit(c.ms(20)), blocks(2, 1, false));
        let at = fire(&mut t);
        assert_eq!(t.poll_transmit(at), blocks(2, 1, true));
        t.handle_datagram(at + ms(10), &ack(2));
        assert_eq!(t.poll_transmit(at + ms(10)), blocks(3, 1, false));
        t.handle_datagram(at + ms(20), &ack(3));
        assert_ended(&mut t, at + ms(20), Outcome::Complete);
        let stats = *t.stats();
        assert_eq!(
            (stats.bytes, stats.blocks, stats.sent, stats.retransmits),
            (1300, 3, 5, 1)
        );
        assert_eq!(stats.started, c.ms(0));
        assert_eq!(stats.ended, Some(at + ms(20)));
        assert_eq!(stats.duration(at + ms(99_999)), at + ms(20) - c.ms(0));
    }

    #[test]
    fn abort_sends_an_error_then_fails() {
        let c = Clock::new();
        let mut t = lockstep(c, 512 * 10, Config::default());
        t.handle_datagram(c.ms(5), &ack(1));
        // The driver aborts before it sends the block it could not read.
        t.abort(c.ms(5), ErrorCode::Undefined, "Short read");
        assert_eq!(t.outcome(), None);
        assert_eq!(
            drain(&mut t, c.ms(5)),
            [Transmit::Error {
                code: ErrorCode::Undefined,
                message: "Short read",
            }]
        );
        assert_ended(&mut t, c.ms(5), Outcome::Failed(ErrorCode::Undefined));
        t.abort(c.ms(6), ErrorCode::DiskFull, "again");
        assert_ended(&mut t, c.ms(6), Outcome::Failed(ErrorCode::Undefined));
    }

    #[test]
    fn completion_discards_a_retransmission_not_yet_sent() {
        let c = Clock::new();
        let mut t = lockstep(c, 100, Config::default());
        // The timer fires, and the ACK arrives before the driver sent the retransmission.
        fire(&mut t);
        t.handle_datagram(c.ms(1001), &ack(1));
        assert_ended(&mut t, c.ms(1001), Outcome::Complete);
        assert_eq!(t.stats().sent, 1);
    }

    /// A lossy in-memory link between the server [`Transfer`] and a simulated RFC 1350/7440
    /// reader, on a virtual clock that jumps to the earliest wake-up (in the style of
    /// quinn-proto's `Pair`).
    mod sim {
        use std::cmp::Reverse;
        use std::collections::{BinaryHeap, VecDeque};

        use super::super::*;
        use crate::packet::{self, Options};

        /// xorshift64* (Vigna 2014): enough randomness for a link model, without a dependency.
        pub struct Rng(u64);

        impl Rng {
            pub fn new(seed: u64) -> Self {
                Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
            }

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

            pub fn below(&mut self, n: u64) -> u64 {
                self.next_u64() % n.max(1)
            }
        }

        /// What one direction of the link does to each datagram.
        #[derive(Debug, Clone, Copy)]
        pub struct Link {
            pub loss: f64,
            pub dup: f64,
            /// The chance that a datagram is held back by up to `reorder_delay`.
            pub reorder: f64,
            pub latency: Duration,
            pub reorder_delay: Duration,
        }

        impl Link {
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
        #[derive(Default)]
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

            fn pop(&mut self) -> Vec<u8> {
                self.queue.pop().expect("a datagram is due").0 .2
            }

            fn is_empty(&self) -> bool {
                self.queue.is_empty()
            }
        }

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ClientState {
            /// Waiting for the OACK (options asked) or DATA 1.
            Waiting,
            Receiving,
            /// Got the final block; re-ACKs it if it comes again, until then.
            Dallying(Instant),
            Done,
            Failed(&'static str),
        }

        /// A reader as RFC 1350 and RFC 7440 describe it.
        pub struct Client {
            blksize: usize,
            windowsize: u64,
            /// Whether the request asked options, so that an OACK must come first.
            options: bool,
            tsize: Option<u64>,
            timeout: Duration,
            retries: u32,
            dally: Duration,
            pub state: ClientState,
            pub file: Vec<u8>,
            /// The highest block received in order (absolute).
            pos: u64,
            /// The block of the last ACK sent (absolute).
            last_ack: Option<u64>,
            /// Blocks received in order since the last ACK.
            since_ack: u64,
            /// Whether the gap after `pos` was already reported.
            gap_acked: bool,
            timer: Option<Instant>,
            tries: u32,
            outbox: VecDeque<Vec<u8>>,
            pub acks: u64,
        }

        impl Client {
            fn new(blksize: u16, windowsize: u16, options: bool, tsize: Option<u64>) -> Self {
                Self {
                    blksize: usize::from(blksize),
                    windowsize: u64::from(windowsize),
                    options,
                    tsize,
                    timeout: Duration::from_secs(1),
                    retries: 30,
                    dally: Duration::from_secs(60),
                    state: ClientState::Waiting,
                    file: Vec::new(),
                    pos: 0,
                    last_ack: None,
                    since_ack: 0,
                    gap_acked: false,
                    timer: None,
                    tries: 0,
                    outbox: VecDeque::new(),
                    acks: 0,
                }
            }

            fn start(&mut self, now: Instant) {
                // The RRQ itself is implicit: the server transfer exists already.
                self.timer = Some(now + self.timeout);
            }

            fn poll_timeout(&self) -> Option<Instant> {
                match self.state {
                    ClientState::Dallying(until) => Some(until),
                    ClientState::Done | ClientState::Failed(_) => None,
                    _ => self.timer,
                }
            }

            fn send_ack(&mut self, now: Instant, block: u64) {
                let [hi, lo] = (block as u16).to_be_bytes();
                self.outbox.push_back(vec![0, 4, hi, lo]);
                self.acks += 1;
                self.last_ack = Some(block);
                self.since_ack = 0;
                if !matches!(self.state, ClientState::Dallying(_)) {
                    self.timer = Some(now + self.timeout);
                }
            }

            fn handle_datagram(&mut self, now: Instant, dgram: &[u8]) {
                if matches!(self.state, ClientState::Done | ClientState::Failed(_)) {
                    return;
                }
                match Packet::parse(dgram).expect("the server sends well-formed packets") {
                    Packet::Oack(opts) => {
                        assert!(self.options, "an OACK for a request without options");
                        if self.pos > 0 {
                            // A late copy: the transfer is under way.
                            return;
                        }
                        let get = |name| {
                            opts.get(name)
                                .map(|v| std::str::from_utf8(v).unwrap().parse::<u64>().unwrap())
                        };
                        assert_eq!(get("blksize").unwrap_or(512), self.blksize as u64);
                        assert_eq!(get("windowsize").unwrap_or(1), self.windowsize);
                        assert_eq!(get("tsize"), self.tsize);
                        self.state = ClientState::Receiving;
                        self.tries = 0;
                        self.send_ack(now, 0);
                    }
                    Packet::Data { block, data } => self.data(now, block, data),
                    Packet::Error { .. } => self.state = ClientState::Failed("ERROR from server"),
                    other => panic!("a reader never gets {other:?}"),
                }
            }

            fn data(&mut self, now: Instant, wire_block: u16, data: &[u8]) {
                assert!(
                    !self.options || self.last_ack.is_some(),
                    "DATA before the OACK was acknowledged"
                );
                let dallying = matches!(self.state, ClientState::Dallying(_));
                // Unwrap the 16-bit number around the next expected block.
                let delta = wire_block.wrapping_sub((self.pos + 1) as u16) as i16;
                let abs = (self.pos + 1).checked_add_signed(i64::from(delta)).unwrap();
                if abs == self.pos + 1 && !dallying {
                    assert!(data.len() <= self.blksize, "oversized block {abs}");
                    let offset = (abs - 1) as usize * self.blksize;
                    self.file.resize(offset + data.len(), 0);
                    self.file[offset..].copy_from_slice(data);
                    self.state = ClientState::Receiving;
                    self.pos = abs;
                    self.since_ack += 1;
                    self.gap_acked = false;
                    self.tries = 0;
                    if data.len() < self.blksize {
                        self.send_ack(now, abs);
                        self.state = ClientState::Dallying(now + self.dally);
                        self.timer = None;
                    } else if self.since_ack >= self.windowsize {
                        self.send_ack(now, abs);
                    } else {
                        self.timer = Some(now + self.timeout);
                    }
                } else if abs > self.pos {
                    assert!(!dallying, "DATA {abs} past the final block {}", self.pos);
                    // RFC 7440 §4: report a sequence error with the last block in order, once.
                    if !self.gap_acked {
                        self.gap_acked = true;
                        self.send_ack(now, self.pos);
                    }
                } else if Some(abs) == self.last_ack {
                    // The server did not hear that ACK: say again where we are.
                    self.send_ack(now, self.pos);
                }
            }

            fn handle_timeout(&mut self, now: Instant) {
                match self.state {
                    ClientState::Dallying(until) if now >= until => self.state = ClientState::Done,
                    ClientState::Waiting | ClientState::Receiving
                        if self.timer.is_some_and(|t| now >= t) =>
                    {
                        self.tries += 1;
                        if self.tries > self.retries {
                            self.state = ClientState::Failed("client gave up");
                        } else if self.last_ack.is_some() {
                            self.send_ack(now, self.pos);
                        } else {
                            self.timer = Some(now + self.timeout);
                        }
                    }
                    _ => {}
                }
            }
        }

        /// The file's bytes: a position hash, so a misplaced block shows.
        pub fn pattern(len: usize) -> Vec<u8> {
            (0..len as u64)
                .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
                .collect()
        }

        #[derive(Debug, Clone, Copy)]
        pub struct Case {
            pub loss: f64,
            pub windowsize: u16,
            pub blksize: u16,
            pub len: usize,
            pub seed: u64,
        }

        #[derive(Debug)]
        pub struct Report {
            pub outcome: Option<Outcome>,
            pub client: ClientState,
            pub identical: bool,
            pub blocks: u64,
            pub stats: Stats,
            pub client_acks: u64,
            pub steps: u64,
            pub elapsed: Duration,
        }

        /// The server and the client, the link between them, and the virtual clock.
        pub struct Pair {
            pub now: Instant,
            start: Instant,
            pub server: Transfer,
            pub client: Client,
            file: Vec<u8>,
            link: Link,
            rng: Rng,
            to_client: Wire,
            to_server: Wire,
            pub steps: u64,
        }

        impl Pair {
            pub fn new(case: &Case) -> Self {
                let now = Instant::now();
                let file = pattern(case.len);
                let mut raw = [0u8; 128];
                let mut n = 0;
                let mut options = false;
                if case.blksize != 512 {
                    packet::push_option(&mut raw, &mut n, "blksize", &case.blksize.to_string())
                        .unwrap();
                    options = true;
                }
                if case.windowsize != 1 {
                    let w = case.windowsize.to_string();
                    packet::push_option(&mut raw, &mut n, "windowsize", &w).unwrap();
                    options = true;
                }
                if options {
                    packet::push_option(&mut raw, &mut n, "tsize", "0").unwrap();
                }
                let opts =
                    Negotiated::negotiate(&Options::parse(&raw[..n]), &super::UNCAPPED, || {
                        Some(case.len as u64)
                    })
                    .unwrap();
                assert_eq!(opts.has_oack(), options);
                // The simulated client never repeats its request, which is what answers a lost
                // first reply in real life; allow it the same retries as later packets.
                let config = Config {
                    retries: 10,
                    retries_unanswered: 10,
                    ..Config::default()
                };
                let server = Transfer::new(now, opts, case.len as u64, config);
                let mut client = Client::new(
                    case.blksize,
                    case.windowsize,
                    options,
                    options.then_some(case.len as u64),
                );
                client.start(now);
                Self {
                    now,
                    start: now,
                    server,
                    client,
                    file,
                    link: Link::lossy(case.loss),
                    rng: Rng::new(case.seed),
                    to_client: Wire::default(),
                    to_server: Wire::default(),
                    steps: 0,
                }
            }

            /// Plays the server's driver: sends everything the transfer asks for.
            fn drive_server(&mut self) {
                let now = self.now;
                while let Some(transmit) = self.server.poll_transmit(now) {
                    match transmit {
                        Transmit::Oack => {
                            let mut buf = [0; 512];
                            let n = self.server.emit_oack(&mut buf).unwrap();
                            let dgram = buf[..n].to_vec();
                            self.to_client.send(now, dgram, &self.link, &mut self.rng);
                        }
                        Transmit::Blocks(run) => {
                            for block in run.iter() {
                                let mut header = [0; packet::DATA_HEADER_LEN];
                                packet::emit_data_header(Transfer::wire_block(block), &mut header);
                                let offset = self.server.offset(block) as usize;
                                let len = self.server.block_len(block);
                                let mut dgram = Vec::with_capacity(header.len() + len);
                                dgram.extend_from_slice(&header);
                                dgram.extend_from_slice(&self.file[offset..offset + len]);
                                self.to_client.send(now, dgram, &self.link, &mut self.rng);
                            }
                        }
                        Transmit::Error { code, message } => {
                            let mut buf = [0; 512];
                            let n = packet::emit_error(code, message, &mut buf).unwrap();
                            let dgram = buf[..n].to_vec();
                            self.to_client.send(now, dgram, &self.link, &mut self.rng);
                        }
                    }
                }
            }

            fn drive_client(&mut self) {
                while let Some(dgram) = self.client.outbox.pop_front() {
                    self.to_server
                        .send(self.now, dgram, &self.link, &mut self.rng);
                }
            }

            /// Runs until the server has ended and nothing is in flight; each event (an arrival
            /// or a timer) is one step.
            pub fn run(&mut self, max_steps: u64, max_time: Duration) -> Report {
                loop {
                    self.drive_server();
                    self.drive_client();
                    if self.server.outcome().is_some()
                        && self.to_client.is_empty()
                        && self.to_server.is_empty()
                    {
                        break;
                    }
                    self.steps += 1;
                    assert!(self.steps <= max_steps, "more than {max_steps} steps");
                    let next = [
                        self.to_server.next_arrival(),
                        self.to_client.next_arrival(),
                        self.server.poll_timeout(),
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
                        let dgram = self.to_server.pop();
                        // Once ended, the server's socket is closed.
                        if self.server.outcome().is_none() {
                            self.server.handle_datagram(self.now, &dgram);
                        }
                    } else if due(down) {
                        let dgram = self.to_client.pop();
                        self.client.handle_datagram(self.now, &dgram);
                    } else if due(self.server.poll_timeout()) {
                        self.server.handle_timeout(self.now);
                    } else {
                        self.client.handle_timeout(self.now);
                    }
                }
                Report {
                    outcome: self.server.outcome(),
                    client: self.client.state,
                    identical: self.client.file == self.file,
                    blocks: self.server.last_block(),
                    stats: *self.server.stats(),
                    client_acks: self.client.acks,
                    steps: self.steps,
                    elapsed: self.now - self.start,
                }
            }
        }
    }

    /// The most retransmissions a case may take: a window's worth per lost block, four times
    /// over, plus slack for a small file.
    fn retransmit_bound(blocks: u64, windowsize: u16, loss: f64) -> u64 {
        (blocks as f64 * f64::from(windowsize) * (loss * 4.0 + 0.02)) as u64 + 50
    }

    /// Runs one case and checks it; returns its report and bound.
    fn simulate(case: sim::Case) -> (sim::Report, u64) {
        let blocks = case.len as u64 / u64::from(case.blksize) + 1;
        let bound = retransmit_bound(blocks, case.windowsize, case.loss);
        let max_steps = 20 * (bound + blocks) + 1000;
        let mut pair = sim::Pair::new(&case);
        let report = pair.run(max_steps, Duration::from_secs(3600));
        assert_eq!(
            report.outcome,
            Some(Outcome::Complete),
            "{case:?}: {report:?}"
        );
        assert!(
            matches!(
                report.client,
                sim::ClientState::Dallying(_) | sim::ClientState::Done
            ),
            "{case:?}: {report:?}"
        );
        assert!(report.identical, "{case:?}: the file differs");
        assert_eq!(report.stats.bytes, case.len as u64);
        assert_eq!(report.stats.blocks, blocks);
        assert!(
            report.stats.retransmits <= bound,
            "{case:?}: {} retransmits > {bound}: {report:?}",
            report.stats.retransmits
        );
        if case.loss == 0.0 {
            assert_eq!(report.stats.retransmits, 0, "{case:?}: {report:?}");
        }
        (report, bound)
    }

    /// The matrix at one loss rate: every window, block size and interesting file size.
    fn simulate_matrix(loss: f64) {
        let started = std::time::Instant::now();
        let mut lines = Vec::new();
        let mut worst = 0.0f64;
        for windowsize in [1u16, 4, 16, 64] {
            for blksize in [512u16, 1428, 8192] {
                let b = usize::from(blksize);
                let sizes = [0, 1, b - 1, b, b + 1, 3 * b * usize::from(windowsize) + 7];
                let (mut min, mut max) = (u64::MAX, 0);
                for (i, len) in sizes.into_iter().enumerate() {
                    let seed = (loss * 1000.0) as u64 * 1_000_003
                        + u64::from(windowsize) * 10_007
                        + u64::from(blksize) * 101
                        + i as u64;
                    let case = sim::Case {
                        loss,
                        windowsize,
                        blksize,
                        len,
                        seed,
                    };
                    let (report, bound) = simulate(case);
                    let r = report.stats.retransmits;
                    (min, max) = (min.min(r), max.max(r));
                    worst = worst.max(r as f64 / bound as f64);
                    if i == sizes.len() - 1 {
                        lines.push(format!(
                            "loss {:>4.0}% w {windowsize:>2} blksize {blksize:>4}: retransmits \
                             {min}..={max} (largest file: {} blocks, {r} <= bound {bound}, \
                             {} steps, {:?} virtual)",
                            loss * 100.0,
                            report.blocks,
                            report.steps,
                            report.elapsed,
                        ));
                    }
                }
            }
        }
        for line in &lines {
            println!("{line}");
        }
        println!(
            "loss {:.0}%: 72 cases in {:?}, worst retransmits/bound {worst:.2}",
            loss * 100.0,
            started.elapsed()
        );
    }

    #[test]
    fn simulation_lossless() {
        simulate_matrix(0.0);
    }

    #[test]
    fn simulation_loss_1_percent() {
        simulate_matrix(0.01);
    }

    #[test]
    fn simulation_loss_5_percent() {
        simulate_matrix(0.05);
    }

    #[test]
    fn simulation_loss_20_percent() {
        simulate_matrix(0.20);
    }

    /// More than 65536 blocks of 8 bytes: the block numbers roll over under loss.
    fn simulate_rollover(loss: f64) {
        let started = std::time::Instant::now();
        let case = sim::Case {
            loss,
            windowsize: 16,
            blksize: 8,
            len: 70_000 * 8 + 5,
            seed: 65_536 + (loss * 100.0) as u64,
        };
        let (report, bound) = simulate(case);
        assert!(report.blocks > 65_536);
        println!(
            "rollover loss {:.0}%: {} blocks, {} retransmits <= bound {bound}, {} ACKs, {} \
             steps, {:?} virtual, {:?} real",
            loss * 100.0,
            report.blocks,
            report.stats.retransmits,
            report.client_acks,
            report.steps,
            report.elapsed,
            started.elapsed()
        );
    }

    #[test]
    fn simulation_rollover_lossless() {
        simulate_rollover(0.0);
    }

    #[test]
    fn simulation_rollover_loss_5_percent() {
        simulate_rollover(0.05);
    }

    mod props {
        use proptest::prelude::*;

        use super::super::*;
        use super::{ack, error};
        use crate::packet::{self, Options};

        #[derive(Debug, Clone)]
        enum Event {
            /// An ACK for any wire number.
            Ack(u16),
            /// An ACK near the last acknowledged block, where the interesting cases are.
            AckNear(i8),
            Error(u16),
            /// Time passes by this many milliseconds, and the timer is handled.
            Advance(u16),
            /// Time jumps to the deadline, and the timer is handled.
            Fire,
            /// Time passes by this many milliseconds, and the last run is reported sent then.
            Sent(u8),
            Datagram(Vec<u8>),
            Drain,
            Abort,
        }

        fn event() -> impl Strategy<Value = Event> {
            prop_oneof![
                2 => any::<u16>().prop_map(Event::Ack),
                8 => (-3i8..70).prop_map(Event::AckNear),
                1 => any::<u16>().prop_map(Event::Error),
                2 => (0u16..3000).prop_map(Event::Advance),
                4 => Just(Event::Fire),
                2 => any::<u8>().prop_map(Event::Sent),
                1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(Event::Datagram),
                8 => Just(Event::Drain),
                1 => Just(Event::Abort),
            ]
        }

        proptest! {
            #[test]
            fn arbitrary_events_never_panic_and_keep_the_invariants(
                blksize in prop_oneof![Just(8u16), Just(512)],
                windowsize in prop_oneof![Just(1u16), Just(2), Just(4), Just(64)],
                tsize in any::<bool>(),
                timeout in prop_oneof![Just(None), Just(Some("1")), Just(Some("0.05"))],
                len in 0u64..3000,
                retries in 0u32..6,
                events in prop::collection::vec(event(), 0..300),
            ) {
                let mut raw = [0u8; 128];
                let mut n = 0;
                if blksize != 512 {
                    packet::push_option(&mut raw, &mut n, "blksize", &blksize.to_string())
                        .unwrap();
                }
                if windowsize != 1 {
                    packet::push_option(&mut raw, &mut n, "windowsize", &windowsize.to_string())
                        .unwrap();
                }
                if tsize {
                    packet::push_option(&mut raw, &mut n, "tsize", "0").unwrap();
                }
                if let Some(t) = timeout {
                    packet::push_option(&mut raw, &mut n, "timeout", t).unwrap();
                }
                let opts =
                    Negotiated::negotiate(&Options::parse(&raw[..n]), &super::UNCAPPED, || {
                        Some(len)
                    })
                    .unwrap();
                let config = Config { retries, ..Config::default() };
                let mut now = Instant::now();
                let mut t = Transfer::new(now, opts, len, config);
                let mut ended: Option<Outcome> = None;
                for event in events {
                    match event {
                        Event::Ack(block) => t.handle_datagram(now, &ack(block)),
                        Event::AckNear(delta) => {
                            let block = t.acked().saturating_add_signed(i64::from(delta));
                            t.handle_datagram(now, &ack(wire(block)));
                        }
                        Event::Error(code) => t.handle_datagram(now, &error(code, "x")),
                        Event::Advance(ms) => {
                            now += Duration::from_millis(u64::from(ms));
                            t.handle_timeout(now);
                        }
                        Event::Fire => {
                            if let Some(deadline) = t.poll_timeout() {
                                now = now.max(deadline);
                                t.handle_timeout(now);
                            }
                        }
                        Event::Sent(ms) => {
                            now += Duration::from_millis(u64::from(ms));
                            t.handle_sent(now);
                        }
                        Event::Datagram(bytes) => t.handle_datagram(now, &bytes),
                        Event::Drain => {
                            while let Some(transmit) = t.poll_transmit(now) {
                                if let Transmit::Blocks(run) = transmit {
                                    prop_assert!(run.first >= 1 && run.count >= 1);
                                    prop_assert!(run.count <= windowsize);
                                    prop_assert!(run.first > t.acked());
                                    prop_assert!(run.iter().all(|b| b <= t.last_block()));
                                }
                            }
                        }
                        Event::Abort => t.abort(now, ErrorCode::Undefined, "abort"),
                    }
                    prop_assert!(t.acked <= t.sent && t.sent <= t.last, "{:?}", t);
                    let stats = *t.stats();
                    prop_assert_eq!(stats.blocks, t.acked);
                    prop_assert_eq!(stats.bytes, len.min(t.acked * u64::from(blksize)));
                    prop_assert!(stats.retransmits <= stats.sent);
                    prop_assert!(stats.spurious <= stats.retransmits);
                    prop_assert_eq!(stats.ended.is_some(), t.outcome.is_some());
                    match (ended, t.outcome()) {
                        (Some(before), now_) => prop_assert_eq!(now_, Some(before)),
                        (None, Some(outcome)) => ended = Some(outcome),
                        (None, None) => {
                            // Alive: something to send or a timer to wait for.
                            prop_assert!(t.pending.is_some() || t.poll_timeout().is_some());
                        }
                    }
                    if ended.is_some() {
                        prop_assert_eq!(t.poll_transmit(now), None);
                        prop_assert_eq!(t.poll_timeout(), None);
                    }
                }
            }
        }
    }
}
