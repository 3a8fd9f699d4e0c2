//! The io_uring engine: one ring per shard, driven directly, every operation batched and armed
//! once.
//!
//! In a lock-step boot storm (RFC 1350 §6: one DATA, one ACK, repeated 700 times per MiB for
//! every client at once) the kernel's UDP path is the floor, and everything a server adds per
//! datagram is overhead. So per shard:
//!
//! - each transfer socket (the server's TID, RFC 1350 §4) is a registered (fixed) file with one
//!   **multishot receive** armed for its whole life, taking buffers the kernel picks from a
//!   **provided-buffer ring** ([`bufs::RecvRing`]): no re-arming, no buffer per waiting socket;
//! - sends are `SENDMSG` entries queued while completions are handled and submitted together by
//!   the one `io_uring_enter` that also waits for the next completions;
//! - file data is read once per 64 KiB chunk with `READ_FIXED` into registered buffers
//!   ([`bufs::Slab`]), shared through the shard's chunk cache, and sent from there (a window of
//!   blocks, RFC 7440, as one GSO send);
//! - retransmission timers live in a wheel of our own ([`super::timer::Wheel`]);
//! - nothing is allocated, and no future or waker exists, per datagram.
//!
//! The main socket is polled with one multishot poll and drained with `recvmmsg`, which also
//! gives each request's destination address (`IP_PKTINFO`).
//!
//! **Timers never outrun the queue.** A retransmission timer fires only for a deadline that
//! passed before the last wait began, and only after every completion that wait produced has
//! been handled: an ACK the kernel already holds is always seen before its transfer is declared
//! late. However far behind a saturated shard falls, its own queueing delay is never taken for
//! loss (a spurious retransmission costs a duplicate DATA and a duplicate ACK).

mod bufs;
mod conn;
mod reads;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::Socket;
use tokio::sync::watch;

use super::admit::Prepared;
use super::cache::{ChunkCache, CHUNK};
use super::ending::Ending;
use super::pace::Pace;
use super::record;
use super::slots::{self, MainPort, Slots, Turns};
use super::socket::MainSocket;
use super::window::OpenFiles;
use super::{Backend, Shared};
use crate::resolve::FileId;
use bufs::{RecvRing, Slab};
use conn::Conn;
use reads::ReadOp;

/// Submission queue entries; a full queue is submitted early, so this bounds nothing.
const SQ_ENTRIES: u32 = 4096;
/// Completion queue entries: sends, reads and receives of thousands of transfers between two
/// waits (about two per transfer in a lock-step storm). The kernel keeps overflowing
/// completions rather than dropping them (FEAT_NODROP), and the engine produces those before
/// any timer fires.
const CQ_ENTRIES: u32 = 32768;
/// Receive buffers in the provided ring by default (`Config::recv_ring`): datagrams taken
/// between two waits before receives run short (they then wait in their sockets, see
/// [`RecvRing`]).
const RECV_ENTRIES: u16 = 4096;
/// Bytes per receive buffer: an ACK is 4, an ERROR at most 516 (RFC 1350 §5); a longer
/// datagram is cut, which no valid packet is. Every buffer of the ring is touched in a storm,
/// so this is memory the shard holds (2.25 MiB), kept a multiple of 64 for alignment.
const RECV_SIZE: usize = 576;
/// The receive buffer group.
const BGID: u16 = 0;
/// The longest a shard sleeps, so a stop is seen promptly.
const IDLE_WAIT: Duration = Duration::from_millis(100);
/// Rounds of producing leftover completions before the timers are given up for a turn.
const FINISH_ROUNDS: usize = 16;
/// `recvmmsg` batches taken from the main socket per wake-up before the ring gets a turn.
const MAIN_BATCHES: usize = 16;

/// What a completion is for, in the top byte of its user data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    /// A transfer's multishot receive.
    Recv = 1,
    /// A transfer's send.
    Send = 2,
    /// A chunk read, indexed by read slot.
    Read = 3,
    /// The main socket's multishot poll.
    Main = 4,
    /// A cancellation (its own completion carries nothing).
    Cancel = 5,
}

/// Generations are kept to 24 bits, to fit the user data beside the op and the slot.
const GEN_MASK: u32 = 0xFF_FFFF;

fn user_data(op: Op, index: u32, gen: u32) -> u64 {
    (op as u64) << 56 | u64::from(gen & GEN_MASK) << 32 | u64::from(index)
}

