//! What a run measured: histograms and counters, the live progress line, the summary table,
//! the performance-CI thresholds and the JSON summary; beside it the comparison with a
//! baseline ([`baseline`]), the HdrHistogram interval log ([`hlog`]) and the HTML page
//! ([`html`]).
//!
//! Latencies are recorded in microseconds in HDR histograms (3 significant digits, up to an
//! hour), so percentiles are exact to 0.1 % whatever the spread of a storm.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::{Client, Failure};
use crate::scenario::StepInfo;

pub mod baseline;
pub mod hlog;
pub mod html;

/// The version of the JSON summary's layout (the README has its fields). 1 was the layout
/// before it carried a version; 2 added `schema`, `profile`, `arrivals`, `probes`, `machines`
/// and `steps`. A change that renames or removes a field, or changes its meaning, bumps it.
pub const SCHEMA: u32 = 2;

/// What the clients counted on the wire, summed over transfers; in the JSON summary as fields
/// of their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Packets re-sent because the client's timer expired.
    pub retransmits: u64,
    /// ACKs re-sent at once on a duplicate or out-of-order block.
    pub reacks: u64,
    /// DATA blocks out of order (duplicates and blocks after a gap).
    pub stray_blocks: u64,
    /// Datagrams from a source other than the transfer's TID, ignored.
    pub stray_datagrams: u64,
    /// Transfers whose server answered without an OACK although options were asked for.
    pub options_ignored: u64,
    /// Receives that held several datagrams (a GSO window taken whole with `UDP_GRO`).
    pub coalesced: u64,
    /// Datagrams dropped by the simulated loss: received, and not sent.
    pub dropped_in: u64,
    /// See `dropped_in`.
    pub dropped_out: u64,
    /// Sends the kernel refused for lack of buffer space (counted as lost packets).
    pub send_drops: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.retransmits += other.retransmits;
        self.reacks += other.reacks;
        self.stray_blocks += other.stray_blocks;
        self.stray_datagrams += other.stray_datagrams;
        self.options_ignored += other.options_ignored;
        self.coalesced += other.coalesced;
        self.dropped_in += other.dropped_in;
        self.dropped_out += other.dropped_out;
        self.send_drops += other.send_drops;
    }
}

/// Everything one worker (and, merged, the whole run) measured.
#[derive(Debug, Clone)]
pub struct Stats {
    /// RRQ to final ACK of each successful transfer, in µs.
    pub transfer: Histogram<u64>,
    /// RRQ to block 1 of each transfer that got one, in µs.
    pub first_block: Histogram<u64>,
    /// Transfers that completed with every check passed.
    pub ok: u64,
    /// Failed transfers by reason.
    pub failures: BTreeMap<Failure, u64>,
    /// The message of the first ERROR seen with each code, to tell "busy" from "not found".
    pub error_messages: BTreeMap<u16, String>,
    /// Payload bytes received in order, over all transfers.
    pub bytes: u64,
    /// What the clients counted on the wire.
    pub counts: Counts,
    /// The most transfers in flight at once.
    pub peak_active: u64,
    /// Wall time of the run, from the first RRQ to the last transfer's end.
    pub elapsed: Duration,
    /// Size probes (edk2's first RRQ) answered with ERROR 8 as planned; a failed probe counts
    /// in `failures`.
    pub probes: u64,
    /// Power-on to the end of the last step, of each machine that booted, in µs.
    pub boot: Histogram<u64>,
    /// Power-on to the end of each step, by step, of the machines that got that far, in µs.
    pub steps: Vec<Histogram<u64>>,
    /// Machines that booted: every step done.
    pub booted: u64,
    /// Machines that failed, by the index of the step that failed.
    pub boot_failures: BTreeMap<usize, u64>,
    /// From the start of the run to the end of the last boot: when the whole hall was up.
    pub last_boot: Duration,
    /// Every transfer's start and end since the run's start (only when asked for).
    pub spans: Option<Vec<Span>>,
}

