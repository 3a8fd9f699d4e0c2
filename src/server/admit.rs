//! The main port's decisions that need the server (RFC 1350 §4): after the pure first step
//! ([`super::request::admit`]), the server's limits, the file ([`Resolver`](crate::resolve::Resolver)), the options
//! (RFC 2347–2349, RFC 7440, capped by the link's MTU) and the transfer's own socket (the
//! server's transfer ID). Every executor comes through [`decide`], so requests are counted here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::cache::{ChunkCache, Lease, CHUNK};
use super::ending::{Busy, ErrorReply, Refusal};
use super::request::{self, Admission};
use super::session::{Meta, Session};
use super::socket::{self, MainSocket};
use super::window::{FileHandle, OpenFiles};
use super::Shared;
use crate::netascii;
use crate::options::Negotiated;
use crate::packet::{self, Mode, Options, Request};
use crate::resolve::{ResolveError, Source};
use crate::transfer::Transfer;

/// Sends a refusal's ERROR from the main port; a full socket drops it (the client will ask
/// again).
pub(crate) fn reject(
    main: &MainSocket,
    peer: SocketAddr,
    local: Option<IpAddr>,
    refusal: &Refusal,
) {
    let reply: ErrorReply = refusal.reply();
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
    Reject(Refusal),
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
    /// The first chunk's place in the memory budget until the transfer has it (see
    /// [`ChunkCache::reserve_first`]).
    pub first_chunk: Option<Rc<Lease>>,
    pub transfer: Transfer,
    pub meta: Meta,
    /// The transfer's place in the server's limits, given back when dropped.
    pub slot: Slot,
}

/// What is left of a [`Prepared`] transfer once its session is made.
pub(crate) struct Opening {
    pub socket: Option<std::net::UdpSocket>,
    pub local: Option<IpAddr>,
    pub lease: Option<Lease>,
    pub slot: Slot,
}

impl Prepared {
    /// The transfer's session, reading its file through `files` (one descriptor for all the
    /// shard's transfers of a file; `adopt` wraps one newly opened for the executor), told
    /// whether its client has answered and holding its first chunk's place; and what is left.
    pub(crate) fn into_session<F: FileHandle>(
        self,
        files: &mut OpenFiles<F>,
        adopt: impl FnOnce(std::fs::File) -> F,
    ) -> (Session<F>, Opening) {
        let Prepared {
            socket,
            local,
            source,
            lease,
            first_chunk,
            transfer,
            meta,
            slot,
        } = self;
        let data = files.data(source, adopt);
        let mut session = Session::new(meta, transfer, data);
        session.tell_answered(slot.answered());
        session.reserve_first_chunk(first_chunk);
        let rest = Opening {
            socket,
            local,
            lease,
            slot,
        };
        (session, rest)
    }
}

/// Decides what to do with one datagram on the main port (RFC 1350 §4): `repeat_of(filename)`
/// says whether it repeats the request of the sender's transfer still waiting for its client's
/// first answer; the shard's `cache` gives up its idle chunks before a request would be refused
/// for memory. Every executor comes through here, so requests are counted here for the
/// metrics.
pub(crate) fn decide(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    (local, scope): (Option<IpAddr>, u32),
    bytes: &[u8],
    truncated: bool,
    repeat_of: impl FnOnce(&str) -> bool,
    cache: &ChunkCache,
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
        cache,
    );
    // Requests only: a DATA or ACK on the main port (tftp-hpa ACKs the ERROR that ends a
    // refused request) is neither a request nor a refusal.
    if request::is_request(bytes) {
        let counters = &shared.counters;
        counters.request();
        match &decision {
            Decision::Ignore => {}
            Decision::Repeat => counters.repeated(),
            Decision::Reject(refusal) => counters.refused(refusal),
            Decision::Start(_) => counters.started(),
        }
    }
    decision
}

