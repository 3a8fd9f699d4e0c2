//! A raw TFTP peer on a plain UDP socket, built on the library's own codec
//! (`ringtftp::packet`): for what no real client can be made to do (a WRQ answered by hand, a
//! DATA sent to the main port, an RRQ sent twice), and downloads with the library's own reader
//! (`ringtftp::client`), for many transfers at once from threads.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ringtftp::client::{self, Client};
use ringtftp::options::Ask;
use ringtftp::packet::{self, ErrorCode, Mode, Options, Packet, Request};

/// How long the lock-step client waits for a DATA before it sends its last ACK again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Silent waits in a row after which the lock-step client gives up.
const MAX_RETRIES: u32 = 8;
/// No download in these tests may take longer.
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(120);

/// One UDP socket on the loopback address of the server's family.
#[derive(Debug)]
pub struct Peer {
    sock: UdpSocket,
}

impl Peer {
    /// A socket on an ephemeral port of `server`'s IP (127.0.0.1 or ::1).
    pub fn new(server: SocketAddr) -> Peer {
        Peer::bind(server.ip())
    }

    pub fn bind(ip: IpAddr) -> Peer {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0))
            .unwrap_or_else(|e| panic!("cannot bind a UDP socket on {ip}: {e}"));
        Peer { sock }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local_addr")
    }

    pub fn send_to(&self, datagram: &[u8], to: SocketAddr) {
        self.sock
            .send_to(datagram, to)
            .unwrap_or_else(|e| panic!("cannot send to {to}: {e}"));
    }

    /// The next datagram within `timeout`, with its sender. ICMP errors (a closed port) count
    /// as silence.
    pub fn recv(&self, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            self.sock
                .set_read_timeout(Some(left))
                .expect("set_read_timeout");
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                // ECONNREFUSED from an earlier send's ICMP: keep listening.
                Err(_) => continue,
            }
        }
    }

    /// Every datagram that arrives within `window`.
    pub fn collect(&self, window: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv(left) {
                Some(datagram) => got.push(datagram),
                None => break,
            }
        }
        got
    }

    /// Sends `datagram` to `to` and returns the ERROR that comes back within 2 s (code, message
    /// and sender); panics on silence or on any other reply.
    pub fn expect_error(&self, datagram: &[u8], to: SocketAddr) -> (u16, String, SocketAddr) {
        self.send_to(datagram, to);
        let Some((reply, from)) = self.recv(Duration::from_secs(2)) else {
            panic!("no reply from {to} within 2 s to {datagram:?}");
        };
        match parse_error(&reply) {
            Some((code, message)) => (code, message, from),
            None => panic!(
                "expected an ERROR from {to}, got {} from {from}",
                describe(&reply)
            ),
        }
    }
}

/// An RRQ for `name` with `options` (`("blksize", "1468")`...).
pub fn rrq(name: &str, mode: Mode, options: &[(&str, &str)]) -> Vec<u8> {
    request(true, name, mode, options)
}

/// A WRQ for `name` with `options`.
pub fn wrq(name: &str, mode: Mode, options: &[(&str, &str)]) -> Vec<u8> {
    request(false, name, mode, options)
}

fn request(read: bool, name: &str, mode: Mode, options: &[(&str, &str)]) -> Vec<u8> {
    let raw = option_list(options);
    let req = Request {
        filename: name,
        mode,
        options: Options::parse(&raw),
    };
    emit(&if read {
        Packet::Rrq(req)
    } else {
        Packet::Wrq(req)
    })
}

pub fn ack(block: u16) -> Vec<u8> {
    emit(&Packet::Ack { block })
}

pub fn data(block: u16, bytes: &[u8]) -> Vec<u8> {
    emit(&Packet::Data { block, data: bytes })
}

pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    emit(&Packet::Error {
        code,
        message: message.as_bytes(),
    })
}

pub fn oack(options: &[(&str, &str)]) -> Vec<u8> {
    let raw = option_list(options);
    emit(&Packet::Oack(Options::parse(&raw)))
}

fn option_list(options: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = vec![0; 1024];
    let mut len = 0;
    for (name, value) in options {
        packet::push_option(&mut raw, &mut len, name, value).expect("options fit in 1 KiB");
    }
    raw.truncate(len);
    raw
}

fn emit(p: &Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0; 70_000];
    let n = p.emit(&mut buf).expect("packet fits");
    buf.truncate(n);
    buf
}

/// `(code, message)` if `datagram` is an ERROR packet.
pub fn parse_error(datagram: &[u8]) -> Option<(u16, String)> {
    match Packet::parse(datagram) {
        Ok(Packet::Error { code, message }) => {
            Some((code.to_u16(), String::from_utf8_lossy(message).into_owned()))
        }
        _ => None,
    }
}

