use super::*;

/// Runs a lock-step transfer of `len` bytes to the end with instant ACKs; returns the blocks
/// sent with their lengths.
fn run_lockstep(len: u64) -> (Transfer, Vec<(u64, usize)>) {
    let c = Clock::new();
    let mut t = Transfer::new(c.ms(0), Negotiated::DEFAULT, len, Config::default());
    let mut sent = Vec::new();
    for step in 0.. {
        let now = c.ms(step);
        for tx in drain(&mut t, now) {
            let Transmit::Blocks(run) = tx else {
                panic!("{tx:?}")
            };
            for b in run.iter() {
                sent.push((b, t.block_len(b)));
                t.handle_datagram(now, &ack(Transfer::wire_block(b)));
            }
        }
        if t.outcome().is_some() {
            break;
        }
    }
    assert_ended(&mut t, c.ms(99_999), Outcome::Complete);
    (t, sent)
}

#[test]
fn the_final_block_is_short() {
    let (mut t, sent) = run_lockstep(1300);
    assert_eq!(sent, [(1, 512), (2, 512), (3, 276)]);
    // Late datagrams change nothing.
    t.handle_datagram(Instant::now(), &ack(3));
    t.handle_datagram(Instant::now(), b"\x00\x01f\x00octet\x00");
    assert_ended(&mut t, Instant::now(), Outcome::Complete);
    assert_eq!(t.last_block(), 3);
    assert_eq!((t.offset(1), t.offset(2), t.offset(3)), (0, 512, 1024));
    assert_eq!((t.stats().bytes, t.stats().blocks), (1300, 3));
}

#[test]
fn an_exact_multiple_ends_with_an_empty_block() {
    let (t, sent) = run_lockstep(1024);
    assert_eq!(sent, [(1, 512), (2, 512), (3, 0)]);
    assert_eq!((t.stats().bytes, t.stats().blocks), (1024, 3));
}

#[test]
fn an_empty_file_is_one_empty_block() {
    let (t, sent) = run_lockstep(0);
    assert_eq!(sent, [(1, 0)]);
    assert!(t.is_empty());
    assert_eq!((t.stats().bytes, t.stats().blocks), (0, 1));
}

#[test]
fn block_numbers_roll_over_past_65535() {
    const BLOCKS: u64 = 70_000;
    for windowsize in [1u16, 64] {
        let c = Clock::new();
        let raw = format!("blksize\x008\x00windowsize\x00{windowsize}\x00");
        let len = BLOCKS * 8 - 3;
        let mut t = Transfer::new(c.ms(0), negotiated(raw.as_bytes()), len, Config::default());
        assert_eq!(t.last_block(), BLOCKS);
        assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
        t.handle_datagram(c.ms(1), &ack(0));
        let mut wires = Vec::with_capacity(BLOCKS as usize);
        let mut now = c.ms(1);
        while t.outcome().is_none() {
            let mut last = None;
            for tx in drain(&mut t, now) {
                let Transmit::Blocks(run) = tx else {
                    panic!("{tx:?}")
                };
                assert!(!run.retransmit);
                wires.extend(run.iter().map(Transfer::wire_block));
                last = run.iter().last();
            }
            now += ms(1);
            t.handle_datagram(now, &ack(Transfer::wire_block(last.unwrap())));
        }
        assert_ended(&mut t, now, Outcome::Complete);
        assert_eq!(wires.len() as u64, BLOCKS);
        assert_eq!(&wires[65533..65539], [65534, 65535, 0, 1, 2, 3]);
        assert!(wires.iter().enumerate().all(|(i, &w)| w == (i + 1) as u16));
        assert_eq!(
            (t.stats().blocks, t.stats().bytes, t.stats().retransmits),
            (BLOCKS, len, 0)
        );
    }
}