/// [`decide`] before counting.
fn admit(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    (local, scope): (Option<IpAddr>, u32),
    bytes: &[u8],
    truncated: bool,
    repeat_of: impl FnOnce(&str) -> bool,
    cache: &ChunkCache,
) -> Decision {
    let request = match request::admit(bytes, truncated, repeat_of) {
        Admission::New(request) => request,
        Admission::Repeat => {
            tracing::debug!(%peer, "repeated request");
            return Decision::Repeat;
        }
        Admission::Reject(refusal) => {
            let reply = refusal.reply();
            if request::is_request(bytes) {
                tracing::info!(%peer, code = reply.code.to_u16(), message = %reply.message, "request refused");
            } else {
                // Not a request at all (tftp-hpa ACKs the ERROR that ends a failed request):
                // worth a line only when debugging.
                tracing::debug!(%peer, code = reply.code.to_u16(), message = %reply.message, "datagram refused");
            }
            return Decision::Reject(refusal);
        }
        Admission::Ignore => return Decision::Ignore,
    };
    // Where the shards read one socket, the shard that has this client's transfer may be
    // another one.
    let claim = match &shared.unanswered {
        Some(unanswered) => match Unanswered::claim(unanswered, peer, request.filename) {
            Some(claim) => Some(claim),
            None => {
                tracing::debug!(%peer, "repeated request, reached another shard");
                return Decision::Repeat;
            }
        },
        None => None,
    };
    if shared.budget.exceeded_by(CHUNK) {
        // Idle cached chunks give way before a request is refused.
        cache.shed_idle();
        if shared.budget.exceeded_by(CHUNK) {
            tracing::warn!(%peer, file = request.filename, held = shared.budget.used(), "file data in memory is at --max-buffer-mb; request refused");
            return Decision::Reject(Refusal::Busy(Busy::Memory));
        }
    }
    let slot = match Slot::take(shared, peer.ip(), claim) {
        Ok(slot) => slot,
        Err(busy) => return Decision::Reject(Refusal::Busy(busy)),
    };
    match prepare(shared, peer, (local, scope), &request, slot) {
        Ok(mut prepared) => {
            if let Source::File(file) = &prepared.source {
                prepared.first_chunk = cache.reserve_first(&shared.budget, file.id());
            }
            Decision::Start(Box::new(prepared))
        }
        Err(refusal) => {
            let reply = refusal.reply();
            tracing::info!(%peer, file = request.filename, code = reply.code.to_u16(), message = %reply.message, "request refused");
            Decision::Reject(refusal)
        }
    }
}

/// Whether an error says the process has no descriptor left.
fn out_of_fds(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Says once, at warning level, that a cap has started refusing requests and how to raise it;
/// later refusals go to the debug log, so a storm past the cap is not also a storm of log lines.
fn refusing(warned: &AtomicBool, client: IpAddr, flag: &str, cap: usize) {
    if !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(%client, cap, "{flag} reached: refusing requests as busy until transfers end (raise {flag} to let more in; said once)");
    } else {
        tracing::debug!(%client, cap, "{flag} reached: request refused");
    }
}

/// The transfers whose client has not answered yet, by client transfer ID, for a server whose
/// shards read one socket: the kernel hands each datagram to whichever shard is free, so a
/// client's repeated request (RFC 1350 §4: it has heard nothing and asks again) can reach a
/// shard other than its transfer's, which must know it for a repeat. Taken once per request,
/// never on the data path.
#[derive(Default)]
pub(crate) struct Unanswered(Mutex<HashMap<SocketAddr, Waiting>>);

struct Waiting {
    filename: Box<str>,
    /// Set by the transfer's session at its client's first datagram.
    answered: Arc<AtomicBool>,
}

impl Unanswered {
    /// A place for a new transfer from `peer`, or `None` when the request repeats that of a
    /// transfer still waiting for this client. A transfer the client has answered, or one for
    /// another file, gives way: the client has moved on.
    fn claim(this: &Arc<Self>, peer: SocketAddr, filename: &str) -> Option<Claim> {
        let mut waiting = this.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = waiting.get(&peer) {
            if *w.filename == *filename && !w.answered.load(Ordering::Relaxed) {
                return None;
            }
        }
        let answered = Arc::new(AtomicBool::new(false));
        waiting.insert(
            peer,
            Waiting {
                filename: filename.into(),
                answered: answered.clone(),
            },
        );
        Some(Claim {
            table: this.clone(),
            peer,
            answered,
        })
    }
}

/// Clients whose OACKs went unanswered through every retry, by address and file: some hardware
/// asks for options it cannot take and never acknowledges the OACK (NVIDIA DGX firmware,
/// fbtftp issue 51), then asks again. RFC 2347 lets a server ignore options, so once a client's
/// OACK for a file has gone unanswered [`OptionsIgnored::AFTER`] times in a row, its requests
/// for that file are answered without them for [`OptionsIgnored::FOR`]: plain RFC 1350, which
/// such firmware reads. One lost OACK, a client that moved on to another port, or a single
/// forged request is not enough, and any OACK the client answers for the file clears it.
/// Bounded in entries; taken once per request.
#[derive(Default)]
pub(crate) struct OptionsIgnored(Mutex<HashMap<(IpAddr, Box<str>), Unanswers>>);

/// OACKs a client left unanswered in a row for one file, and until when that counts.
type Unanswers = (u8, Instant);

impl OptionsIgnored {
    /// Unanswered OACKs in a row before options are ignored.
    const AFTER: u8 = 2;
    /// How long a client is answered without options after that.
    const FOR: std::time::Duration = std::time::Duration::from_secs(600);
    /// Clients remembered at most.
    const MAX: usize = 4096;

