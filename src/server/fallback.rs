//! The fallback backend: the same transfers on plain tokio (epoll) sockets, for hosts where
//! io_uring is unavailable (Docker's default seccomp profile, `kernel.io_uring_disabled`, kernels
//! before 5.10). Sends still use UDP GSO through `sendmsg`; file reads are `pread` on the shard's
//! thread, which costs microseconds for the page-cache hits a boot storm makes.

use std::io;
use std::mem::zeroed;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_uring::buf::IoBuf;

use super::cache::{BlockBuf, Piece, CHUNK};
use super::driver::Io;

/// The epoll backend of one shard.
#[derive(Debug, Default)]
pub(crate) struct Epoll;

impl Io for Epoll {
    type Socket = UdpSocket;
    type File = std::fs::File;

    fn socket(&self, socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        UdpSocket::from_std(socket)
    }

    fn file(&self, file: std::fs::File) -> std::fs::File {
        file
    }

    fn chunk_buffer(&self) -> BlockBuf {
        BlockBuf::Heap(vec![0; CHUNK])
    }

    async fn recv(socket: &UdpSocket, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let result = socket.recv(&mut buf).await;
        (result, buf)
    }

    async fn send(socket: &UdpSocket, bufs: Vec<Piece>) -> (io::Result<usize>, Vec<Piece>) {
        let result = loop {
            if let Err(e) = socket.writable().await {
                break Err(e);
            }
            match socket.try_io(Interest::WRITABLE, || sendmsg(socket.as_raw_fd(), &bufs)) {
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

    fn close(_socket: &UdpSocket) {
        // Dropping a tokio socket closes it; no operation can be left armed.
    }

    fn raw_fd(socket: &UdpSocket) -> RawFd {
        socket.as_raw_fd()
    }

    fn file_fd(file: &std::fs::File) -> RawFd {
        file.as_raw_fd()
    }
}

/// One `sendmsg` of all `bufs` as an iovec array, without blocking.
fn sendmsg(fd: RawFd, bufs: &[Piece]) -> io::Result<usize> {
    let iovecs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.stable_ptr() as *mut libc::c_void,
            iov_len: b.bytes_init(),
        })
        .collect();
    // SAFETY: msghdr is a plain C struct; the iovecs point into `bufs`, alive for the call.
    let n = unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = iovecs.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iovecs.len();
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
