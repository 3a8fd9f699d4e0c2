//! One TFTP read from the client's side: the core's sans-IO reader ([`ringtftp::client`]) with
//! the load generator's checks around it.
//!
//! The core sends the RRQ with the options this run asks for, checks the OACK, receives DATA
//! lock-step or in windows and decides every ACK and re-send (RFC 1350, 2347-2349, 7440; its
//! module doc has the one rule for blocks out of sequence). This wrapper checks every byte the
//! core delivers against the expected file or its SHA-256 as it arrives (after netascii
//! decoding in netascii mode), and turns the core's outcome into a [`Failure`] for the report.
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
//!    packet: the RRQ to the server's port, an ACK or a probe's ERROR 8 to the TID) and stops
//!    when [`Client::outcome`] is `Some`.
//!
//! # Probes
//!
//! A [`Config::probe`] transfer only learns the file's size, as UEFI edk2 does before every
//! download (`loadgen/FIRMWARE.md`): it answers the server's first reply (the OACK, or
//! DATA 1 from a server that ignores options) with ERROR 8 instead of an ACK and ends there,
//! successfully. The driver then fetches the file with a new transfer from a new port.

use std::time::{Duration, Instant};

use ringtftp::client::{self as core, Outcome};
use ringtftp::netascii::Decoder;
use ringtftp::options::Ask;
use ringtftp::packet::{Mode, Packet};
use sha2::{Digest, Sha256};

pub use ringtftp::client::Stats as Counters;
use ringtftp::packet::ErrorCode;

/// A packet the driver must send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Transmit {
    /// The RRQ, to the server's port.
    Rrq,
    /// An ACK of this wire block number, to the server's TID.
    Ack(u16),
    /// ERROR 8 (RFC 2347, options refused) to the server's TID: a probe has what it wanted.
    Refuse,
}

impl From<core::Transmit> for Transmit {
    fn from(t: core::Transmit) -> Self {
        match t {
            core::Transmit::Rrq => Self::Rrq,
            core::Transmit::Ack(block) => Self::Ack(block),
        }
    }
}

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
    /// Only learn the size: answer the first reply with ERROR 8 and end (see the module doc).
    pub probe: bool,
    /// Ask for WDS's variable window (`msftwindow`).
    pub msftwindow: bool,
    /// ACK every block out of sequence, as edk2 does (see the core's client `Config`).
    pub reack_every_stray: bool,
}

