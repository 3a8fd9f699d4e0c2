//! A client's MAC address from the kernel's neighbour table (ARP for IPv4, NDP for IPv6), for
//! the per-client directories of [`DirectoryResolver`](super::DirectoryResolver).
//!
//! The table is read over rtnetlink (`RTM_GETNEIGH`, rtnetlink(7)) rather than `/proc/net/arp`:
//! it answers for IPv6 as well, needs no `/proc`, and is a typed binary format instead of
//! columns of text. The kernel cannot filter a neighbour dump by address, so each lookup reads
//! the dump of one address family and stops at the first entry for the client.
//!
//! Only a client on a directly attached network has an entry: the kernel learns it from the
//! client's ARP request for us (an RRQ cannot reach us without one) or neighbour solicitation.
//! A client behind a router has none (the router's address is what the table holds), nor has a
//! loopback client, an entry that failed or is still incomplete, or a link without 6-byte
//! (Ethernet) addresses. Then the lookup says `None`, and the resolver goes on to the address
//! directory. Any failure of the lookup itself (netlink refused by a seccomp profile, a timeout)
//! is `None` too: per-client files are a refinement, never a reason to refuse a request.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The MAC address the neighbour table holds for `ip`, if it holds a usable one.
pub(crate) fn mac(ip: IpAddr) -> Option<[u8; 6]> {
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    lookup(ip).ok().flatten()
}

/// `01-aa-bb-cc-dd-ee-ff`: pxelinux's spelling of an Ethernet (ARP type 1) address, as in
/// `pxelinux.cfg/01-aa-bb-cc-dd-ee-ff`.
pub(crate) fn mac_dir(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("01-{a:02x}-{b:02x}-{c:02x}-{d:02x}-{e:02x}-{f:02x}")
}

fn lookup(ip: IpAddr) -> io::Result<Option<[u8; 6]>> {
    let (family, dst) = match ip {
        IpAddr::V4(v4) => (libc::AF_INET as u8, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets().to_vec()),
    };
    // SAFETY: socket(2) with constant arguments; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // A netlink dump never blocks for long, but a request must not hang on it if it does.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: RECV_TIMEOUT_US,
    };
    // SAFETY: SO_RCVTIMEO takes a timeval, passed with its size; the descriptor is live.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    let request = dump_request(family);
    // SAFETY: `request` is valid for its length; an unconnected netlink socket sends to the
    // kernel.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        match scan(&buf[..n as usize], family, &dst) {
            Scan::Found(mac) => return Ok(Some(mac)),
            Scan::Done => return Ok(None),
            Scan::More => {}
        }
    }
}

