//! A single-port transfer's view of its shard's main socket, for the executor that runs a task
//! per transfer (tokio-uring): the shard's receive loop hands each datagram from the
//! client's address and port to the transfer's inbox, and sends go from the main socket to
//! that address, with the source address and, for a window, the GSO segment size as control
//! messages.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::cache::Piece;
use super::socket::{sendmsg, MainSocket, Reply};

/// Datagrams a single-port transfer's inbox holds; more are dropped (a lock-step client has
/// one in flight, a window's worth of ACKs is far below this).
const INBOX_MAX: usize = 64;

/// A single-port transfer's view of the shard's main socket.
pub(crate) struct SharedPort {
    main: Rc<AsyncFd<MainSocket>>,
    reply: RefCell<Reply>,
    inbox: RefCell<VecDeque<Vec<u8>>>,
    arrived: Notify,
}

impl std::fmt::Debug for SharedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPort")
            .field("queued", &self.inbox.borrow().len())
            .finish()
    }
}

impl SharedPort {
    /// Replies to `peer` from `local` through the shard's `main` socket, a window cut into
    /// datagrams of `segment` bytes.
    pub(crate) fn new(
        main: Rc<AsyncFd<MainSocket>>,
        peer: SocketAddr,
        local: Option<IpAddr>,
        segment: Option<u16>,
    ) -> Self {
        let v6 = main.get_ref().is_v6();
        Self {
            main,
            reply: RefCell::new(Reply::new(peer, local, v6, segment.unwrap_or(0))),
            inbox: RefCell::new(VecDeque::new()),
            arrived: Notify::new(),
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

    /// The next datagram from the client.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(n) = self.try_recv(buf)? {
                return Ok(n);
            }
            self.arrived.notified().await;
        }
    }

    /// A datagram already delivered, if there is one.
    pub(crate) fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(self.inbox.borrow_mut().pop_front().map(|datagram| {
            let n = datagram.len().min(buf.len());
            buf[..n].copy_from_slice(&datagram[..n]);
            n
        }))
    }

    /// Sends `pieces` to the client as one message, cut by GSO when `gso`.
    pub(crate) async fn send(&self, pieces: &[Piece], gso: bool) -> io::Result<usize> {
        loop {
            let mut guard = self.main.writable().await?;
            let fd = self.main.get_ref().as_raw_fd();
            let mut reply = self.reply.borrow_mut();
            match guard.try_io(|_| sendmsg(fd, pieces, Some((&mut reply, gso)))) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}
