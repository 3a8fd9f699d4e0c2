//! The system calls under the event loop: sockets, their addresses in the kernel's layout, and
//! batched receives (`recvmmsg`, with `UDP_GRO` windows split back into datagrams).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Raises the soft limit on open files to the hard limit (every client holds a socket) and
/// returns it.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and keeps no pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// Opens a nonblocking UDP socket for one transfer, bound to `source` if given, and registers
/// it with `epoll` under `data`.
pub(super) fn open_socket(
    epoll: RawFd,
    server: SocketAddr,
    source: Option<IpAddr>,
    rcvbuf: Option<libc::c_int>,
    gro: bool,
    data: u64,
) -> io::Result<OwnedFd> {
    let family = if server.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket takes no pointers; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; dropping closes it on error.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(size) = rcvbuf {
        // SAFETY: the option value is a live c_int of the length given. A refusal only leaves
        // the default buffer, so the result is ignored.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    if gro {
        let on: libc::c_int = 1;
        // SAFETY: as above. Kernels before 5.0 refuse it: then each datagram comes alone.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_UDP,
                UDP_GRO,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    if let Some(ip) = source {
        let addr = RawAddr::new(SocketAddr::new(ip, 0));
        // SAFETY: `addr` is a valid socket address of the length given, live for the call.
        if unsafe { libc::bind(fd, addr.as_ptr(), addr.len) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: data,
    };
    // SAFETY: `event` is live for the call; the kernel copies it.
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// A socket address in the kernel's layout, converted once and reused for every send.
#[derive(Clone, Copy)]
pub(super) struct RawAddr {
    pub(super) storage: libc::sockaddr_storage,
    pub(super) len: libc::socklen_t,
}

impl RawAddr {
    pub(super) fn new(addr: SocketAddr) -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (unspecified) value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Self {
            storage,
            len: len as libc::socklen_t,
        }
    }

    pub(super) fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }
}

/// The address the kernel wrote into `storage`, if it is an IP one.
pub(super) fn decode_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is aligned for it.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Receive buffers for one `recvmmsg`: a window's worth of datagrams and their sources.
///
/// The headers point into the buffers, which are allocated once and never move (boxed slices),
/// so the same headers serve every call.
pub(super) struct Batch {
    buffers: Box<[u8]>,
    size: usize,
    names: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    /// Room for each datagram's `UDP_GRO` control message (its segment size).
    controls: Box<[[u64; CONTROL_WORDS]]>,
    headers: Box<[libc::mmsghdr]>,
}

/// Words of control-message room per datagram: one `cmsghdr` and an int, with room to spare.
const CONTROL_WORDS: usize = 8;

/// The most datagrams one `recvmmsg` takes: a window of 64 blocks (ringtftpd's default cap).
pub(super) const BATCH: usize = 64;
/// Coalesced receives one `recvmmsg` takes with `UDP_GRO` (each up to 64 KiB).
pub(super) const GRO_BATCH: usize = 16;
/// `UDP_GRO` from linux/udp.h: deliver a GSO train as one buffer, with its segment size.
const UDP_GRO: libc::c_int = 104;

impl Batch {
    pub(super) fn new(count: usize, size: usize) -> Self {
        let mut buffers = vec![0u8; count * size].into_boxed_slice();
        // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
        let mut names: Box<[libc::sockaddr_storage]> =
            (0..count).map(|_| unsafe { std::mem::zeroed() }).collect();
        let mut iovecs: Box<[libc::iovec]> = buffers
            .chunks_exact_mut(size)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: size,
            })
            .collect();
        let mut controls: Box<[[u64; CONTROL_WORDS]]> = vec![[0; CONTROL_WORDS]; count].into();
        let headers = iovecs
            .iter_mut()
            .zip(names.iter_mut())
            .zip(controls.iter_mut())
            .map(|((iov, name), control)| {
                // SAFETY: mmsghdr is plain old data; all zeroes is valid, and the fields that
                // matter are set right below.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen =
                    std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = control.as_mut_ptr().cast();
                h
            })
            .collect();
        Self {
            buffers,
            size,
            names,
            iovecs,
            controls,
            headers,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.headers.len()
    }

    /// Receives up to [`len`](Self::len) datagrams from `fd` without blocking.
    pub(super) fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        for h in self.headers.iter_mut() {
            // The kernel shrinks the name length to what it wrote; give the room back.
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = CONTROL_WORDS * 8;
        }
        debug_assert_eq!(self.iovecs.len(), self.headers.len());
        debug_assert_eq!(self.controls.len(), self.headers.len());
        // SAFETY: the headers point at `names` and `iovecs`, which point at `buffers`; all are
        // owned by `self`, never move, and outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                self.headers.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The `i`th datagram of the last receive (cut to the buffer if it was longer): with
    /// `UDP_GRO`, several the server sent as one GSO window.
    pub(super) fn datagram(&self, i: usize) -> &[u8] {
        let len = (self.headers[i].msg_len as usize).min(self.size);
        &self.buffers[i * self.size..i * self.size + len]
    }

    /// Whether the `i`th receive was longer than its buffer.
    pub(super) fn truncated(&self, i: usize) -> bool {
        self.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// The segment size the kernel reported for the `i`th datagram (`UDP_GRO`), if any.
    pub(super) fn gro_size(&self, i: usize) -> Option<usize> {
        let h = &self.headers[i].msg_hdr;
        // SAFETY: the header's control pointer and length describe `controls[i]`, which the
        // kernel filled; the CMSG macros stay within msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(h);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                    let size =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                    return usize::try_from(size).ok().filter(|&s| s > 0);
                }
                cmsg = libc::CMSG_NXTHDR(h, cmsg);
            }
        }
        None
    }

    /// How many datagrams the `i`th receive holds (at least one, even if empty).
    pub(super) fn segments(&self, i: usize) -> usize {
        let len = self.datagram(i).len();
        match self.gro_size(i) {
            Some(size) => len.div_ceil(size).max(1),
            None => 1,
        }
    }

    /// Datagram `j` of the `i`th receive.
    pub(super) fn segment(&self, i: usize, j: usize) -> &[u8] {
        let datagram = self.datagram(i);
        match self.gro_size(i) {
            Some(size) => {
                let start = (j * size).min(datagram.len());
                &datagram[start..(start + size).min(datagram.len())]
            }
            None => datagram,
        }
    }

    /// The source of the `i`th datagram of the last receive.
    pub(super) fn source(&self, i: usize) -> Option<SocketAddr> {
        decode_addr(&self.names[i])
    }
}
