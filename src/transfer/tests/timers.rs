use super::*;

#[test]
fn oack_is_retransmitted_with_backoff_until_ack_0_then_data_1() {
    let c = Clock::new();
    let config = Config {
        retries_unanswered: 5,
        ..Config::default()
    };
    let mut t = Transfer::new(c.ms(0), negotiated(b"blksize\x001024\x00"), 5000, config);
    assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
    assert_eq!(t.poll_transmit(c.ms(0)), None);
    let mut buf = [0; 64];
    let n = t.emit_oack(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"\x00\x06blksize\x001024\x00");
    assert_eq!(t.poll_timeout(), Some(c.ms(1000)));
    // Early timer calls do nothing.
    t.handle_timeout(c.ms(999));
    assert_eq!(t.poll_transmit(c.ms(999)), None);
    // 1 s, then 2 s, then 4 s.
    assert_eq!(fire(&mut t), c.ms(1000));
    assert_eq!(t.poll_transmit(c.ms(1000)), Some(Transmit::Oack));
    assert_eq!(t.poll_timeout(), Some(c.ms(3000)));
    assert_eq!(fire(&mut t), c.ms(3000));
    assert_eq!(t.poll_transmit(c.ms(3000)), Some(Transmit::Oack));
    assert_eq!(t.poll_timeout(), Some(c.ms(7000)));
    // Only ACK 0 answers an OACK.
    t.handle_datagram(c.ms(3500), &ack(1));
    assert_eq!(t.poll_transmit(c.ms(3500)), None);
    assert_eq!(t.poll_timeout(), Some(c.ms(7000)));
    t.handle_datagram(c.ms(3500), &ack(0));
    assert_eq!(t.poll_transmit(c.ms(3500)), blocks(1, 1, false));
    assert_eq!(t.poll_transmit(c.ms(3500)), None);
    assert!(t.poll_timeout().unwrap() > c.ms(3500));
    assert_eq!((t.stats().sent, t.stats().retransmits), (4, 2));
    // A late copy of ACK 0 is a duplicate.
    let deadline = t.poll_timeout();
    t.handle_datagram(c.ms(3600), &ack(0));
    assert_eq!(t.poll_transmit(c.ms(3600)), None);
    assert_eq!(t.poll_timeout(), deadline);
    assert_eq!(t.outcome(), None);
}

#[test]
fn without_options_data_1_goes_at_once() {
    let c = Clock::new();
    let mut t = Transfer::new(c.ms(0), Negotiated::DEFAULT, 1300, Config::default());
    assert!(!t.options().has_oack());
    assert_eq!(t.poll_transmit(c.ms(0)), blocks(1, 1, false));
    assert_eq!(t.poll_transmit(c.ms(0)), None);
    assert_eq!(t.poll_timeout(), Some(c.ms(1000)));
    // A stray ACK 0 is no answer to an OACK that was never sent.
    t.handle_datagram(c.ms(5), &ack(0));
    assert_eq!(t.poll_transmit(c.ms(5)), None);
    t.handle_datagram(c.ms(10), &ack(1));
    assert_eq!(t.poll_transmit(c.ms(10)), blocks(2, 1, false));
    assert_eq!(t.stats().sent, 2);
}

#[test]
fn block_is_retransmitted_after_the_rto() {
    let c = Clock::new();
    let mut t = lockstep(c, 4000, Config::default());
    // Before any sample the RTO is the initial 1 s.
    assert_eq!(t.rto(), ms(1000));
    assert_eq!(t.poll_timeout(), Some(c.ms(1000)));
    assert_eq!(fire(&mut t), c.ms(1000));
    assert_eq!(t.poll_transmit(c.ms(1000)), blocks(1, 1, true));
    assert_eq!(t.stats().retransmits, 1);
    // ACK 1 after the retransmission; then a clean 100 ms round trip sets the RTO to
    // SRTT + 4 RTTVAR = 100 + 4 * 50 = 300 ms.
    t.handle_datagram(c.ms(1100), &ack(1));
    assert_eq!(t.poll_transmit(c.ms(1100)), blocks(2, 1, false));
    t.handle_datagram(c.ms(1200), &ack(2));
    assert_eq!(t.rto(), ms(300));
    assert_eq!(t.poll_transmit(c.ms(1200)), blocks(3, 1, false));
    assert_eq!(t.poll_timeout(), Some(c.ms(1500)));
    t.handle_timeout(c.ms(1499));
    assert_eq!(t.poll_transmit(c.ms(1499)), None);
    t.handle_timeout(c.ms(1500));
    assert_eq!(t.poll_transmit(c.ms(1500)), blocks(3, 1, true));
    assert_eq!(t.stats().retransmits, 2);
}

