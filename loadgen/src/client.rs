//! One TFTP read from the client's side: a sans-IO state machine per transfer.
//!
//! The client sends an RRQ (RFC 1350 §5) with the options it was told to ask for (RFC 2347,
//! 2348, 2349, 7440), checks the OACK against what it asked, answers it with ACK 0, and then
//! receives DATA lock-step or in windows of `windowsize` blocks (RFC 7440 §4), acknowledging
//! every full window and the last block, and the last in-order block when it sees a gap. Every
//! byte it receives can be checked against the expected file or its SHA-256 as it arrives.
//!
//! # Driving a client
//!
//! The driver owns the socket; the client owns every decision. Time only enters as `now`.
//!
//! 1. [`Client::new`] queues the RRQ; the driver sends it to the server's port.
//! 2. Each datagram from the transfer's TID (the source of the first reply; the driver ignores
//!    all others) goes to [`Client::handle_datagram`]; an expired [`Client::deadline`] goes to
//!    [`Client::handle_timeout`].
//! 3. After each of those, the driver sends what [`Client::poll_transmit`] returns (at most one
//!    packet: the RRQ to the server's port, an ACK to the TID) and stops when
//!    [`Client::outcome`] is `Some`.
//!
//! Blocks are counted from 1 in a `u64`; the wire number is the low 16 bits, so a transfer goes
//! on past block 65535 with block 0, as tftp-hpa, atftpd, dnsmasq and ringtftpd number them.

use std::time::{Duration, Instant};

use ringtftp::netascii::Decoder;
use ringtftp::packet::{push_option, Mode, Options, Packet, Request};
use sha2::{Digest, Sha256};

/// What every transfer of a run asks for, and what it must receive.
#[derive(Debug, Clone)]
pub struct Config {
    /// The transfer mode requested.
    pub mode: Mode,
    /// The `blksize` option to send (RFC 2348), or `None` to ask for nothing (512 bytes).
    pub blksize: Option<u16>,
    /// The `windowsize` option to send (RFC 7440), or `None` for lock-step.
    pub windowsize: Option<u16>,
    /// Whether to ask for the transfer size (RFC 2349 `tsize`) and check the bytes against it.
    pub tsize: bool,
    /// How long to wait for the server before re-sending the last packet.
    pub timeout: Duration,
    /// Whether to send `timeout` as the RFC 2349 option, in seconds.
    pub timeout_option: bool,
    /// Re-sends of the same packet without progress before giving up with [`Failure::Timeout`].
    pub retries: u32,
    /// What the received bytes must be.
    pub expect: Expect,
}

/// What the received file must be, checked byte by byte as blocks arrive.
#[derive(Debug, Clone, Default)]
pub enum Expect {
    /// Anything (only the `tsize` check, if asked, applies).
    #[default]
    Anything,
    /// Exactly these bytes (after netascii decoding in netascii mode).
    Bytes(Vec<u8>),
    /// Bytes whose SHA-256 is this (after netascii decoding in netascii mode).
    Sha256([u8; 32]),
}

/// Why a transfer failed. Ordered so that a report lists the reasons in a stable order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// No answer after `retries` re-sends of the same packet.
    Timeout,
    /// The server sent ERROR with this code.
    Error(u16),
    /// The bytes received differ from the expected ones.
    Mismatch,
    /// The transfer ended with more or fewer bytes than the expected file or the OACK's `tsize`.
    Size,
    /// The server broke the protocol (a malformed packet, an OACK with values not asked for,
    /// a block longer than `blksize`, …).
    Protocol(&'static str),
    /// A local socket call failed with this `errno`.
    Io(i32),
    /// Still running when the run's hard deadline passed.
    Aborted,
}

impl Failure {
    /// The TFTP error code, for an ERROR from the server.
    pub fn code(&self) -> Option<u16> {
        match *self {
            Self::Error(code) => Some(code),
            _ => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Timeout => f.write_str("timeout"),
            Self::Error(code) => write!(f, "ERROR {code}"),
            Self::Mismatch => f.write_str("content mismatch"),
            Self::Size => f.write_str("size mismatch"),
            Self::Protocol(why) => write!(f, "protocol: {why}"),
            Self::Io(errno) => write!(f, "local: {}", std::io::Error::from_raw_os_error(errno)),
            Self::Aborted => f.write_str("aborted at deadline"),
        }
    }
}

/// A packet the driver must send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// The run's RRQ (built once by [`emit_rrq`]), to the server's port.
    Rrq,
    /// An ACK of this wire block number, to the TID.
    Ack(u16),
}

