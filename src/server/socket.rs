//! Sockets: the shards' main sockets on the server port and each transfer's own socket.
//!
//! The main socket is read with `recvmmsg` once it is readable (a multishot poll in the io_uring
//! engine, tokio's readiness on the task backends): it drains a whole burst of requests per
//! wake-up, and it delivers `IP_PKTINFO` / `IPV6_PKTINFO`, the address each request was sent
//! *to*.
//! Each transfer socket is then bound to that address, so on a multi-homed host the replies come
//! from the address the client asked (PXE firmware drops them otherwise), and connected to the
//! client, so the kernel filters out every other transfer ID (RFC 1350 §4).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

/// `UDP_SEGMENT` from `linux/udp.h`; the libc crate does not export it.
const UDP_SEGMENT: libc::c_int = 103;

/// Datagrams taken per `recvmmsg` call.
const BATCH: usize = 32;
/// Room for one request. RFC 2347 §2 limits a request to 512 bytes; requests up to this size
/// are still read (being lenient costs nothing), and larger ones are refused.
pub(crate) const REQUEST_MAX: usize = 2048;
/// Room for either kind of packet-info control message.
const CMSG_SPACE: usize = 64;

/// Creates a main socket bound to `addr` with `SO_REUSEPORT`, so every shard can bind its own
/// on the same port and the kernel spreads clients over them by their address and port.
pub(crate) fn bind_main(addr: SocketAddr, rcvbuf: usize) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too (as mapped addresses), like `python -m nobodd.tftpd`.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_port(true)?;
    prepare_main(&socket, addr.is_ipv6(), rcvbuf)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Takes a UDP socket bound by someone else (systemd's socket activation) as a main socket:
/// the same options as [`bind_main`]'s, but its address, its dual-stack setting and its
/// `SO_REUSEPORT` are the owner's.
pub(crate) fn adopt_main(socket: Socket, rcvbuf: usize) -> io::Result<Socket> {
    if socket.r#type()? != Type::DGRAM {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket passed is not a datagram socket (ListenDatagram=)",
        ));
    }
    let local = socket.local_addr()?.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket passed is not an IP socket",
        )
    })?;
    prepare_main(&socket, local.is_ipv6(), rcvbuf)?;
    Ok(socket)
}

/// Whether `socket` has `SO_REUSEPORT`, so that more sockets can join its port.
pub(crate) fn reuses_port(socket: &Socket) -> bool {
    socket.reuse_port().unwrap_or(false)
}

/// The options every main socket needs: the address each request was sent to, non-blocking
/// reads, and a receive buffer for a storm.
fn prepare_main(socket: &Socket, v6: bool, rcvbuf: usize) -> io::Result<()> {
    if v6 {
        set_opt(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        // For IPv4 requests (mapped), IP_PKTINFO's ipi_spec_dst is the local address even for a
        // broadcast request, which IPV6_PKTINFO's mapped destination is not.
        let _ = set_opt(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1);
    } else {
        set_opt(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    }
    socket.set_nonblocking(true)?;
    // A boot storm arrives as one burst; a small buffer drops requests that clients then only
    // repeat after their (long) timeout. The kernel caps this at net.core.rmem_max unless
    // SO_RCVBUFFORCE is allowed (root), so try that first.
    if socket.set_recv_buffer_size(rcvbuf).is_err() || recv_buffer(socket) < rcvbuf {
        let _ = set_opt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            rcvbuf as libc::c_int,
        );
    }
    Ok(())
}

fn recv_buffer(socket: &Socket) -> usize {
    socket.recv_buffer_size().unwrap_or(0)
}

/// One received request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    /// The client.
    pub peer: SocketAddr,
    /// The address the client sent to, when the kernel said.
    pub local: Option<IpAddr>,
    /// The interface it arrived on (its index; 0 if unknown): the MTU that caps `blksize`,
    /// and the scope a link-local `local` needs.
    pub scope: u32,
    /// Bytes in the buffer.
    pub len: usize,
    /// The datagram did not fit in [`REQUEST_MAX`].
    pub truncated: bool,
}

/// A shard's main socket: requests in, in batches; ERRORs out.
pub(crate) struct MainSocket {
    socket: Socket,
    /// Whether the socket is IPv6 (dual-stack): replies go to v4-mapped addresses then.
    v6: bool,
}

impl std::fmt::Debug for MainSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MainSocket")
            .field("fd", &self.socket.as_raw_fd())
            .finish()
    }
}

impl AsRawFd for MainSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