impl Config {
    /// The core reader's configuration.
    pub fn core(&self) -> core::Config {
        core::Config {
            mode: self.mode,
            ask: Ask {
                blksize: self.blksize,
                windowsize: self.windowsize,
                tsize: self.tsize,
                timeout: self.timeout_option.then_some(self.timeout),
                msftwindow: self.msftwindow,
            },
            timeout: self.timeout,
            retries: self.retries,
            reack_every_stray: self.reack_every_stray,
        }
    }
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

/// One read transfer from the client's side. See the module doc for how to drive it.
#[derive(Debug, Clone)]
pub struct Client {
    core: core::Client,
    /// Bytes after netascii decoding: the offset into the expected file.
    decoded: u64,
    decoder: Decoder,
    check: Check,
    /// The outcome, once the core's is known and the checks are done (or the driver aborted).
    outcome: Option<Result<(), Failure>>,
    /// A probe's ERROR 8 is due.
    refuse: bool,
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
            core: core::Client::new(config.core(), now),
            decoded: 0,
            decoder: Decoder::new(),
            check,
            outcome: None,
            refuse: false,
        }
    }

    /// Whether `datagram` can be the server's first reply to the RRQ: an OACK, DATA 1 or an
    /// ERROR (see [`ringtftp::client::Client::is_first_reply`]).
    pub fn is_first_reply(datagram: &[u8]) -> bool {
        core::Client::is_first_reply(datagram)
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
        if self.outcome.is_some() {
            return;
        }
        let data = self.core.handle_datagram(now, datagram);
        if config.probe && (self.core.oacked() || self.core.first_block().is_some()) {
            // The size is known (or the server will not tell it): ERROR 8 instead of the ACK
            // the core queued, and this transfer is over.
            let _ = self.core.poll_transmit();
            self.core.abort(now, Outcome::Complete);
            self.refuse = true;
            self.outcome = Some(Ok(()));
            return;
        }
        if let Some(data) = data {
            self.consume(config, data, scratch);
        }
        self.settle(config, scratch);
    }

    /// Feeds the passing of [`deadline`](Self::deadline): re-sends the last packet, or gives up
    /// after `retries` re-sends without progress. Does nothing before the deadline.
    pub fn handle_timeout(&mut self, config: &Config, now: Instant) {
        if self.outcome.is_some() {
            return;
        }
        self.core.handle_timeout(now);
        self.settle(config, &mut []);
    }

    /// The packet to send now, if any (at most one is ever pending).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if std::mem::take(&mut self.refuse) {
            return Some(Transmit::Refuse);
        }
        self.core.poll_transmit().map(Transmit::from)
    }

    /// Writes ACK `block` as this read sends it into `buf` (with `msftwindow`, followed by the
    /// next window's size); returns its length.
    pub fn emit_ack(&self, block: u16, buf: &mut [u8; 5]) -> usize {
        self.core.emit_ack(block, buf)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called if nothing arrives (once
    /// over: when it ended).
    pub fn deadline(&self) -> Instant {
        self.core
            .poll_timeout()
            .or(self.core.finished())
            .unwrap_or(self.core.started())
    }

    /// `Some` once the transfer is over: `Ok` when the whole file arrived and passed its checks.
    pub fn outcome(&self) -> Option<Result<(), Failure>> {
        self.outcome
    }

    /// Ends the transfer from outside (the run's deadline passed, a socket call failed).
    pub fn abort(&mut self, now: Instant, why: Failure) {
        if self.outcome.is_none() {
            self.core.abort(now, Outcome::TimedOut);
            self.outcome = Some(Err(why));
        }
    }

    /// When the RRQ was first sent.
    pub fn started(&self) -> Instant {
        self.core.started()
    }

    /// When block 1 arrived.
    pub fn first_block(&self) -> Option<Instant> {
        self.core.first_block()
    }

    /// When the transfer ended (the final ACK was queued, or it failed).
    pub fn finished(&self) -> Option<Instant> {
        self.core.finished()
    }

    /// Payload bytes received in order, as on the wire.
    pub fn bytes(&self) -> u64 {
        self.core.bytes()
    }

    /// What the transfer counted on its way.
    pub fn counters(&self) -> Counters {
        self.core.stats()
    }

    /// Checks one block's payload against the expected bytes.
    fn consume(&mut self, config: &Config, data: &[u8], scratch: &mut [u8]) {
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

    /// Takes the core's outcome once it has one, with the content checks for a complete one.
    fn settle(&mut self, config: &Config, scratch: &mut [u8]) {
        self.outcome = match self.core.outcome() {
            None => return,
            Some(Outcome::Complete) => Some(self.verdict(config, scratch)),
            Some(Outcome::Error(code)) => Some(Err(Failure::Error(code.to_u16()))),
            Some(Outcome::TimedOut) => Some(Err(Failure::Timeout)),
            Some(Outcome::Size) => Some(Err(Failure::Size)),
            Some(Outcome::Protocol(why)) => Some(Err(Failure::Protocol(why))),
            Some(_) => Some(Err(Failure::Protocol("unknown outcome"))),
        };
    }

    /// The checks at the end of the data: size against the expected file, content against the
    /// expected bytes or hash (the core checked the size against `tsize`).
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
}

/// Builds the run's RRQ for `filename` with the options `config` asks for.
///
/// Built once per run: every transfer sends the same bytes.
pub fn emit_rrq(filename: &str, config: &Config) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0; filename.len() + 512];
    let n = config
        .core()
        .emit_rrq(filename, &mut buf)
        .map_err(|_| anyhow::anyhow!("RRQ options too long"))?;
    buf.truncate(n);
    // RFC 1350 puts no limit on a request, but most servers read it into 512 bytes.
    anyhow::ensure!(
        buf.len() <= 512,
        "RRQ of {} bytes exceeds 512: shorten the file name",
        buf.len()
    );
    Ok(buf)
}

