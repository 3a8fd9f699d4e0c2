//! The transfer driver: one task per transfer, a thin loop around [`Transfer`] over whichever
//! I/O backend the shard runs ([`Io`]: io_uring or the epoll fallback).
//!
//! It follows the drain order documented on [`crate::transfer`]: feed what happened, send what
//! the transfer asks for, then wait for the next datagram or the retransmission timer. Blocks
//! live in the transfer's block cache ([`Blocks`]): each is read once, straight into the buffer
//! after its DATA header, and stays there until acknowledged, so a retransmission is a send and
//! never a read. The next window is read while the current one is on the wire.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio_uring::buf::fixed::FixedBuf;
use tokio_uring::buf::{BoundedBuf, IoBuf, IoBufMut, Slice};

use crate::packet::{self, ErrorCode, Mode, DATA_HEADER_LEN};
use crate::resolve::ReadAt;
use crate::transfer::{Outcome, Transfer, Transmit};

/// Datagrams in one GSO send: the kernel's UDP_MAX_SEGMENTS is 64 on older kernels.
const GSO_SEGMENTS_MAX: usize = 64;
/// Bytes in one GSO send: a UDP datagram's payload limit, less the IPv6 headers' worst case.
const GSO_BYTES_MAX: usize = 65_000;
/// Room for an ACK or an ERROR from the client; longer datagrams are cut, which is harmless.
const RECV_BUF: usize = 1024;

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
    /// A buffer of at least `capacity` bytes: registered where the backend has one spare.
    fn buffer(&self, capacity: usize) -> BlockBuf;
    /// Receives one datagram. The future must be kept until it completes (never dropped early):
    /// with io_uring a dropped receive stays armed and swallows the next datagram.
    fn recv(
        socket: &Self::Socket,
        buf: Vec<u8>,
    ) -> impl Future<Output = (io::Result<usize>, Vec<u8>)>;
    /// Sends `bufs` back to back in one message (one datagram each where GSO is enabled).
    fn send(
        socket: &Self::Socket,
        bufs: Vec<Slice<BlockBuf>>,
    ) -> impl Future<Output = (io::Result<usize>, Vec<Slice<BlockBuf>>)>;
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
    /// The raw descriptor, for socket options.
    fn raw_fd(socket: &Self::Socket) -> std::os::fd::RawFd;
}

/// A block buffer: registered with the ring (fixed reads) or plain heap memory.
pub(crate) enum BlockBuf {
    /// A registered buffer from the shard's pool.
    Fixed(FixedBuf),
    /// A heap buffer, where registration was refused or the pool is exhausted.
    Heap(Vec<u8>),
}

impl std::fmt::Debug for BlockBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(b) => write!(f, "Fixed({})", b.buf_index()),
            Self::Heap(v) => write!(f, "Heap({})", v.len()),
        }
    }
}

// SAFETY: forwards to the inner buffer, whose memory stays put while it is owned.
unsafe impl IoBuf for BlockBuf {
    fn stable_ptr(&self) -> *const u8 {
        match self {
            Self::Fixed(b) => IoBuf::stable_ptr(b),
            Self::Heap(v) => v.as_ptr(),
        }
    }

    fn bytes_init(&self) -> usize {
        match self {
            Self::Fixed(b) => IoBuf::bytes_init(b),
            Self::Heap(v) => v.len(),
        }
    }

    fn bytes_total(&self) -> usize {
        match self {
            Self::Fixed(b) => IoBuf::bytes_total(b),
            Self::Heap(v) => v.len(),
        }
    }
}

// SAFETY: forwards to the inner buffer. Heap buffers are created fully initialised, so there is
// nothing to record for them.
unsafe impl IoBufMut for BlockBuf {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        match self {
            Self::Fixed(b) => IoBufMut::stable_mut_ptr(b),
            Self::Heap(v) => v.as_mut_ptr(),
        }
    }

    unsafe fn set_init(&mut self, pos: usize) {
        if let Self::Fixed(b) = self {
            // SAFETY: the caller's guarantee is passed on unchanged.
            unsafe { IoBufMut::set_init(b, pos) }
        }
    }
}

impl BlockBuf {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Self::Fixed(b) => &mut b[..],
            Self::Heap(v) => &mut v[..],
        }
    }
}

