//! Option negotiation: the client's RFC 2347 option list becomes a [`Negotiated`] set of legal
//! values and the OACK that acknowledges them.
//!
//! Options understood (anything else is left out of the OACK, RFC 2347 §"Option Acknowledgment"):
//! - `blksize` (RFC 2348): 8..=65464 bytes; larger requests are clamped to [`Limits::blksize_max`],
//!   smaller ones are refused with ERROR 8.
//! - `tsize` (RFC 2349 §"Transfer Size Option"): answered with the real size of what will be
//!   sent — for netascii the encoded size.
//! - `timeout` (RFC 2349 §"Timeout Interval Option"): seconds; fractions are accepted as nobodd
//!   and tftp-hpa's `utimeout` users expect. `utimeout` (microseconds, a tftp-hpa extension) wins
//!   over `timeout` and is the one acknowledged when both are sent. Either must lie within
//!   10 ms..=255 s or the request is refused with ERROR 8.
//! - `windowsize` (RFC 7440 §3): 1..=65535 blocks, clamped to [`Limits::windowsize_max`].
//! - `msftwindow` (Windows Deployment Services' variable window, documented only by Wireshark's
//!   TFTP dissector): asked with the value `31416`, granted with `27182`; every ACK after the
//!   OACK then carries one more byte, the number of blocks the client wants before its next
//!   ACK, which the transfer sends within the same caps as `windowsize`
//!   ([`Negotiated::window_max`]).
//!
//! When nothing is accepted, there is no OACK and the transfer starts with DATA 1 (RFC 2347).

use std::num::NonZeroU16;
use std::time::Duration;

use crate::packet::{self, BufferTooSmall, ErrorCode, Options, Packet};

/// The server's caps on what a client may negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest block size granted (RFC 2348 allows up to 65464).
    pub blksize_max: u16,
    /// The largest window granted (RFC 7440 allows up to 65535).
    pub windowsize_max: u16,
    /// The most payload bytes one window may carry: a burst larger than the client's socket
    /// receive buffer is partly dropped every time, and the transfer crawls from timeout to
    /// timeout. The window granted shrinks to fit (RFC 7440 §3 lets a server answer less).
    pub window_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            blksize_max: BLKSIZE_MAX,
            // Past 64 blocks a window only grows the burst lost to one drop; every client measured
            // (edk2 asks 4, atftp users 16) stays below it.
            windowsize_max: 64,
            // Linux's default receive buffer (net.core.rmem_default) is 208 KiB of kernel
            // memory, about half of it payload for 8 KiB datagrams; 96 KiB leaves a margin.
            window_bytes_max: 96 * 1024,
        }
    }
}

/// The options in force for one transfer, each already within its legal range.
///
/// Read them through the accessors, whose types carry the ranges (a block size and a window are
/// never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes per DATA block (512 unless negotiated).
    blksize: u16,
    /// Blocks sent before waiting for an ACK (1, lock-step, unless negotiated).
    windowsize: u16,
    /// The retransmission interval the client fixed, if it did; otherwise the server adapts.
    timeout: Option<Duration>,
    /// The transfer size answered to a `tsize` request.
    tsize: Option<u64>,
    /// Whether the window follows the client's ACKs (`msftwindow`).
    msftwindow: bool,
    /// The largest window the client may ask for in an ACK (`msftwindow`).
    window_cap: u16,
    /// The accepted options, in the order the client sent them, for the OACK.
    acked: [Option<Acked>; 5],
}

/// An option that goes into the OACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acked {
    Blksize,
    Tsize,
    /// `timeout`, echoed in seconds.
    Timeout,
    /// `utimeout`, echoed in microseconds.
    Utimeout,
    Windowsize,
    /// `msftwindow`, granted with its fixed value.
    Msftwindow,
}

/// What a WDS client sends as `msftwindow` (round(π × 10000)), and the grant (floor(e × 10000)).
const MSFTWINDOW_ASKED: &str = "31416";
const MSFTWINDOW_GRANTED: &str = "27182";