    /// `client` never answered the OACK of its transfer of `filename`.
    pub(crate) fn unanswered(&self, client: IpAddr, filename: &str, now: Instant) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::MAX {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= Self::MAX {
                return;
            }
        }
        let entry = map
            .entry((client.to_canonical(), filename.into()))
            .or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now + Self::FOR;
    }

    /// `client` answered an OACK for `filename`: it takes options.
    pub(crate) fn answered(&self, client: IpAddr, filename: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !map.is_empty() {
            map.remove(&(client.to_canonical(), filename.into()));
        }
    }

    /// Whether `client`'s request for `filename` is to be answered without options.
    fn applies(&self, client: IpAddr, filename: &str, now: Instant) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        !map.is_empty()
            && map
                .get(&(client.to_canonical(), filename.into()))
                .is_some_and(|&(count, until)| count >= Self::AFTER && until > now)
    }
}

/// A transfer's entry in [`Unanswered`], removed when the transfer ends (or is never started).
pub(crate) struct Claim {
    table: Arc<Unanswered>,
    peer: SocketAddr,
    answered: Arc<AtomicBool>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut waiting = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        // A later transfer from the same port may have taken the entry over.
        if waiting
            .get(&self.peer)
            .is_some_and(|w| Arc::ptr_eq(&w.answered, &self.answered))
        {
            waiting.remove(&self.peer);
        }
    }
}

/// A transfer's place in the server-wide limits, given back when dropped.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    client: IpAddr,
    claim: Option<Claim>,
}

impl Slot {
    /// The flag the transfer's session sets when its client first answers, where the shards
    /// share one socket (see [`Unanswered`]).
    pub(crate) fn answered(&self) -> Option<Arc<AtomicBool>> {
        self.claim.as_ref().map(|c| c.answered.clone())
    }

    /// Takes a place within `--max-transfers` and the per-client cap.
    fn take(shared: &Arc<Shared>, client: IpAddr, claim: Option<Claim>) -> Result<Slot, Busy> {
        if shared.running.fetch_add(1, Ordering::AcqRel) >= shared.config.max_transfers {
            shared.running.fetch_sub(1, Ordering::AcqRel);
            refusing(
                &shared.warned_total,
                client,
                "--max-transfers",
                shared.config.max_transfers,
            );
            return Err(Busy::MaxTransfers);
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
            return Err(Busy::MaxPerClient);
        }
        *count += 1;
        Ok(Slot {
            shared: shared.clone(),
            client,
            claim,
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
) -> Result<Prepared, Refusal> {
    let source = shared
        .resolver
        .resolve(request.filename, peer)
        .map_err(|e| match e {
            ResolveError::Io(ref io) if out_of_fds(io) => {
                tracing::warn!(%peer, "out of file descriptors (raise ulimit -n)");
                Refusal::Busy(Busy::Descriptors)
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
    let no_options = Options::parse(&[]);
    let mut options = &request.options;
    if !options.is_empty()
        && shared
            .options_ignored
            .applies(peer.ip(), request.filename, Instant::now())
    {
        tracing::info!(%peer, file = request.filename, "answering without options: this client left its last OACK for this file unanswered");
        options = &no_options;
    }
    let negotiated = Negotiated::negotiate(options, &limits, tsize)?;
    if let Some(refusal) = super::raspberrypi::refusal(peer.ip(), len, negotiated.blksize().get()) {
        tracing::warn!(%peer, file = request.filename, "a Raspberry Pi whose bootloader cannot number more than 65535 blocks asked for a larger file: refused (serve it over HTTP or NFS)");
        return Err(refusal);
    }
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
        first_chunk: None,
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
) -> Result<std::net::UdpSocket, Refusal> {
    let local = local.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    let hint = shared.port_hint.fetch_add(1, Ordering::Relaxed);
    socket::bind_transfer(local, scope, peer, shared.ports, hint).map_err(|e| {
        tracing::warn!(%peer, error = %e, "cannot open a transfer socket");
        if out_of_fds(&e) {
            Refusal::Busy(Busy::Descriptors)
        } else if e.kind() == std::io::ErrorKind::AddrInUse {
            Refusal::Busy(Busy::Ports)
        } else {
            Refusal::Socket
        }
    })
}

/// Reads a whole source and encodes it as netascii, so `tsize` is exact and blocks are cut
/// from the encoded stream; the encoding counts against the memory budget while it lives.
fn encode_netascii(source: &Source, shared: &Shared) -> Result<(Source, Lease), Refusal> {
    if source.len() > shared.config.netascii_max {
        return Err(Refusal::TooLarge);
    }
    // The raw bytes and their encoding (at most twice as long) are both in memory for a while.
    let len = source.len() as usize;
    if len.saturating_mul(3) > shared.config.buffer_max {
        // It would never fit: saying "busy" would have the client retry for ever.
        return Err(Refusal::TooLarge);
    }
    if shared.budget.exceeded_by(len.saturating_mul(3)) {
        return Err(Refusal::Busy(Busy::Memory));
    }
    let mut raw = vec![0; len];
    let n = source
        .read_full_at(&mut raw, 0)
        .map_err(|_| Refusal::ReadFailed)?;
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
