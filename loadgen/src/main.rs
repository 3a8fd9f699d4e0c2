//! `loadgen`: thousands of concurrent TFTP clients against any server, with latency histograms.
//!
//! The command line lives here; [`client`] is the per-transfer state machine (sans-IO, on the
//! core's packet codec and netascii decoder), [`run`] the epoll event loop that drives thousands
//! of them per thread, and [`report`] the histograms, the table, the thresholds and the JSON.

mod client;
mod profile;
mod report;
mod run;
mod scenario;

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use ringtftp::options::{BLKSIZE_MAX, BLKSIZE_MIN};
use ringtftp::packet::Mode;

use crate::client::Expect;
use crate::profile::{Overrides, Profile};
use crate::report::{Live, Setup, Thresholds};
use crate::run::{Arrivals, Plan};
use crate::scenario::{Defaults, Sequence, Step};

/// Drive a TFTP server with thousands of concurrent clients and measure it.
///
/// Every transfer is a real client: a fresh UDP socket (a new TID) sends an RRQ for FILE to the
/// server's port, then talks to whichever port answered, acknowledging DATA lock-step or in
/// windows (RFC 7440), re-sending on timeout, and checking every byte against --expect or
/// --sha256. --clients transfers run at once until --transfers have run (default: one per
/// client) or --duration has passed.
///
/// --profile makes every client ask what one firmware asks (edk2, ipxe, pxelinux, uboot, grub,
/// raspberrypi, wds; edk2 and raspberrypi first probe the size and refuse the OACK with
/// ERROR 8, then download from a new port). --scenario runs a boot sequence of several files per machine from a TOML file, and
/// --power-on powers machines on in a wave instead of keeping --clients in flight; the summary
/// then has each machine's time to boot and when the whole hall was up.
///
/// It prints a summary on stdout (transfer time and time to first block percentiles,
/// transfers/s, MB/s, failures by reason, retransmissions, times to boot) and, with --json, the
/// same figures for a machine. Exit status: 0 done, 1 could not run, 2 bad usage, 3 a threshold
/// (--max-p99, --min-rate, --max-failures) was missed or the run regressed from --baseline.
///
/// Examples:
///   loadgen 127.0.0.1:6969 pxelinux.0 --clients 500 --transfers 2000 --blksize 1468
///   loadgen 127.0.0.1:6969 shimx64.efi --profile edk2 --power-on 2000 --over 30s
///   loadgen 127.0.0.1:6969 --scenario examples/hall.toml --power-on-rate 100/s --duration 20s
///   loadgen 127.0.0.1:6969 boot.ipxe -c 10000 --sha256 9f86d0...
///   loadgen 127.0.0.1:6969 initrd --windowsize 16 --blksize 1468 --loss 0.02 --expect initrd
///   loadgen 127.0.0.1:6969 kernel -c 2000 --duration 30s --max-p99 50ms --min-rate 2000/s
///           --max-failures 0 --json result.json --sources 127.0.0.1-127.0.0.64
///   loadgen 127.0.0.1:6969 kernel -c 200 --json new.json --baseline old.json --max-regression 10%
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, verbatim_doc_comment, max_term_width = 100)]
struct Cli {
    /// The server: HOST, HOST:PORT or [IPv6]:PORT.
    #[arg(value_name = "HOST[:PORT]")]
    server: String,

    /// The file to fetch, as the server names it.
    #[arg(value_name = "FILE", required_unless_present = "scenario")]
    file: Option<String>,

    /// Speak like this firmware: edk2, ipxe, pxelinux, uboot, grub, raspberrypi or wds (README:
    /// what each asks).
    /// --blksize, --windowsize and --tsize override its options.
    #[arg(long, value_name = "NAME", value_parser = Profile::parse)]
    profile: Option<Profile>,

    /// Run this boot sequence on every machine instead of fetching FILE (a TOML file; see the
    /// README and examples/hall.toml).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["file", "profile", "expect", "sha256"])]
    scenario: Option<PathBuf>,

    /// Power on this many machines in a wave (see --over, --power-on-rate) instead of keeping
    /// --clients in flight.
    #[arg(long, value_name = "N", conflicts_with_all = ["clients", "transfers"],
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    power_on: Option<u64>,

