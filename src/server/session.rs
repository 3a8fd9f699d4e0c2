//! One transfer as the server sees it, sans-IO: the protocol's [`Transfer`] (RFC 1350 §6,
//! RFC 2347–2349, RFC 7440), the chunks of the file it holds and reads ahead, how its blocks
//! are batched into sends (a window as one GSO send), what a failed send or a closed port
//! means, the shard-wide floor under its timeout, and how it ends. Every executor (the io_uring
//! engine, epoll, tokio-uring) runs the same `Session` and decides nothing of its own.
//!
//! # Driving a session
//!
//! Time comes in as `now`, which never decreases. Inputs are `handle_*`; after any of them the
//! executor calls [`Session::poll_io`] until it returns `None`, and does what each [`Io`] says:
//!
//! - [`Io::Send`]: send the pieces as one message, cut into datagrams of `segment` bytes by
//!   UDP GSO when it is `Some`, then report with [`Session::handle_sent`] (one send is in
//!   flight at a time; the datagrams are stamped as leaving when `poll_io` hands them out, so
//!   an executor hands them to the kernel at once);
//! - [`Io::Read`]: get chunk `index` of the file (from the shard's cache, or by reading it)
//!   and give it with [`Session::handle_read`], now or later;
//! - [`Io::Arm`]: call [`Session::handle_timeout`] at that instant (replacing any earlier
//!   instant it was given; a timer that fires early is harmless);
//! - [`Io::Close`]: the transfer is over; log it, and free its socket once nothing is in flight.
//!
//! Datagrams from the client go to [`Session::handle_datagram`], every one the executor can see
//! *before* a timer is handled: a timer must never fire for an ACK that has already arrived
//! and waits to be read (the delay is the server's, not a loss).

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::cache::{Chunk, Lease, Piece};
use super::ending::{Ending, ReadError};
use super::pace::Pace;
use super::window::{chunks_for, Data, FileHandle, Window};
use crate::packet::{self, Mode, DATA_HEADER_LEN};
use crate::transfer::{Blocks, Transfer, Transmit};

/// Datagrams in one GSO send: the kernel's UDP_MAX_SEGMENTS is 64 on older kernels.
const GSO_SEGMENTS_MAX: usize = 64;
/// Bytes in one GSO send: a UDP datagram's payload limit, less the IPv6 headers' worst case.
const GSO_BYTES_MAX: usize = 65_000;
/// Room for an OACK or an ERROR: an OACK carries at most the five options this server grants,
/// each with a short number, and every ERROR message is one of ours.
const SMALL_PACKET: usize = 512;
/// Port-unreachable errors in a row (no datagram from the client between them) after which the
/// client is taken to be gone. Linux reports a port-unreachable before datagrams already
/// queued, and the client's final ACK may be among them, so one is not enough.
const REFUSED_MAX: u32 = 3;

/// What the shard logs of a transfer.
#[derive(Debug)]
pub(crate) struct Meta {
    pub peer: std::net::SocketAddr,
    pub filename: Box<str>,
    pub mode: Mode,
    /// The options the request asked for, for the log line.
    pub asked: Box<str>,
}

/// What an executor does next for a session.
#[derive(Debug)]
pub(crate) enum Io {
    /// Send these datagrams, then call [`Session::handle_sent`].
    Send(Datagrams),
    /// Chunk `index` of the file is needed: give it to [`Session::handle_read`].
    Read(u64),
    /// Call [`Session::handle_timeout`] at this instant.
    Arm(Instant),
    /// The transfer is over.
    Close(Ending),
}

/// One send: the iovecs of one or more datagrams.
#[derive(Debug)]
pub(crate) struct Datagrams {
    pub pieces: Vec<Piece>,
    /// The size of each datagram but the last, when the pieces hold several (UDP GSO's
    /// segment size); `None` for a single datagram.
    pub segment: Option<u16>,
}

/// How a send ended, as far as the session cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// It left (or was dropped silently on the way, which the timer repairs).
    Ok,
    /// The client's host said its port is closed (ICMP port unreachable, `ECONNREFUSED`).
    Refused,
    /// The path refused the message as too large or malformed (`EIO`, `EINVAL`, `EMSGSIZE`):
    /// where it was a GSO send, segmentation offload is refused.
    Rejected,
    /// Any other failure (a full socket buffer): a loss the timer repairs.
    Failed,
}

