//! `--baseline OLD.json --max-regression 10%`: this run against a stored one, for performance
//! CI.
//!
//! Four figures are compared when both summaries have them: successful transfers per second
//! (higher is better), the p99 transfer time, the p99 time to boot and the time until the whole
//! hall booted (lower is better). A figure worse by more than the allowed percentage is a
//! regression. Summaries of schema 1 (no `schema` field) have only the first two.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// One figure of both runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What it is, with its unit.
    pub name: &'static str,
    /// The baseline's value.
    pub old: f64,
    /// This run's value.
    pub new: f64,
    /// How much worse this run is, in percent (negative: better).
    pub worse_by: f64,
    /// Whether that is beyond the allowed regression.
    pub regressed: bool,
}

/// The comparison of two summaries.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The figures both have.
    pub rows: Vec<Row>,
    /// The allowed regression, in percent.
    pub limit: f64,
}

/// The figures compared: name, where in the JSON, and whether higher is better.
const FIGURES: [(&str, &str, bool); 4] = [
    ("transfers/s", "/transfers_per_s", true),
    ("p99 transfer (ms)", "/transfer_us/p99", false),
    ("p99 time to boot (ms)", "/machines/boot_us/p99", false),
    ("hall booted (s)", "/machines/hall_s", false),
];

/// Compares the JSON summary `new` with the stored `old`, allowing `limit` percent.
pub fn compare(old: &str, new: &str, limit: f64) -> Result<Comparison> {
    let old: Value = serde_json::from_str(old).context("not a loadgen JSON summary")?;
    let new: Value = serde_json::from_str(new).context("this run's summary")?;
    let schema = old.get("schema").and_then(Value::as_u64).unwrap_or(1);
    if schema > u64::from(super::SCHEMA) {
        bail!(
            "schema {schema} is newer than this loadgen's ({})",
            super::SCHEMA
        );
    }
    let mut rows = Vec::new();
    for (name, pointer, higher_is_better) in FIGURES {
        let value = |v: &Value| {
            v.pointer(pointer).and_then(Value::as_f64).map(|x| {
                if pointer.ends_with("_us/p99") {
                    x / 1e3
                } else {
                    x
                }
            })
        };
        let (Some(old), Some(new)) = (value(&old), value(&new)) else {
            continue;
        };
        // A figure the baseline did not measure (no boot, an empty histogram) compares to
        // nothing.
        if old <= 0.0 {
            continue;
        }
        let worse_by = if higher_is_better {
            (old - new) / old * 100.0
        } else {
            (new - old) / old * 100.0
        };
        rows.push(Row {
            name,
            old,
            new,
            worse_by,
            regressed: worse_by > limit,
        });
    }
    if rows.is_empty() {
        bail!("no figure to compare (did the baseline run succeed?)");
    }
    Ok(Comparison { rows, limit })
}

impl Comparison {
    /// The names of the figures that regressed.
    pub fn regressions(&self) -> Vec<&'static str> {
        self.rows
            .iter()
            .filter(|r| r.regressed)
            .map(|r| r.name)
            .collect()
    }

    /// The comparison as the summary table prints it.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<24}{:>12}{:>12}{:>10}  baseline (regression beyond {}%)\n",
            "baseline", "old", "new", "worse", self.limit
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<24}{:>12.2}{:>12.2}{:>9.1}%  {}",
                r.name,
                r.old,
                r.new,
                r.worse_by,
                if r.regressed { "REGRESSED" } else { "ok" }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(rate: f64, p99_us: u64, boot_p99_us: u64, hall: f64) -> String {
        format!(
            r#"{{"schema": 2, "transfers_per_s": {rate}, "transfer_us": {{"count": 5, "p99": {p99_us}}},
               "machines": {{"boot_us": {{"count": 5, "p99": {boot_p99_us}}}, "hall_s": {hall}}}}}"#
        )
    }

    #[test]
    fn each_figure_is_judged_in_its_direction() {
        let old = summary(1000.0, 20_000, 900_000, 10.0);
        let same = compare(&old, &summary(1000.0, 20_000, 900_000, 10.0), 10.0).unwrap();
        assert_eq!(same.rows.len(), 4);
        assert!(same.regressions().is_empty());
        // Faster and quicker is never a regression.
        let better = compare(&old, &summary(2000.0, 10_000, 500_000, 5.0), 10.0).unwrap();
        assert!(better.regressions().is_empty());
        assert!(better.rows[0].worse_by < 0.0);
        // 15 % fewer transfers a second and a 20 % longer hall, against 10 %.
        let worse = compare(&old, &summary(850.0, 21_000, 900_000, 12.0), 10.0).unwrap();
        assert_eq!(worse.regressions(), ["transfers/s", "hall booted (s)"]);
        assert!(worse.table().contains("REGRESSED"));
        assert!((worse.rows[1].new - 21.0).abs() < 1e-9, "p99 in ms");
    }

    #[test]
    fn schema_1_compares_what_it_has_and_garbage_is_an_error() {
        let v1 = r#"{"transfers_per_s": 500, "transfer_us": {"count": 1, "p99": 1000}}"#;
        let c = compare(v1, &summary(500.0, 1000, 9, 1.0), 10.0).unwrap();
        assert_eq!(c.rows.len(), 2);
        assert!(compare("not json", v1, 10.0).is_err());
        assert!(compare(r#"{"schema": 99}"#, v1, 10.0).is_err());
        assert!(compare("{}", v1, 10.0).is_err());
    }
}
