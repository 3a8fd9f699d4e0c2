//! Micro-benchmarks of the sans-IO core: the figures behind "no per-packet cost worth a syscall".
//!
//! Run them all (about a minute on two cores) with:
//!
//! ```text
//! cargo bench --bench core
//! ```
//!
//! or one group with a filter, e.g. `cargo bench --bench core -- netascii`.
//!
//! Groups:
//!
//! - `packet`: nanoseconds per packet (`thrpt` in packets/s) for [`Packet::parse`] and
//!   [`Packet::emit`] of the three packets of a typical UEFI boot: an RRQ with edk2's options
//!   (`tsize 0 blksize 1468 windowsize 4`), a DATA block of 1468 bytes and an ACK; the 4-byte
//!   header the data path writes before each block ([`emit_data_header`]); and the option
//!   negotiation for the edk2 request ([`Negotiated::negotiate`], then [`Negotiated::emit_oack`]).
//! - `netascii`: MB/s of source bytes for [`Encoder::encode`] cutting 1 MiB into 1468-byte DATA
//!   blocks, over text-like data (lines of about 60 characters) and binary-like data
//!   (pseudo-random bytes, so CR and LF are rarer and scattered), and for [`encoded_len`], the
//!   pass over a netascii file that answers `tsize`.
//! - `transfer`: state-machine steps per second (`thrpt` in elements/s). A step is one
//!   [`Transfer::poll_transmit`] and the client's [`Transfer::handle_ack`] for the last block it
//!   returned (ACK 0 for the OACK); one iteration is a whole 1 MiB transfer at blksize 1468
//!   (715 blocks), lock-step (716 steps) and with windowsize 16 (46 steps), on a fake clock
//!   (one `Instant` captured at start-up plus offsets), so no clock is read while measuring.
//!
//! Each benchmark warms up for 0.5 s and measures for 2 s; raise `--measurement-time` on the
//! command line for tighter intervals.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ringtftp::netascii::{encoded_len, Encoder};
use ringtftp::options::{Limits, Negotiated};
use ringtftp::packet::{emit_data_header, Mode, Options, Packet, Request, DATA_HEADER_LEN};
use ringtftp::transfer::{Config, Outcome, Transfer, Transmit};

/// The block size edk2 (UEFI PXE) asks for: an Ethernet frame less the IP, UDP and TFTP headers
/// and some slack.
const BLKSIZE: usize = 1468;
/// The size of the source in the netascii and transfer groups.
const MIB: usize = 1 << 20;
/// A datagram buffer large enough for any packet benchmarked here.
const BUF_LEN: usize = 2048;

fn packet(c: &mut Criterion) {
    let mut g = c.benchmark_group("packet");
    g.throughput(Throughput::Elements(1));

    let rrq = edk2_rrq();
    let payload = text_like(BLKSIZE);
    let data = emit_vec(&Packet::Data {
        block: 0x1234,
        data: &payload,
    });
    let ack = emit_vec(&Packet::Ack { block: 0x1234 });

    for (name, datagram) in [("rrq_edk2", &rrq), ("data_1468", &data), ("ack", &ack)] {
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| Packet::parse(black_box(datagram)))
        });
    }

    let mut buf = [0u8; BUF_LEN];
    for (name, datagram) in [("rrq_edk2", &rrq), ("data_1468", &data), ("ack", &ack)] {
        let packet = Packet::parse(datagram).expect("the benchmark's packets are well formed");
        g.bench_function(format!("emit/{name}"), |b| {
            b.iter(|| black_box(&packet).emit(black_box(&mut buf)))
        });
    }

    let mut header = [0u8; DATA_HEADER_LEN];
    g.bench_function("emit_data_header", |b| {
        b.iter(|| emit_data_header(black_box(0x1234), black_box(&mut header)))
    });

    let Ok(Packet::Rrq(request)) = Packet::parse(&rrq) else {
        unreachable!("edk2_rrq builds an RRQ");
    };
    let limits = Limits::default();
    let size = MIB as u64;
    g.bench_function("negotiate/edk2", |b| {
        b.iter(|| Negotiated::negotiate(black_box(&request.options), &limits, || Some(size)))
    });
    let negotiated = Negotiated::negotiate(&request.options, &limits, || Some(size))
        .expect("edk2's options are legal");
    g.bench_function("emit_oack/edk2", |b| {
        b.iter(|| black_box(&negotiated).emit_oack(black_box(&mut buf)))
    });
    g.finish();
}

