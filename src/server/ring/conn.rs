//! One transfer inside the engine, and how what its [`Transfer`] asks for becomes submissions.
//!
//! The drain order documented on [`crate::transfer`] is followed at each flush: what came in
//! has been handed to the transfer already (by the completions), so a flush sends what it asks
//! for, then sets the retransmission timer. One send is in flight per transfer at a time: its
//! iovecs and message live in the transfer's box until the completion, and a window too large
//! for one GSO send goes out in several, one after the other.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use io_uring::{opcode, squeue, types};

use super::{push, user_data, Engine, Op, Target};
use crate::packet::{self, ErrorCode, DATA_HEADER_LEN};
use crate::server::cache::{Lease, Piece};
use crate::server::driver::{self, End, Meta, GSO_BYTES_MAX, GSO_SEGMENTS_MAX, SMALL_PACKET};
use crate::server::shard::{Prepared, Slot};
use crate::server::socket::Reply;
use crate::server::window::{unchanged_fd, Data, OpenFiles, ReadError, Window};
use crate::transfer::{Blocks, Transfer, Transmit};

/// A running transfer.
pub(super) struct Conn {
    pub gen: u32,
    pub t: Transfer,
    /// The transfer socket (closed when the transfer is dropped); `None` in single-port mode.
    socket: Option<std::net::UdpSocket>,
    /// In single-port mode: the main socket, and where its datagrams to this client go.
    main_fd: RawFd,
    reply: Option<Reply>,
    /// Its slot in the ring's fixed-file table, where it has one.
    pub fixed: Option<u32>,
    pub data: Data<std::fs::File>,
    /// The chunks covering the blocks in flight and those read ahead.
    pub window: Window,
    /// Chunks being read for this transfer.
    pub awaiting: Vec<u64>,
    /// A chunk read failed: the transfer ends with this ERROR when it next needs data.
    pub failed: Option<ReadError>,
    /// A run of blocks taken from the transfer and not sent yet (its chunks are being read, or
    /// it follows a send still in flight).
    stalled: Option<Blocks>,
    /// The run in the send in flight, to send again one datagram at a time if the path refuses
    /// segmentation offload.
    in_flight: Option<Blocks>,
    /// Whether the socket cuts sends into datagrams (UDP GSO).
    gso: bool,
    /// Whether the iovecs hold several datagrams for GSO to cut.
    gso_run: bool,
    pub sending: bool,
    pub receiving: bool,
    pub dirty: bool,
    /// Whether the client has sent anything to this transfer (so it heard the first reply).
    pub answered: bool,
    /// Port-unreachable errors in a row.
    pub refused: u32,
    /// Spurious timeouts already learned from (see `timer::Lag`).
    pub spurious: u64,
    /// The tick of the timer entry this transfer last armed.
    pub timer_at: Option<u64>,
    /// How it ended, once it has; the slot is freed when nothing is left in flight.
    pub end: Option<End>,
    pieces: Vec<Piece>,
    iovecs: Vec<libc::iovec>,
    msg: libc::msghdr,
    small: [u8; SMALL_PACKET],
    pub meta: Meta,
    /// A netascii encoding's place in the memory budget.
    _lease: Option<Lease>,
    /// The transfer's place in the server's limits.
    _slot: Slot,
}

impl Conn {
    pub(super) fn new(
        prepared: Prepared,
        gen: u32,
        fixed: Option<u32>,
        (main_fd, main_v6): (RawFd, bool),
        files: &mut OpenFiles<std::fs::File>,
    ) -> Self {
        let Prepared {
            socket,
            local,
            source,
            lease,
            transfer: t,
            meta,
            slot,
        } = prepared;
        let data = files.data(source, |file| file);
        let segment = DATA_HEADER_LEN + usize::from(t.options().blksize().get());
        let windowed = t.options().windowsize().get() > 1;
        let (gso, reply) = match &socket {
            Some(socket) => (
                windowed && crate::server::socket::enable_gso(socket.as_raw_fd(), segment as u16),
                None,
            ),
            // From the main socket, GSO is asked per send, by a control message.
            None => (
                windowed,
                Some(Reply::new(meta.peer, local, main_v6, segment as u16)),
            ),
        };
        Self {
            gen,
            t,
            socket,
            main_fd,
            reply,
            fixed,
            data,
            window: Window::default(),
            awaiting: Vec::new(),
            failed: None,
            stalled: None,
            in_flight: None,
            gso,
            gso_run: false,
            sending: false,
            receiving: false,
            dirty: false,
            answered: false,
            refused: 0,
            spurious: 0,
            timer_at: None,
            end: None,
            pieces: Vec::new(),
            iovecs: Vec::new(),
            // SAFETY: all-zero is a valid msghdr (no name, no control, no iovecs).
            msg: unsafe { std::mem::zeroed() },
            small: [0; SMALL_PACKET],
            meta,
            _lease: lease,
            _slot: slot,
        }
    }

