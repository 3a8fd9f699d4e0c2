//! The read-transfer state machine under arbitrary event sequences never panics, and keeps its
//! invariants whatever the client (or a forger) sends and however the driver interleaves events:
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
//! before a drain, as a driver that receives datagrams in batches does.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringtftp::options::{Limits, Negotiated};
use ringtftp::packet::{ErrorCode, Options};
use ringtftp::transfer::{Config, Outcome, Transfer, Transmit};

/// The options of the request, built as text so every legal value (and some illegal ones) can
/// be reached; a refused set falls back to no options.
#[derive(Arbitrary, Debug)]
struct Request<'a> {
    blksize: Option<u32>,
    windowsize: Option<u32>,
    /// Microseconds, sent as `utimeout`, or as `timeout` in whole seconds.
    timeout: Option<(bool, u32)>,
    tsize: bool,
    blksize_max: u16,
    windowsize_max: u16,
    /// Appended as is: unknown options, duplicates, junk.
    extra: &'a [u8],
}

/// How many bytes the transfer sends.
#[derive(Arbitrary, Debug)]
enum Len {
    /// A small file.
    Bytes(u16),
    /// A whole number of blocks plus a remainder: exact multiples, and files past the 65535
    /// block rollover (up to 2^17 blocks).
    Blocks { blocks: u32, extra: u16 },
    /// Anything, up to `u64::MAX`.
    Any(u64),
}

#[derive(Arbitrary, Debug)]
struct Settings {
    retries: u8,
    retries_unanswered: u8,
    /// Milliseconds; the CLI allows 10 ms..=255 s.
    rto_initial: u32,
    rto_a: u32,
    rto_b: u32,
    patience: u32,
}

#[derive(Arbitrary, Debug)]
enum Event<'a> {
    /// Any bytes from the client's port.
    Datagram(&'a [u8]),
    /// An ACK for a block near the acknowledged one, as a datagram.
    AckNearAcked(i8),
    /// An ACK for a block near the highest one sent, as a datagram.
    AckNearSent(i8),
    /// An ACK for any wire block number, through `handle_ack`.
    Ack(u16),
    /// An ERROR from the client, as a datagram or through `handle_error`.
    Error { code: u16, datagram: bool },
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

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    request: Request<'a>,
    len: Len,
    settings: Settings,
    /// What the `tsize` callback answers.
    tsize: Option<u64>,
    events: Vec<Event<'a>>,
}

/// What `Run` may spend per input, in round trips plus blocks sent / 64 (each ACK costs the
/// transfer O(window)): a window of 64 crosses the block-number rollover within it, and no
/// input takes more than a few milliseconds, which keeps the fuzzer fast.
const RUN_BUDGET: u64 = 1 << 12;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn options(req: &Request<'_>) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut push = |name: &str, value: String| {
        raw.extend_from_slice(name.as_bytes());
        raw.push(0);
        raw.extend_from_slice(value.as_bytes());
        raw.push(0);
    };
    if let Some(v) = req.blksize {
        push("blksize", v.to_string());
    }
    if let Some(v) = req.windowsize {
        push("windowsize", v.to_string());
    }
    match req.timeout {
        Some((true, us)) => push("utimeout", us.to_string()),
        Some((false, us)) => push("timeout", (us / 1_000_000).to_string()),
        None => {}
    }
    if req.tsize {
        push("tsize", "0".into());
    }
    raw.extend_from_slice(req.extra);
    raw
}

fn config(s: &Settings) -> Config {
    let ms = |v: u32, max: u32| Duration::from_millis(u64::from(v % (max + 1)));
    // The floor must not exceed the ceiling (`Duration::clamp` would panic): order them.
    let (a, b) = (ms(s.rto_a, 10_000), ms(s.rto_b, 600_000));
    Config {
        retries: u32::from(s.retries % 32),
        retries_unanswered: u32::from(s.retries_unanswered % 8),
        rto_initial: ms(s.rto_initial, 255_000),
        rto_min: a.min(b),
        rto_max: a.max(b),
        patience: ms(s.patience, 600_000),
    }
}

fn wire_ack(block: u16) -> [u8; 4] {
    let [hi, lo] = block.to_be_bytes();
    [0, 4, hi, lo]
}

/// The harness: a driver that checks every answer of the transfer.
struct Driver {
    t: Transfer,
    now: Instant,
    opts: Negotiated,
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
    config: Config,
}

impl Driver {
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
                    run.count <= self.opts.windowsize.max(1),
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
                let blksize = u64::from(self.opts.blksize);
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

    fn drain(&mut self) {
        while self.poll().is_some() {}
        // Drained and not over: the timer must be armed, or the transfer would hang.
        if self.t.outcome().is_none() {
            assert!(
                self.t.poll_timeout().is_some(),
                "a live transfer without a timer"
            );
        }
    }

