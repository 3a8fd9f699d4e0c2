//! Blocks that fit the path: the largest `blksize` (RFC 2348) whose DATA datagram fits the MTU
//! of the interface a request arrived on, so a client asking for 65464 on a 1500-byte link gets
//! 1468 (IPv4) rather than every block fragmented into IP fragments, which firmware drops and
//! whose single lost fragment costs the whole block. Loopback's 64 KiB MTU leaves large blocks
//! alone.
//!
//! MTUs are read with `SIOCGIFNAME` and `SIOCGIFMTU` and kept for a few seconds per interface:
//! a storm's requests all arrive on the same few interfaces, and an operator who changes an MTU
//! sees it used within [`FRESH`].

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::packet::DATA_HEADER_LEN;

/// How long an interface's MTU is trusted before it is read again.
const FRESH: Duration = Duration::from_secs(10);
/// IPv4 and UDP headers (no IP options).
const V4_HEADERS: u32 = 20 + 8;
/// IPv6 and UDP headers (no extension headers).
const V6_HEADERS: u32 = 40 + 8;

/// The largest block size whose DATA datagram fits an `mtu`-byte link, for IPv4 or IPv6.
pub(crate) fn blksize_for(mtu: u32, ip: IpAddr) -> u16 {
    let headers = match ip {
        IpAddr::V4(_) => V4_HEADERS,
        IpAddr::V6(_) => V6_HEADERS,
    };
    let fits = mtu.saturating_sub(headers + DATA_HEADER_LEN as u32);
    fits.min(u32::from(u16::MAX)) as u16
}

/// Interface MTUs by index, read on demand.
#[derive(Debug)]
pub(crate) struct Mtus {
    /// A socket for the interface ioctls; `None` where none could be opened.
    socket: Option<OwnedFd>,
    known: Mutex<HashMap<u32, (u32, Instant)>>,
}

impl Mtus {
    pub(crate) fn new() -> Self {
        // SAFETY: a plain socket(2) call; the result is checked and owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        let socket = (fd >= 0).then(|| {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        });
        Self {
            socket,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The MTU of interface `index`, if the kernel says.
    pub(crate) fn of(&self, index: u32) -> Option<u32> {
        if index == 0 {
            return None;
        }
        let now = Instant::now();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(mtu, at)) = known.get(&index) {
            if now.duration_since(at) < FRESH {
                return Some(mtu);
            }
        }
        let mtu = self.read(index).ok()?;
        if known.len() > 4096 {
            known.clear();
        }
        known.insert(index, (mtu, now));
        Some(mtu)
    }

    fn read(&self, index: u32) -> io::Result<u32> {
        let fd = self
            .socket
            .as_ref()
            .ok_or_else(|| io::Error::other("no socket for interface ioctls"))?
            .as_raw_fd();
        // SAFETY: ifreq is a plain C struct; each ioctl reads and writes only it.
        unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            req.ifr_ifru.ifru_ifindex = index as libc::c_int;
            if libc::ioctl(fd, libc::SIOCGIFNAME, &mut req) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(fd, libc::SIOCGIFMTU, &mut req) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(req.ifr_ifru.ifru_mtu.max(0) as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn blocks_fit_the_link() {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(blksize_for(1500, v4), 1468);
        assert_eq!(blksize_for(1500, v6), 1448);
        assert_eq!(blksize_for(1400, v4), 1368);
        assert_eq!(blksize_for(9000, v4), 8968);
        assert_eq!(
            blksize_for(65536, v4),
            65504,
            "above what RFC 2348 allows: no cap"
        );
        assert_eq!(blksize_for(20, v4), 0);
    }

    #[test]
    fn loopback_mtu_is_read() {
        let mtus = Mtus::new();
        // Interface 1 is loopback on Linux.
        let mtu = mtus.of(1).expect("the loopback MTU");
        assert!(mtu >= 1280, "{mtu}");
        assert_eq!(mtus.of(0), None, "unknown interface");
    }
}