/// An `RTM_GETNEIGH` dump request for one address family: a netlink header and an `ndmsg`.
fn dump_request(family: u8) -> [u8; HEADER + NDMSG] {
    let mut req = [0u8; HEADER + NDMSG];
    req[0..4].copy_from_slice(&((HEADER + NDMSG) as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&libc::RTM_GETNEIGH.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[HEADER] = family;
    req
}

#[derive(Debug, PartialEq, Eq)]
enum Scan {
    Found([u8; 6]),
    /// The dump ended (or failed) without an entry for the address.
    Done,
    /// Read the next datagram of the dump.
    More,
}

/// Looks through one datagram of a neighbour dump for a usable entry for `dst`.
fn scan(mut buf: &[u8], family: u8, dst: &[u8]) -> Scan {
    while buf.len() >= HEADER {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let Some(message) = buf.get(HEADER..len) else {
            return Scan::Done; // truncated or malformed: give up, do not guess
        };
        match kind {
            NLMSG_DONE | NLMSG_ERROR => return Scan::Done,
            RTM_NEWNEIGH => {
                if let Some(mac) = entry(message, family, dst) {
                    return Scan::Found(mac);
                }
            }
            _ => {}
        }
        buf = buf.get(align(len)..).unwrap_or_default();
    }
    Scan::More
}

/// The MAC of one `RTM_NEWNEIGH` message (an `ndmsg` and its attributes) if it is for `dst`
/// and in a state that holds a valid address.
fn entry(message: &[u8], family: u8, dst: &[u8]) -> Option<[u8; 6]> {
    let ndmsg = message.get(..NDMSG)?;
    let state = u16::from_ne_bytes([ndmsg[8], ndmsg[9]]);
    if ndmsg[0] != family || state == 0 || state & (NUD_INCOMPLETE | NUD_FAILED) != 0 {
        return None;
    }
    let (mut address, mut lladdr) = (None, None);
    let mut attrs = &message[NDMSG..];
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        let data = attrs.get(4..len)?;
        match kind {
            NDA_DST => address = Some(data),
            NDA_LLADDR => lladdr = Some(data),
            _ => {}
        }
        attrs = attrs.get(align(len.max(4))..).unwrap_or_default();
    }
    if address? != dst {
        return None;
    }
    lladdr?.try_into().ok()
}

/// Netlink messages and attributes are 4-byte aligned (NLMSG_ALIGN, RTA_ALIGN).
fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// `struct nlmsghdr`: length, type, flags, sequence, port.
const HEADER: usize = 16;
/// `struct ndmsg`: family, two pads, ifindex, state, flags, type.
const NDMSG: usize = 12;
const NLM_F_REQUEST: u16 = 0x1;
/// NLM_F_ROOT | NLM_F_MATCH.
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWNEIGH: u16 = 28;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_INCOMPLETE: u16 = 0x01;
const NUD_FAILED: u16 = 0x20;
/// A neighbour dump arrives in datagrams of up to a page or so each; 32 KiB holds any.
const RECV_BUFFER: usize = 32 << 10;
const RECV_TIMEOUT_US: libc::suseconds_t = 200_000;

#[cfg(test)]
mod tests {
    use super::*;

    /// One RTM_NEWNEIGH message as the kernel builds it.
    fn message(family: u8, state: u16, dst: &[u8], lladdr: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0, 2, 0, 0, 0];
        body.extend_from_slice(&state.to_ne_bytes());
        body.extend_from_slice(&[0, 1]);
        for (kind, data) in [(NDA_DST, Some(dst)), (NDA_LLADDR, lladdr)] {
            let Some(data) = data else { continue };
            body.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(data);
            body.resize(align(body.len()), 0);
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&((HEADER + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&RTM_NEWNEIGH.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&body);
        msg
    }

    fn done() -> Vec<u8> {
        let mut msg = (20u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        msg.extend_from_slice(&[0; 14]);
        msg
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const REACHABLE: u16 = 0x02;
    const STALE: u16 = 0x04;

    #[test]
    fn finds_the_entry_for_the_address() {
        let v4 = libc::AF_INET as u8;
        let mut dump = message(v4, REACHABLE, &[192, 0, 2, 9], Some(&[1; 6]));
        dump.extend(message(v4, STALE, &[192, 0, 2, 7], Some(&MAC)));
        assert_eq!(scan(&dump, v4, &[192, 0, 2, 7]), Scan::Found(MAC));
        assert_eq!(scan(&dump, v4, &[192, 0, 2, 8]), Scan::More);
        dump.extend(done());
        assert_eq!(scan(&dump, v4, &[192, 0, 2, 8]), Scan::Done);
    }

    #[test]
    fn skips_unusable_entries() {
        let v4 = libc::AF_INET as u8;
        let dst = [192, 0, 2, 7];
        for (state, lladdr) in [
            (NUD_INCOMPLETE, Some(&MAC[..])),
            (NUD_FAILED, Some(&MAC[..])),
            (REACHABLE, None),
            (REACHABLE, Some(&[1, 2, 3, 4][..])),
        ] {
            let dump = message(v4, state, &dst, lladdr);
            assert_eq!(scan(&dump, v4, &dst), Scan::More, "{state:#x} {lladdr:?}");
        }
        let v6 = libc::AF_INET6 as u8;
        assert_eq!(
            scan(&message(v6, STALE, &dst, Some(&MAC)), v4, &dst),
            Scan::More
        );
        // Truncated: given up on, never read past.
        let dump = message(v4, STALE, &dst, Some(&MAC));
        assert_eq!(scan(&dump[..dump.len() - 3], v4, &dst), Scan::Done);
    }

    #[test]
    fn spells_macs_as_pxelinux_does() {
        assert_eq!(mac_dir(MAC), "01-52-54-00-12-34-56");
    }

    #[test]
    fn loopback_has_no_neighbour() {
        assert_eq!(mac("127.0.0.2".parse().unwrap()), None);
        assert_eq!(mac("::1".parse().unwrap()), None);
    }

    #[test]
    fn reads_the_kernel_table() {
        // Whatever the table holds, a lookup answers (no hang, no panic); an address from
        // TEST-NET-3 is on no link here.
        assert_eq!(lookup("203.0.113.254".parse().unwrap()).unwrap(), None);
    }
}
