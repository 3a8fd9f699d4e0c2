//! `storm_tasks`: a task-per-transfer TFTP read client for the lock-step storm benchmark, the
//! second client of `benches/storm/run.py` beside `storm_client.c`.
//!
//! What it is: a tokio current-thread runtime with one task per transfer. Each task binds its own
//! UDP socket, sends an RRQ (octet, `blksize 1468`, `tsize` with `--tsize`, never `windowsize`:
//! lock-step only) and then awaits its socket under a per-packet timeout: a timeout resends the
//! last packet, `--retries` timeouts in a row fail the transfer. The first valid reply's source
//! is the server's TID: OACK -> ACK 0; DATA 1 -> no options (blksize 512). Every DATA is ACKed;
//! a block already received is a duplicate, counted and re-ACKed (RFC 1350); packets from
//! another TID get ERROR 5; every byte received is compared with `--expect`. The last DATA's
//! ACK ends the transfer (no dallying). Written from RFC 1350, 2347, 2348 and 2349; it shares
//! no code with the ringtftp crate (it is built as one of its examples only to use the
//! dependencies already there: tokio, clap, libc).
//!
//! Why it exists: `storm_client.c` is one epoll loop with an ordered timer list, so its ACKs go
//! out as soon as each DATA is read, evenly. Many test rigs and simple clients are written like
//! this one instead: a task per transfer on an async runtime, each awaiting its own socket and
//! timer. Its delays are bursty (a task runs only when the runtime gets to it, timers fire on a
//! millisecond wheel), which is another load for a server to meet: a figure that holds with both
//! clients does not depend on how one client happens to pace its ACKs.
//!
//! ```text
//! cargo build --release --example storm_tasks
//! target/release/examples/storm_tasks --server 127.0.0.1:6969 --file storm.bin \
//!     --expect /srv/tftp/storm.bin --total 2000 --concurrency 500 [--blksize 1468] [--tsize] \
//!     [--timeout 1] [--retries 5] [--sources one|many] [--deadline 600] [--latencies FILE]
//! ```
//!
//! The arguments and the single JSON line on stdout are `storm_client.c`'s (same fields, so
//! `run.py` reads both): `t_start`/`t_end` on CLOCK_MONOTONIC, `dup_data` the duplicate DATA
//! received, and with `--latencies FILE` every completed transfer's latency (ms, RRQ sent to
//! last ACK sent), one a line. Exit status: 0 when every transfer completed, 1 otherwise, 2 on
//! bad arguments.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