/// Writes a probe's ERROR 8 into `buf`; returns its length.
pub fn emit_refuse(buf: &mut [u8; 32]) -> usize {
    let packet = Packet::Error {
        code: ErrorCode::OptionRefused,
        message: b"size only",
    };
    // Four bytes of header, the message and its NUL always fit in 32.
    packet.emit(buf).unwrap_or(0)
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

#[cfg(test)]
mod tests {
    //! The protocol itself is the core's and tested there (`ringtftp::client`); these test what
    //! this wrapper adds: the RRQ's limit, the content checks and the failures reported.

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
            probe: false,
            msftwindow: false,
            reack_every_stray: false,
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
    fn rrq_carries_the_options_asked_for_within_512_bytes() {
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
    fn bytes_are_checked_as_they_arrive() {
        let mut c = config();
        let file: Vec<u8> = (0..1200u32).map(|i| i as u8).collect();
        c.expect = Expect::Bytes(file.clone());
        let mut h = Harness::new(c);
        assert_eq!(h.data(1, &file[..512]), Some(Transmit::Ack(1)));
        assert_eq!(h.data(2, &file[512..1024]), Some(Transmit::Ack(2)));
        assert_eq!(h.client.outcome(), None);
        assert_eq!(h.data(3, &file[1024..]), Some(Transmit::Ack(3)));
        assert_eq!(h.client.outcome(), Some(Ok(())));
        assert_eq!(h.client.bytes(), 1200);
        assert_eq!(h.client.finished(), Some(h.now));
    }

    #[test]
    fn sha256_is_checked_at_the_end() {
        let mut c = config();
        c.expect = Expect::Sha256(sha256(&[7; 1024]));
        let mut h = Harness::new(c.clone());
        h.data(1, &[7; 512]);
        h.data(2, &[7; 512]);
        assert_eq!(h.data(3, b""), Some(Transmit::Ack(3)));
        assert_eq!(h.client.outcome(), Some(Ok(())));
        let mut h = Harness::new(c);
        h.data(1, &[7; 512]);
        h.data(2, &[8; 100]);
        assert_eq!(h.client.outcome(), Some(Err(Failure::Mismatch)));
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
    fn the_core_outcomes_become_failures() {
        let mut c = config();
        c.tsize = true;
        let mut h = Harness::new(c);
        h.feed(b"\x00\x06tsize\x00600\x00");
        h.data(1, &[1; 512]);
        h.data(2, &[1; 10]);
        assert_eq!(h.client.outcome(), Some(Err(Failure::Size)));

        let mut h = Harness::new(config());
        assert_eq!(h.feed(b"\x00\x05\x00\x01File not found\x00"), None);
        assert_eq!(h.client.outcome(), Some(Err(Failure::Error(1))));
        assert_eq!(Failure::Error(1).to_string(), "ERROR 1");
        assert_eq!(h.data(1, b"x"), None);

        let mut h = Harness::new(config());
        h.feed(b"\x00\x04\x00\x01");
        assert_eq!(
            h.client.outcome(),
            Some(Err(Failure::Protocol("unexpected opcode")))
        );

        let mut h = Harness::new(config());
        for _ in 0..3 {
            assert_eq!(h.advance(Duration::from_secs(1)), Some(Transmit::Rrq));
        }
        assert_eq!(h.advance(Duration::from_secs(1)), None);
        assert_eq!(h.client.outcome(), Some(Err(Failure::Timeout)));
        assert_eq!(h.client.counters().retransmits, 3);
    }

    #[test]
    fn a_probe_answers_the_oack_with_error_8_and_ends() {
        let mut c = config();
        c.probe = true;
        c.tsize = true;
        c.blksize = Some(1468);
        c.windowsize = Some(4);
        let mut h = Harness::new(c.clone());
        assert_eq!(h.client.outcome(), None);
        assert_eq!(
            h.feed(b"\x00\x06tsize\x00123456\x00blksize\x001468\x00"),
            Some(Transmit::Refuse)
        );
        assert_eq!(h.client.poll_transmit(), None, "no ACK 0 after the ERROR");
        assert_eq!(h.client.outcome(), Some(Ok(())));
        let mut buf = [0; 32];
        let n = emit_refuse(&mut buf);
        assert_eq!(&buf[..n], b"\x00\x05\x00\x08size only\x00");
        // A server that ignores options: DATA 1 is refused the same way.
        let mut h = Harness::new(c.clone());
        assert_eq!(h.data(1, &[0; 512]), Some(Transmit::Refuse));
        assert_eq!(h.client.outcome(), Some(Ok(())));
        // An ERROR is the probe's failure.
        let mut h = Harness::new(c);
        assert_eq!(h.feed(b"\x00\x05\x00\x01nope\x00"), None);
        assert_eq!(h.client.outcome(), Some(Err(Failure::Error(1))));
    }

    #[test]
    fn abort_reports_the_reason_given() {
        let mut h = Harness::new(config());
        h.data(1, &[0; 512]);
        h.client.abort(h.now, Failure::Aborted);
        h.client.abort(h.now, Failure::Io(5));
        assert_eq!(h.client.outcome(), Some(Err(Failure::Aborted)));
        assert_eq!(h.client.finished(), Some(h.now));
        assert_eq!(h.data(2, b""), None);
    }

    #[test]
    fn netascii_is_decoded_across_blocks_before_checking() {
        let mut c = config();
        c.mode = Mode::Netascii;
        let text = b"line one\nline two\r\nend\r".repeat(40);
        let wire = ringtftp::netascii::encode_to_vec(&text);
        c.expect = Expect::Bytes(text.clone());
        c.tsize = true;
        let oack = format!("\x00\x06tsize\x00{}\x00", wire.len());
        let blocks: Vec<&[u8]> = wire.chunks(512).collect();
        for expect in [Expect::Bytes(text.clone()), Expect::Sha256(sha256(&text))] {
            c.expect = expect;
            let mut h = Harness::new(c.clone());
            h.feed(oack.as_bytes());
            for (i, chunk) in blocks.iter().enumerate() {
                h.data((i + 1) as u16, chunk);
            }
            if wire.len() % 512 == 0 {
                h.data(blocks.len() as u16 + 1, b"");
            }
            assert_eq!(h.client.outcome(), Some(Ok(())));
        }
    }
}
