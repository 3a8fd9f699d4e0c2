//! The epoll engine: what a shard runs where io_uring is unavailable (a container under its
//! runtime's default seccomp profile, `kernel.io_uring_disabled`, a kernel before 6.0).
//!
//! It drives the same sans-IO [`Session`]s as the io_uring engine ([`super::ring`]), from one
//! loop per shard with no task, future or waker per transfer: every transfer socket (the
//! server's TID, RFC 1350 §4) is registered with the shard's epoll instance under its slot, a
//! readable socket is drained with `recv` until it would block, a session's sends go out at
//! once with `sendmsg` (a window of blocks, RFC 7440, as one GSO send), its chunk reads are
//! `pread`s on this thread (microseconds for the page-cache hits a boot storm makes), shared
//! through the shard's chunk cache, and its timers live in the same wheel the engine uses.
//!
//! **Timers never outrun the queue**, as in the engine: a retransmission timer fires only for
//! a deadline that passed before the last wait began, and only after every socket that wait
//! reported readable has been drained, so a shard that falls behind never takes its own
//! queueing delay for loss.

use std::io;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::Socket;
use tokio::sync::watch;

use super::admit::{Prepared, Slot};
use super::cache::{Chunk, ChunkCache, Lease, Lookup, CHUNK};
use super::ending::{Ending, ReadError};
use super::pace::Pace;
use super::record;
use super::session::{Datagrams, Io, Sent, Session};
use super::slots::{self, MainPort, Opened, Slots, Turns};
use super::socket::{self, MainSocket, Reply};
use super::window::{chunk_len, read_custom, read_progress, Data, OpenFiles};
use super::{Backend, Shared};
use crate::resolve::Layout;

/// Readiness events taken per wait; more wait for the next (and the timers with them).
const MAX_EVENTS: usize = 1024;
/// The longest a shard sleeps, so a stop is seen promptly.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// `recvmmsg` batches taken from the main socket per wake-up before the transfers get a turn.
const MAIN_BATCHES: usize = 16;
/// Bytes read per datagram from a transfer socket: an ACK is 4, an ERROR at most 516 (RFC 1350
/// §5); a longer datagram is cut, which no valid packet is.
const RECV_SIZE: usize = 1024;
/// Datagrams read from one transfer socket per event: a client flooding its own transfer
/// socket cannot hold the shard's loop (the rest wait for the next turn, epoll reporting the
/// socket again, and the timers with them).
const RECV_PER_EVENT: usize = 256;
/// The main socket's epoll token; a transfer's is its slot and generation.
const MAIN: u64 = u64::MAX;
/// Generations are kept to 31 bits, so no transfer's token is [`MAIN`].
const GEN_MASK: u32 = 0x7FFF_FFFF;

/// Runs shard `index` on epoll until the server stops.
pub(crate) fn run(
    index: usize,
    socket: Socket,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Backend>,
) {
    let mut engine = match Poller::new(socket, shared, stop) {
        Ok(engine) => engine,
        Err(e) => {
            tracing::error!(shard = index, error = %e, "cannot start the epoll engine");
            return;
        }
    };
    let _ = ready.send(Backend::Epoll);
    engine.serve();
}

/// A running transfer.
struct Conn {
    gen: u32,
    session: Session<std::fs::File>,
    /// Its own socket, connected to the client; `None` in single-port mode.
    socket: Option<std::net::UdpSocket>,
    /// In single-port mode: where its datagrams from the main socket go.
    reply: Option<Reply>,
    /// A send its socket's full buffer held back (`EAGAIN`), in flight until it goes.
    blocked: Option<Datagrams>,
    dirty: bool,
    /// The tick of the timer entry this transfer last armed.
    timer_at: Option<u64>,
    /// A netascii encoding's place in the memory budget.
    _lease: Option<Lease>,
    /// The transfer's place in the server's limits.
    _slot: Slot,
}

slots::running!(Conn);

