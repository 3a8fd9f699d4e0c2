//! One transfer inside the engine: its [`Session`], its socket, and how what the session asks
//! for becomes submissions. A flush calls [`Session::poll_io`] until it has nothing more: a send
//! is a `SENDMSG` whose iovecs and message live in the transfer's box until its completion, a
//! read goes to [`super::reads`], a deadline into the timer wheel.

use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use io_uring::{opcode, squeue, types};

use super::{push, user_data, Engine, Op, Target};
use crate::server::admit::{Prepared, Slot};
use crate::server::cache::{Lease, Piece};
use crate::server::ending::Ending;
use crate::server::session::{Datagrams, Io, Sent, Session};
use crate::server::slots::{self, Opened};
use crate::server::socket::Reply;
use crate::server::window::OpenFiles;

/// A running transfer.
pub(crate) struct Conn {
    pub gen: u32,
    pub session: Session<std::fs::File>,
    /// The transfer socket (closed when the transfer is dropped); `None` in single-port mode.
    socket: Option<std::net::UdpSocket>,
    /// In single-port mode: the main socket, and where its datagrams to this client go.
    main_fd: RawFd,
    reply: Option<Reply>,
    /// Its slot in the ring's fixed-file table, where it has one.
    pub fixed: Option<u32>,
    pub sending: bool,
    pub receiving: bool,
    pub dirty: bool,
    /// The tick of the timer entry this transfer last armed.
    pub timer_at: Option<u64>,
    /// How it ended, once the session said; the slot is freed when nothing is left in flight.
    pub ending: Option<Ending>,
    /// The pieces of the send in flight, given back to the session at its completion.
    pieces: Option<Vec<Piece>>,
    iovecs: Vec<libc::iovec>,
    msg: libc::msghdr,
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
        let Opened {
            session,
            socket,
            reply,
            lease,
            slot,
        } = slots::open(prepared, files, main_v6);
        Self {
            gen,
            session,
            socket,
            main_fd,
            reply,
            fixed,
            sending: false,
            receiving: false,
            dirty: false,
            timer_at: None,
            ending: None,
            pieces: None,
            iovecs: Vec::new(),
            // SAFETY: all-zero is a valid msghdr (no name, no control, no iovecs).
            msg: unsafe { std::mem::zeroed() },
            _lease: lease,
            _slot: slot,
        }
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

    /// The send of `datagrams` as one message; they live in the box until its completion.
    fn send_entry(&mut self, slot: u32, datagrams: Datagrams) -> squeue::Entry {
        let pieces = datagrams.pieces;
        self.iovecs.clear();
        self.iovecs.extend(pieces.iter().map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        }));
        self.pieces = Some(pieces);
        self.msg.msg_iov = self.iovecs.as_mut_ptr();
        self.msg.msg_iovlen = self.iovecs.len();
        if let Some(reply) = &mut self.reply {
            reply.apply(&mut self.msg, datagrams.segment.is_some());
        }
        let msg: *const libc::msghdr = &self.msg;
        let entry = match self.target() {
            Target::Fixed(i) => opcode::SendMsg::new(types::Fixed(i), msg).build(),
            Target::Fd(fd) => opcode::SendMsg::new(types::Fd(fd), msg).build(),
        };
        entry.user_data(user_data(Op::Send, slot, self.gen))
    }
}

crate::server::slots::running!(Conn);

impl Engine {
    /// Flushes every transfer marked since the last flush, with one clock reading: the sends
    /// leave with the submission that follows at once.
    pub(super) fn flush_dirty(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.slots.dirty);
        for &slot in &dirty {
            let Some(mut conn) = self.slots.take_slot(slot) else {
                continue;
            };
            conn.dirty = false;
            self.flush(&mut conn, slot, now);
            if conn.ending.is_some() && !conn.sending && !conn.receiving {
                self.free(slot, conn);
            } else {
                self.slots.put(slot, conn);
            }
        }
        dirty.clear();
        // Flushing may mark transfers again: they wait for the next.
        dirty.append(&mut self.slots.dirty);
        self.slots.dirty = dirty;
    }

    /// Does what the session asks until it asks nothing more.
    fn flush(&mut self, conn: &mut Conn, slot: u32, now: Instant) {
        while let Some(io) = conn.session.poll_io(now, &self.pace) {
            match io {
                Io::Send(datagrams) => {
                    let entry = conn.send_entry(slot, datagrams);
                    conn.sending = true;
                    push(&mut self.ring, &entry);
                }
                Io::Read(index) => self.read(conn, slot, index, now),
                Io::Arm(at) => {
                    self.slots.arm(conn, slot, at);
                }
                Io::Close(ending) => self.finish(conn, slot, ending),
            }
        }
    }

    pub(super) fn on_send(&mut self, slot: u32, gen: u32, result: i32) {
        let Some(mut conn) = self.slots.take(slot, gen) else {
            return;
        };
        conn.sending = false;
        let sent = Sent::of_errno(if result < 0 { -result } else { 0 });
        if sent != Sent::Ok {
            let e = std::io::Error::from_raw_os_error(-result);
            tracing::debug!(error = %e, "send failed");
        }
        let pieces = conn.pieces.take().unwrap_or_default();
        conn.session.handle_sent(sent, pieces);
        if conn.ending.is_some() && !conn.receiving {
            self.free(slot, conn);
            return;
        }
        self.slots.mark(&mut conn, slot);
        self.slots.put(slot, conn);
    }
}