impl Sent {
    /// How a send that returned `errno` (0: success) ended.
    pub(crate) fn of_errno(errno: i32) -> Sent {
        match errno {
            0 => Sent::Ok,
            libc::ECONNREFUSED => Sent::Refused,
            libc::EIO | libc::EINVAL | libc::EMSGSIZE => Sent::Rejected,
            _ => Sent::Failed,
        }
    }

    /// How a send with this result ended.
    pub(crate) fn of<T>(result: &std::io::Result<T>) -> Sent {
        match result {
            Ok(_) => Sent::Ok,
            Err(e) => Sent::of_errno(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
}

/// One transfer as the server sees it; see the [module documentation](self).
pub(crate) struct Session<F> {
    meta: Meta,
    t: Transfer,
    data: Data<F>,
    /// The chunks covering the blocks in flight and those read ahead.
    window: Window,
    /// Chunks asked for with [`Io::Read`] and not given yet.
    reading: Vec<u64>,
    /// Chunks to ask for at the next [`Session::poll_io`].
    to_read: Vec<u64>,
    /// A run of blocks taken from the transfer and not sent yet: its chunks are being read, or
    /// it follows a send still in flight.
    stalled: Option<Blocks>,
    /// The run in the send in flight, to send again one datagram at a time if the path refuses
    /// segmentation offload.
    in_flight: Option<(Blocks, bool)>,
    sending: bool,
    /// Whether several blocks may go in one send (the socket cuts them, UDP GSO).
    gso: bool,
    /// Pieces kept between sends, so a send allocates nothing.
    spare: Vec<Piece>,
    /// The instant last handed out with [`Io::Arm`] and not yet handled.
    armed: Option<Instant>,
    /// A due timeout the shard's retransmission budget put off until then.
    deferred: Option<Instant>,
    refused: u32,
    answered: bool,
    /// Told when the client first answers, where other shards need to know (a shared socket).
    tell_answered: Option<Arc<AtomicBool>>,
    /// The first chunk's place in the memory budget, held until a chunk comes in.
    first_chunk: Option<Rc<Lease>>,
    /// Whether any DATA has gone out (a client's ERROR 8 before it is a `tsize` probe).
    data_sent: bool,
    /// Why the server ended the transfer itself, if it did.
    aborted: Option<Ending>,
    /// How it ended, once decided; `closed` once [`Io::Close`] went out.
    ending: Option<Ending>,
    closed: bool,
}

impl<F: FileHandle> Session<F> {
    /// A session for transfer `t` of `data`.
    pub(crate) fn new(meta: Meta, t: Transfer, data: Data<F>) -> Self {
        Self {
            meta,
            t,
            data,
            window: Window::default(),
            reading: Vec::new(),
            to_read: Vec::new(),
            stalled: None,
            in_flight: None,
            sending: false,
            gso: false,
            spare: Vec::new(),
            armed: None,
            deferred: None,
            refused: 0,
            answered: false,
            tell_answered: None,
            first_chunk: None,
            data_sent: false,
            aborted: None,
            ending: None,
            closed: false,
        }
    }

    /// The GSO segment size the session would like its socket to cut sends at: `Some` for a
    /// windowed transfer (RFC 7440), where a window goes out as one send. The executor tells
    /// whether the socket took it with [`Session::set_gso`].
    pub(crate) fn gso_segment(&self) -> Option<u16> {
        let segment = DATA_HEADER_LEN + usize::from(self.t.options().blksize().get());
        (self.t.options().window_max().get() > 1).then_some(segment as u16)
    }

    /// Whether the socket cuts sends at [`Session::gso_segment`].
    pub(crate) fn set_gso(&mut self, enabled: bool) {
        self.gso = enabled && self.gso_segment().is_some();
    }

    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }

    pub(crate) fn transfer(&self) -> &Transfer {
        &self.t
    }

    /// Where the transfer's bytes come from, for an executor answering [`Io::Read`].
    pub(crate) fn data(&self) -> &Data<F> {
        &self.data
    }

    /// Sets `flag` when the client first answers, if there is one (see
    /// [`Slot::answered`](super::admit::Slot::answered)).
    pub(crate) fn tell_answered(&mut self, flag: Option<Arc<AtomicBool>>) {
        self.tell_answered = flag;
    }

    /// Holds `lease`, the place admission kept in the memory budget for the first chunk, until
    /// a chunk comes in (see [`ChunkCache::reserve_first`](super::cache::ChunkCache)).
    pub(crate) fn reserve_first_chunk(&mut self, lease: Option<Rc<Lease>>) {
        self.first_chunk = lease;
    }

    /// Whether a request for `filename` from this transfer's client repeats its request (RFC
    /// 1350 §4: the client has not heard from the transfer yet and asks again).
    pub(crate) fn repeats(&self, filename: &str) -> bool {
        self.ending.is_none() && !self.answered && *self.meta.filename == *filename
    }

    /// A datagram from the client's transfer ID.
    pub(crate) fn handle_datagram(&mut self, now: Instant, datagram: &[u8], pace: &mut Pace) {
        if self.ending.is_some() {
            return;
        }
        self.refused = 0;
        if !self.answered {
            self.answered = true;
            if let Some(flag) = &self.tell_answered {
                flag.store(true, Ordering::Relaxed);
            }
        }
        let acked = self.t.acked();
        self.t.handle_datagram(now, datagram);
        if let Some(rtt) = self.t.take_rtt_sample() {
            pace.sample(now, rtt);
        }
        let acked_now = self.t.acked();
        if acked_now > acked {
            match &mut self.stalled {
                // The transfer queued the window after the new ACK, which supersedes the rest
                // of a run not sent yet (a window too large for one GSO send, or waiting for
                // chunks).
                Some(_) if self.t.resends_from_acked() => self.stalled = None,
                // Only new blocks are queued (a resent window is on its way): the rest of the
                // run still goes first, less what the client now has.
                Some(run) => {
                    let end = run.first + u64::from(run.count);
                    if end <= acked_now + 1 {
                        self.stalled = None;
                    } else if run.first <= acked_now {
                        run.count = (end - acked_now - 1) as u16;
                        run.first = acked_now + 1;
                    }
                }
                None => {}
            }
        }
    }

    /// A receive failed because the client's port is closed (ICMP port unreachable).
    pub(crate) fn handle_refused(&mut self) {
        self.refused += 1;
        if self.refused >= REFUSED_MAX {
            self.close(Ending::Unreachable);
        }
    }

    /// The client repeated its request on the main port: its first reply was lost.
    pub(crate) fn handle_repeat(&mut self, now: Instant) {
        if self.ending.is_none() {
            self.t.handle_repeat(now);
        }
    }

    /// Whether the transfer's retransmission timer has really expired at `now` (a timer armed
    /// for an earlier instant fires before it): then, and only then, an executor that can
    /// see more datagrams waiting hands them in before [`Session::handle_timeout`].
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| deadline <= now)
    }

