//! The read side of a transfer: a sans-IO state machine for one RRQ, from the request to the
//! final ACK — the other end of [`Transfer`](crate::transfer::Transfer).
//!
//! It sends an RRQ (RFC 1350 §5) with the options of its [`Ask`] (RFC 2347, 2348, 2349, 7440),
//! takes the OACK through [`Ask::accept`] and answers it with ACK 0 (or takes DATA 1 as the
//! server ignoring the options, RFC 2347), then receives DATA lock-step or in windows of
//! `windowsize` blocks, acknowledging every full window and the final block, the first block
//! shorter than `blksize` (RFC 1350 §6).
//!
//! **Out of sequence (RFC 7440 §4), one rule.** A block that is not the next one expected — a
//! duplicate, or one after a gap — is answered with an ACK of the last block received in
//! sequence, once per *burst*: a stray whose wire number follows the previous stray's belongs
//! to the same burst (the rest of a window sent after a loss, or re-sent after a timeout) and
//! draws nothing; the next block in sequence ends the burst. So a lost block costs the server
//! one ACK to go back to, and a lost ACK one ACK again, never a window of them. The window
//! restarts from that ACK. The out-of-sequence block itself is dropped: the server sends it
//! again after the gap.
//!
//! **WDS's variable window.** With `msftwindow` granted ([`Ask::msftwindow`]), every ACK says
//! how many blocks the client wants before its next one ([`Client::emit_ack`] writes that
//! byte): this client starts from the `windowsize` granted, doubles after each window received
//! whole, up to [`MSFT_WINDOW_MAX`], and halves at each gap — how a client that adapts to its
//! network might choose (Windows' own choice is not documented).
//!
//! After the final block the outcome is [`Outcome::Complete`], yet a driver that keeps the
//! socket open for a while (RFC 1350 §6 "dallying") may go on feeding datagrams: a repeated
//! final block, which means the final ACK was lost, is acknowledged again.
//!
//! # Driving a client
//!
//! The driver owns the socket; the client owns every decision. Time only enters as `now`,
//! which must never decrease.
//!
//! 1. [`Client::new`] queues the RRQ: [`Client::poll_transmit`] returns [`Transmit::Rrq`], which
//!    the driver writes with [`Config::emit_rrq`] and sends to the server's port.
//! 2. The first reply fixes the server's transfer ID ([`Client::is_first_reply`] says which
//!    datagrams may); each datagram from that TID goes to [`Client::handle_datagram`], which
//!    returns the payload of the next block in sequence, to be appended to the file (netascii
//!    is delivered as on the wire: decode it with [`netascii::Decoder`](crate::netascii)).
//!    An expired [`Client::poll_timeout`] goes to [`Client::handle_timeout`].
//! 3. After each of those, the driver sends what `poll_transmit` returns (at most one packet:
//!    an ACK, or the RRQ again) and stops once [`Client::outcome`] is `Some`.
//!
//! Blocks are counted from 1 in a `u64`; the wire number is the low 16 bits, so a transfer goes
//! on past block 65535 with block 0, as tftp-hpa, atftpd, dnsmasq and ringtftpd number them.
//!
//! The client never sends an ERROR: it stops, and the server times out.

use std::time::{Duration, Instant};

use crate::options::{Ask, Negotiated};
use crate::packet::{BufferTooSmall, ErrorCode, Mode, Options, Packet, Request};

/// The largest window this client asks for with `msftwindow`.
pub const MSFT_WINDOW_MAX: u16 = 64;

/// What a transfer asks for and how patiently it waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The transfer mode requested.
    pub mode: Mode,
    /// The options the RRQ asks for.
    pub ask: Ask,
    /// How long to wait for the server before sending the last packet again.
    pub timeout: Duration,
    /// Re-sends of the same packet without progress before giving up ([`Outcome::TimedOut`]).
    pub retries: u32,
    /// Answer *every* block out of sequence with an ACK of the last block in sequence, rather
    /// than once per burst (the module doc's rule). UEFI edk2 does this (`NetworkPkg/
    /// Mtftp4Dxe/Mtftp4Rrq.c`, `Mtftp4RrqHandleData`: "received an unexpected packet,
    /// transmit the ACK for the block we received"), so a window after a gap draws a duplicate
    /// ACK per block: what a server must not answer with a window each.
    pub reack_every_stray: bool,
}