#[derive(Parser)]
#[command(about = "A task-per-transfer lock-step TFTP read client for boot-storm benchmarks")]
struct Args {
    /// The server's request address, HOST:PORT (IPv4).
    #[arg(long)]
    server: String,
    /// The file to read.
    #[arg(long)]
    file: String,
    /// The file's expected content: every byte received is compared with it.
    #[arg(long)]
    expect: PathBuf,
    /// Transfers in all.
    #[arg(long)]
    total: u64,
    /// Transfers at once.
    #[arg(long)]
    concurrency: u64,
    /// The blksize to ask for (0: no option).
    #[arg(long, default_value_t = 1468)]
    blksize: usize,
    /// Also ask tsize (the OACK's value must be the file's size).
    #[arg(long)]
    tsize: bool,
    /// Per-packet timeout, seconds.
    #[arg(long, default_value_t = 1.0)]
    timeout: f64,
    /// Timeouts in a row (each resending the last packet) before a transfer fails.
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// One source address (127.0.0.1) or many (127.0.0.1-127.0.0.250 in turn).
    #[arg(long, value_enum, default_value_t = Sources::One)]
    sources: Sources,
    /// Stop after this many seconds; transfers still running fail as `deadline`.
    #[arg(long, default_value_t = 600.0)]
    deadline: f64,
    /// Also write every completed transfer's latency (ms) to FILE, one a line.
    #[arg(long, value_name = "FILE")]
    latencies: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Sources {
    One,
    Many,
}

/// What every transfer shares (leaked: it lives as long as the process).
struct Config {
    server: SocketAddr,
    rrq: Vec<u8>,
    /// The blksize asked for (0: none).
    blksize: usize,
    tsize: bool,
    timeout: Duration,
    retries: u32,
    many_sources: bool,
    expect: Vec<u8>,
}

/// Packet counters over all transfers, counted as packets arrive (so transfers cut off by the
/// deadline count too). One thread: the atomics are only there to make a `static` of them.
struct Counters {
    data_blocks: AtomicU64,
    dup_data: AtomicU64,
    dup_oack: AtomicU64,
    retransmits: AtomicU64,
    other_tid: AtomicU64,
    stray: AtomicU64,
}

static COUNT: Counters = Counters {
    data_blocks: AtomicU64::new(0),
    dup_data: AtomicU64::new(0),
    dup_oack: AtomicU64::new(0),
    retransmits: AtomicU64::new(0),
    other_tid: AtomicU64::new(0),
    stray: AtomicU64::new(0),
};

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Why a transfer failed; the JSON's `failed_by` names, in storm_client.c's order.
#[derive(Clone, Copy)]
enum Failure {
    Timeout,
    ServerError(u16),
    Mismatch,
    Protocol,
    Socket,
    Deadline,
    NotStarted,
}

const REASONS: [&str; 7] = [
    "timeout",
    "server_error",
    "mismatch",
    "protocol",
    "socket",
    "deadline",
    "not_started",
];

impl Failure {
    fn index(self) -> usize {
        match self {
            Failure::Timeout => 0,
            Failure::ServerError(_) => 1,
            Failure::Mismatch => 2,
            Failure::Protocol => 3,
            Failure::Socket => 4,
            Failure::Deadline => 5,
            Failure::NotStarted => 6,
        }
    }
}

/// What a received packet asks of the transfer's loop.
enum Step {
    /// Nothing changed: keep waiting under the same timeout.
    Wait,
    /// A new packet was sent (an ACK of new data): a fresh timeout, retries start over.
    Progress,
    /// The last ACK was sent and the file is complete.
    Done,
}

/// One transfer's state.
struct Transfer {
    cfg: &'static Config,
    sock: UdpSocket,
    /// The server's transfer address, once its first valid reply came.
    tid: Option<SocketAddr>,
    /// The last packet sent (RRQ or ACK), for retransmission.
    last: Vec<u8>,
    /// The negotiated blksize.
    blksize: usize,
    /// Blocks received in order; the next expected is `block + 1`.
    block: u64,
    /// Bytes received and verified.
    got: usize,
}

/// One transfer, start to end: its latency once its last ACK is sent.
async fn transfer(cfg: &'static Config, n: u64) -> Result<Duration, Failure> {
    let t0 = Instant::now();
    let host = if cfg.many_sources {
        1 + (n % 250) as u8
    } else {
        1
    };
    let sock = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, host), 0))
        .await
        .map_err(|e| socket_failure("bind", &e))?;
    let mut t = Transfer {
        cfg,
        sock,
        tid: None,
        last: cfg.rrq.clone(),
        blksize: 512,
        block: 0,
        got: 0,
    };
    let mut buf = vec![0u8; cfg.blksize.max(512) + 64];
    t.resend().await?;
    let mut tries = 0;
    let mut due = Instant::now() + cfg.timeout;
    loop {
        match timeout_at(due, t.sock.recv_from(&mut buf)).await {
            Err(_elapsed) => {
                if tries >= cfg.retries {
                    return Err(Failure::Timeout);
                }
                tries += 1;
                bump(&COUNT.retransmits);
                t.resend().await?;
                due = Instant::now() + cfg.timeout;
            }
            // An ICMP error caused by an earlier datagram: nothing to read.
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Ok(Err(e)) => return Err(socket_failure("recv", &e)),
            Ok(Ok((len, from))) => match t.on_packet(&buf[..len], from).await? {
                Step::Wait => {}
                Step::Progress => {
                    tries = 0;
                    due = Instant::now() + cfg.timeout;
                }
                Step::Done => return Ok(t0.elapsed()),
            },
        }
    }
}

