//! The transfer driver: one task per transfer, a thin loop around [`Transfer`] over whichever
//! I/O backend the shard runs ([`Io`]: io_uring or the epoll fallback).
//!
//! It follows the drain order documented on [`crate::transfer`]: feed what happened, send what
//! the transfer asks for, then wait for the next datagram or the retransmission timer. The
//! transfer's [`Window`] holds the file chunks covering the blocks in flight and the next window
//! (read ahead while the current one is on the wire), taken from the shard's [`ChunkCache`] or
//! read once with a fixed read; a retransmission is a send and never a read.
//!
//! On the wire: each transfer answers from its own port (RFC 1350 §4, the server's TID), sends
//! a window of DATA blocks per round (RFC 7440 §4; one block in lock-step), and ends after the
//! final short block is acknowledged, on an ERROR from the client (RFC 1350 §7), or after its
//! retransmissions go unanswered.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio_uring::buf::fixed::FixedBuf;
use tokio_uring::buf::{IoBuf, IoBufMut};

use super::cache::{header, Budget, Chunk, ChunkCache, Lookup, Piece, CHUNK};
use crate::packet::{self, ErrorCode, Mode, DATA_HEADER_LEN};
use crate::resolve::{FileId, ReadAt};
use crate::transfer::{Outcome, Transfer, Transmit};

/// Datagrams in one GSO send: the kernel's UDP_MAX_SEGMENTS is 64 on older kernels.
pub(crate) const GSO_SEGMENTS_MAX: usize = 64;
/// Bytes in one GSO send: a UDP datagram's payload limit, less the IPv6 headers' worst case.
pub(crate) const GSO_BYTES_MAX: usize = 65_000;
/// Room for an ACK, or an ERROR with a message as long as RFC 1350's 512-byte packets allow;
/// longer datagrams are cut, which is harmless. Each transfer keeps one armed, so it is small.
const RECV_BUF: usize = 4 + 512;
/// Room for an OACK or an ERROR: an OACK carries at most the five options this server grants,
/// each with a short number, and every ERROR message is one of ours.
pub(crate) const SMALL_PACKET: usize = 512;
/// Port-unreachable errors in a row after which the client is taken to be gone.
pub(crate) const REFUSED_MAX: u32 = 3;

/// One I/O backend as a transfer task sees it. Every operation takes and returns owned buffers,
/// because io_uring owns them while the kernel works on them.
pub(crate) trait Io: 'static {
    /// A transfer socket, connected to the client.
    type Socket;
    /// An open file.
    type File;

    /// Adopts a bound, connected, non-blocking socket.
    fn socket(&self, socket: std::net::UdpSocket) -> io::Result<Self::Socket>;
    /// Adopts an open file.
    fn file(&self, file: std::fs::File) -> Self::File;
    /// A buffer of [`CHUNK`] bytes for file data: registered where the backend has one spare.
    fn chunk_buffer(&self) -> BlockBuf;
    /// Receives one datagram. The future must be kept until it completes (never dropped early):
    /// with io_uring a dropped receive stays armed and swallows the next datagram.
    fn recv(
        socket: &Self::Socket,
        buf: Vec<u8>,
    ) -> impl Future<Output = (io::Result<usize>, Vec<u8>)>;
    /// Sends `pieces` as one message (cut into datagrams by GSO where the socket has it set).
    fn send(
        socket: &Self::Socket,
        pieces: Vec<Piece>,
    ) -> impl Future<Output = (io::Result<usize>, Vec<Piece>)>;
    /// Reads file bytes at `offset` into `buf[begin..end]`.
    fn read(
        file: &Self::File,
        buf: BlockBuf,
        begin: usize,
        end: usize,
        offset: u64,
    ) -> impl Future<Output = (io::Result<usize>, BlockBuf)>;
    /// Shuts the socket down so a receive still armed completes and releases it.
    fn close(socket: &Self::Socket);
    /// The socket's raw descriptor, for socket options.
    fn raw_fd(socket: &Self::Socket) -> RawFd;
    /// The file's raw descriptor, to check it has not changed.
    fn file_fd(file: &Self::File) -> RawFd;
}

