//! One shard: a thread with its own runtime, its own main socket on the shared port, and every
//! transfer whose request that socket received. Shards share nothing on the data path; the
//! kernel's `SO_REUSEPORT` hash picks the shard for each client address and port.
//!
//! The main port takes requests only (RFC 1350 §4): an RRQ starts a transfer on a new port, a
//! repeated RRQ from the same client port tells the running transfer its first reply was lost,
//! a WRQ is refused (read-only), DATA/ACK/OACK get ERROR 4, and an ERROR is never answered
//! (RFC 1350 §7). Options are negotiated per RFC 2347–2349 and RFC 7440.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use socket2::Socket;
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};

use super::cache::{ChunkCache, Lease, CHUNK};
use super::driver::{self, Client, Context, End, Io, Meta};
use super::fallback::SharedPort;
use super::metrics::Refusal;
use super::request::{self, Admission, ErrorReply};
use super::socket::{self, MainSocket, RecvBatch};
use super::window::OpenFiles;
use super::{Backend, Shared};
use crate::netascii;
use crate::options::Negotiated;
use crate::packet::{self, ErrorCode, Mode, Options, Request};
use crate::resolve::{ResolveError, Source};
use crate::transfer::{Outcome, Transfer};

/// Runs shard `index` on the calling thread until the server stops; reports the backend it
/// chose through `ready` before serving: the io_uring engine ([`super::ring`]) where the kernel
/// allows it, else transfer tasks on epoll.
pub(crate) fn run(
    index: usize,
    socket: Socket,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Backend>,
) {
    super::metrics::enter_shard(index, shared.counters.clone());
    let mut socket = socket;
    if !shared.config.force_epoll {
        // RINGTFTP_BACKEND=tokio-uring selects the earlier tokio-uring data path, kept for
        // side-by-side measurement against the engine that drives the ring itself.
        let tokio_uring = !shared.config.single_port
            && std::env::var("RINGTFTP_BACKEND").is_ok_and(|v| v == "tokio-uring");
        let refused = if tokio_uring {
            match super::uring::runtime() {
                Ok(rt) => {
                    rt.block_on(async move {
                        let io = super::uring::Uring::new(index, shared.config.block_cache / CHUNK);
                        let _ = ready.send(Backend::IoUring {
                            registered_buffers: io.registered(),
                        });
                        let io = Rc::new(io);
                        serve(io.clone(), socket, shared, stop).await;
                        if io.spilled() > 0 {
                            tracing::debug!(
                                shard = index,
                                spilled = io.spilled(),
                                "heap buffers used when the registered pool ran dry"
                            );
                        }
                    });
                    return;
                }
                Err(e) => e,
            }
        } else {
            match super::ring::run(index, socket, shared.clone(), stop.clone(), ready.clone()) {
                Ok(()) => return,
                Err((e, back)) => {
                    socket = back;
                    e
                }
            }
        };
        if index == 0 {
            tracing::warn!(error = %refused, "io_uring is unavailable (seccomp, kernel.io_uring_disabled or an old kernel); serving with epoll");
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(shard = index, error = %e, "cannot create a runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    let _ = ready.send(Backend::Epoll);
    local.block_on(
        &rt,
        serve(Rc::new(super::fallback::Epoll), socket, shared, stop),
    );
}

/// The shard's view of its running transfers.
struct State<I: Io> {
    /// Clients with a running transfer: a repeated RRQ must not start a second one, but tells
    /// the running one that its first reply was lost.
    active: RefCell<HashMap<SocketAddr, Rc<Client>>>,
    /// Open files by identity, so concurrent transfers of one file share one descriptor.
    files: RefCell<OpenFiles<I::File>>,
    /// Transfers running on this shard, and a wake-up for when one ends (for a graceful stop).
    running: Cell<usize>,
    ended: Notify,
    /// Hot file blocks shared by this shard's transfers.
    cache: Rc<ChunkCache>,
    /// The clients' lag, learned from spurious timeouts.
    lag: Rc<RefCell<super::lag::Lag>>,
}

async fn serve<I: Io>(
    io: Rc<I>,
    socket: Socket,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let main = match MainSocket::new(socket).and_then(|m| {
        // SAFETY: the main socket owns its descriptor, which is neither closed nor replaced
        // while the AsyncFd holds it.
        unsafe {
            AsyncFd::register_with_interest(
                m,
                tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
            )
        }
        .map_err(std::io::Error::from)
    }) {
        Ok(main) => Rc::new(main),
        Err(e) => {
            tracing::error!(error = %e, "cannot register the main socket");
            return;
        }
    };
    let main_ip = main.get_ref().local_addr().map(|a| a.ip()).ok();
    let state = Rc::new(State {
        active: RefCell::new(HashMap::new()),
        files: RefCell::new(OpenFiles::new()),
        running: Cell::new(0),
        ended: Notify::new(),
        cache: Rc::new(ChunkCache::new(shared.config.block_cache)),
        lag: Rc::new(RefCell::new(
            super::lag::Lag::new(std::time::Instant::now()),
        )),
    });
    let mut batch = RecvBatch::new();
    let single_port = shared.config.single_port;
    loop {
        tokio::select! {
            result = socket::recv_batch(&main, &mut batch) => match result {
                Ok(_) => {
                    for (received, bytes) in batch.iter() {
                        if single_port && deliver(&state, received.peer, bytes) {
                            continue;
                        }
                        let local = received.local.or(main_ip);
                        handle(&io, &shared, &state, &main, received.peer, (local, received.scope), bytes, received.truncated);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "main socket receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    // Stop taking requests, then let running transfers finish within the grace period. In
    // single-port mode their datagrams still arrive on the main socket, so it is read on (new
    // requests are ignored); otherwise it is closed, leaving the port's SO_REUSEPORT group.
    let main = single_port.then_some(main);
    let deadline = tokio::time::Instant::now() + shared.config.grace;
    while state.running.get() > 0 {
        let receive = async {
            match &main {
                Some(main) => socket::recv_batch(main, &mut batch).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Ok(_) = receive => {
                for (received, bytes) in batch.iter() {
                    deliver(&state, received.peer, bytes);
                }
            }
            () = state.ended.notified() => {}
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(running = state.running.get(), "grace period over; abandoning running transfers");
                break;
            }
        }
    }
    let (hits, misses) = state.cache.counts();
    tracing::debug!(hits, misses, "chunk cache");
}

/// In single-port mode, hands a datagram that is not a request to the transfer of the client's
/// address and port; whether it was taken (ACKs and ERRORs of no transfer — late ones, from a
/// transfer just ended — are dropped rather than answered).
fn deliver<I: Io>(state: &State<I>, peer: SocketAddr, bytes: &[u8]) -> bool {
    let active = state.active.borrow();
    let port = active.get(&peer).and_then(|c| c.port.as_ref());
    match (request::route(bytes, port.is_some()), port) {
        (request::Route::Admit, _) => false,
        (request::Route::Transfer, Some(port)) => {
            port.deliver(bytes);
            true
        }
        (_, _) => true,
    }
}

/// Answers one datagram on the main port.
#[allow(clippy::too_many_arguments)]
fn handle<I: Io>(
    io: &Rc<I>,
    shared: &Arc<Shared>,
    state: &Rc<State<I>>,
    main: &Rc<AsyncFd<MainSocket>>,
    peer: SocketAddr,
    (local, scope): (Option<IpAddr>, u32),
    bytes: &[u8],
    truncated: bool,
) {
    let repeat_of = |peer: &SocketAddr, filename: &str| {
        state
            .active
            .borrow()
            .get(peer)
            .is_some_and(|c| !c.answered.get() && *c.filename == *filename)
    };
    let shed = || {
        state.cache.shed_idle();
    };
    match decide(
        shared,
        peer,
        (local, scope),
        bytes,
        truncated,
        repeat_of,
        shed,
    ) {
        Decision::Ignore => {}
        Decision::Repeat => {
            if let Some(client) = state.active.borrow().get(&peer) {
                client.repeat.notify_one();
            }
        }
        Decision::Reject(reply) => reject(main.get_ref(), peer, local, &reply),
        Decision::Start(prepared) => {
            // Single-port mode: a new request from the port of a running transfer the client
            // has answered ends that transfer (see the io_uring engine's `request`).
            if let Some(port) = state
                .active
                .borrow()
                .get(&peer)
                .and_then(|c| c.port.as_ref())
            {
                port.replace();
            }
            if let Err(reply) = spawn(io, shared, state, main, prepared) {
                reject(main.get_ref(), peer, local, &reply);
            }
        }
    }
}

/// Sends an ERROR from the main port; a full socket drops it (the client will ask again).
pub(crate) fn reject(
    main: &MainSocket,
    peer: SocketAddr,
    local: Option<IpAddr>,
    reply: &ErrorReply,
) {
    let mut buf = [0u8; 600];
    if let Ok(n) = packet::emit_error(reply.code, &reply.message, &mut buf) {
        if let Err(e) = main.send_to(&buf[..n], peer, local) {
            tracing::debug!(%peer, error = %e, "cannot send an ERROR");
        }
    }
}

/// What the main port does with one datagram.
pub(crate) enum Decision {
    /// Nothing: an ERROR, or a datagram too short to answer (RFC 1350 §7).
    Ignore,
    /// The client repeated the request of its running transfer: its first reply was lost.
    Repeat,
    /// Refuse with an ERROR from the main port.
    Reject(ErrorReply),
    /// A new transfer, resolved, negotiated and with its socket, ready to run.
    Start(Box<Prepared>),
}

/// A transfer admitted and ready to run on some backend.
pub(crate) struct Prepared {
    /// Bound to the address the request came to and connected to the client; `None` in
    /// single-port mode, where the transfer answers from the main socket.
    pub socket: Option<std::net::UdpSocket>,
    /// The address the request came to, where the kernel said.
    pub local: Option<IpAddr>,
    /// What to send (already encoded for netascii).
    pub source: Source,
    /// The netascii encoding's place in the memory budget, freed with the transfer.
    pub lease: Option<Lease>,
    pub transfer: Transfer,
    pub meta: Meta,
    /// The transfer's place in the server's limits, given back when dropped.
    pub slot: Slot,
}

/// Decides what to do with one datagram on the main port (RFC 1350 §4): `repeat_of` says
/// whether it repeats the request of a transfer still waiting for its client's first answer,
/// `shed` frees idle cached chunks before a request would be refused for memory. Every backend
/// comes through here, so requests are counted here for the metrics.
pub(crate) fn decide(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    (local, scope): (Option<IpAddr>, u32),
    bytes: &[u8],
    truncated: bool,
    repeat_of: impl FnOnce(&SocketAddr, &str) -> bool,
    shed: impl FnOnce(),
) -> Decision {
    // A server started held answers nothing until it is released (or stopped).
    if !shared.gate.pass() {
        return Decision::Ignore;
    }
    let decision = admit(
        shared,
        peer,
        (local, scope),
        bytes,
        truncated,
        repeat_of,
        shed,
    );
    // Requests only: a DATA or ACK on the main port (tftp-hpa ACKs the ERROR that ends a
    // refused request) is neither a request nor a refusal.
    if request::is_request(bytes) {
        let counters = &shared.counters;
        counters.request();
        match &decision {
            Decision::Ignore => {}
            Decision::Repeat => counters.repeated(),
            Decision::Reject(reply) => {
                counters.refused(Refusal::of(reply.code, &reply.message, BUSY_REASONS));
            }
            Decision::Start(_) => counters.started(),
        }
    }
    decision
}

/// The "busy" messages, by the cap that sent them.
const BUSY_REASONS: &[(&str, Refusal)] = &[
    (BUSY_TOTAL, Refusal::BusyMaxTransfers),
    (BUSY_CLIENT, Refusal::BusyMaxPerClient),
    (BUSY_MEMORY, Refusal::BusyMemory),
    (BUSY_FDS, Refusal::BusyDescriptors),
    (BUSY_PORTS, Refusal::BusyPorts),
];

/// [`decide`] before counting.
fn admit(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    (local, scope): (Option<IpAddr>, u32),
    bytes: &[u8],
    truncated: bool,
    repeat_of: impl FnOnce(&SocketAddr, &str) -> bool,
    shed: impl FnOnce(),
) -> Decision {
    let request = match request::admit(bytes, truncated, |filename| repeat_of(&peer, filename)) {
        Admission::New(request) => request,
        Admission::Repeat => {
            tracing::debug!(%peer, "repeated request");
            return Decision::Repeat;
        }
        Admission::Reject(reply) => {
            if request::is_request(bytes) {
                tracing::info!(%peer, code = reply.code.to_u16(), message = %reply.message, "request refused");
            } else {
                // Not a request at all (tftp-hpa ACKs the ERROR that ends a failed request):
                // worth a line only when debugging.
                tracing::debug!(%peer, code = reply.code.to_u16(), message = %reply.message, "datagram refused");
            }
            return Decision::Reject(reply);
        }
        Admission::Ignore => return Decision::Ignore,
    };
    if shared.budget.exceeded_by(CHUNK) {
        // Idle cached chunks give way before a request is refused.
        shed();
        if shared.budget.exceeded_by(CHUNK) {
            tracing::warn!(%peer, file = request.filename, held = shared.budget.used(), "file data in memory is at --max-buffer-mb; request refused");
            return Decision::Reject(ErrorReply::new(ErrorCode::Undefined, BUSY_MEMORY));
        }
    }
    let slot = match Slot::take(shared, peer.ip()) {
        Ok(slot) => slot,
        Err(busy) => return Decision::Reject(ErrorReply::new(ErrorCode::Undefined, busy)),
    };
    match prepare(shared, peer, (local, scope), &request, slot) {
        Ok(prepared) => Decision::Start(Box::new(prepared)),
        Err(reply) => {
            tracing::info!(%peer, file = request.filename, code = reply.code.to_u16(), message = %reply.message, "request refused");
            Decision::Reject(reply)
        }
    }
}

const BUSY_MEMORY: &str = "Server busy: out of memory for file data, try again later";
const BUSY_FDS: &str = "Server busy: out of file descriptors, try again later";

/// Whether an error says the process has no descriptor left.
fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

const BUSY_TOTAL: &str = "Server busy: too many transfers, try again later";
const BUSY_CLIENT: &str = "Server busy: too many transfers for this client";
const BUSY_PORTS: &str = "Server busy: no transfer port available";

/// Says once, at warning level, that a cap has started refusing requests and how to raise it;
/// later refusals go to the debug log, so a storm past the cap is not also a storm of log lines.
fn refusing(warned: &AtomicBool, client: IpAddr, flag: &str, cap: usize) {
    if !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(%client, cap, "{flag} reached: refusing requests as busy until transfers end (raise {flag} to let more in; said once)");
    } else {
        tracing::debug!(%client, cap, "{flag} reached: request refused");
    }
}

/// A transfer's place in the server-wide limits, given back when dropped.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    client: IpAddr,
}

impl Slot {
    /// Takes a place within `--max-transfers` and the per-client cap.
    fn take(shared: &Arc<Shared>, client: IpAddr) -> Result<Slot, &'static str> {
        if shared.running.fetch_add(1, Ordering::AcqRel) >= shared.config.max_transfers {
            shared.running.fetch_sub(1, Ordering::AcqRel);
            refusing(
                &shared.warned_total,
                client,
                "--max-transfers",
                shared.config.max_transfers,
            );
            return Err(BUSY_TOTAL);
        }
        // Requests are far rarer than packets, so one lock per request costs nothing on the
        // data path; it bounds what one address (or one forging it) can hold.
        let mut clients = shared.clients.lock().unwrap_or_else(|e| e.into_inner());
        let count = clients.entry(client).or_insert(0);
        if *count >= shared.config.max_per_client {
            drop(clients);
            shared.running.fetch_sub(1, Ordering::AcqRel);
            refusing(
                &shared.warned_per_client,
                client,
                "--max-per-client",
                shared.config.max_per_client,
            );
            return Err(BUSY_CLIENT);
        }
        *count += 1;
        Ok(Slot {
            shared: shared.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.running.fetch_sub(1, Ordering::AcqRel);
        let mut clients = self
            .shared
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = clients.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

/// Resolves and negotiates one RRQ and opens its transfer socket.
fn prepare(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    (local, scope): (Option<IpAddr>, u32),
    request: &Request<'_>,
    slot: Slot,
) -> Result<Prepared, ErrorReply> {
    let source = shared
        .resolver
        .resolve(request.filename, peer)
        .map_err(|e| match e {
            ResolveError::Io(ref io) if out_of_fds(io) => {
                tracing::warn!(%peer, "out of file descriptors (raise ulimit -n)");
                ErrorReply::new(ErrorCode::Undefined, BUSY_FDS)
            }
            e => e.into(),
        })?;
    let (source, lease) = match request.mode {
        Mode::Octet => (source, None),
        Mode::Netascii => {
            let (encoded, lease) = encode_netascii(&source, shared)?;
            (encoded, Some(lease))
        }
    };
    let len = source.len();
    // An empty file's size is left out of the OACK: RFC 2349 lets a server ignore `tsize`, and
    // curl (through 8.x) refuses an OACK that says `tsize 0`.
    let tsize = || (len > 0).then_some(len);
    // Blocks that fit the link the request came over (RFC 2348 lets the server grant less).
    let mut limits = shared.config.limits;
    if let Some(mtu) = shared.config.mtu.or_else(|| shared.mtus.of(scope)) {
        limits.blksize_max = limits
            .blksize_max
            .min(super::mtu::blksize_for(mtu, peer.ip()));
    }
    let negotiated =
        Negotiated::negotiate(&request.options, &limits, tsize).map_err(ErrorReply::from)?;
    let socket = if shared.config.single_port {
        None
    } else {
        Some(transfer_socket(shared, peer, (local, scope))?)
    };
    let meta = Meta {
        peer,
        filename: request.filename.into(),
        mode: request.mode,
        asked: asked(&request.options),
    };
    let transfer = Transfer::new(Instant::now(), negotiated, len, shared.config.transfer);
    tracing::debug!(%peer, file = request.filename, mode = request.mode.as_str(), ?negotiated, "transfer starting");
    Ok(Prepared {
        socket,
        local,
        source,
        lease,
        transfer,
        meta,
        slot,
    })
}

/// Opens a transfer's own socket: bound to the address the request came to, connected to the
/// client (RFC 1350 §4: the server's transfer ID).
fn transfer_socket(
    shared: &Shared,
    peer: SocketAddr,
    (local, scope): (Option<IpAddr>, u32),
) -> Result<std::net::UdpSocket, ErrorReply> {
    let local = local.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    let hint = shared.port_hint.fetch_add(1, Ordering::Relaxed);
    socket::bind_transfer(local, scope, peer, shared.ports, hint).map_err(|e| {
        tracing::warn!(%peer, error = %e, "cannot open a transfer socket");
        let message = if out_of_fds(&e) {
            BUSY_FDS
        } else if e.kind() == std::io::ErrorKind::AddrInUse {
            BUSY_PORTS
        } else {
            "Cannot open a transfer socket"
        };
        ErrorReply::new(ErrorCode::Undefined, message)
    })
}

/// Runs a prepared transfer as a task of this shard.
fn spawn<I: Io>(
    io: &Rc<I>,
    shared: &Arc<Shared>,
    state: &Rc<State<I>>,
    main: &Rc<AsyncFd<MainSocket>>,
    prepared: Box<Prepared>,
) -> Result<(), ErrorReply> {
    let Prepared {
        socket,
        local,
        source,
        lease,
        transfer: t,
        meta,
        slot,
    } = *prepared;
    let cannot = || {
        shared.counters.not_started();
        ErrorReply::new(ErrorCode::Undefined, "Cannot open a transfer socket")
    };
    let (sock, port) = match socket {
        Some(socket) => {
            let sock = io.socket(socket).map_err(|e| {
                tracing::warn!(peer = %meta.peer, error = %e, "cannot open a transfer socket");
                cannot()
            })?;
            (sock, None)
        }
        None => {
            let port = Rc::new(SharedPort::new(main.clone(), meta.peer, local));
            let sock = io.shared_port(port.clone()).ok_or_else(cannot)?;
            (sock, Some(port))
        }
    };
    let data = state.files.borrow_mut().data(source, |file| io.file(file));
    let client = Rc::new(Client {
        filename: meta.filename.clone(),
        repeat: Notify::new(),
        answered: Cell::new(false),
        port,
    });
    state.active.borrow_mut().insert(meta.peer, client.clone());
    state.running.set(state.running.get() + 1);
    let (io, state, budget) = (io.clone(), state.clone(), shared.budget.clone());
    tokio::task::spawn_local(async move {
        let cx = Context {
            io,
            cache: state.cache.clone(),
            budget: budget.clone(),
            client: client.clone(),
            lag: state.lag.clone(),
        };
        let (end, t) = driver::run(cx, sock, data, t).await;
        // A netascii encoding is freed with the transfer.
        drop(lease);
        log_end(&meta, &t, end);
        let mut active = state.active.borrow_mut();
        // A newer transfer for the same client port may have taken the entry.
        if active
            .get(&meta.peer)
            .is_some_and(|c| Rc::ptr_eq(c, &client))
        {
            active.remove(&meta.peer);
        }
        drop(active);
        state.running.set(state.running.get() - 1);
        drop(slot);
        state.ended.notify_waiters();
    });
    Ok(())
}

/// Reads a whole source and encodes it as netascii, so `tsize` is exact and blocks are cut
/// from the encoded stream; the encoding counts against the memory budget while it lives.
fn encode_netascii(source: &Source, shared: &Shared) -> Result<(Source, Lease), ErrorReply> {
    if source.len() > shared.config.netascii_max {
        return Err(ErrorReply::new(
            ErrorCode::DiskFull,
            "File too large for netascii mode",
        ));
    }
    // The raw bytes and their encoding (at most twice as long) are both in memory for a while.
    let len = source.len() as usize;
    if len.saturating_mul(3) > shared.config.buffer_max {
        // It would never fit: saying "busy" would have the client retry for ever.
        return Err(ErrorReply::new(
            ErrorCode::DiskFull,
            "File too large for netascii mode",
        ));
    }
    if shared.budget.exceeded_by(len.saturating_mul(3)) {
        return Err(ErrorReply::new(ErrorCode::Undefined, BUSY_MEMORY));
    }
    let mut raw = vec![0; len];
    let n = source
        .read_full_at(&mut raw, 0)
        .map_err(|_| ErrorReply::from(super::window::READ_FAILED))?;
    raw.truncate(n);
    let encoded = netascii::encode_to_vec(&raw);
    let lease = shared.budget.lease(encoded.len());
    Ok((Source::memory(encoded), lease))
}

/// The options a request asked for, as `name=value` pairs joined by commas (`-` for none) and
/// escaped (they are the peer's bytes), for the log line.
fn asked(options: &Options<'_>) -> Box<str> {
    let mut text = String::new();
    for (name, value) in options.iter() {
        if !text.is_empty() {
            text.push(',');
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        text.extend(name.escape_default());
        text.push('=');
        text.extend(String::from_utf8_lossy(value).escape_default());
    }
    if text.is_empty() {
        text.push('-');
    }
    text.into_boxed_str()
}

/// The one line per finished transfer (fbtftp's and pin/tftp's session record: the options
/// asked and granted, what was sent and resent, how long it took and how it ended), and its
/// count in the metrics. Every backend calls it.
pub(crate) fn log_end(meta: &Meta, t: &Transfer, end: End) {
    let stats = t.stats();
    let opts = t.options();
    let duration = stats.duration(Instant::now());
    super::metrics::with_counters(|c| c.ended(end, stats, duration));
    let secs = duration.as_secs_f64();
    let rate_kib = if secs > 0.0 {
        stats.bytes as f64 / 1024.0 / secs
    } else {
        0.0
    };
    let (outcome, code) = match end {
        End::Outcome(Outcome::Complete) => ("complete", None),
        End::Outcome(Outcome::Cancelled(code)) => ("client_error", Some(code.to_u16())),
        End::Outcome(Outcome::TimedOut) => ("timeout", None),
        End::Outcome(Outcome::Failed(code)) => ("failed", Some(code.to_u16())),
        End::Unreachable => ("unreachable", None),
        End::Replaced => ("replaced", None),
    };
    // The retransmission timeout the client fixed, or "adaptive".
    let timeout = match opts.timeout() {
        Some(fixed) => Cow::Owned(format!("{}ms", fixed.as_millis())),
        None => Cow::Borrowed("adaptive"),
    };
    macro_rules! line {
        ($level:ident, $msg:expr) => {
            tracing::$level!(
                peer = %meta.peer,
                file = %meta.filename,
                mode = %meta.mode.as_str(),
                asked = %meta.asked,
                blksize = opts.blksize().get(),
                windowsize = opts.windowsize().get(),
                timeout = %timeout,
                tsize = opts.tsize(),
                bytes = stats.bytes,
                blocks = stats.blocks,
                sent = stats.sent,
                retransmits = stats.retransmits,
                spurious = stats.spurious,
                ms = (secs * 1000.0) as u64,
                kib_per_s = rate_kib as u64,
                outcome,
                code,
                $msg
            )
        };
    }
    match end {
        End::Outcome(Outcome::Complete) => line!(info, "transfer complete"),
        // UEFI firmware ends its tsize probe this way before asking again: not a problem.
        End::Outcome(Outcome::Cancelled(_)) => line!(info, "transfer ended by the client"),
        End::Outcome(Outcome::TimedOut) => {
            line!(warn, "transfer timed out: the client went silent")
        }
        End::Outcome(Outcome::Failed(_)) => line!(warn, "transfer failed"),
        End::Unreachable => line!(warn, "transfer ended: the client's port is closed"),
        End::Replaced => line!(
            info,
            "transfer ended: the client asked again from the same port"
        ),
    }
}