    fn datagram(&mut self, dgram: &[u8]) {
        self.batch.clear();
        let before = self.t.acked();
        self.t.handle_datagram(self.now, dgram);
        self.progress(before);
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

    fn check(&mut self) {
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
            let window = u64::from(self.opts.windowsize.max(1));
            assert!(
                self.datagrams <= (1 + tries) * window,
                "{} datagrams drawn by a silent client",
                self.datagrams
            );
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    let raw = options(&input.request);
    let limits = Limits {
        blksize_max: input.request.blksize_max,
        windowsize_max: input.request.windowsize_max,
        ..Limits::default()
    };
    let opts = Negotiated::negotiate(&Options::parse(&raw), &limits, || input.tsize)
        .unwrap_or(Negotiated::DEFAULT);
    let blksize = u64::from(opts.blksize);
    let len = match input.len {
        Len::Bytes(n) => u64::from(n),
        Len::Blocks { blocks, extra } => {
            u64::from(blocks % (1 << 17)) * blksize + u64::from(extra) % blksize
        }
        Len::Any(n) => n,
    };
    let config = config(&input.settings);
    let now = base();
    let mut d = Driver {
        t: Transfer::new(now, opts, len, config),
        now,
        opts,
        sent: 0,
        ended: None,
        fires: 0,
        answered: false,
        datagrams: 0,
        errors: 0,
        batch: Vec::new(),
        config,
    };
    assert_eq!(d.t.options(), &opts);
    assert_eq!(d.t.len(), len);
    assert_eq!(d.t.last_block(), len / blksize + 1);
    d.check();
    let mut budget = RUN_BUDGET;

    for event in input.events {
        if !matches!(
            event,
            Event::Drain | Event::PollOne | Event::Advance(_) | Event::Run(_)
        ) {
            // Something happens: what is sent next may repeat what was sent before.
            d.batch.clear();
        }
        match event {
            Event::Datagram(bytes) => {
                // Only an ACK or an ERROR is an answer; anything else that parses ends it.
                d.answered |= bytes.len() >= 4 && matches!(bytes[..2], [0, 4] | [0, 5]);
                d.datagram(bytes);
            }
            Event::AckNearAcked(delta) => {
                d.answered = true;
                let block = d.t.acked().wrapping_add_signed(i64::from(delta));
                d.datagram(&wire_ack(Transfer::wire_block(block)));
            }
            Event::AckNearSent(delta) => {
                d.answered = true;
                let block = d.sent.wrapping_add_signed(i64::from(delta));
                d.datagram(&wire_ack(Transfer::wire_block(block)));
            }
            Event::Ack(block) => {
                d.answered = true;
                let before = d.t.acked();
                d.t.handle_ack(d.now, block);
                d.progress(before);
            }
            Event::Error { code, datagram } => {
                d.answered = true;
                let live = d.live();
                if datagram {
                    let mut dgram = vec![0, 5];
                    dgram.extend_from_slice(&code.to_be_bytes());
                    dgram.extend_from_slice(b"fuzz\0");
                    d.datagram(&dgram);
                } else {
                    d.t.handle_error(d.now, ErrorCode::from_u16(code));
                }
                if live {
                    let cancelled = Outcome::Cancelled(ErrorCode::from_u16(code));
                    assert_eq!(d.t.outcome(), Some(cancelled), "an ERROR did not end it");
                }
            }
            Event::Timeout => {
                if let Some(deadline) = d.t.poll_timeout() {
                    d.now = d.now.max(deadline);
                    d.t.handle_timeout(d.now);
                    d.fires += 1;
                    assert_eq!(d.t.poll_timeout(), None, "the timer fired and stayed armed");
                }
            }
            Event::EarlyTimeout => {
                let deadline = d.t.poll_timeout();
                d.t.handle_timeout(d.now);
                match deadline {
                    Some(at) if d.now < at => {
                        assert_eq!(
                            d.t.poll_timeout(),
                            deadline,
                            "an early call moved the timer"
                        );
                    }
                    Some(_) => d.fires += 1,
                    None => {}
                }
            }
            Event::Advance(us) => d.now += Duration::from_micros(u64::from(us)),
            Event::Repeat => {
                // A repeated request may draw the first reply again: not a silent client.
                d.answered = true;
                d.t.handle_repeat(d.now);
            }
            Event::Abort(code) => {
                let live = d.live();
                let code = ErrorCode::from_u16(code);
                d.t.abort(d.now, code, "fuzz abort");
                if live {
                    let error = d.poll();
                    assert_eq!(
                        error,
                        Some(Transmit::Error {
                            code,
                            message: "fuzz abort"
                        })
                    );
                }
            }
            Event::Drain => d.drain(),
            Event::PollOne => {
                d.poll();
            }
            Event::Run(rounds) => {
                d.answered = true;
                for _ in 0..rounds {
                    if budget == 0 || d.t.outcome().is_some() {
                        break;
                    }
                    let before = d.datagrams;
                    d.drain();
                    budget = budget.saturating_sub(1 + (d.datagrams - before) / 64);
                    if d.t.outcome().is_some() {
                        break;
                    }
                    d.now += Duration::from_micros(300);
                    // ACK 0 answers the OACK; afterwards the highest block sent.
                    d.datagram(&wire_ack(Transfer::wire_block(d.sent)));
                    d.check();
                }
            }
        }
        d.check();
    }
    d.drain();
    d.check();
});
