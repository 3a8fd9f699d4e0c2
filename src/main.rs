//! `ringtftpd`: serve a directory over TFTP, read-only, built for boot storms.
//!
//! Command-line compatible with `python -m nobodd.tftpd`: `ringtftpd [PORT] [--bind ADDR]
//! [--directory DIR]`, port 6969 by default; and with `nobodd-tftpd`'s `--board
//! SERIAL,FILENAME[,PART[,IP]]` and configuration files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod daemon;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use ringtftp::options::{Limits, BLKSIZE_MAX, BLKSIZE_MIN, TIMEOUT_MAX, TIMEOUT_MIN};
use ringtftp::resolve::boards::{Board, BoardResolver};
use ringtftp::resolve::{DirectoryResolver, Remap, Resolver};
use ringtftp::server::{BackendChoice, Config, Server};
use ringtftp::transfer;

use daemon::systemd::{self, Notifier};
use daemon::user::Identity;

/// Serve a directory over TFTP (read-only), fast enough for a whole data hall booting at once.
///
/// ringtftpd answers read requests (RRQ) for the files under DIR with the options of RFC 2347,
/// 2348, 2349 and 7440 (blksize, tsize, timeout/utimeout, windowsize). Write requests are
/// refused: nothing is ever written. Each CPU gets a shard with its own socket on PORT, and each
/// transfer its own port, as RFC 1350 requires. It stops on Ctrl-C or SIGTERM, letting running
/// transfers finish for up to --grace seconds. DIR is followed: a new tree renamed into place,
/// or a symlink flipped to one, is served within a second. SIGHUP looks DIR up at once and
/// re-reads --map-file (a bad one keeps the rules in force). Under a memory limit (cgroup), the
/// defaults not given are sized to fit it. Boards (--board, and with --nobodd-config those of
/// nobodd's configuration files) serve Raspberry Pi boot partitions from inside OS images, as
/// nobodd-tftpd does; the images must be readable by --user, which reads them again when they
/// change.
///
/// Started by systemd with a socket (LISTEN_FDS; see dist/systemd/ringtftpd.socket), it serves
/// that socket and ignores PORT and --bind; with NOTIFY_SOCKET set it sends READY=1 once
/// serving and STOPPING=1 when stopping. Started as root, --user drops to another user once
/// the port is bound.
///
/// Examples:
///   ringtftpd                          serve the current directory on port 6969
///   ringtftpd 69 -d /srv/tftp          the standard port (needs root or CAP_NET_BIND_SERVICE)
///   ringtftpd -b 10.0.0.1 --port-range 40000-40999
///   ringtftpd 69 -d /srv/tftp --client-dirs --map-file /etc/tftpd.map
///   ringtftpd 69 -d /srv/tftp --user tftp --metrics 127.0.0.1:9469
///   ringtftpd 69 --board 1234abcd,/srv/images/ubuntu.img   a Pi's boot partition, as nobodd
#[derive(Debug, Parser)]
#[command(
    name = "ringtftpd",
    version,
    verbatim_doc_comment,
    max_term_width = 100
)]
pub(crate) struct Cli {
    /// Port to listen on: a number or a service name such as `tftp` [default: 6969, or
    /// nobodd's configured port with --nobodd-config].
    #[arg(value_name = "PORT")]
    port: Option<String>,

    /// The port, as nobodd-tftpd spells it (instead of PORT).
    #[arg(long = "port", value_name = "PORT", conflicts_with = "port")]
    port_option: Option<String>,

    /// Address to listen on [default: all interfaces, IPv4 and IPv6]. --listen, as
    /// nobodd-tftpd spells it, is the same; `systemd` there means the socket systemd passes.
    #[arg(short, long, visible_alias = "listen", value_name = "ADDR", value_parser = parse_listen)]
    bind: Option<Listen>,

    /// Directory to serve [default: the current directory, unless boards are served].
    #[arg(short, long, value_name = "DIR")]
    directory: Option<PathBuf>,

    /// Serve a Raspberry Pi's boot files from inside an OS image, as nobodd-tftpd does: the
    /// FAT partition PART (default 1) of FILENAME (an image file or a block device) appears
    /// as the directory SERIAL/, to the address IP only if given. Repeatable. With boards and
    /// no --directory, only the boards are served; with both, a board's SERIAL/ comes first.
    #[arg(long = "board", value_name = "SERIAL,FILENAME[,PART[,IP]]", value_parser = parse_board)]
    boards: Vec<Board>,

