//! Real packet loss on a real network path: each test builds its own pair of network
//! namespaces joined by a veth pair, drops a share of the UDP datagrams in both directions with
//! nftables (`numgen random mod 100 < N drop` on input in each namespace; this kernel has no
//! `netem`), runs `ringtftpd` in one namespace and real clients (curl, atftp, tftp-hpa) or
//! `loadgen` in the other, and checks the file (1 MiB, or 128 KiB where each backend runs the
//! test) arrives byte-exact. Completion times and the server's retransmissions are printed (see
//! them with `--nocapture`) and the retransmissions are bounded; time limits only catch hangs.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables): without them the tests print why and pass,
//! unless `RINGTFTP_REQUIRE_CLIENTS` is set (as in CI), where they fail.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::{self, run, Backend, Finished, TempDir};

/// The server's address inside its namespace (TEST-NET-1: documentation only, never routed).
pub(crate) const SERVER_IP: &str = "192.0.2.1";
pub(crate) const CLIENT_IP: &str = "192.0.2.2";
/// The namespaces are fresh, so any port is free in them.
pub(crate) const PORT: u16 = 6969;
/// Bound on every `ip`/`nft` command.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A fetch still running after this long is a hang (the clients give up by themselves well
/// before: tftp-hpa after 25 s of silence, atftp 30 s).
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
const BIG: usize = 1024 * 1024;
pub(crate) const BIG_NAME: &str = "big";
const SMALL: usize = 128 * 1024;
const SMALL_NAME: &str = "small";