/// One shard's epoll engine.
struct Poller {
    epoll: OwnedFd,
    events: Vec<libc::epoll_event>,
    slots: Slots<Conn>,
    files: OpenFiles<std::fs::File>,
    cache: ChunkCache,
    pace: Pace,
    main: MainPort,
    /// Single-port transfers waiting for the main socket to be writable.
    main_writers: Vec<(u32, u32)>,
    main_fd: RawFd,
    main_v6: bool,
    recv: Vec<u8>,
    /// How the loop goes from one wait to the next (timers put off, a stop).
    turns: Turns,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

impl Poller {
    fn new(socket: Socket, shared: Arc<Shared>, stop: watch::Receiver<bool>) -> io::Result<Poller> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let main = MainSocket::new(socket)?;
        let main_fd = main.as_raw_fd();
        let main_v6 = main.is_v6();
        let engine = Poller {
            events: vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS],
            slots: Slots::new(GEN_MASK),
            files: OpenFiles::new(),
            cache: ChunkCache::new(shared.config.block_cache),
            pace: Pace::new(Instant::now()),
            main: MainPort::new(main, shared.config.single_port),
            main_writers: Vec::new(),
            main_fd,
            main_v6,
            recv: vec![0; RECV_SIZE],
            turns: Turns::default(),
            epoll,
            shared,
            stop,
        };
        engine.watch(main_fd, MAIN)?;
        Ok(engine)
    }

    /// Adds `fd` to the epoll set, readable events tagged `token`.
    fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, false)
    }

    /// Changes `fd`'s entry in the epoll set (`EPOLL_CTL_ADD`, `MOD` or `DEL`): readable events,
    /// and writable ones too when `writable`, tagged `token`.
    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        let out = if writable { libc::EPOLLOUT } else { 0 };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | out) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open; the kernel copies `event`.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The loop: send what the transfers ask for, wait, drain every socket the wait reported,
    /// then fire the timers that are due.
    fn serve(&mut self) {
        loop {
            self.flush_dirty();
            if self.turns.done(self.slots.running) {
                break;
            }
            let before_wait = Instant::now();
            let ready = self.wait(before_wait);
            let now = Instant::now();
            // A wait that filled its event list may have left sockets unseen.
            let mut starved = ready == MAX_EVENTS;
            for i in 0..ready {
                let (token, events) = (self.events[i].u64, self.events[i].events);
                let writable = events & libc::EPOLLOUT as u32 != 0;
                if token == MAIN {
                    if writable {
                        self.main_writable();
                    }
                    self.drain_main(now);
                } else {
                    let (slot, gen) = (token as u32, (token >> 32) as u32);
                    if writable {
                        self.writable(slot, gen);
                    }
                    starved |= self.on_readable(slot, gen, now);
                }
            }
            if self.main.more {
                self.drain_main(now);
            }
            // Timers only once every socket the wait reported is drained, and only for
            // deadlines that passed before it began (see the module documentation).
            if self.turns.timers(starved) {
                self.slots.expire(before_wait, &mut self.pace);
            }
            if self.turns.stop_asked(&self.stop, self.shared.config.grace) {
                self.close_main();
            }
        }
        let (hits, misses) = self.cache.counts();
        tracing::debug!(hits, misses, "chunk cache");
    }

    /// Waits for readable sockets, a timer or the idle limit; how many events there are.
    fn wait(&mut self, now: Instant) -> usize {
        let busy = self.main.more || !self.slots.dirty.is_empty();
        let timeout = Turns::timeout(&self.slots.wheel, busy, now, IDLE_WAIT);
        // Rounded up: a timer due in 0.4 ms must not turn into a busy loop of 0 ms waits.
        let ms = timeout.as_micros().div_ceil(1000) as i32;
        // SAFETY: `events` holds MAX_EVENTS entries for the kernel to fill.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                MAX_EVENTS as i32,
                ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::warn!(error = %e, "epoll_wait failed");
                std::thread::sleep(Duration::from_millis(1));
            }
            return 0;
        }
        n as usize
    }

    /// Feeds a transfer the datagrams its socket holds, up to [`RECV_PER_EVENT`]; whether
    /// some were left for the next turn.
    fn on_readable(&mut self, slot: u32, gen: u32, now: Instant) -> bool {
        let Some(mut conn) = self.slots.take(slot, gen) else {
            return false;
        };
        let mut left = false;
        if let Some(socket) = &conn.socket {
            let fd = socket.as_raw_fd();
            for read in 0.. {
                if read == RECV_PER_EVENT {
                    left = true;
                    break;
                }
                match socket::recv_now(fd, &mut self.recv) {
                    Ok(Some(n)) => {
                        let datagram = &self.recv[..n.min(RECV_SIZE)];
                        conn.session.handle_datagram(now, datagram, &mut self.pace);
                    }
                    Ok(None) => break,
                    // Linux reports a port-unreachable before the datagrams already queued:
                    // the session counts them and believes the client gone only when nothing
                    // else comes back.
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                        conn.session.handle_refused()
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "receive failed");
                        break;
                    }
                }
            }
        }
        self.slots.mark(&mut conn, slot);
        self.slots.put(slot, conn);
        left
    }

    /// Takes the datagrams waiting on the main socket, a bounded number of batches at a time.
    fn drain_main(&mut self, now: Instant) {
        slots::drain_main(self, MAIN_BATCHES, now);
    }

    /// Stops taking requests: the main socket leaves the port's `SO_REUSEPORT` group (in
    /// single-port mode it stays, for the running transfers, and requests are ignored).
    /// Closing the descriptor takes it out of the epoll set.
    fn close_main(&mut self) {
        if !self.main.single_port {
            // The socket may live on in other descriptors (systemd's, or other shards' where
            // they share the one it passed): closing ours alone would leave it in the set.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, self.main_fd, MAIN, false);
        }
        self.main.close();
    }

    /// Sends `datagrams` for the transfer in `slot`. A socket whose buffer is full
    /// (`EAGAIN`) keeps them as a send in flight, as the io_uring engine's kernel would: the
    /// session waits for it, and it goes once epoll says the socket is writable again.
    fn send(&mut self, conn: &mut Conn, slot: u32, datagrams: Datagrams) {
        let gso = datagrams.segment.is_some();
        let fd = conn.socket.as_ref().map_or(self.main_fd, |s| s.as_raw_fd());
        let reply = conn.reply.as_mut().map(|reply| (reply, gso));
        let result = socket::sendmsg(fd, &datagrams.pieces, reply);
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.blocked = Some(datagrams);
                let token = u64::from(conn.gen) << 32 | u64::from(slot);
                let registered = match &conn.socket {
                    Some(socket) => self.ctl(libc::EPOLL_CTL_MOD, socket.as_raw_fd(), token, true),
                    None => {
                        self.main_writers.push((slot, conn.gen));
                        self.ctl(libc::EPOLL_CTL_MOD, self.main_fd, MAIN, true)
                    }
                };
                if let Err(e) = registered {
                    tracing::warn!(error = %e, "cannot wait for a socket to be writable");
                }
            }
            result => {
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "send failed");
                }
                conn.session
                    .handle_sent(Sent::of(&result), datagrams.pieces);
            }
        }
    }

    /// Sends what the transfer in `slot` held back, now that its socket is writable.
    fn writable(&mut self, slot: u32, gen: u32) {
        let Some(mut conn) = self.slots.take(slot, gen) else {
            return;
        };
        if let Some(socket) = &conn.socket {
            let _ = self.ctl(
                libc::EPOLL_CTL_MOD,
                socket.as_raw_fd(),
                u64::from(gen) << 32 | u64::from(slot),
                false,
            );
        }
        if let Some(datagrams) = conn.blocked.take() {
            self.send(&mut conn, slot, datagrams);
        }
        self.slots.mark(&mut conn, slot);
        self.slots.put(slot, conn);
    }

    /// Sends what single-port transfers held back, now that the main socket is writable.
    fn main_writable(&mut self) {
        let _ = self.ctl(libc::EPOLL_CTL_MOD, self.main_fd, MAIN, false);
        for (slot, gen) in std::mem::take(&mut self.main_writers) {
            self.writable(slot, gen);
        }
    }

    /// Starts a prepared transfer in a free slot.
    fn start_transfer(&mut self, prepared: Box<Prepared>) {
        let Opened {
            session,
            socket,
            reply,
            lease,
            slot: place,
        } = slots::open(*prepared, &mut self.files, self.main_v6);
        let peer = session.meta().peer;
        let (slot, gen) = self.slots.open();
        if let Some(socket) = &socket {
            let token = u64::from(gen) << 32 | u64::from(slot);
            if let Err(e) = self.watch(socket.as_raw_fd(), token) {
                tracing::warn!(%peer, error = %e, "cannot watch a transfer socket");
                self.shared.counters.not_started();
                self.slots.cancel(slot);
                return;
            }
        }
        let conn = Box::new(Conn {
            gen,
            session,
            socket,
            reply,
            blocked: None,
            dirty: false,
            timer_at: None,
            _lease: lease,
            _slot: place,
        });
        self.slots.insert(slot, peer, conn);
    }

    /// Flushes every transfer marked since the last flush.
    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.slots.dirty);
        let now = Instant::now();
        for &slot in &dirty {
            let Some(mut conn) = self.slots.take_slot(slot) else {
                continue;
            };
            conn.dirty = false;
            match self.flush(&mut conn, slot, now) {
                Some(ending) => self.free(slot, conn, ending),
                None => self.slots.put(slot, conn),
            }
        }
        dirty.clear();
        // Flushing may mark transfers again: they wait for the next.
        dirty.append(&mut self.slots.dirty);
        self.slots.dirty = dirty;
    }

    /// Does what the session asks until it asks nothing more; how it ended, if it did.
    fn flush(&mut self, conn: &mut Conn, slot: u32, now: Instant) -> Option<Ending> {
        while let Some(io) = conn.session.poll_io(now, &self.pace) {
            match io {
                Io::Send(datagrams) => self.send(conn, slot, datagrams),
                Io::Read(index) => {
                    let chunk = self.read(&conn.session, index);
                    conn.session.handle_read(now, index, chunk);
                }
                Io::Arm(at) => {
                    self.slots.arm(conn, slot, at);
                }
                Io::Close(ending) => return Some(ending),
            }
        }
        None
    }

    /// Chunk `index` of the session's file: from the shard's cache, or read here.
    fn read(
        &mut self,
        session: &Session<std::fs::File>,
        index: u64,
    ) -> Result<Rc<Chunk>, ReadError> {
        let len = session.transfer().len();
        match session.data() {
            Data::File(file, id, layout) => match self.cache.lookup(*id, index) {
                Lookup::Hit(chunk) => Ok(chunk),
                // Reads here finish before anything else runs: nothing is ever half loaded.
                Lookup::Wait(_) => Err(ReadError::Failed),
                Lookup::Miss => {
                    let lease = self.shared.budget.lease(CHUNK);
                    match read_chunk(file, layout, len, index, lease) {
                        Ok(chunk) => {
                            let chunk = Rc::new(chunk);
                            self.cache.insert(*id, index, chunk.clone());
                            Ok(chunk)
                        }
                        Err(e) => {
                            self.cache.abandon(*id, index);
                            Err(e)
                        }
                    }
                }
            },
            Data::Custom(source) => {
                read_custom(&self.shared.budget, &**source, len, index).map(Rc::new)
            }
            // Bytes in memory are never read.
            Data::Memory(_) => Err(ReadError::Failed),
        }
    }

    /// Frees an ended transfer's slot: the log line, its socket (closing it takes it out of
    /// the epoll set), its place in the limits.
    fn free(&mut self, slot: u32, conn: Box<Conn>, ending: Ending) {
        self.slots.release(slot, &conn);
        record::ended(
            &self.shared,
            conn.session.meta(),
            conn.session.transfer(),
            ending,
        );
    }
}

slots::shard!(Poller, Conn);

/// Reads chunk `index` of a file of `len` bytes lying in `file` as `layout` says, with as many
/// `pread`s as it takes (one per extent it crosses, in a disk image).
fn read_chunk(
    file: &std::fs::File,
    layout: &Layout,
    len: u64,
    index: u64,
    lease: Lease,
) -> Result<Chunk, ReadError> {
    let want = chunk_len(len, index);
    let start = index * CHUNK as u64;
    let mut buf = vec![0; CHUNK];
    let mut done = 0;
    while done < want {
        // Past the extents is a file that lost its bytes, like one that shrank.
        let Some((at, run)) = layout.place(start + done as u64, want - done) else {
            return Err(ReadError::Changed);
        };
        done += read_progress(file.read_at(&mut buf[done..done + run], at))?;
    }
    Ok(Chunk::new(buf, want, lease))
}
