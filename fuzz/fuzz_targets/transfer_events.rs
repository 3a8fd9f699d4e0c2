//! The read-transfer state machine under arbitrary event sequences never panics, and keeps its
//! invariants whatever the client (or a forger) sends and however the driver interleaves events.
//! The invariants and the driver that checks them are `ringtftp::sim::Checked`, shared with the
//! core's property test; this target only turns fuzz input into a transfer and its events.
//!
//! The same input then drives the server's session around such a transfer twice, checked by
//! `ringtftp::sim::CheckedSession` (the session's property test's checker): from a file read in
//! chunks on a socket with GSO, and from memory without. Each event means what it means to a
//! transfer, and what the driver's side of it means to an executor (see `session_event`), so
//! the committed seeds and regressions decode as before and reach the session too.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringtftp::options::{Limits, Negotiated};
use ringtftp::packet::Options;
use ringtftp::sim::{self, Checked, CheckedSession, SessionEvent, Store};
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

/// The fuzzed event as an executor's: the client's datagrams and the timers as they are; the
/// driver's own events become its I/O completing. An abort's code picks a send's result (`Ok`,
/// `Refused`, `Rejected`, `Failed`), a failed read, a file changing, the client's port taken by
/// a new request, or a port-unreachable; an ERROR not sent as a datagram is a port-unreachable;
/// a single poll completes one send or read, a drain all of them.
fn session_event<'a>(event: &Event<'a>) -> SessionEvent<'a> {
    match *event {
        Event::Datagram(bytes) => SessionEvent::Datagram(bytes),
        Event::AckNearAcked(delta) => SessionEvent::AckNearAcked(delta),
        Event::AckNearSent(delta) => SessionEvent::AckNearSent(delta),
        Event::Ack(block) => SessionEvent::Ack(block),
        Event::Error {
            code,
            datagram: true,
        } => SessionEvent::Error(code),
        Event::Error {
            datagram: false, ..
        } => SessionEvent::Refused,
        Event::Timeout => SessionEvent::Timeout,
        Event::EarlyTimeout => SessionEvent::EarlyTimeout,
        Event::Advance(us) => SessionEvent::Advance(us),
        Event::Repeat => SessionEvent::Repeat,
        Event::Abort(code) => match code % 8 {
            kind @ 0..=3 => SessionEvent::Sent(kind as u8),
            4 => SessionEvent::Read {
                pick: (code >> 3) as u8,
                ok: false,
            },
            5 => SessionEvent::Change,
            6 => SessionEvent::Replace,
            _ => SessionEvent::Refused,
        },
        Event::Drain => SessionEvent::Settle,
        Event::PollOne => SessionEvent::Next,
        Event::Run(rounds) => SessionEvent::Run(rounds),
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
    let config = config(&input.settings);
    let session_events: Vec<SessionEvent<'_>> = input.events.iter().map(session_event).collect();
    let mut checked = Checked::new(base(), opts, len, config);
    for event in input.events {
        checked.apply(event.into());
    }
    checked.drain();
    checked.check();
    for (store, gso) in [(Store::File, true), (Store::Memory, false)] {
        let mut session = CheckedSession::new(base(), opts, len, config, store, gso);
        for &event in &session_events {
            session.apply(event);
        }
        session.finish();
    }
});
