//! The server: shards, the per-transfer session (RFC 1350 §4–§6 as the server side runs them,
//! with RFC 2347–2349 and RFC 7440) and the executors that carry it out.
//!
//! Each transfer is a sans-IO `Session` (see `session.rs`): time and events go in, what to
//! send, read, arm or close comes out. A shard runs one executor, chosen by
//! [`Config::backend`]: the io_uring engine, tokio-uring or epoll; none of them decides
//! anything a session could.
//!
//! The Rust counterpart of nobodd's `TFTPBaseServer` (any [`Resolver`]) and `SimpleTFTPServer`
//! ([`serve_directory`]). [`Server::bind`] binds the port at once (so a port in use is an error
//! the caller sees), [`Server::start`] starts one shard per core, and the returned [`Handle`]
//! stops them and waits for running transfers.
//!
//! ```no_run
//! use ringtftp::server::{serve_directory, Config};
//!
//! let server = serve_directory("[::]:6969".parse()?, "/srv/tftp", Config::default())?;
//! println!("serving on {} with {}", server.local_addr(), server.backend());
//! server.wait();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// The sans-IO part: what a datagram on the main port asks for, how a request is refused and a
// transfer ends, the shard's pace, and one transfer as the server sees it.
mod ending;
mod pace;
mod request;
mod session;
// What sessions read from and send: file chunks and the pieces of datagrams.
mod cache;
mod window;
// The main port's decisions that need the server, and the record of each transfer.
mod admit;
mod metrics;
mod raspberrypi;
mod record;
// Sockets, and the executors that only do I/O.
mod mtu;
mod poll;
mod ring;
mod shard;
mod shared_port;
mod slots;
mod socket;
mod task;
mod timer;
mod uring;

/// The sans-IO session and what an executor hands it and gets back, for the simulation
/// (`crate::sim`), which executes sessions as the executors here do, against the core's client.
#[cfg(any(test, feature = "sim"))]
pub(crate) mod sans_io {
    pub(crate) use super::cache::{Budget, Chunk, ChunkMemory, Piece, CHUNK};
    pub(crate) use super::ending::{Ending, ReadError};
    pub(crate) use super::pace::Pace;
    pub(crate) use super::session::{Datagrams, Io, Meta, Sent, Session};
    pub(crate) use super::window::{Data, FileHandle};
}

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::options::Limits;
use crate::resolve::{DirectoryResolver, Resolver};
use crate::transfer;

pub use metrics::Metrics;

/// Server configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Shards (threads, each with its own main socket); 0 means one per CPU.
    pub shards: usize,
    /// Caps on negotiated options.
    pub limits: Limits,
    /// Retransmission settings.
    pub transfer: transfer::Config,
    /// Concurrent transfers across all shards; requests beyond get an ERROR.
    pub max_transfers: usize,
    /// Concurrent transfers per client address; requests beyond get an ERROR. This bounds
    /// what one host — or one forging its address — can hold.
    pub max_per_client: usize,
    /// Local ports for transfer sockets: `None` for ephemeral ports, or an inclusive range.
    pub port_range: Option<(u16, u16)>,
    /// Answer every transfer from the main port, told apart by the client's address and port
    /// (for NAT, container port mappings and load-balancer addresses, where replies from a
    /// fresh port never reach the client).
    pub single_port: bool,
    /// The link MTU that caps a granted `blksize` so each DATA datagram fits unfragmented;
    /// `None` reads the MTU of the interface each request arrived on.
    pub mtu: Option<u32>,
    /// How long a stop waits for running transfers.
    pub grace: Duration,
    /// The I/O backend every shard runs.
    pub backend: BackendChoice,
    /// Receive buffer of each main socket, in bytes.
    pub recv_buffer: usize,
    /// Receive buffers of 576 bytes each io_uring shard provides the kernel for datagrams
    /// taken between two waits (a power of two, 256 to 32768); fewer leave more to wait in
    /// the sockets.
    pub recv_ring: u16,
    /// The largest file served in netascii mode. It is read and encoded in memory on the
    /// shard's thread when the request arrives (about 10 ms for 16 MiB), so this bounds how
    /// long one request can hold up the shard's other transfers. netascii is for text: boot
    /// scripts and configuration files, far below this.
    pub netascii_max: u64,
    /// Bytes of hot file data each shard keeps for its transfers to share, in registered
    /// buffers (0: every transfer reads for itself).
    pub block_cache: usize,
    /// Bytes of file data all transfers together may hold in memory (chunks, cached or not,
    /// and netascii encodings) before new requests are refused with "Server busy". It is a
    /// soft bound: running transfers always get the chunks they need (a few each), so memory
    /// can go a little past it, but not grow with the number or variety of requests.
    /// Sources a custom resolver keeps in memory are the resolver's and not counted.
    pub buffer_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shards: 0,
            limits: Limits::default(),
            transfer: transfer::Config::default(),
            max_transfers: 16_384,
            max_per_client: 4096,
            port_range: None,
            single_port: false,
            mtu: None,
            grace: Duration::from_secs(10),
            backend: BackendChoice::Auto,
            recv_buffer: 8 << 20,
            recv_ring: 4096,
            netascii_max: 16 << 20,
            block_cache: 8 << 20,
            buffer_max: 256 << 20,
        }
    }
}