    /// Spread the --power-on wave evenly over this long [default: all at once].
    #[arg(long, value_name = "TIME", requires = "power_on", value_parser = parse_duration)]
    over: Option<Duration>,

    /// Power machines on at this rate (e.g. 100/s): --power-on of them, or for --duration.
    #[arg(long, value_name = "RATE", conflicts_with_all = ["over", "clients", "transfers"],
          value_parser = parse_rate)]
    power_on_rate: Option<f64>,

    /// The server's port, when HOST has none.
    #[arg(long, value_name = "PORT", default_value_t = 69)]
    port: u16,

    /// Transfers in flight at once (each holds one socket).
    #[arg(short, long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    clients: u64,

    /// Transfers to run in all [default: --clients].
    #[arg(short = 'n', long, value_name = "M", conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..))]
    transfers: Option<u64>,

    /// Keep starting transfers for this long (e.g. 30s, 2m); those in flight then finish.
    #[arg(short, long, value_name = "TIME", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// Ask for this block size (RFC 2348) [default: ask nothing, 512].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16)
        .range(i64::from(BLKSIZE_MIN)..=i64::from(BLKSIZE_MAX)))]
    blksize: Option<u16>,

    /// Ask for this window (RFC 7440) [default: ask nothing, lock-step].
    #[arg(long, value_name = "BLOCKS", value_parser = clap::value_parser!(u16).range(1..))]
    windowsize: Option<u16>,

    /// Ask for the transfer size (RFC 2349) and check the bytes received against it.
    #[arg(long)]
    tsize: bool,

    /// Wait this long for the server before re-sending the last packet (e.g. 1s, 200ms)
    /// [default: the profile's, else 1s].
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// Also send --timeout to the server as the RFC 2349 `timeout` option.
    #[arg(long)]
    send_timeout_option: bool,

    /// Re-sends of the same packet without an answer before a transfer fails as a timeout.
    #[arg(long, value_name = "N", default_value_t = 5)]
    retries: u32,

    /// Transfer mode; netascii is decoded before checking.
    #[arg(long, value_enum, default_value_t = ModeArg::Octet)]
    mode: ModeArg,

    /// Simulate loss: drop each datagram received, and each one to send (RRQs and ACKs), with
    /// this probability (0 to 1).
    #[arg(long, value_name = "P", default_value_t = 0.0, value_parser = parse_probability)]
    loss: f64,

    /// Seed of the loss simulation, for repeatable runs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// Check every transfer against this local file, byte by byte.
    #[arg(long, value_name = "LOCAL_FILE", conflicts_with = "sha256")]
    expect: Option<PathBuf>,

    /// Check every transfer's SHA-256 (64 hex digits), hashed as the bytes arrive.
    #[arg(long, value_name = "HEX", value_parser = parse_sha256)]
    sha256: Option<[u8; 32]>,

    /// Bind clients to these source addresses, round robin: a range (127.0.0.1-127.0.0.64),
    /// addresses, or both, comma-separated.
    #[arg(long, value_name = "ADDRS", value_parser = parse_sources)]
    sources: Option<Sources>,

    /// Event-loop threads, each running --clients / --threads clients.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,

    /// Keep polling this long after the last event before sleeping (0: never spin).
    ///
    /// Waking a sleeping thread costs tens of microseconds (more in a VM), longer than a
    /// lock-step round trip on loopback: spinning briefly makes one lock-step client about four
    /// times faster. It only burns CPU while the server keeps loadgen waiting; use 0 when
    /// loadgen must share a CPU with the server.
    #[arg(long, value_name = "TIME", default_value = "50us", value_parser = parse_duration)]
    spin: Duration,

    /// Receive each datagram alone, without UDP_GRO.
    ///
    /// By default windowed transfers ask the kernel for UDP_GRO, so a window a server sends as
    /// one GSO train arrives in one buffer (split here into its datagrams): loadgen then keeps
    /// up with the fastest servers. Servers that send each datagram alone are received the same
    /// either way.
    #[arg(long)]
    no_gro: bool,

    /// Hard limit on the whole run; transfers still running then fail as aborted.
    #[arg(long, value_name = "TIME", default_value = "10m", value_parser = parse_duration)]
    deadline: Duration,

    /// Write the summary as JSON to this file (`-`: stdout, and the table goes to stderr).
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,

    /// Fail (exit 3) if the p99 transfer time exceeds this (e.g. 50ms).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    max_p99: Option<Duration>,

    /// Fail (exit 3) below this many successful transfers per second (e.g. 2000/s).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    min_rate: Option<f64>,

    /// Fail (exit 3) if more transfers than this fail.
    #[arg(long, value_name = "N")]
    max_failures: Option<u64>,

    /// Compare with this earlier --json summary (rate, p99 transfer time, p99 time to boot,
    /// time until the hall booted) and exit 3 if any is worse by more than --max-regression.
    #[arg(long, value_name = "OLD.json")]
    baseline: Option<PathBuf>,

    /// How much worse than --baseline a figure may be (e.g. 10%).
    #[arg(long, value_name = "PERCENT", default_value = "10%", requires = "baseline",
          value_parser = parse_percent)]
    max_regression: f64,

    /// Write HdrHistogram interval logs of the transfer times (one interval a second) here.
    #[arg(long, value_name = "FILE")]
    hlog: Option<PathBuf>,

    /// Write a self-contained HTML page with plots of the run here.
    #[arg(long, value_name = "FILE.html")]
    report: Option<PathBuf>,

    /// No progress line, even on a terminal.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// Raw bytes.
    Octet,
    /// Text with CR LF line ends (RFC 1350), decoded before checking.
    Netascii,
}

