//! `--report FILE.html`: one self-contained page (no script, no external file) with the
//! run's setup, its summary table and three plots drawn as inline SVG: transfers in flight and
//! completed over time, the percentile distribution of the transfer time, and the time to boot
//! by step (every step of a scenario in one plot). Axes say their unit, time is in seconds,
//! ticks fall on round numbers ([`Axis::linear`]) and the percentile axis reads 50, 90, 99,
//! 99.9 and 99.99 %; the tests parse every plot as XML.
//!
//! Why hand-made SVG rather than a plotting crate: three line charts are a hundred lines of
//! string formatting, while plotters would add its dependency tree to every CI build of the
//! workspace; the page stays readable in any browser and diffable as text.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::{human_micros, table, Setup, Stats};

/// Plot size in SVG units.
const W: f64 = 640.0;
const H: f64 = 240.0;
/// Margins for the axes' labels.
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 28.0;

/// Line colours, one per series.
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// The percentiles of the distribution plots, as quantiles (the x axis is `1 / (1 - q)`).
const QUANTILES: [f64; 9] = [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999];

/// The page.
pub fn page(setup: &Setup, stats: &Stats) -> String {
    let mut o = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>loadgen report</title>\n\
         <style>body{font:14px sans-serif;max-width:720px;margin:2em auto}\
         pre{background:#f4f4f4;padding:8px;overflow-x:auto}svg{background:#fff;border:1px solid #ccc}\
         text{font:11px sans-serif}</style></head><body>\n",
    );
    let _ = writeln!(
        o,
        "<h1>loadgen: {} from {}</h1>",
        escape(&setup.file),
        escape(&setup.server)
    );
    let _ = writeln!(o, "<pre>{}</pre>", escape(&table(setup, stats, &[])));

    o.push_str("<h2>Transfers over time</h2>\n");
    match stats.spans.as_deref() {
        Some(spans) if !spans.is_empty() => {
            let (in_flight, completed) = timeline(spans);
            let series = [
                ("in flight", in_flight.as_slice()),
                ("completed (cumulative)", completed.as_slice()),
            ];
            let (x_max, y_max) = extent(&series);
            o.push_str(&chart(
                &series,
                &Axis::linear("time since the start (s)", x_max),
                &Axis::linear("transfers", y_max),
            ));
        }
        _ => o.push_str("<p>No transfer ended.</p>\n"),
    }

    o.push_str("<h2>Transfer time by percentile</h2>\n");
    o.push_str(&percentiles(&[
        ("transfer", &stats.transfer),
        ("first block", &stats.first_block),
    ]));

    if setup.steps.len() > 1 || setup.arrivals.is_some() {
        o.push_str("<h2>Time to boot, by step</h2>\n");
        let names: Vec<String> = setup
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("step {} done ({})", i + 1, s.file))
            .collect();
        let series: Vec<(&str, &Histogram<u64>)> = names
            .iter()
            .zip(&stats.steps)
            .map(|(n, h)| (n.as_str(), h))
            .collect();
        o.push_str(&percentiles(&series));
    }
    o.push_str("</body></html>\n");
    o
}

/// A plotted line: (x, y) points.
type Line = Vec<(f64, f64)>;

/// Transfers in flight and completed, sampled 200 times over the run, as (seconds, count).
fn timeline(spans: &[super::Span]) -> (Line, Line) {
    let end = spans
        .iter()
        .map(|s| s.end)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    let mut starts: Vec<f64> = spans.iter().map(|s| s.start.as_secs_f64()).collect();
    let mut ends: Vec<f64> = spans.iter().map(|s| s.end.as_secs_f64()).collect();
    starts.sort_by(f64::total_cmp);
    ends.sort_by(f64::total_cmp);
    let samples = 200;
    let (mut flight, mut done) = (Vec::new(), Vec::new());
    for i in 0..=samples {
        let t = end * i as f64 / samples as f64;
        let started = starts.partition_point(|&s| s <= t) as f64;
        let ended = ends.partition_point(|&e| e <= t) as f64;
        flight.push((t, started - ended));
        done.push((t, ended));
    }
    (flight, done)
}

/// A percentile plot of histograms in seconds, x on a log scale of `1 / (1 - q)`, so that
/// 90, 99, 99.9 and 99.99 % are evenly spaced.
fn percentiles(series: &[(&str, &Histogram<u64>)]) -> String {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let points = QUANTILES
                .iter()
                .map(|&q| (log_odds(q), h.value_at_quantile(q) as f64 / 1e6))
                .collect();
            (*name, points)
        })
        .collect();
    if lines.is_empty() {
        return "<p>Nothing measured.</p>\n".to_owned();
    }
    let refs: Vec<(&str, &[(f64, f64)])> = lines.iter().map(|(n, p)| (*n, p.as_slice())).collect();
    let (_, y_max) = extent(&refs);
    let x = Axis {
        label: "percentile".to_owned(),
        max: log_odds(QUANTILES[QUANTILES.len() - 1]),
        ticks: [
            (0.0, "0 %"),
            (0.5, "50 %"),
            (0.9, "90 %"),
            (0.99, "99 %"),
            (0.999, "99.9 %"),
            (0.9999, "99.99 %"),
        ]
        .iter()
        .map(|&(q, label)| (log_odds(q), label.to_owned()))
        .collect(),
    };
    let mut svg = chart(&refs, &x, &Axis::linear("time (s)", y_max));
    let table: Vec<String> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            format!(
                "{}: p50 {}, p99 {}, max {}",
                escape(name),
                human_micros(h.value_at_quantile(0.5) as f64),
                human_micros(h.value_at_quantile(0.99) as f64),
                human_micros(h.max() as f64)
            )
        })
        .collect();
    let _ = writeln!(svg, "<p>{}</p>", table.join("<br>"));
    svg
}