/// One transfer on the run's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// When its RRQ went out, since the start of the run.
    pub start: Duration,
    /// When it ended.
    pub end: Duration,
    /// Whether it succeeded.
    pub ok: bool,
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self {
            transfer: histogram(),
            first_block: histogram(),
            ok: 0,
            failures: BTreeMap::new(),
            error_messages: BTreeMap::new(),
            bytes: 0,
            counts: Counts::default(),
            peak_active: 0,
            elapsed: Duration::ZERO,
            probes: 0,
            boot: histogram(),
            steps: Vec::new(),
            booted: 0,
            boot_failures: BTreeMap::new(),
            last_boot: Duration::ZERO,
            spans: None,
        }
    }

    /// Records a finished size probe: its failure, or one more probe done.
    pub fn record_probe(&mut self, client: &Client) {
        match client.outcome() {
            Some(Ok(())) => self.probes += 1,
            Some(Err(why)) => *self.failures.entry(why).or_default() += 1,
            None => {}
        }
        self.counts.retransmits += u64::from(client.counters().retransmits);
    }

    /// Records that a machine finished step `step` this long after its power-on.
    pub fn record_step(&mut self, step: usize, since_power_on: Duration) {
        if self.steps.len() <= step {
            self.steps.resize_with(step + 1, histogram);
        }
        self.steps[step].saturating_record(micros(since_power_on));
    }

    /// Records a machine that booted, `took` after its power-on, `at` after the run's start.
    pub fn record_boot(&mut self, took: Duration, at: Duration) {
        self.booted += 1;
        self.boot.saturating_record(micros(took));
        self.last_boot = self.last_boot.max(at);
    }

    /// Records a machine that failed at step `step`.
    pub fn record_boot_failure(&mut self, step: usize) {
        *self.boot_failures.entry(step).or_default() += 1;
    }

    /// Machines that failed, all steps together.
    pub fn machines_failed(&self) -> u64 {
        self.boot_failures.values().sum()
    }

    /// Records a finished transfer.
    pub fn record(&mut self, client: &Client) {
        let Some(outcome) = client.outcome() else {
            return;
        };
        let started = client.started();
        if let Some(first) = client.first_block() {
            self.first_block
                .saturating_record(micros(first.saturating_duration_since(started)));
        }
        match outcome {
            Ok(()) => {
                self.ok += 1;
                let end = client.finished().unwrap_or(started);
                self.transfer
                    .saturating_record(micros(end.saturating_duration_since(started)));
            }
            Err(why) => *self.failures.entry(why).or_default() += 1,
        }
        let counters = client.counters();
        self.bytes += client.bytes();
        self.counts.retransmits += u64::from(counters.retransmits);
        self.counts.reacks += u64::from(counters.reacks);
        self.counts.stray_blocks += u64::from(counters.stray_blocks);
        self.counts.options_ignored += u64::from(counters.options_ignored);
    }

    /// Adds another worker's figures.
    pub fn merge(&mut self, other: &Stats) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.transfer.add(&other.transfer);
        let _ = self.first_block.add(&other.first_block);
        self.ok += other.ok;
        for (&why, &n) in &other.failures {
            *self.failures.entry(why).or_default() += n;
        }
        for (&code, message) in &other.error_messages {
            self.error_messages
                .entry(code)
                .or_insert_with(|| message.clone());
        }
        self.bytes += other.bytes;
        self.counts.add(&other.counts);
        self.peak_active += other.peak_active;
        self.elapsed = self.elapsed.max(other.elapsed);
        self.probes += other.probes;
        let _ = self.boot.add(&other.boot);
        if self.steps.len() < other.steps.len() {
            self.steps.resize_with(other.steps.len(), histogram);
        }
        for (mine, theirs) in self.steps.iter_mut().zip(&other.steps) {
            let _ = mine.add(theirs);
        }
        self.booted += other.booted;
        for (&step, &n) in &other.boot_failures {
            *self.boot_failures.entry(step).or_default() += n;
        }
        self.last_boot = self.last_boot.max(other.last_boot);
        if let Some(theirs) = &other.spans {
            self.spans
                .get_or_insert_with(Vec::new)
                .extend_from_slice(theirs);
        }
    }

    /// Keeps the message of an ERROR packet, if its code has none yet.
    pub fn note_error(&mut self, code: u16, message: &[u8]) {
        self.error_messages
            .entry(code)
            .or_insert_with(|| String::from_utf8_lossy(message).into_owned());
    }

    /// A failure as the report names it: an ERROR with its message.
    pub fn describe(&self, why: &Failure) -> String {
        match (why, why.code().and_then(|c| self.error_messages.get(&c))) {
            (_, Some(message)) => format!("{why} ({message:?})"),
            _ => why.to_string(),
        }
    }

    /// Failed transfers, all reasons together.
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Successful transfers per second of wall time.
    pub fn rate(&self) -> f64 {
        per_second(self.ok as f64, self.elapsed)
    }

    /// Payload megabytes (10^6 bytes) per second of wall time.
    pub fn megabytes_per_second(&self) -> f64 {
        per_second(self.bytes as f64 / 1e6, self.elapsed)
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// Counters the workers bump as transfers end, read by the progress line while the run goes on.
#[derive(Debug, Default)]
pub struct Live {
    /// Transfers started (may overshoot `--transfers` by the number of workers; see `run`).
    pub launched: AtomicU64,
    /// Transfers that succeeded.
    pub ok: AtomicU64,
    /// Transfers that failed.
    pub failed: AtomicU64,
    /// Payload bytes of finished transfers.
    pub bytes: AtomicU64,
    /// Timer re-sends of finished transfers.
    pub retransmits: AtomicU64,
    /// Transfers in flight.
    pub active: AtomicU64,
}

impl Live {
    /// Counts a finished transfer.
    pub fn record(&self, client: &Client) {
        match client.outcome() {
            Some(Ok(())) => self.ok.fetch_add(1, Relaxed),
            _ => self.failed.fetch_add(1, Relaxed),
        };
        self.bytes.fetch_add(client.bytes(), Relaxed);
        self.retransmits
            .fetch_add(u64::from(client.counters().retransmits), Relaxed);
    }

    /// The one-line progress report: elapsed time, counts, and rates since the previous line.
    pub fn line(&self, elapsed: Duration, total: Option<u64>, last: &mut (u64, u64)) -> String {
        let ok = self.ok.load(Relaxed);
        let failed = self.failed.load(Relaxed);
        let bytes = self.bytes.load(Relaxed);
        let done = ok + failed;
        let rate = done - last.0;
        let mbps = (bytes - last.1) as f64 / 1e6;
        *last = (done, bytes);
        let total = total.map_or(String::new(), |t| format!("/{t}"));
        format!(
            "[{:6.1}s] {done}{total} done, {} active, {failed} failed, {rate}/s, {mbps:.1} MB/s, {} retransmits",
            elapsed.as_secs_f64(),
            self.active.load(Relaxed),
            self.retransmits.load(Relaxed),
        )
    }
}

/// Limits that set the exit code, for performance CI.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    /// The longest acceptable p99 transfer time.
    pub max_p99: Option<Duration>,
    /// The fewest acceptable successful transfers per second.
    pub min_rate: Option<f64>,
    /// The most acceptable failed transfers.
    pub max_failures: Option<u64>,
}

