//! `Packet::parse` on arbitrary datagrams never panics, and whatever it accepts survives a
//! round trip: `emit` succeeds, writes no more than was received, and parses back to an equal
//! packet. The main port's dispatcher (`transfer::inbound`) must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringtftp::packet::{BufferTooSmall, Packet};
use ringtftp::transfer::{self, Inbound};

fuzz_target!(|data: &[u8]| {
    match transfer::inbound(data) {
        Inbound::Read(req) => {
            assert!(matches!(Packet::parse(data), Ok(Packet::Rrq(r)) if r == req))
        }
        Inbound::Reject { message, .. } => assert!(!message.is_empty()),
        Inbound::Ignore => {}
    }

    let Ok(packet) = Packet::parse(data) else {
        return;
    };
    // Emit never grows a packet: every field is copied, or cut at what parsing ignored.
    let mut buf = vec![0u8; data.len() + 64];
    let len = packet
        .emit(&mut buf)
        .expect("emit into a buffer larger than the datagram");
    assert!(
        len <= data.len(),
        "emit grew {packet:?}: {len} > {}",
        data.len()
    );
    let again = Packet::parse(&buf[..len]).expect("an emitted packet parses");
    assert_eq!(again, packet, "parse(emit(p)) != p");

    // The exact length suffices, one byte less is refused without a panic.
    let mut exact = vec![0u8; len];
    assert_eq!(packet.emit(&mut exact), Ok(len));
    assert_eq!(exact, buf[..len]);
    if len > 0 {
        assert_eq!(packet.emit(&mut exact[..len - 1]), Err(BufferTooSmall));
    }

    // A second round trip is byte-identical: emit is canonical.
    let mut twice = vec![0u8; len];
    assert_eq!(again.emit(&mut twice), Ok(len));
    assert_eq!(twice, exact);
});