impl Transfer {
    async fn on_packet(&mut self, pkt: &[u8], from: SocketAddr) -> Result<Step, Failure> {
        if pkt.len() < 4 {
            bump(&COUNT.stray);
            return Ok(Step::Wait);
        }
        let op = u16::from_be_bytes([pkt[0], pkt[1]]);
        let num = u16::from_be_bytes([pkt[2], pkt[3]]); // block number or error code
        let first = match self.tid {
            None => {
                // Only OACK, DATA 1 or ERROR from the server's host can open a transfer (anything
                // else may be a late packet to an earlier socket that had this port).
                let opens = op == OACK || op == ERROR || (op == DATA && num == 1);
                if from.ip() != self.cfg.server.ip() || !opens {
                    bump(&COUNT.stray);
                    return Ok(Step::Wait);
                }
                true
            }
            Some(tid) if tid != from => {
                bump(&COUNT.other_tid);
                self.send_error(from, 5, "Unknown transfer ID").await;
                return Ok(Step::Wait);
            }
            Some(_) => false,
        };
        match op {
            OACK if !first => {
                if self.block == 0 {
                    // Our ACK 0 was lost or late: ACK again.
                    bump(&COUNT.dup_oack);
                    bump(&COUNT.retransmits);
                    self.resend().await?;
                } else {
                    bump(&COUNT.stray);
                }
                Ok(Step::Wait)
            }
            OACK => {
                if !self.take_oack(&pkt[2..]) {
                    self.send_error(from, 8, "Option refused").await;
                    return Err(Failure::Protocol);
                }
                self.tid = Some(from);
                self.ack(0).await?;
                Ok(Step::Progress)
            }
            DATA => {
                self.tid = Some(from);
                bump(&COUNT.data_blocks);
                let data = &pkt[4..];
                if num == (self.block + 1) as u16 {
                    if data.len() > self.blksize {
                        self.send_error(from, 4, "Block too large").await;
                        return Err(Failure::Protocol);
                    }
                    let end = self.got + data.len();
                    if self.cfg.expect.get(self.got..end) != Some(data) {
                        self.send_error(from, 0, "Content differs").await;
                        return Err(Failure::Mismatch);
                    }
                    self.got = end;
                    self.block += 1;
                    self.ack(num).await?;
                    if data.len() < self.blksize {
                        if self.got != self.cfg.expect.len() {
                            return Err(Failure::Mismatch);
                        }
                        return Ok(Step::Done);
                    }
                    Ok(Step::Progress)
                } else if num == self.block as u16 {
                    // The block we ACKed last, again: ACK it again (RFC 1350).
                    bump(&COUNT.dup_data);
                    bump(&COUNT.retransmits);
                    self.resend().await?;
                    Ok(Step::Wait)
                } else {
                    bump(&COUNT.stray);
                    Ok(Step::Wait)
                }
            }
            ERROR => Err(Failure::ServerError(num)),
            _ => {
                self.send_error(from, 4, "Illegal TFTP operation").await;
                Err(Failure::Protocol)
            }
        }
    }

    /// An OACK's options (NUL-terminated name/value pairs): only those asked for, with values
    /// we can take. Sets the blksize.
    fn take_oack(&mut self, body: &[u8]) -> bool {
        if body.is_empty() {
            return true;
        }
        let Some(body) = body.strip_suffix(&[0]) else {
            return false;
        };
        let fields: Vec<&[u8]> = body.split(|&b| b == 0).collect();
        if fields.len() % 2 != 0 {
            return false;
        }
        for pair in fields.chunks(2) {
            let value = std::str::from_utf8(pair[1]).ok();
            let Some(v) = value.and_then(|s| s.parse::<u64>().ok()) else {
                return false;
            };
            let name = pair[0].to_ascii_lowercase();
            match &name[..] {
                b"blksize"
                    if self.cfg.blksize != 0 && (8..=self.cfg.blksize as u64).contains(&v) =>
                {
                    self.blksize = v as usize;
                }
                b"tsize" if self.cfg.tsize && v == self.cfg.expect.len() as u64 => {}
                _ => return false,
            }
        }
        true
    }

    async fn ack(&mut self, block: u16) -> Result<(), Failure> {
        self.last.clear();
        self.last.extend_from_slice(&ACK.to_be_bytes());
        self.last.extend_from_slice(&block.to_be_bytes());
        self.resend().await
    }