/// One threshold's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The option's name, as on the command line.
    pub name: &'static str,
    /// The limit, as a number in the unit of `actual`.
    pub limit: f64,
    /// What the run measured.
    pub actual: f64,
    /// Whether the run met the limit.
    pub ok: bool,
}

impl Thresholds {
    /// Judges `stats` against every threshold set; an empty list when none is.
    pub fn judge(&self, stats: &Stats) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        if let Some(max) = self.max_p99 {
            let limit = max.as_secs_f64() * 1e3;
            // No successful transfer has no p99: treat it as infinitely slow.
            let actual = if stats.ok == 0 {
                f64::INFINITY
            } else {
                stats.transfer.value_at_quantile(0.99) as f64 / 1e3
            };
            verdicts.push(Verdict {
                name: "max-p99 (ms)",
                limit,
                actual,
                ok: actual <= limit,
            });
        }
        if let Some(limit) = self.min_rate {
            let actual = stats.rate();
            verdicts.push(Verdict {
                name: "min-rate (/s)",
                limit,
                actual,
                ok: actual >= limit,
            });
        }
        if let Some(limit) = self.max_failures {
            let actual = stats.failed();
            verdicts.push(Verdict {
                name: "max-failures",
                limit: limit as f64,
                actual: actual as f64,
                ok: actual <= limit,
            });
        }
        verdicts
    }
}