/// Buffers for one `recvmmsg` batch, reused for every call.
pub(crate) struct RecvBatch {
    bufs: Box<[[u8; REQUEST_MAX]; BATCH]>,
    names: Box<[libc::sockaddr_storage; BATCH]>,
    controls: Box<[[u8; CMSG_SPACE]; BATCH]>,
    iovecs: Box<[libc::iovec; BATCH]>,
    headers: Box<[libc::mmsghdr; BATCH]>,
    received: Vec<Received>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("received", &self.received)
            .finish()
    }
}

impl RecvBatch {
    pub(crate) fn new() -> Self {
        // SAFETY: all-zero is a valid value for these plain C structs and byte arrays.
        unsafe {
            Self {
                bufs: Box::new([[0; REQUEST_MAX]; BATCH]),
                names: Box::new(zeroed()),
                controls: Box::new([[0; CMSG_SPACE]; BATCH]),
                iovecs: Box::new(zeroed()),
                headers: Box::new(zeroed()),
                received: Vec::with_capacity(BATCH),
            }
        }
    }

    /// The datagrams of the last batch with their bytes.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Received, &[u8])> {
        self.received
            .iter()
            .zip(self.bufs.iter())
            .map(|(r, buf)| (r, &buf[..r.len.min(REQUEST_MAX)]))
    }
}

impl MainSocket {
    /// Wraps a socket from [`bind_main`].
    pub(crate) fn new(socket: Socket) -> io::Result<Self> {
        let v6 = socket.local_addr()?.is_ipv6();
        Ok(Self { socket, v6 })
    }

    /// The bound address.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Whether the socket is IPv6 (dual-stack).
    pub(crate) fn is_v6(&self) -> bool {
        self.v6
    }

    /// Takes up to a batch of requests in one system call, without waiting
    /// ([`io::ErrorKind::WouldBlock`] when there are none).
    pub(crate) fn try_recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        recvmmsg(self.socket.as_raw_fd(), batch)
    }

    /// Sends `data` to `peer` from the address `local` (when known), without waiting: a reply
    /// from the main port (an ERROR) is dropped rather than queued when the socket is full.
    pub(crate) fn send_to(
        &self,
        data: &[u8],
        peer: SocketAddr,
        local: Option<IpAddr>,
    ) -> io::Result<()> {
        let fd = self.socket.as_raw_fd();
        let v6_socket = self.v6;
        let peer = if v6_socket { to_v6(peer) } else { peer };
        let name = SockAddr::from(peer);
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut control = [0u8; CMSG_SPACE];
        // SAFETY: msghdr is a plain C struct; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = name.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = name.len();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if let Some(local) = local {
            let len = write_pktinfo(&mut control, local, v6_socket);
            if len > 0 {
                msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = len;
            }
        }
        // SAFETY: `msg` points at live buffers of the stated lengths.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Waits for requests on a main socket registered with tokio and takes up to a batch of them.
pub(crate) async fn recv_batch(
    main: &AsyncFd<MainSocket>,
    batch: &mut RecvBatch,
) -> io::Result<usize> {
    loop {
        let mut guard = main.readable().await?;
        match guard.try_io(|fd| fd.get_ref().try_recv_batch(batch)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

fn recvmmsg(fd: RawFd, batch: &mut RecvBatch) -> io::Result<usize> {
    batch.received.clear();
    for i in 0..BATCH {
        batch.iovecs[i] = libc::iovec {
            iov_base: batch.bufs[i].as_mut_ptr() as *mut libc::c_void,
            iov_len: REQUEST_MAX,
        };
        let hdr = &mut batch.headers[i];
        hdr.msg_len = 0;
        hdr.msg_hdr.msg_name = &mut batch.names[i] as *mut _ as *mut libc::c_void;
        hdr.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        hdr.msg_hdr.msg_iov = &mut batch.iovecs[i];
        hdr.msg_hdr.msg_iovlen = 1;
        hdr.msg_hdr.msg_control = batch.controls[i].as_mut_ptr() as *mut libc::c_void;
        hdr.msg_hdr.msg_controllen = CMSG_SPACE;
        hdr.msg_hdr.msg_flags = 0;
    }
    // SAFETY: every header points into `batch`'s boxed arrays, which outlive the call.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            batch.headers.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for i in 0..n {
        let hdr = &batch.headers[i];
        // SAFETY: the kernel filled `names[i]` with `msg_namelen` bytes of a socket address.
        let name = unsafe {
            let mut storage = socket2::SockAddrStorage::zeroed();
            *storage.view_as::<libc::sockaddr_storage>() = batch.names[i];
            SockAddr::new(storage, hdr.msg_hdr.msg_namelen)
        };
        let Some(peer) = name.as_socket() else {
            continue;
        };
        let (local, scope) = read_pktinfo(&hdr.msg_hdr).map_or((None, 0), |(ip, i)| (Some(ip), i));
        batch.received.push(Received {
            peer: canonical(peer),
            local,
            scope,
            len: hdr.msg_len as usize,
            truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        });
    }
    // Keep `received[k]` aligned with `bufs[k]`: a non-IP sender (impossible on a UDP socket)
    // was skipped above, so only trust the batch when nothing was.
    if batch.received.len() != n {
        batch.received.clear();
    }
    Ok(batch.received.len())
}

/// The local address a request arrived on, and for IPv6 the interface, from an `IP_PKTINFO` or
/// `IPV6_PKTINFO` control message: the address its replies must come from. For IPv4 that is
/// `ipi_spec_dst`, which is the destination for a unicast request and the receiving interface's
/// address for one sent to a broadcast address (a transfer socket cannot be bound to a
/// broadcast address); it is preferred when a dual-stack socket reports both.
fn read_pktinfo(msg: &libc::msghdr) -> Option<(IpAddr, u32)> {
    let mut found = None;
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // `msg_controllen`; each payload is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            if c.cmsg_level == libc::IPPROTO_IP && c.cmsg_type == libc::IP_PKTINFO {
                let info: libc::in_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in_pktinfo);
                let ip = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                return Some((IpAddr::V4(ip), info.ipi_ifindex as u32));
            }
            if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::in6_pktinfo);
                let ip = IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)).to_canonical();
                found = Some((ip, info.ipi6_ifindex));
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    found
}