fn netascii(c: &mut Criterion) {
    let mut g = c.benchmark_group("netascii");
    g.throughput(Throughput::Bytes(MIB as u64));
    let text = text_like(MIB);
    let binary = binary_like(MIB);

    for (name, source) in [("text", &text), ("binary", &binary)] {
        let mut block = [0u8; BLKSIZE];
        g.bench_function(format!("encode_1468/{name}"), |b| {
            b.iter(|| encode_blocks(black_box(source), &mut block))
        });
    }
    for (name, source) in [("text", &text), ("binary", &binary)] {
        g.bench_function(format!("encoded_len/{name}"), |b| {
            b.iter(|| encoded_len(black_box(source)))
        });
    }
    g.finish();
}

fn transfer(c: &mut Criterion) {
    let mut g = c.benchmark_group("transfer");
    // The only clock read: every `now` below is this plus an offset.
    let start = Instant::now();
    let limits = Limits::default();
    let cases: [(&str, &[u8]); 2] = [
        ("lockstep_1mib", b"tsize\x000\x00blksize\x001468\x00"),
        (
            "window16_1mib",
            b"tsize\x000\x00blksize\x001468\x00windowsize\x0016\x00",
        ),
    ];
    for (name, raw) in cases {
        let opts = Negotiated::negotiate(&Options::parse(raw), &limits, || Some(MIB as u64))
            .expect("the benchmark's options are legal");
        let fresh = Transfer::new(start, opts, MIB as u64, Config::default());
        // Count the steps once (and check the drive completes) to state the throughput.
        let steps = drive(fresh.clone(), start);
        g.throughput(Throughput::Elements(steps));
        g.bench_function(name, |b| {
            b.iter_batched(|| fresh.clone(), |t| drive(t, start), BatchSize::SmallInput)
        });
    }
    g.finish();
}

/// Runs `t` to completion as a loss-free client would, acknowledging the last block of each run
/// 50 µs after it was sent; returns the number of steps.
fn drive(mut t: Transfer, start: Instant) -> u64 {
    const RTT: Duration = Duration::from_micros(50);
    let mut now = start;
    let mut steps = 0;
    while let Some(transmit) = t.poll_transmit(now) {
        let block = match black_box(transmit) {
            Transmit::Oack => 0,
            Transmit::Blocks(run) => Transfer::wire_block(run.first + u64::from(run.count) - 1),
            Transmit::Error { message, .. } => panic!("the transfer failed: {message}"),
        };
        now += RTT;
        t.handle_ack(now, block);
        steps += 1;
    }
    assert_eq!(t.outcome(), Some(Outcome::Complete));
    steps
}

/// Encodes all of `source` into consecutive `block`s, as a netascii transfer reads its file;
/// returns the encoded length.
fn encode_blocks(source: &[u8], block: &mut [u8]) -> usize {
    let mut encoder = Encoder::new();
    let mut rest = source;
    let mut total = 0;
    loop {
        let (consumed, written) = encoder.encode(rest, block);
        black_box(&block[..written]);
        rest = &rest[consumed..];
        total += written;
        if written < block.len() && rest.is_empty() && encoder.is_idle() {
            return total;
        }
    }
}

/// edk2's RRQ for a UEFI boot loader, options in the order edk2 sends them.
fn edk2_rrq() -> Vec<u8> {
    emit_vec(&Packet::Rrq(Request {
        filename: "EFI/BOOT/BOOTX64.EFI",
        mode: Mode::Octet,
        options: Options::parse(b"tsize\x000\x00blksize\x001468\x00windowsize\x004\x00"),
    }))
}

fn emit_vec(packet: &Packet<'_>) -> Vec<u8> {
    let mut buf = vec![0; BUF_LEN];
    let len = packet
        .emit(&mut buf)
        .expect("the benchmark's packets fit in BUF_LEN");
    buf.truncate(len);
    buf
}

/// `len` bytes of printable ASCII in lines of 35 to 95 bytes (60 on average), words and spaces.
fn text_like(len: usize) -> Vec<u8> {
    const WORDS: &[&[u8]] = &[
        b"menuentry",
        b"linux",
        b"initrd",
        b"boot",
        b"console=ttyS0,115200",
        b"root=/dev/nfs",
        b"set",
        b"timeout=5",
        b"default",
        b"ip=dhcp",
        b"{",
        b"}",
        b"quiet",
        b"#",
    ];
    let mut rng = Rng(0x5eed_1e55_c0ff_ee01);
    let mut out = Vec::with_capacity(len + 100);
    while out.len() < len {
        let line = 34 + rng.below(41) as usize;
        let line_start = out.len();
        while out.len() - line_start < line {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize]);
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

/// `len` pseudo-random bytes, like a compressed kernel sent in netascii by mistake.
fn binary_like(len: usize) -> Vec<u8> {
    let mut rng = Rng(0xb1a5_0000_dead_beef);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// xorshift64: reproducible data without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = packet, netascii, transfer
}
criterion_main!(benches);