#[test]
fn duplicate_ack_sends_nothing_and_keeps_the_timer() {
    let c = Clock::new();
    let mut t = lockstep(c, 512 * 10, Config::default());
    // The Sorcerer's Apprentice: DATA 1 is retransmitted, and both copies are ACKed.
    assert_eq!(fire(&mut t), c.ms(1000));
    assert_eq!(t.poll_transmit(c.ms(1000)), blocks(1, 1, true));
    t.handle_datagram(c.ms(1010), &ack(1));
    assert_eq!(t.poll_transmit(c.ms(1010)), blocks(2, 1, false));
    let deadline = t.poll_timeout();
    let sent = t.stats().sent;
    for at in [1020, 1030, 1500] {
        t.handle_datagram(c.ms(at), &ack(1));
        assert_eq!(
            t.poll_transmit(c.ms(at)),
            None,
            "a duplicate ACK sends nothing"
        );
        assert_eq!(t.poll_timeout(), deadline, "nor moves the timer");
    }
    assert_eq!(t.stats().sent, sent);
    assert_eq!(t.outcome(), None);
    // With a window the duplicate of the window's end is just as inert.
    let mut t = Transfer::new(
        c.ms(0),
        negotiated(b"windowsize\x004\x00"),
        512 * 20,
        Config::default(),
    );
    drain(&mut t, c.ms(0));
    t.handle_datagram(c.ms(1), &ack(0));
    assert_eq!(t.poll_transmit(c.ms(1)), blocks(1, 4, false));
    t.handle_datagram(c.ms(2), &ack(4));
    assert_eq!(t.poll_transmit(c.ms(2)), blocks(5, 4, false));
    let deadline = t.poll_timeout();
    t.handle_datagram(c.ms(3), &ack(4));
    t.handle_datagram(c.ms(3), &ack(0));
    assert_eq!(t.poll_transmit(c.ms(3)), None);
    assert_eq!(t.poll_timeout(), deadline);
}

#[test]
fn stale_acks_are_ignored_even_across_the_rollover() {
    let c = Clock::new();
    let mut t = lockstep(c, 512 * 100, Config::default());
    for b in 1..=10u16 {
        t.handle_datagram(c.ms(u64::from(b)), &ack(b));
        drain(&mut t, c.ms(u64::from(b)));
    }
    assert_eq!(t.acked(), 10);
    let deadline = t.poll_timeout();
    // Anything up to half the sequence space behind the last ACK is the past.
    for stale in [3, 0, 9, 10, 10u16.wrapping_sub(0x7fff)] {
        t.handle_datagram(c.ms(20), &ack(stale));
        assert_eq!(t.poll_transmit(c.ms(20)), None, "ACK {stale}");
        assert_eq!(t.poll_timeout(), deadline);
    }
    assert_eq!(t.outcome(), None);

    // Past the rollover, ACK 65535 (absolute 65535) is behind absolute 65537 (wire 1).
    let raw = b"blksize\x008\x00windowsize\x0064\x00";
    let mut t = Transfer::new(c.ms(0), negotiated(raw), 8 * 70_000, Config::default());
    drain(&mut t, c.ms(0));
    t.handle_datagram(c.ms(0), &ack(0));
    while t.acked() < 65537 {
        let run = match drain(&mut t, c.ms(0))[..] {
            [Transmit::Blocks(run)] => run,
            ref other => panic!("{other:?}"),
        };
        let to = (run.first + u64::from(run.count) - 1).min(65537);
        t.handle_datagram(c.ms(0), &ack(wire(to)));
    }
    assert_eq!(t.poll_transmit(c.ms(0)), blocks(65538, 64, false));
    for stale in [65535, 65534, 0, 1] {
        t.handle_datagram(c.ms(1), &ack(stale));
        assert_eq!(t.poll_transmit(c.ms(1)), None, "ACK {stale}");
    }
    assert_eq!(t.outcome(), None);
    // Wire 2 is absolute 65538, in flight.
    t.handle_datagram(c.ms(1), &ack(2));
    assert_eq!(t.acked(), 65538);
}

#[test]
fn ack_for_a_block_never_sent_is_an_error() {
    let c = Clock::new();
    let mut t = lockstep(c, 512 * 10, Config::default());
    t.handle_datagram(c.ms(5), &ack(2));
    // The ERROR must go out before the outcome shows.
    assert_eq!(t.outcome(), None);
    assert_eq!(
        t.poll_transmit(c.ms(5)),
        Some(Transmit::Error {
            code: ErrorCode::IllegalOperation,
            message: "Invalid request, invalid block number requested",
        })
    );
    assert_ended(
        &mut t,
        c.ms(5),
        Outcome::Failed(ErrorCode::IllegalOperation),
    );
    assert_eq!(t.stats().ended, Some(c.ms(5)));

    // Past the end of the window, too.
    let mut t = Transfer::new(
        c.ms(0),
        negotiated(b"windowsize\x004\x00"),
        512 * 20,
        Config::default(),
    );
    drain(&mut t, c.ms(0));
    t.handle_datagram(c.ms(1), &ack(0));
    assert_eq!(t.poll_transmit(c.ms(1)), blocks(1, 4, false));
    t.handle_datagram(c.ms(2), &ack(5));
    assert!(matches!(
        t.poll_transmit(c.ms(2)),
        Some(Transmit::Error {
            code: ErrorCode::IllegalOperation,
            ..
        })
    ));
    assert_ended(
        &mut t,
        c.ms(2),
        Outcome::Failed(ErrorCode::IllegalOperation),
    );
}