/// What the run was, for the headings of the table and the JSON.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The server, as resolved.
    pub server: String,
    /// The file requested.
    pub file: String,
    /// Concurrent clients.
    pub clients: usize,
    /// The options asked for, as `name=value` words.
    pub options: String,
    /// The transfer mode.
    pub mode: &'static str,
    /// The firmware profile of the command line, if any.
    pub profile: Option<String>,
    /// The power-on wave, described, if any.
    pub arrivals: Option<String>,
    /// The boot sequence's steps.
    pub steps: Vec<StepInfo>,
}

/// The percentiles reported, as (label, quantile).
const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

/// The human summary, for stdout.
pub fn table(setup: &Setup, stats: &Stats, verdicts: &[Verdict]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "loadgen: {} from {} ({} clients, {}, {})",
        setup.file, setup.server, setup.clients, setup.mode, setup.options
    );
    let _ = writeln!(
        out,
        "{:<14}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "latency", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    for (label, h) in [
        ("transfer", &stats.transfer),
        ("first block", &stats.first_block),
    ] {
        let _ = write!(out, "{label:<14}");
        if h.is_empty() {
            let _ = writeln!(out, "{:>10}", "-");
            continue;
        }
        for (_, q) in QUANTILES {
            let _ = write!(out, "{:>10}", human_micros(h.value_at_quantile(q) as f64));
        }
        let _ = writeln!(
            out,
            "{:>10}{:>10}",
            human_micros(h.max() as f64),
            human_micros(h.mean())
        );
    }
    let _ = writeln!(
        out,
        "{:<14}{} ok, {} failed in {:.2} s: {:.1} transfers/s, {:.1} MB/s (peak {} in flight)",
        "transfers",
        stats.ok,
        stats.failed(),
        stats.elapsed.as_secs_f64(),
        stats.rate(),
        stats.megabytes_per_second(),
        stats.peak_active,
    );
    let _ = writeln!(
        out,
        "{:<14}{} timer re-sends, {} re-ACKs, {} out-of-order blocks, {} stray datagrams",
        "retransmits",
        stats.counts.retransmits,
        stats.counts.reacks,
        stats.counts.stray_blocks,
        stats.counts.stray_datagrams
    );
    if stats.counts.dropped_in + stats.counts.dropped_out + stats.counts.send_drops > 0 {
        let _ = writeln!(
            out,
            "{:<14}{} received and {} sent dropped (simulated), {} sends refused by the kernel",
            "loss", stats.counts.dropped_in, stats.counts.dropped_out, stats.counts.send_drops
        );
    }
    if stats.counts.coalesced > 0 {
        let _ = writeln!(
            out,
            "{:<14}{} receives each held a whole GSO window (UDP_GRO)",
            "coalesced", stats.counts.coalesced
        );
    }
    if stats.counts.options_ignored > 0 {
        let _ = writeln!(
            out,
            "{:<14}{} transfers answered without an OACK (options ignored)",
            "options", stats.counts.options_ignored
        );
    }
    if stats.probes > 0 {
        let _ = writeln!(
            out,
            "{:<14}{} size probes refused with ERROR 8 after the OACK (edk2, Raspberry Pi)",
            "probes", stats.probes
        );
    }
    machines(&mut out, setup, stats);
    if !stats.failures.is_empty() {
        let _ = write!(out, "{:<14}", "failures");
        let reasons: Vec<String> = stats
            .failures
            .iter()
            .map(|(why, n)| format!("{}: {n}", stats.describe(why)))
            .collect();
        let _ = writeln!(out, "{}", reasons.join(", "));
    }
    for v in verdicts {
        let _ = writeln!(
            out,
            "{:<14}{} {} (limit {}, measured {})",
            "threshold",
            v.name,
            if v.ok { "ok" } else { "MISSED" },
            v.limit,
            (v.actual * 100.0).round() / 100.0
        );
    }
    out
}

