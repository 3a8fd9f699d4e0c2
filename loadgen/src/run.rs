//! The event loop: thousands of clients per thread over nonblocking sockets and epoll.
//!
//! Each worker thread owns a fixed table of client slots, one epoll instance and one timer
//! wheel. A slot holds one transfer at a time: a fresh UDP socket (a new TID, as a real client
//! has), registered level-triggered with the slot's index and generation as its epoll data, so a
//! late event for a socket already closed is recognised and dropped. When a transfer ends, its
//! socket is closed and the slot starts the next transfer at once, keeping `--clients` in flight
//! until the run's budget (`--transfers` or `--duration`) is spent.
//!
//! Why this shape: a thread per client would cost 10 000 stacks and a context switch per
//! packet; here a packet costs one `recvmmsg` (which also takes a whole window in one call),
//! one `sendto` for the ACK and a few hundred nanoseconds of state machine. Nothing is allocated
//! per packet: receive buffers belong to the worker (only one socket is read at a time), and the
//! RRQ is built once per run.
//!
//! Timers: all clients of a run share one timeout, so a hashed wheel with ticks of 1/512 of it
//! needs no ordering at all. Each live client has exactly one wheel entry; a packet only moves
//! the client's deadline forward (no wheel operation), and when its entry comes due before the
//! deadline it is filed again. So a packet costs no timer work, and a client costs at most one
//! wheel operation per timeout interval.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use ringtftp::options::BLKSIZE_DEFAULT;
use ringtftp::packet::Packet;

use crate::client::{emit_ack, Client, Config, Failure, Transmit};
use crate::report::{Live, Stats};

/// How a run is driven: where to, how many, for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server's request port.
    pub server: SocketAddr,
    /// Source addresses to bind clients to, round robin; empty lets the kernel choose.
    pub sources: Vec<IpAddr>,
    /// Transfers in flight at once, over all threads.
    pub clients: usize,
    /// Transfers to run in all; `None` runs until `duration`.
    pub transfers: Option<u64>,
    /// How long to keep starting transfers; those in flight then finish.
    pub duration: Option<Duration>,
    /// The hard limit on the whole run: transfers still running then are aborted.
    pub deadline: Duration,
    /// Worker threads, each with `clients / threads` clients.
    pub threads: usize,
    /// Probability of dropping each datagram received and each one to send (simulated loss).
    pub loss: f64,
    /// Seed of the loss simulation.
    pub seed: u64,
    /// How long to keep polling without sleeping after the last event (zero: never spin).
    pub spin: Duration,
    /// Receive windows with `UDP_GRO`: a server's GSO window arrives as one buffer.
    pub gro: bool,
}

/// Runs the plan: `threads` workers, while `tick` is called about once a second with the time
/// elapsed (for the progress line). Returns the merged statistics.
pub fn run(
    plan: &Plan,
    config: &Config,
    rrq: &[u8],
    live: &Live,
    mut tick: impl FnMut(Duration),
) -> Result<Stats> {
    let start = Instant::now();
    let stats = std::thread::scope(|scope| -> Result<Stats> {
        let threads = plan.threads.clamp(1, plan.clients.max(1));
        let mut workers = Vec::with_capacity(threads);
        for index in 0..threads {
            // Spread the clients evenly; the first threads take the remainder.
            let clients = plan.clients / threads + usize::from(index < plan.clients % threads);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("loadgen-{index}"))
                    .spawn_scoped(scope, move || {
                        Worker::new(plan, config, rrq, live, index, threads, clients)?.run(start)
                    })
                    .context("cannot start a worker thread")?,
            );
        }
        let mut next_tick = start + Duration::from_secs(1);
        while !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            let now = Instant::now();
            if now >= next_tick {
                tick(now - start);
                next_tick += Duration::from_secs(1);
            }
        }
        let mut total = Stats::new();
        for worker in workers {
            let stats = match worker.join() {
                Ok(result) => result?,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            total.merge(&stats);
        }
        Ok(total)
    })?;
    Ok(stats)
}

/// Raises the soft limit on open files to the hard limit (every client holds a socket) and
/// returns it.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and keeps no pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// One slot of a worker's client table.
struct Slot {
    /// The transfer's socket; `None` when the slot is free.
    socket: Option<OwnedFd>,
    /// Bumped each time the slot is reused, so stale epoll events and wheel entries are ignored.
    generation: u32,
    client: Option<Client>,
    /// The TID: the source of the first reply, to which the socket is then connected. Until
    /// then, replies may come from anyone.
    peer: Option<SocketAddr>,
}

