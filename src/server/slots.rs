//! What the two executors that drive their sessions from one loop per shard — the io_uring
//! engine ([`super::ring`]) and the epoll engine ([`super::poll`]) — do alike: keep the
//! shard's transfers by slot and by client transfer ID ([`Slots`]), answer a datagram on the
//! main port ([`answer`]: a request, a repeat, or in single-port mode a datagram of a running
//! transfer), and fire the timers due ([`expire`]). How a transfer's socket is watched, and
//! how its sends and reads are carried out, is each executor's own.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::admit::{self, Decision, Prepared, Slot};
use super::cache::{ChunkCache, Lease};
use super::ending::Ending;
use super::pace::Pace;
use super::request;
use super::session::Session;
use super::socket::{self, MainSocket, Received, RecvBatch, Reply};
use super::timer::Wheel;
use super::window::OpenFiles;
use super::Shared;

/// A running transfer as an executor keeps it, as far as [`Slots`] needs to know.
pub(crate) trait Running {
    /// Which holder of its slot it is.
    fn gen(&self) -> u32;
    fn session(&self) -> &Session<std::fs::File>;
    fn session_mut(&mut self) -> &mut Session<std::fs::File>;
    /// Whether it waits in [`Slots::dirty`] for the next flush.
    fn dirty(&mut self) -> &mut bool;
    /// The tick of the timer entry it last armed (older entries are stale).
    fn timer_at(&mut self) -> &mut Option<u64>;
}

/// Implements [`Running`] for an executor's transfer type, from its fields `gen`, `session`,
/// `dirty` and `timer_at`.
macro_rules! running {
    ($conn:ty) => {
        impl $crate::server::slots::Running for $conn {
            fn gen(&self) -> u32 {
                self.gen
            }

            fn session(&self) -> &$crate::server::session::Session<std::fs::File> {
                &self.session
            }

            fn session_mut(&mut self) -> &mut $crate::server::session::Session<std::fs::File> {
                &mut self.session
            }

            fn dirty(&mut self) -> &mut bool {
                &mut self.dirty
            }

            fn timer_at(&mut self) -> &mut Option<u64> {
                &mut self.timer_at
            }
        }
    };
}
pub(crate) use running;

/// A shard's transfers: by slot, a generation telling a live transfer from an earlier holder
/// of the slot (an executor's completions and events name both), and by client transfer ID.
pub(crate) struct Slots<C> {
    conns: Vec<Option<Box<C>>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    /// Running transfers by client transfer ID: a repeated request reaches its transfer.
    active: HashMap<SocketAddr, (u32, u32)>,
    /// Transfers with something to send or to arm, for the next flush.
    pub(crate) dirty: Vec<u32>,
    pub(crate) running: usize,
    /// The transfers' retransmission timers.
    pub(crate) wheel: Wheel,
    expired: Vec<((u32, u32), u64)>,
    /// Generations are kept within this mask, to fit the executor's tags.
    gen_mask: u32,
}

impl<C: Running> Slots<C> {
    pub(crate) fn new(gen_mask: u32) -> Self {
        Slots {
            conns: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            active: HashMap::new(),
            dirty: Vec::new(),
            running: 0,
            wheel: Wheel::new(Instant::now()),
            expired: Vec::new(),
            gen_mask,
        }
    }

