//! The TFTP wire codec: borrowed packet views, parsing and emitting.
//!
//! Implements the six packets of RFC 1350 §5 (RRQ, WRQ, DATA, ACK, ERROR) and RFC 2347 (OACK and
//! the option list appended to requests).

/// A TFTP error code (RFC 1350 §5 Appendix, RFC 2347 §"Option Acknowledgment": code 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 0: not defined, see the error message.
    Undefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTid,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: the request's options were refused (RFC 2347).
    OptionRefused,
    /// Any other code a peer may send.
    Other(u16),
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Undefined => 0,
            Self::FileNotFound => 1,
            Self::AccessViolation => 2,
            Self::DiskFull => 3,
            Self::IllegalOperation => 4,
            Self::UnknownTid => 5,
            Self::FileExists => 6,
            Self::NoSuchUser => 7,
            Self::OptionRefused => 8,
            Self::Other(code) => code,
        }
    }

    /// The code read from the wire.
    pub fn from_u16(code: u16) -> Self {
        match code {
            0 => Self::Undefined,
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTid,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionRefused,
            other => Self::Other(other),
        }
    }

    /// The default message for the code, as the RFCs word it.
    pub fn message(self) -> &'static str {
        match self {
            Self::Undefined | Self::Other(_) => "Undefined error",
            Self::FileNotFound => "File not found",
            Self::AccessViolation => "Access violation",
            Self::DiskFull => "Disk full or allocation exceeded",
            Self::IllegalOperation => "Illegal TFTP operation",
            Self::UnknownTid => "Unknown transfer ID",
            Self::FileExists => "File already exists",
            Self::NoSuchUser => "No such user",
            Self::OptionRefused => "Invalid options",
        }
    }
}

/// The transfer mode of a request (RFC 1350 §5). `mail` is obsolete and refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `octet`: raw bytes.
    Octet,
    /// `netascii`: text with CR LF line ends (see [`crate::netascii`]).
    Netascii,
}

impl Mode {
    /// The mode's name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Octet => "octet",
            Self::Netascii => "netascii",
        }
    }
}

/// A decoded TFTP packet, borrowing from the datagram it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request (opcode 1).
    Rrq(Request<'a>),
    /// Write request (opcode 2).
    Wrq(Request<'a>),
    /// A block of file data (opcode 3).
    Data {
        /// The block number (wraps past 65535).
        block: u16,
        /// The payload: `blksize` bytes, fewer in the last block.
        data: &'a [u8],
    },
    /// Acknowledgment of a block (opcode 4); block 0 acknowledges an OACK.
    Ack {
        /// The acknowledged block number.
        block: u16,
    },
    /// An error that ends the transfer (opcode 5).
    Error {
        /// The error code.
        code: ErrorCode,
        /// The human-readable message (bytes as sent, without the terminating NUL).
        message: &'a [u8],
    },
    /// Option acknowledgment (opcode 6, RFC 2347).
    Oack(Options<'a>),
}

/// The body of an RRQ or WRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// The requested file name: non-empty UTF-8 without control characters.
    pub filename: &'a str,
    /// The transfer mode.
    pub mode: Mode,
    /// The options appended by the client (RFC 2347), possibly none.
    pub options: Options<'a>,
}

/// A borrowed list of RFC 2347 options: NUL-terminated name and value pairs.
///
/// Only complete pairs are kept: trailing bytes after the last complete pair are dropped when
/// parsing, as nobodd does, because several clients pad their requests.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Options<'a> {
    raw: &'a [u8],
}

impl<'a> Options<'a> {
    /// No options.
    pub const EMPTY: Options<'static> = Options { raw: &[] };

    /// Takes the complete `name\0value\0` pairs at the start of `raw` and ignores the rest.
    pub fn parse(raw: &'a [u8]) -> Self {
        let mut end = 0;
        let mut rest = raw;
        while let Some(name) = rest.iter().position(|&b| b == 0) {
            let Some(value) = rest[name + 1..].iter().position(|&b| b == 0) else {
                break;
            };
            let pair = name + 1 + value + 1;
            end += pair;
            rest = &rest[pair..];
        }
        Self { raw: &raw[..end] }
    }

    /// The raw bytes of the complete pairs.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether there are no options.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The pairs in the order sent, names as sent (compare them case-insensitively).
    pub fn iter(&self) -> OptionsIter<'a> {
        OptionsIter { rest: self.raw }
    }

    /// The value of option `name` (ASCII case-insensitive); the last of duplicates wins.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .last()
            .map(|(_, v)| v)
    }
}