    /// When the transfer's timer is due: its retransmission deadline, or later if the shard's
    /// budget put it off.
    fn deadline(&self) -> Option<Instant> {
        let deadline = self.t.poll_timeout()?;
        Some(self.deferred.map_or(deadline, |at| at.max(deadline)))
    }

    /// The instant last given with [`Io::Arm`] came; `now` is a time by which every datagram
    /// the client sent before it has been handed in.
    pub(crate) fn handle_timeout(&mut self, now: Instant, pace: &mut Pace) {
        self.armed = None;
        match self.deadline() {
            // Armed for an earlier deadline that progress has moved on: armed again at
            // the next poll.
            Some(deadline) if deadline > now => {}
            Some(_) if pace.retransmit(now) => {
                self.deferred = None;
                self.t.handle_timeout(now);
            }
            // Many timeouts at once and few ACKs: a delay the shard shares, not a loss. This
            // one waits a little, and its ACK usually comes first.
            Some(_) => self.deferred = Some(now + Pace::deferral()),
            None => {}
        }
    }

    /// The send last handed out has completed; its pieces come back for the next one.
    pub(crate) fn handle_sent(&mut self, sent: Sent, mut pieces: Vec<Piece>) {
        self.sending = false;
        pieces.clear();
        self.spare = pieces;
        let in_flight = self.in_flight.take();
        match sent {
            Sent::Ok | Sent::Failed => {}
            Sent::Refused => self.handle_refused(),
            Sent::Rejected => {
                if let Some((run, true)) = in_flight {
                    // The path refuses segmentation offload: this run goes again one datagram
                    // per send, and so does every later one.
                    self.gso = false;
                    self.stalled = Some(match self.stalled.take() {
                        Some(rest) => Blocks {
                            count: run.count + rest.count,
                            ..run
                        },
                        None => run,
                    });
                }
            }
        }
    }