/// One read transfer from the client's side. See the module doc for how to drive it.
#[derive(Debug, Clone)]
pub struct Client {
    state: State,
    started: Instant,
    first_block: Option<Instant>,
    finished: Option<Instant>,
    /// The block size in force: 512 until an OACK says otherwise (RFC 1350, RFC 2348).
    blksize: u16,
    /// The window in force: 1 (lock-step) until an OACK says otherwise (RFC 7440).
    windowsize: u16,
    /// The next block expected, counted from 1 without wrapping.
    next: u64,
    /// In-order blocks received since the last ACK sent.
    since_ack: u16,
    /// The last out-of-order block seen since the last in-order one: a stray block that follows
    /// it by one belongs to the same burst and gets no ACK of its own.
    last_stray: Option<u16>,
    /// The size the OACK announced.
    tsize: Option<u64>,
    /// Payload bytes received in order, as on the wire.
    bytes: u64,
    /// Bytes after netascii decoding: the offset into the expected file.
    decoded: u64,
    decoder: Decoder,
    check: Check,
    /// Re-sends since the last progress, against `retries`.
    tries: u32,
    deadline: Instant,
    pending: Option<Transmit>,
    counters: Counters,
}

/// What a transfer counted on its way, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets re-sent because the timer expired (RRQ or ACK).
    pub retransmits: u32,
    /// ACKs re-sent at once because a duplicate or out-of-order block showed the server had
    /// missed one (RFC 7440 §4; a lock-step client's answer to a repeated block).
    pub reacks: u32,
    /// DATA blocks that were not the next one expected: duplicates and blocks after a gap.
    pub stray_blocks: u32,
    /// The server answered the RRQ without an OACK although options were asked for.
    pub options_ignored: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The RRQ is out; nothing has come back.
    Requested,
    /// An OACK or the first DATA arrived; `oack` says whether it was an OACK.
    Receiving { oack: bool },
    /// Over; the outcome is final.
    Done(Result<(), Failure>),
}

/// The running check of the received bytes against [`Expect`].
#[derive(Debug, Clone)]
enum Check {
    Nothing,
    /// Compared against [`Expect::Bytes`] at the decoded offset; `false` once a byte differs
    /// or the data runs past the expected end.
    Bytes {
        equal: bool,
        overrun: bool,
    },
    Sha256(Sha256),
}

impl Client {
    /// A transfer starting at `now`; its first [`poll_transmit`](Self::poll_transmit) is the RRQ.
    pub fn new(config: &Config, now: Instant) -> Self {
        let check = match config.expect {
            Expect::Anything => Check::Nothing,
            Expect::Bytes(_) => Check::Bytes {
                equal: true,
                overrun: false,
            },
            Expect::Sha256(_) => Check::Sha256(Sha256::default()),
        };
        Self {
            state: State::Requested,
            started: now,
            first_block: None,
            finished: None,
            blksize: DEFAULT_BLKSIZE,
            windowsize: 1,
            next: 1,
            since_ack: 0,
            last_stray: None,
            tsize: None,
            bytes: 0,
            decoded: 0,
            decoder: Decoder::new(),
            check,
            tries: 0,
            deadline: now + config.timeout,
            pending: Some(Transmit::Rrq),
            counters: Counters::default(),
        }
    }

    /// Whether `datagram` can be the server's first reply to the RRQ: an OACK, DATA 1 or an
    /// ERROR. The driver takes the TID from the first datagram that passes; anything else
    /// arriving first is a stray, typically a late block from a finished transfer of a server
    /// that still sends to this client port's previous owner, and must not capture the TID.
    pub fn is_first_reply(datagram: &[u8]) -> bool {
        matches!(
            Packet::parse(datagram),
            Ok(Packet::Oack(_) | Packet::Data { block: 1, .. } | Packet::Error { .. })
        )
    }

    /// Feeds one datagram from the transfer's TID.
    ///
    /// `scratch` receives decoded netascii and must hold a block plus one byte (`blksize + 1`,
    /// with the largest `blksize` the run may be granted).
    pub fn handle_datagram(
        &mut self,
        config: &Config,
        now: Instant,
        datagram: &[u8],
        scratch: &mut [u8],
    ) {
        if let State::Done(_) = self.state {
            return;
        }
        let Ok(packet) = Packet::parse(datagram) else {
            return self.finish(now, Err(Failure::Protocol("malformed packet")));
        };
        match packet {
            Packet::Error { code, .. } => self.finish(now, Err(Failure::Error(code.to_u16()))),
            Packet::Oack(options) => self.handle_oack(config, now, options),
            Packet::Data { block, data } => self.handle_data(config, now, block, data, scratch),
            Packet::Ack { .. } | Packet::Rrq(_) | Packet::Wrq(_) => {
                self.finish(now, Err(Failure::Protocol("unexpected opcode")));
            }
        }
    }

    /// Feeds the passing of [`deadline`](Self::deadline): re-sends the last packet, or gives up
    /// after `retries` re-sends without progress. Does nothing before the deadline.
    pub fn handle_timeout(&mut self, config: &Config, now: Instant) {
        if now < self.deadline || self.outcome().is_some() {
            return;
        }
        if self.tries >= config.retries {
            return self.finish(now, Err(Failure::Timeout));
        }
        self.tries += 1;
        self.counters.retransmits += 1;
        self.pending = Some(match self.state {
            State::Requested => Transmit::Rrq,
            _ => {
                // A window cut short by loss is acknowledged as far as it got (RFC 7440 §4).
                self.since_ack = 0;
                Transmit::Ack(self.last_in_order())
            }
        });
        self.deadline = now + config.timeout;
    }