impl std::fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in self.iter() {
            map.entry(
                &String::from_utf8_lossy(name),
                &String::from_utf8_lossy(value),
            );
        }
        map.finish()
    }
}

/// Iterator over option pairs; see [`Options::iter`].
#[derive(Debug, Clone)]
pub struct OptionsIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for OptionsIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let mut fields = self.rest.splitn(3, |&b| b == 0);
        let name = fields.next()?;
        let value = fields.next()?;
        // `Options::parse` kept only complete pairs, so both NULs are present.
        self.rest = fields.next().unwrap_or_default();
        Some((name, value))
    }
}

/// Why a datagram is not a well-formed TFTP packet.
///
/// Each reason knows the ERROR packet a server answers with ([`ParseError::code`],
/// [`ParseError::message`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than the opcode, or than the fixed fields of its packet.
    Truncated,
    /// An opcode outside 1..=6.
    UnknownOpcode(u16),
    /// A request whose filename or mode is not NUL-terminated.
    Unterminated,
    /// A request with an empty filename.
    EmptyFilename,
    /// A filename with control characters or invalid UTF-8.
    BadFilename,
    /// A mode other than `octet` or `netascii` (any case).
    BadMode,
    /// An ERROR packet whose message is not NUL-terminated.
    UnterminatedMessage,
}

impl ParseError {
    /// The TFTP error code a server answers with.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::BadMode => ErrorCode::Undefined,
            Self::BadFilename => ErrorCode::AccessViolation,
            _ => ErrorCode::IllegalOperation,
        }
    }

    /// The ERROR message a server answers with: nobodd's wording where nobodd has one.
    pub fn message(self) -> &'static str {
        match self {
            Self::Truncated => "Invalid request, truncated packet",
            Self::UnknownOpcode(_) => "Illegal TFTP operation",
            Self::Unterminated | Self::EmptyFilename => {
                "Invalid request, badly formed RRQ/WRQ packet"
            }
            Self::BadFilename => "Invalid request, bad filename",
            Self::BadMode => "Invalid request, unsupported file mode",
            Self::UnterminatedMessage => "Invalid request, badly formed ERROR packet",
        }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ParseError {}

/// The emit buffer was too small for the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferTooSmall;

impl std::fmt::Display for BufferTooSmall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("buffer too small for the packet")
    }
}

impl std::error::Error for BufferTooSmall {}

/// What a datagram says it is, from its first two bytes alone (RFC 1350 §5, RFC 2347 for the
/// OACK): enough to route it before, or without, parsing the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Read request.
    Rrq,
    /// Write request.
    Wrq,
    /// File data.
    Data,
    /// Acknowledgment.
    Ack,
    /// Error.
    Error,
    /// Option acknowledgment.
    Oack,
}

impl Opcode {
    /// The opcode `datagram` starts with, if it is one.
    pub fn of(datagram: &[u8]) -> Option<Opcode> {
        let op = u16::from_be_bytes([*datagram.first()?, *datagram.get(1)?]);
        Some(match op {
            opcode::RRQ => Opcode::Rrq,
            opcode::WRQ => Opcode::Wrq,
            opcode::DATA => Opcode::Data,
            opcode::ACK => Opcode::Ack,
            opcode::ERROR => Opcode::Error,
            opcode::OACK => Opcode::Oack,
            _ => return None,
        })
    }
}

/// The opcode of a DATA packet, for callers that build its header themselves (a table of every
/// DATA header, say).
pub const DATA_OPCODE: u16 = opcode::DATA;

/// Opcodes (RFC 1350 §5, RFC 2347).
mod opcode {
    pub const RRQ: u16 = 0x01;
    pub const WRQ: u16 = 0x02;
    pub const DATA: u16 = 0x03;
    pub const ACK: u16 = 0x04;
    pub const ERROR: u16 = 0x05;
    pub const OACK: u16 = 0x06;
}

/// Length of the DATA header (opcode and block number) that precedes the payload.
pub const DATA_HEADER_LEN: usize = 4;

