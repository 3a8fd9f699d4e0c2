//! The task-per-transfer executor, for the I/O that runs on a tokio runtime ([`Io`]):
//! tokio-uring ([`super::uring`]). A shard's loop reads its main socket
//! and hands each request to [`admit::decide`]; each transfer is a task that does what its
//! [`Session`] asks and feeds it what happens, in the order the session documents. It decides
//! nothing of its own.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::Socket;
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};

use super::admit::{self, Decision, Opening, Prepared};
use super::cache::{Budget, Chunk, ChunkCache, ChunkMemory, Lookup, Piece, CHUNK};
use super::ending::{Ending, ReadError, Refusal};
use super::pace::Pace;
use super::record;
use super::request;
use super::session::{Io as Next, Sent, Session};
use super::shared_port::SharedPort;
use super::socket::{self, MainSocket, RecvBatch};
use super::window::{chunk_len, read_custom, read_progress, Data, FileHandle, OpenFiles};
use super::Shared;
use crate::resolve::Layout;

/// Room for an ACK, or an ERROR with a message as long as RFC 1350's 512-byte packets allow;
/// longer datagrams are cut, which is harmless. Each transfer keeps one armed, so it is small.
const RECV_BUF: usize = 4 + 512;
/// A timer set this far ahead is not set.
const UNSET: Duration = Duration::from_secs(3600);