    /// The packet to send now, if any (at most one is ever pending).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.pending.take()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called if nothing arrives.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// `Some` once the transfer is over: `Ok` when the whole file arrived and passed its checks.
    pub fn outcome(&self) -> Option<Result<(), Failure>> {
        match self.state {
            State::Done(outcome) => Some(outcome),
            _ => None,
        }
    }

    /// Ends the transfer from outside (the run's deadline passed, a socket call failed).
    pub fn abort(&mut self, now: Instant, why: Failure) {
        if self.outcome().is_none() {
            self.finish(now, Err(why));
        }
    }

    /// When the RRQ was first sent.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When block 1 arrived.
    pub fn first_block(&self) -> Option<Instant> {
        self.first_block
    }

    /// When the transfer ended (the final ACK was queued, or it failed).
    pub fn finished(&self) -> Option<Instant> {
        self.finished
    }

    /// Payload bytes received in order, as on the wire.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What the transfer counted on its way.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn handle_oack(&mut self, config: &Config, now: Instant, options: Options<'_>) {
        match self.state {
            State::Requested => {}
            // The server re-sent its OACK: our ACK 0 was lost or is late. Answer it again, as a
            // lock-step client answers a repeated block.
            State::Receiving { oack: true } if self.next == 1 => {
                self.counters.stray_blocks += 1;
                self.counters.reacks += 1;
                self.pending = Some(Transmit::Ack(0));
                return;
            }
            _ => return self.finish(now, Err(Failure::Protocol("OACK after DATA"))),
        }
        if let Err(why) = self.accept_oack(config, options) {
            return self.finish(now, Err(Failure::Protocol(why)));
        }
        self.state = State::Receiving { oack: true };
        self.progress(config, now);
        // RFC 2347: a client answers an OACK to its RRQ with ACK 0.
        self.pending = Some(Transmit::Ack(0));
    }

    /// Takes the values of an OACK, refusing any the client did not ask for or could not use
    /// (RFC 2347: the server may only acknowledge options it was sent; RFC 2348 and RFC 7440:
    /// it may lower `blksize` and `windowsize`, never raise them).
    fn accept_oack(&mut self, config: &Config, options: Options<'_>) -> Result<(), &'static str> {
        for (name, value) in options.iter() {
            if name.eq_ignore_ascii_case(b"blksize") {
                let asked = config.blksize.ok_or("OACK blksize not asked for")?;
                let v = parse_uint(value).ok_or("OACK blksize not a number")?;
                if !(u64::from(MIN_BLKSIZE)..=u64::from(asked)).contains(&v) {
                    return Err("OACK blksize outside 8..=asked");
                }
                self.blksize = v as u16;
            } else if name.eq_ignore_ascii_case(b"windowsize") {
                let asked = config.windowsize.ok_or("OACK windowsize not asked for")?;
                let v = parse_uint(value).ok_or("OACK windowsize not a number")?;
                if !(1..=u64::from(asked)).contains(&v) {
                    return Err("OACK windowsize outside 1..=asked");
                }
                self.windowsize = v as u16;
            } else if name.eq_ignore_ascii_case(b"tsize") {
                if !config.tsize {
                    return Err("OACK tsize not asked for");
                }
                self.tsize = Some(parse_uint(value).ok_or("OACK tsize not a number")?);
            } else if name.eq_ignore_ascii_case(b"timeout") {
                if !config.timeout_option {
                    return Err("OACK timeout not asked for");
                }
                // RFC 2349: the server must echo the client's value, or leave it out.
                let mut buf = [0; 32];
                if value != fmt_seconds(config.timeout, &mut buf).as_bytes() {
                    return Err("OACK timeout differs from the one asked for");
                }
            } else {
                return Err("OACK with an option not asked for");
            }
        }
        Ok(())
    }

    fn handle_data(
        &mut self,
        config: &Config,
        now: Instant,
        block: u16,
        data: &[u8],
        scratch: &mut [u8],
    ) {
        if self.state == State::Requested {
            // RFC 2347: a server that ignores options answers with DATA 1 and the defaults.
            self.counters.options_ignored = config.blksize.is_some()
                || config.windowsize.is_some()
                || config.tsize
                || config.timeout_option;
            self.state = State::Receiving { oack: false };
        }
        if data.len() > usize::from(self.blksize) {
            return self.finish(now, Err(Failure::Protocol("DATA longer than blksize")));
        }
        if block != self.next as u16 {
            return self.handle_stray(block);
        }
        self.first_block.get_or_insert(now);
        self.consume(config, data, scratch);
        self.next += 1;
        self.since_ack += 1;
        self.last_stray = None;
        self.progress(config, now);
        if data.len() < usize::from(self.blksize) {
            // RFC 1350 §6: a block shorter than blksize is the last; its ACK ends the transfer.
            self.pending = Some(Transmit::Ack(block));
            let outcome = self.verdict(config, scratch);
            return self.finish(now, outcome);
        }
        if self.since_ack >= self.windowsize {
            self.since_ack = 0;
            self.pending = Some(Transmit::Ack(block));
        }
    }

    /// A block other than the next: a duplicate (the server missed our ACK and re-sent) or one
    /// after a gap (a block of the window was lost). Both are answered by acknowledging the last
    /// in-order block (RFC 7440 §4), but only once per burst: the rest of a re-sent window
    /// follows its first block in sequence and must not draw an ACK each, or every lost ACK
    /// would cost the server a window of duplicate ACKs.
    fn handle_stray(&mut self, block: u16) {
        self.counters.stray_blocks += 1;
        let same_burst = self
            .last_stray
            .is_some_and(|last| block == last.wrapping_add(1));
        self.last_stray = Some(block);
        if !same_burst {
            self.counters.reacks += 1;
            self.since_ack = 0;
            self.pending = Some(Transmit::Ack(self.last_in_order()));
        }
    }

    /// Checks one block's payload against the expected bytes.
    fn consume(&mut self, config: &Config, data: &[u8], scratch: &mut [u8]) {
        self.bytes += data.len() as u64;
        let decoded = match config.mode {
            Mode::Octet => data,
            Mode::Netascii => {
                // Decoding only shrinks, so a scratch of blksize + 1 takes a whole block.
                let (_, written) = self.decoder.decode(data, scratch);
                &scratch[..written]
            }
        };
        check_bytes(&mut self.check, &config.expect, self.decoded, decoded);
        self.decoded += decoded.len() as u64;
    }

    /// The checks at the end of the data: size against `tsize` and the expected file, content
    /// against the expected bytes or hash.
    fn verdict(&mut self, config: &Config, scratch: &mut [u8]) -> Result<(), Failure> {
        if config.mode == Mode::Netascii {
            // A CR on the very last byte is only known to be literal now.
            let written = self.decoder.finish(scratch);
            check_bytes(
                &mut self.check,
                &config.expect,
                self.decoded,
                &scratch[..written],
            );
            self.decoded += written as u64;
        }
        if self.tsize.is_some_and(|size| size != self.bytes) {
            return Err(Failure::Size);
        }
        match (&mut self.check, &config.expect) {
            (Check::Bytes { equal, overrun }, Expect::Bytes(want)) => {
                if *overrun || self.decoded != want.len() as u64 {
                    Err(Failure::Size)
                } else if !*equal {
                    Err(Failure::Mismatch)
                } else {
                    Ok(())
                }
            }
            (Check::Sha256(hasher), Expect::Sha256(want)) => {
                let got: [u8; 32] = std::mem::take(hasher).finalize().into();
                if got == *want {
                    Ok(())
                } else {
                    Err(Failure::Mismatch)
                }
            }
            _ => Ok(()),
        }
    }

    /// Something new arrived: the retry budget starts again and the timer restarts from now.
    fn progress(&mut self, config: &Config, now: Instant) {
        self.tries = 0;
        self.deadline = now + config.timeout;
    }

    /// The wire number of the last block received in order (0 for the OACK or nothing yet).
    fn last_in_order(&self) -> u16 {
        (self.next - 1) as u16
    }

    fn finish(&mut self, now: Instant, outcome: Result<(), Failure>) {
        self.state = State::Done(outcome);
        self.finished = Some(now);
    }
}