    /// A free slot and the generation of its next holder (give it to [`Slots::insert`], or
    /// back with [`Slots::cancel`]).
    pub(crate) fn open(&mut self) -> (u32, u32) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.conns.push(None);
                self.gens.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let gen = self.gens[slot as usize].wrapping_add(1) & self.gen_mask;
        self.gens[slot as usize] = gen;
        (slot, gen)
    }

    /// Gives back a slot opened for a transfer that could not start.
    pub(crate) fn cancel(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// Puts a new transfer for `peer` in the slot [`Slots::open`] gave, marked for a flush.
    pub(crate) fn insert(&mut self, slot: u32, peer: SocketAddr, mut conn: Box<C>) {
        self.active.insert(peer, (slot, conn.gen()));
        self.running += 1;
        self.mark(&mut conn, slot);
        self.conns[slot as usize] = Some(conn);
    }

    /// The transfer in `slot` if it is still generation `gen`, taken out of its slot (give it
    /// back with [`Slots::put`]).
    pub(crate) fn take(&mut self, slot: u32, gen: u32) -> Option<Box<C>> {
        let entry = self.conns.get_mut(slot as usize)?;
        if entry.as_ref().is_some_and(|c| c.gen() == gen) {
            entry.take()
        } else {
            None
        }
    }

    /// Whatever transfer is in `slot`, taken out of it.
    pub(crate) fn take_slot(&mut self, slot: u32) -> Option<Box<C>> {
        self.conns.get_mut(slot as usize)?.take()
    }

    pub(crate) fn put(&mut self, slot: u32, conn: Box<C>) {
        self.conns[slot as usize] = Some(conn);
    }

    /// Queues the transfer for the next flush.
    pub(crate) fn mark(&mut self, conn: &mut C, slot: u32) {
        if !*conn.dirty() {
            *conn.dirty() = true;
            self.dirty.push(slot);
        }
    }

    /// Frees the slot of an ended transfer, taken out of it: the next request from its client
    /// transfer ID is a new one. The caller logs the ending and drops the transfer.
    pub(crate) fn release(&mut self, slot: u32, conn: &C) {
        let peer = conn.session().meta().peer;
        if self.active.get(&peer) == Some(&(slot, conn.gen())) {
            self.active.remove(&peer);
        }
        self.running -= 1;
        self.free.push(slot);
    }

    /// The transfer in `slot`, left in place.
    pub(crate) fn get_mut(&mut self, slot: u32) -> Option<&mut C> {
        self.conns.get_mut(slot as usize)?.as_deref_mut()
    }

    /// Arms the transfer's timer for `at`; an entry armed before is stale from now on.
    pub(crate) fn arm(&mut self, conn: &mut C, slot: u32, at: Instant) {
        *conn.timer_at() = Some(self.wheel.insert(at, (slot, conn.gen())));
    }

    /// Fires the timers due: those set for before `due` (when the shard's last wait began,
    /// after every datagram that wait brought was handed in: see the executors' docs).
    pub(crate) fn expire(&mut self, due: Instant, pace: &mut Pace) {
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.expire(due, &mut expired);
        for &((slot, gen), tick) in &expired {
            let Some(mut conn) = self.take(slot, gen) else {
                continue;
            };
            // Only the entry the transfer last armed counts; older ones are stale.
            if *conn.timer_at() == Some(tick) {
                *conn.timer_at() = None;
                conn.session_mut().handle_timeout(due, pace);
                self.mark(&mut conn, slot);
            }
            self.put(slot, conn);
        }
        expired.clear();
        self.expired = expired;
    }

    /// Every transfer, taken out (the shard is stopping).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Box<C>> + '_ {
        self.conns.iter_mut().filter_map(Option::take)
    }

    /// Hands `bytes` to the transfer in `slot` (generation `gen`) and marks it.
    fn give(&mut self, (slot, gen): (u32, u32), bytes: &[u8], now: Instant, pace: &mut Pace) {
        if let Some(mut conn) = self.take(slot, gen) {
            conn.session_mut().handle_datagram(now, bytes, pace);
            self.mark(&mut conn, slot);
            self.put(slot, conn);
        }
    }

    /// Runs `f` on `peer`'s running transfer, if any, and marks it.
    fn with_peer(&mut self, peer: SocketAddr, f: impl FnOnce(&mut Session<std::fs::File>)) {
        if let Some(&(slot, gen)) = self.active.get(&peer) {
            if let Some(mut conn) = self.take(slot, gen) {
                f(conn.session_mut());
                self.mark(&mut conn, slot);
                self.put(slot, conn);
            }
        }
    }
}

/// A shard's main socket and what it takes of it.
pub(crate) struct MainPort {
    /// `None` once the shard stops taking requests (in single-port mode it stays, for the
    /// running transfers' datagrams).
    pub socket: Option<MainSocket>,
    /// The address it is bound to, for requests the kernel gave no destination for.
    pub ip: Option<IpAddr>,
    /// Every transfer answers from this socket, told apart by the client's address.
    pub single_port: bool,
    /// Whether new requests are taken (not once stopping).
    pub accepting: bool,
    /// More datagrams were waiting than one turn takes.
    pub more: bool,
    batch: Option<Box<RecvBatch>>,
}

impl MainPort {
    pub(crate) fn new(socket: MainSocket, single_port: bool) -> MainPort {
        MainPort {
            ip: socket.local_addr().map(|a| a.ip()).ok(),
            socket: Some(socket),
            single_port,
            accepting: true,
            more: false,
            batch: Some(Box::new(RecvBatch::new())),
        }
    }

