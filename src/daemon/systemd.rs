//! systemd's two protocols, written out by hand (each is a few lines; see `sd_listen_fds(3)`
//! and `sd_notify(3)`): sockets passed by socket activation (`LISTEN_FDS`, `LISTEN_PID`), and
//! state changes (`READY=1`, `STOPPING=1`) sent as datagrams to `NOTIFY_SOCKET`, a path or an
//! abstract address written with a leading `@`.
//!
//! Both also work without systemd: `systemd-socket-activate --datagram -l 69 ringtftpd` passes
//! a socket the same way, and a test can listen on a `NOTIFY_SOCKET` of its own.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};

use anyhow::{bail, Context, Result};

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Takes the sockets systemd passed to this process, if any, and removes the variables that
/// passed them so no child inherits them. Call it before any thread starts (it changes the
/// environment) and before anything opens a descriptor (they are numbered from 3).
pub fn take_listen_fds() -> Result<Vec<OwnedFd>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    // Variables meant for another process (a parent that passed them on by mistake).
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let count: RawFd = fds
        .trim()
        .parse()
        .with_context(|| format!("LISTEN_FDS={fds} is not a number"))?;
    let mut taken = Vec::new();
    for fd in LISTEN_FDS_START..LISTEN_FDS_START.saturating_add(count) {
        // SAFETY: fcntl on a descriptor number; the result says whether it is open.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            bail!("LISTEN_FDS={count}, but descriptor {fd} is not open");
        }
        // SAFETY: systemd passed `fd` to this process to own; nothing else in it refers to it.
        taken.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(taken)
}

/// Where to tell systemd about state changes: `NOTIFY_SOCKET`, when set.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names, taking the variable out of the environment; `None`
    /// when it is unset (not started by systemd with `Type=notify`).
    pub fn from_env() -> Result<Option<Notifier>> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(None);
        };
        std::env::remove_var("NOTIFY_SOCKET");
        let path = path.into_encoded_bytes();
        let addr = match path.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)
            }
            None => {
                use std::os::unix::ffi::OsStrExt;
                SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(&path))
            }
        }
        .context("NOTIFY_SOCKET is not a usable socket address")?;
        let socket = UnixDatagram::unbound().context("cannot create the notification socket")?;
        Ok(Some(Notifier { socket, addr }))
    }

    /// Sends one notification, such as `READY=1\nSTATUS=serving`.
    pub fn notify(&self, state: &str) -> Result<()> {
        self.socket
            .send_to_addr(state.as_bytes(), &self.addr)
            .context("cannot notify systemd (NOTIFY_SOCKET)")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_a_path_and_an_abstract_address() {
        let dir = std::env::temp_dir().join(format!("ringtftp-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let by_path = UnixDatagram::bind(&path).unwrap();
        let name = format!("ringtftp-notify-{}", std::process::id());
        let abstract_addr = {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
        };
        let by_name = UnixDatagram::bind_addr(&abstract_addr).unwrap();
        for (var, listener) in [
            (path.to_string_lossy().into_owned(), &by_path),
            (format!("@{name}"), &by_name),
        ] {
            std::env::set_var("NOTIFY_SOCKET", &var);
            let notifier = Notifier::from_env().unwrap().expect("NOTIFY_SOCKET is set");
            assert!(std::env::var_os("NOTIFY_SOCKET").is_none());
            notifier.notify("READY=1").unwrap();
            let mut buf = [0u8; 64];
            let n = listener.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1", "through {var}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
