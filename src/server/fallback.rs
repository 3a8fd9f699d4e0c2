//! The fallback backend: the same transfers on plain tokio (epoll) sockets, for hosts where
//! io_uring is unavailable (Docker's default seccomp profile, `kernel.io_uring_disabled`, old
//! kernels). Sends still use UDP GSO through `sendmsg`; file reads are `pread` on the shard's
//! thread, which costs microseconds for the page-cache hits a boot storm makes.
//!
//! In single-port mode a transfer's "socket" is the shard's main socket, shared
//! ([`SharedPort`]): the shard's receive loop hands each datagram from the client's address and
//! port to the transfer's inbox, and sends go from the main socket to that address (with the
//! source address and, for a window, the GSO segment size as control messages).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::mem::zeroed;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Notify;

use super::cache::{BlockBuf, Piece, CHUNK};
use super::driver::Io;
use super::socket::{MainSocket, Reply};

/// Datagrams a single-port transfer's inbox holds; more are dropped (a lock-step client has
/// one in flight, a window's worth of ACKs is far below this).
const INBOX_MAX: usize = 64;

/// The epoll backend of one shard.
#[derive(Debug, Default)]
pub(crate) struct Epoll;

/// A transfer's socket on the epoll backend.
#[derive(Debug)]
pub(crate) enum EpollSocket {
    /// Its own socket, connected to the client.
    Own(UdpSocket),
    /// Single-port mode: the shard's main socket.
    Shared(Rc<SharedPort>),
}

/// A single-port transfer's view of the shard's main socket.
pub(crate) struct SharedPort {
    main: Rc<AsyncFd<MainSocket>>,
    reply: RefCell<Reply>,
    /// The GSO segment size, once the transfer asks for it.
    segment: Cell<Option<u16>>,
    inbox: RefCell<VecDeque<Vec<u8>>>,
    arrived: Notify,
    /// The client asked again from this port: the transfer ends.
    replaced: Cell<bool>,
}

impl std::fmt::Debug for SharedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPort")
            .field("queued", &self.inbox.borrow().len())
            .finish()
    }
}

impl SharedPort {
    /// Replies to `peer` from `local` through the shard's `main` socket.
    pub(crate) fn new(
        main: Rc<AsyncFd<MainSocket>>,
        peer: SocketAddr,
        local: Option<IpAddr>,
    ) -> Self {
        let v6 = main.get_ref().is_v6();
        Self {
            main,
            // The segment size is set when the transfer enables GSO.
            reply: RefCell::new(Reply::new(peer, local, v6, 0)),
            segment: Cell::new(None),
            inbox: RefCell::new(VecDeque::new()),
            arrived: Notify::new(),
            replaced: Cell::new(false),
        }
    }

    /// Hands the transfer a datagram from its client.
    pub(crate) fn deliver(&self, datagram: &[u8]) {
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() < INBOX_MAX {
            inbox.push_back(datagram.to_vec());
            self.arrived.notify_one();
        }
    }

    /// Ends the transfer: its client has moved on to a new request from the same port.
    pub(crate) fn replace(&self) {
        self.replaced.set(true);
        self.arrived.notify_one();
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.replaced.get() {
                return Err(io::ErrorKind::ConnectionAborted.into());
            }
            if let Some(datagram) = self.inbox.borrow_mut().pop_front() {
                let n = datagram.len().min(buf.len());
                buf[..n].copy_from_slice(&datagram[..n]);
                return Ok(n);
            }
            self.arrived.notified().await;
        }
    }

    async fn send(&self, bufs: &[Piece]) -> io::Result<usize> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let gso = self.segment.get().is_some_and(|s| len > usize::from(s));
        loop {
            let mut guard = self.main.writable().await?;
            let fd = self.main.get_ref().as_raw_fd();
            let mut reply = self.reply.borrow_mut();
            match guard.try_io(|_| sendmsg(fd, bufs, Some((&mut reply, gso)))) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

impl Io for Epoll {
    type Socket = EpollSocket;
    type File = std::fs::File;

    fn socket(&self, socket: std::net::UdpSocket) -> io::Result<EpollSocket> {
        UdpSocket::from_std(socket).map(EpollSocket::Own)
    }

    fn shared_port(&self, port: Rc<SharedPort>) -> Option<EpollSocket> {
        Some(EpollSocket::Shared(port))
    }

    fn file(&self, file: std::fs::File) -> std::fs::File {
        file
    }

    fn chunk_buffer(&self) -> BlockBuf {
        BlockBuf::Heap(vec![0; CHUNK])
    }

    async fn recv(socket: &EpollSocket, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let result = match socket {
            EpollSocket::Own(socket) => socket.recv(&mut buf).await,
            EpollSocket::Shared(port) => port.recv(&mut buf).await,
        };
        (result, buf)
    }

    async fn send(socket: &EpollSocket, bufs: Vec<Piece>) -> (io::Result<usize>, Vec<Piece>) {
        let socket = match socket {
            EpollSocket::Own(socket) => socket,
            EpollSocket::Shared(port) => {
                let result = port.send(&bufs).await;
                return (result, bufs);
            }
        };
        let result = loop {
            if let Err(e) = socket.writable().await {
                break Err(e);
            }
            match socket.try_io(Interest::WRITABLE, || {
                sendmsg(socket.as_raw_fd(), &bufs, None)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => break other,
            }
        };
        (result, bufs)
    }

    async fn read(
        file: &std::fs::File,
        mut buf: BlockBuf,
        begin: usize,
        end: usize,
        offset: u64,
    ) -> (io::Result<usize>, BlockBuf) {
        let result = match &mut buf {
            BlockBuf::Heap(vec) => file.read_at(&mut vec[begin..end], offset),
            BlockBuf::Fixed(_) | BlockBuf::Slab(_) => Err(io::Error::other(
                "registered buffer in the fallback backend",
            )),
        };
        (result, buf)
    }

    fn close(_socket: &EpollSocket) {
        // Dropping a tokio socket closes it; no operation can be left armed.
    }

    fn enable_gso(socket: &EpollSocket, segment: u16) -> bool {
        match socket {
            EpollSocket::Own(socket) => super::socket::enable_gso(socket.as_raw_fd(), segment),
            EpollSocket::Shared(port) => {
                // From the main socket the segment size rides on each send instead.
                port.reply.borrow_mut().set_segment(segment);
                port.segment.set(Some(segment));
                true
            }
        }
    }

    fn file_fd(file: &std::fs::File) -> RawFd {
        file.as_raw_fd()
    }
}

/// One `sendmsg` of all `bufs` as an iovec array, without blocking; to a single-port client's
/// address (and with its control messages) when `reply` says.
fn sendmsg(fd: RawFd, bufs: &[Piece], reply: Option<(&mut Reply, bool)>) -> io::Result<usize> {
    let iovecs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: msghdr is a plain C struct; the iovecs point into `bufs`, alive for the call.
    let n = unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = iovecs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iovecs.len();
        if let Some((reply, gso)) = reply {
            reply.apply(&mut msg, gso);
        }
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
