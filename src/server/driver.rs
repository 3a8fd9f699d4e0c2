//! The task-per-transfer driver: a thin loop around [`Transfer`] for the backends that run on a
//! tokio runtime ([`Io`]: the epoll fallback, and tokio-uring kept for side-by-side
//! measurement). The io_uring engine in [`super::ring`] drives transfers from completions
//! instead, with no task per transfer.
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

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use super::cache::{BlockBuf, Budget, Chunk, ChunkCache, Lookup, Piece, CHUNK};
pub(crate) use super::window::Data;
use super::window::{
    chunk_len, chunks_for, read_custom, unchanged_fd, ReadError, Window, CHANGED, READ_FAILED,
};
use crate::packet::{self, ErrorCode, Mode, DATA_HEADER_LEN};
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
    /// Has every send on `socket` cut into datagrams of `segment` bytes (UDP GSO); false where
    /// the kernel refuses.
    fn enable_gso(socket: &Self::Socket, segment: u16) -> bool;
    /// A transfer's socket in single-port mode: the shard's main socket, shared. `None` where
    /// the backend cannot share it.
    fn shared_port(&self, port: Rc<super::fallback::SharedPort>) -> Option<Self::Socket> {
        let _ = port;
        None
    }
    /// The file's raw descriptor, to check it has not changed.
    fn file_fd(file: &Self::File) -> RawFd;
}

/// What the shard needs to know of a transfer for its log line.
#[derive(Debug)]
pub(crate) struct Meta {
    pub peer: SocketAddr,
    pub filename: Box<str>,
    pub mode: Mode,
    /// The options the request asked for, for the log line.
    pub asked: Box<str>,
}

/// How a transfer task ended, as the shard logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The state machine's outcome.
    Outcome(Outcome),
    /// The client's host said the port is closed (ICMP port unreachable).
    Unreachable,
    /// In single-port mode, the client sent a new request from the same port: it has moved on.
    Replaced,
}

/// What a transfer task needs from its shard.
pub(crate) struct Context<I: Io> {
    pub io: Rc<I>,
    pub cache: Rc<ChunkCache>,
    /// The server's budget of file data in memory, which every chunk read counts against.
    pub budget: Arc<Budget>,
    pub client: Rc<Client>,
    /// The shard's clients' lag, learned from spurious timeouts (see [`super::lag::Lag`]).
    pub lag: Rc<std::cell::RefCell<super::lag::Lag>>,
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
    /// In single-port mode, the shared main socket the shard delivers the client's datagrams to.
    pub port: Option<Rc<super::fallback::SharedPort>>,
}

/// Runs one transfer to its end.
pub(crate) async fn run<I: Io>(
    cx: Context<I>,
    socket: I::Socket,
    data: Data<I::File>,
    mut t: Transfer,
) -> (End, Transfer) {
    let blksize = usize::from(t.options().blksize().get());
    let window = u64::from(t.options().windowsize().get());
    let mut gso = window > 1 && I::enable_gso(&socket, (DATA_HEADER_LEN + blksize) as u16);
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
        t.set_rto_floor(cx.lag.borrow().floor(Instant::now()));
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
                        let now = Instant::now();
                        let spurious = t.stats().spurious;
                        t.handle_datagram(now, &buf[..n.min(buf.len())]);
                        if t.stats().spurious > spurious {
                            cx.lag.borrow_mut().learn(now, t.rto());
                        }
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
                    // Single-port mode: the client asked again from this transfer's port.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => break End::Replaced,
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
    let segment = DATA_HEADER_LEN + usize::from(t.options().blksize().get());
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

impl Window {
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