/// A data buffer: registered with the ring (fixed reads) or plain heap memory.
pub(crate) enum BlockBuf {
    /// A registered buffer from the shard's pool.
    Fixed(FixedBuf),
    /// A heap buffer, where registration was refused or the pool is exhausted.
    Heap(Vec<u8>),
    /// A registered buffer of the raw io_uring engine's slab.
    Slab(super::ring::SlabBuf),
}

impl std::fmt::Debug for BlockBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(b) => write!(f, "Fixed({})", b.buf_index()),
            Self::Heap(v) => write!(f, "Heap({})", v.len()),
            Self::Slab(b) => write!(f, "Slab({})", b.index()),
        }
    }
}

// SAFETY: forwards to the inner buffer, whose memory stays put while it is owned.
unsafe impl IoBuf for BlockBuf {
    fn stable_ptr(&self) -> *const u8 {
        match self {
            Self::Fixed(b) => IoBuf::stable_ptr(b),
            Self::Heap(v) => v.as_ptr(),
            Self::Slab(b) => b.ptr(),
        }
    }

    fn bytes_init(&self) -> usize {
        match self {
            Self::Fixed(b) => IoBuf::bytes_init(b),
            Self::Heap(v) => v.len(),
            Self::Slab(_) => CHUNK,
        }
    }

    fn bytes_total(&self) -> usize {
        match self {
            Self::Fixed(b) => IoBuf::bytes_total(b),
            Self::Heap(v) => v.len(),
            Self::Slab(_) => CHUNK,
        }
    }
}

// SAFETY: forwards to the inner buffer. Heap buffers are created fully initialised and slab
// buffers are counted whole (their bytes past a chunk's length are never sent), so there is
// nothing to record for them.
unsafe impl IoBufMut for BlockBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        match self {
            Self::Fixed(b) => IoBufMut::stable_mut_ptr(b),
            Self::Heap(v) => v.as_mut_ptr(),
            Self::Slab(b) => b.ptr(),
        }
    }

    unsafe fn set_init(&mut self, pos: usize) {
        if let Self::Fixed(b) = self {
            // SAFETY: the caller's guarantee is passed on unchanged.
            unsafe { IoBufMut::set_init(b, pos) }
        }
    }
}

/// Where a transfer's bytes come from.
pub(crate) enum Data<F> {
    /// An open file, read by the backend (fixed reads under io_uring), and what it was when
    /// opened.
    File(Rc<F>, FileId),
    /// Bytes in memory (generated per client, or a netascii encoding), sent without a copy.
    Memory(Arc<[u8]>),
    /// Any other source, read synchronously into private chunks.
    Custom(Box<dyn ReadAt>),
}

/// What the shard needs to know of a transfer for its log line.
#[derive(Debug)]
pub(crate) struct Meta {
    pub peer: SocketAddr,
    pub filename: Box<str>,
    pub mode: Mode,
}

/// How a transfer task ended, as the shard logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The state machine's outcome.
    Outcome(Outcome),
    /// The client's host said the port is closed (ICMP port unreachable).
    Unreachable,
}

/// What a transfer task needs from its shard.
pub(crate) struct Context<I: Io> {
    pub io: Rc<I>,
    pub cache: Rc<ChunkCache>,
    /// The server's budget of file data in memory, which every chunk read counts against.
    pub budget: Arc<Budget>,
    pub client: Rc<Client>,
}

/// What the shard's main loop and a transfer task share about the client.
#[derive(Debug)]
pub(crate) struct Client {
    /// The file asked for, to tell a repeated request from a new one.
    pub filename: Box<str>,
    /// Signalled when the client repeats its request on the main port.
    pub repeat: tokio::sync::Notify,
    /// Whether the client has sent anything to the transfer (so it heard the first reply).
    pub answered: std::cell::Cell<bool>,
}