/// One event-loop thread and everything it owns.
struct Worker<'a> {
    plan: &'a Plan,
    config: &'a Config,
    rrq: &'a [u8],
    live: &'a Live,
    epoll: OwnedFd,
    slots: Vec<Slot>,
    free: Vec<u32>,
    wheel: Wheel,
    batch: Batch,
    /// Netascii decoding room for one block.
    scratch: Vec<u8>,
    rng: Rng,
    server: RawAddr,
    /// The next source address to bind, as an index into `plan.sources`.
    source: usize,
    /// Threads in the run: the stride through `plan.sources`.
    stride: usize,
    /// `SO_RCVBUF` to ask for, when a window is larger than the default buffer holds.
    rcvbuf: Option<libc::c_int>,
    /// Whether sockets ask for `UDP_GRO`.
    gro: bool,
    launching: bool,
    active: usize,
    stats: Stats,
}

impl<'a> Worker<'a> {
    fn new(
        plan: &'a Plan,
        config: &'a Config,
        rrq: &'a [u8],
        live: &'a Live,
        index: usize,
        threads: usize,
        clients: usize,
    ) -> Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let blksize = usize::from(
            config
                .blksize
                .unwrap_or(BLKSIZE_DEFAULT)
                .max(BLKSIZE_DEFAULT),
        );
        let window = usize::from(config.windowsize.unwrap_or(1));
        // The kernel charges about a page-rounded skb per datagram against SO_RCVBUF; ask for
        // room for two windows when the default (about 208 KiB) would not hold one.
        let wanted = 2 * window * (blksize + 4 + 700).next_power_of_two();
        let rcvbuf =
            (wanted > 200 << 10).then(|| libc::c_int::try_from(wanted).unwrap_or(libc::c_int::MAX));
        // Lock-step transfers get one datagram per round trip: nothing to coalesce.
        let gro = plan.gro && window > 1;
        Ok(Self {
            plan,
            config,
            rrq,
            live,
            epoll,
            slots: (0..clients)
                .map(|_| Slot {
                    socket: None,
                    generation: 0,
                    client: None,
                    peer: None,
                })
                .collect(),
            free: (0..clients as u32).rev().collect(),
            wheel: Wheel::new(config.timeout, clients),
            batch: if gro {
                // A coalesced window is at most one maximal UDP datagram.
                Batch::new(GRO_BATCH, 1 << 16)
            } else {
                // One byte more than the largest block asked for, so a longer one shows as such.
                Batch::new(BATCH.min(window.max(4)), blksize + 4 + 1)
            },
            scratch: vec![0; blksize + 1],
            rng: Rng(plan.seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            server: RawAddr::new(plan.server),
            source: index,
            stride: threads,
            rcvbuf,
            gro,
            launching: true,
            active: 0,
            stats: Stats::new(),
        })
    }