    /// Also read nobodd's configuration files, as nobodd-tftpd does: /etc/nobodd/nobodd.conf,
    /// /usr/local/etc/nobodd/nobodd.conf, $XDG_CONFIG_HOME/nobodd/nobodd.conf, then *.conf in
    /// [tftp] includedir. Their [board:SERIAL] sections are boards (a --board for the same
    /// serial wins); [tftp] listen and port apply where --bind and PORT are not given. SIGHUP
    /// reads them again.
    #[arg(long)]
    nobodd_config: bool,

    /// Shards (threads, each with its own socket on PORT) [default: one per CPU].
    #[arg(long, value_name = "N")]
    shards: Option<usize>,

    /// Largest block size granted to a client (RFC 2348 allows 8 to 65464).
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().blksize_max,
          value_parser = clap::value_parser!(u16)
              .range(i64::from(BLKSIZE_MIN)..=i64::from(BLKSIZE_MAX)))]
    blksize_max: u16,

    /// Largest window granted to a client (RFC 7440 allows 1 to 65535). A window is also kept
    /// within 96 KiB, so a client's socket buffer holds it: blksize 8192 gets at most 12.
    #[arg(long, value_name = "BLOCKS", default_value_t = Limits::default().windowsize_max,
          value_parser = clap::value_parser!(u16).range(1..))]
    windowsize_max: u16,

    /// Retransmission timeout in seconds before a client's round-trip time is known; it then
    /// adapts (unless the client fixed one with the timeout option).
    #[arg(long, value_name = "SECS", default_value = "1")]
    timeout: f64,

    /// Retransmissions without an answer before a transfer is abandoned.
    #[arg(long, value_name = "N", default_value_t = transfer::Config::default().retries)]
    retries: u32,

    /// Concurrent transfers; requests beyond get an ERROR saying the server is busy
    /// [default: 16384, or fewer if the descriptor limit (ulimit -n) allows fewer].
    #[arg(long, value_name = "N")]
    max_transfers: Option<usize>,

    /// Concurrent transfers per client address (bounds what one host, or one forging its
    /// address, can hold).
    #[arg(long, value_name = "N", default_value_t = Config::default().max_per_client)]
    max_per_client: usize,

    /// Megabytes of hot file data each shard shares between its transfers, in registered
    /// buffers (a boot storm reads each chunk of a file once) [default: 8, less under a memory
    /// limit].
    #[arg(long, value_name = "MB")]
    cache_mb: Option<usize>,

    /// Megabytes of file data all transfers together may hold in memory (the cache included);
    /// while it is spent, new requests get an ERROR saying the server is busy [default: 256,
    /// or what fits the memory limit of the process's cgroup].
    #[arg(long, value_name = "MB", value_parser = clap::value_parser!(u64).range(1..))]
    max_buffer_mb: Option<u64>,

    /// Local ports for transfers, such as 40000-40999 for a firewall [default: ephemeral].
    #[arg(long, value_name = "LO-HI", value_parser = parse_range)]
    port_range: Option<(u16, u16)>,

    /// Answer every transfer from the main port, telling clients apart by address and port,
    /// for clients behind NAT, a container port mapping or a load-balancer address, where
    /// replies from a new port never arrive.
    #[arg(long)]
    single_port: bool,

    /// Cap the granted block size so each DATA datagram fits this link MTU [default: the MTU
    /// of the interface each request arrived on; 1500 gives 1468 over IPv4, 1448 over IPv6].
    /// 65536 turns the cap off: blocks go out as IP fragments, faster on a clean network, a
    /// whole block lost with any fragment elsewhere.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(68..=65536))]
    mtu: Option<u32>,

    /// Serve each client its own files where it has them: NAME from DIR/01-aa-bb-cc-dd-ee-ff/NAME
    /// (its MAC address, pxelinux's spelling, for a client on a directly attached network, from
    /// the kernel's neighbour table), else DIR/ADDR/NAME (its IP address: 192.0.2.7, or IPv6 as
    /// in 2001:db8::7), else DIR/NAME. Like dnsmasq's --tftp-unique-root.
    #[arg(long)]
    client_dirs: bool,

    /// Rewrite requested names with a tftp-hpa rule file (in.tftpd -m): lines of `FLAGS REGEX
    /// [REPLACEMENT]`, such as `rg \\ /` to turn Windows backslashes into slashes.
    #[arg(long, value_name = "FILE")]
    map_file: Option<PathBuf>,

    /// Seconds a stop waits for running transfers.
    #[arg(long, value_name = "SECS", default_value = "10")]
    grace: f64,

    /// I/O backend. Each runs the same transfer sessions; io-uring and tokio-uring refuse to
    /// start where the kernel or a seccomp profile blocks io_uring, auto falls back to epoll.
    #[arg(long, value_enum, env = "RINGTFTP_BACKEND", default_value_t = BackendArg::Auto)]
    backend: BackendArg,

    /// Once the port is bound and the shards are running, switch to this user (and its group,
    /// or GROUP) for good, keeping no capability; as root only. If the switch fails, ringtftpd
    /// exits rather than serve as root. Files are then opened as this user.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    user: Option<String>,

    /// Serve Prometheus metrics at http://ADDR/metrics (such as 127.0.0.1:9469): requests and
    /// refusals by reason, transfers by outcome, bytes, retransmissions, durations, per shard.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG also works.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: String,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// The io_uring engine where the kernel allows it, epoll elsewhere (with a warning).
    Auto,
    /// The io_uring engine: multishot receives, provided and registered buffers, fixed reads.
    IoUring,
    /// A task per transfer on tokio-uring, with registered buffers and fixed reads.
    TokioUring,
    /// One epoll loop per shard (what a container's default seccomp profile allows).
    Epoll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() {
    let cli = Cli::parse();
    init_logging(&cli);
    if let Err(e) = run(cli) {
        eprintln!("ringtftpd: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    // Both change the environment: before any thread starts.
    let passed = systemd::take_listen_fds().context("socket activation (LISTEN_FDS)")?;
    let notifier = Notifier::from_env()?;
    let identity = cli.user.as_deref().map(Identity::lookup).transpose()?;
    let nobodd = match cli.nobodd_config {
        true => daemon::nobodd::read()?,
        false => daemon::nobodd::Settings::default(),
    };
    let port = match (cli.port.as_ref().or(cli.port_option.as_ref()), &nobodd.port) {
        (Some(port), _) | (None, Some(port)) => parse_port(port)?,
        (None, None) => 6969,
    };
    let bind_addr = match (cli.bind, nobodd.listen.as_deref()) {
        (Some(Listen::Address(addr)), _) => Some(addr),
        (Some(Listen::Systemd), _) if passed.is_empty() => {
            bail!("--listen systemd, but systemd passed no socket (LISTEN_FDS)")
        }
        (Some(Listen::Systemd), _) => None,
        (None, Some(listen)) => daemon::nobodd::listen_address(listen, !passed.is_empty())?,
        (None, None) => None,
    };
    let mut boards = nobodd.boards;
    boards.extend(cli.boards.iter().cloned());
    if directory_options(&cli) && cli.directory.is_none() && !boards.is_empty() {
        bail!("--client-dirs and --map-file apply to --directory, and boards are served without one: give --directory too");
    }
    let directory = match &cli.directory {
        Some(dir) => Some(dir.clone()),
        None if boards.is_empty() => {
            Some(std::env::current_dir().context("cannot read the current directory")?)
        }
        None => None,
    };
    let mut map = None;
    let directory_resolver = match &directory {
        Some(directory) => {
            if !directory.exists() {
                bail!("directory {} does not exist", directory.display());
            }
            if !directory.is_dir() {
                bail!("{} is not a directory", directory.display());
            }
            let mut resolver = DirectoryResolver::new(directory)
                .with_context(|| format!("cannot open directory {}", directory.display()))?
                .with_client_dirs(cli.client_dirs);
            if let Some(file) = &cli.map_file {
                let (text, rules) = load_map_file(file)?;
                tracing::info!(
                    rules = rules.len(),
                    "remapping names with {}",
                    file.display()
                );
                resolver = resolver.with_remap(rules);
                map = Some(text);
            }
            Some(Arc::new(resolver))
        }
        None => None,
    };
    for file in &nobodd.files {
        tracing::info!("read nobodd's configuration from {}", file.display());
    }
    // Always in front, boards or not: a SIGHUP may bring boards that nobodd's files gained.
    let behind = directory_resolver
        .clone()
        .map(|dir| Box::new(dir) as Box<dyn Resolver>);
    let boards = Arc::new(BoardResolver::new(boards, behind)?);
    log_boards(&boards.boards());
    let resolver: Arc<dyn Resolver> = boards.clone();
    let serving = match &directory {
        Some(dir) => dir.display().to_string(),
        None => "boards".to_string(),
    };
    let (min, max) = (TIMEOUT_MIN.as_secs_f64(), TIMEOUT_MAX.as_secs_f64());
    if !(min..=max).contains(&cli.timeout) {
        bail!("--timeout must lie between {min} and {max} seconds");
    }
    let grace =
        Duration::try_from_secs_f64(cli.grace).context("--grace must be a number of seconds")?;

    let mut config = Config::default();
    config.shards = cli.shards.unwrap_or(0);
    config.limits = Limits {
        blksize_max: cli.blksize_max,
        windowsize_max: cli.windowsize_max,
        ..Limits::default()
    };
    config.transfer.rto_initial = Duration::from_secs_f64(cli.timeout);
    config.transfer.retries = cli.retries;
    config.max_transfers = cli.max_transfers.unwrap_or(config.max_transfers);
    config.max_per_client = cli.max_per_client.max(1);
    if let Some(mb) = cli.cache_mb {
        config.block_cache = mb.saturating_mul(1 << 20);
    }
    if let Some(mb) = cli.max_buffer_mb {
        config.buffer_max = usize::try_from(mb)
            .unwrap_or(usize::MAX)
            .saturating_mul(1 << 20);
    }
    config.port_range = cli.port_range;
    config.single_port = cli.single_port;
    config.mtu = cli.mtu;
    config.grace = grace;
    config.backend = match cli.backend {
        BackendArg::Auto => BackendChoice::Auto,
        BackendArg::IoUring => BackendChoice::IoUring,
        BackendArg::TokioUring => BackendChoice::TokioUring,
        BackendArg::Epoll => BackendChoice::Epoll,
    };
    if let Some((limit, source)) = daemon::memory::limit() {
        let given = daemon::memory::Given {
            // `--shards 0` is one per CPU, as if not given.
            shards: cli.shards.is_some_and(|n| n > 0),
            buffer: cli.max_buffer_mb.is_some(),
            cache: cli.cache_mb.is_some(),
        };
        daemon::memory::fit(&mut config, limit, &source, given);
    }
    raise_fd_limit(&mut config, cli.max_transfers.is_some());

    let signals = block_stop_signals();
    let server = match passed.len() {
        0 => bind(bind_addr, port, resolver.clone(), config)?,
        1 => {
            let socket = socket2::Socket::from(passed.into_iter().next().expect("one socket"));
            Server::adopt(socket, resolver.clone(), config)
                .context("cannot serve on the socket systemd passed (LISTEN_FDS)")?
        }
        n => bail!("systemd passed {n} sockets (LISTEN_FDS); ringtftpd serves one: give the .socket unit one ListenDatagram="),
    };
    // Held: nothing is answered before the switch to --user and the readiness notification.
    let handle = server.start_held().context("cannot start the shards")?;
    // Dropping `handle` on an error below stops the shards, having answered nothing.
    if let Some(addr) = cli.metrics {
        let bound = daemon::metrics::serve(addr, handle.metrics())?;
        tracing::info!(address = %bound, "metrics at http://{bound}/metrics");
    }
    if let Some(identity) = &identity {
        identity.assume()?;
        tracing::info!(
            user = %identity.spec,
            uid = identity.uid,
            gid = identity.gid,
            "running as {} (uid {}, gid {}) with no capabilities",
            identity.spec,
            identity.uid,
            identity.gid
        );
    }
    tracing::info!(
        directory = %serving,
        address = %handle.local_addr(),
        shards = handle.shards(),
        backend = %handle.backend(),
        "serving {} on {} with {} shard{} ({})",
        serving,
        handle.local_addr(),
        handle.shards(),
        if handle.shards() == 1 { "" } else { "s" },
        handle.backend(),
    );

    if let Some(notifier) = &notifier {
        let status = format!(
            "READY=1\nSTATUS=serving on {} with {} shards ({})",
            handle.local_addr(),
            handle.shards(),
            handle.backend()
        );
        if let Err(e) = notifier.notify(&status) {
            tracing::warn!(error = %e, "cannot tell systemd the service is ready");
        }
    }
    handle.release();

    let signal = wait_for_signal(&signals, || {
        if let Some(resolver) = &directory_resolver {
            reload(resolver, cli.map_file.as_deref(), &mut map);
        }
        reload_boards(&boards, &cli.boards, cli.nobodd_config);
    });
    tracing::info!(
        signal,
        "stopping: no new requests; waiting for running transfers"
    );
    if let Some(notifier) = &notifier {
        let _ = notifier.notify("STOPPING=1\nSTATUS=stopping: waiting for running transfers");
    }
    handle.stop();
    tracing::info!("stopped");
    Ok(())
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and every thread it starts afterwards, so
/// that [`wait_for_signal`] receives them synchronously (no handler, no self-pipe).
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set, then pthread_sigmask on the calling thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGINT or SIGTERM; each SIGHUP (`systemctl reload`, log rotation scripts) calls
/// `on_hangup` instead of killing the daemon.
fn wait_for_signal(set: &libc::sigset_t, mut on_hangup: impl FnMut()) -> &'static str {
    loop {
        let mut signal = 0;
        // SAFETY: sigwait on a set that every thread blocks.
        unsafe { while libc::sigwait(set, &mut signal) != 0 {} }
        match signal {
            libc::SIGINT => return "SIGINT",
            libc::SIGTERM => return "SIGTERM",
            _ => on_hangup(),
        }
    }
}

/// Reads and parses `--map-file`: its text and its rules.
fn load_map_file(file: &Path) -> Result<(String, Remap)> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the map file {}", file.display()))?;
    let rules = Remap::parse(&text).with_context(|| format!("bad map file {}", file.display()))?;
    Ok((text, rules))
}

/// SIGHUP: the served directory's path is looked up again and `--map-file` read again, for the
/// requests that come after; running transfers go on as they are. Says in the log what changed;
/// a map file that cannot be read or parsed leaves the rules in force as they were.
fn reload(resolver: &DirectoryResolver, map_file: Option<&Path>, map: &mut Option<String>) {
    let root = resolver.root().display();
    match resolver.reload() {
        Ok(true) => {
            tracing::info!("SIGHUP: {root} names a new directory: new requests are served from it")
        }
        Ok(false) => tracing::info!("SIGHUP: {root} names the directory already served"),
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: {root} names no directory: still serving the one it named")
        }
    }
    let Some(file) = map_file else { return };
    match load_map_file(file) {
        Ok((text, _)) if map.as_deref() == Some(text.as_str()) => {
            tracing::info!("SIGHUP: {} unchanged", file.display());
        }
        Ok((text, rules)) => {
            tracing::info!(
                rules = rules.len(),
                "SIGHUP: {} read again: {} rules now",
                file.display(),
                rules.len()
            );
            resolver.set_remap(Some(rules));
            *map = Some(text);
        }
        Err(e) => tracing::error!("SIGHUP: {e:#}; the rules in force stay as they were"),
    }
}