/// Where a transfer's bytes come from.
pub(crate) enum Data<F> {
    /// An open file, read by the backend (fixed reads under io_uring).
    File(F),
    /// Bytes in memory (generated per client, or a netascii encoding).
    Memory(Arc<[u8]>),
    /// Any other source, read synchronously.
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

/// Runs one transfer to its end.
pub(crate) async fn run<I: Io>(
    io: Rc<I>,
    socket: I::Socket,
    data: Data<I::File>,
    mut t: Transfer,
) -> (End, Transfer) {
    let blksize = usize::from(t.options().blksize);
    let window = usize::from(t.options().windowsize.max(1));
    let mut gso = window > 1
        && I::raw_fd(&socket) >= 0
        && super::socket::enable_gso(I::raw_fd(&socket), (DATA_HEADER_LEN + blksize) as u16);
    let mut cache = Blocks::new(window, DATA_HEADER_LEN + blksize);
    let mut batch: Vec<Slice<BlockBuf>> = Vec::with_capacity(window.min(GSO_SEGMENTS_MAX));
    let mut scratch = vec![0u8; 512];

    let mut recv = pin!(I::recv(&socket, vec![0; RECV_BUF]));
    let end = 'transfer: loop {
        let now = Instant::now();
        while let Some(transmit) = t.poll_transmit(now) {
            let result = match transmit {
                Transmit::Oack => match t.emit_oack(&mut scratch) {
                    Ok(n) => send_bytes::<I>(&io, &socket, &scratch[..n]).await,
                    Err(_) => Ok(()),
                },
                Transmit::Error { code, message } => {
                    let n = packet::emit_error(code, message, &mut scratch).unwrap_or(0);
                    // The transfer is over whatever happens to this datagram.
                    let _ = send_bytes::<I>(&io, &socket, &scratch[..n]).await;
                    Ok(())
                }
                Transmit::Blocks(run) => {
                    let last = run.first + u64::from(run.count) - 1;
                    if let Err(e) = cache.load(&*io, &data, &t, last).await {
                        t.abort(Instant::now(), e.code, e.message);
                        continue;
                    }
                    send_blocks::<I>(
                        &socket,
                        &mut cache,
                        &mut batch,
                        run.iter(),
                        &mut gso,
                        blksize,
                    )
                    .await
                }
            };
            if let Err(e) = result {
                if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                    break 'transfer End::Unreachable;
                }
                // Anything else (a full socket buffer) is a loss the timer repairs.
                tracing::debug!(error = %e, "send failed");
            }
        }
        if let Some(outcome) = t.outcome() {
            break End::Outcome(outcome);
        }
        // Read the next window ahead while this one is on the wire.
        let ahead = (t.acked() + 2 * window as u64).min(t.last_block());
        if let Err(e) = cache.load(&*io, &data, &t, ahead).await {
            // A failed read-ahead is reported when (if) that block is needed.
            tracing::debug!(message = e.message, "read-ahead failed");
        }
        let deadline = t
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            (result, buf) = &mut recv => {
                match result {
                    Ok(n) => t.handle_datagram(Instant::now(), &buf[..n.min(buf.len())]),
                    Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => break End::Unreachable,
                    Err(e) => tracing::debug!(error = %e, "receive failed"),
                }
                recv.set(I::recv(&socket, buf));
            }
            () = tokio::time::sleep_until(deadline.into()) => t.handle_timeout(Instant::now()),
        }
    };
    // The receive may still be armed in the ring; shutting the socket down completes it, so
    // the socket and its port are released now rather than at the next stray datagram.
    I::close(&socket);
    (end, t)
}

async fn send_bytes<I: Io>(io: &I, socket: &I::Socket, bytes: &[u8]) -> io::Result<()> {
    let mut buf = io.buffer(bytes.len());
    buf.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
    let (result, _) = I::send(socket, vec![buf.slice(0..bytes.len())]).await;
    result.map(drop)
}

/// Sends blocks from the cache: several per system call with GSO, else one each.
async fn send_blocks<I: Io>(
    socket: &I::Socket,
    cache: &mut Blocks,
    batch: &mut Vec<Slice<BlockBuf>>,
    blocks: std::ops::Range<u64>,
    gso: &mut bool,
    blksize: usize,
) -> io::Result<()> {
    let per_send = if *gso {
        (GSO_BYTES_MAX / (DATA_HEADER_LEN + blksize)).clamp(1, GSO_SEGMENTS_MAX) as u64
    } else {
        1
    };
    let mut first = blocks.start;
    while first < blocks.end {
        let end = (first + per_send).min(blocks.end);
        for block in first..end {
            batch.push(cache.take(block));
        }
        let (result, bufs) = I::send(socket, std::mem::take(batch)).await;
        *batch = bufs;
        for (block, slice) in (first..end).zip(batch.drain(..)) {
            cache.put(block, slice.into_inner());
        }
        if let Err(e) = result {
            if *gso
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EIO | libc::EINVAL | libc::EMSGSIZE)
                )
            {
                // The path refuses segmentation offload: carry on one datagram per send.
                *gso = false;
                return Box::pin(send_blocks::<I>(
                    socket,
                    cache,
                    batch,
                    first..blocks.end,
                    gso,
                    blksize,
                ))
                .await;
            }
            return Err(e);
        }
        first = end;
    }
    Ok(())
}

/// A failed read, as the ERROR the client gets.
#[derive(Debug, Clone, Copy)]
struct ReadError {
    code: ErrorCode,
    message: &'static str,
}