#[test]
fn adaptive_timeout_backs_off_exponentially_up_to_the_ceiling() {
    let c = Clock::new();
    let config = Config {
        retries: 8,
        retries_unanswered: 8,
        rto_initial: ms(100),
        rto_max: ms(1000),
        ..Config::default()
    };
    let mut t = lockstep(c, 4000, config);
    let mut sent_at = c.ms(0);
    let mut waits = Vec::new();
    while t.outcome().is_none() {
        let deadline = fire(&mut t);
        waits.push((deadline - sent_at).as_millis());
        sent_at = deadline;
        drain(&mut t, deadline);
    }
    assert_eq!(
        waits,
        [100, 200, 400, 800, 1000, 1000, 1000, 1000, 1000],
        "each wait doubles, up to rto_max"
    );
    assert_eq!(t.outcome(), Some(Outcome::TimedOut));
    assert_eq!(t.stats().retransmits, 8);
}

#[test]
fn a_timeout_fixed_by_the_client_is_used_as_is() {
    let c = Clock::new();
    let opts = Negotiated::negotiate(
        &Options::parse(b"timeout\x002\x00"),
        &Limits::default(),
        || None,
    )
    .unwrap();
    assert_eq!(opts.timeout(), Some(ms(2000)));
    let mut t = Transfer::new(c.ms(0), opts, 100_000, Config::default());
    assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
    assert_eq!(t.poll_timeout(), Some(c.ms(2000)));
    assert_eq!(fire(&mut t), c.ms(2000));
    assert_eq!(t.poll_transmit(c.ms(2000)), Some(Transmit::Oack));
    assert_eq!(t.poll_timeout(), Some(c.ms(4000)), "no backoff");
    t.handle_datagram(c.ms(4005), &ack(0));
    assert_eq!(t.poll_transmit(c.ms(4005)), blocks(1, 1, false));
    assert_eq!(t.poll_timeout(), Some(c.ms(6005)));
    // Fast round trips teach it nothing: the client's interval stands.
    t.handle_datagram(c.ms(4010), &ack(1));
    assert_eq!(t.rto(), ms(2000));
    assert_eq!(t.poll_transmit(c.ms(4010)), blocks(2, 1, false));
    let mut at = c.ms(4010);
    for _ in 0..5 {
        assert_eq!(t.poll_timeout(), Some(at + ms(2000)));
        at = fire(&mut t);
        assert_eq!(t.poll_transmit(at), blocks(2, 1, true));
    }
    // Five retries (the default), the last wait already past `patience`.
    assert_eq!(t.poll_timeout(), Some(at + ms(2000)));
    let end = fire(&mut t);
    assert_ended(&mut t, end, Outcome::TimedOut);
    assert_eq!(end, c.ms(4010 + 6 * 2000));
}

#[test]
fn gives_up_after_exactly_retries_retransmissions() {
    let c = Clock::new();
    let config = Config {
        retries_unanswered: 5,
        ..Config::default()
    };
    let mut t = lockstep(c, 4000, config);
    // Waits 1, 2, 4, 4 (ceiling), 4, 4 s: five retransmissions, then the end.
    let mut deadlines = Vec::new();
    loop {
        let deadline = t.poll_timeout().unwrap();
        t.handle_timeout(deadline - ms(1));
        assert_eq!(t.poll_transmit(deadline - ms(1)), None);
        assert_eq!(t.outcome(), None);
        t.handle_timeout(deadline);
        deadlines.push(deadline);
        if t.outcome().is_some() {
            break;
        }
        assert_eq!(t.poll_transmit(deadline), blocks(1, 1, true));
    }
    let expected: Vec<Instant> = [1000, 3000, 7000, 11000, 15000, 19000]
        .map(|m| c.ms(m))
        .to_vec();
    assert_eq!(deadlines, expected);
    assert_ended(&mut t, c.ms(19000), Outcome::TimedOut);
    assert_eq!((t.stats().sent, t.stats().retransmits), (6, 5));
    assert_eq!(t.stats().ended, Some(c.ms(19000)));
    // The end is final.
    t.handle_datagram(c.ms(19001), &ack(1));
    assert_ended(&mut t, c.ms(19001), Outcome::TimedOut);
}