impl Default for Config {
    /// An octet read without options, waiting 1 s five times, as tftp-hpa does.
    fn default() -> Self {
        Self {
            mode: Mode::Octet,
            ask: Ask::default(),
            timeout: Duration::from_secs(1),
            retries: 5,
            reack_every_stray: false,
        }
    }
}

impl Config {
    /// Writes the RRQ for `filename` into `buf`; returns its length.
    pub fn emit_rrq(&self, filename: &str, buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut options = [0u8; 256];
        let mut len = 0;
        self.ask.emit(&mut options, &mut len)?;
        Packet::Rrq(Request {
            filename,
            mode: self.mode,
            options: Options::parse(&options[..len]),
        })
        .emit(buf)
    }
}

/// A packet the driver must send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Transmit {
    /// The RRQ (written by [`Config::emit_rrq`]), to the server's port.
    Rrq,
    /// An ACK of this wire block number, to the server's TID.
    Ack(u16),
}

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The final block arrived; its ACK is the last thing to send.
    Complete,
    /// The server sent this ERROR.
    Error(ErrorCode),
    /// No answer after `retries` re-sends of the same packet.
    TimedOut,
    /// The server broke the protocol: a malformed packet, an OACK the request did not allow, a
    /// block longer than `blksize`, an opcode a reader never gets.
    Protocol(&'static str),
    /// The bytes received differ from the size the OACK announced (`tsize`).
    Size,
}

/// What a read counted on its way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets re-sent because the timer expired (RRQ or ACK).
    pub retransmits: u32,
    /// ACKs sent at once because a block out of sequence showed the server had missed one
    /// (RFC 7440 §4, a lock-step client's answer to a repeated block, a repeated final block).
    pub reacks: u32,
    /// DATA blocks (and OACKs) that were not the next expected: duplicates and blocks after a
    /// gap.
    pub stray_blocks: u32,
    /// The server answered the RRQ without an OACK although options were asked for.
    pub options_ignored: bool,
}

/// One read from the client's side; see the [module documentation](self) for how to drive it.
#[derive(Debug, Clone)]
pub struct Client {
    config: Config,
    state: State,
    /// The options in force: the defaults until an OACK says otherwise.
    opts: Negotiated,
    /// The next block expected, counted from 1 without wrapping.
    next: u64,
    /// Blocks received in sequence since the last ACK sent.
    since_ack: u16,
    /// Blocks per window: the `windowsize` in force, or the one asked with `msftwindow`.
    window: u16,
    /// The last block out of sequence since the last one in sequence (see the module doc).
    last_stray: Option<u16>,
    /// Payload bytes received in sequence, as on the wire.
    bytes: u64,
    /// Re-sends since the last progress, against `retries`.
    tries: u32,
    deadline: Instant,
    pending: Option<Transmit>,
    started: Instant,
    first_block: Option<Instant>,
    finished: Option<Instant>,
    stats: Stats,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The RRQ is out; nothing has come back.
    Requested,
    /// An OACK or the first DATA arrived; `oack` says whether it was an OACK.
    Receiving { oack: bool },
    /// Over; the outcome is final.
    Done(Outcome),
}

impl Client {
    /// A read starting at `now`; its first [`poll_transmit`](Self::poll_transmit) is the RRQ.
    pub fn new(config: Config, now: Instant) -> Self {
        Self {
            config,
            state: State::Requested,
            opts: Negotiated::DEFAULT,
            next: 1,
            since_ack: 0,
            window: 1,
            last_stray: None,
            bytes: 0,
            tries: 0,
            deadline: now + config.timeout,
            pending: Some(Transmit::Rrq),
            started: now,
            first_block: None,
            finished: None,
            stats: Stats::default(),
        }
    }

    /// Whether `datagram` can be the server's first reply to the RRQ: an OACK, DATA 1 or an
    /// ERROR. The driver takes the TID from the first datagram that passes; anything else
    /// arriving first is a stray (a late block of a finished transfer to this port's previous
    /// owner) and must not capture the TID.
    pub fn is_first_reply(datagram: &[u8]) -> bool {
        matches!(
            Packet::parse(datagram),
            Ok(Packet::Oack(_) | Packet::Data { block: 1, .. } | Packet::Error { .. })
        )
    }