/// The per-machine part of the table: time to boot, by step, and when the hall was up. Only for
/// boots of several steps or power-on waves, where it tells more than the transfer line.
fn machines(out: &mut String, setup: &Setup, stats: &Stats) {
    if setup.steps.len() < 2 && setup.arrivals.is_none() {
        return;
    }
    let _ = write!(out, "{:<14}", "time to boot");
    if stats.boot.is_empty() {
        let _ = writeln!(out, "{:>10}", "-");
    } else {
        for (_, q) in QUANTILES {
            let _ = write!(
                out,
                "{:>10}",
                human_micros(stats.boot.value_at_quantile(q) as f64)
            );
        }
        let _ = writeln!(
            out,
            "{:>10}{:>10}",
            human_micros(stats.boot.max() as f64),
            human_micros(stats.boot.mean())
        );
    }
    for (i, step) in setup.steps.iter().enumerate() {
        let _ = write!(out, "  step {:<8}", i + 1);
        match stats.steps.get(i).filter(|h| !h.is_empty()) {
            Some(h) => {
                let _ = write!(
                    out,
                    "{:>10}{:>10}{:>10}",
                    human_micros(h.value_at_quantile(0.5) as f64),
                    human_micros(h.value_at_quantile(0.99) as f64),
                    human_micros(h.max() as f64)
                );
            }
            None => {
                let _ = write!(out, "{:>30}", "-");
            }
        }
        let failed = stats.boot_failures.get(&i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "  (p50 p99 max done) {} {} {}{}",
            step.file,
            step.profile,
            step.options,
            if failed > 0 {
                format!(", {failed} machines failed here")
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        out,
        "{:<14}{} booted, {} failed; the last booted {:.2} s after the start",
        "machines",
        stats.booted,
        stats.machines_failed(),
        stats.last_boot.as_secs_f64()
    );
}

/// The machine-readable summary (`--json`), written through serde; its field names are the
/// schema ([`SCHEMA`]) that baselines and CI read, and `Deserialize` lets a test (and any Rust
/// consumer) read it back typed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Summary {
    pub schema: u32,
    pub server: String,
    pub file: String,
    pub clients: usize,
    pub mode: String,
    pub options: String,
    pub elapsed_s: Option<f64>,
    pub ok: u64,
    pub failed: u64,
    pub transfers_per_s: Option<f64>,
    pub mb_per_s: Option<f64>,
    pub bytes: u64,
    pub peak_active: u64,
    pub transfer_us: Latencies,
    pub first_block_us: Latencies,
    pub profile: Option<String>,
    pub arrivals: Option<String>,
    pub probes: u64,
    pub machines: Machines,
    pub steps: Vec<StepSummary>,
    #[serde(flatten)]
    pub counts: Counts,
    /// Failed transfers by reason (`timeout`, `ERROR 1`, …).
    pub failures: BTreeMap<String, u64>,
    /// The last message of each ERROR code received.
    pub error_messages: BTreeMap<String, String>,
    pub thresholds: Vec<ThresholdSummary>,
    pub thresholds_ok: bool,
}

/// A latency histogram in µs: its count and, when not empty, its percentiles, max and mean.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Latencies {
    pub count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_9: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
}