#[test]
fn the_last_wait_is_stretched_to_patience() {
    let c = Clock::new();
    let config = Config {
        retries: 3,
        rto_initial: ms(10),
        rto_min: ms(10),
        patience: ms(5000),
        ..Config::default()
    };
    let mut t = lockstep(c, 4000, config);
    // The client answers block 1 at once (a 10 ms timeout after a 0 ms sample), then
    // falls silent.
    t.handle_ack(c.ms(0), 1);
    assert_eq!(t.poll_transmit(c.ms(0)), blocks(2, 1, false));
    let mut deadlines = Vec::new();
    while t.outcome().is_none() {
        let deadline = fire(&mut t);
        deadlines.push(deadline);
        drain(&mut t, deadline);
    }
    // 10, 20, 40 ms, then the last wait reaches 5 s of silence.
    let expected: Vec<Instant> = [10, 30, 70, 5000].map(|m| c.ms(m)).to_vec();
    assert_eq!(deadlines, expected);
    assert_eq!(t.stats().retransmits, 3);
    assert_ended(&mut t, c.ms(5000), Outcome::TimedOut);
}

#[test]
fn a_client_that_never_answers_draws_few_replies() {
    // A forged RRQ: 1 + retries_unanswered (2) copies of DATA 1, then the end, with no
    // wait stretched to `patience`, yet later than a 5 s client timer (tftp-hpa's).
    let c = Clock::new();
    let mut t = lockstep(c, 4000, Config::default());
    let mut sent = 1;
    while t.outcome().is_none() {
        let deadline = fire(&mut t);
        sent += drain(&mut t, deadline).len();
    }
    assert_eq!(sent, 3);
    assert_eq!(t.outcome(), Some(Outcome::TimedOut));
    assert_eq!(
        t.stats().ended,
        Some(c.ms(7000)),
        "1 s, 2 s, then 4 s: no stretch"
    );
}

#[test]
fn a_repeated_request_resends_the_first_packet_at_once() {
    let c = Clock::new();
    let mut t = lockstep(c, 4000, Config::default());
    t.handle_repeat(c.ms(5));
    assert_eq!(t.poll_transmit(c.ms(5)), blocks(1, 1, true));
    assert_eq!(t.stats().retransmits, 1);
    // Once the transfer is under way, a stale repeat changes nothing.
    t.handle_ack(c.ms(6), 1);
    assert_eq!(t.poll_transmit(c.ms(6)), blocks(2, 1, false));
    t.handle_repeat(c.ms(7));
    assert_eq!(t.poll_transmit(c.ms(7)), None);

    let mut t = Transfer::new(
        c.ms(0),
        negotiated(b"blksize\x001024\x00"),
        5000,
        Config::default(),
    );
    assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
    t.handle_repeat(c.ms(3));
    assert_eq!(t.poll_transmit(c.ms(3)), Some(Transmit::Oack));
}

#[test]
fn a_stream_of_repeated_requests_is_answered_a_bounded_number_of_times() {
    let c = Clock::new();
    let config = Config::default();
    let mut t = lockstep(c, 4000, config);
    let mut answered = 0;
    let mut at = 0;
    // A forged RRQ every 100 ms for a minute, never an ACK.
    while t.outcome().is_none() && at < 60_000 {
        at += 100;
        t.handle_timeout(c.ms(at));
        t.handle_repeat(c.ms(at));
        while t.poll_transmit(c.ms(at)).is_some() {
            answered += 1;
        }
    }
    assert_eq!(
        t.outcome(),
        Some(Outcome::TimedOut),
        "kept alive for {at} ms"
    );
    assert!(
        answered <= config.retries + config.retries_unanswered,
        "{answered} replies drawn"
    );
}