    /// Whether a request for `filename` repeats this transfer's (RFC 1350 §4: the client has
    /// not heard from it yet and asks again).
    pub(super) fn repeat_of(&self, filename: &str) -> bool {
        self.end.is_none() && !self.answered && *self.meta.filename == *filename
    }

    fn target(&self) -> Target {
        match (self.fixed, &self.socket) {
            (Some(index), _) => Target::Fixed(index),
            (None, Some(socket)) => Target::Fd(socket.as_raw_fd()),
            (None, None) => Target::Fd(self.main_fd),
        }
    }

    /// Whether the transfer has a socket of its own to receive on (not in single-port mode).
    pub(super) fn own_socket(&self) -> bool {
        self.socket.is_some()
    }

    /// The multishot receive for this transfer's socket.
    pub(super) fn recv_entry(&self, group: u16, slot: u32) -> squeue::Entry {
        let entry = match self.target() {
            Target::Fixed(i) => opcode::RecvMulti::new(types::Fixed(i), group).build(),
            Target::Fd(fd) => opcode::RecvMulti::new(types::Fd(fd), group).build(),
        };
        entry.user_data(user_data(Op::Recv, slot, self.gen))
    }

    /// The send of `self.iovecs` as one message.
    fn send_entry(&mut self, slot: u32) -> squeue::Entry {
        self.msg.msg_iov = self.iovecs.as_mut_ptr();
        self.msg.msg_iovlen = self.iovecs.len();
        if let Some(reply) = &mut self.reply {
            reply.apply(&mut self.msg, self.gso_run);
        }
        let msg: *const libc::msghdr = &self.msg;
        let entry = match self.target() {
            Target::Fixed(i) => opcode::SendMsg::new(types::Fixed(i), msg).build(),
            Target::Fd(fd) => opcode::SendMsg::new(types::Fd(fd), msg).build(),
        };
        entry.user_data(user_data(Op::Send, slot, self.gen))
    }

    /// Sets the iovecs to the first `len` bytes of the small-packet buffer.
    fn small_iovec(&mut self, len: usize) {
        self.gso_run = false;
        self.pieces.clear();
        self.iovecs.clear();
        self.iovecs.push(libc::iovec {
            iov_base: self.small.as_mut_ptr().cast(),
            iov_len: len,
        });
    }

    /// Sets the iovecs to the first blocks of `run` that one send can carry; returns the rest,
    /// or `None` for a block whose chunks are not held.
    fn blocks_iovecs(&mut self, run: Blocks) -> Option<Option<Blocks>> {
        let segment = DATA_HEADER_LEN + usize::from(self.t.options().blksize().get());
        let per_send = if self.gso {
            (GSO_BYTES_MAX / segment).clamp(1, GSO_SEGMENTS_MAX)
        } else {
            1
        };
        let count = usize::from(run.count).min(per_send) as u16;
        self.gso_run = count > 1;
        self.pieces.clear();
        for block in run.first..run.first + u64::from(count) {
            if !self
                .window
                .pieces(&self.data, &self.t, block, &mut self.pieces)
            {
                self.pieces.clear();
                return None;
            }
        }
        self.iovecs.clear();
        self.iovecs.extend(self.pieces.iter().map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        }));
        let rest = (count < run.count).then(|| Blocks {
            first: run.first + u64::from(count),
            count: run.count - count,
            retransmit: run.retransmit,
        });
        Some(rest)
    }
}