/// Why a request's options were refused; the server answers ERROR 8 (RFC 2347).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionError {
    /// `blksize` below 8 or not a number.
    Blksize,
    /// `timeout`/`utimeout` outside 10 ms..=255 s or not a number.
    Timeout,
    /// `windowsize` of 0 or not a number.
    Windowsize,
}

impl OptionError {
    /// The TFTP error code a server answers with: always 8.
    pub fn code(self) -> ErrorCode {
        ErrorCode::OptionRefused
    }

    /// The ERROR message, in nobodd's words.
    pub fn message(self) -> &'static str {
        match self {
            Self::Blksize => "silly block size",
            Self::Timeout => "silly timeout",
            Self::Windowsize => "silly window size",
        }
    }
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for OptionError {}

/// The block size of RFC 1350, used when none is negotiated.
pub const BLKSIZE_DEFAULT: u16 = 512;
/// RFC 2348: "between 8 and 65464 octets, inclusive".
pub const BLKSIZE_MIN: u16 = 8;
/// RFC 2348: 65464 = 65535 - 20 (IP) - 8 (UDP) - 4 (TFTP) - 39 historical octets of slack.
pub const BLKSIZE_MAX: u16 = 65464;
/// nobodd's bounds on `timeout`/`utimeout`: RFC 2349 allows 1..=255 s, fractions go down to 10 ms.
pub const TIMEOUT_MIN: Duration = Duration::from_millis(10);
/// RFC 2349: at most 255 seconds.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(255);
/// RFC 1350's lock-step: one block per ACK, the window when none is negotiated.
pub const WINDOWSIZE_DEFAULT: u16 = 1;
/// RFC 7440 §3: "between 1 and 65535 blocks, inclusive".
pub const WINDOWSIZE_MAX: u16 = u16::MAX;
/// [`BLKSIZE_DEFAULT`], as the accessor's type.
const BLKSIZE_DEFAULT_NZ: NonZeroU16 = match NonZeroU16::new(BLKSIZE_DEFAULT) {
    Some(n) => n,
    None => panic!("512 is not 0"),
};

impl Negotiated {
    /// The options of a request without any: lock-step 512-byte blocks, adaptive timeout.
    pub const DEFAULT: Negotiated = Negotiated {
        blksize: BLKSIZE_DEFAULT,
        windowsize: WINDOWSIZE_DEFAULT,
        timeout: None,
        tsize: None,
        msftwindow: false,
        window_cap: WINDOWSIZE_DEFAULT,
        acked: [None; 5],
    };

