//! The daemon under test, `ringtftpd`, on a free loopback port.

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::{Backend, TempDir};

/// How long a server may take to answer its first probe.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a probe's answer before sending the next one.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// How long `stop` waits after SIGTERM before it gives up (and SIGKILLs); more than the
/// daemon's default `--grace` of 10 s for running transfers.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Fresh ports to try when the one we picked was taken before the server bound it.
const PORT_ATTEMPTS: usize = 5;
/// The file the readiness probe asks for; any reply (normally ERROR 1) means "listening".
pub const PROBE_FILE: &str = "__ringtftp_probe__";

/// A running TFTP server: `ringtftpd` (see [`Daemon::start`]) or any other server program
/// (see [`Daemon::spawn`]). Killed by PID when dropped; its log is printed if the test panicked.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    addr: SocketAddr,
    log_path: PathBuf,
    _logs: TempDir,
}

impl Daemon {
    /// Starts `ringtftpd PORT --bind 127.0.0.1 --directory DIR EXTRA_ARGS...` on a free port
    /// and returns once it answers a probe RRQ.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Daemon {
        Daemon::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST), dir, extra_args)
    }

    /// [`Daemon::start`] with `--backend BACKEND` before `extra_args`; panics unless the
    /// start-up line names that backend.
    pub fn start_backend(backend: Backend, dir: &Path, extra_args: &[&str]) -> Daemon {
        let daemon = Daemon::start(dir, &backend.with(extra_args));
        backend.assert_serving(&daemon.log());
        daemon
    }

    /// [`Daemon::start`] bound to `ip` (e.g. `::1`).
    pub fn start_on(ip: IpAddr, dir: &Path, extra_args: &[&str]) -> Daemon {
        Daemon::start_with_env(ip, dir, extra_args, &[])
    }

    /// [`Daemon::start_on`] with extra environment variables (e.g. `RINGTFTP_BACKEND=epoll`).
    pub fn start_with_env(
        ip: IpAddr,
        dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::spawn(ip, |port| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringtftpd"));
            cmd.arg(port.to_string())
                .arg("--bind")
                .arg(ip.to_string())
                .arg("--directory")
                .arg(dir)
                .args(extra_args)
                .env("NO_COLOR", "1")
                .env("RUST_BACKTRACE", "1")
                .envs(env.iter().copied());
            cmd
        })
    }

    /// Starts the server `command(port)` builds, listening on `ip:port` for a free `port`, and
    /// waits until it answers a probe RRQ. Its stdout and stderr go to [`Daemon::log`].
    ///
    /// If it exits complaining that the address is in use (another process took the port
    /// between our check and its bind), it is retried on another port, up to 5 times. Any other
    /// early exit, or no answer within 10 s, panics with its log.
    pub fn spawn(ip: IpAddr, mut command: impl FnMut(u16) -> Command) -> Daemon {
        for _ in 0..PORT_ATTEMPTS {
            let port = free_udp_port(ip);
            let logs = TempDir::new("server-log");
            let log_path = logs.join("server.log");
            let log = fs::File::create(&log_path).expect("create server log");
            let mut cmd = command(port);
            let program = cmd.get_program().to_string_lossy().into_owned();
            cmd.stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone server log"))
                .stderr(log);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
            let mut daemon = Daemon {
                child: Some(child),
                addr: SocketAddr::new(ip, port),
                log_path,
                _logs: logs,
            };
            match daemon.wait_ready() {
                Ok(()) => return daemon,
                Err(Exited::PortTaken) => {
                    eprintln!("{program}: port {port} was taken, retrying on another one");
                    continue;
                }
                Err(Exited::Status(status)) => panic!(
                    "{program} exited before answering ({status}); its log:\n{}",
                    daemon.log()
                ),
                Err(Exited::Silent) => panic!(
                    "{program} did not answer a probe on {} within {READY_TIMEOUT:?}; its log:\n{}",
                    daemon.addr,
                    daemon.log()
                ),
            }
        }
        panic!("no free port after {PORT_ATTEMPTS} attempts")
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon is running").id()
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// Sends SIGTERM and waits for the exit; panics (after SIGKILL) if that takes over 30 s.
    pub fn stop(mut self) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            return status;
        }
        self.terminate();
        self.wait_exit()
    }

    /// Sends SIGTERM and returns at once; see [`Daemon::wait_exit`]. The log stays readable.
    pub fn terminate(&self) {
        let pid = self.pid();
        // `kill` as a shell builtin: procps (/bin/kill) is not on a minimal Debian, sh always is.
        let sent = Command::new("sh")
            .args(["-c", r#"kill -TERM "$1""#, "sh", &pid.to_string()])
            .status()
            .expect("run sh -c kill");
        assert!(sent.success(), "kill -TERM {pid} failed: {sent}");
    }

    /// The exit status if the server has exited, `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("daemon was started");
        child.try_wait().expect("wait for daemon")
    }

    /// Waits for the server to exit (after [`Daemon::terminate`]); panics (after SIGKILL) if
    /// that takes over 30 s. Unlike [`Daemon::stop`] it keeps the log readable.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            if start.elapsed() >= STOP_TIMEOUT {
                let child = self.child.as_mut().expect("daemon was started");
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "server did not exit within {STOP_TIMEOUT:?} of SIGTERM; its log:\n{}",
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout` for a line of the log to contain every one of `needles`; returns
    /// that line. (A transfer's line is written after the client's last ACK arrives, so a
    /// client may exit a moment before it.)
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
            {
                return Some(line.to_owned());
            }
            if start.elapsed() >= timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Probes until the server answers, it exits, or the deadline passes.
    fn wait_ready(&mut self) -> Result<(), Exited> {
        let bind = SocketAddr::new(self.addr.ip(), 0);
        let probe = UdpSocket::bind(bind).expect("bind probe socket");
        probe
            .set_read_timeout(Some(PROBE_INTERVAL))
            .expect("set probe timeout");
        let rrq = super::raw::rrq(PROBE_FILE, ringtftp::packet::Mode::Octet, &[]);
        let start = Instant::now();
        let mut buf = [0; 1024];
        while start.elapsed() < READY_TIMEOUT {
            let child = self.child.as_mut().expect("daemon is running");
            if let Some(status) = child.try_wait().expect("wait for server") {
                self.child = None;
                return Err(if port_taken(&self.log()) {
                    Exited::PortTaken
                } else {
                    Exited::Status(status)
                });
            }
            // Errors (nothing bound yet, ICMP unreachable) just mean "not yet".
            let _ = probe.send_to(&rrq, self.addr);
            match probe.recv_from(&mut buf) {
                Ok(_) => return Ok(()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => thread::sleep(PROBE_INTERVAL),
            }
        }
        Err(Exited::Silent)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- log of the server on {} ---\n{}", self.addr, self.log());
        }
    }
}

enum Exited {
    PortTaken,
    Status(ExitStatus),
    Silent,
}

fn port_taken(log: &str) -> bool {
    let log = log.to_ascii_lowercase();
    log.contains("address already in use")
        || log.contains("port is in use")
        || log.contains("addrinuse")
        || log.contains("os error 98")
}

/// A UDP port on `ip` that nothing is bound to right now and that no earlier call in this
/// process returned.
///
/// Remembering handed-out ports matters because the daemon binds with `SO_REUSEPORT`: two test
/// daemons given the same port would both bind it and silently share its traffic.
///
/// Ports come from below the kernel's ephemeral range where there is room, so the thousands of
/// transfer and client sockets other tests open at the same time cannot take one between this
/// check and the daemon's bind.
pub fn free_udp_port(ip: IpAddr) -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOW: u16 = 10_000;
    if ephemeral_low > LOW + 1000 {
        // Start somewhere different in each test process, then walk up.
        let span = ephemeral_low - LOW;
        let start = (std::process::id() % u32::from(span)) as u16;
        for i in 0..span {
            let port = LOW + (start + i) % span;
            if handed_out.contains(&port) {
                continue;
            }
            if UdpSocket::bind(SocketAddr::new(ip, port)).is_ok() {
                handed_out.insert(port);
                return port;
            }
        }
    }
    loop {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("cannot bind a UDP socket on {ip}: {e}"));
        let port = socket.local_addr().expect("local_addr").port();
        if handed_out.insert(port) {
            return port;
        }
    }
}
