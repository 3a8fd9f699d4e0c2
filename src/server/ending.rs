//! How a request is refused and how a transfer ends: one typed value each, which says the
//! ERROR the client gets (RFC 1350 §5 codes, RFC 2347 §5 code 8), the outcome in the transfer's
//! log line and the label in the metrics. Nothing is inferred from a message's text or from an
//! error code after the fact.

use std::borrow::Cow;

use crate::options::OptionError;
use crate::packet::ErrorCode;
use crate::resolve::ResolveError;
use crate::transfer::Outcome;

/// An ERROR to send: its code and message (RFC 1350 §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorReply {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

/// Why the main port refused a request (or a datagram that is no request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The datagram breaks the protocol, or asks for what this server never does (a WRQ):
    /// the code and message come from the parser or the admission step.
    Protocol {
        code: ErrorCode,
        message: &'static str,
    },
    /// The resolver found no file, or refused the name: its code and message.
    Resolve { code: ErrorCode, message: String },
    /// The options cannot be granted (RFC 2347 §5: ERROR 8).
    Options(OptionError),
    /// The file is too large for netascii mode.
    TooLarge,
    /// The file needs more blocks than the client can number: a Raspberry Pi bootloader's
    /// block number stops at 65535 (see `super::raspberrypi`).
    TooManyBlocks { blocks: u64, blksize: u16 },
    /// The file could not be read to encode it as netascii.
    ReadFailed,
    /// A limit of the server: the client should ask again later.
    Busy(Busy),
    /// The transfer's socket could not be opened for another reason.
    Socket,
}

/// Which limit refused a request as busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Busy {
    /// `--max-transfers`.
    MaxTransfers,
    /// `--max-per-client`.
    MaxPerClient,
    /// The budget of file data in memory (`--max-buffer-mb`).
    Memory,
    /// The process has no file descriptor left.
    Descriptors,
    /// `--port-range` has no free port.
    Ports,
}

impl Refusal {
    /// Every metric label, in the order the metrics list them.
    pub(crate) const LABELS: [&'static str; 11] = [
        "not_found",
        "access",
        "illegal",
        "options",
        "too_large",
        "busy_max_transfers",
        "busy_max_per_client",
        "busy_memory",
        "busy_descriptors",
        "busy_ports",
        "other",
    ];

    /// The ERROR the client gets.
    pub(crate) fn reply(&self) -> ErrorReply {
        let (code, message): (ErrorCode, Cow<'static, str>) = match self {
            Refusal::Protocol { code, message } => (*code, Cow::Borrowed(message)),
            Refusal::Resolve { code, message } => (*code, Cow::Owned(message.clone())),
            Refusal::Options(e) => (e.code(), Cow::Borrowed(e.message())),
            Refusal::TooLarge => (
                ErrorCode::DiskFull,
                Cow::Borrowed("File too large for netascii mode"),
            ),
            Refusal::TooManyBlocks { blocks, blksize } => (
                ErrorCode::DiskFull,
                Cow::Owned(format!(
                    "File too large for this Raspberry Pi bootloader: {blocks} blocks of \
                     {blksize} bytes, and its block numbers stop at 65535"
                )),
            ),
            Refusal::ReadFailed => (
                ErrorCode::Undefined,
                Cow::Borrowed(ReadError::Failed.message()),
            ),
            Refusal::Busy(busy) => (ErrorCode::Undefined, Cow::Borrowed(busy.message())),
            Refusal::Socket => (
                ErrorCode::Undefined,
                Cow::Borrowed("Cannot open a transfer socket"),
            ),
        };
        ErrorReply { code, message }
    }

    /// The `reason` label of `ringtftp_requests_refused_total`.
    pub(crate) fn label(&self) -> &'static str {
        let by_code = |code| match code {
            ErrorCode::FileNotFound => "not_found",
            ErrorCode::AccessViolation => "access",
            ErrorCode::IllegalOperation => "illegal",
            ErrorCode::OptionRefused => "options",
            _ => "other",
        };
        match self {
            Refusal::Protocol { code, .. } => by_code(*code),
            Refusal::Resolve { code, .. } => by_code(*code),
            Refusal::Options(_) => "options",
            Refusal::TooLarge | Refusal::TooManyBlocks { .. } => "too_large",
            Refusal::ReadFailed | Refusal::Socket => "other",
            Refusal::Busy(Busy::MaxTransfers) => "busy_max_transfers",
            Refusal::Busy(Busy::MaxPerClient) => "busy_max_per_client",
            Refusal::Busy(Busy::Memory) => "busy_memory",
            Refusal::Busy(Busy::Descriptors) => "busy_descriptors",
            Refusal::Busy(Busy::Ports) => "busy_ports",
        }
    }
}

impl Busy {
    fn message(self) -> &'static str {
        match self {
            Busy::MaxTransfers => "Server busy: too many transfers, try again later",
            Busy::MaxPerClient => "Server busy: too many transfers for this client",
            Busy::Memory => "Server busy: out of memory for file data, try again later",
            Busy::Descriptors => "Server busy: out of file descriptors, try again later",
            Busy::Ports => "Server busy: no transfer port available",
        }
    }
}

impl From<OptionError> for Refusal {
    fn from(e: OptionError) -> Self {
        Refusal::Options(e)
    }
}

