//! The io_uring backend (tokio-uring): registered block buffers, fixed reads, GSO sends.
//!
//! Everything ring-specific lives here. Per shard, one pool of 64 KiB chunk buffers is
//! registered with the ring (a ring takes one set); file data is read with one `READ_FIXED` per
//! chunk into a pool buffer, and DATA datagrams are sent straight from it (their headers come
//! from a static table, see [`super::cache`]). Where registration is refused (`RLIMIT_MEMLOCK`
//! for an unprivileged user: one warning at start) or the pool runs dry (counted, and reported
//! at debug level when the shard stops), plain heap buffers and plain reads take over.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio_uring::buf::fixed::FixedBufPool;
use tokio_uring::buf::{BoundedBuf, IoBuf, IoBufMut};
use tokio_uring::fs::File;
use tokio_uring::net::UdpSocket;

use super::cache::{BlockBuf, Piece, CHUNK};
use super::driver::Io;

/// The io_uring backend of one shard.
pub(crate) struct Uring {
    pool: Option<FixedBufPool<Vec<u8>>>,
    /// Heap chunks handed out because the pool was empty, for the stop-time report.
    spilled: Cell<u64>,
}

impl Uring {
    /// Creates the shard's pool of `chunks` chunk buffers and registers it with the current
    /// ring (tokio-uring takes at most 1024 buffers).
    pub(crate) fn new(shard: usize, chunks: usize) -> Self {
        // Created initialised, so any sub-slice is legal (tokio-uring asserts on slices past
        // the initialised length).
        let buffers = (0..chunks.clamp(1, 1024)).map(|_| vec![0u8; CHUNK]);
        let pool = FixedBufPool::new(buffers);
        let pool = match pool.register() {
            Ok(()) => Some(pool),
            Err(e) => {
                if shard == 0 {
                    tracing::warn!(
                        error = %e,
                        "cannot register file buffers with io_uring (raise RLIMIT_MEMLOCK or \
                         grant CAP_IPC_LOCK); reading into unregistered buffers"
                    );
                }
                None
            }
        };
        Self {
            pool,
            spilled: Cell::new(0),
        }
    }

    /// Whether buffers are registered.
    pub(crate) fn registered(&self) -> bool {
        self.pool.is_some()
    }

    /// Heap chunks handed out since start because the pool had none left.
    pub(crate) fn spilled(&self) -> u64 {
        self.spilled.get()
    }
}

impl Io for Uring {
    type Socket = UdpSocket;
    type File = File;

    fn socket(&self, socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        Ok(UdpSocket::from_std(socket))
    }

    fn file(&self, file: std::fs::File) -> File {
        File::from_std(file)
    }

    fn chunk_buffer(&self) -> BlockBuf {
        if let Some(pool) = &self.pool {
            if let Some(buf) = pool.try_next(CHUNK) {
                return BlockBuf::Fixed(buf);
            }
            self.spilled.set(self.spilled.get() + 1);
        }
        BlockBuf::Heap(vec![0; CHUNK])
    }

    fn recv(
        socket: &UdpSocket,
        buf: Vec<u8>,
    ) -> impl Future<Output = (io::Result<usize>, Vec<u8>)> {
        socket.read(buf)
    }

    async fn send(socket: &UdpSocket, pieces: Vec<Piece>) -> (io::Result<usize>, Vec<Piece>) {
        // One SENDMSG, one iovec per piece; with UDP_SEGMENT set on the socket the kernel cuts
        // it into one datagram per block.
        let (result, pieces, _) = socket.sendmsg::<_, Vec<u8>>(pieces, None, None).await;
        (result, pieces)
    }

    async fn read(
        file: &File,
        buf: BlockBuf,
        begin: usize,
        end: usize,
        offset: u64,
    ) -> (io::Result<usize>, BlockBuf) {
        match buf {
            BlockBuf::Fixed(fixed) => {
                // IORING_OP_READ_FIXED straight into the registered chunk buffer.
                let (result, slice) = file.read_fixed_at(fixed.slice(begin..end), offset).await;
                (result, BlockBuf::Fixed(slice.into_inner()))
            }
            BlockBuf::Heap(vec) => {
                let (result, slice) = file.read_at(vec.slice(begin..end), offset).await;
                (result, BlockBuf::Heap(slice.into_inner()))
            }
            slab @ BlockBuf::Slab(_) => (
                Err(io::Error::other(
                    "a raw-ring buffer in the tokio-uring backend",
                )),
                slab,
            ),
        }
    }

    fn close(socket: &UdpSocket) {
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }

    fn enable_gso(socket: &UdpSocket, segment: u16) -> bool {
        super::socket::enable_gso(socket.as_raw_fd(), segment)
    }

    fn file_fd(file: &File) -> RawFd {
        file.as_raw_fd()
    }
}

/// Creates a tokio-uring runtime for one shard, or says why io_uring is unavailable.
pub(crate) fn runtime() -> io::Result<tokio_uring::Runtime> {
    let mut builder = tokio_uring::builder();
    // Never SQPOLL (a polling thread competes for the two cores) nor DEFER_TASKRUN (tokio-uring
    // never sees those completions and hangs); a large CQ for thousands of transfers' receives.
    builder.entries(4096).uring_builder(
        tokio_uring::uring_builder()
            .setup_cqsize(16384)
            .setup_coop_taskrun(),
    );
    tokio_uring::Runtime::new(&builder)
}

// tokio-uring moves buffers into its operations through these traits; the other backends use
// the buffers' own methods.

// SAFETY: every variant points into memory that neither moves nor changes while the piece is
// alive (a static table, a chunk or memory source behind a reference count, a Vec's heap
// buffer), and exposes only initialised bytes within bounds checked at construction.
unsafe impl IoBuf for Piece {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.len()
    }

    fn bytes_total(&self) -> usize {
        self.len()
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