    /// Chunk `index` of the file, asked for with [`Io::Read`].
    pub(crate) fn handle_read(
        &mut self,
        now: Instant,
        index: u64,
        chunk: Result<Rc<Chunk>, ReadError>,
    ) {
        self.reading.retain(|&i| i != index);
        // The chunk now counts for itself (or was cached, or failed).
        self.first_chunk = None;
        if self.ending.is_some() {
            return;
        }
        match chunk {
            Ok(chunk) => {
                // A file rewritten in place gives new bytes to every read after the change:
                // checked as each chunk comes in (one fstat per 64 KiB), so the client never gets
                // more than the chunks it already had of the old version, rather than learning
                // of it only before the last block.
                if let Data::File(file, id, _) = &self.data {
                    if !file.unchanged(id) {
                        return self.abort(now, Ending::FileChanged);
                    }
                }
                self.window.insert(index, chunk)
            }
            // The file shrank under the transfer or cannot be read; trying again would only
            // fail again. The read-ahead's failure too: the block will be needed.
            Err(e) => self.abort(now, Ending::from(e)),
        }
    }

    /// Ends the transfer without a word to the client (it has moved on, or is gone).
    pub(crate) fn close(&mut self, ending: Ending) {
        if self.ending.is_none() {
            self.ending = Some(ending);
            self.stalled = None;
        }
    }

    /// What to do next; call until `None` after every input.
    pub(crate) fn poll_io(&mut self, now: Instant, pace: &Pace) -> Option<Io> {
        if self.closed {
            return None;
        }
        if let Some(index) = self.to_read.pop() {
            return Some(Io::Read(index));
        }
        if self.sending {
            return None;
        }
        if let Some(ending) = self.ending {
            self.closed = true;
            return Some(Io::Close(ending));
        }
        self.t.set_rto_floor(pace.floor(now));
        if self.t.is_over() {
            // Over (the client's ERROR, the last timeout, a failure whose ERROR is still to
            // go): a run still waiting for its chunks never goes out, and a chunk that comes
            // in is not waited for.
            self.stalled = None;
        }
        loop {
            if let Some(run) = self.stalled.take() {
                match self.send_run(now, run) {
                    Some(send) => return Some(send),
                    None if self.stalled.is_some() => {
                        // Waiting for chunks: ask for them.
                        return self.to_read.pop().map(Io::Read);
                    }
                    // Aborted: the ERROR is next.
                    None => {}
                }
            }
            let Some(transmit) = self.t.poll_transmit(now) else {
                break;
            };
            match transmit {
                Transmit::Oack => {
                    let mut oack = vec![0; SMALL_PACKET];
                    match self.t.emit_oack(&mut oack) {
                        Ok(n) => {
                            oack.truncate(n);
                            return Some(self.send_small(oack));
                        }
                        // Cannot happen with the options this server grants; never leave the
                        // client waiting if it does.
                        Err(_) => self.abort(now, Ending::Internal),
                    }
                }
                Transmit::Error { code, message } => {
                    let mut error = vec![0; SMALL_PACKET];
                    let n = packet::emit_error(code, message, &mut error).unwrap_or(0);
                    error.truncate(n);
                    return Some(self.send_small(error));
                }
                Transmit::Blocks(run) => self.stalled = Some(run),
            }
        }
        self.after_sends()
    }