    /// Stops taking requests; whether the socket was closed (it leaves the port's
    /// `SO_REUSEPORT` group), which it is unless in single-port mode.
    pub(crate) fn close(&mut self) -> bool {
        self.accepting = false;
        // Requests still waiting are not taken any more: nothing to come back for.
        self.more = false;
        !self.single_port && self.socket.take().is_some()
    }

    /// A batch of the datagrams waiting, or `None` (none waiting, or the socket closed).
    fn receive(&mut self) -> Option<Box<RecvBatch>> {
        let Some(mut batch) = self.batch.take() else {
            self.more = false;
            return None;
        };
        let received = match &self.socket {
            Some(socket) => socket.try_recv_batch(&mut batch),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        match received {
            Ok(_) => Some(batch),
            Err(e) => {
                if self.socket.is_some() && e.kind() != io::ErrorKind::WouldBlock {
                    tracing::warn!(error = %e, "main socket receive failed");
                }
                self.more = false;
                self.batch = Some(batch);
                None
            }
        }
    }
}

/// A shard that drives its sessions from one loop, as [`drain_main`] needs it.
pub(crate) trait Shard {
    type Conn: Running;
    /// The parts a datagram on the main port may touch, borrowed apart.
    fn parts(&mut self) -> Parts<'_, Self::Conn>;
    /// Starts a transfer admitted just now.
    fn start(&mut self, prepared: Box<Prepared>);
}

pub(crate) struct Parts<'a, C> {
    pub slots: &'a mut Slots<C>,
    pub main: &'a mut MainPort,
    pub pace: &'a mut Pace,
    pub shared: &'a Arc<Shared>,
    pub cache: &'a ChunkCache,
}

/// Takes the datagrams waiting on the shard's main socket, up to `batches` batches (the rest
/// wait for the shard's next turn, with [`MainPort::more`] set), and answers each in turn;
/// a transfer admitted starts before the next datagram is answered, so a repeat of its
/// request in the same batch is known as one.
pub(crate) fn drain_main<S: Shard>(shard: &mut S, batches: usize, now: Instant) {
    shard.parts().main.more = true;
    for _ in 0..batches {
        let Some(batch) = shard.parts().main.receive() else {
            return;
        };
        for (received, bytes) in batch.iter() {
            let parts = shard.parts();
            if let Some(prepared) = answer(parts, received, bytes, now) {
                shard.start(prepared);
            }
        }
        shard.parts().main.batch = Some(batch);
    }
}

/// Answers one datagram from the main port: hands it to a running transfer (single-port
/// mode), resends a repeated request's first reply, refuses a request, or gives back a
/// transfer to start now, before the next datagram is answered (so a repeat of it in the same
/// batch is known as one).
fn answer<C: Running>(
    parts: Parts<'_, C>,
    received: &Received,
    bytes: &[u8],
    now: Instant,
) -> Option<Box<Prepared>> {
    let Parts {
        slots,
        main: port,
        pace,
        shared,
        cache,
    } = parts;
    let peer = received.peer;
    if port.single_port {
        // A datagram that is not a request goes to the transfer of the client's address and
        // port; ACKs and ERRORs of no transfer (late ones, from a transfer just ended) are
        // dropped rather than answered.
        let owner = slots.active.get(&peer).copied();
        match (request::route(bytes, owner.is_some()), owner) {
            (request::Route::Admit, _) => {}
            (request::Route::Transfer, Some(owner)) => {
                slots.give(owner, bytes, now, pace);
                return None;
            }
            (_, _) => return None,
        }
    }
    if !port.accepting {
        return None;
    }
    let local = received.local.or(port.ip);
    let repeat_of = |filename: &str| {
        slots.active.get(&peer).is_some_and(|&(slot, gen)| {
            slots.conns[slot as usize]
                .as_deref()
                .is_some_and(|c| c.gen() == gen && c.session().repeats(filename))
        })
    };
    let decision = admit::decide(
        shared,
        peer,
        (local, received.scope),
        bytes,
        received.truncated,
        repeat_of,
        cache,
    );
    match decision {
        Decision::Ignore => None,
        Decision::Repeat => {
            slots.with_peer(peer, |session| session.handle_repeat(now));
            None
        }
        Decision::Reject(refusal) => {
            if let Some(main) = &port.socket {
                admit::reject(main, peer, local, &refusal);
            }
            None
        }
        Decision::Start(prepared) => {
            if port.single_port {
                // A new request from the port of a running transfer: that client has moved on
                // (it only asks again before it hears back, which is a repeat), and two
                // transfers cannot share one address on one port.
                slots.with_peer(peer, |session| session.close(Ending::Replaced));
            }
            Some(prepared)
        }
    }
}