/// Builds the run's RRQ for `filename` with the options `config` asks for.
///
/// Built once per run: every transfer sends the same bytes.
pub fn emit_rrq(filename: &str, config: &Config) -> anyhow::Result<Vec<u8>> {
    let mut options = [0u8; 256];
    let mut len = 0;
    let mut num = [0u8; 32];
    let too_long = |_| anyhow::anyhow!("RRQ options too long");
    if let Some(blksize) = config.blksize {
        push_option(
            &mut options,
            &mut len,
            "blksize",
            fmt_uint(blksize, &mut num),
        )
        .map_err(too_long)?;
    }
    if config.tsize {
        push_option(&mut options, &mut len, "tsize", "0").map_err(too_long)?;
    }
    if config.timeout_option {
        let value = fmt_seconds(config.timeout, &mut num);
        push_option(&mut options, &mut len, "timeout", value).map_err(too_long)?;
    }
    if let Some(windowsize) = config.windowsize {
        push_option(
            &mut options,
            &mut len,
            "windowsize",
            fmt_uint(windowsize, &mut num),
        )
        .map_err(too_long)?;
    }
    let rrq = Packet::Rrq(Request {
        filename,
        mode: config.mode,
        options: Options::parse(&options[..len]),
    });
    let mut buf = vec![0; filename.len() + len + 16];
    let n = rrq
        .emit(&mut buf)
        .map_err(|_| anyhow::anyhow!("RRQ buffer too small"))?;
    buf.truncate(n);
    // RFC 1350 puts no limit on a request, but most servers read it into 512 bytes.
    anyhow::ensure!(
        buf.len() <= 512,
        "RRQ of {} bytes exceeds 512: shorten the file name",
        buf.len()
    );
    Ok(buf)
}

/// Writes ACK `block` into `buf`; returns its length (always 4).
pub fn emit_ack(block: u16, buf: &mut [u8; 4]) -> usize {
    // Four bytes always hold an ACK.
    Packet::Ack { block }.emit(buf).unwrap_or(4)
}