impl Engine {
    /// Flushes every transfer marked since the last flush, with one clock reading: the sends
    /// leave with the submission that follows at once.
    pub(super) fn flush_dirty(&mut self, now: Instant) {
        self.lag_floor = self.lag.floor(now);
        let mut dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let Some(mut conn) = self.conns[slot as usize].take() else {
                continue;
            };
            conn.dirty = false;
            self.flush(&mut conn, slot, now);
            if conn.end.is_some() && !conn.sending && !conn.receiving {
                self.free(slot, conn);
            } else {
                self.conns[slot as usize] = Some(conn);
            }
        }
        dirty.clear();
        // Flushing may mark transfers again (a send to follow a send): they wait for the next.
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
    }

    /// Sends what the transfer asks for, one send at a time; then reads ahead and arms its
    /// timer, or ends it.
    fn flush(&mut self, conn: &mut Conn, slot: u32, now: Instant) {
        if conn.sending || conn.end.is_some() {
            return;
        }
        conn.t.set_rto_floor(self.lag_floor);
        if let Some(e) = conn.failed.take() {
            // A chunk read failed, the read-ahead's included: the file shrank under the
            // transfer or cannot be read, and trying again would only fail again (at once, on
            // every turn). The transfer ends with the ERROR.
            conn.stalled = None;
            conn.t.abort(now, e.code, e.message);
        }
        if let Some(run) = conn.stalled.take() {
            if !self.send_run(conn, slot, run, now) {
                return;
            }
            if conn.sending {
                return;
            }
        }
        while let Some(transmit) = conn.t.poll_transmit(now) {
            match transmit {
                Transmit::Oack => match conn.t.emit_oack(&mut conn.small) {
                    Ok(n) => {
                        conn.small_iovec(n);
                        self.send(conn, slot, None);
                        return;
                    }
                    Err(_) => {
                        // Cannot happen with the options this server grants; never leave the
                        // client waiting if it does.
                        tracing::warn!("OACK does not fit in {SMALL_PACKET} bytes");
                        conn.t
                            .abort(now, ErrorCode::Undefined, "Cannot build the OACK");
                    }
                },
                Transmit::Error { code, message } => {
                    let n = packet::emit_error(code, message, &mut conn.small).unwrap_or(0);
                    conn.small_iovec(n);
                    self.send(conn, slot, None);
                    return;
                }
                Transmit::Blocks(run) => {
                    if !self.send_run(conn, slot, run, now) || conn.sending {
                        return;
                    }
                }
            }
        }
        if let Some(outcome) = conn.t.outcome() {
            self.close(conn, slot, End::Outcome(outcome));
            return;
        }
        // Read the next window ahead while this one is on the wire.
        let window = u64::from(conn.t.options().windowsize().get());
        let ahead = (conn.t.acked() + 2 * window).min(conn.t.last_block());
        self.ensure(conn, slot, ahead);
        if let Some(deadline) = conn.t.poll_timeout() {
            // The wheel's entry is moved only earlier; a later deadline is found when the
            // earlier entry fires (see `Engine::expire`).
            let tick = self.wheel.tick(deadline);
            if conn.timer_at.is_none_or(|at| tick < at) {
                conn.timer_at = Some(self.wheel.insert(deadline, (slot, conn.gen)));
            }
        }
    }

    /// Sends (the first part of) a run of blocks once their chunks are held; otherwise keeps it
    /// until they are. Returns false when the transfer must wait.
    fn send_run(&mut self, conn: &mut Conn, slot: u32, run: Blocks, now: Instant) -> bool {
        let last = run.first + u64::from(run.count) - 1;
        if !self.ensure(conn, slot, last) {
            if let Some(e) = conn.failed.take() {
                conn.t.abort(now, e.code, e.message);
                return true;
            }
            conn.stalled = Some(run);
            return false;
        }
        // Never let a client finish a file that changed under it: what it got may mix two
        // versions.
        if last == conn.t.last_block() {
            if let Data::File(file, id) = &conn.data {
                if let Err(e) = unchanged_fd(file.as_raw_fd(), id) {
                    conn.t.abort(now, e.code, e.message);
                    return true;
                }
            }
        }
        match conn.blocks_iovecs(run) {
            Some(rest) => {
                conn.stalled = rest;
                // The stamp `poll_transmit` took may be a little old when the run waited.
                conn.t.handle_sent(now);
                self.send(conn, slot, Some(run));
                true
            }
            None => {
                // A chunk went missing between the check and the send: cannot happen, as the
                // window holds its chunks; the timer would repair it.
                tracing::debug!(first = run.first, "block not loaded");
                true
            }
        }
    }

    fn send(&mut self, conn: &mut Conn, slot: u32, run: Option<Blocks>) {
        let entry = conn.send_entry(slot);
        conn.sending = true;
        conn.in_flight = run;
        push(&mut self.ring, &entry);
    }

    pub(super) fn on_send(&mut self, slot: u32, gen: u32, result: i32) {
        let Some(mut conn) = self.take_conn(slot, gen) else {
            return;
        };
        conn.sending = false;
        conn.pieces.clear();
        let run = conn.in_flight.take();
        if result < 0 {
            match -result {
                libc::ECONNREFUSED => conn.refused += 1,
                libc::EIO | libc::EINVAL | libc::EMSGSIZE if conn.gso => {
                    // The path refuses segmentation offload: send the run again one datagram
                    // at a time, and every later one too.
                    conn.gso = false;
                    if let Some(run) = run {
                        conn.stalled = Some(match conn.stalled.take() {
                            Some(rest) => Blocks {
                                count: run.count + rest.count,
                                ..run
                            },
                            None => run,
                        });
                    }
                }
                // Anything else (a full socket buffer) is a loss the timer repairs.
                e => tracing::debug!(error = %std::io::Error::from_raw_os_error(e), "send failed"),
            }
            if conn.refused >= driver::REFUSED_MAX && conn.end.is_none() {
                self.close(&mut conn, slot, End::Unreachable);
            }
        }
        if conn.end.is_some() && !conn.receiving {
            self.free(slot, conn);
            return;
        }
        self.mark(&mut conn, slot);
        self.put_conn(slot, conn);
    }
}