#[test]
fn a_silent_window_is_resent_once_then_probed_with_one_block() {
    let c = Clock::new();
    let mut t = Transfer::new(
        c.ms(0),
        negotiated(b"windowsize\x0016\x00"),
        512 * 64,
        Config::default(),
    );
    assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
    t.handle_ack(c.ms(1), 0);
    assert_eq!(t.poll_transmit(c.ms(1)), blocks(1, 16, false));
    // Before any data is acknowledged, a silent window is only probed.
    let deadline = fire(&mut t);
    assert_eq!(
        drain(&mut t, deadline),
        [blocks(1, 1, true).unwrap(), blocks(16, 1, true).unwrap()]
    );
    let now = deadline + ms(1);
    t.handle_ack(now, 16);
    assert_eq!(t.poll_transmit(now), blocks(17, 16, false));
    // Afterwards the first timeout resends the window (RFC 7440 §4), later ones probe.
    let deadline = fire(&mut t);
    assert_eq!(drain(&mut t, deadline), [blocks(17, 16, true).unwrap()]);
    let deadline = fire(&mut t);
    assert_eq!(
        drain(&mut t, deadline),
        [blocks(17, 1, true).unwrap(), blocks(32, 1, true).unwrap()]
    );
    // The probe's answer slides the window as any ACK does.
    t.handle_ack(deadline + ms(1), 32);
    assert_eq!(t.poll_transmit(deadline + ms(1)), blocks(33, 16, false));
}

/// Found by fuzzing (fuzz/regressions/transfer_events/stale_probe_tail_after_ack): an ACK
/// that arrives before a probe is drained must drop the probe's second block.
#[test]
fn an_ack_drops_a_probe_not_yet_sent() {
    let c = Clock::new();
    let mut t = Transfer::new(
        c.ms(0),
        negotiated(b"windowsize\x008\x00"),
        10361,
        Config::default(),
    );
    t.handle_datagram(c.ms(0), &ack(0));
    drain(&mut t, c.ms(0));
    let at = fire(&mut t);
    t.handle_datagram(at, &ack(8));
    assert_eq!(drain(&mut t, at), [blocks(9, 8, false).unwrap()]);
}

#[test]
fn a_floor_above_the_ceiling_does_not_panic() {
    let config = Config {
        rto_min: ms(500),
        rto_max: ms(100),
        ..Config::default()
    };
    let mut rtt = RttEstimator::new(ms(10));
    rtt.sample(ms(1));
    assert_eq!(rtt.rto(&config), ms(100));
}

/// Drives one lock-step block against a client that answers the first copy of each DATA
/// `rtt` later, firing the timer whenever it comes due first, as a driver would. Returns the
/// time of the ACK and the retransmissions it took.
fn exchange(t: &mut Transfer, now: Instant, rtt: Duration) -> (Instant, u64) {
    let before = t.stats().retransmits;
    let sent = drain(t, now);
    assert!(matches!(sent[..], [Transmit::Blocks(_)]), "{sent:?}");
    let ack_at = now + rtt;
    while let Some(deadline) = t.poll_timeout() {
        if deadline >= ack_at {
            break;
        }
        t.handle_timeout(deadline);
        drain(t, deadline);
    }
    assert_eq!(t.outcome(), None);
    t.handle_datagram(ack_at, &ack(wire(t.acked() + 1)));
    (ack_at, t.stats().retransmits - before)
}