fn check_bytes(check: &mut Check, expect: &Expect, offset: u64, data: &[u8]) {
    match (check, expect) {
        (Check::Bytes { equal, overrun }, Expect::Bytes(want)) => {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(want.len());
            let end = start.saturating_add(data.len()).min(want.len());
            if end - start < data.len() {
                *overrun = true;
            }
            if want[start..end] != data[..end - start] {
                *equal = false;
            }
        }
        (Check::Sha256(hasher), _) => hasher.update(data),
        _ => {}
    }
}

/// An unsigned decimal as sent in option values.
fn parse_uint(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0, |acc, &d| acc * 10 + u64::from(d - b'0')),
    )
}

fn fmt_uint(v: u16, buf: &mut [u8; 32]) -> &str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 32 bytes always hold a u16.
    let _ = write!(cursor, "{v}");
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len]).unwrap_or("0")
}

/// A timeout as the RFC 2349 option value: whole seconds, with a fraction only when it has one
/// (ringtftpd and tftp-hpa accept fractions; RFC 2349 itself only whole seconds 1..=255).
fn fmt_seconds(t: Duration, buf: &mut [u8; 32]) -> &str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let mut micros = t.subsec_micros();
    // 32 bytes always hold a u64 and six decimals.
    let _ = write!(cursor, "{}", t.as_secs());
    if micros != 0 {
        let mut digits = 6;
        while micros % 10 == 0 {
            micros /= 10;
            digits -= 1;
        }
        let _ = write!(cursor, ".{micros:0digits$}");
    }
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len]).unwrap_or("1")
}