/// Runs one transfer to its end.
pub(crate) async fn run<I: Io>(
    cx: Context<I>,
    socket: I::Socket,
    data: Data<I::File>,
    mut t: Transfer,
) -> (End, Transfer) {
    let blksize = usize::from(t.options().blksize);
    let window = u64::from(t.options().windowsize.max(1));
    let mut gso = window > 1
        && super::socket::enable_gso(I::raw_fd(&socket), (DATA_HEADER_LEN + blksize) as u16);
    let mut chunks = Window::default();
    let mut pieces: Vec<Piece> = Vec::new();

    // Port-unreachable errors in a row, with no datagram from the client between them.
    let mut refused = 0;
    let mut recv = pin!(I::recv(&socket, vec![0; RECV_BUF]));
    let mut timer = pin!(tokio::time::sleep(Duration::from_secs(3600)));
    // Where the timer is set, if it is. Moving a timer in tokio's wheel is a removal and an
    // insertion, and nearly every ACK moves the retransmission deadline later; so the timer is
    // only ever moved earlier, and when it fires before the transfer's deadline it is moved on
    // to it then: about one wheel operation per timeout interval instead of one per packet.
    let mut armed: Option<Instant> = None;
    // Mirrors `cx.client.answered`, so the shared flag (another allocation, cold in a storm)
    // is written once rather than read on every packet.
    let mut answered = false;
    let end = 'transfer: loop {
        // The clock is read for each packet: sends and reads await in between, and the
        // transfer's time must never run backwards.
        while let Some(transmit) = t.poll_transmit(Instant::now()) {
            let result = match transmit {
                Transmit::Oack => {
                    let mut oack = vec![0; SMALL_PACKET];
                    match t.emit_oack(&mut oack) {
                        Ok(n) => {
                            oack.truncate(n);
                            send_packet::<I>(&socket, oack).await
                        }
                        Err(_) => {
                            // Cannot happen with the options this server grants; never leave
                            // the client waiting if it does.
                            tracing::warn!("OACK does not fit in {SMALL_PACKET} bytes");
                            t.abort(
                                Instant::now(),
                                ErrorCode::Undefined,
                                "Cannot build the OACK",
                            );
                            continue;
                        }
                    }
                }
                Transmit::Error { code, message } => {
                    let mut error = vec![0; SMALL_PACKET];
                    let n = packet::emit_error(code, message, &mut error).unwrap_or(0);
                    error.truncate(n);
                    // The transfer is over whatever happens to this datagram.
                    let _ = send_packet::<I>(&socket, error).await;
                    Ok(())
                }
                Transmit::Blocks(run) => {
                    let last = run.first + u64::from(run.count) - 1;
                    let loaded = chunks.ensure(&cx, &data, &t, last).await;
                    // Never let a client finish a file that changed under it: what it got may
                    // mix two versions.
                    let loaded = loaded.and_then(|()| match last == t.last_block() {
                        true => unchanged::<I>(&data),
                        false => Ok(()),
                    });
                    if let Err(e) = loaded {
                        t.abort(Instant::now(), e.code, e.message);
                        continue;
                    }
                    send_blocks::<I>(
                        &socket,
                        &chunks,
                        &data,
                        &t,
                        &mut pieces,
                        run.iter(),
                        &mut gso,
                    )
                    .await
                }
            };
            if let Err(e) = result {
                if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    refused += 1;
                    if refused >= REFUSED_MAX {
                        break 'transfer End::Unreachable;
                    }
                }
                // Anything else (a full socket buffer) is a loss the timer repairs.
                tracing::debug!(error = %e, "send failed");
            }
        }
        if let Some(outcome) = t.outcome() {
            break End::Outcome(outcome);
        }
        // Read the next window ahead while this one is on the wire.
        let ahead = (t.acked() + 2 * window).min(t.last_block());
        if let Err(e) = chunks.ensure(&cx, &data, &t, ahead).await {
            // A failed read-ahead is reported when (if) that block is needed.
            tracing::debug!(message = e.message, "read-ahead failed");
        }
        let deadline = t
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        // One timer for the transfer's life, moved rather than re-created each round.
        if armed.is_none_or(|at| deadline < at) {
            timer.as_mut().reset(deadline.into());
            armed = Some(deadline);
        }
        tokio::select! {
            biased;
            (result, buf) = &mut recv => {
                match result {
                    Ok(n) => {
                        refused = 0;
                        if !answered {
                            answered = true;
                            cx.client.answered.set(true);
                        }
                        t.handle_datagram(Instant::now(), &buf[..n.min(buf.len())]);
                    }
                    // Linux reports a port-unreachable before the datagrams already queued, and
                    // the client's final ACK may be among them: read on, and only believe the
                    // client gone when nothing but refusals come back.
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                        refused += 1;
                        if refused >= REFUSED_MAX {
                            break End::Unreachable;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "receive failed"),
                }
                recv.set(I::recv(&socket, buf));
            }
            () = &mut timer => {
                let now = Instant::now();
                match t.poll_timeout() {
                    // Fired at an older deadline: move on to the current one.
                    Some(deadline) if deadline > now => {
                        timer.as_mut().reset(deadline.into());
                        armed = Some(deadline);
                    }
                    _ => {
                        armed = None;
                        t.handle_timeout(now);
                    }
                }
            }
            () = cx.client.repeat.notified() => t.handle_repeat(Instant::now()),
        }
    };
    // The receive may still be armed in the ring; shutting the socket down completes it, so
    // the socket and its port are released now rather than at the next stray datagram.
    I::close(&socket);
    (end, t)
}