    fn run(mut self, start: Instant) -> Result<Stats> {
        let launch_until = self.plan.duration.map(|d| start + d);
        let hard_deadline = start + self.plan.deadline;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut due = Vec::new();
        let mut now = Instant::now();
        self.refill(now)?;
        // When the loop last found nothing to do; `None` while events keep coming.
        let mut idle_since: Option<Instant> = None;
        while self.active > 0 {
            // Spin (poll without sleeping) for a while after the last event: waking a sleeping
            // thread costs tens of microseconds in a VM, more than a lock-step round trip.
            let spinning = idle_since.is_none_or(|t| now.duration_since(t) < self.plan.spin);
            let timeout_ms = if spinning && !self.plan.spin.is_zero() {
                0
            } else {
                self.wheel.tick_ms()
            };
            // SAFETY: `events` is a live buffer of `events.len()` entries for the kernel to fill.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    timeout_ms,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).context("epoll_wait");
            }
            now = Instant::now();
            if n == 0 {
                idle_since.get_or_insert(now);
            } else {
                idle_since = None;
            }
            for event in &events[..n as usize] {
                let data = event.u64;
                self.readable(data as u32, (data >> 32) as u32, now);
            }
            self.wheel.expire(now, &mut due);
            for (index, generation) in due.drain(..) {
                self.expired(index, generation, now);
            }
            if now >= hard_deadline {
                self.abort_all(now);
                break;
            }
            if launch_until.is_some_and(|until| now >= until) {
                self.launching = false;
            }
            self.refill(now)?;
        }
        // The loop ends in the iteration that finished the last transfer, so `now` is its end.
        self.stats.elapsed = now.saturating_duration_since(start);
        Ok(self.stats)
    }

    /// Starts transfers in free slots while the budget lasts.
    fn refill(&mut self, now: Instant) -> Result<()> {
        while self.launching {
            let Some(&index) = self.free.last() else {
                break;
            };
            if let Some(total) = self.plan.transfers {
                // The budget is shared by all workers; the counter may overshoot it by one per
                // worker, but a transfer only starts below it.
                if self.live.launched.fetch_add(1, Relaxed) >= total {
                    self.launching = false;
                    break;
                }
            } else {
                self.live.launched.fetch_add(1, Relaxed);
            }
            self.free.pop();
            self.start(index, now)?;
        }
        Ok(())
    }

    /// Starts one transfer in slot `index`: a fresh socket, the RRQ, a wheel entry.
    fn start(&mut self, index: u32, now: Instant) -> Result<()> {
        let config = self.config;
        let slot = &mut self.slots[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.peer = None;
        let mut client = Client::new(config, now);
        self.active += 1;
        self.live.active.fetch_add(1, Relaxed);
        self.stats.peak_active = self.stats.peak_active.max(self.active as u64);
        let source = if self.plan.sources.is_empty() {
            None
        } else {
            let s = self.plan.sources[self.source % self.plan.sources.len()];
            self.source = self.source.wrapping_add(self.stride);
            Some(s)
        };
        let data = u64::from(index) | u64::from(slot.generation) << 32;
        match open_socket(
            self.epoll.as_raw_fd(),
            self.plan.server,
            source,
            self.rcvbuf,
            self.gro,
            data,
        ) {
            Ok(fd) => slot.socket = Some(fd),
            Err(err) => match err.raw_os_error() {
                Some(libc::EMFILE | libc::ENFILE) => {
                    bail!("out of file descriptors: lower --clients ({err})")
                }
                // Every later transfer would fail the same way: say so once, and stop.
                Some(libc::EADDRNOTAVAIL) => {
                    let ip = source.map(|ip| ip.to_string()).unwrap_or_default();
                    bail!("cannot bind to source address {ip}: {err}")
                }
                errno => client.abort(now, Failure::Io(errno.unwrap_or(0))),
            },
        }
        slot.client = Some(client);
        self.flush(index, now);
        if !self.finish_if_done(index) {
            let generation = self.slots[index as usize].generation;
            self.wheel.insert(now + config.timeout, index, generation);
        }
        Ok(())
    }

    /// Drains a readable socket (a batch per `recvmmsg`) into its client.
    fn readable(&mut self, index: u32, generation: u32, now: Instant) {
        let Some(slot) = self.slots.get(index as usize) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        let Some(fd) = slot.socket.as_ref().map(AsRawFd::as_raw_fd) else {
            return;
        };
        loop {
            let n = match self.batch.receive(fd) {
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    let slot = &mut self.slots[index as usize];
                    if let Some(client) = slot.client.as_mut() {
                        client.abort(now, Failure::Io(err.raw_os_error().unwrap_or(0)));
                    }
                    self.finish_if_done(index);
                    return;
                }
            };
            for i in 0..n {
                let Some(from) = self.batch.source(i) else {
                    self.stats.stray_datagrams += 1;
                    continue;
                };
                if self.batch.truncated(i) && self.batch.gro_size(i).is_some() {
                    // A coalesced train longer than the buffer: its last datagram would look
                    // like a short block. (A single datagram cut short is passed on: the client
                    // sees a block longer than blksize and fails the transfer for it.)
                    self.stats.stray_datagrams += 1;
                    continue;
                }
                // The simulated loss of the first datagram is drawn before it can make a TID.
                let first_lost = self.plan.loss > 0.0 && self.rng.chance(self.plan.loss);
                let slot = &mut self.slots[index as usize];
                if first_lost && slot.peer.is_none() {
                    self.stats.dropped_in += 1;
                    continue;
                }
                match slot.peer {
                    // RFC 1350 §4: the first reply's source port is the server's TID.
                    None if !Client::is_first_reply(self.batch.segment(i, 0)) => {
                        self.stats.stray_datagrams += 1;
                        continue;
                    }
                    None => {
                        let raw = RawAddr::new(from);
                        // Connected, the socket reuses its route for every ACK (no lookup per
                        // send), the kernel drops other sources, and an ICMP "port unreachable"
                        // from a vanished server TID fails the transfer at once.
                        // SAFETY: `raw` is a valid socket address of the length given.
                        if unsafe { libc::connect(fd, raw.as_ptr(), raw.len) } != 0 {
                            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
                            if let Some(client) = slot.client.as_mut() {
                                client.abort(now, Failure::Io(errno));
                            }
                            self.finish_if_done(index);
                            return;
                        }
                        slot.peer = Some(from);
                    }
                    // RFC 1350 §4: a datagram from another TID is not part of this transfer.
                    Some(peer) if peer != from => {
                        self.stats.stray_datagrams += 1;
                        continue;
                    }
                    Some(_) => {}
                }
                // With UDP_GRO one receive may hold a whole window: one datagram per segment.
                let segments = self.batch.segments(i);
                if segments > 1 {
                    self.stats.coalesced += 1;
                }
                for j in 0..segments {
                    let lost = match j {
                        0 => first_lost,
                        _ => self.plan.loss > 0.0 && self.rng.chance(self.plan.loss),
                    };
                    if lost {
                        self.stats.dropped_in += 1;
                        continue;
                    }
                    let slot = &mut self.slots[index as usize];
                    if let Some(client) = slot.client.as_mut() {
                        let datagram = self.batch.segment(i, j);
                        client.handle_datagram(self.config, now, datagram, &mut self.scratch);
                        if let Some(Err(Failure::Error(code))) = client.outcome() {
                            if let Ok(Packet::Error { message, .. }) = Packet::parse(datagram) {
                                self.stats.note_error(code, message);
                            }
                        }
                    }
                    self.flush(index, now);
                    if self.finish_if_done(index) {
                        return;
                    }
                }
            }
            if n < self.batch.len() {
                // Fewer than asked for: the queue is empty, save the EAGAIN round trip.
                return;
            }
        }
    }

    /// A wheel entry came due: fire the client's timer, or file the entry again.
    fn expired(&mut self, index: u32, generation: u32, now: Instant) {
        let config = self.config;
        let slot = &mut self.slots[index as usize];
        if slot.generation != generation {
            return;
        }
        let Some(client) = slot.client.as_mut() else {
            return;
        };
        client.handle_timeout(config, now);
        let deadline = client.deadline();
        self.flush(index, now);
        if !self.finish_if_done(index) {
            self.wheel.insert(deadline, index, generation);
        }
    }

    /// Sends what the client has queued: the RRQ to the server's port, an ACK to the TID.
    fn flush(&mut self, index: u32, now: Instant) {
        let slot = &mut self.slots[index as usize];
        let (Some(client), Some(socket)) = (slot.client.as_mut(), slot.socket.as_ref()) else {
            return;
        };
        while let Some(transmit) = client.poll_transmit() {
            if self.plan.loss > 0.0 && self.rng.chance(self.plan.loss) {
                self.stats.dropped_out += 1;
                continue;
            }
            let mut ack = [0; 4];
            let (bytes, to) = match transmit {
                // Only before the first reply: once connected to the TID, the RRQ is never re-sent.
                Transmit::Rrq => (self.rrq, Some(&self.server)),
                Transmit::Ack(block) => {
                    let len = emit_ack(block, &mut ack);
                    // Connected to the TID once it is known: no address needed.
                    let to = if slot.peer.is_some() {
                        None
                    } else {
                        Some(&self.server)
                    };
                    (&ack[..len], to)
                }
            };
            let (addr, addr_len) = to.map_or((std::ptr::null(), 0), |a| (a.as_ptr(), a.len));
            // SAFETY: `bytes` and the address (if any) are live for the call; the kernel
            // copies them.
            let sent = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    addr,
                    addr_len,
                )
            };
            if sent < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    // A full socket buffer is a lost packet: the timer will re-send it.
                    Some(libc::EAGAIN | libc::ENOBUFS) => self.stats.send_drops += 1,
                    Some(libc::EINTR) => {}
                    errno => client.abort(now, Failure::Io(errno.unwrap_or(0))),
                }
            }
        }
    }

    /// If slot `index`'s transfer is over: records it, closes its socket and frees the slot.
    fn finish_if_done(&mut self, index: u32) -> bool {
        let slot = &mut self.slots[index as usize];
        let Some(client) = slot.client.as_ref() else {
            return false;
        };
        if client.outcome().is_none() {
            return false;
        }
        self.stats.record(client);
        self.live.record(client);
        self.live.active.fetch_sub(1, Relaxed);
        // Closing also removes the socket from the epoll set: it is the only reference.
        slot.socket = None;
        slot.client = None;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        self.active -= 1;
        true
    }

    /// The hard deadline passed: every transfer still running fails as aborted.
    fn abort_all(&mut self, now: Instant) {
        self.launching = false;
        for index in 0..self.slots.len() as u32 {
            if let Some(client) = self.slots[index as usize].client.as_mut() {
                client.abort(now, Failure::Aborted);
                self.finish_if_done(index);
            }
        }
    }
}