#[test]
fn adaptive_timeout_converges_to_the_measured_round_trip() {
    let c = Clock::new();
    // Unclamped, 5 ms round trips bring the RTO down towards SRTT + G = 6 ms.
    let config = Config {
        rto_min: ms(1),
        ..Config::default()
    };
    let mut t = lockstep(c, 512 * 1000, config);
    t.handle_datagram(c.ms(5), &ack(1));
    // The first sample: SRTT = 5 ms, RTTVAR = 2.5 ms.
    assert_eq!(t.rto(), ms(15));
    let mut now = c.ms(5);
    let mut last = t.rto();
    for _ in 0..60 {
        (now, _) = exchange(&mut t, now, ms(5));
        assert!(t.rto() <= last, "{:?} then {:?}", last, t.rto());
        last = t.rto();
    }
    assert!(t.rto() >= ms(6) && t.rto() < ms(7), "{:?}", t.rto());

    // With the default floor it sits at 20 ms.
    let mut t = lockstep(c, 512 * 1000, Config::default());
    t.handle_datagram(c.ms(5), &ack(1));
    assert_eq!(t.rto(), ms(20));
    let mut now = c.ms(5);
    for _ in 0..30 {
        (now, _) = exchange(&mut t, now, ms(5));
        assert_eq!(t.rto(), ms(20));
    }
    // The client slows down to 300 ms: the early timeouts back off until an ACK comes for
    // a block sent once, then the RTO follows the new round trip.
    let mut retransmits = Vec::new();
    for _ in 0..40 {
        let r;
        (now, r) = exchange(&mut t, now, ms(300));
        retransmits.push(r);
    }
    assert!(t.rto() > ms(300), "{:?} {retransmits:?}", t.rto());
    assert!(t.rto() < ms(400), "{:?}", t.rto());
    assert!(
        retransmits[5..].iter().all(|&r| r == 0),
        "the RTO never learnt the slower round trip: {retransmits:?}"
    );
    assert!(retransmits.iter().sum::<u64>() <= 6, "{retransmits:?}");
}

#[test]
fn karn_no_sample_from_a_retransmitted_block_and_the_backoff_is_kept() {
    let c = Clock::new();
    let mut t = lockstep(c, 512 * 10, Config::default());
    t.handle_datagram(c.ms(100), &ack(1));
    assert_eq!(t.rto(), ms(300));
    assert_eq!(t.poll_transmit(c.ms(100)), blocks(2, 1, false));
    assert_eq!(fire(&mut t), c.ms(400));
    assert_eq!(t.poll_transmit(c.ms(400)), blocks(2, 1, true));
    // Was that ACK for the first copy (350 ms) or the second (50 ms)? Neither counts.
    t.handle_datagram(c.ms(450), &ack(2));
    assert_eq!(t.rto(), ms(300), "no sample after a retransmission");
    // The backed-off timeout stays until a sample is taken (RFC 6298 §5.7).
    assert_eq!(t.poll_transmit(c.ms(450)), blocks(3, 1, false));
    assert_eq!(t.poll_timeout(), Some(c.ms(450 + 600)));
    // A clean 100 ms sample: SRTT 100, RTTVAR 37.5 → 250 ms, and the backoff collapses.
    t.handle_datagram(c.ms(550), &ack(3));
    assert_eq!(t.rto(), ms(250));
    assert_eq!(t.poll_transmit(c.ms(550)), blocks(4, 1, false));
    assert_eq!(t.poll_timeout(), Some(c.ms(550 + 250)));
}

#[test]
fn karn_only_blocks_sent_once_give_a_sample_in_a_partly_resent_window() {
    let c = Clock::new();
    let mut t = Transfer::new(
        c.ms(0),
        negotiated(b"windowsize\x004\x00"),
        512 * 40,
        Config::default(),
    );
    assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
    // ACK 0 for the first OACK: a 100 ms sample, RTO 300 ms.
    t.handle_datagram(c.ms(100), &ack(0));
    assert_eq!(t.rto(), ms(300));
    assert_eq!(t.poll_transmit(c.ms(100)), blocks(1, 4, false));
    // Block 3 lost: the ACK of 2 is a sample for blocks sent once (40 ms).
    t.handle_datagram(c.ms(140), &ack(2));
    let rto = t.rto();
    assert_ne!(rto, ms(300));
    // Blocks 3 and 4 go again with 5 and 6 new.
    assert_eq!(t.poll_transmit(c.ms(140)), blocks(3, 4, false));
    assert_eq!(t.stats().retransmits, 2);
    // The ACK of 4, sent twice, says nothing. It comes while the resent window is on its
    // way: only 7 and 8, new, go out (one window resent per round trip).
    t.handle_datagram(c.ms(150), &ack(4));
    assert_eq!(t.rto(), rto);
    assert_eq!(t.poll_transmit(c.ms(150)), blocks(7, 2, false));
    assert_eq!(t.stats().retransmits, 2);
    // The ACK of 6 answers blocks of a run before the last: no sample (Karn's rule is kept
    // for the last run only). It reaches the end of the resent window, so the next window
    // goes: 7 and 8 a second time, 9 and 10 a first.
    t.handle_datagram(c.ms(160), &ack(6));
    assert_eq!(t.rto(), rto);
    assert_eq!(t.poll_transmit(c.ms(160)), blocks(7, 4, false));
    // The ACK of 10, sent once, is a sample.
    t.handle_datagram(c.ms(200), &ack(10));
    assert_ne!(t.rto(), rto);
}