impl Config {
    /// The shards to run: `shards`, or one per CPU.
    fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.shards
        }
    }

    fn ports(&self) -> socket::Ports {
        match self.port_range {
            Some((lo, hi)) => socket::Ports::Range(lo.min(hi), lo.max(hi)),
            None => socket::Ports::Ephemeral,
        }
    }
}

/// Which I/O backend the shards run; each executes the same transfer sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BackendChoice {
    /// The io_uring engine where the kernel allows it, epoll elsewhere (one warning).
    #[default]
    Auto,
    /// The io_uring engine, which drives its own ring: multishot receives, provided buffers,
    /// registered files and buffers, batched submissions. Refuses to start without io_uring.
    IoUring,
    /// A task per transfer on tokio-uring's runtime, with registered buffers and fixed reads.
    /// Refuses to start without io_uring.
    TokioUring,
    /// The epoll engine: one loop per shard driving every session, what runs under a seccomp
    /// profile that blocks io_uring.
    Epoll,
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::IoUring => "io-uring",
            BackendChoice::TokioUring => "tokio-uring",
            BackendChoice::Epoll => "epoll",
        })
    }
}

/// The I/O backend a server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The io_uring engine, with or without registered block buffers.
    IoUring {
        /// Whether the block buffers are registered with the ring (fixed reads).
        registered_buffers: bool,
    },
    /// tokio-uring, with or without registered block buffers.
    TokioUring {
        /// Whether the block buffers are registered with the ring (fixed reads).
        registered_buffers: bool,
    },
    /// The epoll engine, chosen or where io_uring is unavailable.
    Epoll,
}

impl Backend {
    /// Whether block buffers are registered with a ring.
    pub fn registered_buffers(self) -> bool {
        match self {
            Backend::IoUring { registered_buffers }
            | Backend::TokioUring { registered_buffers } => registered_buffers,
            Backend::Epoll => false,
        }
    }

    /// Of two shards' backends, the one to report: the weakest.
    fn weakest(self, other: Backend) -> Backend {
        let rank = |b: Backend| match b {
            Backend::Epoll => 0,
            Backend::TokioUring { .. } => 1,
            Backend::IoUring { .. } => 2,
        };
        let weaker = if rank(other) < rank(self) {
            other
        } else {
            self
        };
        match weaker {
            Backend::IoUring { .. } => Backend::IoUring {
                registered_buffers: self.registered_buffers() && other.registered_buffers(),
            },
            Backend::TokioUring { .. } => Backend::TokioUring {
                registered_buffers: self.registered_buffers() && other.registered_buffers(),
            },
            Backend::Epoll => Backend::Epoll,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IoUring {
                registered_buffers: true,
            } => f.write_str("io_uring (registered buffers)"),
            Self::IoUring {
                registered_buffers: false,
            } => f.write_str("io_uring (unregistered buffers)"),
            Self::TokioUring {
                registered_buffers: true,
            } => f.write_str("tokio-uring (registered buffers)"),
            Self::TokioUring {
                registered_buffers: false,
            } => f.write_str("tokio-uring (unregistered buffers)"),
            Self::Epoll => f.write_str("epoll"),
        }
    }
}