/// The transfer's block cache: a ring of `2 × windowsize` slots, one block each (DATA header
/// and payload, ready to send), holding the window in flight and the one read ahead.
///
/// Block `b` lives in slot `b % slots`; it is overwritten only by block `b + slots`, which is
/// loaded only once `b` is acknowledged (loads never run more than two windows ahead).
struct Blocks {
    bufs: Vec<Option<BlockBuf>>,
    /// The datagram length (header and payload) of the block in each slot.
    lens: Vec<usize>,
    /// The highest block loaded so far.
    loaded: u64,
    /// Bytes per buffer: the header and a full block.
    capacity: usize,
}

impl Blocks {
    fn new(window: usize, capacity: usize) -> Self {
        Self {
            bufs: (0..2 * window).map(|_| None).collect(),
            lens: vec![0; 2 * window],
            loaded: 0,
            capacity,
        }
    }

    fn slot(&self, block: u64) -> usize {
        (block % self.bufs.len() as u64) as usize
    }

    /// Takes block `block` (loaded earlier) out for sending, sliced to its datagram.
    fn take(&mut self, block: u64) -> Slice<BlockBuf> {
        let slot = self.slot(block);
        let buf = self.bufs[slot]
            .take()
            .expect("a block is loaded before it is sent, and put back after");
        buf.slice(0..self.lens[slot])
    }

    /// Puts a block's buffer back after sending.
    fn put(&mut self, block: u64, buf: BlockBuf) {
        let slot = self.slot(block);
        self.bufs[slot] = Some(buf);
    }

    /// Loads every block after the last one loaded up to `upto`, reading them concurrently.
    async fn load<I: Io>(
        &mut self,
        io: &I,
        data: &Data<I::File>,
        t: &Transfer,
        upto: u64,
    ) -> Result<(), ReadError> {
        let first = self.loaded + 1;
        if upto < first {
            return Ok(());
        }
        let mut reads = Vec::new();
        for block in first..=upto {
            let slot = self.slot(block);
            let mut buf = match self.bufs[slot].take() {
                Some(buf) => buf,
                None => io.buffer(self.capacity),
            };
            let len = t.block_len(block);
            let offset = t.offset(block);
            let bytes = buf.as_mut_slice();
            let mut header = [0; DATA_HEADER_LEN];
            packet::emit_data_header(Transfer::wire_block(block), &mut header);
            bytes[..DATA_HEADER_LEN].copy_from_slice(&header);
            self.lens[slot] = DATA_HEADER_LEN + len;
            let payload = &mut bytes[DATA_HEADER_LEN..DATA_HEADER_LEN + len];
            match data {
                Data::Memory(memory) => {
                    let start = usize::try_from(offset)
                        .unwrap_or(usize::MAX)
                        .min(memory.len());
                    let end = start.saturating_add(len).min(memory.len());
                    if end - start != len {
                        self.bufs[slot] = Some(buf);
                        return Err(SHRUNK);
                    }
                    payload.copy_from_slice(&memory[start..end]);
                    self.bufs[slot] = Some(buf);
                }
                Data::Custom(source) => {
                    let result = read_custom(&**source, payload, offset);
                    self.bufs[slot] = Some(buf);
                    result?;
                }
                Data::File(file) => reads.push(read_block::<I>(file, buf, block, len, offset)),
            }
            self.loaded = block;
        }
        let mut failed = None;
        for (block, result, buf) in join_all(reads).await {
            let slot = self.slot(block);
            self.bufs[slot] = Some(buf);
            if let Err(e) = result {
                failed = failed.or(Some(e));
                // Read it again if it is asked for after all.
                self.loaded = self.loaded.min(block - 1);
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

const SHRUNK: ReadError = ReadError {
    code: ErrorCode::Undefined,
    message: "File changed while being served",
};
const READ_FAILED: ReadError = ReadError {
    code: ErrorCode::Undefined,
    message: "Read error",
};

/// Reads `len` bytes of block `block` into `buf` after its header, however many reads it takes.
async fn read_block<I: Io>(
    file: &I::File,
    mut buf: BlockBuf,
    block: u64,
    len: usize,
    offset: u64,
) -> (u64, Result<(), ReadError>, BlockBuf) {
    let mut done = 0;
    while done < len {
        let begin = DATA_HEADER_LEN + done;
        let (result, returned) = I::read(
            file,
            buf,
            begin,
            DATA_HEADER_LEN + len,
            offset + done as u64,
        )
        .await;
        buf = returned;
        match result {
            // The file is shorter than it was when the transfer started.
            Ok(0) => return (block, Err(SHRUNK), buf),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "read failed");
                return (block, Err(READ_FAILED), buf);
            }
        }
    }
    (block, Ok(()), buf)
}

fn read_custom(source: &dyn ReadAt, payload: &mut [u8], offset: u64) -> Result<(), ReadError> {
    let mut done = 0;
    while done < payload.len() {
        match source.read_at(&mut payload[done..], offset + done as u64) {
            Ok(0) => return Err(SHRUNK),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(READ_FAILED),
        }
    }
    Ok(())
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