/// Writes a packet-info control message that sets the source address; returns its length.
fn write_pktinfo(control: &mut [u8; CMSG_SPACE], local: IpAddr, v6_socket: bool) -> usize {
    // SAFETY: the control buffer is large and aligned enough for one cmsghdr with either
    // payload (checked by CMSG_SPACE below); the header and payload are written unaligned.
    unsafe {
        let (level, kind, payload_len) = if v6_socket {
            (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                size_of::<libc::in6_pktinfo>(),
            )
        } else {
            (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                size_of::<libc::in_pktinfo>(),
            )
        };
        let space = libc::CMSG_SPACE(payload_len as u32) as usize;
        if space > CMSG_SPACE {
            return 0;
        }
        let mut msg: libc::msghdr = zeroed();
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return 0;
        }
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload_len as u32) as usize;
        let data = libc::CMSG_DATA(cmsg);
        if v6_socket {
            let addr = match local {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            let mut info: libc::in6_pktinfo = zeroed();
            info.ipi6_addr.s6_addr = addr.octets();
            std::ptr::write_unaligned(data as *mut libc::in6_pktinfo, info);
        } else {
            let IpAddr::V4(v4) = local else { return 0 };
            let mut info: libc::in_pktinfo = zeroed();
            info.ipi_spec_dst.s_addr = u32::from(v4).to_be();
            std::ptr::write_unaligned(data as *mut libc::in_pktinfo, info);
        }
        space
    }
}

/// Where transfer sockets may bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ports {
    /// Any ephemeral port.
    Ephemeral,
    /// A port in `lo..=hi` (for firewalls that open only a range).
    Range(u16, u16),
}

/// Creates a transfer socket bound to `local` (the address the request was sent to) and
/// connected to `peer`, so it sends only to and receives only from the client's transfer ID.
pub(crate) fn bind_transfer(
    local: IpAddr,
    scope: u32,
    peer: SocketAddr,
    ports: Ports,
    hint: u32,
) -> io::Result<std::net::UdpSocket> {
    let peer = canonical(peer);
    let local = match (local.to_canonical(), peer) {
        (IpAddr::V6(v6), SocketAddr::V4(_)) if v6.is_unspecified() => {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
        (IpAddr::V4(v4), SocketAddr::V6(_)) if v4.is_unspecified() => {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        }
        (local, _) => local,
    };
    // A link-local address means nothing without its interface: the one the request came in
    // on, else the client's (the kernel gives a link-local source its interface).
    let scope = match (local, peer) {
        (IpAddr::V6(v6), SocketAddr::V6(p)) if v6.is_unicast_link_local() => match scope {
            0 => p.scope_id(),
            scope => scope,
        },
        _ => 0,
    };
    let at = |port: u16| -> SockAddr {
        match local {
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, scope)).into(),
            v4 => SocketAddr::new(v4, port).into(),
        }
    };
    let socket = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    match ports {
        Ports::Ephemeral => socket.bind(&at(0))?,
        Ports::Range(lo, hi) => {
            // Start at a different port for each transfer so a busy range is not probed from
            // its first port every time.
            let span = u32::from(hi - lo) + 1;
            let mut bound = false;
            for i in 0..span {
                let port = lo + ((hint.wrapping_add(i)) % span) as u16;
                match socket.bind(&at(port)) {
                    Ok(()) => {
                        bound = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                    Err(e) => return Err(e),
                }
            }
            if !bound {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "every port of --port-range is in use",
                ));
            }
        }
    }
    socket.connect(&peer.into())?;
    Ok(socket.into())
}