impl Latencies {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let [p50, p90, p99, p99_9] = QUANTILES.map(|(_, q)| Some(h.value_at_quantile(q)));
        Self {
            count: h.len(),
            p50,
            p90,
            p99,
            p99_9,
            max: Some(h.max()),
            mean: number(h.mean()),
        }
    }
}

/// Machines of a scenario or a power-on wave.
#[derive(Debug, Serialize, Deserialize)]
pub struct Machines {
    pub booted: u64,
    pub failed: u64,
    /// Machines that failed, by the step (from 1) that failed them.
    pub failed_by_step: BTreeMap<String, u64>,
    pub boot_us: Latencies,
    pub hall_s: Option<f64>,
}

/// One step of a scenario: its file, how it asked, and when machines finished it.
#[derive(Debug, Serialize, Deserialize)]
pub struct StepSummary {
    pub file: String,
    pub profile: String,
    pub options: String,
    pub failed: u64,
    pub done_us: Latencies,
}

/// A threshold's verdict.
#[derive(Debug, Serialize, Deserialize)]
pub struct ThresholdSummary {
    pub name: String,
    pub limit: Option<f64>,
    pub actual: Option<f64>,
    pub ok: bool,
}

/// The machine-readable summary: one JSON object with every figure and the thresholds' verdicts.
pub fn json(setup: &Setup, stats: &Stats, verdicts: &[Verdict]) -> String {
    let summary = Summary {
        schema: SCHEMA,
        server: setup.server.clone(),
        file: setup.file.clone(),
        clients: setup.clients,
        mode: setup.mode.to_owned(),
        options: setup.options.clone(),
        elapsed_s: number(stats.elapsed.as_secs_f64()),
        ok: stats.ok,
        failed: stats.failed(),
        transfers_per_s: number(stats.rate()),
        mb_per_s: number(stats.megabytes_per_second()),
        bytes: stats.bytes,
        peak_active: stats.peak_active,
        transfer_us: Latencies::of(&stats.transfer),
        first_block_us: Latencies::of(&stats.first_block),
        profile: setup.profile.clone(),
        arrivals: setup.arrivals.clone(),
        probes: stats.probes,
        machines: Machines {
            booted: stats.booted,
            failed: stats.machines_failed(),
            failed_by_step: stats
                .boot_failures
                .iter()
                .map(|(step, n)| ((step + 1).to_string(), *n))
                .collect(),
            boot_us: Latencies::of(&stats.boot),
            hall_s: number(stats.last_boot.as_secs_f64()),
        },
        steps: setup
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| StepSummary {
                file: step.file.clone(),
                profile: step.profile.clone(),
                options: step.options.clone(),
                failed: stats.boot_failures.get(&i).copied().unwrap_or(0),
                done_us: stats.steps.get(i).map(Latencies::of).unwrap_or_default(),
            })
            .collect(),
        counts: stats.counts,
        failures: stats
            .failures
            .iter()
            .map(|(why, n)| (why.to_string(), *n))
            .collect(),
        error_messages: stats
            .error_messages
            .iter()
            .map(|(code, m)| (code.to_string(), m.clone()))
            .collect(),
        thresholds: verdicts
            .iter()
            .map(|v| ThresholdSummary {
                name: v.name.to_owned(),
                limit: number(v.limit),
                actual: number(v.actual),
                ok: v.ok,
            })
            .collect(),
        thresholds_ok: verdicts.iter().all(|v| v.ok),
    };
    let mut out = serde_json::to_string_pretty(&summary).expect("a summary always serializes");
    out.push('\n');
    out
}

/// A JSON number rounded to hundredths; JSON has no infinity or NaN, so those become `null`.
fn number(v: f64) -> Option<f64> {
    v.is_finite().then(|| (v * 100.0).round() / 100.0)
}