fn decode(user_data: u64) -> (Option<Op>, u32, u32) {
    let op = match (user_data >> 56) as u8 {
        1 => Some(Op::Recv),
        2 => Some(Op::Send),
        3 => Some(Op::Read),
        4 => Some(Op::Main),
        5 => Some(Op::Cancel),
        _ => None,
    };
    (op, user_data as u32, (user_data >> 32) as u32 & GEN_MASK)
}

/// Runs shard `index` on io_uring until the server stops. Gives the socket back, with the
/// reason, where this kernel or sandbox refuses what the engine needs; the shard then serves
/// with the epoll backend.
pub(crate) fn run(
    index: usize,
    socket: Socket,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Backend>,
) -> Result<(), (io::Error, Socket)> {
    // A power of two, as the kernel's buffer rings require, of at most 32768.
    let entries = shared.config.recv_ring.clamp(16, 1 << 15);
    let tuning = Tuning {
        recv_entries: 1 << (15 - entries.leading_zeros()),
        ..Tuning::default()
    };
    run_with(index, socket, shared, stop, ready, tuning).map(|counts| {
        tracing::debug!(shard = index, ?counts, "engine counts");
    })
}

/// Sizes of the engine's kernel-shared tables, smaller in tests that exhaust them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// Buffers in the provided receive ring (a power of two).
    pub recv_entries: u16,
    /// Slots in the fixed-file table; `None`: as many as the descriptor limit.
    pub fixed_files: Option<u32>,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            recv_entries: RECV_ENTRIES,
            fixed_files: None,
        }
    }
}

/// What the engine did that shows how its tables held up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Multishot receives that ended because every receive buffer was taken.
    pub starved: u64,
    /// Multishot receives armed again after they ended.
    pub rearmed: u64,
    /// Transfers that ran on a plain descriptor because the fixed-file table was full.
    pub unfixed: u64,
}

/// [`run`] with the given table sizes; returns the engine's counts when it stops.
pub(crate) fn run_with(
    index: usize,
    socket: Socket,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Backend>,
    tuning: Tuning,
) -> Result<Counts, (io::Error, Socket)> {
    let ring = match build_ring() {
        Ok(ring) => ring,
        Err(e) => return Err((e, socket)),
    };
    let recv = match RecvRing::new(&ring.submitter(), BGID, tuning.recv_entries, RECV_SIZE) {
        Ok(recv) => recv,
        Err(e) => return Err((e, socket)),
    };
    let slab = match Slab::new(&ring.submitter(), shared.config.block_cache / CHUNK) {
        Ok(slab) => Some(slab),
        Err(e) => {
            if index == 0 {
                tracing::warn!(error = %e, "cannot register file buffers with io_uring (raise RLIMIT_MEMLOCK or grant CAP_IPC_LOCK); reading into unregistered buffers");
            }
            None
        }
    };
    let main = match MainSocket::new(socket) {
        Ok(main) => main,
        Err(e) => {
            tracing::error!(error = %e, "cannot use the main socket");
            return Ok(Counts::default());
        }
    };
    let fixed = fixed_table(&ring, tuning.fixed_files);
    let main_id = (main.as_raw_fd(), main.is_v6());
    let _ = ready.send(Backend::IoUring {
        registered_buffers: slab.is_some(),
    });
    let mut engine = Engine {
        ring,
        recv,
        slab,
        slots: Slots::new(GEN_MASK),
        fixed_free: (0..fixed).rev().collect(),
        files: OpenFiles::new(),
        cache: ChunkCache::new(shared.config.block_cache),
        reads: Vec::new(),
        reads_free: Vec::new(),
        loading: HashMap::new(),
        pace: Pace::new(Instant::now()),
        rearm: Vec::new(),
        cqes: Vec::with_capacity(1024),
        main: MainPort::new(main, shared.config.single_port),
        main_id,
        counts: Counts::default(),
        starved: false,
        turns: Turns::default(),
        spilled: 0,
        shared,
        stop,
    };
    engine.arm_main();
    engine.serve();
    engine.abandon_in_flight();
    let (hits, misses) = engine.cache.counts();
    tracing::debug!(
        shard = index,
        hits,
        misses,
        spilled = engine.spilled,
        "chunk cache"
    );
    Ok(engine.counts)
}