/// Sends one small packet (OACK, ERROR).
async fn send_packet<I: Io>(socket: &I::Socket, bytes: Vec<u8>) -> io::Result<()> {
    let (result, _) = I::send(socket, vec![Piece::Owned(bytes)]).await;
    result.map(drop)
}

/// Sends a run of blocks: several per system call with GSO, else one each.
async fn send_blocks<I: Io>(
    socket: &I::Socket,
    chunks: &Window,
    data: &Data<I::File>,
    t: &Transfer,
    pieces: &mut Vec<Piece>,
    run: std::ops::Range<u64>,
    gso: &mut bool,
) -> io::Result<()> {
    let segment = DATA_HEADER_LEN + usize::from(t.options().blksize);
    let mut first = run.start;
    while first < run.end {
        let per_send = if *gso {
            (GSO_BYTES_MAX / segment).clamp(1, GSO_SEGMENTS_MAX) as u64
        } else {
            1
        };
        let end = (first + per_send).min(run.end);
        for block in first..end {
            if !chunks.pieces(data, t, block, pieces) {
                pieces.clear();
                return Err(io::Error::other("block not loaded"));
            }
        }
        let (result, mut sent) = I::send(socket, std::mem::take(pieces)).await;
        sent.clear();
        *pieces = sent;
        match result {
            Err(e)
                if *gso
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)
                    ) =>
            {
                // The path refuses segmentation offload: go on with one datagram per send.
                *gso = false;
            }
            Err(e) => return Err(e),
            Ok(_) => first = end,
        }
    }
    Ok(())
}

/// Whether the file is still what it was when the transfer opened it.
fn unchanged<I: Io>(data: &Data<I::File>) -> Result<(), ReadError> {
    let Data::File(file, id) = data else {
        return Ok(());
    };
    unchanged_fd(I::file_fd(file), id)
}

/// Whether the file open as `fd` is still `id`.
pub(crate) fn unchanged_fd(fd: RawFd, id: &FileId) -> Result<(), ReadError> {
    // SAFETY: the caller keeps the descriptor open while this borrowed view lives, and
    // ManuallyDrop keeps the view from closing it.
    let view = std::mem::ManuallyDrop::new(unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    match FileId::of(&view) {
        Ok(now) if now == *id => Ok(()),
        _ => Err(CHANGED),
    }
}

/// A failed read, as the ERROR the client gets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadError {
    pub code: ErrorCode,
    pub message: &'static str,
}

pub(crate) const CHANGED: ReadError = ReadError {
    code: ErrorCode::Undefined,
    message: "File changed while being served",
};
pub(crate) const READ_FAILED: ReadError = ReadError {
    code: ErrorCode::Undefined,
    message: "Read error",
};

/// The chunks a transfer holds: those covering the window in flight and the one read ahead,
/// in file order.
#[derive(Default)]
pub(crate) struct Window {
    chunks: VecDeque<(u64, Rc<Chunk>)>,
    /// The first and last chunk index held when they are all held in a run (the usual case),
    /// so the per-packet check in [`Window::holds`] reads two numbers instead of the deque.
    run: Option<(u64, u64)>,
}

