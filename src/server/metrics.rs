//! What the server counts for Prometheus: requests admitted and refused, transfers and how
//! they ended, bytes, retransmissions and durations, per shard.
//!
//! Counting stays off the data path: a request is counted where it is admitted or refused
//! ([`super::admit::decide`]), a transfer where its log line is written
//! ([`super::record::ended`]), each into the counters of its own shard (relaxed atomics on a
//! cache line no other shard writes). A scrape adds them up on the caller's thread and writes
//! the Prometheus text exposition format (version 0.0.4) with the official `prometheus-client`.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::ending::{Ending, Refusal};
use super::{Backend, Shared};
use crate::transfer::Stats;

/// A server's metrics, for a scrape: see [`Handle::metrics`](super::Handle::metrics).
#[derive(Clone)]
pub struct Metrics {
    shared: Arc<Shared>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The metrics in the Prometheus text exposition format, version 0.0.4 (the
    /// `Content-Type` to serve it with is [`Metrics::CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }

    /// The `Content-Type` of [`Metrics::encode`]'s text.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";
}

/// Upper bounds of the transfer-duration histogram's buckets, in seconds: a small boot file on
/// a LAN takes milliseconds, an initrd under loss tens of seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// The counters of one shard, on cache lines of their own.
#[repr(align(128))]
#[derive(Default)]
struct ShardCounters {
    requests: AtomicU64,
    repeated: AtomicU64,
    refused: [AtomicU64; Refusal::LABELS.len()],
    started: AtomicU64,
    ended: [AtomicU64; Ending::LABELS.len()],
    bytes: AtomicU64,
    datagrams: AtomicU64,
    retransmits: AtomicU64,
    spurious: AtomicU64,
    /// Per bucket (not cumulative), the last one past every bound.
    durations: [AtomicU64; DURATION_BUCKETS.len() + 1],
    duration_micros: AtomicU64,
}

thread_local! {
    /// The shard this thread runs, set when it starts ([`enter_shard`]).
    static SHARD: Cell<usize> = const { Cell::new(0) };
    /// That shard's server's counters, for the code that has no [`Shared`] at hand
    /// ([`super::record::ended`], which every executor calls).
    static COUNTERS: std::cell::RefCell<Option<Arc<Counters>>> = const { std::cell::RefCell::new(None) };
}

/// Marks the calling thread as shard `index` of the server counting into `counters`.
pub(crate) fn enter_shard(index: usize, counters: Arc<Counters>) {
    SHARD.with(|s| s.set(index));
    COUNTERS.with(|c| *c.borrow_mut() = Some(counters));
}

/// Runs `f` with the calling shard's counters (nothing on a thread that is no shard's).
pub(crate) fn with_counters(f: impl FnOnce(&Counters)) {
    COUNTERS.with(|c| {
        if let Some(counters) = c.borrow().as_ref() {
            f(counters);
        }
    });
}

/// Every shard's counters.
pub(crate) struct Counters {
    shards: Box<[ShardCounters]>,
    backend: OnceLock<Backend>,
}

impl Counters {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| ShardCounters::default())
                .collect(),
            backend: OnceLock::new(),
        }
    }

    fn here(&self) -> &ShardCounters {
        let index = SHARD.with(Cell::get);
        &self.shards[index.min(self.shards.len() - 1)]
    }

    pub(crate) fn set_backend(&self, backend: Backend) {
        let _ = self.backend.set(backend);
    }

    /// A request arrived on the main port (a datagram that parses as RRQ or WRQ, or claims to).
    pub(crate) fn request(&self) {
        self.here().requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn repeated(&self) {
        self.here().repeated.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn refused(&self, refusal: &Refusal) {
        let label = refusal.label();
        let index = Refusal::LABELS
            .iter()
            .position(|&r| r == label)
            .unwrap_or(0);
        self.here().refused[index].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn started(&self) {
        self.here().started.fetch_add(1, Ordering::Relaxed);
    }

    /// An admitted transfer that never ran (its socket could not be set up).
    pub(crate) fn not_started(&self) {
        self.count_end(Ending::NotStarted);
    }

    /// A transfer ended: how, what it sent and how long it took.
    pub(crate) fn ended(&self, ending: Ending, stats: &Stats, duration: Duration) {
        let here = self.here();
        self.count_end(ending);
        here.bytes.fetch_add(stats.bytes, Ordering::Relaxed);
        here.datagrams.fetch_add(stats.sent, Ordering::Relaxed);
        here.retransmits
            .fetch_add(stats.retransmits, Ordering::Relaxed);
        here.spurious.fetch_add(stats.spurious, Ordering::Relaxed);
        let secs = duration.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(DURATION_BUCKETS.len());
        here.durations[bucket].fetch_add(1, Ordering::Relaxed);
        here.duration_micros.fetch_add(
            u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn count_end(&self, ending: Ending) {
        let label = ending.label();
        let index = Ending::LABELS.iter().position(|&e| e == label).unwrap_or(0);
        self.here().ended[index].fetch_add(1, Ordering::Relaxed);
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl prometheus_client::collector::Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let shared = &self.shared;
        let counters = &shared.counters;
        let shards = || counters.shards.iter().enumerate();
        let shard_label = |i: usize| [("shard", Cow::Owned(i.to_string()))];

        let info = |encoder: &mut DescriptorEncoder, name, help, labels: &[(&str, String)]| {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ConstGauge::new(1i64).encode(metric.encode_family(&labels)?)
        };
        info(
            &mut encoder,
            "ringtftp_build_info",
            "The ringtftp version serving, as a label; always 1.",
            &[("version", env!("CARGO_PKG_VERSION").to_owned())],
        )?;
        let backend = counters.backend.get().copied();
        info(
            &mut encoder,
            "ringtftp_backend_info",
            "The I/O backend in use (the weakest across shards), as labels; always 1.",
            &[
                (
                    "backend",
                    match backend {
                        Some(Backend::IoUring { .. }) => "io_uring",
                        Some(Backend::TokioUring { .. }) => "tokio_uring",
                        Some(Backend::Epoll) => "epoll",
                        None => "starting",
                    }
                    .to_owned(),
                ),
                (
                    "registered_buffers",
                    backend.is_some_and(Backend::registered_buffers).to_string(),
                ),
            ],
        )?;

        let gauge = |encoder: &mut DescriptorEncoder, name, help, value: u64| {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric)
        };
        gauge(
            &mut encoder,
            "ringtftp_shards",
            "Shards (threads with their own main socket).",
            counters.shards.len() as u64,
        )?;
        gauge(
            &mut encoder,
            "ringtftp_max_transfers",
            "--max-transfers: concurrent transfers before requests are refused as busy.",
            shared.config.max_transfers as u64,
        )?;
        gauge(
            &mut encoder,
            "ringtftp_file_data_bytes",
            "Bytes of file data held in memory (chunks, cached or not, and netascii encodings).",
            shared.budget.used() as u64,
        )?;
        gauge(
            &mut encoder,
            "ringtftp_file_data_max_bytes",
            "--max-buffer-mb in bytes: past it, requests are refused as busy.",
            shared.config.buffer_max as u64,
        )?;

        // Per-shard counters: one family each, labelled by shard.
        let per_shard = |encoder: &mut DescriptorEncoder,
                         name: &str,
                         help: &str,
                         value: &dyn Fn(&ShardCounters) -> u64|
         -> Result<(), fmt::Error> {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (i, shard) in shards() {
                let labels = shard_label(i);
                ConstCounter::new(value(shard)).encode(metric.encode_family(&labels)?)?;
            }
            Ok(())
        };
        per_shard(
            &mut encoder,
            "ringtftp_requests",
            "Requests (RRQ and WRQ) received on the main port.",
            &|s| load(&s.requests),
        )?;
        per_shard(
            &mut encoder,
            "ringtftp_requests_repeated",
            "Requests repeated by a client whose transfer had not been answered yet (its first reply was lost or late).",
            &|s| load(&s.repeated),
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "ringtftp_requests_refused",
                "Requests refused with an ERROR from the main port, by reason (busy_* name the cap that refused).",
                None,
                MetricType::Counter,
            )?;
            for (i, shard) in shards() {
                for (r, reason) in Refusal::LABELS.iter().enumerate() {
                    let labels = [
                        ("shard", Cow::Owned(i.to_string())),
                        ("reason", Cow::Borrowed(*reason)),
                    ];
                    ConstCounter::new(load(&shard.refused[r]))
                        .encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        per_shard(
            &mut encoder,
            "ringtftp_transfers_started",
            "Transfers admitted and started.",
            &|s| load(&s.started),
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "ringtftp_transfers_ended",
                "Transfers ended, by outcome: completed, or failed by reason (probe: the client answered the OACK with ERROR 8 before any DATA, as UEFI firmware does to learn a file's size, not an error; timeout: the client went silent; client_error: the client sent an ERROR; protocol: the client broke the protocol; file_changed: the file changed while served; read_failed: the file could not be read; internal; unreachable: the client's port was closed; replaced: in single-port mode, the client asked again from the same port; not_started).",
                None,
                MetricType::Counter,
            )?;
            for (i, shard) in shards() {
                for (e, ending) in Ending::LABELS.iter().enumerate() {
                    let labels = [
                        ("shard", Cow::Owned(i.to_string())),
                        ("outcome", Cow::Borrowed(*ending)),
                    ];
                    ConstCounter::new(load(&shard.ended[e]))
                        .encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "ringtftp_transfers_active",
                "Transfers running now.",
                None,
                MetricType::Gauge,
            )?;
            for (i, shard) in shards() {
                let ended: u64 = shard.ended.iter().map(load).sum();
                let active = load(&shard.started).saturating_sub(ended);
                let labels = shard_label(i);
                ConstGauge::new(i64::try_from(active).unwrap_or(i64::MAX))
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
        per_shard(
            &mut encoder,
            "ringtftp_sent_bytes",
            "File bytes sent and acknowledged, counted when each transfer ends.",
            &|s| load(&s.bytes),
        )?;
        per_shard(
            &mut encoder,
            "ringtftp_sent_datagrams",
            "OACK and DATA datagrams sent, retransmissions included, counted when each transfer ends.",
            &|s| load(&s.datagrams),
        )?;
        per_shard(
            &mut encoder,
            "ringtftp_data_retransmitted",
            "DATA datagrams sent again after a timeout or a partial window acknowledgment.",
            &|s| load(&s.retransmits),
        )?;
        per_shard(
            &mut encoder,
            "ringtftp_retransmissions_spurious",
            "Retransmission timeouts proven spurious and undone (RFC 3522): many mean the server reads its ACKs late, not that the network loses packets.",
            &|s| load(&s.spurious),
        )?;
        {
            let mut metric = encoder.encode_descriptor(
                "ringtftp_transfer_duration_seconds",
                "How long transfers took, from request to end, whatever the outcome.",
                None,
                MetricType::Histogram,
            )?;
            for (i, shard) in shards() {
                let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(shard.durations.iter().map(load))
                    .collect();
                let count = buckets.iter().map(|(_, n)| n).sum();
                let sum = load(&shard.duration_micros) as f64 / 1e6;
                let labels = shard_label(i);
                metric
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        Ok(())
    }
}