    /// Negotiates the client's `options` within `limits`.
    ///
    /// `tsize` is called only when the client asked for the size, so a caller whose size is
    /// costly to learn (a netascii encoding, a generated source) pays only when asked; `None`
    /// leaves `tsize` out of the OACK (size unknown).
    pub fn negotiate(
        options: &Options<'_>,
        limits: &Limits,
        tsize: impl FnOnce() -> Option<u64>,
    ) -> Result<Negotiated, OptionError> {
        let mut n = Negotiated::DEFAULT;
        let mut tsize = Some(tsize);
        let mut order = [None; 5];
        let mut utimeout = false;
        // Walk the pairs in order but resolve each option from its last occurrence, so the OACK
        // keeps the client's order and the last duplicate wins.
        for (name, _) in options.iter() {
            let Some(kind) = Acked::from_name(name) else {
                continue;
            };
            // `timeout` and `utimeout` share one slot in the OACK.
            let slot = if kind == Acked::Utimeout {
                Acked::Timeout
            } else {
                kind
            };
            if order.iter().flatten().any(|&k| k == slot) {
                continue;
            }
            if let Some(free) = order.iter_mut().find(|k| k.is_none()) {
                *free = Some(slot);
            }
        }
        for slot in order.into_iter().flatten() {
            match slot {
                Acked::Blksize => {
                    let value = options.get("blksize").unwrap_or_default();
                    let v = parse_uint(value).ok_or(OptionError::Blksize)?;
                    if v < u64::from(BLKSIZE_MIN) {
                        return Err(OptionError::Blksize);
                    }
                    n.blksize = clamp_u16(v, limits.blksize_max.clamp(BLKSIZE_MIN, BLKSIZE_MAX));
                }
                Acked::Windowsize => {
                    let value = options.get("windowsize").unwrap_or_default();
                    let v = parse_uint(value).ok_or(OptionError::Windowsize)?;
                    if v == 0 {
                        return Err(OptionError::Windowsize);
                    }
                    n.windowsize = clamp_u16(v, limits.windowsize_max.max(1));
                }
                Acked::Timeout => {
                    let timeout = if let Some(us) = options.get("utimeout") {
                        utimeout = true;
                        parse_uint(us).map(Duration::from_micros)
                    } else {
                        parse_seconds(options.get("timeout").unwrap_or_default())
                    };
                    let timeout = timeout
                        .filter(|t| (TIMEOUT_MIN..=TIMEOUT_MAX).contains(t))
                        .ok_or(OptionError::Timeout)?;
                    n.timeout = Some(timeout);
                }
                Acked::Tsize => {
                    // The client's value (0 in an RRQ) carries nothing for a read.
                    n.tsize = tsize.take().and_then(|size| size());
                }
                // Any other value is not WDS's extension: left out of the OACK.
                Acked::Msftwindow => {
                    n.msftwindow = options.get("msftwindow") == Some(MSFTWINDOW_ASKED.as_bytes())
                }
                Acked::Utimeout => unreachable!("folded into the timeout slot"),
            }
        }
        let fits = limits.window_bytes_max / usize::from(n.blksize().get());
        let cap = limits
            .windowsize_max
            .max(1)
            .min(u16::try_from(fits.max(1)).unwrap_or(u16::MAX));
        n.windowsize = n.windowsize.min(cap);
        if n.msftwindow {
            n.window_cap = cap;
        }
        let mut k = 0;
        for slot in order.into_iter().flatten() {
            let acked = match slot {
                Acked::Timeout if utimeout => Acked::Utimeout,
                Acked::Tsize if n.tsize.is_none() => continue,
                Acked::Msftwindow if !n.msftwindow => continue,
                other => other,
            };
            n.acked[k] = Some(acked);
            k += 1;
        }
        Ok(n)
    }

    /// Bytes per DATA block: 512 unless negotiated, never 0 (RFC 2348: at least 8).
    pub fn blksize(&self) -> NonZeroU16 {
        NonZeroU16::new(self.blksize).unwrap_or(BLKSIZE_DEFAULT_NZ)
    }

    /// Blocks sent before waiting for an ACK: 1 (lock-step) unless negotiated, never 0
    /// (RFC 7440 §3).
    pub fn windowsize(&self) -> NonZeroU16 {
        NonZeroU16::new(self.windowsize).unwrap_or(NonZeroU16::MIN)
    }

    /// Whether the client sets each window's size in its ACKs (`msftwindow`).
    pub fn msftwindow(&self) -> bool {
        self.msftwindow
    }

    /// The largest window the transfer may send: `windowsize`, or with `msftwindow` the most
    /// a client may ask for in an ACK (the `windowsize` caps of [`Limits`]).
    pub fn window_max(&self) -> NonZeroU16 {
        let max = if self.msftwindow {
            self.window_cap.max(self.windowsize)
        } else {
            self.windowsize
        };
        NonZeroU16::new(max).unwrap_or(NonZeroU16::MIN)
    }

    /// The retransmission interval the client fixed, if it did (RFC 2349).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The transfer size: answered to a `tsize` request (server), or announced by the OACK
    /// (client).
    pub fn tsize(&self) -> Option<u64> {
        self.tsize
    }

    /// Whether an OACK must be sent (some option was accepted).
    pub fn has_oack(&self) -> bool {
        self.acked[0].is_some()
    }

