//! The epoll executor's I/O: transfer sockets on tokio's epoll reactor, UDP GSO through
//! `sendmsg`, and file reads with `pread` on the shard's thread (microseconds for the
//! page-cache hits a boot storm makes). It is what runs where io_uring is unavailable:
//! containers under the default seccomp profile, `kernel.io_uring_disabled`, old kernels.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::cache::{Piece, CHUNK};
use super::shared_port::SharedPort;
use super::socket;
use super::task::Io;

/// The epoll I/O of one shard.
#[derive(Debug, Default)]
pub(crate) struct Epoll;

/// A transfer's socket on epoll.
#[derive(Debug)]
pub(crate) enum EpollSocket {
    /// Its own socket, connected to the client.
    Own(UdpSocket),
    /// Single-port mode: the shard's main socket.
    Shared(Rc<SharedPort>),
}

impl Io for Epoll {
    type Socket = EpollSocket;
    type File = std::fs::File;
    type Buf = Vec<u8>;

    fn socket(&self, socket: std::net::UdpSocket) -> io::Result<EpollSocket> {
        UdpSocket::from_std(socket).map(EpollSocket::Own)
    }

    fn shared_port(&self, port: Rc<SharedPort>) -> EpollSocket {
        EpollSocket::Shared(port)
    }

    fn file(&self, file: std::fs::File) -> std::fs::File {
        file
    }

    fn chunk_buffer(&self) -> Vec<u8> {
        vec![0; CHUNK]
    }

    async fn recv(socket: &EpollSocket, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let result = match socket {
            EpollSocket::Own(socket) => socket.recv(&mut buf).await,
            EpollSocket::Shared(port) => port.recv(&mut buf).await,
        };
        (result, buf)
    }

    fn try_recv(socket: &EpollSocket, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match socket {
            EpollSocket::Own(socket) => socket::recv_now(socket.as_raw_fd(), buf),
            EpollSocket::Shared(port) => port.try_recv(buf),
        }
    }

    async fn send(
        socket: &EpollSocket,
        pieces: Vec<Piece>,
        gso: bool,
    ) -> (io::Result<usize>, Vec<Piece>) {
        let socket = match socket {
            EpollSocket::Own(socket) => socket,
            EpollSocket::Shared(port) => {
                let result = port.send(&pieces, gso).await;
                return (result, pieces);
            }
        };
        let result = loop {
            if let Err(e) = socket.writable().await {
                break Err(e);
            }
            match socket.try_io(Interest::WRITABLE, || {
                socket::sendmsg(socket.as_raw_fd(), &pieces, None)
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => break other,
            }
        };
        (result, pieces)
    }

    async fn read(
        file: &std::fs::File,
        mut buf: Vec<u8>,
        begin: usize,
        end: usize,
        offset: u64,
    ) -> (io::Result<usize>, Vec<u8>) {
        let result = file.read_at(&mut buf[begin..end], offset);
        (result, buf)
    }

    fn close(_socket: &EpollSocket) {
        // Dropping a tokio socket closes it; no operation can be left armed.
    }

    fn enable_gso(socket: &EpollSocket, segment: u16) -> bool {
        match socket {
            EpollSocket::Own(socket) => socket::enable_gso(socket.as_raw_fd(), segment),
            // From the main socket the segment size rides on each send.
            EpollSocket::Shared(_) => true,
        }
    }
}