/// Whether options that shape the directory's names were given.
fn directory_options(cli: &Cli) -> bool {
    cli.client_dirs || cli.map_file.is_some()
}

/// Says which boards are served.
fn log_boards(boards: &[Board]) {
    for board in boards {
        tracing::info!(
            serial = format!("{:08x}", board.serial),
            image = %board.image.display(),
            partition = board.partition,
            ip = ?board.ip,
            "board {:08x}: partition {} of {}{}",
            board.serial,
            board.partition,
            board.image.display(),
            board.ip.map(|ip| format!(", to {ip} only")).unwrap_or_default()
        );
    }
}

/// SIGHUP: nobodd's configuration files are read again (with --nobodd-config) and every
/// board's image opened again (as `nobodd-tftpd` reloads, after `nobodd-prep` or an operator
/// added a board); a file or a board that cannot be read leaves the boards served as they
/// were. A changed `[tftp]` listen or port takes a restart.
fn reload_boards(resolver: &BoardResolver, given: &[Board], nobodd_config: bool) {
    let settings = match nobodd_config.then(daemon::nobodd::read).transpose() {
        Ok(settings) => settings.unwrap_or_default(),
        Err(e) => {
            tracing::error!("SIGHUP: {e:#}; the boards served stay as they were");
            return;
        }
    };
    let mut boards = settings.boards;
    boards.extend(given.iter().cloned());
    let before = resolver.boards();
    match resolver.set_boards(boards) {
        Ok(()) => {
            let after = resolver.boards();
            if after == before {
                tracing::info!(boards = after.len(), "SIGHUP: the boards are unchanged");
            } else {
                let n = after.len();
                let plural = if n == 1 { "" } else { "s" };
                tracing::info!(boards = n, "SIGHUP: {n} board{plural} now");
                log_boards(&after);
            }
        }
        Err(e) => tracing::error!("SIGHUP: {e}; the boards served stay as they were"),
    }
}