/// Opens a nonblocking UDP socket for one transfer, bound to `source` if given, and registers
/// it with `epoll` under `data`.
fn open_socket(
    epoll: RawFd,
    server: SocketAddr,
    source: Option<IpAddr>,
    rcvbuf: Option<libc::c_int>,
    gro: bool,
    data: u64,
) -> io::Result<OwnedFd> {
    let family = if server.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket takes no pointers; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; dropping closes it on error.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(size) = rcvbuf {
        // SAFETY: the option value is a live c_int of the length given. A refusal only leaves
        // the default buffer, so the result is ignored.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    if gro {
        let on: libc::c_int = 1;
        // SAFETY: as above. Kernels before 5.0 refuse it: then each datagram comes alone.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_UDP,
                UDP_GRO,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    if let Some(ip) = source {
        let addr = RawAddr::new(SocketAddr::new(ip, 0));
        // SAFETY: `addr` is a valid socket address of the length given, live for the call.
        if unsafe { libc::bind(fd, addr.as_ptr(), addr.len) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: data,
    };
    // SAFETY: `event` is live for the call; the kernel copies it.
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// A socket address in the kernel's layout, converted once and reused for every send.
#[derive(Clone, Copy)]
struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawAddr {
    fn new(addr: SocketAddr) -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (unspecified) value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for every sockaddr type.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin)
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above.
                unsafe {
                    std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6)
                };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        Self {
            storage,
            len: len as libc::socklen_t,
        }
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }
}