    /// Writes the OACK acknowledging the accepted options into `buf`; returns its length.
    pub fn emit_oack(&self, buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
        // The opcode alone: an OACK with no options yet.
        let mut len = Packet::Oack(Options::EMPTY).emit(buf)?;
        let mut num = [0u8; 24];
        for acked in self.acked.iter().flatten() {
            let (name, value) = match acked {
                Acked::Blksize => ("blksize", fmt_uint(self.blksize.into(), &mut num)),
                Acked::Windowsize => ("windowsize", fmt_uint(self.windowsize.into(), &mut num)),
                Acked::Msftwindow => ("msftwindow", MSFTWINDOW_GRANTED),
                Acked::Tsize => ("tsize", fmt_uint(self.tsize.unwrap_or(0), &mut num)),
                Acked::Timeout => ("timeout", fmt_seconds(self.timeout, &mut num)),
                Acked::Utimeout => {
                    let us = self.timeout.map_or(0, |t| t.as_micros() as u64);
                    ("utimeout", fmt_uint(us, &mut num))
                }
            };
            packet::push_option(buf, &mut len, name, value)?;
        }
        Ok(len)
    }
}

impl Default for Negotiated {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The options a client asks for in its RRQ (RFC 2347), and its reading of the server's OACK.
///
/// A server may only acknowledge options it was sent (RFC 2347), may lower `blksize` and
/// `windowsize` but never raise them (RFC 2348, RFC 7440 §3), must echo `timeout` as it was
/// asked or leave it out (RFC 2349), and answers `tsize` with the size it will send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ask {
    /// The `blksize` to ask for (RFC 2348), `None` for RFC 1350's 512 bytes.
    pub blksize: Option<u16>,
    /// The `windowsize` to ask for (RFC 7440), `None` for lock-step.
    pub windowsize: Option<u16>,
    /// Whether to ask for the transfer size (RFC 2349, sent as `tsize` 0).
    pub tsize: bool,
    /// The `timeout` to ask for (RFC 2349), sent in seconds (a fraction where it has one).
    pub timeout: Option<Duration>,
    /// Whether to ask for WDS's variable window (`msftwindow` 31416): granted, every ACK then
    /// carries the size of the next window.
    pub msftwindow: bool,
}

/// Why a client refuses an OACK: the server acknowledged something it was not asked, or a
/// value it may not grant. The message names the option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OackError(&'static str);

