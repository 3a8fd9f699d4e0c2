//! One [`Transfer`] driven by arbitrary [`Event`]s, its invariants checked after each:
//!
//! - `acked <= last_block`, and the acknowledged counters match `acked`;
//! - every run of blocks lies within `1..=last_block`, holds at most `windowsize` blocks and
//!   starts after the acknowledged block, and one drain (no event fed in between) never hands
//!   out the same block twice; the OACK is sent only when options were accepted, before any
//!   DATA, and always fits 1024 bytes;
//! - once `outcome` is `Some` it never changes, `poll_transmit` and `poll_timeout` are `None`;
//!   `Complete` only when the final block was acknowledged; an ERROR sent ends the transfer;
//! - a transfer that is not over always has a timer armed once drained (it cannot hang);
//! - without progress from the client, the timer fires a bounded number of times before the
//!   transfer gives up, and a client that never answers draws a bounded number of datagrams.
//!
//! Time only moves forward, as the driver contract demands. Events may be fed several at a time
//! before a drain, as a driver that receives datagrams in batches does. A broken invariant
//! panics with what broke.

use std::time::{Duration, Instant};

use crate::options::Negotiated;
use crate::packet::{ErrorCode, Packet};
use crate::transfer::{Config, Outcome, Transfer, Transmit};

/// What happens next to the transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// Any bytes from the client's port.
    Datagram(&'a [u8]),
    /// An ACK for a block near the acknowledged one, as a datagram.
    AckNearAcked(i8),
    /// An ACK for a block near the highest one sent, as a datagram.
    AckNearSent(i8),
    /// An ACK for any wire block number, through `handle_ack`.
    Ack(u16),
    /// An ERROR from the client, as a datagram or through `handle_error`.
    Error {
        /// The code.
        code: u16,
        /// Whether it comes as a datagram.
        datagram: bool,
    },
    /// The timer fires at its deadline (time moves to it if it is ahead).
    Timeout,
    /// The timer is called early, at the current time.
    EarlyTimeout,
    /// Time passes (microseconds).
    Advance(u32),
    /// The client repeats its request.
    Repeat,
    /// The driver fails (a short read).
    Abort(u16),
    /// The driver sends everything pending.
    Drain,
    /// The driver sends one pending thing only.
    PollOne,
    /// A well-behaved client for up to this many round trips: drain, acknowledge the highest
    /// block sent after a short delay.
    Run(u16),
}

/// What [`Event::Run`] may spend per transfer, in round trips plus blocks sent / 64 (each ACK
/// costs the transfer O(window)): a window of 64 crosses the block-number rollover within it,
/// and no input takes more than a few milliseconds, which keeps a fuzzer fast.
pub const RUN_BUDGET: u64 = 1 << 12;

/// A driver that checks every answer of its transfer; see the [module doc](self).
#[derive(Debug)]
pub struct Checked {
    t: Transfer,
    now: Instant,
    opts: Negotiated,
    config: Config,
    /// The highest block handed out to send.
    sent: u64,
    /// The outcome once seen.
    ended: Option<Outcome>,
    /// Timer fires since the client last made progress.
    fires: u32,
    /// Whether the client ever sent anything the transfer heeds, or repeated its request.
    answered: bool,
    /// The runs handed out since the last event fed to the transfer.
    batch: Vec<(u64, u64)>,
    /// OACK and DATA datagrams handed out to send.
    datagrams: u64,
    /// ERROR datagrams handed out to send.
    errors: u64,
    /// What `Run` may still spend.
    budget: u64,
}

impl Checked {
    /// A transfer of `len` bytes with `opts` and `config`, started at `now`, checked at once.
    pub fn new(now: Instant, opts: Negotiated, len: u64, config: Config) -> Self {
        let mut c = Self {
            t: Transfer::new(now, opts, len, config),
            now,
            opts,
            config,
            sent: 0,
            ended: None,
            fires: 0,
            answered: false,
            batch: Vec::new(),
            datagrams: 0,
            errors: 0,
            budget: RUN_BUDGET,
        };
        assert_eq!(c.t.options(), &opts);
        assert_eq!(c.t.len(), len);
        let blksize = u64::from(opts.blksize().get());
        assert_eq!(c.t.last_block(), len / blksize + 1);
        c.check();
        c
    }

    /// The transfer.
    pub fn transfer(&self) -> &Transfer {
        &self.t
    }