/// Whether this machine can run the tests: root, `ip` and `nft`. Prints why not (or panics in
/// CI) otherwise.
pub(crate) fn supported() -> bool {
    let mut missing = Vec::new();
    if !util::is_root() {
        missing.push("root".to_owned());
    }
    for program in ["ip", "nft"] {
        if find_program(program).is_none() {
            missing.push(format!("`{program}`"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("network fault tests need {}", missing.join(", "));
    util::skip::missing(&why, "run as root with apt-get install iproute2 nftables");
    false
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs a setup command and panics with its output if it fails.
pub(crate) fn must(cmd: Command) -> Finished {
    let done = run(cmd, SETUP_TIMEOUT);
    assert!(done.success(), "setup command failed:\n{}", done.describe());
    done
}

pub(crate) fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Two namespaces, `rt<pid>x<n>s` (server) and `rt<pid>x<n>c` (client), joined by a veth pair;
/// both are deleted on drop (with their veths and nftables tables), even on a panic.
pub(crate) struct Path2 {
    pub(crate) server: String,
    pub(crate) client: String,
    scratch: TempDir,
}

impl Path2 {
    pub(crate) fn new() -> Path2 {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("rt{}x{n}", std::process::id());
        let path = Path2 {
            server: format!("{base}s"),
            client: format!("{base}c"),
            scratch: TempDir::new("faults-nft"),
        };
        // Left over from an earlier process with the same pid: remove first.
        path.delete();
        let (s, c) = (path.server.as_str(), path.client.as_str());
        must(ip(&["netns", "add", s]));
        must(ip(&["netns", "add", c]));
        must(ip(&[
            "-n", s, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0", "netns", c,
        ]));
        for (ns, addr) in [(s, SERVER_IP), (c, CLIENT_IP)] {
            must(ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "veth0",
            ]));
            must(ip(&["-n", ns, "link", "set", "lo", "up"]));
            // The daemon sends windows with UDP GSO, and a veth passes the whole batch as one
            // packet through nftables: one random draw would drop all 16 datagrams or none.
            // One segment per packet makes the kernel split batches before the veth, so the
            // loss applies to each datagram, as on a real wire.
            must(ip(&["-n", ns, "link", "set", "veth0", "gso_max_segs", "1"]));
            must(ip(&["-n", ns, "link", "set", "veth0", "up"]));
        }
        path
    }

    /// Drops `percent` % of the UDP datagrams arriving in each namespace (so each direction
    /// loses that share), replacing any earlier rule.
    fn set_loss(&self, percent: u32) {
        let rules = format!(
            "table inet ringtftp_loss\n\
             delete table inet ringtftp_loss\n\
             table inet ringtftp_loss {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority 0; policy accept;\n\
             \t\tmeta l4proto udp numgen random mod 100 < {percent} drop\n\
             \t}}\n\
             }}\n"
        );
        let file = self.scratch.join(format!("loss-{percent}.nft"));
        fs::write(&file, rules).expect("write nft rules");
        for ns in [&self.server, &self.client] {
            let mut cmd = ip(&["netns", "exec", ns, "nft", "-f"]);
            cmd.arg(&file);
            must(cmd);
        }
    }

    /// `ip netns exec CLIENT program args...`.
    pub(crate) fn in_client(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = ip(&["netns", "exec", &self.client]);
        cmd.arg(program);
        cmd
    }

    fn delete(&self) {
        for ns in [&self.server, &self.client] {
            let _ = run(ip(&["netns", "del", ns]), SETUP_TIMEOUT);
        }
    }
}

impl Drop for Path2 {
    fn drop(&mut self) {
        self.delete();
    }
}

/// `ringtftpd` inside the server namespace; killed by PID on drop (before the namespaces go).
pub(crate) struct Server {
    child: Child,
    log_path: PathBuf,
    _logs: TempDir,
}

impl Server {
    /// Starts the daemon serving `dir` and waits until curl in the client namespace fetches
    /// the probe file from it (before any loss is set).
    pub(crate) fn start(path: &Path2, dir: &Path, extra: &[&str]) -> Server {
        Server::start_on(path, SERVER_IP, dir, extra)
    }

    /// [`Server::start`] listening on `bind` (which must take the IPv4 probe: `SERVER_IP` or
    /// `::`).
    fn start_on(path: &Path2, bind: &str, dir: &Path, extra: &[&str]) -> Server {
        fs::write(dir.join("probe"), b"ready\n").expect("write probe file");
        let logs = TempDir::new("faults-server-log");
        let log_path = logs.join("server.log");
        let log = fs::File::create(&log_path).expect("create server log");
        let child = ip(&["netns", "exec", &path.server])
            .arg(env!("CARGO_BIN_EXE_ringtftpd"))
            .arg(PORT.to_string())
            .args(["--bind", bind, "--directory"])
            .arg(dir)
            .args(["--log-level", "info"])
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone server log"))
            .stderr(log)
            .spawn()
            .expect("start ringtftpd in its namespace");
        let mut server = Server {
            child,
            log_path,
            _logs: logs,
        };
        let start = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().expect("wait for ringtftpd") {
                panic!("ringtftpd exited ({status}); its log:\n{}", server.log());
            }
            let mut probe = path.in_client("curl");
            probe.args(["-sS", "--max-time", "1"]).arg(url("probe"));
            let done = run(probe, Duration::from_secs(5));
            if done.success() && done.stdout == "ready\n" {
                return server;
            }
            assert!(
                start.elapsed() < SETUP_TIMEOUT,
                "ringtftpd did not answer from the client namespace; last probe:\n{}\nlog:\n{}",
                done.describe(),
                server.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// The `ms=` of every "transfer complete" line for file `name`, in order.
    fn durations_ms(&self, name: &str) -> Vec<u64> {
        let file = format!("file={name} ");
        self.log()
            .lines()
            .filter(|l| l.contains("transfer complete") && l.contains(&file))
            .filter_map(|l| field(l, "ms"))
            .collect()
    }

    /// The `retransmits=` of every finished transfer of file `name`, in order.
    fn completed_named(&self, name: &str) -> Vec<u64> {
        let file = format!("file={name} ");
        self.log()
            .lines()
            // A client that got everything may leave before its last ACK arrives (lost on the
            // path): the server then ends the transfer on the closed port, or on silence.
            .filter(|l| {
                l.contains(&file)
                    && ["transfer complete", "port is closed", "timed out"]
                        .iter()
                        .any(|end| l.contains(end))
            })
            .map(|l| field(l, "retransmits").expect("retransmits= in the complete line"))
            .collect()
    }

    /// Waits for the `n`-th finished transfer of file `name` (its line is written after the
    /// last ACK arrives, or when the server gives up on a client that left) and returns its
    /// retransmits.
    fn wait_complete(&self, name: &str, n: usize) -> u64 {
        let start = Instant::now();
        loop {
            let done = self.completed_named(name);
            if done.len() >= n {
                return done[n - 1];
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no complete line #{n} in the server log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // `ip netns exec` execs the daemon, so this PID is ringtftpd's own.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- log of ringtftpd ---\n{}", self.log());
        }
    }
}

/// The unsigned integer value of `name=` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&key))
        .and_then(|v| v.trim_matches('"').parse().ok())
}

fn url(file: &str) -> String {
    format!("tftp://{SERVER_IP}:{PORT}/{file}")
}

/// The served directory with the 1 MiB file; returns it and the file's SHA-256.
pub(crate) fn served() -> (TempDir, String) {
    let dir = TempDir::new("faults-root");
    let bytes = util::pattern(BIG, 0xFA17);
    util::write_file(dir.path(), BIG_NAME, &bytes);
    (dir, util::sha256(&bytes))
}

/// [`served`] with the 128 KiB file as well; returns its SHA-256.
fn served_small(dir: &TempDir) -> String {
    let small = util::pattern(SMALL, 0x20);
    util::write_file(dir.path(), SMALL_NAME, &small);
    util::sha256(&small)
}

/// A client's fetch: the command (run in the client namespace) and the server's packet count
/// for the expected-loss bound (DATA plus ACKs, roughly).
struct Fetch {
    name: &'static str,
    cmd: Command,
    packets: u64,
    /// Retransmissions allowed per expected loss: 10 in lock-step (one is the norm); 16, the
    /// window, in RFC 7440 windows, where the server goes back to the first block not
    /// acknowledged and resends the rest of the window (5 to 8 per loss measured).
    per_loss: u64,
}

/// The fetches of file `name`, `len` bytes long, into `out`.
fn fetches(path: &Path2, name: &str, len: usize, out: &Path) -> Vec<Fetch> {
    let lockstep = (len as u64 / 512 + 1) * 2;
    let blocks_1468 = (len as u64 / 1468 + 1) * 2;
    let mut curl = path.in_client("curl");
    // curl's own options carry `timeout 6`, which fixes the server's retransmission timeout at
    // 6 s per loss (RFC 2349): a plain RRQ lets the server adapt its timeout to the path.
    curl.args(["-sS", "--tftp-no-options", "-o"])
        .arg(out)
        .arg(url(name));
    let mut atftp = path.in_client("atftp");
    atftp
        .args(["--get", "-r", name, "-l"])
        .arg(out)
        // Lock-step: atftp's own windowed mode sometimes gives up under loss ("unknown
        // error"); windows under loss are covered by loadgen at 20 %.
        .args(["--option", "blksize 1468"])
        .arg(SERVER_IP)
        .arg(PORT.to_string());
    let mut hpa = path.in_client("tftp");
    hpa.args(["-4", "-v", "-m", "octet", SERVER_IP])
        .arg(PORT.to_string())
        .args(["-c", "get", name])
        .arg(out);
    vec![
        Fetch {
            name: "curl no options (512 lock-step)",
            cmd: curl,
            packets: lockstep,
            per_loss: 10,
        },
        Fetch {
            name: "atftp blksize 1468 lock-step",
            cmd: atftp,
            packets: blocks_1468,
            per_loss: 10,
        },
        Fetch {
            name: "tftp-hpa 512 lock-step",
            cmd: hpa,
            packets: lockstep,
            per_loss: 10,
        },
    ]
}

/// Whether a finished client reported a failure (see tests/util/clients.rs for how each does).
pub(crate) fn client_failed(done: &Finished) -> bool {
    !done.success()
        || done
            .stdout
            .lines()
            .any(|l| l.starts_with("Error code ") || l.starts_with("Transfer timed out"))
}

/// Fetches the 1 MiB file (or with `small`, the 128 KiB one) with curl, atftp and tftp-hpa
/// at `percent` % loss each way, from a daemon on `backend` (or the default, `auto`).
fn real_clients_at(percent: u32, small: bool, backend: Option<Backend>) {
    if !supported() {
        return;
    }
    let _alone = util::exclusive();
    for program in ["curl", "atftp", "tftp"] {
        if util::client(program).is_none() {
            return;
        }
    }
    let path = Path2::new();
    let (dir, big_sha) = served();
    let (name, len, sha) = if small {
        (SMALL_NAME, SMALL, served_small(&dir))
    } else {
        (BIG_NAME, BIG, big_sha)
    };
    let args = backend.map_or(Vec::new(), |b| b.args().to_vec());
    let server = Server::start(&path, dir.path(), &args);
    if let Some(backend) = backend {
        backend.assert_serving(&server.log());
    }
    let on = backend.map_or("the default backend".to_owned(), |b| b.to_string());
    path.set_loss(percent);
    let out_dir = TempDir::new("faults-out");
    let out = out_dir.join(name);
    for (i, fetch) in fetches(&path, name, len, &out).into_iter().enumerate() {
        let _ = fs::remove_file(&out);
        let mut done = run(fetch.cmd, FETCH_TIMEOUT);
        let atftp_gave_up = |done: &Finished| {
            done.stderr.contains("unexpected OACK") || done.stderr.contains("unknown error")
        };
        let mut tries = 0;
        while fetch.name.starts_with("atftp") && atftp_gave_up(&done) && tries < 2 {
            tries += 1;
            // atftp aborts on a second OACK, and a server must send one when the client's ACK
            // of the first is lost (without it the server cannot know the options took): at
            // 5 % loss, one atftp transfer in twenty. That is atftp's limit, not the server's
            // (its log shows the OACK sent again after the timeout), so the fetch is tried
            // again, up to twice (two failures in a row were seen once in a few hundred runs).
            // atftp 0.8 also gives up with "unknown error" after a timeout now and
            // then at 5 % loss (seen once in a few hundred fetches, on tokio-uring; not yet
            // explained): the same retries, and its stderr printed.
            println!("atftp gave up ({}); trying again", done.stderr.trim());
            let _ = fs::remove_file(&out);
            let again = fetches(&path, name, len, &out).swap_remove(i);
            done = run(again.cmd, FETCH_TIMEOUT);
        }
        assert!(
            done.status.is_some(),
            "{} hung at {percent} % loss on {on}:\n{}",
            fetch.name,
            done.describe()
        );
        assert!(
            !client_failed(&done),
            "{} failed at {percent} % loss on {on}:\n{}",
            fetch.name,
            done.describe()
        );
        assert_eq!(
            util::sha256_file(&out),
            sha,
            "{} at {percent} % loss on {on}: wrong bytes",
            fetch.name
        );
        let retransmits = server.wait_complete(name, i + 1);
        let expected_losses = fetch.packets * u64::from(percent) / 100;
        println!(
            "loss {percent:>2} %: {:<34} {name} on {on}: {:>6.2} s, server retransmits \
             {retransmits} (~{expected_losses} packets expected lost)",
            fetch.name,
            done.elapsed.as_secs_f64()
        );
        assert!(
            retransmits < fetch.per_loss * expected_losses + 50,
            "{} at {percent} % loss on {on}: {retransmits} retransmits for ~{expected_losses} \
             losses",
            fetch.name
        );
    }
}

#[test]
fn real_clients_byte_exact_at_1_percent_loss() {
    real_clients_at(1, false, None);
}

#[test]
fn real_clients_byte_exact_at_5_percent_loss() {
    real_clients_at(5, false, None);
}

// Recovering from loss is where the executors differ most (timers, receives re-armed after a
// retransmission, windows sent as one GSO send), so each runs it: real clients at 5 % and
// loadgen's windows at 10 %, on the 128 KiB file to keep each run to seconds. (At 20 % a
// transfer takes from 1 s to a minute: the default backend's run below is enough of that.)
backends!(
    real_clients_byte_exact_at_5_percent_loss_128_kib,
    loadgen_windows_byte_exact_at_10_percent_loss,
);

fn real_clients_byte_exact_at_5_percent_loss_128_kib(backend: Backend) {
    real_clients_at(5, true, Some(backend));
}

fn loadgen_windows_byte_exact_at_10_percent_loss(backend: Backend) {
    loadgen_at(10, Some(backend));
}

/// At 20 % loss each way, 2 concurrent transfers of a 128 KiB file by loadgen (windowsize 4,
/// blksize 1468, 20 retries at 1 s): all byte-exact, none failed. (A 1 MiB file at this loss
/// takes from seconds to minutes: too long for a test run.)
#[test]
fn loadgen_byte_exact_at_20_percent_loss() {
    loadgen_at(20, None);
}

/// 2 concurrent windowed transfers of the 128 KiB file by loadgen at `percent` % loss each
/// way, from a daemon on `backend` (or the default, `auto`).
fn loadgen_at(percent: u32, backend: Option<Backend>) {
    if !supported() {
        return;
    }
    let Some(loadgen) = util::loadgen() else {
        return;
    };
    let _alone = util::exclusive();
    let path = Path2::new();
    let (dir, _) = served();
    let sha = served_small(&dir);
    let mut args = backend.map_or(Vec::new(), |b| b.args().to_vec());
    args.extend(["--retries", "20"]);
    let server = Server::start(&path, dir.path(), &args);
    if let Some(backend) = backend {
        backend.assert_serving(&server.log());
    }
    let on = backend.map_or("the default backend".to_owned(), |b| b.to_string());
    path.set_loss(percent);
    let mut cmd = path.in_client(&loadgen);
    cmd.arg(format!("{SERVER_IP}:{PORT}"))
        .arg(SMALL_NAME)
        .args(["--clients", "2", "--transfers", "2"])
        .args(["--blksize", "1468", "--windowsize", "4"])
        .args(["--sha256", &sha, "--retries", "20", "--timeout", "1s"])
        .args(["--json", "-"]);
    // Each transfer takes seconds at this loss; only a hang goes past this.
    let done = run(cmd, Duration::from_secs(170));
    assert!(done.status.is_some(), "loadgen hung:\n{}", done.describe());
    let json = &done.stdout;
    let number = |key: &str| -> Option<u64> {
        let at = json.find(&format!("\"{key}\":"))?;
        let rest = json[at + key.len() + 3..].trim_start();
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    let (ok, failed) = (number("ok"), number("failed"));
    assert!(
        done.success() && ok == Some(2) && failed == Some(0),
        "loadgen at {percent} % loss on {on}: ok {ok:?}, failed {failed:?}\n{}",
        done.describe()
    );
    thread::sleep(Duration::from_millis(500));
    // A transfer whose final ACK was lost ends as "port is closed" once loadgen has left with
    // the whole file; those count as finished too.
    let retransmits = server.completed_named(SMALL_NAME);
    let total: u64 = retransmits.iter().sum();
    let expected_losses = 2 * (SMALL as u64 / 1468 + 1) * 2 * u64::from(percent) / 100;
    println!(
        "loss {percent} %: loadgen 2 transfers of 128 KiB at once (1468/4) on {on} {:>6.2} s, \
         server retransmits {retransmits:?} = {total} (~{expected_losses} packets expected \
         lost), loadgen retransmits {:?}, server ms per transfer {:?}",
        done.elapsed.as_secs_f64(),
        number("retransmits"),
        server.durations_ms(SMALL_NAME)
    );
    assert!(
        total < 4 * expected_losses + 50,
        "{total} retransmits on {on} for ~{expected_losses} losses"
    );
}

/// A request to the server's IPv6 link-local address (as on a provisioning VLAN with no router)
/// is served: the transfer socket is bound to that address on the request's interface.
#[test]
fn ipv6_link_local_requests_are_served() {
    if !supported() {
        return;
    }
    let _alone = util::exclusive();
    let path = Path2::new();
    for (ns, addr) in [(&path.server, "fe80::1"), (&path.client, "fe80::2")] {
        // nodad: usable at once, without duplicate address detection's second of waiting.
        must(ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            "veth0",
            "nodad",
        ]));
    }
    let (dir, sha) = served();
    let server = Server::start_on(&path, "::", dir.path(), &[]);
    let out = dir.join("fetched");
    let mut curl = path.in_client("curl");
    curl.args(["-sS", "-g", "--max-time", "20", "-o"])
        .arg(&out)
        .arg(format!("tftp://[fe80::1%25veth0]:{PORT}/{BIG_NAME}"));
    let done = run(curl, Duration::from_secs(30));
    assert!(
        done.success() && out.is_file(),
        "curl over IPv6 link-local failed:\n{}\nserver log:\n{}",
        done.describe(),
        server.log()
    );
    assert_eq!(
        util::sha256_file(&out),
        sha,
        "link-local download corrupted"
    );
}

/// Windows under real loss with a real windowed client: atftp fetches 1 MiB in windows of 4,
/// 8 and 16 at 1 % loss each way (nftables), byte-exact, and the DATA the server sent stays
/// within 25 % of the unavoidable cost (each loss costs about (windowsize + 1) / 2 blocks:
/// about 1.03x, 1.06x and 1.11x the file). atftp gives up now and then under loss on its own
/// ("unknown error", see `real_clients_at`): such a fetch is tried again, up to twice.
#[test]
fn atftp_windows_at_1_percent_loss_cost_what_they_must() {
    if !supported() || util::client("atftp").is_none() {
        return;
    }
    let _alone = util::exclusive();
    let path = Path2::new();
    let (dir, sha) = served();
    let server = Server::start(&path, dir.path(), &[]);
    path.set_loss(1);
    let out_dir = TempDir::new("faults-atftp-windows");
    let out = out_dir.join(BIG_NAME);
    let blocks = (BIG / 1468 + 1) as f64;
    let mut lines = Vec::new();
    let mut ended = 0;
    // The log lines of the big file's ended transfers, once there are `n` of them (a transfer
    // atftp gave up on ends too, as the client's ERROR or a timeout).
    let ended_lines = |n: usize| -> Vec<String> {
        let start = Instant::now();
        loop {
            let found: Vec<String> = server
                .log()
                .lines()
                .filter(|l| l.contains(&format!("file={BIG_NAME} ")) && l.contains("outcome="))
                .map(str::to_owned)
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{n} transfers of {BIG_NAME} never ended:\n{}",
                server.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    for (windowsize, unavoidable) in [("4", 1.03), ("8", 1.06), ("16", 1.11)] {
        let fetch = || {
            let _ = fs::remove_file(&out);
            let mut atftp = path.in_client("atftp");
            atftp
                .args(["--get", "-r", BIG_NAME, "-l"])
                .arg(&out)
                .args(["--option", "blksize 1468", "--option"])
                .arg(format!("windowsize {windowsize}"))
                .arg(SERVER_IP)
                .arg(PORT.to_string());
            run(atftp, FETCH_TIMEOUT)
        };
        let mut done = fetch();
        ended += 1;
        let mut tries = 0;
        while client_failed(&done) && tries < 2 {
            tries += 1;
            println!("atftp gave up ({}); trying again", done.stderr.trim());
            ended_lines(ended);
            done = fetch();
            ended += 1;
        }
        assert!(
            !client_failed(&done),
            "window {windowsize}: {}",
            done.describe()
        );
        assert_eq!(
            util::sha256_file(&out),
            sha,
            "window {windowsize}: wrong bytes"
        );
        let line = ended_lines(ended).swap_remove(ended - 1);
        let sent = field(&line, "sent").expect("sent=") as f64;
        // The OACK aside.
        let ratio = (sent - 1.0) / blocks;
        lines.push(format!(
            "atftp window {windowsize} at 1 % loss: {ratio:.3}x the file"
        ));
        assert!(ratio <= unavoidable * 1.25, "{}\n{line}", lines.join("\n"));
    }
    println!("{}", lines.join("\n"));
}