impl OackError {
    /// What is wrong, e.g. "OACK blksize outside 8..=asked".
    pub fn message(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Display for OackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for OackError {}

impl Ask {
    /// Whether nothing is asked: the server answers with DATA 1, never an OACK.
    pub fn is_empty(&self) -> bool {
        *self == Ask::default()
    }

    /// Appends the options to an option list being built in `buf` at `*len`, in the order
    /// `blksize`, `tsize`, `timeout`, `windowsize`, `msftwindow` (as WDS clients send them).
    pub fn emit(&self, buf: &mut [u8], len: &mut usize) -> Result<(), BufferTooSmall> {
        let mut num = [0u8; 24];
        if let Some(blksize) = self.blksize {
            packet::push_option(buf, len, "blksize", fmt_uint(blksize.into(), &mut num))?;
        }
        if self.tsize {
            packet::push_option(buf, len, "tsize", "0")?;
        }
        if let Some(timeout) = self.timeout {
            packet::push_option(buf, len, "timeout", fmt_seconds(Some(timeout), &mut num))?;
        }
        if let Some(windowsize) = self.windowsize {
            packet::push_option(
                buf,
                len,
                "windowsize",
                fmt_uint(windowsize.into(), &mut num),
            )?;
        }
        if self.msftwindow {
            packet::push_option(buf, len, "msftwindow", MSFTWINDOW_ASKED)?;
        }
        Ok(())
    }

    /// The options in force after the server's OACK, or why the OACK is refused.
    pub fn accept(&self, oack: &Options<'_>) -> Result<Negotiated, OackError> {
        let mut n = Negotiated::DEFAULT;
        let mut k = 0;
        for (name, value) in oack.iter() {
            let kind =
                Acked::from_name(name).ok_or(OackError("OACK with an option not asked for"))?;
            match kind {
                Acked::Blksize => {
                    let asked = self
                        .blksize
                        .ok_or(OackError("OACK blksize not asked for"))?;
                    let v = parse_uint(value).ok_or(OackError("OACK blksize not a number"))?;
                    if !(u64::from(BLKSIZE_MIN)..=u64::from(asked)).contains(&v) {
                        return Err(OackError("OACK blksize outside 8..=asked"));
                    }
                    n.blksize = clamp_u16(v, asked);
                }
                Acked::Windowsize => {
                    let asked = self
                        .windowsize
                        .ok_or(OackError("OACK windowsize not asked for"))?;
                    let v = parse_uint(value).ok_or(OackError("OACK windowsize not a number"))?;
                    if !(1..=u64::from(asked)).contains(&v) {
                        return Err(OackError("OACK windowsize outside 1..=asked"));
                    }
                    n.windowsize = clamp_u16(v, asked);
                }
                Acked::Tsize => {
                    if !self.tsize {
                        return Err(OackError("OACK tsize not asked for"));
                    }
                    n.tsize = Some(parse_uint(value).ok_or(OackError("OACK tsize not a number"))?);
                }
                Acked::Timeout => {
                    let asked = self
                        .timeout
                        .ok_or(OackError("OACK timeout not asked for"))?;
                    let mut num = [0u8; 24];
                    if value != fmt_seconds(Some(asked), &mut num).as_bytes() {
                        return Err(OackError("OACK timeout differs from the one asked for"));
                    }
                    n.timeout = Some(asked);
                }
                Acked::Utimeout => return Err(OackError("OACK utimeout not asked for")),
                Acked::Msftwindow => {
                    if !self.msftwindow {
                        return Err(OackError("OACK msftwindow not asked for"));
                    }
                    if value != MSFTWINDOW_GRANTED.as_bytes() {
                        return Err(OackError("OACK msftwindow is not 27182"));
                    }
                    n.msftwindow = true;
                }
            }
            // A repeated name is taken at its last value and recorded once.
            if n.acked[..k].contains(&Some(kind)) {
                continue;
            }
            if let Some(slot) = n.acked.get_mut(k) {
                *slot = Some(kind);
                k += 1;
            }
        }
        Ok(n)
    }
}

impl Acked {
    fn from_name(name: &[u8]) -> Option<Self> {
        const NAMES: [(&str, Acked); 6] = [
            ("blksize", Acked::Blksize),
            ("tsize", Acked::Tsize),
            ("timeout", Acked::Timeout),
            ("utimeout", Acked::Utimeout),
            ("windowsize", Acked::Windowsize),
            ("msftwindow", Acked::Msftwindow),
        ];
        NAMES
            .iter()
            .find(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()))
            .map(|&(_, kind)| kind)
    }
}

/// An unsigned decimal; huge values saturate (they are clamped or refused afterwards).
fn parse_uint(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// Seconds, with an optional fraction (`2`, `0.5`, `1.25`).
fn parse_seconds(value: &[u8]) -> Option<Duration> {
    let (whole, frac) = match value.iter().position(|&b| b == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    let secs = if whole.is_empty() {
        0
    } else {
        parse_uint(whole)?
    };
    let mut nanos = 0u32;
    if !frac.is_empty() {
        if !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // Digits past nanoseconds cannot matter to a timer.
        for (i, &d) in frac.iter().take(9).enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
    }
    Some(Duration::new(secs.min(u64::from(u32::MAX)), nanos))
}

fn clamp_u16(v: u64, max: u16) -> u16 {
    u16::try_from(v.min(u64::from(max))).unwrap_or(max)
}

/// Formats `v` into `buf` without allocating.
fn fmt_uint(mut v: u64, buf: &mut [u8; 24]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Formats a timeout in seconds, with as few decimals as it needs (`1`, `0.5`, `1.25`).
fn fmt_seconds(timeout: Option<Duration>, buf: &mut [u8; 24]) -> &str {
    let t = timeout.unwrap_or_default();
    let mut frac = t.subsec_micros();
    // Whole seconds print right-aligned; the fraction goes after them.
    let whole_len = fmt_uint(t.as_secs(), buf).len();
    let start = buf.len() - whole_len;
    buf.copy_within(start.., 0);
    let mut len = whole_len;
    if frac != 0 {
        buf[len] = b'.';
        len += 1;
        let mut digits = 6;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        for i in (0..digits).rev() {
            buf[len + i] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        len += digits;
    }
    std::str::from_utf8(&buf[..len]).unwrap_or("1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn negotiate(raw: &[u8]) -> Result<Negotiated, OptionError> {
        Negotiated::negotiate(&Options::parse(raw), &Limits::default(), || Some(1234))
    }

    fn oack(n: &Negotiated) -> Vec<u8> {
        let mut buf = [0; 128];
        let len = n.emit_oack(&mut buf).unwrap();
        buf[..len].to_vec()
    }

    #[test]
    fn no_options_means_no_oack() {
        let n = negotiate(b"").unwrap();
        assert_eq!(n, Negotiated::DEFAULT);
        assert!(!n.has_oack());
        let n = negotiate(b"foo\x00bar\x00").unwrap();
        assert!(!n.has_oack(), "unknown options are left out");
    }

    #[test]
    fn edk2_probe_is_acknowledged_in_client_order() {
        let n = negotiate(b"tsize\x000\x00blksize\x001468\x00windowsize\x004\x00").unwrap();
        assert_eq!((n.blksize, n.windowsize, n.tsize), (1468, 4, Some(1234)));
        assert_eq!(
            oack(&n),
            b"\x00\x06tsize\x001234\x00blksize\x001468\x00windowsize\x004\x00"
        );
    }

    #[test]
    fn blksize_is_clamped_or_refused() {
        assert_eq!(negotiate(b"blksize\x0070000\x00").unwrap().blksize, 65464);
        assert_eq!(
            negotiate(b"blksize\x0099999999999999999999\x00")
                .unwrap()
                .blksize,
            65464
        );
        assert_eq!(negotiate(b"blksize\x008\x00").unwrap().blksize, 8);
        assert_eq!(negotiate(b"blksize\x007\x00"), Err(OptionError::Blksize));
        assert_eq!(negotiate(b"blksize\x00\x00"), Err(OptionError::Blksize));
        assert_eq!(negotiate(b"blksize\x00-1\x00"), Err(OptionError::Blksize));
        assert_eq!(negotiate(b"blksize\x001k\x00"), Err(OptionError::Blksize));
        let limits = Limits {
            blksize_max: 1468,
            ..Limits::default()
        };
        let n = Negotiated::negotiate(&Options::parse(b"blksize\x009000\x00"), &limits, || None)
            .unwrap();
        assert_eq!(oack(&n), b"\x00\x06blksize\x001468\x00");
    }

    #[test]
    fn msftwindow_is_granted_only_for_wds_value() {
        let n = negotiate(b"blksize\x001456\x00msftwindow\x0031416\x00").unwrap();
        assert!(n.msftwindow());
        // Lock-step until the first ACK says otherwise; up to 96 KiB of blocks after.
        assert_eq!((n.windowsize().get(), n.window_max().get()), (1, 64));
        let mut buf = [0u8; 64];
        let len = n.emit_oack(&mut buf).unwrap();
        assert_eq!(
            &buf[..len],
            b"\x00\x06blksize\x001456\x00msftwindow\x0027182\x00"
        );
        // Another value is not the extension: left out, and the window stays fixed.
        let n = negotiate(b"msftwindow\x0027182\x00").unwrap();
        assert!(!n.msftwindow() && !n.has_oack());
        assert_eq!(n.window_max().get(), 1);
    }

    #[test]
    fn windowsize_is_clamped_or_refused() {
        assert_eq!(negotiate(b"windowsize\x0016\x00").unwrap().windowsize, 16);
        assert_eq!(
            negotiate(b"windowsize\x0065535\x00").unwrap().windowsize,
            64
        );
        assert_eq!(
            negotiate(b"windowsize\x000\x00"),
            Err(OptionError::Windowsize)
        );
        assert_eq!(
            negotiate(b"windowsize\x00x\x00"),
            Err(OptionError::Windowsize)
        );
    }

    #[test]
    fn windows_are_capped_in_bytes_whatever_the_option_order() {
        for raw in [
            &b"blksize\x008192\x00windowsize\x0064\x00"[..],
            &b"windowsize\x0064\x00blksize\x008192\x00"[..],
        ] {
            let n = negotiate(raw).unwrap();
            assert_eq!((n.blksize, n.windowsize), (8192, 12), "96 KiB / 8 KiB");
        }
        assert_eq!(
            negotiate(b"blksize\x0065464\x00windowsize\x004\x00")
                .unwrap()
                .windowsize,
            1
        );
        assert_eq!(
            negotiate(b"blksize\x001468\x00windowsize\x0064\x00")
                .unwrap()
                .windowsize,
            64
        );
    }

    #[test]
    fn timeout_accepts_fractions_within_bounds() {
        let n = negotiate(b"timeout\x002\x00").unwrap();
        assert_eq!(n.timeout, Some(Duration::from_secs(2)));
        assert_eq!(oack(&n), b"\x00\x06timeout\x002\x00");
        let n = negotiate(b"timeout\x000.25\x00").unwrap();
        assert_eq!(n.timeout, Some(Duration::from_millis(250)));
        assert_eq!(oack(&n), b"\x00\x06timeout\x000.25\x00");
        assert_eq!(
            negotiate(b"timeout\x00.5\x00").unwrap().timeout,
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            negotiate(b"timeout\x00255\x00").unwrap().timeout,
            Some(TIMEOUT_MAX)
        );
        assert_eq!(negotiate(b"timeout\x00256\x00"), Err(OptionError::Timeout));
        assert_eq!(negotiate(b"timeout\x000\x00"), Err(OptionError::Timeout));
        assert_eq!(
            negotiate(b"timeout\x000.009\x00"),
            Err(OptionError::Timeout)
        );
        assert_eq!(negotiate(b"timeout\x00.\x00"), Err(OptionError::Timeout));
        assert_eq!(negotiate(b"timeout\x001.x\x00"), Err(OptionError::Timeout));
    }

    #[test]
    fn utimeout_wins_over_timeout_whatever_the_order() {
        for raw in [
            &b"utimeout\x0050000\x00timeout\x005\x00"[..],
            &b"timeout\x005\x00utimeout\x0050000\x00"[..],
        ] {
            let n = negotiate(raw).unwrap();
            assert_eq!(n.timeout, Some(Duration::from_millis(50)));
            assert_eq!(oack(&n), b"\x00\x06utimeout\x0050000\x00");
        }
        assert_eq!(
            negotiate(b"utimeout\x009999\x00"),
            Err(OptionError::Timeout)
        );
    }

    #[test]
    fn names_are_case_insensitive_and_last_duplicate_wins() {
        let n = negotiate(b"BLKSIZE\x00512\x00blksize\x001024\x00").unwrap();
        assert_eq!(n.blksize, 1024);
        assert_eq!(oack(&n), b"\x00\x06blksize\x001024\x00");
    }

    #[test]
    fn tsize_is_omitted_when_unknown_and_computed_only_when_asked() {
        let opts = Options::parse(b"tsize\x000\x00");
        let n = Negotiated::negotiate(&opts, &Limits::default(), || None).unwrap();
        assert!(!n.has_oack());
        let n = Negotiated::negotiate(
            &Options::parse(b"blksize\x00600\x00"),
            &Limits::default(),
            || panic!("size computed without a tsize request"),
        )
        .unwrap();
        assert_eq!(n.tsize, None);
    }

    #[test]
    fn errors_are_option_refused() {
        for e in [
            OptionError::Blksize,
            OptionError::Timeout,
            OptionError::Windowsize,
        ] {
            assert_eq!(e.code().to_u16(), 8);
            assert!(e.message().starts_with("silly"));
        }
    }

    #[test]
    fn oack_respects_the_buffer() {
        let n = negotiate(b"blksize\x001468\x00").unwrap();
        assert_eq!(n.emit_oack(&mut [0; 10]), Err(BufferTooSmall));
        assert_eq!(n.emit_oack(&mut [0; 1]), Err(BufferTooSmall));
    }

    #[test]
    fn number_formatting() {
        let mut buf = [0; 24];
        assert_eq!(fmt_uint(0, &mut buf), "0");
        assert_eq!(fmt_uint(u64::MAX, &mut buf), "18446744073709551615");
        for (t, s) in [
            (1_000_000, "1"),
            (1_500_000, "1.5"),
            (10_000, "0.01"),
            (255_000_001, "255.000001"),
        ] {
            assert_eq!(fmt_seconds(Some(Duration::from_micros(t)), &mut buf), s);
        }
    }
}