/// Where quantile `q` goes on a percentile axis: `log10(1 / (1 - q))`.
fn log_odds(q: f64) -> f64 {
    (1.0 / (1.0 - q)).log10()
}

/// The largest x and y of the series.
fn extent(series: &[(&str, &[(f64, f64)])]) -> (f64, f64) {
    series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .fold((0.0f64, 0.0f64), |(x, y), &(px, py)| (x.max(px), y.max(py)))
}

/// One axis: its label (with its unit), its extent and its labelled ticks.
#[derive(Debug)]
struct Axis {
    label: String,
    max: f64,
    ticks: Vec<(f64, String)>,
}

impl Axis {
    /// From 0 to a round number at or above `max`, ticked at round steps (1, 2, 2.5 or 5
    /// times a power of ten, 4 to 8 of them), each labelled with the digits its step needs.
    fn linear(label: &str, max: f64) -> Self {
        let max = if max > 0.0 && max.is_finite() {
            max
        } else {
            1.0
        };
        let raw = max / 5.0;
        let power = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * power)
            .find(|&s| s >= raw)
            .unwrap_or(10.0 * power);
        let count = (max / step - 1e-9).ceil().max(1.0) as usize;
        // Digits after the point: those of the step (2.5 needs one more than 2).
        let mut decimals = (-step.log10().floor()).max(0.0) as usize;
        if ((step / power) - 2.5).abs() < 1e-9 && power < 10.0 {
            decimals += 1;
        }
        let ticks = (0..=count)
            .map(|i| {
                let v = step * i as f64;
                (v, format!("{v:.decimals$}"))
            })
            .collect();
        Self {
            label: label.to_owned(),
            max: step * count as f64,
            ticks,
        }
    }
}