#[test]
fn error_from_the_client_cancels_quietly() {
    let c = Clock::new();
    let mut t = lockstep(c, 512 * 10, Config::default());
    t.handle_datagram(c.ms(5), &ack(1));
    drain(&mut t, c.ms(5));
    t.handle_datagram(c.ms(7), &error(0, "user cancelled"));
    assert_ended(&mut t, c.ms(7), Outcome::Cancelled(ErrorCode::Undefined));
    assert_eq!(t.stats().ended, Some(c.ms(7)));
    // Nothing revives it, nor turns it into a failure: an ERROR is never answered.
    t.handle_datagram(c.ms(8), &ack(2));
    t.handle_datagram(c.ms(8), b"\x00\x03\x00\x02data");
    assert_eq!(t.poll_transmit(c.ms(8)), None);
    t.handle_timeout(c.ms(100_000));
    t.abort(c.ms(9), ErrorCode::Undefined, "late");
    assert_ended(&mut t, c.ms(9), Outcome::Cancelled(ErrorCode::Undefined));
}

#[test]
fn error_8_after_the_oack_is_an_edk2_size_probe() {
    let c = Clock::new();
    let opts = Negotiated::negotiate(
        &Options::parse(b"tsize\x000\x00blksize\x001468\x00windowsize\x004\x00"),
        &Limits::default(),
        || Some(123_456),
    )
    .unwrap();
    let mut t = Transfer::new(c.ms(0), opts, 123_456, Config::default());
    assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
    let mut buf = [0; 128];
    let n = t.emit_oack(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        b"\x00\x06tsize\x00123456\x00blksize\x001468\x00windowsize\x004\x00"
    );
    t.handle_datagram(c.ms(3), &error(8, "tsize only"));
    assert_ended(
        &mut t,
        c.ms(3),
        Outcome::Cancelled(ErrorCode::OptionRefused),
    );
    assert_eq!(t.stats().sent, 1);
}

#[test]
fn anything_but_ack_or_error_fails_the_transfer_and_garbage_is_dropped() {
    let c = Clock::new();
    let mut t = lockstep(c, 512 * 10, Config::default());
    let deadline = t.poll_timeout();
    for garbage in [
        &b""[..],
        b"\x00",
        b"\x00\x04",
        b"\x00\x09ab",
        b"\x00\x05\x00\x01x",
    ] {
        t.handle_datagram(c.ms(1), garbage);
        assert_eq!(t.poll_transmit(c.ms(1)), None, "{garbage:?}");
        assert_eq!(t.poll_timeout(), deadline);
    }
    t.handle_datagram(c.ms(2), b"\x00\x03\x00\x01hello");
    assert_eq!(
        t.poll_transmit(c.ms(2)),
        Some(Transmit::Error {
            code: ErrorCode::IllegalOperation,
            message: "Illegal TFTP operation: only ACK and ERROR are expected",
        })
    );
    assert_ended(
        &mut t,
        c.ms(2),
        Outcome::Failed(ErrorCode::IllegalOperation),
    );
}