impl Window {
    pub(crate) fn get(&self, index: u64) -> Option<&Rc<Chunk>> {
        self.chunks
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, c)| c)
    }

    /// Appends the iovecs of block `block` (header, then payload) to `pieces`; false if a chunk
    /// it needs is not loaded.
    pub(crate) fn pieces(
        &self,
        data: &Data<impl Sized>,
        t: &Transfer,
        block: u64,
        pieces: &mut Vec<Piece>,
    ) -> bool {
        pieces.push(Piece::Header(header(Transfer::wire_block(block))));
        let mut offset = t.offset(block);
        let mut left = t.block_len(block);
        if let Data::Memory(bytes) = data {
            let Ok(start) = usize::try_from(offset) else {
                return false;
            };
            return match Piece::memory(bytes, start, left) {
                Some(piece) => {
                    pieces.push(piece);
                    true
                }
                None => false,
            };
        }
        while left > 0 {
            let index = offset / CHUNK as u64;
            let start = (offset % CHUNK as u64) as usize;
            let len = left.min(CHUNK - start);
            let Some(piece) = self.get(index).and_then(|c| Piece::chunk(c, start, len)) else {
                return false;
            };
            pieces.push(piece);
            offset += len as u64;
            left -= len;
        }
        true
    }

    /// Makes sure the chunks covering blocks `acked + 1 ..= upto` are held, dropping those
    /// wholly before them: from the shard's cache where another transfer read them, otherwise
    /// reading them (concurrently, one fixed read each).
    ///
    /// Most calls find every chunk held; the rare one that must wait is boxed, so the state of
    /// a read is not carried in every transfer's task for its whole life.
    async fn ensure<I: Io>(
        &mut self,
        cx: &Context<I>,
        data: &Data<I::File>,
        t: &Transfer,
        upto: u64,
    ) -> Result<(), ReadError> {
        match self.holds(data, t, upto) {
            true => Ok(()),
            false => Box::pin(self.load(cx, data, t, upto)).await,
        }
    }

    /// Drops the chunks wholly before block `acked + 1`; whether those up to block `upto` are
    /// all held (nothing to load).
    pub(crate) fn holds(&mut self, data: &Data<impl Sized>, t: &Transfer, upto: u64) -> bool {
        let Some((first, last)) = chunks_for(data, t, upto) else {
            return true;
        };
        if let Some((lo, hi)) = self.run {
            if lo >= first {
                // Nothing to drop: answer from the run alone.
                return last.is_none_or(|last| lo == first && last <= hi);
            }
        }
        self.drop_before(first);
        last.is_none_or(|last| (first..=last).all(|index| self.get(index).is_some()))
    }

    /// Drops the chunks before chunk `first`.
    fn drop_before(&mut self, first: u64) {
        while self.chunks.front().is_some_and(|(i, _)| *i < first) {
            self.chunks.pop_front();
        }
        self.note_run();
    }

    fn note_run(&mut self) {
        self.run = match (self.chunks.front(), self.chunks.back()) {
            (Some(&(lo, _)), Some(&(hi, _))) if hi - lo + 1 == self.chunks.len() as u64 => {
                Some((lo, hi))
            }
            _ => None,
        };
    }

    /// [`Window::ensure`]'s slow path.
    async fn load<I: Io>(
        &mut self,
        cx: &Context<I>,
        data: &Data<I::File>,
        t: &Transfer,
        upto: u64,
    ) -> Result<(), ReadError> {
        let Some((first, last)) = chunks_for(data, t, upto) else {
            return Ok(());
        };
        self.drop_before(first);
        let Some(last) = last else {
            return Ok(());
        };
        let mut reads = Vec::new();
        let mut waits = Vec::new();
        for index in first..=last {
            if self.get(index).is_some() {
                continue;
            }
            match data {
                Data::File(file, id) => match cx.cache.lookup(*id, index) {
                    Lookup::Hit(chunk) => self.insert(index, chunk),
                    Lookup::Wait(loading) => waits.push((index, loading)),
                    Lookup::Miss => reads.push(read_chunk::<I>(cx, file, t.len(), index)),
                },
                Data::Custom(source) => {
                    let chunk = read_custom(&cx.budget, &**source, t.len(), index)?;
                    self.insert(index, Rc::new(chunk));
                }
                Data::Memory(_) => {}
            }
        }
        let Data::File(file, id) = data else {
            return Ok(());
        };
        let mut failed = None;
        for (index, result) in join_all(reads).await {
            match result {
                Ok(chunk) => {
                    let chunk = Rc::new(chunk);
                    cx.cache.insert(*id, index, chunk.clone());
                    self.insert(index, chunk);
                }
                Err(e) => {
                    cx.cache.abandon(*id, index);
                    failed = failed.or(Some(e));
                }
            }
        }
        // Chunks another transfer was reading: take them from the cache once it has them, or
        // read them here if that read failed or the chunk was evicted meanwhile.
        for (index, loading) in waits {
            loading.wait().await;
            let chunk = loop {
                match cx.cache.lookup(*id, index) {
                    Lookup::Hit(chunk) => break Ok(chunk),
                    Lookup::Wait(loading) => loading.wait().await,
                    Lookup::Miss => {
                        let (_, result) = read_chunk::<I>(cx, file, t.len(), index).await;
                        break match result {
                            Ok(chunk) => {
                                let chunk = Rc::new(chunk);
                                cx.cache.insert(*id, index, chunk.clone());
                                Ok(chunk)
                            }
                            Err(e) => {
                                cx.cache.abandon(*id, index);
                                Err(e)
                            }
                        };
                    }
                }
            };
            match chunk {
                Ok(chunk) => self.insert(index, chunk),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Keeps the chunks in file order (few: a window spans a handful).
    pub(crate) fn insert(&mut self, index: u64, chunk: Rc<Chunk>) {
        let at = self.chunks.partition_point(|(i, _)| *i < index);
        self.chunks.insert(at, (index, chunk));
        self.note_run();
    }
}

/// The chunks that blocks `acked + 1 ..= upto` lie in: the first, and the last unless those
/// blocks hold no bytes (an empty final block). `None` where data is not read in chunks.
pub(crate) fn chunks_for(
    data: &Data<impl Sized>,
    t: &Transfer,
    upto: u64,
) -> Option<(u64, Option<u64>)> {
    if matches!(data, Data::Memory(_)) || t.is_empty() {
        return None;
    }
    let from = t.offset(t.acked() + 1);
    let to = t.offset(upto) + t.block_len(upto) as u64;
    let last = (to > from).then(|| (to - 1) / CHUNK as u64);
    Some((from / CHUNK as u64, last))
}

/// The bytes of chunk `index` of a source of `len` bytes.
pub(crate) fn chunk_len(len: u64, index: u64) -> usize {
    let start = index * CHUNK as u64;
    len.saturating_sub(start).min(CHUNK as u64) as usize
}

/// Reads chunk `index` of the file, however many reads it takes.
async fn read_chunk<I: Io>(
    cx: &Context<I>,
    file: &I::File,
    len: u64,
    index: u64,
) -> (u64, Result<Chunk, ReadError>) {
    let want = chunk_len(len, index);
    let start = index * CHUNK as u64;
    let lease = cx.budget.lease(CHUNK);
    let mut buf = cx.io.chunk_buffer();
    let mut done = 0;
    while done < want {
        let (result, returned) = I::read(file, buf, done, want, start + done as u64).await;
        buf = returned;
        match result {
            // The file is shorter than it was when the transfer opened it.
            Ok(0) => return (index, Err(CHANGED)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "read failed");
                return (index, Err(READ_FAILED));
            }
        }
    }
    (index, Ok(Chunk::new(buf, want, lease)))
}

pub(crate) fn read_custom(
    budget: &Arc<Budget>,
    source: &dyn ReadAt,
    len: u64,
    index: u64,
) -> Result<Chunk, ReadError> {
    let want = chunk_len(len, index);
    let start = index * CHUNK as u64;
    let lease = budget.lease(want);
    let mut buf = vec![0; want];
    let mut done = 0;
    while done < want {
        match source.read_at(&mut buf[done..], start + done as u64) {
            Ok(0) => return Err(CHANGED),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(READ_FAILED),
        }
    }
    Ok(Chunk::new(BlockBuf::Heap(buf), want, lease))
}

/// Polls every future to completion, concurrently; the results keep their order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, result) in futures.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(out) => *result = Some(out),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}