/// A lock-step transfer whose first round trip took 10 ms (SRTT 10, RTTVAR 5, RTO 30 ms, the
/// least round trip 10 ms), and whose DATA 2, sent at 10 ms, was retransmitted at 40 ms.
fn retransmitted_after_a_10_ms_round_trip(c: Clock) -> Transfer {
    let mut t = lockstep(c, 512 * 10, Config::default());
    t.handle_datagram(c.ms(10), &ack(1));
    assert_eq!(t.rto(), ms(30));
    assert_eq!(t.poll_transmit(c.ms(10)), blocks(2, 1, false));
    assert_eq!(fire(&mut t), c.ms(40));
    assert_eq!(t.poll_transmit(c.ms(40)), blocks(2, 1, true));
    t
}

#[test]
fn a_spurious_timeout_is_undone_and_the_rto_learns_the_slow_round_trip() {
    let c = Clock::new();
    let mut t = retransmitted_after_a_10_ms_round_trip(c);
    // ACK 2, 1 ms after the retransmission, far sooner than the 5 ms (half the least round
    // trip) the client needs to answer it: it answers DATA 2 sent at 10 ms, 31 ms ago.
    t.handle_datagram(c.ms(41), &ack(2));
    assert_eq!((t.stats().spurious, t.stats().retransmits), (1, 1));
    // The sample: SRTT (7 * 10 + 31) / 8 = 12.625, RTTVAR (3 * 5 + 21) / 4 = 9 → 48.625 ms,
    // more than the round trip that fooled the timer.
    let rto = Duration::from_micros(48_625);
    assert_eq!(t.rto(), rto);
    assert!(t.rto() >= ms(31));
    // The backoff is undone: DATA 3 waits one RTO, not two (nor two of the old 30 ms).
    assert_eq!(t.poll_transmit(c.ms(41)), blocks(3, 1, false));
    assert_eq!(t.poll_timeout(), Some(c.ms(41) + rto));
    // The client's ACK of the duplicate DATA 2 is a duplicate: nothing is sent or rearmed.
    t.handle_datagram(c.ms(51), &ack(2));
    assert_eq!(t.poll_transmit(c.ms(51)), None);
    assert_eq!(t.poll_timeout(), Some(c.ms(41) + rto));
    assert_eq!(t.stats().spurious, 1);
}

#[test]
fn a_genuine_loss_is_not_taken_for_a_spurious_timeout() {
    let c = Clock::new();
    let t = retransmitted_after_a_10_ms_round_trip(c);
    // ACK 2 a whole round trip after the retransmission (it answers it), or exactly half
    // the least round trip after: Karn's rule stands, no sample and the backoff is kept.
    for at in [50, 45] {
        let mut t = t.clone();
        t.handle_datagram(c.ms(at), &ack(2));
        assert_eq!(t.stats().spurious, 0, "ACK at {at} ms");
        assert_eq!(t.rto(), ms(30), "ACK at {at} ms");
        assert_eq!(t.poll_transmit(c.ms(at)), blocks(3, 1, false));
        assert_eq!(t.poll_timeout(), Some(c.ms(at + 60)), "ACK at {at} ms");
    }
    // Just under half: spurious.
    let mut t = t.clone();
    t.handle_datagram(c.ms(45) - Duration::from_micros(1), &ack(2));
    assert_eq!(t.stats().spurious, 1);

    // Before any sample nothing bounds how fast the client answers: even an ACK at the
    // very moment of the retransmission may answer it.
    let mut t = lockstep(c, 512 * 10, Config::default());
    assert_eq!(fire(&mut t), c.ms(1000));
    assert_eq!(t.poll_transmit(c.ms(1000)), blocks(1, 1, true));
    t.handle_datagram(c.ms(1000), &ack(1));
    assert_eq!(t.stats().spurious, 0);
    assert_eq!(t.rto(), ms(1000));
    assert_eq!(t.poll_transmit(c.ms(1000)), blocks(2, 1, false));
    assert_eq!(t.poll_timeout(), Some(c.ms(3000)));
}