    /// Feeds `event`, then checks every invariant.
    pub fn apply(&mut self, event: Event<'_>) {
        if !matches!(
            event,
            Event::Drain | Event::PollOne | Event::Advance(_) | Event::Run(_)
        ) {
            // Something happens: what is sent next may repeat what was sent before.
            self.batch.clear();
        }
        match event {
            Event::Datagram(bytes) => {
                // Only an ACK or an ERROR is an answer; anything else that parses ends it.
                self.answered |= matches!(
                    Packet::parse(bytes),
                    Ok(Packet::Ack { .. } | Packet::Error { .. })
                );
                self.datagram(bytes);
            }
            Event::AckNearAcked(delta) => {
                self.answered = true;
                let block = self.t.acked().wrapping_add_signed(i64::from(delta));
                self.datagram(&ack(Transfer::wire_block(block)));
            }
            Event::AckNearSent(delta) => {
                self.answered = true;
                let block = self.sent.wrapping_add_signed(i64::from(delta));
                self.datagram(&ack(Transfer::wire_block(block)));
            }
            Event::Ack(block) => {
                self.answered = true;
                let before = self.t.acked();
                self.t.handle_ack(self.now, block);
                self.progress(before);
            }
            Event::Error { code, datagram } => self.error(code, datagram),
            Event::Timeout => {
                if let Some(deadline) = self.t.poll_timeout() {
                    self.now = self.now.max(deadline);
                    self.t.handle_timeout(self.now);
                    self.fires += 1;
                    assert_eq!(
                        self.t.poll_timeout(),
                        None,
                        "the timer fired and stayed armed"
                    );
                }
            }
            Event::EarlyTimeout => {
                let deadline = self.t.poll_timeout();
                self.t.handle_timeout(self.now);
                match deadline {
                    Some(at) if self.now < at => {
                        assert_eq!(
                            self.t.poll_timeout(),
                            deadline,
                            "an early call moved the timer"
                        );
                    }
                    Some(_) => self.fires += 1,
                    None => {}
                }
            }
            Event::Advance(us) => self.now += Duration::from_micros(u64::from(us)),
            Event::Repeat => {
                // A repeated request may draw the first reply again: not a silent client.
                self.answered = true;
                self.t.handle_repeat(self.now);
            }
            Event::Abort(code) => {
                let live = self.live();
                let code = ErrorCode::from_u16(code);
                self.t.abort(self.now, code, "fuzz abort");
                if live {
                    let error = self.poll();
                    let expected = Transmit::Error {
                        code,
                        message: "fuzz abort",
                    };
                    assert_eq!(error, Some(expected));
                }
            }
            Event::Drain => self.drain(),
            Event::PollOne => {
                let _ = self.poll();
            }
            Event::Run(rounds) => self.run(rounds),
        }
        self.check();
    }

    /// Sends everything pending, then checks that a live transfer has its timer armed.
    pub fn drain(&mut self) {
        while self.poll().is_some() {}
        // Drained and not over: the timer must be armed, or the transfer would hang.
        if self.t.outcome().is_none() {
            assert!(
                self.t.poll_timeout().is_some(),
                "a live transfer without a timer"
            );
        }
    }