/// A ring for one shard: `SINGLE_ISSUER` and `DEFER_TASKRUN` (completions are produced only
/// when this thread waits for them, in one batch, rather than by interrupting it), falling back
/// to cooperative task running on kernels before 6.1.
fn build_ring() -> io::Result<IoUring> {
    // Multishot receives (and their buffer rings) came in Linux 6.0; an older kernel accepts the
    // ring and fails each receive, so it is refused here and the shard serves with epoll.
    if kernel_version().is_some_and(|v| v < (6, 0)) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the io_uring engine needs Linux 6.0 or later (multishot receives)",
        ));
    }
    // TASKRUN_FLAG: the kernel says in the ring when completions are still to be produced (a
    // wait produces a bounded number per call since Linux 6.13), so none is left behind
    // before the timers fire.
    let deferred = IoUring::builder()
        .setup_cqsize(CQ_ENTRIES)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(SQ_ENTRIES);
    match deferred {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(SQ_ENTRIES),
        Err(e) => Err(e),
    }
}

/// The running kernel's major and minor version, from `uname`.
fn kernel_version() -> Option<(u32, u32)> {
    // SAFETY: uname fills the struct it is given.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `name` is a valid, writable utsname.
    if unsafe { libc::uname(&mut name) } != 0 {
        return None;
    }
    let release: Vec<u8> = name
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let release = String::from_utf8_lossy(&release);
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Registers a sparse table of fixed files as large as the descriptor limit allows (each
/// transfer socket takes one slot); returns its size, 0 where the kernel refuses.
fn fixed_table(ring: &IoUring, size: Option<u32>) -> u32 {
    let size = size.unwrap_or_else(|| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            limit.rlim_cur.clamp(64, 65_536) as u32
        } else {
            1024
        }
    });
    if size == 0 {
        return 0;
    }
    match ring.submitter().register_files_sparse(size) {
        Ok(()) => size,
        Err(e) => {
            tracing::debug!(error = %e, "no fixed-file table; transfer sockets used by descriptor");
            0
        }
    }
}

/// One shard's engine. `ring` is the first field: it is dropped (cancelling everything in
/// flight) before the memory its operations point into.
pub(super) struct Engine {
    ring: IoUring,
    recv: RecvRing,
    slab: Option<Slab>,
    slots: Slots<Conn>,
    /// Free slots of the fixed-file table.
    fixed_free: Vec<u32>,
    /// Open files by identity, so transfers of one file share one descriptor.
    files: OpenFiles<std::fs::File>,
    cache: ChunkCache,
    reads: Vec<Option<ReadOp>>,
    reads_free: Vec<u32>,
    /// Chunk reads in flight, by file and chunk.
    loading: HashMap<(FileId, u64), u32>,
    /// The clients' round trips, a floor under every transfer's timeout.
    pace: Pace,
    /// Transfers whose receive ended and must be armed again.
    rearm: Vec<u32>,
    cqes: Vec<(u64, i32, u32)>,
    main: MainPort,
    /// The main socket's descriptor and whether it is IPv6, for single-port transfers.
    main_id: (RawFd, bool),
    counts: Counts,
    /// A receive ran out of buffers in this turn's completions (or completions kept coming).
    starved: bool,
    /// How the loop goes from one wait to the next (timers put off, a stop).
    turns: Turns,
    /// Chunk reads into heap buffers because the slab was empty.
    spilled: u64,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

impl Engine {
    /// The loop: send what the transfers ask for, submit and wait, handle every completion,
    /// then the timers that are due.
    fn serve(&mut self) {
        loop {
            let now = Instant::now();
            self.flush_dirty(now);
            if self.turns.done(self.slots.running) {
                break;
            }
            let before_wait = Instant::now();
            self.starved = false;
            self.wait(before_wait);
            let after_wait = Instant::now();
            self.handle_completions(after_wait);
            self.finish_completions(after_wait);
            // Timers only once every completion the wait produced has been handled, and only
            // for deadlines that passed before it began (see the module documentation). A
            // receive that ran out of buffers may leave datagrams unseen: no timers this turn.
            if self.turns.timers(self.starved) {
                self.slots.expire(before_wait, &mut self.pace);
            }
            if self.turns.stop_asked(&self.stop, self.shared.config.grace) {
                self.close_main();
            }
        }
    }