#[test]
fn a_saturated_server_learns_its_lag_from_one_spurious_timeout_and_never_backs_off() {
    let c = Clock::new();
    let mut t = lockstep(c, 512 * 100, Config::default());
    // A quiet start: a 5 ms round trip, RTO 20 ms (the floor).
    t.handle_datagram(c.ms(5), &ack(1));
    assert_eq!(t.rto(), ms(20));
    let mut now = c.ms(5);
    let mut retransmits = Vec::new();
    // Then the server falls `lag` behind: it gets to its timer and the client's (prompt)
    // ACK only `lag` after each send, the timer first, the ACK 1 ms later.
    for lag in [200, 200, 200, 200, 200, 1000, 1000, 1000, 1000, 1000] {
        let before = t.stats().retransmits;
        assert!(matches!(drain(&mut t, now)[..], [Transmit::Blocks(_)]));
        let busy = now + ms(lag);
        t.handle_timeout(busy);
        drain(&mut t, busy);
        now = busy + ms(1);
        t.handle_datagram(now, &ack(wire(t.acked() + 1)));
        retransmits.push(t.stats().retransmits - before);
        // Never a backoff to escalate, and the RTO covers the round trip it has seen.
        assert_eq!(t.backoff, 0, "{retransmits:?}");
        assert!(t.rto() >= ms(lag + 1), "{:?} {retransmits:?}", t.rto());
    }
    // One spurious retransmission each time the lag grows, none once it is learnt. (Karn's
    // rule alone kept the backoff and resent blocks 2 to 5: 40, 80, 160 ms were all short.)
    assert_eq!(retransmits, [1, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(t.stats().spurious, 2);
}

#[test]
fn a_spurious_timeout_of_a_window_is_undone() {
    let c = Clock::new();
    let mut t = Transfer::new(
        c.ms(0),
        negotiated(b"windowsize\x004\x00"),
        512 * 40,
        Config::default(),
    );
    assert_eq!(t.poll_transmit(c.ms(0)), Some(Transmit::Oack));
    t.handle_datagram(c.ms(10), &ack(0));
    assert_eq!(t.poll_transmit(c.ms(10)), blocks(1, 4, false));
    // Two 10 ms samples: SRTT 10, RTTVAR 3.75, RTO 25 ms.
    t.handle_datagram(c.ms(20), &ack(4));
    assert_eq!(t.rto(), ms(25));
    assert_eq!(t.poll_transmit(c.ms(20)), blocks(5, 4, false));
    assert_eq!(fire(&mut t), c.ms(45));
    assert_eq!(t.poll_transmit(c.ms(45)), blocks(5, 4, true));
    assert_eq!(t.stats().retransmits, 4);
    // The ACK of the whole original window, 1 ms after the window went again.
    t.handle_datagram(c.ms(46), &ack(8));
    assert_eq!(t.stats().spurious, 1);
    // A 26 ms sample: SRTT (7 * 10 + 26) / 8 = 12, RTTVAR (3 * 3.75 + 16) / 4 = 6.8125,
    // RTO 39.25 ms, and no backoff.
    let rto = Duration::from_micros(39_250);
    assert_eq!(t.rto(), rto);
    assert_eq!(t.poll_transmit(c.ms(46)), blocks(9, 4, false));
    assert_eq!(t.poll_timeout(), Some(c.ms(46) + rto));
    // The client's ACK of the duplicate window changes nothing.
    t.handle_datagram(c.ms(48), &ack(8));
    assert_eq!(t.poll_transmit(c.ms(48)), None);
    assert_eq!(t.poll_timeout(), Some(c.ms(46) + rto));

    // Block 11 lost: the ACK of 10 slides the window, resending 11 and 12 with 13 and 14
    // new (a 4 ms sample: the least round trip is now 4 ms).
    t.handle_datagram(c.ms(50), &ack(10));
    assert_eq!(t.poll_transmit(c.ms(50)), blocks(11, 4, false));
    let at = fire(&mut t);
    assert_eq!(t.poll_transmit(at), blocks(11, 4, true));
    let rto = t.rto();
    // ACK 14 1 ms later answers the run sent at 50 ms, where 14 went first: spurious.
    let mut whole = t.clone();
    whole.handle_datagram(at + ms(1), &ack(14));
    assert_eq!(whole.stats().spurious, 2);
    assert_ne!(whole.rto(), rto);
    // ACK 12 as soon: 12 also went in the window sent at 46 ms, and either copy may have
    // drawn it. No sample, and the timeout stands.
    t.handle_datagram(at + ms(1), &ack(12));
    assert_eq!(t.stats().spurious, 1);
    assert_eq!(t.rto(), rto);
    assert_eq!(t.poll_transmit(at + ms(1)), blocks(13, 4, false));
    assert_eq!(t.poll_timeout(), Some(at + ms(1) + rto * 2));
}

#[test]
fn handle_sent_times_the_flight_from_when_it_left() {
    let c = Clock::new();
    let mut t = lockstep(c, 512 * 10, Config::default());
    assert_eq!(t.poll_timeout(), Some(c.ms(1000)));
    // DATA 1, polled at 0 ms, left in a batch at 3 ms: the timer moves with it.
    t.handle_sent(c.ms(3));
    assert_eq!(t.poll_timeout(), Some(c.ms(1003)));
    // Not later than the stamp: nothing changes.
    t.handle_sent(c.ms(2));
    t.handle_sent(c.ms(3));
    assert_eq!(t.poll_timeout(), Some(c.ms(1003)));
    // The round trip counts from 3 ms: a 10 ms sample, RTO 30 ms (13 ms would give 39).
    t.handle_datagram(c.ms(13), &ack(1));
    assert_eq!(t.rto(), ms(30));
    // Nothing in flight until DATA 2 is polled.
    t.handle_sent(c.ms(14));
    assert_eq!(t.poll_timeout(), None);
    assert_eq!(t.poll_transmit(c.ms(14)), blocks(2, 1, false));
    assert_eq!(t.poll_timeout(), Some(c.ms(44)));
    // A retransmission polled at 44 ms leaves at 50 ms: its timer (backed off to 60 ms)
    // moves, and ACK 2 at 51 ms is 1 ms after it left (7 ms after it was polled, which
    // would not prove the timeout spurious). The original DATA 2 keeps its time: a 37 ms
    // sample, SRTT 13.375, RTTVAR 10.5, RTO 55.375 ms.
    assert_eq!(fire(&mut t), c.ms(44));
    assert_eq!(t.poll_transmit(c.ms(44)), blocks(2, 1, true));
    assert_eq!(t.poll_timeout(), Some(c.ms(104)));
    let mut unsent = t.clone();
    t.handle_sent(c.ms(50));
    assert_eq!(t.poll_timeout(), Some(c.ms(110)));
    t.handle_datagram(c.ms(51), &ack(2));
    assert_eq!(t.stats().spurious, 1);
    assert_eq!(t.rto(), Duration::from_micros(55_375));
    unsent.handle_datagram(c.ms(51), &ack(2));
    assert_eq!(unsent.stats().spurious, 0);
    // Once ended, nothing moves.
    assert_eq!(t.poll_transmit(c.ms(51)), blocks(3, 1, false));
    t.handle_datagram(c.ms(52), &error(0, "bye"));
    t.handle_sent(c.ms(60));
    assert_ended(&mut t, c.ms(60), Outcome::Cancelled(ErrorCode::Undefined));
    assert_eq!(t.stats().ended, Some(c.ms(52)));
}