/// Implements [`Shard`] for an executor with the fields `slots`, `main`, `pace`, `shared` and
/// `cache`, whose `start_transfer` starts a transfer.
macro_rules! shard {
    ($executor:ty, $conn:ty) => {
        impl $crate::server::slots::Shard for $executor {
            type Conn = $conn;

            fn parts(&mut self) -> $crate::server::slots::Parts<'_, $conn> {
                $crate::server::slots::Parts {
                    slots: &mut self.slots,
                    main: &mut self.main,
                    pace: &mut self.pace,
                    shared: &self.shared,
                    cache: &self.cache,
                }
            }

            fn start(&mut self, prepared: Box<$crate::server::admit::Prepared>) {
                self.start_transfer(prepared);
            }
        }
    };
}
pub(crate) use shard;

/// A transfer about to start, as both executors open it: its session (the file shared with
/// the shard's other transfers of it), GSO set up for the socket it sends from, and, in
/// single-port mode, where its datagrams from the main socket go.
pub(crate) struct Opened {
    pub session: Session<std::fs::File>,
    pub socket: Option<std::net::UdpSocket>,
    pub reply: Option<Reply>,
    /// A netascii encoding's place in the memory budget.
    pub lease: Option<Lease>,
    /// The transfer's place in the server's limits.
    pub slot: Slot,
}

/// Opens `prepared` for an executor whose main socket is IPv6 when `main_v6`.
pub(crate) fn open(
    prepared: Prepared,
    files: &mut OpenFiles<std::fs::File>,
    main_v6: bool,
) -> Opened {
    let (mut session, rest) = prepared.into_session(files, |file| file);
    let peer = session.meta().peer;
    let segment = session.gso_segment();
    let reply = match &rest.socket {
        Some(socket) => {
            if let Some(segment) = segment {
                session.set_gso(socket::enable_gso(socket.as_raw_fd(), segment));
            }
            None
        }
        // From the main socket, GSO is asked per send, by a control message.
        None => {
            session.set_gso(true);
            Some(Reply::new(peer, rest.local, main_v6, segment.unwrap_or(0)))
        }
    };
    Opened {
        session,
        socket: rest.socket,
        reply,
        lease: rest.lease,
        slot: rest.slot,
    }
}

/// Turns a shard more than this many in a row may put off its timers because its last wait
/// left events unseen: past this they fire anyway, so a flood cannot stall every transfer.
const STARVED_TURNS_MAX: u32 = 8;

/// How a shard's loop goes from one wait to the next, alike in both executors: how long it
/// waits, whether its timers may fire after a wait, and how a stop runs its course.
#[derive(Debug, Default)]
pub(crate) struct Turns {
    starved_turns: u32,
    /// When a stop gives up on the transfers still running.
    stopping: Option<Instant>,
}

impl Turns {
    /// How long the next wait may last: until the next timer is due, at most `idle` (so a stop
    /// is seen promptly), and not at all when the shard is `busy`.
    pub(crate) fn timeout(wheel: &Wheel, busy: bool, now: Instant, idle: Duration) -> Duration {
        match wheel.next_due() {
            _ if busy => Duration::ZERO,
            Some(at) => at.saturating_duration_since(now).min(idle),
            None => idle,
        }
    }

    /// Whether the timers may fire after a wait that left events unseen (`starved`): not for
    /// up to [`STARVED_TURNS_MAX`] turns in a row.
    pub(crate) fn timers(&mut self, starved: bool) -> bool {
        if starved && self.starved_turns < STARVED_TURNS_MAX {
            self.starved_turns += 1;
            return false;
        }
        self.starved_turns = 0;
        true
    }

    /// Whether the shard is done: stopping, and no transfer left or its grace period over.
    pub(crate) fn done(&self, running: usize) -> bool {
        let Some(deadline) = self.stopping else {
            return false;
        };
        if running > 0 && Instant::now() >= deadline {
            tracing::warn!(running, "grace period over; abandoning running transfers");
            return true;
        }
        running == 0
    }

    /// Whether a stop was asked just now; running transfers then have `grace` to finish.
    pub(crate) fn stop_asked(&mut self, stop: &watch::Receiver<bool>, grace: Duration) -> bool {
        if self.stopping.is_some() || matches!(stop.has_changed(), Ok(false)) {
            return false;
        }
        self.stopping = Some(Instant::now() + grace);
        true
    }
}
