//! The benchmark's picture: orders/s and p99 latency against client count,
//! one line per target, as a self-contained SVG (`roomkeeper bench
//! --clients 8,16,32,64,128,256 --plot FILE.svg`). Client counts are on a
//! log₂ axis; each panel's value axis starts at zero (orders/s) or is
//! logarithmic (p99, which spans milliseconds to seconds across peers).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::report::{Status, TargetResult};

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 260.0;
const MARGIN_L: f64 = 64.0;
const MARGIN_T: f64 = 48.0;
const GAP: f64 = 90.0;
const LEGEND_H: f64 = 24.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// One target's measured points: (clients, orders/s, p99 ms), by clients.
type Series = Vec<(usize, f64, f64)>;

/// The measured points per target (label: target and client), in first-seen
/// order. Failed and skipped rounds are left out.
fn series(results: &[TargetResult]) -> Vec<(String, Series)> {
    let mut order: Vec<String> = Vec::new();
    let mut by: BTreeMap<String, Series> = BTreeMap::new();
    for r in results.iter().filter(|r| r.status == Status::Ok) {
        let label = r.target.clone();
        if !by.contains_key(&label) {
            order.push(label.clone());
        }
        by.entry(label)
            .or_default()
            .push((r.clients, r.orders_per_sec, r.p99_ms));
    }
    order
        .into_iter()
        .filter_map(|l| {
            let mut s = by.remove(&l)?;
            s.sort_by_key(|p| p.0);
            Some((l, s))
        })
        .collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round number at or above `v` for an axis top (1, 2, 5 × 10ⁿ).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_count(v: f64) -> String {
    if v >= 1000.0 {
        format!("{}k", (v / 1000.0 * 10.0).round() / 10.0)
    } else if v >= 1.0 {
        format!("{}", v.round())
    } else {
        format!("{v:.2}")
    }
}

struct Axes {
    x0: f64,
    y0: f64,
    min_log2: f64,
    span_log2: f64,
}

impl Axes {
    fn x(&self, clients: usize) -> f64 {
        let l = (clients.max(1) as f64).log2();
        self.x0 + (l - self.min_log2) / self.span_log2 * PANEL_W
    }
}

/// The SVG for `results` (every target at every client count measured), or
/// `None` when nothing was measured.
pub fn svg(results: &[TargetResult], title: &str) -> Option<String> {
    let all = series(results);
    if all.is_empty() {
        return None;
    }
    let counts: Vec<usize> = {
        let mut c: Vec<usize> = all
            .iter()
            .flat_map(|(_, s)| s.iter().map(|p| p.0))
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    };
    let min_log2 = (counts[0].max(1) as f64).log2();
    let max_log2 = (counts[counts.len() - 1].max(1) as f64).log2();
    let span_log2 = (max_log2 - min_log2).max(1.0);
    let width = MARGIN_L + PANEL_W * 2.0 + GAP + 30.0;
    let height = MARGIN_T + PANEL_H + 56.0 + LEGEND_H * all.len().div_ceil(3) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{MARGIN_L}" y="20" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );

    let max_tput = nice_ceiling(
        all.iter()
            .flat_map(|(_, s)| s.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let p99s: Vec<f64> = all
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.2))
        .filter(|v| *v > 0.0)
        .collect();
    let p99_lo = 10f64.powf(
        p99s.iter()
            .copied()
            .fold(f64::MAX, f64::min)
            .max(0.01)
            .log10()
            .floor(),
    );
    let p99_hi = nice_ceiling(p99s.iter().copied().fold(0.0, f64::max)).max(p99_lo * 10.0);

    for (panel, name) in [(0usize, "orders/s"), (1, "p99 latency, ms (log)")] {
        let ax = Axes {
            x0: MARGIN_L + panel as f64 * (PANEL_W + GAP),
            y0: MARGIN_T,
            min_log2,
            span_log2,
        };
        let y_of = |v: f64| -> f64 {
            if panel == 0 {
                ax.y0 + PANEL_H - (v / max_tput) * PANEL_H
            } else {
                let f =
                    (v.max(p99_lo).log10() - p99_lo.log10()) / (p99_hi.log10() - p99_lo.log10());
                ax.y0 + PANEL_H - f * PANEL_H
            }
        };
        let _ = writeln!(
            out,
            r##"<rect x="{}" y="{}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/>"##,
            ax.x0, ax.y0
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-weight="bold">{name}</text>"#,
            ax.x0,
            ax.y0 - 8.0
        );
        // Value grid.
        let ticks: Vec<f64> = if panel == 0 {
            (0..=4).map(|i| max_tput * i as f64 / 4.0).collect()
        } else {
            let mut t = Vec::new();
            let mut v = p99_lo;
            while v <= p99_hi * 1.0001 {
                t.push(v);
                v *= 10.0;
            }
            t
        };
        for t in ticks {
            let y = y_of(t);
            let _ = writeln!(
                out,
                r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                ax.x0,
                ax.x0 + PANEL_W,
                ax.x0 - 6.0,
                y + 4.0,
                fmt_count(t)
            );
        }
        // Client grid.
        for &c in &counts {
            let x = ax.x(c);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{c}</text>"##,
                ax.y0,
                ax.y0 + PANEL_H,
                ax.y0 + PANEL_H + 16.0
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">concurrent clients (log scale)</text>"#,
            ax.x0 + PANEL_W / 2.0,
            ax.y0 + PANEL_H + 34.0
        );
        for (i, (label, s)) in all.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = s
                .iter()
                .map(|p| (ax.x(p.0), y_of(if panel == 0 { p.1 } else { p.2 })))
                .collect();
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                out,
                r#"<polyline class="series" data-target="{}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                escape(label),
                path.join(" ")
            );
            for ((x, y), p) in pts.iter().zip(s) {
                let value = if panel == 0 {
                    format!("{:.0} orders/s", p.1)
                } else {
                    format!("p99 {:.2} ms", p.2)
                };
                let _ = writeln!(
                    out,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"><title>{}, {} clients: {value}</title></circle>"#,
                    escape(label),
                    p.0
                );
            }
        }
    }
    // Legend.
    for (i, (label, _)) in all.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let x = MARGIN_L + (i % 3) as f64 * 300.0;
        let y = MARGIN_T + PANEL_H + 56.0 + (i / 3) as f64 * LEGEND_H;
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="14" height="4" fill="{color}"/><text x="{}" y="{y}">{}</text>"#,
            y - 6.0,
            x + 20.0,
            escape(label)
        );
    }
    out.push_str("</svg>\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(target: &str, clients: usize, tput: f64, p99: f64) -> TargetResult {
        let mut r = TargetResult::empty(target, "steady", "hot", clients);
        r.status = Status::Ok;
        r.orders_per_sec = tput;
        r.p99_ms = p99;
        r
    }

    #[test]
    fn every_target_gets_a_line_in_both_panels_with_its_points_in_client_order() {
        let results = vec![
            point("roomkeeper", 64, 13_000.0, 9.0),
            point("redis", 64, 30_000.0, 4.0),
            point("roomkeeper", 16, 8_000.0, 3.0),
            point("redis", 16, 20_000.0, 1.0),
            point("etcd <3>", 16, 500.0, 400.0),
        ];
        let svg = svg(&results, "hot catalog").expect("an svg");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Three targets, two panels.
        assert_eq!(svg.matches(r#"class="series""#).count(), 6, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 10);
        assert!(svg.contains("etcd &lt;3&gt;") && !svg.contains("etcd <3>"));
        // Points run left to right: 16 clients before 64.
        let rk = svg
            .lines()
            .find(|l| l.contains(r#"data-target="roomkeeper""#))
            .expect("roomkeeper's line");
        let xs: Vec<f64> = rk
            .split("points=\"")
            .nth(1)
            .unwrap_or("")
            .split([' ', '"'])
            .filter_map(|p| p.split(',').next()?.parse().ok())
            .collect();
        assert_eq!(xs.len(), 2, "{rk}");
        assert!(xs[0] < xs[1], "{xs:?}");
        // The higher throughput sits higher (smaller y) in the first panel.
        assert!(svg.contains("redis, 64 clients: 30000 orders/s"));
    }

    #[test]
    fn failed_or_skipped_runs_are_left_out_and_nothing_measured_is_no_picture() {
        let mut failed = point("etcd", 64, 0.0, 0.0);
        failed.status = Status::Failed;
        assert!(svg(&[failed.clone()], "x").is_none());
        let s = svg(&[failed, point("redis", 64, 1.0, 1.0)], "x").expect("svg");
        assert!(!s.contains(r#"data-target="etcd""#));
        assert!(s.contains(r#"data-target="redis""#));
    }

    #[test]
    fn axis_tops_are_round_numbers() {
        assert_eq!(nice_ceiling(13_000.0), 20_000.0);
        assert_eq!(nice_ceiling(30_000.0), 50_000.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(fmt_count(12_500.0), "12.5k");
    }
}