    /// Sends the last packet (again): the RRQ to the server's port, anything later to its TID.
    async fn resend(&self) -> Result<(), Failure> {
        let to = self.tid.unwrap_or(self.cfg.server);
        match self.sock.send_to(&self.last, to).await {
            Ok(_) => Ok(()),
            // A full queue or an ICMP error is a lost packet: the timeout sends it again.
            Err(e)
                if e.kind() == io::ErrorKind::ConnectionRefused
                    || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                Ok(())
            }
            Err(e) => Err(socket_failure("send", &e)),
        }
    }

    async fn send_error(&self, to: SocketAddr, code: u16, msg: &str) {
        let mut pkt = ERROR.to_be_bytes().to_vec();
        pkt.extend_from_slice(&code.to_be_bytes());
        pkt.extend_from_slice(msg.as_bytes());
        pkt.push(0);
        let _ = self.sock.send_to(&pkt, to).await;
    }
}

/// A socket error fails its transfer; the first one is also said on stderr.
fn socket_failure(what: &str, e: &io::Error) -> Failure {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Relaxed) {
        eprintln!("storm_tasks: {what}: {e}");
    }
    Failure::Socket
}

/// What the run came to.
struct Tally {
    started: u64,
    latencies_ms: Vec<f64>,
    failed: [u64; 7],
    error_codes: BTreeMap<u16, u64>,
    deadline_hit: bool,
}

/// Keeps `concurrency` transfer tasks running until `total` have ended or the deadline.
async fn run(cfg: &'static Config, total: u64, concurrency: u64, deadline: Instant) -> Tally {
    let mut tally = Tally {
        started: 0,
        latencies_ms: Vec::with_capacity(total as usize),
        failed: [0; 7],
        error_codes: BTreeMap::new(),
        deadline_hit: false,
    };
    let mut tasks = JoinSet::new();
    loop {
        while (tasks.len() as u64) < concurrency && tally.started < total {
            tasks.spawn(transfer(cfg, tally.started));
            tally.started += 1;
        }
        let outcome = match timeout_at(deadline, tasks.join_next()).await {
            Err(_elapsed) => {
                tally.deadline_hit = true;
                break;
            }
            Ok(None) => break,
            Ok(Some(joined)) => {
                joined.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
            }
        };
        match outcome {
            Ok(latency) => tally.latencies_ms.push(latency.as_secs_f64() * 1e3),
            Err(why) => {
                tally.failed[why.index()] += 1;
                if let Failure::ServerError(code) = why {
                    *tally.error_codes.entry(code).or_default() += 1;
                }
            }
        }
    }
    if tally.deadline_hit {
        tally.failed[Failure::Deadline.index()] += tasks.len() as u64;
        tally.failed[Failure::NotStarted.index()] += total - tally.started;
        tasks.abort_all();
    }
    tally
}

