//! The read-transfer state machine under arbitrary event sequences never panics, and keeps its
//! invariants whatever the client (or a forger) sends and however the driver interleaves events.
//! The invariants and the driver that checks them are `ringtftp::sim::Checked`, shared with the
//! core's property test; this target only turns fuzz input into a transfer and its events.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringtftp::options::{Limits, Negotiated};
use ringtftp::packet::Options;
use ringtftp::sim::{self, Checked};
use ringtftp::transfer::Config;

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

/// The fuzzed event as the checker's: the same variants, in the same order (the committed
/// inputs under `regressions/` decode the same way).
impl<'a> From<Event<'a>> for sim::Event<'a> {
    fn from(event: Event<'a>) -> Self {
        match event {
            Event::Datagram(bytes) => sim::Event::Datagram(bytes),
            Event::AckNearAcked(delta) => sim::Event::AckNearAcked(delta),
            Event::AckNearSent(delta) => sim::Event::AckNearSent(delta),
            Event::Ack(block) => sim::Event::Ack(block),
            Event::Error { code, datagram } => sim::Event::Error { code, datagram },
            Event::Timeout => sim::Event::Timeout,
            Event::EarlyTimeout => sim::Event::EarlyTimeout,
            Event::Advance(us) => sim::Event::Advance(us),
            Event::Repeat => sim::Event::Repeat,
            Event::Abort(code) => sim::Event::Abort(code),
            Event::Drain => sim::Event::Drain,
            Event::PollOne => sim::Event::PollOne,
            Event::Run(rounds) => sim::Event::Run(rounds),
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
    let blksize = u64::from(opts.blksize().get());
    let len = match input.len {
        Len::Bytes(n) => u64::from(n),
        Len::Blocks { blocks, extra } => {
            u64::from(blocks % (1 << 17)) * blksize + u64::from(extra) % blksize
        }
        Len::Any(n) => n,
    };
    let mut checked = Checked::new(base(), opts, len, config(&input.settings));
    for event in input.events {
        checked.apply(event.into());
    }
    checked.drain();
    checked.check();
});