    /// Handles a datagram from the server's TID; returns the payload of the next block in
    /// sequence, if that is what it carried, for the driver to append to the file.
    pub fn handle_datagram<'d>(&mut self, now: Instant, datagram: &'d [u8]) -> Option<&'d [u8]> {
        if let State::Done(outcome) = self.state {
            if outcome == Outcome::Complete {
                self.dally(datagram);
            }
            return None;
        }
        let Ok(packet) = Packet::parse(datagram) else {
            self.finish(now, Outcome::Protocol("malformed packet"));
            return None;
        };
        match packet {
            Packet::Error { code, .. } => self.finish(now, Outcome::Error(code)),
            Packet::Oack(options) => self.handle_oack(now, options),
            Packet::Data { block, data } => return self.handle_data(now, block, data),
            Packet::Ack { .. } | Packet::Rrq(_) | Packet::Wrq(_) => {
                self.finish(now, Outcome::Protocol("unexpected opcode"));
            }
        }
        None
    }

    /// Handles the passing of [`poll_timeout`](Self::poll_timeout): sends the last packet
    /// again, or gives up after `retries` re-sends without progress. Does nothing before it.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.deadline || self.outcome().is_some() {
            return;
        }
        if self.tries >= self.config.retries {
            return self.finish(now, Outcome::TimedOut);
        }
        self.tries += 1;
        self.stats.retransmits += 1;
        self.pending = Some(match self.state {
            State::Requested => Transmit::Rrq,
            _ => {
                // A window cut short by loss is acknowledged as far as it got (RFC 7440 §4),
                // and the next window counts from there, a smaller one where the client says.
                self.since_ack = 0;
                if self.opts.msftwindow() {
                    self.window = (self.window / 2).max(1);
                }
                Transmit::Ack(self.last_in_order())
            }
        });
        self.deadline = now + self.config.timeout;
    }

    /// Ends the read from outside (a deadline of the driver's, a socket that failed); the
    /// outcome stays the one given.
    pub fn abort(&mut self, now: Instant, outcome: Outcome) {
        if self.outcome().is_none() {
            self.finish(now, outcome);
        }
    }

    /// The packet to send now, if any (at most one is ever pending).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.pending.take()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called if nothing arrives; `None`
    /// once the read is over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outcome().is_none().then_some(self.deadline)
    }

    /// How the read ended, once it has.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.state {
            State::Done(outcome) => Some(outcome),
            _ => None,
        }
    }

    /// The options in force: the defaults until an OACK said otherwise.
    pub fn options(&self) -> &Negotiated {
        &self.opts
    }

    /// The configuration the read was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the server answered with an OACK.
    pub fn oacked(&self) -> bool {
        self.opts.has_oack()
    }

    /// Payload bytes received in sequence, as on the wire.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Blocks received in sequence.
    pub fn blocks(&self) -> u64 {
        self.next - 1
    }

    /// When the RRQ was first queued.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When block 1 arrived.
    pub fn first_block(&self) -> Option<Instant> {
        self.first_block
    }

    /// When the read ended (the final block arrived, or it failed).
    pub fn finished(&self) -> Option<Instant> {
        self.finished
    }

    /// What the read counted on its way.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn handle_oack(&mut self, now: Instant, options: Options<'_>) {
        match self.state {
            State::Requested => {}
            // The server sent its OACK again: our ACK 0 was lost or is late. Answer it again,
            // as a lock-step client answers a repeated block.
            State::Receiving { oack: true } if self.next == 1 => {
                self.stats.stray_blocks += 1;
                self.stats.reacks += 1;
                self.pending = Some(Transmit::Ack(0));
                return;
            }
            // A late copy of the OACK (delayed or duplicated on the way): the server has
            // moved on, and so have we.
            State::Receiving { oack: true } => {
                self.stats.stray_blocks += 1;
                return;
            }
            _ => return self.finish(now, Outcome::Protocol("OACK after DATA")),
        }
        match self.config.ask.accept(&options) {
            Ok(opts) => {
                self.opts = opts;
                self.window = opts.windowsize().get();
                if opts.msftwindow() {
                    // An ACK carries the window in one byte.
                    self.window = self.window.min(MSFT_WINDOW_MAX);
                }
            }
            Err(e) => return self.finish(now, Outcome::Protocol(e.message())),
        }
        self.state = State::Receiving { oack: true };
        self.progress(now);
        // RFC 2347: a client answers an OACK to its RRQ with ACK 0.
        self.pending = Some(Transmit::Ack(0));
    }

    fn handle_data<'d>(&mut self, now: Instant, block: u16, data: &'d [u8]) -> Option<&'d [u8]> {
        if self.state == State::Requested {
            // RFC 2347: a server that ignores options answers with DATA 1 and the defaults.
            self.stats.options_ignored = !self.config.ask.is_empty();
            self.state = State::Receiving { oack: false };
        }
        let blksize = usize::from(self.opts.blksize().get());
        if data.len() > blksize {
            self.finish(now, Outcome::Protocol("DATA longer than blksize"));
            return None;
        }
        if block != wire(self.next) {
            self.handle_stray(block);
            return None;
        }
        self.first_block.get_or_insert(now);
        self.bytes += data.len() as u64;
        self.next += 1;
        self.since_ack += 1;
        self.last_stray = None;
        self.progress(now);
        if data.len() < blksize {
            // RFC 1350 §6: a block shorter than blksize is the last; its ACK ends the read.
            self.pending = Some(Transmit::Ack(block));
            let size_ok = self.opts.tsize().is_none_or(|size| size == self.bytes);
            self.finish(
                now,
                if size_ok {
                    Outcome::Complete
                } else {
                    Outcome::Size
                },
            );
        } else if self.since_ack >= self.window {
            self.since_ack = 0;
            if self.opts.msftwindow() {
                // A whole window arrived: ask for a larger one.
                self.window = self.window.saturating_mul(2).min(MSFT_WINDOW_MAX);
            }
            self.pending = Some(Transmit::Ack(block));
        }
        Some(data)
    }

    /// A block out of sequence: the one rule of the module doc.
    fn handle_stray(&mut self, block: u16) {
        self.stats.stray_blocks += 1;
        let same_burst = self
            .last_stray
            .is_some_and(|last| block == last.wrapping_add(1));
        self.last_stray = Some(block);
        if !same_burst || self.config.reack_every_stray {
            self.stats.reacks += 1;
            self.since_ack = 0;
            if self.opts.msftwindow() {
                // A gap: ask for a smaller window.
                self.window = (self.window / 2).max(1);
            }
            self.pending = Some(Transmit::Ack(self.last_in_order()));
        }
    }

    /// After the end: a repeated final block means its ACK was lost, so it is sent again.
    fn dally(&mut self, datagram: &[u8]) {
        if let Ok(Packet::Data { block, .. }) = Packet::parse(datagram) {
            if block == self.last_in_order() {
                self.stats.stray_blocks += 1;
                self.stats.reacks += 1;
                self.pending = Some(Transmit::Ack(block));
            }
        }
    }

    /// Something new arrived: the retry budget starts again and the timer restarts from now.
    fn progress(&mut self, now: Instant) {
        self.tries = 0;
        self.deadline = now + self.config.timeout;
    }

    /// Writes ACK `block` into `buf` as this read sends it: with `msftwindow` granted, followed
    /// by the size of the next window. Returns its length (4 or 5).
    pub fn emit_ack(&self, block: u16, buf: &mut [u8; 5]) -> usize {
        let [hi, lo] = block.to_be_bytes();
        buf[..4].copy_from_slice(&[0, 4, hi, lo]);
        if self.opts.msftwindow() {
            buf[4] = u8::try_from(self.window).unwrap_or(u8::MAX);
            return 5;
        }
        4
    }

    /// The wire number of the last block received in sequence (0 for the OACK or nothing).
    fn last_in_order(&self) -> u16 {
        wire(self.next - 1)
    }

    fn finish(&mut self, now: Instant, outcome: Outcome) {
        self.state = State::Done(outcome);
        self.finished = Some(now);
    }
}

/// The wire block number of an absolute block: its low 16 bits.
fn wire(block: u64) -> u16 {
    block as u16
}

#[cfg(test)]
mod tests;
