//! `--report FILE.html`: one self-contained page (no script, no external file) with the
//! run's setup, its summary table and three plots drawn as inline SVG: transfers in flight and
//! completed over time, the percentile distribution of the transfer time, and the time to boot
//! by step.
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
            o.push_str(&chart(
                &[
                    ("in flight", &in_flight),
                    ("completed (cumulative)", &completed),
                ],
                "seconds since the start",
                "transfers",
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

/// A percentile plot of histograms in ms, x on a log scale of `1 / (1 - q)`.
fn percentiles(series: &[(&str, &Histogram<u64>)]) -> String {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let points = QUANTILES
                .iter()
                .map(|&q| {
                    (
                        (1.0 / (1.0 - q)).log10(),
                        h.value_at_quantile(q) as f64 / 1e3,
                    )
                })
                .collect();
            (*name, points)
        })
        .collect();
    if lines.is_empty() {
        return "<p>Nothing measured.</p>\n".to_owned();
    }
    let refs: Vec<(&str, &[(f64, f64)])> = lines.iter().map(|(n, p)| (*n, p.as_slice())).collect();
    let mut svg = chart(
        &refs,
        "percentile (log scale: 0, 90, 99, 99.9, 99.99)",
        "ms",
    );
    // The percentile axis reads better with its percentiles named.
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

/// A line chart of the series, axes from zero to their largest values.
fn chart<P: AsRef<[(f64, f64)]>>(series: &[(&str, P)], x_label: &str, y_label: &str) -> String {
    let all = series.iter().flat_map(|(_, p)| p.as_ref().iter());
    let (x_max, y_max) = all.fold((0.0f64, 0.0f64), |(x, y), &(px, py)| (x.max(px), y.max(py)));
    let (x_max, y_max) = (x_max.max(1e-9), y_max.max(1e-9) * 1.05);
    let plot_w = W - LEFT - 8.0;
    let plot_h = H - BOTTOM - 8.0;
    let px = |x: f64| LEFT + x / x_max * plot_w;
    let py = |y: f64| 8.0 + plot_h - y / y_max * plot_h;
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" viewBox=\"0 0 {W} {}\">\n",
        H + 16.0 * series.len() as f64,
        H + 16.0 * series.len() as f64
    );
    // Axes, with the extremes labelled.
    let _ = writeln!(
        o,
        "<path d=\"M{LEFT} 8V{y0}H{x1}\" stroke=\"#333\" fill=\"none\"/>\
         <text x=\"{lx}\" y=\"14\" text-anchor=\"end\">{ymax:.3}</text>\
         <text x=\"{lx}\" y=\"{y0}\" text-anchor=\"end\">0</text>\
         <text x=\"{x1}\" y=\"{ty}\" text-anchor=\"end\">{xmax:.3}</text>\
         <text x=\"{cx}\" y=\"{ty}\" text-anchor=\"middle\">{xl}</text>\
         <text x=\"12\" y=\"{cy}\" transform=\"rotate(-90 12 {cy})\" text-anchor=\"middle\">{yl}</text>",
        y0 = py(0.0),
        x1 = px(x_max),
        lx = LEFT - 4.0,
        ymax = y_max,
        xmax = x_max,
        ty = H - 8.0,
        cx = LEFT + plot_w / 2.0,
        cy = 8.0 + plot_h / 2.0,
        xl = escape(x_label),
        yl = escape(y_label),
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .as_ref()
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
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
        // Timeline: 2 lines; percentiles: the transfer only (no first block); steps: 2.
        assert_eq!(page.matches("<polyline").count(), 2 + 1 + 2);
        assert!(page.contains("&lt;hall&gt;"));
        assert!(page.contains("step 2 done (b)"));
        assert!(!page.contains("<script") && !page.contains("src="));
        let (flight, done) = timeline(stats.spans.as_deref().unwrap());
        assert_eq!(flight.iter().map(|p| p.1).fold(0.0, f64::max), 2.0);
        assert_eq!(done.last().unwrap().1, 2.0);
    }
}