impl<'a> Packet<'a> {
    /// Parses one datagram.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, ParseError> {
        let mut r = Reader(datagram);
        let op = r.u16().ok_or(ParseError::Truncated)?;
        Ok(match op {
            opcode::RRQ => Packet::Rrq(parse_request(r.rest())?),
            opcode::WRQ => Packet::Wrq(parse_request(r.rest())?),
            opcode::DATA => Packet::Data {
                block: r.u16().ok_or(ParseError::Truncated)?,
                data: r.rest(),
            },
            opcode::ACK => Packet::Ack {
                // Trailing bytes after the block number are ignored, as every peer does.
                block: r.u16().ok_or(ParseError::Truncated)?,
            },
            opcode::ERROR => {
                let code = ErrorCode::from_u16(r.u16().ok_or(ParseError::Truncated)?);
                let message = r.cstr().ok_or(ParseError::UnterminatedMessage)?;
                Packet::Error { code, message }
            }
            opcode::OACK => Packet::Oack(Options::parse(r.rest())),
            other => return Err(ParseError::UnknownOpcode(other)),
        })
    }

    /// Writes the packet into `buf` and returns its length. Never allocates.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
        let mut w = Writer { buf, len: 0 };
        match *self {
            Packet::Rrq(ref req) | Packet::Wrq(ref req) => {
                let op = if matches!(self, Packet::Rrq(_)) {
                    opcode::RRQ
                } else {
                    opcode::WRQ
                };
                w.u16(op)?;
                w.cstr(req.filename.as_bytes())?;
                w.cstr(req.mode.as_str().as_bytes())?;
                w.bytes(req.options.raw)?;
            }
            Packet::Data { block, data } => {
                w.u16(opcode::DATA)?;
                w.u16(block)?;
                w.bytes(data)?;
            }
            Packet::Ack { block } => {
                w.u16(opcode::ACK)?;
                w.u16(block)?;
            }
            Packet::Error { code, message } => {
                w.u16(opcode::ERROR)?;
                w.u16(code.to_u16())?;
                // A NUL inside the message would end it early on the wire; cut it there.
                let end = message
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(message.len());
                w.cstr(&message[..end])?;
            }
            Packet::Oack(options) => {
                w.u16(opcode::OACK)?;
                w.bytes(options.raw)?;
            }
        }
        Ok(w.len)
    }
}

/// Writes a DATA header for `block` into the first four bytes of `buf`.
///
/// For a driver that reads each block's payload into the bytes after its header. ringtftp's own
/// server sends the header and the payload as two iovecs instead (headers from a static table,
/// payloads from shared file chunks), so a block is never copied either way.
pub fn emit_data_header(block: u16, buf: &mut [u8; DATA_HEADER_LEN]) {
    let [op_hi, op_lo] = opcode::DATA.to_be_bytes();
    let [hi, lo] = block.to_be_bytes();
    *buf = [op_hi, op_lo, hi, lo];
}

/// Writes an ERROR packet with `code` and `message` into `buf` and returns its length.
pub fn emit_error(code: ErrorCode, message: &str, buf: &mut [u8]) -> Result<usize, BufferTooSmall> {
    Packet::Error {
        code,
        message: message.as_bytes(),
    }
    .emit(buf)
}

/// Appends `name\0value\0` to an option list being built in `buf` at `*len`.
///
/// Used to build the options of an OACK (server) or an RRQ (clients, tests).
pub fn push_option(
    buf: &mut [u8],
    len: &mut usize,
    name: &str,
    value: &str,
) -> Result<(), BufferTooSmall> {
    let mut w = Writer {
        buf: buf.get_mut(*len..).ok_or(BufferTooSmall)?,
        len: 0,
    };
    w.cstr(name.as_bytes())?;
    w.cstr(value.as_bytes())?;
    *len += w.len;
    Ok(())
}

fn parse_request(body: &[u8]) -> Result<Request<'_>, ParseError> {
    let mut r = Reader(body);
    let filename = trim_junk(r.cstr().ok_or(ParseError::Unterminated)?);
    let mode = r.cstr().ok_or(ParseError::Unterminated)?;
    if filename.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    // Control bytes (including DEL) have no place in a path and only serve log injection.
    if filename.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(ParseError::BadFilename);
    }
    let filename = std::str::from_utf8(filename).map_err(|_| ParseError::BadFilename)?;
    let mode = if mode.eq_ignore_ascii_case(b"octet") {
        Mode::Octet
    } else if mode.eq_ignore_ascii_case(b"netascii") {
        Mode::Netascii
    } else {
        return Err(ParseError::BadMode);
    };
    Ok(Request {
        filename,
        mode,
        options: Options::parse(r.rest()),
    })
}