/// Source addresses, as parsed by [`parse_sources`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sources(Vec<IpAddr>);

/// Exit status when a threshold is missed (1 is a failure to run, 2 bad usage).
const EXIT_THRESHOLD: i32 = 3;

fn main() {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => {}
        Ok(false) => std::process::exit(EXIT_THRESHOLD),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs the load; `Ok(false)` when a threshold was missed or the run regressed.
fn run(cli: Cli) -> Result<bool> {
    let server = resolve(&cli.server, cli.port)?;
    let sources = cli
        .sources
        .as_ref()
        .map(|s| s.0.clone())
        .unwrap_or_default();
    if let Some(bad) = sources.iter().find(|ip| ip.is_ipv4() != server.is_ipv4()) {
        bail!("source {bad} is not of the server's address family ({server})");
    }
    let clients = usize::try_from(cli.clients)?;
    let arrivals = arrivals(&cli)?;
    let limit = run::raise_fd_limit().context("cannot raise the open-file limit")?;
    // Every client holds one socket; keep a few descriptors for stdio, epoll and the JSON file.
    let room = limit.saturating_sub(64);
    ensure!(
        arrivals.is_some() || cli.clients <= room,
        "--clients {} needs as many open files, but the limit is {limit} \
         (raise the hard limit with `ulimit -Hn` or as root)",
        cli.clients
    );
    let steps = match (&cli.scenario, &cli.file) {
        (Some(path), _) => scenario::load(path)?,
        (None, Some(file)) => vec![Step {
            file: file.clone(),
            profile: cli.profile,
            think: Duration::ZERO,
            expect: match (&cli.expect, cli.sha256) {
                (Some(path), _) => Expect::Bytes(
                    std::fs::read(path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                (None, Some(hash)) => Expect::Sha256(hash),
                (None, None) => Expect::Anything,
            },
            overrides: Overrides::default(),
        }],
        (None, None) => bail!("give FILE or --scenario"),
    };
    let defaults = Defaults {
        mode: match cli.mode {
            ModeArg::Octet => Mode::Octet,
            ModeArg::Netascii => Mode::Netascii,
        },
        timeout: cli.timeout,
        timeout_option: cli.send_timeout_option,
        retries: cli.retries,
        overrides: Overrides {
            blksize: cli.blksize,
            windowsize: cli.windowsize,
            tsize: cli.tsize,
        },
    };
    let seq = Sequence::build(&steps, &defaults)?;
    let transfers = match (cli.transfers, cli.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(cli.clients),
    };
    let plan = Plan {
        server,
        sources,
        clients,
        transfers,
        duration: cli.duration,
        arrivals,
        deadline: cli.deadline,
        threads: usize::try_from(cli.threads)?,
        loss: cli.loss,
        seed: cli.seed,
        spin: cli.spin,
        gro: !cli.no_gro,
        timeline: cli.hlog.is_some() || cli.report.is_some(),
    };
    let setup = Setup {
        server: server.to_string(),
        file: match &cli.scenario {
            Some(path) => format!("scenario {}", path.display()),
            None => seq.steps[0].file.clone(),
        },
        clients,
        options: match seq.steps.as_slice() {
            [one] => one.options.clone(),
            _ => "per step".to_owned(),
        },
        mode: defaults.mode.as_str(),
        profile: cli.profile.map(|p| p.name().to_owned()),
        arrivals: arrivals.map(|a| format!("{} machines, one every {:?}", a.machines, a.spacing)),
        steps: seq.steps.clone(),
    };

    let live = Live::default();
    let progress = !cli.quiet && std::io::stderr().is_terminal();
    let mut last = (0, 0);
    let total = arrivals.map(|a| a.machines).or(transfers);
    let mut stats = run::run(&plan, &seq, &live, |elapsed| {
        if progress {
            eprint!("\r\x1b[2K{}", live.line(elapsed, total, &mut last));
        }
    })?;
    if progress {
        eprint!("\r\x1b[2K");
    }
    if arrivals.is_none() {
        // Peaks add up across workers only approximately; the run never exceeds --clients.
        stats.peak_active = stats.peak_active.min(cli.clients);
    }

    let thresholds = Thresholds {
        max_p99: cli.max_p99,
        min_rate: cli.min_rate,
        max_failures: cli.max_failures,
    };
    let verdicts = thresholds.judge(&stats);
    let table = report::table(&setup, &stats, &verdicts);
    let json_to_stdout = cli.json.as_ref().is_some_and(|p| p.as_os_str() == "-");
    // stdout carries the JSON alone, for a pipe; the tables go to the terminal.
    let say = |text: &str| {
        if json_to_stdout {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    };
    say(&table);
    let json = report::json(&setup, &stats, &verdicts);
    if let Some(path) = &cli.json {
        if json_to_stdout {
            print!("{json}");
        } else {
            std::fs::write(path, &json)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    if let Some(path) = &cli.hlog {
        report::hlog::write(path, &stats)?;
    }
    if let Some(path) = &cli.report {
        std::fs::write(path, report::html::page(&setup, &stats))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut ok = true;
    let missed: Vec<&str> = verdicts.iter().filter(|v| !v.ok).map(|v| v.name).collect();
    if !missed.is_empty() {
        eprintln!("loadgen: threshold missed: {}", missed.join(", "));
        ok = false;
    }
    if let Some(path) = &cli.baseline {
        let old = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read baseline {}", path.display()))?;
        let comparison = report::baseline::compare(&old, &json, cli.max_regression)
            .with_context(|| format!("baseline {}", path.display()))?;
        say(&comparison.table());
        let worse = comparison.regressions();
        if !worse.is_empty() {
            eprintln!(
                "loadgen: regression from {} beyond {}%: {}",
                path.display(),
                cli.max_regression,
                worse.join(", ")
            );
            ok = false;
        }
    }
    Ok(ok)
}

/// The power-on wave the command line asks for, if any.
fn arrivals(cli: &Cli) -> Result<Option<Arrivals>> {
    Ok(match (cli.power_on, cli.power_on_rate) {
        (None, None) => None,
        (Some(machines), None) => Some(Arrivals {
            machines,
            spacing: cli.over.unwrap_or(Duration::ZERO) / u32::try_from(machines)?,
        }),
        (machines, Some(rate)) => {
            ensure!(rate > 0.0, "--power-on-rate must be above 0/s");
            let machines = match (machines, cli.duration) {
                (Some(n), _) => n,
                (None, Some(d)) => (d.as_secs_f64() * rate).ceil().max(1.0) as u64,
                (None, None) => bail!("--power-on-rate needs --power-on N or --duration"),
            };
            Some(Arrivals {
                machines,
                spacing: Duration::from_secs_f64(1.0 / rate),
            })
        }
    })
}

/// HOST, HOST:PORT, [V6]:PORT or a bare IPv6 address, resolved to one address.
fn resolve(server: &str, default_port: u16) -> Result<SocketAddr> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = server
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = match server.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse()
                .with_context(|| format!("bad port in {server:?}"))?,
        ),
        None => (server, default_port),
    };
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host:?}"))?
        .next()
        .with_context(|| format!("{host:?} has no address"))
}

/// `1.5s`, `200ms`, `250us`, `2m`, `1h`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 2s or 1m"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?} (use us, ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| e.to_string())
}

/// `2000/s` or `2000`.
fn parse_rate(s: &str) -> Result<f64, String> {
    let number = s.trim().trim_end_matches("/s");
    number
        .parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a rate such as 2000/s"))
}

/// `10%` or `10`, as a percentage.
fn parse_percent(s: &str) -> Result<f64, String> {
    s.trim()
        .trim_end_matches('%')
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite() && *p >= 0.0)
        .ok_or_else(|| format!("{s:?} is not a percentage such as 10%"))
}

fn parse_probability(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| format!("{s:?} is not a probability between 0 and 1"))
}

fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    if s.len() != 64 {
        return Err("a SHA-256 is 64 hex digits".to_owned());
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("{s:?} is not hex"))?;
    }
    Ok(out)
}

/// Comma-separated addresses and inclusive ranges `FIRST-LAST` (of one family).
fn parse_sources(s: &str) -> Result<Sources, String> {
    /// Enough for any rack; a bigger range is more likely a typo.
    const MAX: u128 = 1 << 16;
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let bad = |_| format!("{part:?} is not an address or a range FIRST-LAST");
        let first: IpAddr = first.trim().parse().map_err(bad)?;
        let last: IpAddr = last.trim().parse().map_err(bad)?;
        let (lo, hi) = match (first, last) {
            (IpAddr::V4(a), IpAddr::V4(b)) => (u128::from(u32::from(a)), u128::from(u32::from(b))),
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b)),
            _ => return Err(format!("{part:?} mixes IPv4 and IPv6")),
        };
        if lo > hi || hi - lo >= MAX || out.len() as u128 + hi - lo >= MAX {
            return Err(format!(
                "{part:?}: a range runs upwards over at most {MAX} addresses"
            ));
        }
        for v in lo..=hi {
            out.push(match first {
                IpAddr::V4(_) => IpAddr::from((v as u32).to_be_bytes()),
                IpAddr::V6(_) => IpAddr::from(v.to_be_bytes()),
            });
        }
    }
    if out.is_empty() {
        return Err("no source address".to_owned());
    }
    Ok(Sources(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_rate("2000/s"), Ok(2000.0));
        assert_eq!(parse_rate("12.5"), Ok(12.5));
        assert!(parse_rate("-1").is_err());
        assert!(parse_probability("1.5").is_err());
        assert_eq!(parse_percent("10%"), Ok(10.0));
        assert_eq!(parse_percent("2.5"), Ok(2.5));
        assert!(parse_percent("-3%").is_err());
        assert_eq!(parse_probability("0.02"), Ok(0.02));
    }

    #[test]
    fn sources_expand_ranges() {
        let Sources(s) = parse_sources("127.0.0.1-127.0.0.3,10.0.0.9").unwrap();
        let want: Vec<IpAddr> = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "10.0.0.9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(s, want);
        let Sources(s) = parse_sources("::1-::2").unwrap();
        assert_eq!(s.len(), 2);
        assert!(parse_sources("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_sources("127.0.0.1-::1").is_err());
        assert!(parse_sources("10.0.0.0-10.255.255.255").is_err());
        assert!(parse_sources("").is_err());
    }

    #[test]
    fn servers_resolve_with_or_without_port() {
        assert_eq!(
            resolve("127.0.0.1:6969", 69).unwrap(),
            "127.0.0.1:6969".parse().unwrap()
        );
        assert_eq!(
            resolve("127.0.0.1", 69).unwrap(),
            "127.0.0.1:69".parse().unwrap()
        );
        assert_eq!(
            resolve("[::1]:70", 69).unwrap(),
            "[::1]:70".parse().unwrap()
        );
        assert_eq!(resolve("::1", 69).unwrap(), "[::1]:69".parse().unwrap());
        assert_eq!(resolve("localhost:7", 69).unwrap().port(), 7);
        assert!(resolve("127.0.0.1:x", 69).is_err());
    }

    #[test]
    fn sha256_is_64_hex_digits() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(parse_sha256(hex).unwrap()[..2], [0xe3, 0xb0]);
        assert!(parse_sha256(&hex[1..]).is_err());
        assert!(parse_sha256(&hex.replace('e', "g")).is_err());
    }
}