/// Binds the main sockets, turning the usual failures into advice.
fn bind(
    addr: Option<IpAddr>,
    port: u16,
    resolver: Arc<dyn Resolver>,
    config: Config,
) -> Result<Server> {
    let explain = |e: std::io::Error, addr: SocketAddr| -> anyhow::Error {
        match e.raw_os_error() {
            Some(libc::EADDRINUSE) => {
                anyhow::anyhow!("cannot listen on {addr}: the port is in use by another program")
            }
            Some(libc::EACCES) if port < 1024 => anyhow::anyhow!(
                "cannot listen on {addr}: ports below 1024 need root or the CAP_NET_BIND_SERVICE \
                 capability (setcap cap_net_bind_service=+ep ringtftpd)"
            ),
            Some(libc::EADDRNOTAVAIL) => {
                anyhow::anyhow!("cannot listen on {addr}: no interface has this address")
            }
            _ => anyhow::Error::new(e).context(format!("cannot listen on {addr}")),
        }
    };
    // All interfaces by default: one dual-stack socket, or IPv4 alone where IPv6 is disabled.
    let ip = addr.unwrap_or_else(|| {
        if ipv6_available() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    });
    let addr = SocketAddr::new(ip, port);
    Server::bind(addr, resolver, config).map_err(|e| explain(e, addr))
}