/// The filename without the 0xFF bytes some PXE ROMs append to it. Those ROMs read the DHCP
/// boot filename (option 67) as a NUL-terminated string past its length, into the next option
/// code: 0xFF is DHCP's `end` option (RFC 2132 §3.2). Seen from Intel UNDI PXE 2.1 ROMs and a
/// Lenovo T460's UEFI (`netboot.xyz.efi` then `ff 00` on the wire; netboot.xyz issue 1198,
/// netboot.xyz-docs issue 149). 0xFF never occurs in UTF-8, so no name a server could hold ends
/// with it, and what is left is checked and confined like any name.
fn trim_junk(filename: &[u8]) -> &[u8] {
    let end = filename
        .iter()
        .rposition(|&b| b != 0xFF)
        .map_or(0, |i| i + 1);
    &filename[..end]
}

/// A cursor over received bytes; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u16(&mut self) -> Option<u16> {
        let (head, rest) = self.0.split_first_chunk::<2>()?;
        self.0 = rest;
        Some(u16::from_be_bytes(*head))
    }

    /// The bytes up to the next NUL, consuming the NUL too.
    fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let s = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Some(s)
    }

    fn rest(self) -> &'a [u8] {
        self.0
    }
}

/// A cursor over an emit buffer; every write is checked.
struct Writer<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, bytes: &[u8]) -> Result<(), BufferTooSmall> {
        let end = self.len.checked_add(bytes.len()).ok_or(BufferTooSmall)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(BufferTooSmall)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn u16(&mut self, v: u16) -> Result<(), BufferTooSmall> {
        self.bytes(&v.to_be_bytes())
    }