fn main() -> ExitCode {
    let args = Args::parse();
    let usage = |msg: &str| -> ExitCode {
        eprintln!("storm_tasks: {msg}");
        ExitCode::from(2)
    };
    if args.total == 0 || args.concurrency == 0 {
        return usage("--total and --concurrency must be positive");
    }
    if args.file.len() > 400 {
        return usage("file name too long");
    }
    if args.blksize != 0 && !(8..=65464).contains(&args.blksize) {
        return usage("blksize out of 8..65464");
    }
    if !(args.timeout > 0.0 && args.deadline > 0.0) {
        return usage("bad timeout/deadline");
    }
    let concurrency = args.concurrency.min(args.total);
    let server = match args.server.to_socket_addrs() {
        Ok(mut addrs) => addrs.find(SocketAddr::is_ipv4),
        Err(_) => None,
    };
    let Some(server) = server else {
        return usage("--server is HOST:PORT (IPv4)");
    };
    let Ok(expect) = std::fs::read(&args.expect) else {
        return usage("cannot read --expect");
    };
    // Opened now: a bad path fails before the run, not after it.
    let mut lat_file = match args.latencies.as_ref().map(std::fs::File::create) {
        Some(Err(_)) => return usage("cannot open --latencies"),
        other => other.map(|f| io::BufWriter::new(f.expect("checked"))),
    };
    if !raise_nofile(concurrency + 32) {
        return usage("cannot raise RLIMIT_NOFILE to the concurrency");
    }

    // RRQ: opcode, filename, 0, "octet", 0, then the options.
    let mut rrq = RRQ.to_be_bytes().to_vec();
    for field in [args.file.as_str(), "octet"] {
        rrq.extend_from_slice(field.as_bytes());
        rrq.push(0);
    }
    if args.blksize != 0 {
        rrq.extend_from_slice(format!("blksize\0{}\0", args.blksize).as_bytes());
    }
    if args.tsize {
        rrq.extend_from_slice(b"tsize\x000\0");
    }
    let cfg: &'static Config = Box::leak(Box::new(Config {
        server,
        rrq,
        blksize: args.blksize,
        tsize: args.tsize,
        timeout: Duration::from_secs_f64(args.timeout),
        retries: args.retries,
        many_sources: args.sources == Sources::Many,
        expect,
    }));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let t_start = monotonic_s();
    let deadline = Instant::now() + Duration::from_secs_f64(args.deadline);
    let mut tally = runtime.block_on(run(cfg, args.total, concurrency, deadline));
    let t_end = monotonic_s();
    drop(runtime);
    let wall = t_end - t_start;
    let (user_s, sys_s) = cpu_s();

    let lat = &mut tally.latencies_ms;
    lat.sort_by(f64::total_cmp);
    if let Some(f) = lat_file.as_mut() {
        let written = lat.iter().try_for_each(|ms| writeln!(f, "{ms:.6}"));
        if written.and_then(|()| f.flush()).is_err() {
            return usage("cannot write --latencies");
        }
    }
    let pct = |p: f64| match lat.len() {
        0 => 0.0,
        n => lat[(p / 100.0 * (n - 1) as f64 + 0.5) as usize],
    };
    let ok = lat.len() as u64;
    let nfail: u64 = tally.failed.iter().sum();
    let failed_by: Vec<String> = REASONS
        .iter()
        .zip(tally.failed)
        .filter(|&(_, n)| n > 0)
        .map(|(why, n)| format!("\"{why}\":{n}"))
        .collect();
    let codes: Vec<String> = tally
        .error_codes
        .iter()
        .map(|(code, n)| format!("\"{code}\":{n}"))
        .collect();
    let c = |x: &AtomicU64| x.load(Relaxed);
    println!(
        "{{\"ok\":{ok},\"failed\":{nfail},\"failed_by\":{{{}}},\"error_codes\":{{{}}},\
         \"total\":{},\"started\":{},\"concurrency\":{concurrency},\"sources\":\"{}\",\
         \"blksize\":{},\"file_bytes\":{},\"deadline_hit\":{},\
         \"t_start\":{t_start:.6},\"t_end\":{t_end:.6},\"wall_s\":{wall:.3},\"rate\":{:.2},\
         \"lat_ms\":{{\"p50\":{:.3},\"p90\":{:.3},\"p99\":{:.3},\"max\":{:.3}}},\
         \"data_blocks\":{},\"dup_data\":{},\"dup_oack\":{},\"retransmits\":{},\
         \"other_tid\":{},\"stray\":{},\"cpu_s\":{:.3},\"user_s\":{user_s:.3},\"sys_s\":{sys_s:.3}}}",
        failed_by.join(","),
        codes.join(","),
        args.total,
        tally.started,
        if cfg.many_sources { "many" } else { "one" },
        args.blksize,
        cfg.expect.len(),
        tally.deadline_hit,
        if wall > 0.0 { ok as f64 / wall } else { 0.0 },
        pct(50.0),
        pct(90.0),
        pct(99.0),
        lat.last().copied().unwrap_or(0.0),
        c(&COUNT.data_blocks),
        c(&COUNT.dup_data),
        c(&COUNT.dup_oack),
        c(&COUNT.retransmits),
        c(&COUNT.other_tid),
        c(&COUNT.stray),
        user_s + sys_s,
    );
    ExitCode::from(u8::from(nfail > 0))
}

/// CLOCK_MONOTONIC in seconds: one clock for every process, so run.py can take the wall time
/// of several clients from the first start to the last end.
fn monotonic_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// This process's user and system CPU seconds.
fn cpu_s() -> (f64, f64) {
    // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(ru.ru_utime), s(ru.ru_stime))
}

/// A descriptor per transfer in flight: raises the soft limit to `need` (and the hard one too
/// when it is lower, which root may do).
fn raise_nofile(need: u64) -> bool {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return false;
    }
    if rl.rlim_cur >= need {
        return true;
    }
    rl.rlim_cur = need;
    rl.rlim_max = rl.rlim_max.max(need);
    // SAFETY: `rl` is a valid rlimit, read for the duration of the call.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 }
}