/// What all shards share: nothing on the data path.
pub(crate) struct Shared {
    resolver: Box<dyn Resolver>,
    config: Config,
    /// Transfers running across shards, for `max_transfers`.
    running: AtomicUsize,
    /// Transfers running per client address, for `max_per_client`.
    clients: Mutex<HashMap<IpAddr, usize>>,
    /// Where the shards read one socket: the transfers not yet answered by their client, so
    /// a repeated request that reaches another shard is known as one.
    unanswered: Option<Arc<admit::Unanswered>>,
    /// Clients to answer without options: their OACK went unanswered.
    options_ignored: admit::OptionsIgnored,
    /// Spreads transfer sockets over `--port-range`.
    port_hint: AtomicU32,
    /// The effective ports policy.
    ports: socket::Ports,
    /// File data held in memory, for `buffer_max`.
    budget: Arc<cache::Budget>,
    /// Interface MTUs, for the `blksize` cap.
    mtus: mtu::Mtus,
    /// What the shards count, for [`Metrics`].
    counters: Arc<metrics::Counters>,
    /// Holds requests back until [`Handle::release`] when the server was started held.
    gate: Gate,
    /// Whether `max_transfers` and `max_per_client` have refused a request yet (said once).
    warned_total: AtomicBool,
    warned_per_client: AtomicBool,
}

/// A server bound to its port, not yet serving.
pub struct Server {
    sockets: Vec<socket2::Socket>,
    local: SocketAddr,
    shared: Arc<Shared>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local", &self.local)
            .field("shards", &self.sockets.len())
            .finish()
    }
}