    /// Leaks the memory of operations still in flight when the engine stops (transfers given up
    /// at the end of the grace period): closing the ring does not wait for them, and a read on a
    /// slow disk or a send the kernel retries could still use that memory after the engine is
    /// gone. Registered buffers need nothing: the kernel holds their pages.
    fn abandon_in_flight(&mut self) {
        for conn in self.slots.drain() {
            if conn.sending {
                std::mem::forget(conn);
            }
        }
        for op in self.reads.iter_mut().filter_map(Option::take) {
            op.abandon();
        }
    }

    /// Submits what is queued and waits for a completion, a timer or the idle limit.
    fn wait(&mut self, now: Instant) {
        let busy = self.main.more || !self.slots.dirty.is_empty() || !self.rearm.is_empty();
        let timeout = Turns::timeout(&self.slots.wheel, busy, now, IDLE_WAIT);
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(e) => {
                tracing::warn!(error = %e, "io_uring_enter failed");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Handles every completion there is, in arrival order.
    fn handle_completions(&mut self, now: Instant) {
        let mut cqes = std::mem::take(&mut self.cqes);
        loop {
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if cqes.is_empty() {
                break;
            }
            for &(data, result, flags) in &cqes {
                let (op, index, gen) = decode(data);
                match op {
                    Some(Op::Recv) => self.on_recv(index, gen, result, flags, now),
                    Some(Op::Send) => self.on_send(index, gen, result),
                    Some(Op::Read) => self.on_read(index, result, now),
                    Some(Op::Main) => self.on_main(result, flags, now),
                    Some(Op::Cancel) | None => {}
                }
            }
            self.recv.publish();
        }
        self.cqes = cqes;
        if self.main.more {
            self.drain_main(now);
        }
        let rearm = std::mem::take(&mut self.rearm);
        for &slot in &rearm {
            if let Some(conn) = self.slots.get_mut(slot) {
                if !conn.receiving && conn.ending.is_none() {
                    let entry = conn.recv_entry(self.recv.group(), slot);
                    conn.receiving = true;
                    push(&mut self.ring, &entry);
                    self.counts.rearmed += 1;
                }
            }
        }
        self.rearm = rearm;
        self.rearm.clear();
    }

    /// Produces and handles the completions the last wait left for later: task work the kernel
    /// did not run in that call, or completions that overflowed the queue. Until then an ACK
    /// the kernel holds may be unseen, and the timers must not fire.
    fn finish_completions(&mut self, now: Instant) {
        for _ in 0..FINISH_ROUNDS {
            let pending = {
                let sq = self.ring.submission();
                sq.taskrun() || sq.cq_overflow()
            };
            if !pending {
                return;
            }
            // With the flag set, this enter asks for events and runs the task work.
            if let Err(e) = self.ring.submit() {
                if !matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) {
                    tracing::warn!(error = %e, "io_uring_enter failed");
                    return;
                }
            }
            self.handle_completions(now);
        }
        // Still more after that many rounds: the shard is flooded; timers wait a turn.
        self.starved = true;
    }

    /// Arms the multishot poll on the main socket.
    fn arm_main(&mut self) {
        if let Some(main) = &self.main.socket {
            let entry = opcode::PollAdd::new(types::Fd(main.as_raw_fd()), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(user_data(Op::Main, 0, 0));
            push(&mut self.ring, &entry);
        }
    }

    fn on_main(&mut self, result: i32, flags: u32, now: Instant) {
        if self.main.socket.is_none() {
            return;
        }
        if result < 0 && result != -libc::ECANCELED {
            tracing::warn!(error = %io::Error::from_raw_os_error(-result), "main socket poll failed");
        }
        self.drain_main(now);
        if !cqueue::more(flags) {
            self.arm_main();
        }
    }

    /// Takes the datagrams waiting on the main socket, a bounded number of batches at a time.
    fn drain_main(&mut self, now: Instant) {
        slots::drain_main(self, MAIN_BATCHES, now);
    }

    /// Stops taking requests: the main socket leaves the port's `SO_REUSEPORT` group (in
    /// single-port mode it stays, for the running transfers, and requests are ignored).
    fn close_main(&mut self) {
        if self.main.close() {
            let entry = opcode::AsyncCancel::new(user_data(Op::Main, 0, 0))
                .build()
                .user_data(user_data(Op::Cancel, 0, 0));
            push(&mut self.ring, &entry);
        }
    }

    /// Starts a prepared transfer in a free slot.
    fn start_transfer(&mut self, prepared: Box<Prepared>) {
        let (slot, gen) = self.slots.open();
        let own = prepared.socket.as_ref().map(|s| s.as_raw_fd());
        let fixed = own.and_then(|fd| {
            let index = self.fixed_free.pop()?;
            match self.ring.submitter().register_files_update(index, &[fd]) {
                Ok(_) => Some(index),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot register a transfer socket; using its descriptor");
                    self.fixed_free.push(index);
                    None
                }
            }
        });
        if own.is_some() && fixed.is_none() {
            self.counts.unfixed += 1;
        }
        let peer = prepared.meta.peer;
        let mut conn = Box::new(Conn::new(
            *prepared,
            gen,
            fixed,
            self.main_id,
            &mut self.files,
        ));
        if conn.own_socket() {
            let entry = conn.recv_entry(self.recv.group(), slot);
            conn.receiving = true;
            push(&mut self.ring, &entry);
        }
        self.slots.insert(slot, peer, conn);
    }

    fn on_recv(&mut self, slot: u32, gen: u32, result: i32, flags: u32, now: Instant) {
        let bid = cqueue::buffer_select(flags);
        let Some(mut conn) = self.slots.take(slot, gen) else {
            if let Some(bid) = bid {
                self.recv.give_back(bid);
            }
            return;
        };
        if !cqueue::more(flags) {
            conn.receiving = false;
        }
        if result >= 0 {
            if let Some(bid) = bid {
                if conn.ending.is_none() {
                    let datagram = self.recv.get(bid, result as usize);
                    conn.session.handle_datagram(now, datagram, &mut self.pace);
                    self.slots.mark(&mut conn, slot);
                }
                self.recv.give_back(bid);
            }
        } else if let Some(bid) = bid {
            self.recv.give_back(bid);
        }
        match -result {
            // Linux reports a port-unreachable before the datagrams already queued, and the
            // client's final ACK may be among them: read on, and only believe the client gone
            // when nothing but refusals come back.
            libc::ECONNREFUSED => {
                conn.session.handle_refused();
                self.slots.mark(&mut conn, slot);
            }
            libc::ENOBUFS => {
                self.starved = true;
                self.counts.starved += 1;
            }
            libc::ECANCELED => {}
            e if e > 0 => {
                tracing::debug!(error = %io::Error::from_raw_os_error(e), "receive failed")
            }
            _ => {}
        }
        if !conn.receiving {
            if conn.ending.is_none() {
                self.rearm.push(slot);
            } else if !conn.sending {
                self.free(slot, conn);
                return;
            }
        }
        self.slots.put(slot, conn);
    }

    /// The session ended: its receive is cancelled, and the slot is freed once nothing of it
    /// is left in flight.
    fn finish(&mut self, conn: &mut Conn, slot: u32, ending: Ending) {
        if conn.ending.is_some() {
            return;
        }
        conn.ending = Some(ending);
        if conn.receiving {
            let entry = opcode::AsyncCancel::new(user_data(Op::Recv, slot, conn.gen))
                .build()
                .user_data(user_data(Op::Cancel, slot, conn.gen));
            push(&mut self.ring, &entry);
        }
    }

    /// Frees a finished transfer's slot: the log line, its socket, its place in the limits.
    fn free(&mut self, slot: u32, conn: Box<Conn>) {
        if let Some(index) = conn.fixed {
            if let Err(e) = self.ring.submitter().register_files_update(index, &[-1]) {
                tracing::debug!(error = %e, "cannot unregister a transfer socket");
            } else {
                self.fixed_free.push(index);
            }
        }
        self.slots.release(slot, &conn);
        if let Some(ending) = conn.ending {
            record::ended(
                &self.shared,
                conn.session.meta(),
                conn.session.transfer(),
                ending,
            );
        }
        drop(conn);
    }
}

slots::shard!(Engine, Conn);

/// Queues one submission; a full queue is handed to the kernel first.
fn push(ring: &mut IoUring, entry: &squeue::Entry) {
    loop {
        // SAFETY: every entry built by the engine points into memory that stays put until its
        // completion: a transfer's boxed message and pieces, the slab, the receive ring.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return;
        }
        if let Err(e) = ring.submit() {
            if e.raw_os_error() != Some(libc::EBUSY) {
                tracing::warn!(error = %e, "io_uring submit failed");
            }
        }
    }
}

/// A socket's descriptor, or its slot in the fixed-file table.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    Fixed(u32),
    Fd(RawFd),
}