/// Asks the kernel to cut every send on `socket` into datagrams of `segment` bytes (UDP GSO),
/// so a window of blocks goes out in one system call. Returns false where the kernel refuses.
pub(crate) fn enable_gso(fd: RawFd, segment: u16) -> bool {
    let value = libc::c_int::from(segment);
    // SAFETY: a plain setsockopt with an int payload.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            UDP_SEGMENT,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}

fn set_opt(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a plain setsockopt with an int payload on a live descriptor.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A v4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports) as plain IPv4.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

fn to_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        v6 => v6,
    }
}

/// Where a single-port transfer's datagrams go, all from the main socket: the client's address,
/// and control messages that set the source address (the one the request came to, as a
/// transfer socket would be bound to it) and, for a window, the datagram size for UDP GSO.
pub(crate) struct Reply {
    name: SockAddr,
    control: Control,
    /// Bytes of the source-address message, then of both.
    pktinfo_len: usize,
    all_len: usize,
}

/// Control-message space, aligned as `cmsghdr` needs.
#[repr(C, align(8))]
struct Control([u8; CMSG_SPACE]);

impl Reply {
    /// Replies to `peer` from `local` (when known) on a main socket that is IPv6 (dual-stack)
    /// or not, in datagrams of `segment` bytes when GSO cuts a window.
    pub(crate) fn new(
        peer: SocketAddr,
        local: Option<IpAddr>,
        v6_socket: bool,
        segment: u16,
    ) -> Self {
        let peer = if v6_socket { to_v6(peer) } else { peer };
        let mut control = Control([0; CMSG_SPACE]);
        let pktinfo_len = match local {
            Some(local) => write_pktinfo(&mut control.0, local, v6_socket),
            None => 0,
        };
        let segment_space = write_segment(&mut control.0[pktinfo_len..], segment);
        Self {
            name: SockAddr::from(peer),
            control,
            pktinfo_len,
            all_len: pktinfo_len + segment_space,
        }
    }

    /// Points `msg` at the client's address and the control messages; `gso` when the message
    /// holds several datagrams for the kernel to cut.
    pub(crate) fn apply(&mut self, msg: &mut libc::msghdr, gso: bool) {
        msg.msg_name = self.name.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = self.name.len();
        let len = if gso { self.all_len } else { self.pktinfo_len };
        msg.msg_controllen = len;
        msg.msg_control = if len > 0 {
            self.control.0.as_mut_ptr().cast()
        } else {
            std::ptr::null_mut()
        };
    }
}

/// Writes a `UDP_SEGMENT` control message (`SOL_UDP`, a u16 datagram size) at the start of
/// `control`; returns its space, 0 if it does not fit.
fn write_segment(control: &mut [u8], segment: u16) -> usize {
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure arithmetic.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(size_of::<u16>() as u32) as usize,
            libc::CMSG_LEN(size_of::<u16>() as u32) as usize,
        )
    };
    if control.len() < space {
        return 0;
    }
    let header = libc::cmsghdr {
        cmsg_len: len,
        cmsg_level: libc::SOL_UDP,
        cmsg_type: UDP_SEGMENT,
    };
    // SAFETY: `space` bytes are available; both writes are unaligned-safe, and the payload
    // follows the header as CMSG_DATA places it (the header's size is already aligned).
    unsafe {
        let at = control.as_mut_ptr();
        std::ptr::write_unaligned(at.cast::<libc::cmsghdr>(), header);
        std::ptr::write_unaligned(at.add(size_of::<libc::cmsghdr>()).cast::<u16>(), segment);
    }
    space
}

/// One `sendmsg` of all `pieces` as an iovec array, without blocking; to a single-port
/// client's address (and with its control messages) when `reply` says.
pub(crate) fn sendmsg(
    fd: RawFd,
    pieces: &[super::cache::Piece],
    reply: Option<(&mut Reply, bool)>,
) -> io::Result<usize> {
    let iovecs: Vec<libc::iovec> = pieces
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: msghdr is a plain C struct; the iovecs point into `pieces`, alive for the call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
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

/// A datagram already waiting in a connected socket, read without waiting (and without the
/// runtime's idea of whether the socket is readable, which may lag behind the kernel's).
pub(crate) fn recv_now(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is valid for writes of its length for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock => Ok(None),
        _ => Err(e),
    }
}