    /// Checks every invariant of the module doc.
    pub fn check(&mut self) {
        let t = &self.t;
        assert!(
            t.acked() <= t.last_block(),
            "acked {} > last {}",
            t.acked(),
            t.last_block()
        );
        assert!(
            t.acked() <= self.sent,
            "acked {} unsent (sent {})",
            t.acked(),
            self.sent
        );
        let stats = t.stats();
        assert_eq!(stats.blocks, t.acked());
        assert_eq!(stats.bytes, t.offset(t.acked() + 1).min(t.len()));
        assert!(stats.retransmits <= stats.sent);
        assert!(stats.spurious <= stats.retransmits);
        assert_eq!(stats.sent, self.datagrams);
        assert!(self.errors <= 1, "{} ERRORs sent", self.errors);
        match (self.ended, t.outcome()) {
            (Some(was), now) => assert_eq!(now, Some(was), "the outcome changed"),
            (None, Some(outcome)) => {
                self.ended = Some(outcome);
                assert!(stats.ended.is_some());
                if outcome == Outcome::Complete {
                    assert_eq!(t.acked(), t.last_block(), "complete before the final ACK");
                }
            }
            (None, None) => {}
        }
        if self.ended.is_some() {
            assert_eq!(self.t.poll_timeout(), None, "a timer after the end");
            assert_eq!(self.t.poll_transmit(self.now), None, "sent after the end");
        }
        // Without progress the timer fires at most `retries + 1` times per phase (the OACK,
        // then the data), the last one ending the transfer.
        assert!(
            self.fires <= 2 * (self.config.retries + 1),
            "{} timeouts without progress and still going",
            self.fires
        );
        // A forged request (nobody ever answers) draws the first reply and at most
        // `retries_unanswered` retransmissions of at most a window each.
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

    fn poll(&mut self) -> Option<Transmit> {
        let transmit = self.t.poll_transmit(self.now);
        if self.ended.is_some() {
            assert_eq!(transmit, None, "sent after the end");
        }
        let transmit = transmit?;
        match transmit {
            Transmit::Oack => {
                assert!(self.opts.has_oack(), "OACK without accepted options");
                assert_eq!(self.sent, 0, "OACK after DATA");
                let mut buf = [0u8; 1024];
                self.t
                    .emit_oack(&mut buf)
                    .expect("an OACK fits in 1024 bytes");
                self.datagrams += 1;
            }
            Transmit::Blocks(run) => {
                let last = self.t.last_block();
                let end = run.first + u64::from(run.count) - 1;
                assert!(run.count >= 1, "{run:?}");
                assert!(
                    run.count <= self.opts.window_max().get(),
                    "{run:?} {:?}",
                    self.opts
                );
                assert!(
                    run.first > self.t.acked(),
                    "{run:?} resends acked {}",
                    self.t.acked()
                );
                assert!(end <= last, "{run:?} past the final block {last}");
                // One drain never sends a block twice: nothing happened in between.
                for &(first, end_) in &self.batch {
                    assert!(
                        end < first || run.first > end_,
                        "{run:?} sends again blocks {first}..={end_} of the same drain"
                    );
                }
                self.batch.push((run.first, end));
                let blksize = u64::from(self.opts.blksize().get());
                for block in [run.first, end] {
                    let len = self.t.block_len(block) as u64;
                    assert_eq!(self.t.offset(block), (block - 1) * blksize);
                    if block < last {
                        assert_eq!(len, blksize);
                    } else {
                        assert!(len < blksize, "the final block is short");
                        assert_eq!(self.t.offset(block) + len, self.t.len());
                    }
                }
                self.sent = self.sent.max(end);
                self.datagrams += u64::from(run.count);
            }
            Transmit::Error { code, message } => {
                assert!(!message.is_empty());
                // An ERROR ends the transfer as soon as it is handed out.
                assert_eq!(self.t.outcome(), Some(Outcome::Failed(code)));
                self.errors += 1;
            }
        }
        Some(transmit)
    }

    fn datagram(&mut self, dgram: &[u8]) {
        self.batch.clear();
        let before = self.t.acked();
        self.t.handle_datagram(self.now, dgram);
        self.progress(before);
    }

    fn error(&mut self, code: u16, datagram: bool) {
        self.answered = true;
        let live = self.live();
        if datagram {
            let mut buf = [0; 64];
            let n = crate::packet::emit_error(ErrorCode::from_u16(code), "fuzz", &mut buf)
                .expect("an ERROR fits 64 bytes");
            self.datagram(&buf[..n]);
        } else {
            self.t.handle_error(self.now, ErrorCode::from_u16(code));
        }
        if live {
            let cancelled = Outcome::Cancelled(ErrorCode::from_u16(code));
            assert_eq!(self.t.outcome(), Some(cancelled), "an ERROR did not end it");
        }
    }

    fn run(&mut self, rounds: u16) {
        self.answered = true;
        for _ in 0..rounds {
            if self.budget == 0 || self.t.outcome().is_some() {
                break;
            }
            let before = self.datagrams;
            self.drain();
            self.budget = self
                .budget
                .saturating_sub(1 + (self.datagrams - before) / 64);
            if self.t.outcome().is_some() {
                break;
            }
            self.now += Duration::from_micros(300);
            // ACK 0 answers the OACK; afterwards the highest block sent.
            self.datagram(&ack(Transfer::wire_block(self.sent)));
            self.check();
        }
    }

    /// Whether the transfer is still running once whatever is pending is sent (an ERROR
    /// queued but not yet sent already ended it).
    fn live(&self) -> bool {
        let mut t = self.t.clone();
        while t.poll_transmit(self.now).is_some() {}
        t.outcome().is_none()
    }

    fn progress(&mut self, before: u64) {
        if self.t.acked() != before {
            self.fires = 0;
        }
    }
}

fn ack(block: u16) -> Vec<u8> {
    let mut buf = vec![0; 4];
    let n = Packet::Ack { block }
        .emit(&mut buf)
        .expect("an ACK is 4 bytes");
    buf.truncate(n);
    buf
}
