//! Option negotiation on arbitrary option lists and arbitrary server limits never panics, and
//! what it grants is always legal (RFC 2347/2348/2349/7440):
//! - `blksize` in 8..=65464, and within the server's limit when the client asked for one;
//! - `windowsize` in 1..=65535, and within the server's limit when the client asked for one;
//! - `timeout` within 10 ms..=255 s;
//! - the OACK fits a 1024-byte buffer, parses as an OACK, names only options of the request,
//!   each once, and a client reading it back gets the values the server uses.
#![no_main]

use std::cell::Cell;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringtftp::options::{Limits, Negotiated, BLKSIZE_MAX, BLKSIZE_MIN, TIMEOUT_MAX, TIMEOUT_MIN};
use ringtftp::packet::{Options, Packet};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    blksize_max: u16,
    windowsize_max: u16,
    /// What the `tsize` callback answers (`None`: size unknown).
    tsize: Option<u64>,
    /// The raw option list of the request, after filename and mode.
    options: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let options = Options::parse(input.options);
    let limits = Limits {
        blksize_max: input.blksize_max,
        windowsize_max: input.windowsize_max,
        ..Limits::default()
    };
    let asked = |name: &str| options.get(name).is_some();
    let called = Cell::new(false);
    let result = Negotiated::negotiate(&options, &limits, || {
        called.set(true);
        input.tsize
    });
    // The size is computed only for a client that asked for it (netascii costs a pass).
    assert!(!called.get() || asked("tsize"), "tsize computed unasked");
    let Ok(n) = result else {
        return;
    };

    assert!(
        (BLKSIZE_MIN..=BLKSIZE_MAX).contains(&n.blksize().get()),
        "{n:?}"
    );
    if asked("blksize") {
        assert!(
            n.blksize().get() <= limits.blksize_max.clamp(BLKSIZE_MIN, BLKSIZE_MAX),
            "{n:?} {limits:?}"
        );
    } else {
        assert_eq!(n.blksize().get(), 512);
    }
    assert!(n.windowsize().get() >= 1, "{n:?}");
    if asked("windowsize") {
        assert!(
            n.windowsize().get() <= limits.windowsize_max.max(1),
            "{n:?} {limits:?}"
        );
    } else {
        assert_eq!(n.windowsize().get(), 1);
    }
    match n.timeout() {
        Some(t) => {
            assert!((TIMEOUT_MIN..=TIMEOUT_MAX).contains(&t), "{n:?}");
            assert!(asked("timeout") || asked("utimeout"));
        }
        None => assert!(!asked("timeout") && !asked("utimeout")),
    }
    if n.tsize().is_some() {
        assert!(asked("tsize"));
        assert_eq!(n.tsize(), input.tsize);
    }

    let mut buf = [0u8; 1024];
    let len = n.emit_oack(&mut buf).expect("an OACK fits in 1024 bytes");
    let Ok(Packet::Oack(oack)) = Packet::parse(&buf[..len]) else {
        panic!("emit_oack wrote no OACK: {:?}", &buf[..len]);
    };
    assert_eq!(
        oack.as_bytes().len() + 2,
        len,
        "the OACK ends in a partial pair"
    );
    assert_eq!(n.has_oack(), !oack.is_empty());
    let mut seen: Vec<&[u8]> = Vec::new();
    for (name, _) in oack.iter() {
        assert!(
            options
                .iter()
                .any(|(asked, _)| asked.eq_ignore_ascii_case(name)),
            "OACK names {:?}, which the request did not",
            String::from_utf8_lossy(name)
        );
        assert!(!seen.contains(&name), "OACK names {name:?} twice");
        seen.push(name);
    }
    // `timeout` and `utimeout` share one slot.
    assert!(!(oack.get("timeout").is_some() && oack.get("utimeout").is_some()));

    // A client that reads the OACK back (as a request, without server limits) gets what the
    // server uses; the timeout is echoed to the microsecond.
    let back = Negotiated::negotiate(
        &oack,
        &Limits {
            blksize_max: BLKSIZE_MAX,
            windowsize_max: u16::MAX,
            window_bytes_max: usize::MAX,
        },
        || n.tsize(),
    )
    .expect("an OACK renegotiates");
    assert_eq!(back.blksize().get(), n.blksize().get());
    assert_eq!(back.windowsize().get(), n.windowsize().get());
    assert_eq!(back.tsize(), n.tsize());
    match (back.timeout(), n.timeout()) {
        (Some(a), Some(b)) => assert!(a <= b && b - a < Duration::from_micros(1), "{a:?} {b:?}"),
        (a, b) => assert_eq!(a, b),
    }
    // WDS's `msftwindow` is granted with another value (27182) than the one asked (31416), so
    // read back as a request it is not asked again: the rest of the OACK is a fixed point.
    assert!(!back.msftwindow());
    if !n.msftwindow() {
        let mut again = [0u8; 1024];
        let len_again = back.emit_oack(&mut again).expect("fits");
        assert_eq!(
            &again[..len_again],
            &buf[..len],
            "the OACK is a fixed point"
        );
    }
});
