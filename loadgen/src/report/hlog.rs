//! `--hlog FILE`: the transfer times as an HdrHistogram interval log, one interval a second by
//! completion time, in the V2 compressed (deflate) encoding that the standard HdrHistogram tools
//! (HistogramLogProcessor, HdrHistogramVisualizer, hdr-plot) read.
//!
//! Values are microseconds, as in the summary; intervals hold the successful transfers that
//! ended within them. Built from the run's timeline (`Stats::spans`), after the run.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use super::{histogram, micros, Span, Stats};

/// The length of one interval.
const INTERVAL: Duration = Duration::from_secs(1);

/// Writes the interval log of `stats` to `path`.
pub fn write(path: &Path, stats: &Stats) -> Result<()> {
    let mut out = Vec::new();
    encode(&mut out, stats.spans.as_deref().unwrap_or_default())?;
    std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))
}

/// The interval log of `spans`, into `out`.
pub fn encode(out: &mut Vec<u8>, spans: &[Span]) -> Result<()> {
    let intervals = intervals(spans);
    let mut serializer = V2DeflateSerializer::new();
    // The run's start as the log's base time: the intervals' start stamps count from it.
    let start = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut writer = IntervalLogWriterBuilder::new()
        .add_comment("loadgen: TFTP transfer times in microseconds, one interval a second")
        .with_base_time(SystemTime::UNIX_EPOCH + start)
        .with_start_time(SystemTime::UNIX_EPOCH + start)
        .with_max_value_divisor(1.0)
        .begin_log_with(out, &mut serializer)
        .context("cannot start the interval log")?;
    for (i, h) in intervals.iter().enumerate() {
        writer
            .write_histogram(h, INTERVAL * i as u32, INTERVAL, Tag::new("transfer"))
            .map_err(|e| anyhow::anyhow!("cannot write an interval: {e:?}"))?;
    }
    drop(writer);
    out.flush()?;
    Ok(())
}

/// One histogram per interval, of the successful transfers that ended in it.
fn intervals(spans: &[Span]) -> Vec<Histogram<u64>> {
    let mut out: Vec<Histogram<u64>> = Vec::new();
    for span in spans.iter().filter(|s| s.ok) {
        let i = (span.end.as_nanos() / INTERVAL.as_nanos()) as usize;
        if out.len() <= i {
            out.resize_with(i + 1, histogram);
        }
        out[i].saturating_record(micros(span.end.saturating_sub(span.start)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    #[test]
    fn intervals_round_trip_through_the_standard_format() {
        let ms = Duration::from_millis;
        let spans = [
            Span {
                start: ms(0),
                end: ms(10),
                ok: true,
            },
            Span {
                start: ms(500),
                end: ms(1500),
                ok: true,
            },
            Span {
                start: ms(600),
                end: ms(1700),
                ok: true,
            },
            Span {
                start: ms(700),
                end: ms(1800),
                ok: false,
            },
        ];
        let mut out = Vec::new();
        encode(&mut out, &spans).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("#loadgen"), "{text}");
        assert!(text.contains("#[StartTime: "));
        let mut counts = Vec::new();
        let mut deserializer = Deserializer::new();
        for entry in IntervalLogIterator::new(&out) {
            if let Ok(LogEntry::Interval(h)) = entry {
                assert_eq!(
                    h.tag().map(|t| t.as_str().to_owned()),
                    Some("transfer".into())
                );
                let bytes = base64_decode(h.encoded_histogram());
                let hist: Histogram<u64> = deserializer.deserialize(&mut bytes.as_slice()).unwrap();
                counts.push((hist.len(), hist.max()));
            }
        }
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[0].0, 1);
        // Two successes ended in the second interval, each a second or more; the failure not.
        assert_eq!(counts[1].0, 2);
        assert!(counts[1].1 >= 1_000_000);
    }

    /// Standard base64, enough for a test (the log's histograms are base64 of the V2 bytes).
    fn base64_decode(s: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').map(value).collect();
        bytes
            .chunks(4)
            .flat_map(|c| {
                let n = c.iter().fold(0u32, |n, &v| n << 6 | u32::from(v)) << (6 * (4 - c.len()));
                let b = n.to_be_bytes();
                b[1..c.len()].to_vec()
            })
            .collect()
    }
}