/// The options of an OACK, names lower-cased.
pub fn parse_oack(datagram: &[u8]) -> Option<Vec<(String, String)>> {
    match Packet::parse(datagram) {
        Ok(Packet::Oack(options)) => Some(
            options
                .iter()
                .map(|(n, v)| {
                    (
                        String::from_utf8_lossy(n).to_ascii_lowercase(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect(),
        ),
        _ => None,
    }
}

/// A short account of a datagram for messages: `DATA 7 (512 bytes)`, `ERROR 1 "..."`.
pub fn describe(datagram: &[u8]) -> String {
    match Packet::parse(datagram) {
        Ok(Packet::Rrq(r)) => format!("RRQ {:?} {}", r.filename, r.mode.as_str()),
        Ok(Packet::Wrq(r)) => format!("WRQ {:?} {}", r.filename, r.mode.as_str()),
        Ok(Packet::Data { block, data }) => format!("DATA {block} ({} bytes)", data.len()),
        Ok(Packet::Ack { block }) => format!("ACK {block}"),
        Ok(Packet::Error { code, message }) => format!(
            "ERROR {} {:?}",
            code.to_u16(),
            String::from_utf8_lossy(message)
        ),
        Ok(Packet::Oack(o)) => format!("OACK {o:?}"),
        Err(e) => format!("unparsable {} bytes ({e})", datagram.len()),
    }
}

/// What a finished [`download`] got.
#[derive(Debug)]
pub struct Download {
    pub data: Vec<u8>,
    /// The server's transfer port (its TID).
    pub tid: SocketAddr,
    /// The OACK's options (lower-case names), empty if the server answered with DATA 1.
    pub oack: Vec<(String, String)>,
    /// DATA blocks accepted, the final (short) one included.
    pub blocks: u64,
}

/// Downloads `name` with the library's own reader (`ringtftp::client`) asking for `options`
/// (`blksize`, `windowsize`, `tsize` and `timeout` are understood; lock-step unless a window is
/// asked). `on_block(n)` is called after the n-th block (counted from 1, not wrapped) is
/// accepted and acknowledged.
///
/// The block number wraps from 65535 to 0 as tftp-hpa and every PXE ROM expect. A silent second
/// sends the last ACK (or the RRQ) again; 8 in a row, an ERROR, or a packet that breaks the
/// protocol end the download with `Err`.
pub fn download(
    server: SocketAddr,
    name: &str,
    mode: Mode,
    options: &[(&str, &str)],
    mut on_block: impl FnMut(u64),
) -> Result<Download, String> {
    let config = client::Config {
        mode,
        ask: ask(options),
        timeout: RETRY_AFTER,
        retries: MAX_RETRIES,
        reack_every_stray: false,
    };
    let peer = Peer::new(server);
    let start = Instant::now();
    let mut request = vec![0; 1024];
    let n = config
        .emit_rrq(name, &mut request)
        .map_err(|e| format!("{name}: {e}"))?;
    request.truncate(n);
    let mut reader = Client::new(config, start);
    let mut tid: Option<SocketAddr> = None;
    let mut oack = Vec::new();
    let mut data = Vec::new();
    let mut message = String::new();
    loop {
        while let Some(transmit) = reader.poll_transmit() {
            match (transmit, tid) {
                (client::Transmit::Rrq, _) => peer.send_to(&request, server),
                (client::Transmit::Ack(block), Some(tid)) => {
                    let mut ack = [0; 5];
                    let len = reader.emit_ack(block, &mut ack);
                    peer.send_to(&ack[..len], tid)
                }
                (client::Transmit::Ack(_), None) => unreachable!("an ACK answers the TID"),
            }
        }
        let blocks = reader.blocks();
        match reader.outcome() {
            None => {}
            Some(client::Outcome::Complete) => {
                let tid = tid.expect("a complete download heard the server");
                return Ok(Download {
                    data,
                    tid,
                    oack,
                    blocks,
                });
            }
            Some(client::Outcome::Error(code)) => {
                return Err(format!(
                    "{name}: ERROR {} {message:?} after {blocks} blocks",
                    code.to_u16()
                ))
            }
            Some(client::Outcome::TimedOut) => {
                return Err(format!(
                    "{name}: server silent for {MAX_RETRIES} s after {blocks} blocks"
                ))
            }
            Some(other) => return Err(format!("{name}: {other:?} after {blocks} blocks")),
        }
        if start.elapsed() > DOWNLOAD_DEADLINE {
            return Err(format!(
                "{name}: not done after {DOWNLOAD_DEADLINE:?} ({blocks} blocks)"
            ));
        }
        let wait = reader.poll_timeout().map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        });
        let Some((reply, from)) = peer.recv(wait) else {
            reader.handle_timeout(Instant::now());
            continue;
        };
        match tid {
            None if from.ip() == server.ip() && from.port() != server.port() => tid = Some(from),
            None => {
                return Err(format!(
                    "{name}: first reply {} came from {from}, not from a transfer port",
                    describe(&reply)
                ))
            }
            // RFC 1350 §4: a packet from another port is not part of this transfer.
            Some(t) if t != from => continue,
            Some(_) => {}
        }
        if blocks == 0 && oack.is_empty() {
            oack = parse_oack(&reply).unwrap_or_default();
        }
        if let Some((_, text)) = parse_error(&reply) {
            message = text;
        }
        if let Some(payload) = reader.handle_datagram(Instant::now(), &reply) {
            data.extend_from_slice(payload);
            // Acknowledged first, as a driver sends what the reader asks before anything else.
            if let Some(client::Transmit::Ack(block)) = reader.poll_transmit() {
                let mut ack = [0; 5];
                let len = reader.emit_ack(block, &mut ack);
                peer.send_to(&ack[..len], from);
            }
            on_block(reader.blocks());
        }
    }
}

/// The options a download asks for, as the reader's [`Ask`].
fn ask(options: &[(&str, &str)]) -> Ask {
    fn num<T: std::str::FromStr>(option: &str, value: &str) -> T {
        value
            .parse()
            .unwrap_or_else(|_| panic!("raw::download: bad {option} {value:?}"))
    }
    let mut ask = Ask::default();
    for &(option, value) in options {
        match option {
            "blksize" => ask.blksize = Some(num(option, value)),
            "windowsize" => ask.windowsize = Some(num(option, value)),
            "tsize" => ask.tsize = true,
            "timeout" => ask.timeout = Some(Duration::from_secs(num(option, value))),
            "msftwindow" => ask.msftwindow = true,
            _ => panic!("raw::download does not ask for {option}"),
        }
    }
    ask
}