    fn cstr(&mut self, s: &[u8]) -> Result<(), BufferTooSmall> {
        self.bytes(s)?;
        self.bytes(&[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static RRQ: &[u8] = b"\x00\x01pxelinux.0\x00octet\x00";
    static RRQ_OPTS: &[u8] = b"\x00\x01/boot/x\x00OcTeT\x00blksize\x001468\x00tsize\x000\x00";
    static WRQ: &[u8] = b"\x00\x02up.bin\x00netascii\x00";
    static DATA: &[u8] = b"\x00\x03\x12\x34abc";
    static ACK: &[u8] = b"\x00\x04\xff\xfe";
    static ERROR: &[u8] = b"\x00\x05\x00\x01File not found\x00";
    static OACK: &[u8] = b"\x00\x06blksize\x001468\x00";

    fn roundtrip(bytes: &[u8]) -> Packet<'_> {
        let p = Packet::parse(bytes).unwrap();
        let mut buf = [0u8; 128];
        let n = p.emit(&mut buf).unwrap();
        assert_eq!(&buf[..n], bytes, "emit(parse(x)) == x for {p:?}");
        p
    }

    #[test]
    fn rrq() {
        let Packet::Rrq(req) = roundtrip(RRQ) else {
            panic!()
        };
        assert_eq!(req.filename, "pxelinux.0");
        assert_eq!(req.mode, Mode::Octet);
        assert!(req.options.is_empty());
    }

    #[test]
    fn rrq_with_options_and_mixed_case_mode() {
        let Packet::Rrq(req) = Packet::parse(RRQ_OPTS).unwrap() else {
            panic!()
        };
        assert_eq!(req.filename, "/boot/x");
        assert_eq!(req.mode, Mode::Octet);
        let pairs: Vec<_> = req.options.iter().collect();
        assert_eq!(pairs, [(&b"blksize"[..], &b"1468"[..]), (b"tsize", b"0")]);
        assert_eq!(req.options.get("BLKSIZE"), Some(&b"1468"[..]));
        assert_eq!(req.options.get("timeout"), None);
    }

    /// Some PXE ROMs read DHCP's boot filename past its end, into the `end` option (0xFF).
    #[test]
    fn trailing_ff_bytes_are_not_part_of_the_filename() {
        for raw in [
            &b"\x00\x01netboot.xyz.efi\xff\x00octet\x00"[..],
            b"\x00\x01netboot.xyz.efi\xff\xff\xff\xff\xff\x00octet\x00",
        ] {
            let Packet::Rrq(req) = Packet::parse(raw).unwrap() else {
                panic!()
            };
            assert_eq!(req.filename, "netboot.xyz.efi");
        }
        // Only at the end: within a name, 0xFF is not UTF-8.
        assert_eq!(
            Packet::parse(b"\x00\x01net\xffboot\x00octet\x00"),
            Err(ParseError::BadFilename)
        );
        assert_eq!(
            Packet::parse(b"\x00\x01\xff\xff\x00octet\x00"),
            Err(ParseError::EmptyFilename)
        );
        // What is left is still checked: a control byte before the junk is refused.
        assert_eq!(
            Packet::parse(b"\x00\x01boot\x01\xff\x00octet\x00"),
            Err(ParseError::BadFilename)
        );
    }

    #[test]
    fn wrq_netascii() {
        let Packet::Wrq(req) = roundtrip(WRQ) else {
            panic!()
        };
        assert_eq!(req.filename, "up.bin");
        assert_eq!(req.mode, Mode::Netascii);
    }

    #[test]
    fn data_ack_error_oack() {
        assert_eq!(
            roundtrip(DATA),
            Packet::Data {
                block: 0x1234,
                data: b"abc"
            }
        );
        assert_eq!(roundtrip(ACK), Packet::Ack { block: 0xfffe });
        assert_eq!(
            roundtrip(ERROR),
            Packet::Error {
                code: ErrorCode::FileNotFound,
                message: b"File not found"
            }
        );
        let Packet::Oack(opts) = roundtrip(OACK) else {
            panic!()
        };
        assert_eq!(opts.get("blksize"), Some(&b"1468"[..]));
    }

    #[test]
    fn empty_data_is_the_end_of_an_exact_multiple() {
        assert_eq!(
            roundtrip(b"\x00\x03\x00\x02"),
            Packet::Data {
                block: 2,
                data: b""
            }
        );
    }

    #[test]
    fn ack_ignores_trailing_bytes() {
        assert_eq!(
            Packet::parse(b"\x00\x04\x00\x07junk"),
            Ok(Packet::Ack { block: 7 })
        );
    }

    #[test]
    fn last_duplicate_option_wins() {
        let opts = Options::parse(b"blksize\x00512\x00BlkSize\x001024\x00");
        assert_eq!(opts.get("blksize"), Some(&b"1024"[..]));
    }

    #[test]
    fn trailing_garbage_after_options_is_ignored() {
        let opts = Options::parse(b"tsize\x000\x00blksize\x001468");
        assert_eq!(opts.as_bytes(), b"tsize\x000\x00");
        let opts = Options::parse(b"tsize\x000\x00dangling\x00");
        assert_eq!(opts.iter().count(), 1);
        let Packet::Rrq(req) = Packet::parse(b"\x00\x01f\x00octet\x00x").unwrap() else {
            panic!()
        };
        assert!(req.options.is_empty());
    }

    #[test]
    fn malformed_shapes_map_to_errors() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"", ParseError::Truncated),
            (b"\x00", ParseError::Truncated),
            (b"\x00\x03\x00", ParseError::Truncated),
            (b"\x00\x04", ParseError::Truncated),
            (b"\x00\x05\x00", ParseError::Truncated),
            (b"\x00\x07", ParseError::UnknownOpcode(7)),
            (b"\x00\x00", ParseError::UnknownOpcode(0)),
            (b"\xff\xff\x00", ParseError::UnknownOpcode(0xffff)),
            (b"\x00\x01", ParseError::Unterminated),
            (b"\x00\x01file", ParseError::Unterminated),
            (b"\x00\x01file\x00octet", ParseError::Unterminated),
            (b"\x00\x01\x00octet\x00", ParseError::EmptyFilename),
            (b"\x00\x01a\x01b\x00octet\x00", ParseError::BadFilename),
            (b"\x00\x01a\nb\x00octet\x00", ParseError::BadFilename),
            (b"\x00\x01a\x7fb\x00octet\x00", ParseError::BadFilename),
            (b"\x00\x01\xff\xfe\x00octet\x00", ParseError::BadFilename),
            (b"\x00\x01f\x00mail\x00", ParseError::BadMode),
            (b"\x00\x01f\x00\x00", ParseError::BadMode),
            (b"\x00\x02f\x00binary\x00", ParseError::BadMode),
            (b"\x00\x05\x00\x01no nul", ParseError::UnterminatedMessage),
        ];
        for (bytes, want) in cases {
            assert_eq!(Packet::parse(bytes), Err(*want), "parsing {bytes:?}");
        }
    }

    #[test]
    fn parse_errors_name_their_tftp_error() {
        assert_eq!(ParseError::BadMode.code(), ErrorCode::Undefined);
        assert_eq!(ParseError::Truncated.code(), ErrorCode::IllegalOperation);
        assert_eq!(
            ParseError::UnknownOpcode(9).code(),
            ErrorCode::IllegalOperation
        );
        assert_eq!(ParseError::BadFilename.code(), ErrorCode::AccessViolation);
        assert!(ParseError::BadMode
            .message()
            .contains("unsupported file mode"));
    }

    #[test]
    fn error_codes_roundtrip_with_rfc_texts() {
        for code in 0..=9u16 {
            assert_eq!(ErrorCode::from_u16(code).to_u16(), code);
        }
        assert_eq!(ErrorCode::AccessViolation.message(), "Access violation");
        assert_eq!(ErrorCode::OptionRefused.to_u16(), 8);
        assert_eq!(ErrorCode::from_u16(42), ErrorCode::Other(42));
    }

    #[test]
    fn emit_checks_the_buffer() {
        let p = Packet::Data {
            block: 1,
            data: &[7; 10],
        };
        assert_eq!(p.emit(&mut [0; 13]), Err(BufferTooSmall));
        assert_eq!(p.emit(&mut [0; 14]), Ok(14));
        assert_eq!(
            emit_error(ErrorCode::DiskFull, "x", &mut [0; 5]),
            Err(BufferTooSmall)
        );
    }

    #[test]
    fn error_message_with_nul_is_cut() {
        let mut buf = [0; 32];
        let n = Packet::Error {
            code: ErrorCode::Undefined,
            message: b"a\x00b",
        }
        .emit(&mut buf)
        .unwrap();
        assert_eq!(&buf[..n], b"\x00\x05\x00\x00a\x00");
    }

    #[test]
    fn data_header_and_options_builder() {
        let mut hdr = [0; DATA_HEADER_LEN];
        emit_data_header(0xabcd, &mut hdr);
        assert_eq!(hdr, [0, 3, 0xab, 0xcd]);

        let mut buf = [0; 32];
        let mut len = 0;
        push_option(&mut buf, &mut len, "blksize", "1428").unwrap();
        push_option(&mut buf, &mut len, "tsize", "0").unwrap();
        assert_eq!(&buf[..len], b"blksize\x001428\x00tsize\x000\x00");
        assert_eq!(
            push_option(&mut buf, &mut len, "windowsize", "16"),
            Err(BufferTooSmall)
        );
        assert_eq!(len, 21, "a failed push leaves the list as it was");
    }

    fn arb_options() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(("[a-zA-Z]{1,10}", "[0-9a-z.]{0,6}"), 0..5).prop_map(|pairs| {
            let mut raw = Vec::new();
            for (n, v) in pairs {
                raw.extend_from_slice(n.as_bytes());
                raw.push(0);
                raw.extend_from_slice(v.as_bytes());
                raw.push(0);
            }
            raw
        })
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(p) = Packet::parse(&bytes) {
                let mut buf = vec![0; bytes.len() + 8];
                let n = p.emit(&mut buf).unwrap();
                prop_assert_eq!(Packet::parse(&buf[..n]), Ok(p));
            }
        }

        #[test]
        fn parse_of_emit_is_identity(
            kind in 0..6u8,
            block in any::<u16>(),
            name in "[ -~]{1,40}",
            netascii in any::<bool>(),
            data in prop::collection::vec(any::<u8>(), 0..1500),
            code in 0..10u16,
            message in "[ -~]{0,40}",
            options in arb_options(),
        ) {
            let req = Request {
                filename: &name,
                mode: if netascii { Mode::Netascii } else { Mode::Octet },
                options: Options::parse(&options),
            };
            let p = match kind {
                0 => Packet::Rrq(req),
                1 => Packet::Wrq(req),
                2 => Packet::Data { block, data: &data },
                3 => Packet::Ack { block },
                4 => Packet::Error { code: ErrorCode::from_u16(code), message: message.as_bytes() },
                _ => Packet::Oack(Options::parse(&options)),
            };
            let mut buf = vec![0; 2048];
            let n = p.emit(&mut buf).unwrap();
            prop_assert_eq!(Packet::parse(&buf[..n]), Ok(p));
        }
    }
}