impl Server {
    /// Binds one main socket per shard on `addr` and prepares to serve from `resolver`.
    ///
    /// `[::]` serves IPv4 and IPv6 alike. Port 0 picks a free port, shared by all shards.
    pub fn bind(addr: SocketAddr, resolver: impl Resolver, config: Config) -> io::Result<Server> {
        let shards = config.shard_count();
        let first = socket::bind_main(addr, config.recv_buffer)?;
        let local = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))?;
        let mut sockets = vec![first];
        for _ in 1..shards {
            sockets.push(socket::bind_main(local, config.recv_buffer)?);
        }
        Ok(Server::with_sockets(
            sockets, local, resolver, config, false,
        ))
    }

    /// Serves on a UDP socket bound by someone else, such as the one systemd passes to a
    /// socket-activated service.
    ///
    /// Where the socket has `SO_REUSEPORT` and this process may bind the same port (the same
    /// user that created the socket, and `CAP_NET_BIND_SERVICE` below 1024), the other shards
    /// each bind their own socket on its address, as [`Server::bind`] does. Elsewhere (systemd
    /// creates the socket as root and the service runs as another user) every shard reads the
    /// one socket passed: each request goes to exactly one shard, but to whichever is free
    /// rather than by the client's address, so the shards share a table of the transfers not
    /// yet answered, and a client's repeated request that reaches a shard other than its
    /// transfer's is known as a repeat there, never a second transfer (RFC 1350 §4). In
    /// single-port mode, where a transfer's ACKs arrive on that socket too, one shard serves
    /// instead.
    pub fn adopt(
        socket: impl Into<socket2::Socket>,
        resolver: impl Resolver,
        config: Config,
    ) -> io::Result<Server> {
        let shards = config.shard_count();
        let first = socket::adopt_main(socket.into(), config.recv_buffer)?;
        let local = first
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))?;
        let mut sockets = Vec::with_capacity(shards);
        if shards > 1 && socket::reuses_port(&first) {
            for _ in 1..shards {
                match socket::bind_main(local, config.recv_buffer) {
                    Ok(own) => sockets.push(own),
                    Err(e) => {
                        tracing::info!(error = %e, "cannot bind more sockets on the port passed (created by another user, or below 1024 without CAP_NET_BIND_SERVICE); every shard reads the one passed");
                        sockets.clear();
                        break;
                    }
                }
            }
        } else if shards > 1 {
            tracing::info!("the socket passed has no SO_REUSEPORT (ReusePort=yes in a .socket unit); every shard reads the one passed");
        }
        if sockets.is_empty() && config.single_port && shards > 1 {
            // A transfer's ACKs come to the main port too, and must reach its own shard.
            tracing::warn!(
                "single-port mode on a socket the shards cannot each join: serving with one shard"
            );
        }
        let shared_socket = sockets.is_empty() && !config.single_port && shards > 1;
        if shared_socket {
            for _ in 1..shards {
                sockets.push(first.try_clone()?);
            }
        }
        sockets.insert(0, first);
        Ok(Server::with_sockets(
            sockets,
            local,
            resolver,
            config,
            shared_socket,
        ))
    }

    fn with_sockets(
        sockets: Vec<socket2::Socket>,
        local: SocketAddr,
        resolver: impl Resolver,
        config: Config,
        shared_socket: bool,
    ) -> Server {
        let shards = sockets.len();
        let ports = config.ports();
        let mut config = config;
        config.shards = shards;
        // The shards' caches together may take at most half the budget of file data in memory,
        // so running transfers always have the other half.
        let cache_max = config.buffer_max / 2 / shards / cache::CHUNK * cache::CHUNK;
        if config.block_cache > cache_max {
            tracing::warn!(
                block_cache = config.block_cache,
                reduced_to = cache_max,
                "the chunk cache of {shards} shards would take over half the file-data budget; \
                 each shard's cache is reduced"
            );
            config.block_cache = cache_max;
        }
        Server {
            sockets,
            local,
            shared: Arc::new(Shared {
                resolver: Box::new(resolver),
                running: AtomicUsize::new(0),
                clients: Mutex::new(HashMap::new()),
                unanswered: shared_socket.then(Arc::default),
                options_ignored: admit::OptionsIgnored::default(),
                port_hint: AtomicU32::new(std::process::id()),
                ports,
                budget: cache::Budget::new(config.buffer_max),
                mtus: mtu::Mtus::new(),
                counters: Arc::new(metrics::Counters::new(shards)),
                gate: Gate::default(),
                warned_total: AtomicBool::new(false),
                warned_per_client: AtomicBool::new(false),
                config,
            }),
        }
    }

    /// The bound address (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Starts the shards; returns once each has chosen its backend.
    pub fn start(self) -> io::Result<Handle> {
        let handle = self.start_held()?;
        handle.release();
        Ok(handle)
    }

    /// Starts the shards as [`Server::start`] does, but holds every request back (queued on
    /// the port) until [`Handle::release`]: for what must happen between start-up and the
    /// first answer, such as giving up root (the shards open files as whoever the process is).
    /// Stopping a held server answers nothing.
    pub fn start_held(self) -> io::Result<Handle> {
        self.shared.gate.set(GateState::Held);
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for (index, socket) in self.sockets.into_iter().enumerate() {
            let shared = self.shared.clone();
            let stop_rx = stop_rx.clone();
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("shard-{index}"))
                .spawn(move || shard::run(index, socket, shared, stop_rx, ready))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut backend = None;
        for _ in 0..threads.len() {
            match ready_rx.recv() {
                // Report the weakest backend any shard runs.
                Ok(b) => backend = Some(backend.map_or(b, |a: Backend| a.weakest(b))),
                Err(_) => return Err(io::Error::other("a shard failed to start")),
            }
        }
        let backend = backend.unwrap_or(Backend::Epoll);
        self.shared.counters.set_backend(backend);
        Ok(Handle {
            gate: GateGuard(self.shared.clone()),
            stop,
            threads,
            local: self.local,
            backend,
            shards: self.shared.config.shards,
        })
    }
}