#[test]
fn windows_slide_from_the_acknowledged_block() {
    for windowsize in [1u16, 4, 16, 64] {
        let c = Clock::new();
        let w = u64::from(windowsize);
        let raw = format!("blksize\x008\x00windowsize\x00{windowsize}\x00");
        let last = 10 * w + 3;
        let mut t = Transfer::new(
            c.ms(0),
            negotiated(raw.as_bytes()),
            8 * last - 1,
            Config::default(),
        );
        assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
        t.handle_datagram(c.ms(1), &ack(0));
        assert_eq!(t.poll_transmit(c.ms(1)), blocks(1, windowsize, false));
        assert_eq!(t.poll_transmit(c.ms(1)), None);
        let mut expected_retransmits = 0;
        let mut first = w + 1;
        if w > 1 {
            // The client lost block mid + 1: the next window starts right after `mid`,
            // and the blocks of the last window sent again count as retransmissions.
            let mid = w / 2;
            t.handle_datagram(c.ms(2), &ack(wire(mid)));
            assert_eq!(t.poll_transmit(c.ms(2)), blocks(mid + 1, windowsize, false));
            expected_retransmits += w - mid;
            assert_eq!(t.stats().retransmits, expected_retransmits);
            assert_eq!(t.poll_timeout(), Some(c.ms(2) + t.rto()));
            first = mid + w + 1;
        }
        // The ACK of a window's last block slides it fully.
        t.handle_datagram(c.ms(3), &ack(wire(first - 1)));
        assert_eq!(t.poll_transmit(c.ms(3)), blocks(first, windowsize, false));
        assert_eq!(t.stats().retransmits, expected_retransmits);
        // A timeout resends the window from the last ACK (RFC 7440 §4).
        let at = fire(&mut t);
        assert_eq!(t.poll_transmit(at), blocks(first, windowsize, true));
        expected_retransmits += w;
        assert_eq!(t.stats().retransmits, expected_retransmits);
        // Full windows to the end; the final one is cut short.
        let mut now = at;
        loop {
            now += ms(1);
            let end = (first + w - 1).min(last);
            t.handle_datagram(now, &ack(wire(end)));
            if end == last {
                break;
            }
            first = end + 1;
            let count = (last - end).min(w) as u16;
            assert_eq!(t.poll_transmit(now), blocks(first, count, false));
        }
        assert_ended(&mut t, now, Outcome::Complete);
        assert_eq!(t.stats().retransmits, expected_retransmits);
        assert_eq!(t.stats().blocks, last);
        assert_eq!(t.stats().bytes, 8 * last - 1);
    }
}

#[test]
fn inbound_classifies_what_the_main_port_receives() {
    let Inbound::Read(req) = inbound(b"\x00\x01boot/pxelinux.0\x00octet\x00blksize\x001468\x00")
    else {
        panic!("an RRQ starts a transfer")
    };
    assert_eq!(req.filename, "boot/pxelinux.0");
    assert_eq!(req.options.get("blksize"), Some(&b"1468"[..]));
    let reject = |dgram: &[u8]| match inbound(dgram) {
        Inbound::Reject { code, .. } => code,
        other => panic!("{dgram:?}: {other:?}"),
    };
    assert_eq!(
        reject(b"\x00\x02upload\x00octet\x00"),
        ErrorCode::AccessViolation
    );
    for wrong_port in [
        &b"\x00\x03\x00\x01data"[..],
        b"\x00\x04\x00\x01",
        b"\x00\x06blksize\x00512\x00",
    ] {
        assert_eq!(reject(wrong_port), ErrorCode::IllegalOperation);
    }
    assert_eq!(reject(b"\x00\x09whatever"), ErrorCode::IllegalOperation);
    assert_eq!(
        reject(b"\x00\x01ok.bin"),
        ErrorCode::IllegalOperation,
        "unterminated, but long enough to answer"
    );
    assert_eq!(reject(b"\x00\x01f\x00mail\x00"), ErrorCode::Undefined);
    assert_eq!(
        reject(b"\x00\x01a\x1bb\x00octet\x00"),
        ErrorCode::AccessViolation
    );
    assert_eq!(inbound(b"\x00\x05\x00\x01oops\x00"), Inbound::Ignore);
    assert_eq!(inbound(b""), Inbound::Ignore);
    assert_eq!(inbound(b"\x01"), Inbound::Ignore);
    // Shorter than any packet: an ERROR would be ten times the size.
    assert_eq!(inbound(b"\x00\x04\x00"), Inbound::Ignore);
    assert_eq!(inbound(b"\x00\x00"), Inbound::Ignore);
}