impl From<ResolveError> for Refusal {
    fn from(e: ResolveError) -> Self {
        Refusal::Resolve {
            code: e.code(),
            message: e.message().to_owned(),
        }
    }
}

/// Why a chunk of a file could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The file is shorter than, or otherwise not, what it was when the transfer opened it.
    Changed,
    /// The read failed.
    Failed,
}

impl ReadError {
    fn message(self) -> &'static str {
        match self {
            ReadError::Changed => "File changed while being served",
            ReadError::Failed => "Read error",
        }
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The final block was acknowledged.
    Complete,
    /// The client answered the OACK with ERROR 8 before any DATA: it only wanted `tsize`
    /// (UEFI firmware does this before every download, RFC 2349 §2). Not an error.
    Probe,
    /// The client ended it with an ERROR.
    Cancelled(ErrorCode),
    /// The client went silent through every retry.
    TimedOut,
    /// The client broke the protocol; the server answered with this ERROR (4 or 5).
    Protocol(ErrorCode),
    /// The file changed while it was served; the client got an ERROR rather than a mix.
    FileChanged,
    /// The file could not be read; the client got an ERROR.
    ReadFailed,
    /// The OACK could not be built (cannot happen with the options granted).
    Internal,
    /// The client's host said its port is closed (ICMP port unreachable).
    Unreachable,
    /// In single-port mode, the client sent a new request from the same port: it moved on.
    Replaced,
    /// Admitted, but its socket could not be set up.
    NotStarted,
}

impl Ending {
    /// Every metric label, in the order the metrics list them.
    pub(crate) const LABELS: [&'static str; 11] = [
        "completed",
        "probe",
        "client_error",
        "timeout",
        "protocol",
        "file_changed",
        "read_failed",
        "internal",
        "unreachable",
        "replaced",
        "not_started",
    ];

    /// The `outcome` label of `ringtftp_transfers_ended_total`, and the log line's `outcome`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Ending::Complete => "completed",
            Ending::Probe => "probe",
            Ending::Cancelled(_) => "client_error",
            Ending::TimedOut => "timeout",
            Ending::Protocol(_) => "protocol",
            Ending::FileChanged => "file_changed",
            Ending::ReadFailed => "read_failed",
            Ending::Internal => "internal",
            Ending::Unreachable => "unreachable",
            Ending::Replaced => "replaced",
            Ending::NotStarted => "not_started",
        }
    }

    /// The ERROR code the client sent or was sent, for the log line.
    pub(crate) fn code(self) -> Option<u16> {
        match self {
            Ending::Cancelled(code) | Ending::Protocol(code) => Some(code.to_u16()),
            Ending::FileChanged | Ending::ReadFailed | Ending::Internal => {
                Some(ErrorCode::Undefined.to_u16())
            }
            Ending::Probe => Some(ErrorCode::OptionRefused.to_u16()),
            _ => None,
        }
    }

    /// The ERROR the server sends when it ends a transfer itself.
    pub(crate) fn error(self) -> Option<(ErrorCode, &'static str)> {
        match self {
            Ending::FileChanged => Some((ErrorCode::Undefined, ReadError::Changed.message())),
            Ending::ReadFailed => Some((ErrorCode::Undefined, ReadError::Failed.message())),
            Ending::Internal => Some((ErrorCode::Undefined, "Cannot build the OACK")),
            _ => None,
        }
    }

    /// How the state machine's outcome reads, for a transfer the server did not abort; `data`:
    /// whether any DATA was sent.
    pub(crate) fn of(outcome: Outcome, data: bool) -> Ending {
        match outcome {
            Outcome::Complete => Ending::Complete,
            Outcome::Cancelled(ErrorCode::OptionRefused) if !data => Ending::Probe,
            Outcome::Cancelled(code) => Ending::Cancelled(code),
            Outcome::TimedOut => Ending::TimedOut,
            Outcome::Failed(code) => Ending::Protocol(code),
        }
    }
}

impl From<ReadError> for Ending {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Changed => Ending::FileChanged,
            ReadError::Failed => Ending::ReadFailed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_listed() {
        for ending in [
            Ending::Complete,
            Ending::Probe,
            Ending::Cancelled(ErrorCode::Undefined),
            Ending::TimedOut,
            Ending::Protocol(ErrorCode::UnknownTid),
            Ending::FileChanged,
            Ending::ReadFailed,
            Ending::Internal,
            Ending::Unreachable,
            Ending::Replaced,
            Ending::NotStarted,
        ] {
            assert!(Ending::LABELS.contains(&ending.label()), "{ending:?}");
        }
        for busy in [
            Busy::MaxTransfers,
            Busy::MaxPerClient,
            Busy::Memory,
            Busy::Descriptors,
            Busy::Ports,
        ] {
            let refusal = Refusal::Busy(busy);
            assert!(Refusal::LABELS.contains(&refusal.label()));
            assert!(refusal.reply().message.starts_with("Server busy"));
        }
    }

    #[test]
    fn a_tsize_probe_is_not_an_error() {
        let probe = Ending::of(Outcome::Cancelled(ErrorCode::OptionRefused), false);
        assert_eq!(probe, Ending::Probe);
        assert_eq!(probe.label(), "probe");
        // The same ERROR once DATA has flowed is the client giving up.
        assert_eq!(
            Ending::of(Outcome::Cancelled(ErrorCode::OptionRefused), true),
            Ending::Cancelled(ErrorCode::OptionRefused)
        );
    }
}
