//! The event loop: thousands of booting machines per thread over nonblocking sockets and epoll.
//!
//! Each worker thread owns a table of slots, one epoll instance and one timer wheel. A slot
//! holds one machine at a time, which runs the boot [`Sequence`] transfer by transfer (a
//! firmware's size probe and its download are two). Each transfer gets a fresh UDP socket (a new
//! TID, as a real client has), registered level-triggered with the slot's index and generation
//! as its epoll data, so a late event for a socket already closed is recognised and dropped.
//! Between transfers (a step's think time, edk2's pause after its probe) the machine holds no
//! socket, only a wheel entry.
//!
//! Machines arrive in one of two ways. With a fixed number in flight (`--clients`), a slot that
//! finishes a machine powers on the next at once, until the budget (`--transfers` or
//! `--duration`) is spent. With power-on waves (`--power-on`), machine `k` powers on at `k`
//! times the spacing after the start, whatever the others are doing, as a rack does; worker
//! `w` of `t` takes machines `w`, `w + t`, …, and its table grows as they arrive.
//!
//! Why this shape: a thread per client would cost 10 000 stacks and a context switch per
//! packet; here a packet costs one `recvmmsg` (which also takes a whole window in one call),
//! one `sendto` for the ACK and a few hundred nanoseconds of state machine. Nothing is allocated
//! per packet: receive buffers belong to the worker (only one socket is read at a time), and
//! every RRQ is built once per run.
//!
//! Timers: a hashed wheel with ticks of 1/512 of the shortest timeout needs no ordering at all.
//! Each live machine has exactly one wheel entry; a packet only moves the client's deadline
//! forward (no wheel operation), and when its entry comes due before the deadline it is filed
//! again. So a packet costs no timer work, and a client costs at most one wheel operation per
//! timeout interval.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use ringtftp::options::BLKSIZE_DEFAULT;
use ringtftp::packet::Packet;

use crate::client::{emit_refuse, Client, Failure, Transmit};
use crate::report::{Live, Span, Stats};
use crate::scenario::Sequence;

mod sys;
mod wheel;

pub use sys::raise_fd_limit;
use sys::{open_socket, Batch, RawAddr, BATCH, GRO_BATCH};
use wheel::{Rng, Wheel};

/// How a run is driven: where to, how many, for how long.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The server's request port.
    pub server: SocketAddr,
    /// Source addresses to bind clients to, round robin; empty lets the kernel choose.
    pub sources: Vec<IpAddr>,
    /// Machines in flight at once, over all threads (without `arrivals`).
    pub clients: usize,
    /// Machines to boot in all; `None` runs until `duration` (without `arrivals`).
    pub transfers: Option<u64>,
    /// How long to keep powering machines on; those in flight then finish.
    pub duration: Option<Duration>,
    /// Power-on waves instead of a fixed number in flight.
    pub arrivals: Option<Arrivals>,
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
    /// Keep every transfer's start and end, for `--hlog` and `--report`.
    pub timeline: bool,
}

/// Machines powered on one after another at a steady spacing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrivals {
    /// How many.
    pub machines: u64,
    /// Between one power-on and the next (over all workers).
    pub spacing: Duration,
}