#[test]
fn stats_count_what_was_sent_and_acknowledged() {
    let c = Clock::new();
    let mut t = Transfer::new(
        c.ms(0),
        negotiated(b"blksize\x00512\x00"),
        1300,
        Config::default(),
    );
    assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
    t.handle_datagram(c.ms(10), &ack(0));
    assert_eq!(t.poll_transmit(c.ms(10)), blocks(1, 1, false));
    t.handle_datagram(c.ms(20), &ack(1));
    assert_eq!((t.stats().bytes, t.stats().blocks), (512, 1));
    assert_eq!(t.stats().duration(c.ms(25)), ms(25));
    assert_eq!(t.poll_transmit(c.ms(20)), blocks(2, 1, false));
    let at = fire(&mut t);
    assert_eq!(t.poll_transmit(at), blocks(2, 1, true));
    t.handle_datagram(at + ms(10), &ack(2));
    assert_eq!(t.poll_transmit(at + ms(10)), blocks(3, 1, false));
    t.handle_datagram(at + ms(20), &ack(3));
    assert_ended(&mut t, at + ms(20), Outcome::Complete);
    let stats = *t.stats();
    assert_eq!(
        (stats.bytes, stats.blocks, stats.sent, stats.retransmits),
        (1300, 3, 5, 1)
    );
    assert_eq!(stats.started, c.ms(0));
    assert_eq!(stats.ended, Some(at + ms(20)));
    assert_eq!(stats.duration(at + ms(99_999)), at + ms(20) - c.ms(0));
}

#[test]
fn abort_sends_an_error_then_fails() {
    let c = Clock::new();
    let mut t = lockstep(c, 512 * 10, Config::default());
    t.handle_datagram(c.ms(5), &ack(1));
    // The driver aborts before it sends the block it could not read.
    t.abort(c.ms(5), ErrorCode::Undefined, "Short read");
    assert_eq!(t.outcome(), None);
    assert_eq!(
        drain(&mut t, c.ms(5)),
        [Transmit::Error {
            code: ErrorCode::Undefined,
            message: "Short read",
        }]
    );
    assert_ended(&mut t, c.ms(5), Outcome::Failed(ErrorCode::Undefined));
    t.abort(c.ms(6), ErrorCode::DiskFull, "again");
    assert_ended(&mut t, c.ms(6), Outcome::Failed(ErrorCode::Undefined));
}

#[test]
fn completion_discards_a_retransmission_not_yet_sent() {
    let c = Clock::new();
    let mut t = lockstep(c, 100, Config::default());
    // The timer fires, and the ACK arrives before the driver sent the retransmission.
    fire(&mut t);
    t.handle_datagram(c.ms(1001), &ack(1));
    assert_ended(&mut t, c.ms(1001), Outcome::Complete);
    assert_eq!(t.stats().sent, 1);
}

/// WDS's variable window (`msftwindow`): each ACK's extra byte sizes the next window, within
/// the `windowsize` caps; without the extension granted, the byte is ignored.
#[test]
fn msftwindow_acks_size_the_next_window() {
    let c = Clock::new();
    let ack_for = |block: u16, next: u8| {
        let mut a = ack(block).to_vec();
        a.push(next);
        a
    };
    let opts = negotiated(b"blksize\x001456\x00windowsize\x004\x00msftwindow\x0031416\x00");
    assert!(opts.msftwindow());
    // 96 KiB of 1456-byte blocks.
    assert_eq!(opts.window_max().get(), 64);
    let mut t = Transfer::new(c.ms(0), opts, 1456 * 200, Config::default());
    drain(&mut t, c.ms(0));
    t.handle_datagram(c.ms(1), &ack_for(0, 2));
    assert_eq!(t.poll_transmit(c.ms(1)), blocks(1, 2, false));
    t.handle_datagram(c.ms(2), &ack_for(2, 8));
    assert_eq!(t.poll_transmit(c.ms(2)), blocks(3, 8, false));
    // More than the caps allow is the caps; 0 is one block.
    t.handle_datagram(c.ms(3), &ack_for(10, 255));
    assert_eq!(t.poll_transmit(c.ms(3)), blocks(11, 64, false));
    t.handle_datagram(c.ms(4), &ack_for(74, 0));
    assert_eq!(t.poll_transmit(c.ms(4)), blocks(75, 1, false));
    // A plain ACK keeps the window it had.
    t.handle_datagram(c.ms(5), &ack(75));
    assert_eq!(t.poll_transmit(c.ms(5)), blocks(76, 1, false));

    // Not granted (another value): the byte is junk after the block number, as before.
    let opts = negotiated(b"windowsize\x004\x00msftwindow\x001\x00");
    assert!(!opts.msftwindow());
    let mut t = Transfer::new(c.ms(0), opts, 512 * 20, Config::default());
    drain(&mut t, c.ms(0));
    t.handle_datagram(c.ms(1), &ack_for(0, 9));
    assert_eq!(t.poll_transmit(c.ms(1)), blocks(1, 4, false));
}