fn ipv6_available() -> bool {
    std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).is_ok()
}

fn parse_port(port: &str) -> Result<u16> {
    if let Ok(n) = port.parse::<u16>() {
        return Ok(n);
    }
    if port.bytes().all(|b| b.is_ascii_digit()) {
        bail!("port {port} is out of range (0-65535)");
    }
    service_port(port).with_context(|| format!("unknown port or service name: {port}"))
}

/// Looks a service name up in /etc/services (as getservbyname does, without its global state).
fn service_port(name: &str) -> Option<u16> {
    let services = std::fs::read_to_string("/etc/services").ok()?;
    services.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut fields = line.split_whitespace();
        let service = fields.next()?;
        let (port, proto) = fields.next()?.split_once('/')?;
        let aliases: Vec<&str> = fields.collect();
        (proto == "udp" && (service == name || aliases.contains(&name)))
            .then(|| port.parse().ok())
            .flatten()
    })
}

/// Where to listen: an address, or (nobodd's `--listen systemd`) the socket systemd passes.
#[derive(Debug, Clone, Copy)]
enum Listen {
    Address(IpAddr),
    Systemd,
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    match s {
        "systemd" => Ok(Listen::Systemd),
        _ => s
            .parse()
            .map(Listen::Address)
            .map_err(|_| format!("{s:?} is not an IP address")),
    }
}

