//! The tokio-uring executor's I/O: transfer sockets and file reads on tokio-uring's ring, one
//! pool of 64 KiB chunk buffers per shard registered with it and filled with `READ_FIXED`,
//! windows sent as one `SENDMSG` cut by UDP GSO.
//!
//! tokio-uring 0.5 has no multishot receive, no provided buffers and no registered files (see
//! the README's "How it is built"), so each transfer keeps one receive armed through the
//! runtime; the io_uring engine ([`super::ring`]) drives a ring itself instead and is the
//! default. Where registration is refused (`RLIMIT_MEMLOCK` for an unprivileged user: one
//! warning at start) or the pool runs dry (counted, reported at debug level when the shard
//! stops), heap buffers and plain reads take over.

use std::cell::Cell;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use tokio_uring::buf::fixed::{FixedBuf, FixedBufPool};
use tokio_uring::buf::{BoundedBuf, IoBuf};
use tokio_uring::fs::File;
use tokio_uring::net::UdpSocket;

use super::cache::{ChunkMemory, Piece, CHUNK};
use super::shared_port::SharedPort;
use super::socket;
use super::task::Io;
use super::window::{unchanged_fd, FileHandle};
use crate::resolve::FileId;

/// The tokio-uring I/O of one shard.
pub(crate) struct Uring {
    pool: Option<FixedBufPool<Vec<u8>>>,
    /// Heap chunks handed out because the pool was empty, for the stop-time report.
    pub(crate) spilled: Rc<Cell<u64>>,
}

/// A transfer's socket on tokio-uring.
pub(crate) enum UringSocket {
    /// Its own socket, connected to the client.
    Own(UdpSocket),
    /// Single-port mode: the shard's main socket (read by the shard's loop on epoll, which a
    /// tokio-uring runtime also runs).
    Shared(Rc<SharedPort>),
}

/// A chunk buffer: registered with the ring, or heap memory where the pool is dry.
pub(crate) enum UringBuf {
    Fixed(FixedBuf),
    Heap(Vec<u8>),
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
            spilled: Rc::default(),
        }
    }

    /// Whether buffers are registered.
    pub(crate) fn registered(&self) -> bool {
        self.pool.is_some()
    }
}

impl Io for Uring {
    type Socket = UringSocket;
    type File = File;
    type Buf = UringBuf;

    fn socket(&self, socket: std::net::UdpSocket) -> io::Result<UringSocket> {
        Ok(UringSocket::Own(UdpSocket::from_std(socket)))
    }

    fn shared_port(&self, port: Rc<SharedPort>) -> UringSocket {
        UringSocket::Shared(port)
    }

    fn file(&self, file: std::fs::File) -> File {
        File::from_std(file)
    }

    fn chunk_buffer(&self) -> UringBuf {
        if let Some(pool) = &self.pool {
            if let Some(buf) = pool.try_next(CHUNK) {
                return UringBuf::Fixed(buf);
            }
            self.spilled.set(self.spilled.get() + 1);
        }
        UringBuf::Heap(vec![0; CHUNK])
    }

    async fn recv(socket: &UringSocket, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match socket {
            UringSocket::Own(socket) => socket.read(buf).await,
            UringSocket::Shared(port) => {
                let result = port.recv(&mut buf).await;
                (result, buf)
            }
        }
    }

    fn try_recv(socket: &UringSocket, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match socket {
            UringSocket::Own(socket) => socket::recv_now(socket.as_raw_fd(), buf),
            UringSocket::Shared(port) => port.try_recv(buf),
        }
    }

    async fn send(
        socket: &UringSocket,
        pieces: Vec<Piece>,
        gso: bool,
    ) -> (io::Result<usize>, Vec<Piece>) {
        match socket {
            UringSocket::Own(socket) => {
                // One SENDMSG, one iovec per piece; with UDP_SEGMENT set on the socket the
                // kernel cuts it into one datagram per block.
                let (result, pieces, _) = socket.sendmsg::<_, Vec<u8>>(pieces, None, None).await;
                (result, pieces)
            }
            UringSocket::Shared(port) => {
                let result = port.send(&pieces, gso).await;
                (result, pieces)
            }
        }
    }

    async fn read(
        file: &File,
        buf: UringBuf,
        begin: usize,
        end: usize,
        offset: u64,
    ) -> (io::Result<usize>, UringBuf) {
        match buf {
            UringBuf::Fixed(fixed) => {
                // IORING_OP_READ_FIXED straight into the registered chunk buffer.
                let (result, slice) = file.read_fixed_at(fixed.slice(begin..end), offset).await;
                (result, UringBuf::Fixed(slice.into_inner()))
            }
            UringBuf::Heap(vec) => {
                let (result, slice) = file.read_at(vec.slice(begin..end), offset).await;
                (result, UringBuf::Heap(slice.into_inner()))
            }
        }
    }

    fn close(socket: &UringSocket) {
        // A receive still armed in the ring keeps the socket (and its port) until it
        // completes; shutting it down completes it now.
        if let UringSocket::Own(socket) = socket {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    fn enable_gso(socket: &UringSocket, segment: u16) -> bool {
        match socket {
            UringSocket::Own(socket) => socket::enable_gso(socket.as_raw_fd(), segment),
            UringSocket::Shared(_) => true,
        }
    }
}

impl FileHandle for File {
    fn unchanged(&self, id: &FileId) -> bool {
        unchanged_fd(self.as_raw_fd(), id)
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

// SAFETY: a fixed buffer is registered memory that stays put while it is checked out, and a
// Vec's heap buffer while the Vec is not touched; a chunk never writes to either again.
unsafe impl ChunkMemory for UringBuf {
    fn as_ptr(&self) -> *const u8 {
        match self {
            UringBuf::Fixed(b) => IoBuf::stable_ptr(b),
            UringBuf::Heap(v) => v.as_ptr(),
        }
    }

    fn len(&self) -> usize {
        match self {
            UringBuf::Fixed(b) => IoBuf::bytes_total(b),
            UringBuf::Heap(v) => v.len(),
        }
    }
}

// tokio-uring moves buffers into its operations through these traits.

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
