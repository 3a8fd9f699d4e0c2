//! Netascii round trips and streaming equivalence, for arbitrary bytes and arbitrary cuts:
//! - `decode(encode(x)) == x` (the encoding is a bijection onto its image);
//! - encoding in arbitrary input chunks into arbitrary output blocks, then flushing, gives the
//!   one-shot encoding, and fills every block completely while input remains;
//! - `encoded_len` (and `EncodedLen` over arbitrary chunks) is the length of the encoding;
//! - decoding in arbitrary pieces equals one-shot decoding, for encoded and for arbitrary bytes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringtftp::netascii::{self, Decoder, EncodedLen, Encoder};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    /// Input chunk sizes and output block sizes, cycled; 0s are kept (an empty `out` or an
    /// empty input must be harmless).
    cuts: Vec<(u8, u8)>,
    data: &'a [u8],
}

/// The `i`-th cut, cycling; one byte when there are none.
fn cut(cuts: &[(u8, u8)], i: usize) -> (usize, usize) {
    cuts.get(i % cuts.len().max(1))
        .map_or((1, 1), |&(a, b)| (usize::from(a), usize::from(b)))
}

fuzz_target!(|input: Input<'_>| {
    let data = input.data;
    let cuts = &input.cuts;

    let encoded = netascii::encode_to_vec(data);
    assert_eq!(
        netascii::decode_to_vec(&encoded),
        data,
        "decode(encode(x)) != x"
    );
    assert_eq!(netascii::encoded_len(data), encoded.len() as u64);
    let mut len = EncodedLen::new();
    let mut rest = data;
    for i in 0.. {
        if rest.is_empty() {
            break;
        }
        let take = cut(cuts, i).0.max(1).min(rest.len());
        len.update(&rest[..take]);
        rest = &rest[take..];
    }
    assert_eq!(len.total(), encoded.len() as u64, "chunked EncodedLen");

    // Streaming encode: input offered in chunks, output in blocks of varying size.
    let mut encoder = Encoder::new();
    let mut out = Vec::with_capacity(encoded.len());
    let mut block = [0u8; 256];
    let (mut read, mut stalls) = (0, 0);
    for i in 0.. {
        // After a whole cycle of cuts without progress (all zero), one byte each way.
        let (chunk, room) = if stalls > cuts.len() {
            (1, 1)
        } else {
            cut(cuts, i)
        };
        let end = (read + chunk).min(data.len());
        let (consumed, written) = encoder.encode(&data[read..end], &mut block[..room]);
        assert!(consumed <= end - read && written <= room);
        // Blocks of the encoded stream never depend on the expansions: with input enough for
        // the block, it is filled (a pending byte alone may stand in for input).
        if end - read >= room {
            assert_eq!(written, room, "short block with input left");
        }
        read += consumed;
        out.extend_from_slice(&block[..written]);
        if read == data.len() && encoder.is_idle() {
            break;
        }
        stalls = if written == 0 && consumed == 0 {
            stalls + 1
        } else {
            0
        };
        assert!(stalls <= cuts.len() + 2, "the encoder makes no progress");
    }
    // Flushing an idle encoder writes nothing.
    assert_eq!(encoder.encode(&[], &mut block), (0, 0));
    assert_eq!(out, encoded, "streamed encode != one-shot");

    // Streaming decode of the encoding, and of the raw bytes as if they were netascii.
    for wire in [&encoded[..], data] {
        let whole = netascii::decode_to_vec(wire);
        let mut decoder = Decoder::new();
        let mut out = Vec::with_capacity(whole.len());
        let (mut read, mut stalls) = (0, 0);
        for i in 0.. {
            let (room, chunk) = if stalls > cuts.len() {
                (1, 1)
            } else {
                cut(cuts, i)
            };
            let end = (read + chunk).min(wire.len());
            let (consumed, written) = decoder.decode(&wire[read..end], &mut block[..room]);
            assert!(consumed <= end - read && written <= room);
            read += consumed;
            out.extend_from_slice(&block[..written]);
            if read == wire.len() {
                let tail = decoder.finish(&mut block);
                out.extend_from_slice(&block[..tail]);
                assert!(decoder.is_idle());
                break;
            }
            stalls = if written == 0 && consumed == 0 {
                stalls + 1
            } else {
                0
            };
            assert!(stalls <= cuts.len() + 2, "the decoder makes no progress");
        }
        assert_eq!(out, whole, "streamed decode != one-shot");
    }
});
