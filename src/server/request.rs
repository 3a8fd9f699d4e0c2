//! The main port's first step (RFC 1350 §4, §7): what a datagram that arrived there asks for,
//! from its bytes and from whether its sender has a transfer still waiting for its first answer
//! — no sockets, files or limits. What this cannot decide (the server's limits, the file, the
//! options) follows in [`super::admit::decide`], which only carries out what is decided here.
//!
//! A refusal is a [`Refusal`], which says its ERROR and its metric label.

use crate::packet::{ErrorCode, Opcode, Request};
use crate::transfer::{self, Inbound};

use super::ending::Refusal;

/// What a datagram on the main port asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission<'a> {
    /// Nothing: an ERROR (RFC 1350 §7: never answered), or a datagram too short to be any
    /// packet.
    Ignore,
    /// The client repeated the request of its transfer: that transfer's first reply was lost.
    Repeat,
    /// Refuse with this ERROR.
    Reject(Refusal),
    /// A new read request.
    New(Request<'a>),
}

/// Decides what `datagram` asks for. `truncated`: it did not fit the receive buffer.
/// `waiting(filename)`: whether its sender's address and port have a transfer of `filename`
/// that has not heard from the client yet.
pub(crate) fn admit<'a>(
    datagram: &'a [u8],
    truncated: bool,
    waiting: impl FnOnce(&str) -> bool,
) -> Admission<'a> {
    if truncated {
        // RFC 2347 §2 has a request, options included, fit in 512 bytes; one that does not even
        // fit the receive buffer is refused rather than parsed cut short.
        return Admission::Reject(Refusal::Protocol {
            code: ErrorCode::IllegalOperation,
            message: "Invalid request, request too large",
        });
    }
    let request = match transfer::inbound(datagram) {
        Inbound::Read(request) => request,
        Inbound::Reject { code, message } => {
            return Admission::Reject(Refusal::Protocol { code, message })
        }
        Inbound::Ignore => return Admission::Ignore,
    };
    // RFC 1350 §4: a client that has not heard from its transfer times out and repeats its
    // RRQ: the first reply was lost, and the running transfer sends it again. A client that
    // has answered its transfer has moved on, and an RRQ from the same port is a new request
    // (clients reuse ports quickly).
    if waiting(request.filename) {
        return Admission::Repeat;
    }
    Admission::New(request)
}

/// Whether a datagram is a request (RRQ or WRQ), by its opcode alone.
pub(crate) fn is_request(datagram: &[u8]) -> bool {
    matches!(Opcode::of(datagram), Some(Opcode::Rrq | Opcode::Wrq))
}

/// Whether a datagram is an ACK or an ERROR, by its opcode alone.
fn is_ack_or_error(datagram: &[u8]) -> bool {
    matches!(Opcode::of(datagram), Some(Opcode::Ack | Opcode::Error))
}

/// In single-port mode, where a datagram on the main port goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// To [`admit`]: a request, or anything else that no transfer owns and that gets an ERROR.
    Admit,
    /// To the transfer of its sender's address and port.
    Transfer,
    /// Nowhere: an ACK or ERROR from an address with no transfer is a late one from a transfer
    /// just ended, and not answered.
    Drop,
}

/// Routes a datagram in single-port mode; `has_transfer`: whether its sender's address and port
/// have a running transfer.
pub(crate) fn route(datagram: &[u8], has_transfer: bool) -> Route {
    if is_request(datagram) {
        Route::Admit
    } else if has_transfer {
        Route::Transfer
    } else if is_ack_or_error(datagram) {
        Route::Drop
    } else {
        Route::Admit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RRQ: &[u8] = b"\x00\x01pxelinux.0\x00octet\x00blksize\x001468\x00";

    fn refused(datagram: &[u8]) -> super::super::ending::ErrorReply {
        match admit(datagram, false, |_| false) {
            Admission::Reject(refusal) => refusal.reply(),
            other => panic!("{datagram:?}: {other:?}"),
        }
    }

    #[test]
    fn a_read_request_is_new_unless_its_transfer_still_waits() {
        match admit(RRQ, false, |_| false) {
            Admission::New(request) => assert_eq!(request.filename, "pxelinux.0"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            admit(RRQ, false, |name| name == "pxelinux.0"),
            Admission::Repeat
        );
        // The same port asking for another file has moved on.
        assert!(matches!(
            admit(RRQ, false, |name| name == "ldlinux.c32"),
            Admission::New(_)
        ));
    }

    #[test]
    fn writes_and_transfer_packets_are_refused() {
        assert_eq!(
            refused(b"\x00\x02f\x00octet\x00").code,
            ErrorCode::AccessViolation
        );
        for datagram in [
            &b"\x00\x03\x00\x01data"[..],
            b"\x00\x04\x00\x01",
            b"\x00\x06blksize\x00512\x00",
        ] {
            assert_eq!(refused(datagram).code, ErrorCode::IllegalOperation);
        }
        // An unknown opcode, and a request cut short.
        assert_eq!(refused(b"\x00\x09abcd").code, ErrorCode::IllegalOperation);
        assert_eq!(
            admit(RRQ, true, |_| true),
            Admission::Reject(Refusal::Protocol {
                code: ErrorCode::IllegalOperation,
                message: "Invalid request, request too large"
            })
        );
    }

    #[test]
    fn errors_and_crumbs_get_no_answer() {
        assert_eq!(
            admit(b"\x00\x05\x00\x00oops\x00", false, |_| false),
            Admission::Ignore
        );
        assert_eq!(admit(b"\x00\x01f", false, |_| false), Admission::Ignore);
        assert_eq!(admit(b"", false, |_| false), Admission::Ignore);
    }

    #[test]
    fn opcodes_route_datagrams() {
        assert!(is_request(RRQ));
        assert!(is_request(b"\x00\x02"));
        assert!(!is_request(b"\x00\x04\x00\x01"));
        assert!(is_ack_or_error(b"\x00\x04\x00\x01"));
        assert!(is_ack_or_error(b"\x00\x05\x00\x01x\x00"));
        assert!(!is_ack_or_error(b"\x00\x03\x00\x01"));
        assert!(!is_request(b"\x01"));
    }

    #[test]
    fn single_port_routes_by_opcode_and_transfer() {
        assert_eq!(
            route(RRQ, true),
            Route::Admit,
            "a new request from a transfer's port"
        );
        assert_eq!(route(b"\x00\x04\x00\x01", true), Route::Transfer);
        assert_eq!(route(b"\x00\x04\x00\x01", false), Route::Drop);
        assert_eq!(route(b"\x00\x05\x00\x00x\x00", false), Route::Drop);
        assert_eq!(
            route(b"\x00\x03\x00\x01x", false),
            Route::Admit,
            "DATA gets ERROR 4"
        );
    }

    #[test]
    fn every_refusal_says_its_error_and_its_label() {
        use crate::options::OptionError;
        use crate::resolve::ResolveError;
        let option: Refusal = OptionError::Blksize.into();
        assert_eq!(option.reply().code, ErrorCode::OptionRefused);
        assert_eq!(option.label(), "options");
        let missing: Refusal = ResolveError::NotFound.into();
        assert_eq!(missing.reply().code, ErrorCode::FileNotFound);
        assert_eq!(missing.label(), "not_found");
        let write = match admit(b"\x00\x02f\x00octet\x00", false, |_| false) {
            Admission::Reject(refusal) => refusal,
            other => panic!("{other:?}"),
        };
        assert_eq!(write.label(), "access");
    }
}