/// The address the kernel wrote into `storage`, if it is an IP one.
fn decode_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is aligned for it.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Receive buffers for one `recvmmsg`: a window's worth of datagrams and their sources.
///
/// The headers point into the buffers, which are allocated once and never move (boxed slices),
/// so the same headers serve every call.
struct Batch {
    buffers: Box<[u8]>,
    size: usize,
    names: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    /// Room for each datagram's `UDP_GRO` control message (its segment size).
    controls: Box<[[u64; CONTROL_WORDS]]>,
    headers: Box<[libc::mmsghdr]>,
}

/// Words of control-message room per datagram: one `cmsghdr` and an int, with room to spare.
const CONTROL_WORDS: usize = 8;

/// The most datagrams one `recvmmsg` takes: a window of 64 blocks (ringtftpd's default cap).
const BATCH: usize = 64;
/// Coalesced receives one `recvmmsg` takes with `UDP_GRO` (each up to 64 KiB).
const GRO_BATCH: usize = 16;
/// `UDP_GRO` from linux/udp.h: deliver a GSO train as one buffer, with its segment size.
const UDP_GRO: libc::c_int = 104;

impl Batch {
    fn new(count: usize, size: usize) -> Self {
        let mut buffers = vec![0u8; count * size].into_boxed_slice();
        // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
        let mut names: Box<[libc::sockaddr_storage]> =
            (0..count).map(|_| unsafe { std::mem::zeroed() }).collect();
        let mut iovecs: Box<[libc::iovec]> = buffers
            .chunks_exact_mut(size)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: size,
            })
            .collect();
        let mut controls: Box<[[u64; CONTROL_WORDS]]> = vec![[0; CONTROL_WORDS]; count].into();
        let headers = iovecs
            .iter_mut()
            .zip(names.iter_mut())
            .zip(controls.iter_mut())
            .map(|((iov, name), control)| {
                // SAFETY: mmsghdr is plain old data; all zeroes is valid, and the fields that
                // matter are set right below.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen =
                    std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = control.as_mut_ptr().cast();
                h
            })
            .collect();
        Self {
            buffers,
            size,
            names,
            iovecs,
            controls,
            headers,
        }
    }

    fn len(&self) -> usize {
        self.headers.len()
    }

    /// Receives up to [`len`](Self::len) datagrams from `fd` without blocking.
    fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        for h in self.headers.iter_mut() {
            // The kernel shrinks the name length to what it wrote; give the room back.
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = CONTROL_WORDS * 8;
        }
        debug_assert_eq!(self.iovecs.len(), self.headers.len());
        debug_assert_eq!(self.controls.len(), self.headers.len());
        // SAFETY: the headers point at `names` and `iovecs`, which point at `buffers`; all are
        // owned by `self`, never move, and outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                self.headers.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// The `i`th datagram of the last receive (cut to the buffer if it was longer): with
    /// `UDP_GRO`, several the server sent as one GSO window.
    fn datagram(&self, i: usize) -> &[u8] {
        let len = (self.headers[i].msg_len as usize).min(self.size);
        &self.buffers[i * self.size..i * self.size + len]
    }

    /// Whether the `i`th receive was longer than its buffer.
    fn truncated(&self, i: usize) -> bool {
        self.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
    }

    /// The segment size the kernel reported for the `i`th datagram (`UDP_GRO`), if any.
    fn gro_size(&self, i: usize) -> Option<usize> {
        let h = &self.headers[i].msg_hdr;
        // SAFETY: the header's control pointer and length describe `controls[i]`, which the
        // kernel filled; the CMSG macros stay within msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(h);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                    let size =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                    return usize::try_from(size).ok().filter(|&s| s > 0);
                }
                cmsg = libc::CMSG_NXTHDR(h, cmsg);
            }
        }
        None
    }

    /// How many datagrams the `i`th receive holds (at least one, even if empty).
    fn segments(&self, i: usize) -> usize {
        let len = self.datagram(i).len();
        match self.gro_size(i) {
            Some(size) => len.div_ceil(size).max(1),
            None => 1,
        }
    }

    /// Datagram `j` of the `i`th receive.
    fn segment(&self, i: usize, j: usize) -> &[u8] {
        let datagram = self.datagram(i);
        match self.gro_size(i) {
            Some(size) => {
                let start = (j * size).min(datagram.len());
                &datagram[start..(start + size).min(datagram.len())]
            }
            None => datagram,
        }
    }

    /// The source of the `i`th datagram of the last receive.
    fn source(&self, i: usize) -> Option<SocketAddr> {
        decode_addr(&self.names[i])
    }
}