fn parse_board(s: &str) -> Result<Board, String> {
    Board::parse(s)
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or("expected LO-HI, such as 40000-40999")?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("bad port {lo}"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("bad port {hi}"))?;
    if lo == 0 || lo > hi {
        return Err("expected 1 <= LO <= HI".into());
    }
    Ok((lo, hi))
}

/// Each transfer holds a socket (transfers of one file share its descriptor): raise the soft
/// descriptor limit to the hard one, which is the administrator's to set (systemd's
/// `LimitNOFILE=`, `ulimit -Hn`), and keep the default `--max-transfers` within it. An explicit
/// `--max-transfers` is kept; past the limit, requests get "Server busy" ERRORs.
fn raise_fd_limit(config: &mut Config, explicit: bool) {
    // Descriptors kept for everything but transfer sockets: the process's own (standard
    // streams, the signal and metrics threads), and per shard its main socket, its ring or its
    // epoll instance with an eventfd and a timer, and the files its transfers are reading
    // (shared by every transfer of one file; a storm reads few). A fixed reserve of 256 left a
    // server under `ulimit -n 256` one transfer at a time. A transfer of a file no other
    // transfer holds takes a second descriptor; where those run out, requests get "Server busy:
    // out of file descriptors" and running transfers go on.
    let shards = match config.shards {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let reserved = 32 + 8 * shards;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid rlimit structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    let fds = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    let fit = fds.saturating_sub(reserved).max(1);
    if config.max_transfers > fit {
        if explicit {
            tracing::warn!(
                fds,
                "--max-transfers {} is more than the descriptor limit (ulimit -n) allows; \
                 requests beyond it will be refused as busy",
                config.max_transfers
            );
        } else {
            tracing::warn!(
                fds,
                max_transfers = fit,
                "the descriptor limit (ulimit -n) allows only {fit} concurrent transfers"
            );
            config.max_transfers = fit;
        }
    }
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&cli.log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