/// RFC 1350's block size, in force when no OACK says otherwise.
const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348: the smallest legal block size.
const MIN_BLKSIZE: u16 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            mode: Mode::Octet,
            blksize: None,
            windowsize: None,
            tsize: false,
            timeout: Duration::from_secs(1),
            timeout_option: false,
            retries: 3,
            expect: Expect::Anything,
        }
    }

    /// A client with a clock and a scratch buffer, fed byte literals.
    struct Harness {
        config: Config,
        client: Client,
        now: Instant,
        scratch: Vec<u8>,
    }

    impl Harness {
        fn new(config: Config) -> Self {
            let now = Instant::now();
            let mut client = Client::new(&config, now);
            assert_eq!(client.poll_transmit(), Some(Transmit::Rrq));
            Self {
                config,
                client,
                now,
                scratch: vec![0; 65536],
            }
        }

        fn feed(&mut self, datagram: &[u8]) -> Option<Transmit> {
            self.client
                .handle_datagram(&self.config, self.now, datagram, &mut self.scratch);
            self.client.poll_transmit()
        }

        fn data(&mut self, block: u16, payload: &[u8]) -> Option<Transmit> {
            let mut d = vec![0, 3];
            d.extend_from_slice(&block.to_be_bytes());
            d.extend_from_slice(payload);
            self.feed(&d)
        }

        fn advance(&mut self, by: Duration) -> Option<Transmit> {
            self.now += by;
            self.client.handle_timeout(&self.config, self.now);
            self.client.poll_transmit()
        }
    }

    fn sha256(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    #[test]
    fn rrq_carries_the_options_asked_for() {
        let mut c = config();
        c.blksize = Some(1468);
        c.tsize = true;
        c.timeout_option = true;
        c.timeout = Duration::from_millis(1500);
        c.windowsize = Some(16);
        let rrq = emit_rrq("pxelinux.0", &c).unwrap();
        assert_eq!(
            rrq,
            b"\x00\x01pxelinux.0\x00octet\x00blksize\x001468\x00tsize\x000\x00timeout\x001.5\x00windowsize\x0016\x00"
        );
        assert_eq!(emit_rrq("f", &config()).unwrap(), b"\x00\x01f\x00octet\x00");
        assert!(emit_rrq(&"x".repeat(600), &config()).is_err());
    }

    #[test]
    fn lock_step_acks_every_block_and_ends_on_a_short_one() {
        let mut c = config();
        let file: Vec<u8> = (0..1200u32).map(|i| i as u8).collect();
        c.expect = Expect::Bytes(file.clone());
        let mut h = Harness::new(c);
        assert_eq!(h.data(1, &file[..512]), Some(Transmit::Ack(1)));
        assert_eq!(h.data(2, &file[512..1024]), Some(Transmit::Ack(2)));
        assert!(h.client.outcome().is_none());
        assert_eq!(h.data(3, &file[1024..]), Some(Transmit::Ack(3)));
        assert_eq!(h.client.outcome(), Some(Ok(())));
        assert_eq!(h.client.bytes(), 1200);
        assert!(!h.client.counters().options_ignored);
    }

    #[test]
    fn exact_multiple_ends_with_an_empty_block() {
        let mut c = config();
        c.expect = Expect::Sha256(sha256(&[7; 1024]));
        let mut h = Harness::new(c);
        h.data(1, &[7; 512]);
        h.data(2, &[7; 512]);
        assert!(h.client.outcome().is_none());
        assert_eq!(h.data(3, b""), Some(Transmit::Ack(3)));
        assert_eq!(h.client.outcome(), Some(Ok(())));
    }

    #[test]
    fn oack_is_checked_and_answered_with_ack_0() {
        let mut c = config();
        c.blksize = Some(1468);
        c.windowsize = Some(4);
        c.tsize = true;
        let mut h = Harness::new(c.clone());
        assert_eq!(
            h.feed(b"\x00\x06blksize\x001024\x00tsize\x002048\x00windowsize\x002\x00"),
            Some(Transmit::Ack(0))
        );
        assert_eq!((h.client.blksize, h.client.windowsize), (1024, 2));
        // A re-sent OACK means our ACK 0 went missing: answer it again.
        assert_eq!(
            h.feed(b"\x00\x06blksize\x001024\x00"),
            Some(Transmit::Ack(0))
        );
        assert_eq!(h.data(1, &[0; 1024]), None);
        assert_eq!(h.data(2, &[0; 1024]), Some(Transmit::Ack(2)));
        assert_eq!(h.data(3, b""), Some(Transmit::Ack(3)));
        assert_eq!(h.client.outcome(), Some(Ok(())));

        for (oack, why) in [
            (
                &b"\x00\x06blksize\x002000\x00"[..],
                "OACK blksize outside 8..=asked",
            ),
            (
                b"\x00\x06blksize\x007\x00",
                "OACK blksize outside 8..=asked",
            ),
            (
                b"\x00\x06windowsize\x008\x00",
                "OACK windowsize outside 1..=asked",
            ),
            (b"\x00\x06timeout\x001\x00", "OACK timeout not asked for"),
            (
                b"\x00\x06foo\x00bar\x00",
                "OACK with an option not asked for",
            ),
            (b"\x00\x06tsize\x00x\x00", "OACK tsize not a number"),
        ] {
            let mut h = Harness::new(c.clone());
            assert_eq!(h.feed(oack), None);
            assert_eq!(h.client.outcome(), Some(Err(Failure::Protocol(why))));
        }
    }

    #[test]
    fn timeout_option_must_be_echoed() {
        let mut c = config();
        c.timeout_option = true;
        c.timeout = Duration::from_secs(2);
        let mut h = Harness::new(c.clone());
        assert_eq!(h.feed(b"\x00\x06timeout\x002\x00"), Some(Transmit::Ack(0)));
        let mut h = Harness::new(c);
        h.feed(b"\x00\x06timeout\x003\x00");
        assert!(matches!(
            h.client.outcome(),
            Some(Err(Failure::Protocol(_)))
        ));
    }

    #[test]
    fn tsize_mismatch_is_a_size_failure() {
        let mut c = config();
        c.tsize = true;
        let mut h = Harness::new(c);
        h.feed(b"\x00\x06tsize\x00600\x00");
        h.data(1, &[1; 512]);
        h.data(2, &[1; 10]);
        assert_eq!(h.client.outcome(), Some(Err(Failure::Size)));
    }

    #[test]
    fn server_ignoring_options_falls_back_to_defaults() {
        let mut c = config();
        c.blksize = Some(1468);
        let mut h = Harness::new(c);
        assert_eq!(h.data(1, &[0; 512]), Some(Transmit::Ack(1)));
        assert_eq!(h.client.blksize, 512);
        assert!(h.client.counters().options_ignored);
        // A block longer than the block size in force is a protocol error.
        h.data(2, &[0; 600]);
        assert_eq!(
            h.client.outcome(),
            Some(Err(Failure::Protocol("DATA longer than blksize")))
        );
    }

    #[test]
    fn window_acks_every_window_and_the_gap() {
        let mut c = config();
        c.blksize = Some(8);
        c.windowsize = Some(4);
        let mut h = Harness::new(c);
        h.feed(b"\x00\x06blksize\x008\x00windowsize\x004\x00");
        let b = [0u8; 8];
        assert_eq!(h.data(1, &b), None);
        assert_eq!(h.data(2, &b), None);
        assert_eq!(h.data(3, &b), None);
        assert_eq!(h.data(4, &b), Some(Transmit::Ack(4)));
        // Block 6 is lost: 7 reveals the gap and draws one ACK of 5; 8 belongs to the same burst.
        assert_eq!(h.data(5, &b), None);
        assert_eq!(h.data(7, &b), Some(Transmit::Ack(5)));
        assert_eq!(h.data(8, &b), None);
        // The server goes back to 6 and sends a full window from there.
        assert_eq!(h.data(6, &b), None);
        assert_eq!(h.data(7, &b), None);
        assert_eq!(h.data(8, &b), None);
        assert_eq!(h.data(9, &b), Some(Transmit::Ack(9)));
        // Our ACK 9 was lost: the server re-sends 6..=9. One ACK for the burst, not four.
        assert_eq!(h.data(6, &b), Some(Transmit::Ack(9)));
        assert_eq!(h.data(7, &b), None);
        assert_eq!(h.data(8, &b), None);
        assert_eq!(h.data(9, &b), None);
        // Its timer fires again, another burst: another single ACK.
        assert_eq!(h.data(6, &b), Some(Transmit::Ack(9)));
        let counters = h.client.counters();
        assert_eq!((counters.reacks, counters.stray_blocks), (3, 7));
        // The last block ends the transfer mid-window.
        assert_eq!(h.data(10, b"end"), Some(Transmit::Ack(10)));
        assert_eq!(h.client.outcome(), Some(Ok(())));
        assert_eq!(h.client.bytes(), 9 * 8 + 3);
    }

    #[test]
    fn lock_step_duplicate_is_acked_each_time() {
        let mut h = Harness::new(config());
        assert_eq!(h.data(1, &[0; 512]), Some(Transmit::Ack(1)));
        // Each repeat is a separate server timeout, hence a separate burst.
        assert_eq!(h.data(1, &[0; 512]), Some(Transmit::Ack(1)));
        assert_eq!(h.data(1, &[0; 512]), Some(Transmit::Ack(1)));
        assert_eq!(h.client.counters().reacks, 2);
    }

    #[test]
    fn timer_resends_then_gives_up() {
        let mut h = Harness::new(config());
        let second = Duration::from_secs(1);
        assert_eq!(h.advance(Duration::from_millis(999)), None);
        assert_eq!(h.advance(Duration::from_millis(1)), Some(Transmit::Rrq));
        assert_eq!(h.data(1, &[0; 512]), Some(Transmit::Ack(1)));
        assert_eq!(h.client.deadline(), h.now + second);
        // Progress gave the retries back: three re-sends of ACK 1, then failure.
        for _ in 0..3 {
            assert_eq!(h.advance(second), Some(Transmit::Ack(1)));
        }
        assert!(h.client.outcome().is_none());
        assert_eq!(h.advance(second), None);
        assert_eq!(h.client.outcome(), Some(Err(Failure::Timeout)));
        assert_eq!(h.client.counters().retransmits, 4);
        assert_eq!(h.client.finished(), Some(h.now));
    }

    #[test]
    fn timer_acks_a_window_cut_short() {
        let mut c = config();
        c.windowsize = Some(8);
        let mut h = Harness::new(c);
        h.feed(b"\x00\x06windowsize\x008\x00");
        h.data(1, &[0; 512]);
        h.data(2, &[0; 512]);
        assert_eq!(h.advance(Duration::from_secs(1)), Some(Transmit::Ack(2)));
        // The window restarts from the ACK: 8 more blocks before the next one.
        for block in 3..10 {
            assert_eq!(h.data(block, &[0; 512]), None);
        }
        assert_eq!(h.data(10, &[0; 512]), Some(Transmit::Ack(10)));
    }

    #[test]
    fn only_oack_data_1_or_error_can_be_a_first_reply() {
        assert!(Client::is_first_reply(b"\x00\x06blksize\x001468\x00"));
        assert!(Client::is_first_reply(b"\x00\x03\x00\x01abc"));
        assert!(Client::is_first_reply(b"\x00\x05\x00\x00busy\x00"));
        assert!(!Client::is_first_reply(b"\x00\x03\x02\xc9abc"));
        assert!(!Client::is_first_reply(b"\x00\x04\x00\x01"));
        assert!(!Client::is_first_reply(b"\x00"));
    }

    #[test]
    fn error_ends_the_transfer_with_its_code() {
        let mut h = Harness::new(config());
        assert_eq!(h.feed(b"\x00\x05\x00\x01File not found\x00"), None);
        assert_eq!(h.client.outcome(), Some(Err(Failure::Error(1))));
        // Nothing happens after the end.
        assert_eq!(h.data(1, b"x"), None);
        assert_eq!(h.advance(Duration::from_secs(9)), None);
        assert_eq!(Failure::Error(1).to_string(), "ERROR 1");
    }

    #[test]
    fn garbage_and_wrong_opcodes_are_protocol_failures() {
        let mut h = Harness::new(config());
        h.feed(b"\x00");
        assert!(matches!(
            h.client.outcome(),
            Some(Err(Failure::Protocol(_)))
        ));
        let mut h = Harness::new(config());
        h.feed(b"\x00\x04\x00\x01");
        assert!(matches!(
            h.client.outcome(),
            Some(Err(Failure::Protocol(_)))
        ));
    }

    #[test]
    fn content_mismatch_and_short_file_are_told_apart() {
        let mut c = config();
        c.expect = Expect::Bytes(vec![5; 600]);
        let mut h = Harness::new(c.clone());
        h.data(1, &[5; 512]);
        h.data(2, &[6; 88]);
        assert_eq!(h.client.outcome(), Some(Err(Failure::Mismatch)));
        let mut h = Harness::new(c.clone());
        h.data(1, &[5; 512]);
        h.data(2, &[5; 80]);
        assert_eq!(h.client.outcome(), Some(Err(Failure::Size)));
        let mut h = Harness::new(c);
        h.data(1, &[5; 512]);
        h.data(2, &[5; 100]);
        assert_eq!(h.client.outcome(), Some(Err(Failure::Size)));
    }

    #[test]
    fn block_numbers_roll_over_past_65535() {
        // 70 000 blocks of 8 bytes: the block after 65535 is 0.
        let mut c = config();
        c.blksize = Some(8);
        let file: Vec<u8> = (0..70_000u32 * 8 + 3).map(|i| (i % 251) as u8).collect();
        c.expect = Expect::Sha256(sha256(&file));
        let mut h = Harness::new(c);
        h.feed(b"\x00\x06blksize\x008\x00");
        for (i, chunk) in file.chunks(8).enumerate() {
            let block = (i + 1) as u16;
            assert_eq!(
                h.data(block, chunk),
                Some(Transmit::Ack(block)),
                "block {i}"
            );
        }
        assert_eq!(h.client.outcome(), Some(Ok(())));
        assert_eq!(h.client.bytes(), file.len() as u64);
    }

    #[test]
    fn netascii_is_decoded_across_blocks_before_checking() {
        let mut c = config();
        c.mode = Mode::Netascii;
        let text = b"line one\nline two\r\nend\r".repeat(40);
        let wire = ringtftp::netascii::encode_to_vec(&text);
        c.expect = Expect::Bytes(text.clone());
        c.tsize = true;
        let mut h = Harness::new(c.clone());
        let oack = format!("\x00\x06tsize\x00{}\x00", wire.len());
        h.feed(oack.as_bytes());
        let blocks: Vec<&[u8]> = wire.chunks(512).collect();
        for (i, chunk) in blocks.iter().enumerate() {
            h.data((i + 1) as u16, chunk);
        }
        if wire.len() % 512 == 0 {
            h.data(blocks.len() as u16 + 1, b"");
        }
        assert_eq!(h.client.outcome(), Some(Ok(())));

        c.expect = Expect::Sha256(sha256(&text));
        let mut h = Harness::new(c);
        h.feed(oack.as_bytes());
        for (i, chunk) in blocks.iter().enumerate() {
            h.data((i + 1) as u16, chunk);
        }
        if wire.len() % 512 == 0 {
            h.data(blocks.len() as u16 + 1, b"");
        }
        assert_eq!(h.client.outcome(), Some(Ok(())));
    }

    /// A seeded generator for the lossy link.
    struct Rng(u64);

    impl Rng {
        fn chance(&mut self, p: f64) -> bool {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64) < p
        }
    }

    /// The client against a minimal go-back-N sender over a link that drops packets both ways:
    /// the file must arrive intact, with retransmissions bounded.
    #[test]
    fn lossy_link_still_delivers_every_byte() {
        for (loss, window, seed) in [(0.02, 1u16, 1u64), (0.05, 4, 2), (0.1, 16, 3), (0.2, 8, 4)] {
            let mut c = config();
            c.blksize = Some(64);
            c.windowsize = Some(window);
            c.retries = 50;
            c.timeout = Duration::from_millis(100);
            let file: Vec<u8> = (0..64 * 300 + 17u32).map(|i| (i * 7 % 256) as u8).collect();
            c.expect = Expect::Bytes(file.clone());
            let mut rng = Rng(seed);
            let start = Instant::now();
            let mut now = start;
            let mut client = Client::new(&c, now);
            let mut scratch = vec![0; 65];
            let blocks = file.len() / 64 + 1;
            // Sender state: the first unacknowledged block (0 = the OACK) and its timer.
            let mut base = 0usize;
            let mut server_deadline = now;
            let mut to_client: Vec<Vec<u8>> = Vec::new();
            let mut steps = 0;
            while client.outcome().is_none() {
                steps += 1;
                assert!(steps < 1_000_000, "no progress at loss {loss}");
                if let Some(t) = client.poll_transmit() {
                    if let Transmit::Ack(block) = t {
                        if !rng.chance(loss) {
                            // Map the wire number back near `base` (no rollover here).
                            let acked = usize::from(block);
                            if acked >= base && acked <= blocks {
                                base = acked + 1;
                                server_deadline = now; // send the next window at once
                            }
                        }
                    } else if !rng.chance(loss) {
                        server_deadline = now;
                    }
                }
                if now >= server_deadline && base <= blocks {
                    // (Re)send a window from `base`: the OACK when nothing is acknowledged.
                    if base == 0 {
                        to_client.push(
                            format!("\x00\x06blksize\x0064\x00windowsize\x00{window}\x00")
                                .into_bytes(),
                        );
                    } else {
                        for b in base..(base + usize::from(window)).min(blocks + 1) {
                            let chunk = file.get((b - 1) * 64..).unwrap_or_default();
                            let mut d = vec![0, 3];
                            d.extend_from_slice(&(b as u16).to_be_bytes());
                            d.extend_from_slice(&chunk[..chunk.len().min(64)]);
                            to_client.push(d);
                        }
                    }
                    server_deadline = now + Duration::from_millis(30);
                }
                for d in to_client.drain(..) {
                    if !rng.chance(loss) {
                        client.handle_datagram(&c, now, &d, &mut scratch);
                    }
                }
                now += Duration::from_millis(5);
                client.handle_timeout(&c, now);
            }
            assert_eq!(
                client.outcome(),
                Some(Ok(())),
                "loss {loss} window {window}"
            );
            let counters = client.counters();
            assert!(
                counters.retransmits < 300,
                "loss {loss}: {} retransmits",
                counters.retransmits
            );
        }
    }
}
