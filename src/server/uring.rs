//! The io_uring backend (tokio-uring): registered block buffers, fixed reads, GSO sends.
//!
//! Everything ring-specific lives here. Per shard, one pool of buffers is registered with the
//! ring (a ring takes one set); file data is read with `READ_FIXED` straight into a pool buffer
//! after its DATA header and sent from that same buffer. Where registration is refused
//! (`RLIMIT_MEMLOCK` for an unprivileged user) or the pool runs dry, plain heap buffers and
//! plain reads take over, with one warning.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tokio_uring::buf::fixed::FixedBufPool;
use tokio_uring::buf::{BoundedBuf, BoundedBufMut, Slice};
use tokio_uring::fs::File;
use tokio_uring::net::UdpSocket;

use super::driver::{BlockBuf, Io};

/// Buffer sizes (a DATA header plus a block) and how many of each a shard registers.
///
/// Sized for the blocks clients ask for: 512 (no options), 1428–1468 (Ethernet MTU: iPXE 1432,
/// edk2 1468), 8192 (LAN jumbo), and the RFC 2348 maximum. Lock-step transfers hold two buffers
/// (the block in flight and the next), windowed ones two windows.
const CLASSES: [(usize, usize); 4] = [
    (4 + 512, 1024),
    (4 + 1468, 3072),
    (4 + 8192, 64),
    (4 + 65464, 8),
];

/// The io_uring backend of one shard.
pub(crate) struct Uring {
    pool: Option<FixedBufPool<Vec<u8>>>,
    /// Heap buffers handed out because the pool was empty, for the stop-time report.
    spilled: Cell<u64>,
}

impl Uring {
    /// Creates the shard's pool and registers it with the current ring.
    pub(crate) fn new(shard: usize) -> Self {
        // Created initialised, so any sub-slice is legal (tokio-uring asserts on slices past
        // the initialised length).
        let buffers = CLASSES
            .iter()
            .flat_map(|&(size, count)| (0..count).map(move |_| vec![0u8; size]));
        let pool = FixedBufPool::new(buffers);
        let pool = match pool.register() {
            Ok(()) => Some(pool),
            Err(e) => {
                if shard == 0 {
                    tracing::warn!(
                        error = %e,
                        "cannot register block buffers with io_uring (raise RLIMIT_MEMLOCK or \
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

    /// Heap buffers handed out since start because the pool had none left.
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

    fn buffer(&self, capacity: usize) -> BlockBuf {
        if let Some(pool) = &self.pool {
            let class = CLASSES.iter().find(|&&(size, _)| size >= capacity);
            if let Some(buf) = class.and_then(|&(size, _)| pool.try_next(size)) {
                return BlockBuf::Fixed(buf);
            }
            self.spilled.set(self.spilled.get() + 1);
        }
        BlockBuf::Heap(vec![0; capacity])
    }

    fn recv(
        socket: &UdpSocket,
        buf: Vec<u8>,
    ) -> impl Future<Output = (io::Result<usize>, Vec<u8>)> {
        socket.read(buf)
    }

    async fn send(
        socket: &UdpSocket,
        bufs: Vec<Slice<BlockBuf>>,
    ) -> (io::Result<usize>, Vec<Slice<BlockBuf>>) {
        // One SENDMSG with one iovec per block; with UDP_SEGMENT set on the socket the kernel
        // cuts it into one datagram per block.
        let (result, bufs, _) = socket.sendmsg::<_, Vec<u8>>(bufs, None, None).await;
        (result, bufs)
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
                // IORING_OP_READ_FIXED straight into the registered buffer, after the header.
                let (result, slice) = file.read_fixed_at(fixed.slice(begin..end), offset).await;
                (result, BlockBuf::Fixed(slice.into_inner()))
            }
            BlockBuf::Heap(vec) => {
                let (result, slice) = file.read_at(vec.slice(begin..end), offset).await;
                let mut vec = slice.into_inner();
                // A heap buffer is fully initialised; a read never shortens it.
                let total = vec.capacity().min(vec.len().max(end));
                vec.resize(total, 0);
                (result, BlockBuf::Heap(vec))
            }
        }
    }

    fn close(socket: &UdpSocket) {
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }

    fn raw_fd(socket: &UdpSocket) -> RawFd {
        socket.as_raw_fd()
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

#[allow(unused_imports)]
use BoundedBufMut as _;
