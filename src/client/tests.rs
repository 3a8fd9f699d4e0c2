//! The client fed byte literals on a fake clock.

use super::*;

fn config() -> Config {
    Config {
        retries: 3,
        ..Config::default()
    }
}

/// A client with a clock, fed byte literals; the payloads it delivers are collected.
struct Harness {
    client: Client,
    now: Instant,
    file: Vec<u8>,
}

impl Harness {
    fn new(config: Config) -> Self {
        let now = Instant::now();
        let mut client = Client::new(config, now);
        assert_eq!(client.poll_transmit(), Some(Transmit::Rrq));
        Self {
            client,
            now,
            file: Vec::new(),
        }
    }

    fn feed(&mut self, datagram: &[u8]) -> Option<Transmit> {
        if let Some(data) = self.client.handle_datagram(self.now, datagram) {
            self.file.extend_from_slice(data);
        }
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
        self.client.handle_timeout(self.now);
        self.client.poll_transmit()
    }
}

fn rrq(filename: &str, config: &Config) -> Vec<u8> {
    let mut buf = [0; 600];
    let n = config.emit_rrq(filename, &mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn rrq_carries_the_options_asked_for() {
    let mut c = config();
    c.ask = Ask {
        blksize: Some(1468),
        windowsize: Some(16),
        tsize: true,
        timeout: Some(Duration::from_millis(1500)),
        msftwindow: true,
    };
    assert_eq!(
        rrq("pxelinux.0", &c),
        b"\x00\x01pxelinux.0\x00octet\x00blksize\x001468\x00tsize\x000\x00timeout\x001.5\x00windowsize\x0016\x00msftwindow\x0031416\x00"
    );
    assert_eq!(rrq("f", &config()), b"\x00\x01f\x00octet\x00");
    c.mode = Mode::Netascii;
    assert_eq!(
        rrq(
            "f",
            &Config {
                ask: Ask::default(),
                ..c
            }
        ),
        b"\x00\x01f\x00netascii\x00"
    );
    assert_eq!(config().emit_rrq("f", &mut [0; 8]), Err(BufferTooSmall));
}

#[test]
fn lock_step_acks_every_block_and_ends_on_a_short_one() {
    let file: Vec<u8> = (0..1200u32).map(|i| i as u8).collect();
    let mut h = Harness::new(config());
    assert_eq!(h.data(1, &file[..512]), Some(Transmit::Ack(1)));
    assert_eq!(h.data(2, &file[512..1024]), Some(Transmit::Ack(2)));
    assert_eq!(h.client.outcome(), None);
    assert_eq!(h.data(3, &file[1024..]), Some(Transmit::Ack(3)));
    assert_eq!(h.client.outcome(), Some(Outcome::Complete));
    assert_eq!(h.file, file);
    assert_eq!((h.client.bytes(), h.client.blocks()), (1200, 3));
    assert_eq!(h.client.poll_timeout(), None);
    assert!(!h.client.stats().options_ignored);
}

#[test]
fn an_exact_multiple_ends_with_an_empty_block() {
    let mut h = Harness::new(config());
    h.data(1, &[7; 512]);
    h.data(2, &[7; 512]);
    assert_eq!(h.client.outcome(), None);
    assert_eq!(h.data(3, b""), Some(Transmit::Ack(3)));
    assert_eq!(h.client.outcome(), Some(Outcome::Complete));
    assert_eq!(h.file, [7; 1024]);
}

#[test]
fn a_repeated_final_block_is_acknowledged_again_while_dallying() {
    let mut h = Harness::new(config());
    assert_eq!(h.data(1, b"end"), Some(Transmit::Ack(1)));
    assert_eq!(h.client.outcome(), Some(Outcome::Complete));
    assert_eq!(h.data(1, b"end"), Some(Transmit::Ack(1)));
    // Nothing else is answered, and nothing more is delivered.
    assert_eq!(h.data(2, b"x"), None);
    assert_eq!(h.file, b"end");
    assert_eq!(h.client.stats().reacks, 1);
}

#[test]
fn the_oack_is_checked_and_answered_with_ack_0() {
    let mut c = config();
    c.ask = Ask {
        blksize: Some(1468),
        windowsize: Some(4),
        tsize: true,
        timeout: None,
        msftwindow: false,
    };
    let mut h = Harness::new(c);
    assert_eq!(
        h.feed(b"\x00\x06blksize\x001024\x00tsize\x002048\x00windowsize\x002\x00"),
        Some(Transmit::Ack(0))
    );
    let opts = h.client.options();
    assert_eq!((opts.blksize().get(), opts.windowsize().get()), (1024, 2));
    assert_eq!(opts.tsize(), Some(2048));
    assert!(h.client.oacked());
    // A repeated OACK means our ACK 0 went missing: answer it again.
    assert_eq!(
        h.feed(b"\x00\x06blksize\x001024\x00"),
        Some(Transmit::Ack(0))
    );
    assert_eq!(h.data(1, &[0; 1024]), None);
    // Once DATA flows, a late copy of the OACK is ignored.
    assert_eq!(h.feed(b"\x00\x06blksize\x001024\x00"), None);
    assert_eq!(h.client.outcome(), None);
    assert_eq!(h.data(2, &[0; 1024]), Some(Transmit::Ack(2)));
    assert_eq!(h.data(3, b""), Some(Transmit::Ack(3)));
    assert_eq!(h.client.outcome(), Some(Outcome::Complete));

    for (oack, why) in [
        (
            &b"\x00\x06blksize\x002000\x00"[..],
            "OACK blksize outside 8..=asked",
        ),
        (
            b"\x00\x06blksize\x007\x00",
            "OACK blksize outside 8..=asked",
        ),
        (
            b"\x00\x06windowsize\x008\x00",
            "OACK windowsize outside 1..=asked",
        ),
        (b"\x00\x06timeout\x001\x00", "OACK timeout not asked for"),
        (
            b"\x00\x06foo\x00bar\x00",
            "OACK with an option not asked for",
        ),
        (b"\x00\x06tsize\x00x\x00", "OACK tsize not a number"),
    ] {
        let mut h = Harness::new(c);
        assert_eq!(h.feed(oack), None);
        assert_eq!(h.client.outcome(), Some(Outcome::Protocol(why)));
    }
}

#[test]
fn the_timeout_option_must_be_echoed() {
    let mut c = config();
    c.ask.timeout = Some(Duration::from_secs(2));
    let mut h = Harness::new(c);
    assert_eq!(h.feed(b"\x00\x06timeout\x002\x00"), Some(Transmit::Ack(0)));
    assert_eq!(h.client.options().timeout(), Some(Duration::from_secs(2)));
    let mut h = Harness::new(c);
    h.feed(b"\x00\x06timeout\x003\x00");
    assert_eq!(
        h.client.outcome(),
        Some(Outcome::Protocol(
            "OACK timeout differs from the one asked for"
        ))
    );
}

#[test]
fn a_size_other_than_tsize_fails() {
    let mut c = config();
    c.ask.tsize = true;
    let mut h = Harness::new(c);
    h.feed(b"\x00\x06tsize\x00600\x00");
    h.data(1, &[1; 512]);
    h.data(2, &[1; 10]);
    assert_eq!(h.client.outcome(), Some(Outcome::Size));
}

#[test]
fn a_server_ignoring_options_means_the_defaults() {
    let mut c = config();
    c.ask.blksize = Some(1468);
    let mut h = Harness::new(c);
    assert_eq!(h.data(1, &[0; 512]), Some(Transmit::Ack(1)));
    assert_eq!(h.client.options().blksize().get(), 512);
    assert!(h.client.stats().options_ignored);
    assert!(!h.client.oacked());
    // A block longer than the block size in force is a protocol error.
    assert_eq!(h.data(2, &[0; 600]), None);
    assert_eq!(
        h.client.outcome(),
        Some(Outcome::Protocol("DATA longer than blksize"))
    );
}

#[test]
fn a_window_is_acked_when_full_and_a_gap_once_per_burst() {
    let mut c = config();
    c.ask.blksize = Some(8);
    c.ask.windowsize = Some(4);
    let mut h = Harness::new(c);
    h.feed(b"\x00\x06blksize\x008\x00windowsize\x004\x00");
    let b = [0u8; 8];
    assert_eq!(h.data(1, &b), None);
    assert_eq!(h.data(2, &b), None);
    assert_eq!(h.data(3, &b), None);
    assert_eq!(h.data(4, &b), Some(Transmit::Ack(4)));
    // Block 6 is lost: 7 reveals the gap and draws one ACK of 5; 8 belongs to the same burst.
    assert_eq!(h.data(5, &b), None);
    assert_eq!(h.data(7, &b), Some(Transmit::Ack(5)));
    assert_eq!(h.data(8, &b), None);
    // The server goes back to 6 and sends a full window from there.
    assert_eq!(h.data(6, &b), None);
    assert_eq!(h.data(7, &b), None);
    assert_eq!(h.data(8, &b), None);
    assert_eq!(h.data(9, &b), Some(Transmit::Ack(9)));
    // Our ACK 9 was lost: the server sends 6..=9 again. One ACK for the burst, not four.
    assert_eq!(h.data(6, &b), Some(Transmit::Ack(9)));
    assert_eq!(h.data(7, &b), None);
    assert_eq!(h.data(8, &b), None);
    assert_eq!(h.data(9, &b), None);
    // Its timer fires again, another burst: another single ACK.
    assert_eq!(h.data(6, &b), Some(Transmit::Ack(9)));
    let stats = h.client.stats();
    assert_eq!((stats.reacks, stats.stray_blocks), (3, 7));
    // The last block ends the read mid-window; only blocks in sequence were delivered.
    assert_eq!(h.data(10, b"end"), Some(Transmit::Ack(10)));
    assert_eq!(h.client.outcome(), Some(Outcome::Complete));
    assert_eq!(h.client.bytes(), 9 * 8 + 3);
    assert_eq!(h.file.len(), 9 * 8 + 3);
}

#[test]
fn a_lock_step_duplicate_is_acked_each_time() {
    let mut h = Harness::new(config());
    assert_eq!(h.data(1, &[0; 512]), Some(Transmit::Ack(1)));
    // Each repeat is a separate server timeout, hence a separate burst.
    assert_eq!(h.data(1, &[0; 512]), Some(Transmit::Ack(1)));
    assert_eq!(h.data(1, &[0; 512]), Some(Transmit::Ack(1)));
    assert_eq!(h.client.stats().reacks, 2);
    assert_eq!(h.file.len(), 512);
}

#[test]
fn the_timer_resends_then_gives_up() {
    let mut h = Harness::new(config());
    let second = Duration::from_secs(1);
    assert_eq!(h.advance(Duration::from_millis(999)), None);
    assert_eq!(h.advance(Duration::from_millis(1)), Some(Transmit::Rrq));
    assert_eq!(h.data(1, &[0; 512]), Some(Transmit::Ack(1)));
    assert_eq!(h.client.poll_timeout(), Some(h.now + second));
    // Progress gave the retries back: three re-sends of ACK 1, then failure.
    for _ in 0..3 {
        assert_eq!(h.advance(second), Some(Transmit::Ack(1)));
    }
    assert_eq!(h.client.outcome(), None);
    assert_eq!(h.advance(second), None);
    assert_eq!(h.client.outcome(), Some(Outcome::TimedOut));
    assert_eq!(h.client.stats().retransmits, 4);
    assert_eq!(h.client.finished(), Some(h.now));
    assert_eq!(h.client.poll_timeout(), None);
}

#[test]
fn the_timer_acks_a_window_cut_short() {
    let mut c = config();
    c.ask.windowsize = Some(8);
    let mut h = Harness::new(c);
    h.feed(b"\x00\x06windowsize\x008\x00");
    h.data(1, &[0; 512]);
    h.data(2, &[0; 512]);
    assert_eq!(h.advance(Duration::from_secs(1)), Some(Transmit::Ack(2)));
    // The window restarts from the ACK: 8 more blocks before the next one.
    for block in 3..10 {
        assert_eq!(h.data(block, &[0; 512]), None);
    }
    assert_eq!(h.data(10, &[0; 512]), Some(Transmit::Ack(10)));
}

#[test]
fn only_an_oack_data_1_or_an_error_can_be_a_first_reply() {
    assert!(Client::is_first_reply(b"\x00\x06blksize\x001468\x00"));
    assert!(Client::is_first_reply(b"\x00\x03\x00\x01abc"));
    assert!(Client::is_first_reply(b"\x00\x05\x00\x00busy\x00"));
    assert!(!Client::is_first_reply(b"\x00\x03\x02\xc9abc"));
    assert!(!Client::is_first_reply(b"\x00\x04\x00\x01"));
    assert!(!Client::is_first_reply(b"\x00"));
}

#[test]
fn an_error_ends_the_read_with_its_code() {
    let mut h = Harness::new(config());
    assert_eq!(h.feed(b"\x00\x05\x00\x01File not found\x00"), None);
    assert_eq!(
        h.client.outcome(),
        Some(Outcome::Error(ErrorCode::FileNotFound))
    );
    // Nothing happens after the end.
    assert_eq!(h.data(1, b"x"), None);
    assert_eq!(h.advance(Duration::from_secs(9)), None);
    assert!(h.file.is_empty());
}

#[test]
fn garbage_and_wrong_opcodes_are_protocol_failures() {
    let mut h = Harness::new(config());
    h.feed(b"\x00");
    assert_eq!(
        h.client.outcome(),
        Some(Outcome::Protocol("malformed packet"))
    );
    let mut h = Harness::new(config());
    h.feed(b"\x00\x04\x00\x01");
    assert_eq!(
        h.client.outcome(),
        Some(Outcome::Protocol("unexpected opcode"))
    );
    let mut h = Harness::new(config());
    h.data(1, &[0; 512]);
    h.feed(b"\x00\x06blksize\x00512\x00");
    assert_eq!(
        h.client.outcome(),
        Some(Outcome::Protocol("OACK after DATA"))
    );
}

#[test]
fn abort_ends_the_read_once() {
    let mut h = Harness::new(config());
    h.client.abort(h.now, Outcome::TimedOut);
    h.client.abort(h.now, Outcome::Size);
    assert_eq!(h.client.outcome(), Some(Outcome::TimedOut));
}

#[test]
fn block_numbers_roll_over_past_65535() {
    // 70 000 blocks of 8 bytes: the block after 65535 is 0.
    let mut c = config();
    c.ask.blksize = Some(8);
    let file: Vec<u8> = (0..70_000u32 * 8 + 3).map(|i| (i % 251) as u8).collect();
    let mut h = Harness::new(c);
    h.feed(b"\x00\x06blksize\x008\x00");
    for (i, chunk) in file.chunks(8).enumerate() {
        let block = (i + 1) as u16;
        assert_eq!(
            h.data(block, chunk),
            Some(Transmit::Ack(block)),
            "block {i}"
        );
    }
    assert_eq!(h.client.outcome(), Some(Outcome::Complete));
    assert_eq!(h.file, file);
}

/// `msftwindow`: every ACK says the next window; it doubles after a whole window and halves at
/// a gap.
#[test]
fn msftwindow_acks_carry_a_window_that_grows_and_shrinks() {
    let mut c = config();
    c.ask = Ask {
        blksize: Some(8),
        windowsize: Some(2),
        msftwindow: true,
        ..Ask::default()
    };
    let mut h = Harness::new(c);
    let ack_bytes = |h: &Harness, block: u16| {
        let mut buf = [0; 5];
        let n = h.client.emit_ack(block, &mut buf);
        buf[..n].to_vec()
    };
    assert_eq!(
        h.feed(b"\x00\x06blksize\x008\x00windowsize\x002\x00msftwindow\x0027182\x00"),
        Some(Transmit::Ack(0))
    );
    assert_eq!(ack_bytes(&h, 0), [0, 4, 0, 0, 2]);
    h.data(1, &[1; 8]);
    assert_eq!(h.data(2, &[2; 8]), Some(Transmit::Ack(2)));
    assert_eq!(
        ack_bytes(&h, 2),
        [0, 4, 0, 2, 4],
        "doubled after a whole window"
    );
    h.data(3, &[3; 8]);
    // Block 4 lost: 5 is out of sequence.
    assert_eq!(h.data(5, &[5; 8]), Some(Transmit::Ack(3)));
    assert_eq!(ack_bytes(&h, 3), [0, 4, 0, 3, 2], "halved at the gap");
    // A server that did not grant it: plain 4-byte ACKs.
    let mut h = Harness::new(c);
    assert_eq!(
        h.feed(b"\x00\x06blksize\x008\x00windowsize\x002\x00"),
        Some(Transmit::Ack(0))
    );
    assert_eq!(ack_bytes(&h, 0), [0, 4, 0, 0]);
    // Granted without being asked: refused.
    let mut h = Harness::new(config());
    h.feed(b"\x00\x06msftwindow\x0027182\x00");
    assert!(matches!(h.client.outcome(), Some(Outcome::Protocol(_))));
}