/// An empty latency histogram: µs up to an hour, 3 significant digits, so that every transfer
/// and boot a run can bound fits, with percentiles exact to 0.1 %.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant bounds are valid for hdrhistogram")
}

/// A duration in whole µs, at least 1 (the histograms' lowest value).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn per_second(amount: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        amount / secs
    } else {
        0.0
    }
}

/// A latency in the unit that reads best: `870us`, `12.3ms`, `1.52s`.
pub fn human_micros(us: f64) -> String {
    if us < 1e3 {
        format!("{us:.0}us")
    } else if us < 1e6 {
        format!("{:.1}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Stats {
        let mut s = Stats::new();
        for us in 1..=1000 {
            s.transfer.record(us * 100).unwrap();
        }
        s.ok = 1000;
        s.failures.insert(Failure::Timeout, 2);
        s.failures.insert(Failure::Error(1), 1);
        s.elapsed = Duration::from_secs(2);
        s.bytes = 4_000_000;
        s
    }

    #[test]
    fn thresholds_judge_each_limit() {
        let s = stats();
        let t = Thresholds {
            max_p99: Some(Duration::from_millis(150)),
            min_rate: Some(600.0),
            max_failures: Some(0),
        };
        let v = t.judge(&s);
        assert_eq!(v.len(), 3);
        assert!(v[0].ok, "p99 of 0.1..=100 ms is 99 ms: {:?}", v[0]);
        assert!((v[0].actual - 99.0).abs() < 0.1);
        assert!(!v[1].ok, "500/s is under 600/s");
        assert!(!v[2].ok, "3 failures");
        assert!(Thresholds::default().judge(&s).is_empty());
    }

    /// The summary parses back into its own types, field for field (the schema a baseline
    /// and CI read), and stays valid JSON whatever the names hold.
    #[test]
    fn json_parses_back_into_its_schema() {
        let s = stats();
        let setup = Setup {
            server: "127.0.0.1:69".into(),
            file: "a\"b\\c\u{1}".into(),
            clients: 10,
            options: "blksize=1468".into(),
            mode: "octet",
            profile: None,
            arrivals: None,
            steps: Vec::new(),
        };
        let v = Thresholds {
            max_failures: Some(0),
            ..Thresholds::default()
        }
        .judge(&s);
        let j = json(&setup, &s, &v);
        let back: Summary = serde_json::from_str(&j).expect("the summary parses as its schema");
        assert_eq!(back.schema, SCHEMA);
        assert_eq!(back.file, "a\"b\\c\u{1}");
        assert_eq!((back.ok, back.failed), (1000, 3));
        assert_eq!(back.failures.get("timeout"), Some(&2));
        assert_eq!(back.failures.get("ERROR 1"), Some(&1));
        assert_eq!(back.transfers_per_s, Some(500.0));
        assert_eq!(back.transfer_us.count, s.transfer.len());
        assert_eq!(
            back.transfer_us.p99,
            Some(s.transfer.value_at_quantile(0.99))
        );
        assert!(!back.thresholds_ok);
        assert_eq!(back.thresholds.len(), 1);
        assert_eq!(back.thresholds[0].name, "max-failures");
        // An empty histogram has a count and nothing else.
        assert_eq!(
            serde_json::to_string(&Latencies::of(&histogram())).unwrap(),
            "{\"count\":0}"
        );
        assert_eq!(number(f64::INFINITY), None);
        let t = table(&setup, &s, &v);
        assert!(t.contains("1000 ok, 3 failed"));
        assert!(t.contains("max-failures MISSED"));
    }

    #[test]
    fn latencies_read_in_their_unit() {
        assert_eq!(human_micros(870.0), "870us");
        assert_eq!(human_micros(12_340.0), "12.3ms");
        assert_eq!(human_micros(1_520_000.0), "1.52s");
    }
}