/// A line chart of the series on the two axes, with a light grid at every tick.
fn chart<P: AsRef<[(f64, f64)]>>(series: &[(&str, P)], x: &Axis, y: &Axis) -> String {
    let plot_w = W - LEFT - 16.0;
    let plot_h = H - BOTTOM - 8.0;
    let px = |v: f64| LEFT + v / x.max * plot_w;
    let py = |v: f64| 8.0 + plot_h - v / y.max * plot_h;
    let height = H + 16.0 * series.len() as f64;
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" \
         viewBox=\"0 0 {W} {height}\">\n"
    );
    for (v, label) in &x.ticks {
        let _ = writeln!(
            o,
            "<path d=\"M{at:.1} 8V{y0:.1}\" stroke=\"#e4e4e4\"/>\
             <text class=\"tick\" x=\"{at:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\">{}</text>",
            escape(label),
            at = px(*v),
            y0 = py(0.0),
            ty = py(0.0) + 13.0,
        );
    }
    for (v, label) in &y.ticks {
        let _ = writeln!(
            o,
            "<path d=\"M{LEFT} {at:.1}H{x1:.1}\" stroke=\"#e4e4e4\"/>\
             <text class=\"tick\" x=\"{lx}\" y=\"{ty:.1}\" text-anchor=\"end\">{}</text>",
            escape(label),
            at = py(*v),
            x1 = px(x.max),
            lx = LEFT - 4.0,
            ty = py(*v) + 4.0,
        );
    }
    let _ = writeln!(
        o,
        "<path d=\"M{LEFT} 8V{y0:.1}H{x1:.1}\" stroke=\"#333\" fill=\"none\"/>\
         <text x=\"{cx:.1}\" y=\"{ty}\" text-anchor=\"middle\">{xl}</text>\
         <text x=\"12\" y=\"{cy:.1}\" transform=\"rotate(-90 12 {cy:.1})\" text-anchor=\"middle\">{yl}</text>",
        y0 = py(0.0),
        x1 = px(x.max),
        ty = H - 2.0,
        cx = LEFT + plot_w / 2.0,
        cy = 8.0 + plot_h / 2.0,
        xl = escape(&x.label),
        yl = escape(&y.label),
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .as_ref()
            .iter()
            .map(|&(vx, vy)| format!("{:.1},{:.1}", px(vx), py(vy)))
            .collect();
        let _ = writeln!(
            o,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"/>\
             <rect x=\"{LEFT}\" y=\"{ly}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{tx}\" y=\"{ty}\">{}</text>",
            path.join(" "),
            escape(name),
            ly = H + 16.0 * i as f64,
            tx = LEFT + 14.0,
            ty = H + 16.0 * i as f64 + 9.0,
        );
    }
    o.push_str("</svg>\n");
    o
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::super::Span;
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_page_has_its_plots_and_nothing_external() {
        let mut stats = Stats::new();
        let ms = Duration::from_millis;
        stats.spans = Some(vec![
            Span {
                start: ms(0),
                end: ms(100),
                ok: true,
            },
            Span {
                start: ms(50),
                end: ms(300),
                ok: true,
            },
        ]);
        for us in [100_000, 250_000] {
            stats.transfer.record(us).unwrap();
        }
        stats.ok = 2;
        stats.record_step(0, ms(300));
        stats.record_step(1, ms(900));
        let setup = Setup {
            server: "127.0.0.1:69".into(),
            file: "<hall>".into(),
            clients: 2,
            options: "per step".into(),
            mode: "octet",
            profile: None,
            arrivals: Some("2 machines".into()),
            steps: ["a", "b"]
                .iter()
                .map(|f| crate::scenario::StepInfo {
                    file: (*f).into(),
                    profile: "edk2".into(),
                    options: String::new(),
                })
                .collect(),
        };
        let page = page(&setup, &stats);
        assert_eq!(page.matches("<svg").count(), 3, "three plots");
        assert_plots_are_well_formed_and_read_at_a_glance(&page);
        // Timeline: 2 lines; percentiles: the transfer only (no first block); steps: 2.
        assert_eq!(page.matches("<polyline").count(), 2 + 1 + 2);
        assert!(page.contains("&lt;hall&gt;"));
        assert!(page.contains("step 2 done (b)"));
        assert!(!page.contains("<script") && !page.contains("src="));
        let (flight, done) = timeline(stats.spans.as_deref().unwrap());
        assert_eq!(flight.iter().map(|p| p.1).fold(0.0, f64::max), 2.0);
        assert_eq!(done.last().unwrap().1, 2.0);
    }

    /// Every plot parses as XML (an SVG a browser draws), every axis names its unit, every
    /// number on an axis is round (at most three significant digits, no `11594.956`), and the
    /// percentile axis reads 50 / 90 / 99 / 99.9 %.
    fn assert_plots_are_well_formed_and_read_at_a_glance(page: &str) {
        let mut rest = page;
        let mut plots = 0;
        while let Some(start) = rest.find("<svg") {
            let end = rest[start..].find("</svg>").expect("a closed svg") + start + 6;
            let svg = &rest[start..end];
            let doc = roxmltree::Document::parse(svg)
                .unwrap_or_else(|e| panic!("a plot is not well-formed XML ({e}):\n{svg}"));
            let texts: Vec<&str> = doc
                .descendants()
                .filter(|n| n.has_tag_name("text"))
                .filter_map(|n| n.text())
                .collect();
            assert!(
                texts.iter().any(|t| t.ends_with("(s)")),
                "no axis in seconds: {texts:?}"
            );
            for tick in doc
                .descendants()
                .filter(|n| n.attribute("class") == Some("tick"))
            {
                let label = tick.text().expect("a tick has a label");
                let number = label.trim_end_matches(" %");
                let digits = number.chars().filter(char::is_ascii_digit).count();
                let significant = number
                    .trim_start_matches(['0', '.'])
                    .chars()
                    .filter(char::is_ascii_digit)
                    .count();
                assert!(number.parse::<f64>().is_ok(), "tick {label:?}");
                assert!(
                    significant <= 4 && digits <= 6,
                    "tick {label:?} is not round"
                );
            }
            plots += 1;
            rest = &rest[end..];
        }
        assert_eq!(plots, 3);
        for percent in ["50 %", "90 %", "99 %", "99.9 %"] {
            assert!(page.contains(&format!(">{percent}<")), "no {percent} tick");
        }
    }

    #[test]
    fn linear_axes_tick_at_round_numbers() {
        let labels = |max: f64| -> Vec<String> {
            Axis::linear("x", max)
                .ticks
                .into_iter()
                .map(|(_, l)| l)
                .collect()
        };
        assert_eq!(
            labels(11594.956),
            ["0", "2500", "5000", "7500", "10000", "12500"]
        );
        assert_eq!(labels(0.7), ["0.0", "0.2", "0.4", "0.6", "0.8"]);
        assert_eq!(labels(2.0), ["0.0", "0.5", "1.0", "1.5", "2.0"]);
        assert_eq!(labels(9.0), ["0", "2", "4", "6", "8", "10"]);
        assert_eq!(labels(37.0), ["0", "10", "20", "30", "40"]);
        assert_eq!(
            labels(0.0012),
            ["0.00000", "0.00025", "0.00050", "0.00075", "0.00100", "0.00125"]
        );
        assert_eq!(Axis::linear("x", 11594.956).max, 12500.0);
        // Nothing measured still draws an axis.
        assert_eq!(labels(0.0).last().map(String::as_str), Some("1.0"));
    }
}