/// One shard's I/O as a transfer task uses it. Every operation takes and returns owned
/// buffers, because io_uring owns them while the kernel works on them.
pub(crate) trait Io: 'static {
    /// A transfer socket, connected to the client (or the shared main port).
    type Socket;
    /// An open file.
    type File: FileHandle;
    /// A buffer a chunk is read into.
    type Buf: ChunkMemory;

    /// Adopts a bound, connected, non-blocking socket.
    fn socket(&self, socket: std::net::UdpSocket) -> io::Result<Self::Socket>;
    /// A transfer's socket in single-port mode: the shard's main socket, shared.
    fn shared_port(&self, port: Rc<SharedPort>) -> Self::Socket;
    /// Adopts an open file.
    fn file(&self, file: std::fs::File) -> Self::File;
    /// A buffer of [`CHUNK`] bytes for file data: registered where the I/O has one spare.
    fn chunk_buffer(&self) -> Self::Buf;
    /// Receives one datagram. The future must be kept until it completes (never dropped
    /// early): with io_uring a dropped receive stays armed and swallows the next datagram.
    fn recv(
        socket: &Self::Socket,
        buf: Vec<u8>,
    ) -> impl Future<Output = (io::Result<usize>, Vec<u8>)>;
    /// A datagram the kernel already holds for the socket, without waiting.
    fn try_recv(socket: &Self::Socket, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Sends `pieces` as one message, cut into datagrams by GSO when `gso` (a socket of its
    /// own cuts every send at the size [`Io::enable_gso`] set).
    fn send(
        socket: &Self::Socket,
        pieces: Vec<Piece>,
        gso: bool,
    ) -> impl Future<Output = (io::Result<usize>, Vec<Piece>)>;
    /// Reads file bytes at `offset` into `buf[begin..end]`.
    fn read(
        file: &Self::File,
        buf: Self::Buf,
        begin: usize,
        end: usize,
        offset: u64,
    ) -> impl Future<Output = (io::Result<usize>, Self::Buf)>;
    /// Shuts the socket down so a receive still armed completes and releases it.
    fn close(socket: &Self::Socket);
    /// Has every send on `socket` cut into datagrams of `segment` bytes (UDP GSO); false where
    /// the kernel refuses.
    fn enable_gso(socket: &Self::Socket, segment: u16) -> bool;
}

/// A running transfer as its shard and its task share it.
struct Client<F> {
    session: RefCell<Session<F>>,
    /// Wakes the task when the shard gave its session something (a repeated request).
    wake: Notify,
    /// In single-port mode, the shared main socket the shard delivers its datagrams to.
    port: Option<Rc<SharedPort>>,
}

/// What a shard's transfers share.
struct State<I: Io> {
    io: I,
    /// Running transfers by client transfer ID: a repeated request reaches its transfer.
    active: RefCell<HashMap<SocketAddr, Rc<Client<I::File>>>>,
    /// Open files by identity, so concurrent transfers of one file share one descriptor.
    files: RefCell<OpenFiles<I::File>>,
    /// Transfers running on this shard, and a wake-up for when one ends (for a graceful stop).
    running: Cell<usize>,
    ended: Notify,
    /// Hot file chunks shared by this shard's transfers.
    cache: ChunkCache,
    /// The clients' round trips, a floor under every transfer's timeout.
    pace: RefCell<Pace>,
    budget: Arc<Budget>,
}

/// Serves shard requests from `socket` with `io` until `stop`, then lets running transfers
/// finish within the grace period.
pub(crate) async fn serve<I: Io>(
    io: I,
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
        io,
        active: RefCell::new(HashMap::new()),
        files: RefCell::new(OpenFiles::new()),
        running: Cell::new(0),
        ended: Notify::new(),
        cache: ChunkCache::new(shared.config.block_cache),
        pace: RefCell::new(Pace::new(Instant::now())),
        budget: shared.budget.clone(),
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
                        let at = (local, received.scope);
                        handle(&state, &shared, &main, received.peer, at, bytes, received.truncated);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "main socket receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
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
fn handle<I: Io>(
    state: &Rc<State<I>>,
    shared: &Arc<Shared>,
    main: &Rc<AsyncFd<MainSocket>>,
    peer: SocketAddr,
    (local, scope): (Option<IpAddr>, u32),
    bytes: &[u8],
    truncated: bool,
) {
    let repeat_of = |filename: &str| {
        state
            .active
            .borrow()
            .get(&peer)
            .is_some_and(|c| c.session.borrow().repeats(filename))
    };
    let decision = admit::decide(
        shared,
        peer,
        (local, scope),
        bytes,
        truncated,
        repeat_of,
        &state.cache,
    );
    match decision {
        Decision::Ignore => {}
        Decision::Repeat => {
            if let Some(client) = state.active.borrow().get(&peer) {
                client.session.borrow_mut().handle_repeat(Instant::now());
                client.wake.notify_one();
            }
        }
        Decision::Reject(refusal) => admit::reject(main.get_ref(), peer, local, &refusal),
        Decision::Start(prepared) => {
            // Single-port mode: a new request from the port of a running transfer the client
            // has answered ends that transfer (two cannot share one address on one port).
            if let Some(client) = state.active.borrow().get(&peer) {
                if client.port.is_some() {
                    client.session.borrow_mut().close(Ending::Replaced);
                    client.wake.notify_one();
                }
            }
            if let Err(refusal) = spawn(state, shared, main, *prepared) {
                admit::reject(main.get_ref(), peer, local, &refusal);
            }
        }
    }
}

/// Runs a prepared transfer as a task of this shard.
fn spawn<I: Io>(
    state: &Rc<State<I>>,
    shared: &Arc<Shared>,
    main: &Rc<AsyncFd<MainSocket>>,
    prepared: Prepared,
) -> Result<(), Refusal> {
    let (mut session, rest) =
        prepared.into_session(&mut state.files.borrow_mut(), |file| state.io.file(file));
    let Opening {
        socket,
        local,
        lease,
        slot,
    } = rest;
    let peer = session.meta().peer;
    let (sock, port) = match socket {
        Some(socket) => {
            let sock = state.io.socket(socket).map_err(|e| {
                tracing::warn!(%peer, error = %e, "cannot open a transfer socket");
                shared.counters.not_started();
                Refusal::Socket
            })?;
            (sock, None)
        }
        None => {
            let segment = session.gso_segment();
            let port = Rc::new(SharedPort::new(main.clone(), peer, local, segment));
            (state.io.shared_port(port.clone()), Some(port))
        }
    };
    if let Some(segment) = session.gso_segment() {
        session.set_gso(I::enable_gso(&sock, segment));
    }
    let client = Rc::new(Client {
        session: RefCell::new(session),
        wake: Notify::new(),
        port,
    });
    state.active.borrow_mut().insert(peer, client.clone());
    state.running.set(state.running.get() + 1);
    let state = state.clone();
    let shared = shared.clone();
    tokio::task::spawn_local(async move {
        let ending = run(&state, &client, sock).await;
        {
            let session = client.session.borrow();
            record::ended(&shared, session.meta(), session.transfer(), ending);
        }
        // A netascii encoding is freed with the transfer.
        drop(lease);
        let mut active = state.active.borrow_mut();
        // A newer transfer for the same client port may have taken the entry.
        if active.get(&peer).is_some_and(|c| Rc::ptr_eq(c, &client)) {
            active.remove(&peer);
        }
        drop(active);
        state.running.set(state.running.get() - 1);
        drop(slot);
        state.ended.notify_waiters();
    });
    Ok(())
}

/// Runs one transfer to its end: does what the session asks, then waits for a datagram, the
/// timer or the shard.
async fn run<I: Io>(state: &State<I>, client: &Client<I::File>, socket: I::Socket) -> Ending {
    let mut recv = pin!(I::recv(&socket, vec![0; RECV_BUF]));
    let mut timer = pin!(tokio::time::sleep(UNSET));
    let mut scratch = [0u8; RECV_BUF];
    let ending = 'transfer: loop {
        loop {
            let next = {
                let pace = state.pace.borrow();
                client.session.borrow_mut().poll_io(Instant::now(), &pace)
            };
            match next {
                None => break,
                Some(Next::Send(datagrams)) => {
                    let gso = datagrams.segment.is_some();
                    let (result, pieces) = I::send(&socket, datagrams.pieces, gso).await;
                    if let Err(e) = &result {
                        tracing::debug!(error = %e, "send failed");
                    }
                    client
                        .session
                        .borrow_mut()
                        .handle_sent(Sent::of(&result), pieces);
                }
                Some(Next::Read(index)) => {
                    let chunk = read(state, client, index).await;
                    client
                        .session
                        .borrow_mut()
                        .handle_read(Instant::now(), index, chunk);
                }
                Some(Next::Arm(at)) => timer.as_mut().reset(at.into()),
                Some(Next::Close(ending)) => break 'transfer ending,
            }
        }
        tokio::select! {
            biased;
            (result, buf) = &mut recv => {
                received(state, client, result.map(|n| &buf[..n.min(buf.len())]));
                recv.set(I::recv(&socket, buf));
            }
            () = &mut timer => {
                // Every datagram the kernel already holds goes in before the timer: a reply
                // that came while this task waited its turn is not a loss.
                if client.session.borrow().due(Instant::now()) {
                    drain::<I>(state, client, &socket, &mut scratch);
                }
                timer.as_mut().reset((Instant::now() + UNSET).into());
                client
                    .session
                    .borrow_mut()
                    .handle_timeout(Instant::now(), &mut state.pace.borrow_mut());
            }
            () = client.wake.notified() => {}
        }
    };
    // The receive may still be armed in the ring; shutting the socket down completes it, so
    // the socket and its port are released now rather than at the next stray datagram.
    I::close(&socket);
    ending
}

/// Feeds the session every datagram the socket already holds.
fn drain<I: Io>(state: &State<I>, client: &Client<I::File>, socket: &I::Socket, buf: &mut [u8]) {
    loop {
        match I::try_recv(socket, buf) {
            Ok(None) => return,
            Ok(Some(n)) => received(state, client, Ok(&buf[..n])),
            Err(e) => return received(state, client, Err(e)),
        }
    }
}

/// Feeds the session what a receive gave.
fn received<F: FileHandle>(state: &State<impl Io>, client: &Client<F>, got: io::Result<&[u8]>) {
    let mut session = client.session.borrow_mut();
    match got {
        Ok(datagram) => {
            session.handle_datagram(Instant::now(), datagram, &mut state.pace.borrow_mut())
        }
        // Linux reports a port-unreachable before the datagrams already queued: the session
        // counts them and believes the client gone only when nothing else comes back.
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => session.handle_refused(),
        Err(e) => tracing::debug!(error = %e, "receive failed"),
    }
}

/// Chunk `index` of the transfer's file: from the shard's cache, after another transfer's read
/// of it, or read here.
async fn read<I: Io>(
    state: &State<I>,
    client: &Client<I::File>,
    index: u64,
) -> Result<Rc<Chunk>, ReadError> {
    let (file, id, layout, len) = {
        let session = client.session.borrow();
        let len = session.transfer().len();
        match session.data() {
            Data::File(file, id, layout) => (file.clone(), *id, layout.clone(), len),
            Data::Custom(source) => {
                return read_custom(&state.budget, &**source, len, index).map(Rc::new)
            }
            // Bytes in memory are never read.
            Data::Memory(_) => return Err(ReadError::Failed),
        }
    };
    loop {
        match state.cache.lookup(id, index) {
            Lookup::Hit(chunk) => return Ok(chunk),
            Lookup::Wait(loading) => loading.wait().await,
            Lookup::Miss => {
                let chunk = read_chunk(state, &file, &layout, len, index)
                    .await
                    .map(Rc::new);
                match &chunk {
                    Ok(chunk) => state.cache.insert(id, index, chunk.clone()),
                    Err(_) => state.cache.abandon(id, index),
                }
                return chunk;
            }
        }
    }
}

/// Reads chunk `index` of a file of `len` bytes lying in `file` as `layout` says, however many
/// reads it takes (one per extent it crosses, in a disk image).
async fn read_chunk<I: Io>(
    state: &State<I>,
    file: &I::File,
    layout: &Layout,
    len: u64,
    index: u64,
) -> Result<Chunk, ReadError> {
    let want = chunk_len(len, index);
    let start = index * CHUNK as u64;
    let lease = state.budget.lease(CHUNK);
    let mut buf = state.io.chunk_buffer();
    let mut done = 0;
    while done < want {
        // Past the extents is a file that lost its bytes, like one that shrank.
        let Some((at, run)) = layout.place(start + done as u64, want - done) else {
            return Err(ReadError::Changed);
        };
        let (result, returned) = I::read(file, buf, done, done + run, at).await;
        buf = returned;
        done += read_progress(result)?;
    }
    Ok(Chunk::new(buf, want, lease))
}