/// A running server.
///
/// Dropping it asks the server to stop (as [`Handle::stop`] does, without waiting), unless a
/// [`Stopper`] from [`Handle::stopper`] is still alive; keep it for as long as the server
/// should serve, and end with [`Handle::stop`] or [`Handle::wait`].
#[derive(Debug)]
pub struct Handle {
    gate: GateGuard,
    stop: watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
    local: SocketAddr,
    backend: Backend,
    shards: usize,
}

impl Handle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The I/O backend in use (the weakest across shards).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// How many shards serve.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The server's counters, for a Prometheus scrape ([`Metrics::encode`]); cheap to clone
    /// and to keep on another thread.
    pub fn metrics(&self) -> Metrics {
        Metrics::new(self.gate.0.clone())
    }

    /// Lets a server from [`Server::start_held`] answer requests, those queued first.
    pub fn release(&self) {
        self.gate.0.gate.set(GateState::Open);
    }

    /// A handle that can stop the server from elsewhere (a signal handler's thread).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone(), self.gate.0.clone())
    }

    /// Stops taking requests, lets running transfers finish within the grace period, and
    /// returns when every shard has ended.
    pub fn stop(self) {
        self.gate.0.gate.close_if_held();
        let _ = self.stop.send(true);
        self.wait();
    }

    /// Waits until the server stops (through a [`Stopper`]).
    pub fn wait(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// Stops a server from another thread; see [`Handle::stopper`].
#[derive(Clone)]
pub struct Stopper(watch::Sender<bool>, Arc<Shared>);

impl fmt::Debug for Stopper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Stopper").finish()
    }
}

impl Stopper {
    /// Asks the server to stop; [`Handle::wait`] returns once it has.
    pub fn stop(&self) {
        self.1.gate.close_if_held();
        let _ = self.0.send(true);
    }
}

/// Closes a gate still held when its [`Handle`] goes, so no shard waits on it for ever.
struct GateGuard(Arc<Shared>);

impl fmt::Debug for GateGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GateGuard").finish()
    }
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        self.0.gate.close_if_held();
    }
}

/// Whether the shards may answer requests yet ([`Server::start_held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateState {
    Held,
    Open,
    /// Stopped while held: requests are ignored.
    Closed,
}

/// A gate the shards pass once per request: one atomic load once open. Open unless
/// [`Server::start_held`] holds it.
#[derive(Debug)]
struct Gate {
    open: AtomicBool,
    state: Mutex<GateState>,
    changed: std::sync::Condvar,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            open: AtomicBool::new(true),
            state: Mutex::new(GateState::Open),
            changed: std::sync::Condvar::new(),
        }
    }
}

impl Gate {
    /// Waits while the gate is held; whether the request may be answered.
    fn pass(&self) -> bool {
        if self.open.load(Ordering::Acquire) {
            return true;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match *state {
                GateState::Held => {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
                GateState::Open => return true,
                GateState::Closed => return false,
            }
        }
    }

    fn set(&self, to: GateState) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = to;
        self.open.store(to == GateState::Open, Ordering::Release);
        self.changed.notify_all();
    }

    fn close_if_held(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state == GateState::Held {
            *state = GateState::Closed;
            self.changed.notify_all();
        }
    }
}

/// Serves the files under `root` on `addr`: nobodd's `SimpleTFTPServer` in one call.
pub fn serve_directory(
    addr: SocketAddr,
    root: impl AsRef<Path>,
    config: Config,
) -> io::Result<Handle> {
    let resolver = DirectoryResolver::new(root)?;
    Server::bind(addr, resolver, config)?.start()
}