/// A hashed timer wheel of (slot, generation) entries; see the module doc.
struct Wheel {
    base: Instant,
    tick: Duration,
    /// The last tick whose entries were handed out.
    current: u64,
    buckets: Vec<Vec<(u32, u32)>>,
}

impl Wheel {
    fn new(timeout: Duration, clients: usize) -> Self {
        // Timers fire at most a tick late: 1/512 of the timeout, but no finer than a
        // millisecond (epoll_wait's unit).
        let tick = (timeout / 512).max(Duration::from_millis(1));
        let len = (timeout.as_nanos() / tick.as_nanos()) as usize + 2;
        let per_bucket = clients / len + 1;
        Self {
            base: Instant::now(),
            tick,
            current: 0,
            buckets: (0..len).map(|_| Vec::with_capacity(per_bucket)).collect(),
        }
    }

    /// epoll_wait's timeout: one tick, in whole milliseconds.
    fn tick_ms(&self) -> libc::c_int {
        libc::c_int::try_from(self.tick.as_millis()).unwrap_or(libc::c_int::MAX)
    }

    fn tick_of(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.base).as_nanos() / self.tick.as_nanos()) as u64
    }

    /// Files an entry to come due at the first tick at or after `at` (at most a wheel's turn
    /// ahead: a later deadline is filed again when that entry comes due).
    fn insert(&mut self, at: Instant, index: u32, generation: u32) {
        let len = self.buckets.len() as u64;
        let tick = (self.tick_of(at) + 1).clamp(self.current + 1, self.current + len - 1);
        self.buckets[(tick % len) as usize].push((index, generation));
    }

    /// Moves every entry due by `now` into `due`.
    fn expire(&mut self, now: Instant, due: &mut Vec<(u32, u32)>) {
        let target = self.tick_of(now);
        let len = self.buckets.len() as u64;
        while self.current < target {
            self.current += 1;
            due.append(&mut self.buckets[(self.current % len) as usize]);
        }
    }
}

/// A seeded generator for the loss simulation (splitmix64: fast and good enough for coins).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests;
