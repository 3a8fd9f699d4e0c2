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
//! Windows (RFC 7440 §4) restart from a partial ACK, the client's report of a gap, but at most
//! once per retransmission timeout: within one, a partial ACK short of the resent window's end
//! only lets the window's new blocks out. Duplicated and reordered blocks, and clients that ACK
//! every block after a gap (edk2), would otherwise draw a window each, and each copy the client
//! discards yet another. WDS's variable window (`msftwindow`) sets each window from the byte
//! its ACKs carry.
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
            // Two: the last wait then ends 7 s after the first packet, past the 5 s after which
            // tftp-hpa's and BSD-derived clients send their ACK again. With one (3 s), a
            // client whose first ACK and its answer to the retransmission were both lost
            // (1 % of transfers at 5 % loss) found the transfer gone when it asked again.
            retries_unanswered: 2,
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
    /// Blocks per window: `windowsize`, or with `msftwindow` what the client's last ACK asked.
    window: u16,
    /// The last window sent again from a partial ACK: `sent` then, and when (see
    /// [`Transfer::handle_ack`]).
    rewound: Option<(u64, Instant)>,
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
    /// The round trip the last ACK measured, until [`Transfer::take_rtt_sample`] takes it.
    sample: Option<Duration>,
    /// A floor under the adaptive timeout that the driver sets from what it knows beyond this
    /// transfer (see [`Transfer::set_rto_floor`]).
    rto_floor: Duration,
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
        let blksize = u64::from(opts.blksize().get());
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
            window: opts.windowsize().get(),
            rewound: None,
            repeats: 0,
            answered: false,
            backoff: 0,
            progress_at: now,
            rtt: RttEstimator::new(config.rto_initial),
            sample: None,
            rto_floor: Duration::ZERO,
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
            Ok(Packet::Ack { block }) => {
                // WDS's variable window: the byte after the block number is the next window.
                if let (true, Some(&next)) = (self.opts.msftwindow(), datagram.get(4)) {
                    self.set_window(next);
                }
                self.handle_ack(now, block)
            }
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

    /// Sets the next window to `blocks` as an `msftwindow` client asks, within
    /// [`Negotiated::window_max`] (0 is taken for 1).
    pub fn set_window(&mut self, blocks: u8) {
        self.window = u16::from(blocks).clamp(1, self.opts.window_max().get());
    }

    /// Blocks per window now (see [`Transfer::set_window`]).
    pub fn window_size(&self) -> u16 {
        self.window
    }

    /// Whether what is queued to send starts right after the acknowledged block, so it covers
    /// every block a driver still holds unsent from an earlier run.
    pub fn resends_from_acked(&self) -> bool {
        matches!(self.pending, Some(Transmit::Blocks(b)) if b.first == self.acked + 1)
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
            } else if block < self.sent && self.recovering(now, block) {
                // A partial ACK while a window resent for an earlier one is on its way: most
                // likely the same loss or reordering seen again (edk2 ACKs every block after a
                // gap; a reordered block draws an ACK of its own). Resending again would send
                // the same blocks once per such ACK, and each resent copy the client discards
                // draws more of them: a window's worth of traffic multiplied. Only the blocks
                // the new window adds go out; a loss within the resent window is the timer's.
                let end = (self.acked + u64::from(self.window)).min(self.last);
                if self.pending.is_some() {
                    // The resent window has not gone out yet (the driver was still sending):
                    // it goes from the new ACK instead.
                    self.queue(self.window(false));
                } else if end > self.sent {
                    self.queue(Transmit::Blocks(Blocks {
                        first: self.sent + 1,
                        // At most `window`, a u16.
                        count: (end - self.sent) as u16,
                        retransmit: false,
                    }));
                } else {
                    // Nothing new to send: the timer restarts for what is in flight (RFC
                    // 6298 §5.3), as a send would restart it.
                    self.wait = self.wait(now);
                    self.deadline = Some(now + self.wait);
                }
            } else {
                if block < self.sent {
                    let end = (self.acked + u64::from(self.window)).min(self.last);
                    self.rewound = Some((self.sent.max(end), now));
                }
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

    /// Whether a partial ACK of `block` comes within a retransmission timeout of the last
    /// window resent, and short of its end: at most one window goes again per round trip,
    /// whatever the duplicate and partial ACKs say. Within that time a partial ACK is most
    /// often the client's answer to a copy it already had (a duplicate, a reordered block, a
    /// block the resent window repeated): resending on it would resend on every such answer,
    /// each resent copy drawing another.
    fn recovering(&self, now: Instant, block: u64) -> bool {
        // The measured one, never a client's fixed `timeout` (up to 255 s): a loss inside the
        // resent window waits at most this long.
        let rto = self.rtt.rto(&self.config).min(self.base_rto());
        self.rewound
            .is_some_and(|(end, at)| block < end && now.saturating_duration_since(at) < rto)
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

    /// Whether the client never answered the OACK, nor sent anything else (RFC 2347 clients
    /// answer it with ACK 0 or an ERROR): hardware that cannot take options behaves so.
    pub fn oack_unanswered(&self) -> bool {
        self.oack && !self.answered
    }

    /// Whether the transfer has ended, or ends once the ERROR it queued has gone out: no more
    /// DATA is to be sent.
    pub fn is_over(&self) -> bool {
        self.outcome.is_some()
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
        block.saturating_sub(1) * u64::from(self.opts.blksize().get())
    }

    /// The payload length of absolute block `block`: `blksize`, less for the final block.
    pub fn block_len(&self, block: u64) -> usize {
        let rest = self.len.saturating_sub(self.offset(block));
        rest.min(u64::from(self.opts.blksize().get())) as usize
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

    /// Sets a floor under the adaptive retransmission timeout (never past `rto_max`; a timeout
    /// the client fixed is kept as it is), for the next time the timer is armed.
    ///
    /// A driver serving many transfers to one place learns things no single transfer can: when
    /// one transfer's timeout proves spurious ([`Stats::spurious`]), the clients of that place
    /// are answering slower than the others' estimates say, and their timers should wait at
    /// least that long for a while rather than each transfer discovering it with a duplicate.
    pub fn set_rto_floor(&mut self, floor: Duration) {
        self.rto_floor = floor;
    }

    /// The round trip the last ACK measured, once: for a driver that learns from many
    /// transfers together what [`set_rto_floor`](Self::set_rto_floor) should be. It is exact
    /// for a block sent once (Karn's rule) and otherwise a lower bound (the time since the last
    /// send): never longer than a round trip that happened. The round trip a spurious timeout
    /// revealed is used by this transfer only (it may be a loss misjudged).
    pub fn take_rtt_sample(&mut self) -> Option<Duration> {
        self.sample.take()
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
        let count = (self.last - self.acked).min(u64::from(self.window));
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
        let count = (self.last - self.acked).min(u64::from(self.window));
        Transmit::Blocks(Blocks {
            first: self.acked + 1,
            // At most `window`, a u16.
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
        let wait = self.wait(now);
        self.sent_at = now;
        self.wait = wait;
        self.deadline = Some(now + wait);
    }

    /// How long the timer waits from `now` for what is in flight.
    fn wait(&self, now: Instant) -> Duration {
        let mut wait = self.base_rto();
        if self.opts.timeout().is_none() {
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
        wait
    }

    fn base_rto(&self) -> Duration {
        match self.opts.timeout() {
            Some(fixed) => fixed,
            None => self
                .rtt
                .rto(&self.config)
                .max(self.rto_floor.min(self.config.rto_max)),
        }
    }

    /// The client acknowledged `block` (0: the OACK), new progress.
    fn progress(&mut self, now: Instant, block: u64) {
        // Karn's rule: the ACK of a block the last run sent for the first time is a sample.
        let fresh = (block >= self.fresh_from).then_some(self.flight_at);
        let mut sample_from = fresh;
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
        // What leaves the transfer is never longer than a round trip that really happened:
        // the sample of a block sent once, else the time since the last send (whichever copy
        // the ACK answers left then or earlier). The round trip a spurious timeout revealed
        // may be a loss misjudged, about as long as the timeout itself: fed into a floor under
        // every transfer's timeout, it would raise that floor each time it fired.
        self.sample = Some(now.saturating_duration_since(self.sent_at));
        if let Some(at) = sample_from {
            let rtt = now.saturating_duration_since(at);
            self.rtt.sample(rtt);
            if fresh.is_some() {
                self.sample = Some(rtt);
            }
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
mod tests;
