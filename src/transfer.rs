//! The read transfer: a sans-IO state machine for one RRQ, from the OACK to the final ACK.
//!
//! It implements the sender side of RFC 1350 §2 (lock-step DATA/ACK), RFC 2347 (OACK, answered
//! by ACK 0), RFC 2348/2349 (block size, timeout) and RFC 7440 (windows), with the corrections
//! that RFC 1123 §4.2.3.1 demands: a duplicate ACK never causes a retransmission (the Sorcerer's
//! Apprentice bug) and the retransmission timeout adapts to the measured round-trip time
//! (RFC 1123 §4.2.3.2, computed as in RFC 6298 with Karn's rule).
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
//!    ([`Transfer::emit_oack`]), a run of blocks (header from [`emit_data_header`], payload at
//!    [`Transfer::offset`] for [`Transfer::block_len`] bytes), or an ERROR;
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
use crate::packet::{self, BufferTooSmall, ErrorCode, Packet, Request};

/// Retransmission settings, shared by all transfers of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Retransmissions of the same packet without progress before the transfer is abandoned.
    pub retries: u32,
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
    /// Retry 5 times; start at 1 s (RFC 6298), adapt between 20 ms and 4 s; be patient 5 s.
    ///
    /// The 20 ms floor is about a hundred LAN round trips, so a loss costs milliseconds where a
    /// fixed one-second timer costs a second, yet a queueing delay does not cause a spurious
    /// retransmission storm. Five retries with backoff reach the 4 s ceiling, past the 1–4 s
    /// that boot firmware waits before re-sending an ACK.
    fn default() -> Self {
        Self {
            retries: 5,
            rto_initial: Duration::from_secs(1),
            rto_min: Duration::from_millis(20),
            rto_max: Duration::from_secs(4),
            patience: Duration::from_secs(5),
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
/// started), and so is a datagram too short to hold an opcode, which no client sends; anything
/// else malformed gets the ERROR its [`ParseError`](packet::ParseError) names.
pub fn inbound(datagram: &[u8]) -> Inbound<'_> {
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
        Ok(Packet::Error { .. }) | Err(packet::ParseError::Truncated) if datagram.len() < 2 => {
            Inbound::Ignore
        }
        Ok(Packet::Error { .. }) => Inbound::Ignore,
        Err(e) => Inbound::Reject {
            code: e.code(),
            message: e.message(),
        },
    }
}

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
    /// When to retransmit; `None` once finished.
    deadline: Option<Instant>,
    /// Timeouts since the last progress.
    tries: u32,
    /// When the client last made progress (or the transfer started).
    progress_at: Instant,
    rtt: RttEstimator,
    /// When the packets now in flight were sent, and whether any of them was sent before
    /// (Karn's rule: an ACK for a retransmitted packet is no round-trip sample).
    flight_at: Instant,
    flight_clean: bool,
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
            deadline: None,
            tries: 0,
            progress_at: now,
            rtt: RttEstimator::new(config.rto_initial),
            flight_at: now,
            flight_clean: true,
            stats: Stats {
                bytes: 0,
                blocks: 0,
                sent: 0,
                retransmits: 0,
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
        if self.oack {
            // Only ACK 0 answers an OACK; anything else is a stray from another life.
            if block == 0 {
                self.oack = false;
                self.progress(now);
                self.pending = Some(self.window(false));
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
            self.progress(now);
            if self.acked == self.last {
                self.finish(now, Outcome::Complete);
            } else {
                // RFC 7440 §4: the next window starts after the acknowledged block, even when
                // that resends blocks of the last window the client did not get.
                self.pending = Some(self.window(false));
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
            self.pending = None;
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
        if self.tries >= self.config.retries {
            self.pending = None;
            self.finish(now, Outcome::TimedOut);
            return;
        }
        self.tries += 1;
        self.deadline = None;
        self.pending = Some(if self.oack {
            Transmit::Oack
        } else {
            self.window(true)
        });
    }

    /// Ends the transfer with an ERROR to the client, for a failure the driver met (a read
    /// error, a file that shrank).
    pub fn abort(&mut self, now: Instant, code: ErrorCode, message: &'static str) {
        if self.outcome.is_none() {
            self.fail(now, code, message);
        }
    }

    /// What to send now, if anything. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let transmit = self.pending.take()?;
        match transmit {
            Transmit::Oack => {
                self.stats.sent += 1;
                if self.deadline_armed(now, self.tries > 0) {
                    self.stats.retransmits += 1;
                }
            }
            Transmit::Blocks(run) => {
                let end = run.first + u64::from(run.count) - 1;
                let resent = self.sent.min(end).saturating_sub(run.first - 1);
                self.stats.sent += u64::from(run.count);
                self.stats.retransmits += resent;
                self.sent = self.sent.max(end);
                self.deadline_armed(now, resent > 0);
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
        if self.pending.is_some() {
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

    /// Arms the timer for what was just sent; returns `resent`.
    fn deadline_armed(&mut self, now: Instant, resent: bool) -> bool {
        if resent {
            self.flight_clean = false;
        } else {
            self.flight_at = now;
            self.flight_clean = true;
        }
        let mut wait = self.base_rto();
        if self.opts.timeout.is_none() {
            // RFC 6298 §5.5: back off exponentially while the client stays silent.
            wait = wait
                .saturating_mul(1 << self.tries.min(16))
                .min(self.config.rto_max);
        }
        if self.tries >= self.config.retries {
            // The last wait: stretch it so the silence before giving up reaches `patience`.
            let silent = now.saturating_duration_since(self.progress_at);
            wait = wait.max(self.config.patience.saturating_sub(silent));
        }
        self.deadline = Some(now + wait);
        resent
    }

    fn base_rto(&self) -> Duration {
        match self.opts.timeout {
            Some(fixed) => fixed,
            None => self.rtt.rto(&self.config),
        }
    }

    fn progress(&mut self, now: Instant) {
        if self.flight_clean {
            self.rtt
                .sample(now.saturating_duration_since(self.flight_at));
        }
        self.tries = 0;
        self.progress_at = now;
        self.deadline = None;
    }

    fn fail(&mut self, now: Instant, code: ErrorCode, message: &'static str) {
        self.pending = Some(Transmit::Error { code, message });
        self.finish(now, Outcome::Failed(code));
    }

    fn finish(&mut self, now: Instant, outcome: Outcome) {
        self.outcome = Some(outcome);
        self.deadline = None;
        self.stats.ended = Some(now);
    }
}

/// The wire block number of an absolute block: its low 16 bits (RFC 1350 leaves rollover
/// unspecified; 65535 is followed by 0, as in tftp-hpa and dnsmasq).
fn wire(block: u64) -> u16 {
    block as u16
}

/// The smoothed round-trip time and its variation (RFC 6298 §2).
#[derive(Debug, Clone, Copy)]
struct RttEstimator {
    initial: Duration,
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RttEstimator {
    fn new(initial: Duration) -> Self {
        Self {
            initial,
            srtt: None,
            rttvar: Duration::ZERO,
        }
    }

    fn sample(&mut self, r: Duration) {
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
        (srtt + (self.rttvar * 4).max(granularity)).clamp(config.rto_min, config.rto_max)
    }
}