/// Runs the plan: `threads` workers, while `tick` is called about once a second with the time
/// elapsed (for the progress line). Returns the merged statistics.
pub fn run(
    plan: &Plan,
    seq: &Sequence,
    live: &Live,
    mut tick: impl FnMut(Duration),
) -> Result<Stats> {
    let start = Instant::now();
    let stats = std::thread::scope(|scope| -> Result<Stats> {
        let most = match plan.arrivals {
            Some(a) => usize::try_from(a.machines).unwrap_or(usize::MAX),
            None => plan.clients,
        };
        let threads = plan.threads.clamp(1, most.max(1));
        let mut workers = Vec::with_capacity(threads);
        for index in 0..threads {
            // Spread the clients evenly; the first threads take the remainder.
            let clients = match plan.arrivals {
                Some(_) => 0,
                None => plan.clients / threads + usize::from(index < plan.clients % threads),
            };
            workers.push(
                std::thread::Builder::new()
                    .name(format!("loadgen-{index}"))
                    .spawn_scoped(scope, move || {
                        Worker::new(plan, seq, live, index, threads, clients, start)?.run()
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

/// One slot of a worker's table.
struct Slot {
    /// The transfer's socket; `None` between transfers and when the slot is free.
    socket: Option<OwnedFd>,
    /// Bumped each time a transfer ends, so stale epoll events and wheel entries are ignored.
    generation: u32,
    client: Option<Client>,
    /// The TID: the source of the first reply, to which the socket is then connected. Until
    /// then, replies may come from anyone.
    peer: Option<SocketAddr>,
    /// The machine booting in this slot; `None` when the slot is free.
    machine: Option<Machine>,
}

/// A machine on its way through the boot sequence.
#[derive(Debug, Clone, Copy)]
struct Machine {
    /// When it was powered on.
    powered: Instant,
    /// The transfer it is at, as an index into the sequence's legs.
    leg: usize,
    /// Waiting until then before that transfer's RRQ (a think time, a probe's gap).
    waiting: Option<Instant>,
}

/// One event-loop thread and everything it owns.
struct Worker<'a> {
    plan: &'a Plan,
    seq: &'a Sequence,
    live: &'a Live,
    start: Instant,
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
    /// Threads in the run: the stride through `plan.sources` and the arrivals.
    stride: usize,
    /// The next machine of this worker to power on, with `plan.arrivals`.
    next_arrival: u64,
    /// `SO_RCVBUF` to ask for, when a window is larger than the default buffer holds.
    rcvbuf: Option<libc::c_int>,
    /// Whether sockets ask for `UDP_GRO`.
    gro: bool,
    launching: bool,
    /// Machines in flight.
    active: usize,
    /// A failure that ends the run (out of descriptors, a source address that cannot be bound).
    fatal: Option<anyhow::Error>,
    stats: Stats,
}

impl<'a> Worker<'a> {
    fn new(
        plan: &'a Plan,
        seq: &'a Sequence,
        live: &'a Live,
        index: usize,
        threads: usize,
        clients: usize,
        start: Instant,
    ) -> Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let (blksize, window) = seq.max_blksize_window();
        let blksize = usize::from(blksize.max(BLKSIZE_DEFAULT));
        let window = usize::from(window);
        // The kernel charges about a page-rounded skb per datagram against SO_RCVBUF; ask for
        // room for two windows when the default (about 208 KiB) would not hold one.
        let wanted = 2 * window * (blksize + 4 + 700).next_power_of_two();
        let rcvbuf =
            (wanted > 200 << 10).then(|| libc::c_int::try_from(wanted).unwrap_or(libc::c_int::MAX));
        // Lock-step transfers get one datagram per round trip: nothing to coalesce.
        let gro = plan.gro && window > 1;
        let mut stats = Stats::new();
        if plan.timeline {
            stats.spans = Some(Vec::new());
        }
        Ok(Self {
            plan,
            seq,
            live,
            start,
            epoll,
            slots: (0..clients).map(|_| Slot::new()).collect(),
            free: (0..clients as u32).rev().collect(),
            wheel: Wheel::new(seq.min_timeout(), clients.max(64)),
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
            next_arrival: index as u64,
            rcvbuf,
            gro,
            launching: true,
            active: 0,
            fatal: None,
            stats,
        })
    }

    fn run(mut self) -> Result<Stats> {
        let start = self.start;
        let launch_until = self.plan.duration.map(|d| start + d);
        let hard_deadline = start + self.plan.deadline;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut due = Vec::new();
        let mut now = Instant::now();
        self.refill(now);
        // When the loop last found nothing to do; `None` while events keep coming.
        let mut idle_since: Option<Instant> = None;
        while self.active > 0 || self.arrivals_pending() {
            if let Some(fatal) = self.fatal.take() {
                return Err(fatal);
            }
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
            self.refill(now);
        }
        if let Some(fatal) = self.fatal.take() {
            return Err(fatal);
        }
        // The loop ends in the iteration that finished the last transfer, so `now` is its end.
        self.stats.elapsed = now.saturating_duration_since(start);
        Ok(self.stats)
    }

    /// Whether machines of this worker are still to be powered on (power-on waves).
    fn arrivals_pending(&self) -> bool {
        self.launching
            && self
                .plan
                .arrivals
                .is_some_and(|a| self.next_arrival < a.machines)
    }

    /// Powers machines on: in free slots while the budget lasts, or as their power-on time
    /// comes in waves.
    fn refill(&mut self, now: Instant) {
        if let Some(arrivals) = self.plan.arrivals {
            while self.launching && self.next_arrival < arrivals.machines {
                let at = self.start
                    + arrivals
                        .spacing
                        .saturating_mul(u32::try_from(self.next_arrival).unwrap_or(u32::MAX));
                if at > now {
                    break;
                }
                self.next_arrival += self.stride as u64;
                self.live.launched.fetch_add(1, Relaxed);
                let index = match self.free.pop() {
                    Some(index) => index,
                    None => {
                        self.slots.push(Slot::new());
                        (self.slots.len() - 1) as u32
                    }
                };
                self.power_on(index, now);
            }
            return;
        }
        while self.launching {
            let Some(&index) = self.free.last() else {
                break;
            };
            if let Some(total) = self.plan.transfers {
                // The budget is shared by all workers; the counter may overshoot it by one per
                // worker, but a machine only starts below it.
                if self.live.launched.fetch_add(1, Relaxed) >= total {
                    self.launching = false;
                    break;
                }
            } else {
                self.live.launched.fetch_add(1, Relaxed);
            }
            self.free.pop();
            self.power_on(index, now);
        }
    }

    /// Starts a machine's boot in slot `index`.
    fn power_on(&mut self, index: u32, now: Instant) {
        self.slots[index as usize].machine = Some(Machine {
            powered: now,
            leg: 0,
            waiting: None,
        });
        self.active += 1;
        self.live.active.fetch_add(1, Relaxed);
        self.stats.peak_active = self.stats.peak_active.max(self.active as u64);
        self.next_leg(index, now);
    }

    /// Starts the machine's current transfer, or files its pause before it.
    fn next_leg(&mut self, index: u32, now: Instant) {
        let slot = &mut self.slots[index as usize];
        let Some(machine) = slot.machine.as_mut() else {
            return;
        };
        let delay = self.seq.legs[machine.leg].delay;
        if delay.is_zero() {
            self.start_leg(index, now);
        } else {
            machine.waiting = Some(now + delay);
            self.wheel.insert(now + delay, index, slot.generation);
        }
    }

    /// Starts the machine's current transfer: a fresh socket, the RRQ, a wheel entry.
    fn start_leg(&mut self, index: u32, now: Instant) {
        let slot = &mut self.slots[index as usize];
        let Some(machine) = slot.machine.as_mut() else {
            return;
        };
        machine.waiting = None;
        let config = &self.seq.legs[machine.leg].config;
        slot.peer = None;
        let mut client = Client::new(config, now);
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
            Err(err) => {
                match err.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE) => {
                        self.fatal.get_or_insert(anyhow!(
                            "out of file descriptors: lower --clients or --power-on ({err})"
                        ));
                    }
                    // Every later transfer would fail the same way: say so once, and stop.
                    Some(libc::EADDRNOTAVAIL) => {
                        let ip = source.map(|ip| ip.to_string()).unwrap_or_default();
                        self.fatal
                            .get_or_insert(anyhow!("cannot bind to source address {ip}: {err}"));
                    }
                    _ => {}
                }
                client.abort(now, Failure::Io(err.raw_os_error().unwrap_or(0)));
            }
        }
        slot.client = Some(client);
        self.flush(index, now);
        if !self.finish_if_done(index, now) {
            let generation = self.slots[index as usize].generation;
            self.wheel.insert(now + config.timeout, index, generation);
        }
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
                    self.finish_if_done(index, now);
                    return;
                }
            };
            for i in 0..n {
                let Some(from) = self.batch.source(i) else {
                    self.stats.counts.stray_datagrams += 1;
                    continue;
                };
                if self.batch.truncated(i) && self.batch.gro_size(i).is_some() {
                    // A coalesced train longer than the buffer: its last datagram would look
                    // like a short block. (A single datagram cut short is passed on: the client
                    // sees a block longer than blksize and fails the transfer for it.)
                    self.stats.counts.stray_datagrams += 1;
                    continue;
                }
                // The simulated loss of the first datagram is drawn before it can make a TID.
                let first_lost = self.plan.loss > 0.0 && self.rng.chance(self.plan.loss);
                let slot = &mut self.slots[index as usize];
                if first_lost && slot.peer.is_none() {
                    self.stats.counts.dropped_in += 1;
                    continue;
                }
                match slot.peer {
                    // RFC 1350 §4: the first reply's source port is the server's TID.
                    None if !Client::is_first_reply(self.batch.segment(i, 0)) => {
                        self.stats.counts.stray_datagrams += 1;
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
                            self.finish_if_done(index, now);
                            return;
                        }
                        slot.peer = Some(from);
                    }
                    // RFC 1350 §4: a datagram from another TID is not part of this transfer.
                    Some(peer) if peer != from => {
                        self.stats.counts.stray_datagrams += 1;
                        continue;
                    }
                    Some(_) => {}
                }
                // With UDP_GRO one receive may hold a whole window: one datagram per segment.
                let segments = self.batch.segments(i);
                if segments > 1 {
                    self.stats.counts.coalesced += 1;
                }
                for j in 0..segments {
                    let lost = match j {
                        0 => first_lost,
                        _ => self.plan.loss > 0.0 && self.rng.chance(self.plan.loss),
                    };
                    if lost {
                        self.stats.counts.dropped_in += 1;
                        continue;
                    }
                    let slot = &mut self.slots[index as usize];
                    let Some(machine) = slot.machine else {
                        return;
                    };
                    let config = &self.seq.legs[machine.leg].config;
                    if let Some(client) = slot.client.as_mut() {
                        let datagram = self.batch.segment(i, j);
                        client.handle_datagram(config, now, datagram, &mut self.scratch);
                        if let Some(Err(Failure::Error(code))) = client.outcome() {
                            if let Ok(Packet::Error { message, .. }) = Packet::parse(datagram) {
                                self.stats.note_error(code, message);
                            }
                        }
                    }
                    self.flush(index, now);
                    if self.finish_if_done(index, now) {
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

    /// A wheel entry came due: fire the client's timer, start a transfer after its pause, or
    /// file the entry again.
    fn expired(&mut self, index: u32, generation: u32, now: Instant) {
        let slot = &mut self.slots[index as usize];
        if slot.generation != generation {
            return;
        }
        let Some(machine) = slot.machine else {
            return;
        };
        if let Some(until) = machine.waiting {
            if now >= until {
                self.start_leg(index, now);
            } else {
                self.wheel.insert(until, index, generation);
            }
            return;
        }
        let leg = &self.seq.legs[machine.leg];
        let Some(client) = slot.client.as_mut() else {
            return;
        };
        client.handle_timeout(&leg.config, now);
        let deadline = client.deadline();
        self.flush(index, now);
        if !self.finish_if_done(index, now) {
            self.wheel.insert(deadline, index, generation);
        }
    }

    /// Sends what the client has queued: the RRQ to the server's port, an ACK or a probe's
    /// ERROR 8 to the TID.
    fn flush(&mut self, index: u32, now: Instant) {
        let slot = &mut self.slots[index as usize];
        let (Some(client), Some(socket), Some(machine)) =
            (slot.client.as_mut(), slot.socket.as_ref(), slot.machine)
        else {
            return;
        };
        let rrq = &self.seq.legs[machine.leg].rrq;
        while let Some(transmit) = client.poll_transmit() {
            if self.plan.loss > 0.0 && self.rng.chance(self.plan.loss) {
                self.stats.counts.dropped_out += 1;
                continue;
            }
            let mut ack = [0; 5];
            let mut error = [0; 32];
            let (bytes, to) = match transmit {
                // Only before the first reply: once connected to the TID, the RRQ is never re-sent.
                Transmit::Rrq => (&rrq[..], Some(&self.server)),
                // Only after the first reply: the socket is connected to the TID.
                Transmit::Refuse => {
                    let len = emit_refuse(&mut error);
                    (&error[..len], None)
                }
                Transmit::Ack(block) => {
                    let len = client.emit_ack(block, &mut ack);
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
                    Some(libc::EAGAIN | libc::ENOBUFS) => self.stats.counts.send_drops += 1,
                    Some(libc::EINTR) => {}
                    errno => client.abort(now, Failure::Io(errno.unwrap_or(0))),
                }
            }
        }
    }

    /// If slot `index`'s transfer is over: records it, closes its socket and moves its machine
    /// on (to its next transfer, or out of the slot when it has booted or failed).
    fn finish_if_done(&mut self, index: u32, now: Instant) -> bool {
        let slot = &mut self.slots[index as usize];
        let Some(client) = slot.client.take() else {
            return false;
        };
        let Some(outcome) = client.outcome() else {
            slot.client = Some(client);
            return false;
        };
        // Closing also removes the socket from the epoll set: it is the only reference.
        slot.socket = None;
        slot.generation = slot.generation.wrapping_add(1);
        let Some(mut machine) = slot.machine else {
            return true;
        };
        let leg = &self.seq.legs[machine.leg];
        if leg.config.probe {
            self.stats.record_probe(&client);
        } else {
            self.stats.record(&client);
            self.live.record(&client);
        }
        if let Some(spans) = self.stats.spans.as_mut() {
            let since = |t: Instant| t.saturating_duration_since(self.start);
            spans.push(Span {
                start: since(client.started()),
                end: since(client.finished().unwrap_or(now)),
                ok: outcome.is_ok(),
            });
        }
        let end = client.finished().unwrap_or(now);
        let step = leg.step;
        let last_of_step = self
            .seq
            .legs
            .get(machine.leg + 1)
            .is_none_or(|l| l.step != step);
        match outcome {
            Err(_) => {
                self.stats.record_boot_failure(step);
                self.end_machine(index);
            }
            Ok(()) if last_of_step => {
                let since_power_on = end.saturating_duration_since(machine.powered);
                self.stats.record_step(step, since_power_on);
                if machine.leg + 1 == self.seq.legs.len() {
                    self.stats
                        .record_boot(since_power_on, end.saturating_duration_since(self.start));
                    self.end_machine(index);
                } else {
                    machine.leg += 1;
                    self.slots[index as usize].machine = Some(machine);
                    self.next_leg(index, now);
                }
            }
            Ok(()) => {
                machine.leg += 1;
                self.slots[index as usize].machine = Some(machine);
                self.next_leg(index, now);
            }
        }
        true
    }

    /// The machine in slot `index` is done: the slot is free.
    fn end_machine(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.machine = None;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        self.active -= 1;
        self.live.active.fetch_sub(1, Relaxed);
    }

    /// The hard deadline passed: every transfer still running fails as aborted, and so does
    /// every machine waiting between transfers.
    fn abort_all(&mut self, now: Instant) {
        self.launching = false;
        for index in 0..self.slots.len() as u32 {
            let slot = &mut self.slots[index as usize];
            if let Some(client) = slot.client.as_mut() {
                client.abort(now, Failure::Aborted);
                self.finish_if_done(index, now);
            } else if let Some(machine) = slot.machine {
                let step = self.seq.legs[machine.leg].step;
                *self.stats.failures.entry(Failure::Aborted).or_default() += 1;
                self.stats.record_boot_failure(step);
                self.end_machine(index);
            }
        }
    }
}

impl Slot {
    fn new() -> Self {
        Self {
            socket: None,
            generation: 0,
            client: None,
            peer: None,
            machine: None,
        }
    }
}

#[cfg(test)]
mod tests;