    /// Once everything is sent: the ending, or the read-ahead and the timer.
    fn after_sends(&mut self) -> Option<Io> {
        if let Some(outcome) = self.t.outcome() {
            let ending = self
                .aborted
                .unwrap_or_else(|| Ending::of(outcome, self.data_sent));
            self.ending = Some(ending);
            self.closed = true;
            return Some(Io::Close(ending));
        }
        // Read the next window ahead while this one is on the wire.
        let window = u64::from(self.t.window_size());
        let ahead = (self.t.acked() + 2 * window).min(self.t.last_block());
        self.want(ahead);
        if let Some(index) = self.to_read.pop() {
            return Some(Io::Read(index));
        }
        let deadline = self.deadline()?;
        // Only ever earlier: nearly every ACK moves the deadline later, and a timer that fires
        // before it costs one wake-up where moving it would cost one per packet.
        if self.armed.is_none_or(|at| deadline < at) {
            self.armed = Some(deadline);
            return Some(Io::Arm(deadline));
        }
        None
    }

    /// Hands out (the first part of) a run once its chunks are held; otherwise keeps it and
    /// asks for them. `None` when it must wait, or the transfer was aborted.
    fn send_run(&mut self, now: Instant, run: Blocks) -> Option<Io> {
        let last = run.first + u64::from(run.count) - 1;
        if !self.want(last) {
            self.stalled = Some(run);
            return None;
        }
        // Never let a client finish a file that changed under it: what it got may mix two
        // versions.
        if last == self.t.last_block() {
            if let Data::File(file, id, _) = &self.data {
                if !file.unchanged(id) {
                    self.abort(now, Ending::FileChanged);
                    return None;
                }
            }
        }
        let segment = DATA_HEADER_LEN + usize::from(self.t.options().blksize().get());
        let per_send = match self.gso {
            true => (GSO_BYTES_MAX / segment).clamp(1, GSO_SEGMENTS_MAX),
            false => 1,
        };
        let count = usize::from(run.count).min(per_send) as u16;
        let mut pieces = std::mem::take(&mut self.spare);
        for block in run.first..run.first + u64::from(count) {
            if !self.window.pieces(&self.data, &self.t, block, &mut pieces) {
                // Cannot happen: the window holds the chunks `want` found. The timer would
                // repair it.
                tracing::debug!(block, "block not loaded");
                pieces.clear();
                self.spare = pieces;
                return None;
            }
        }
        self.stalled = (count < run.count).then(|| Blocks {
            first: run.first + u64::from(count),
            count: run.count - count,
            retransmit: run.retransmit,
        });
        // The stamp `poll_transmit` took is old when the run waited for its chunks or for the
        // send before it: the round trip counts from now, when the datagrams leave.
        self.t.handle_sent(now);
        self.data_sent = true;
        let sent = Blocks { count, ..run };
        let several = count > 1;
        self.sending = true;
        self.in_flight = Some((sent, several));
        Some(Io::Send(Datagrams {
            pieces,
            segment: several.then_some(segment as u16),
        }))
    }

    /// An OACK or an ERROR: one datagram.
    fn send_small(&mut self, bytes: Vec<u8>) -> Io {
        let mut pieces = std::mem::take(&mut self.spare);
        pieces.push(Piece::Owned(bytes));
        self.sending = true;
        self.in_flight = None;
        Io::Send(Datagrams {
            pieces,
            segment: None,
        })
    }

    /// Makes sure the chunks covering blocks `acked + 1 ..= upto` are held, asking for those
    /// that are not (and not asked for already); whether they all are.
    fn want(&mut self, upto: u64) -> bool {
        if self.window.holds(&self.data, &self.t, upto) {
            return true;
        }
        let Some((first, Some(last))) = chunks_for(&self.data, &self.t, upto) else {
            return true;
        };
        for index in (first..=last).rev() {
            // Every chunk still to ask for is also in `reading`.
            if self.window.get(index).is_none() && !self.reading.contains(&index) {
                self.reading.push(index);
                // Popped from the end: the first chunk is asked for first.
                self.to_read.push(index);
            }
        }
        false
    }

    /// Ends the transfer with the ERROR `ending` calls for.
    fn abort(&mut self, now: Instant, ending: Ending) {
        if self.aborted.is_some() || self.t.outcome().is_some() {
            return;
        }
        self.aborted = Some(ending);
        self.stalled = None;
        if let Some((code, message)) = ending.error() {
            self.t.abort(now, code, message);
        }
    }
}
