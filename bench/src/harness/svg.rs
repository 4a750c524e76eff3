//! A hand-written SVG of the fixed-rate latency percentiles: one panel per (arrangement, load),
//! bars per system for p50, p99 and p99.9 (median over rounds) with min-max whiskers, on a
//! logarithmic microsecond axis. No plotting crate: the figure is simple and this keeps the
//! harness free of font and image dependencies.

use super::report::{Metric, Row};
use super::systems::System;
use std::fmt::Write as _;

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 260.0;
const MARGIN_L: f64 = 60.0;
const MARGIN_B: f64 = 40.0;
const MARGIN_T: f64 = 30.0;
const COLS: usize = 2;

fn color(s: System) -> &'static str {
    match s {
        System::Microstax => "#d62728",
        System::Nginx => "#2ca02c",
        System::Haproxy => "#1f77b4",
        System::Direct => "#7f7f7f",
    }
}

const PCTS: [Metric; 3] = [Metric::P50, Metric::P99, Metric::P999];

/// The plot, or `None` when no fixed-rate load was measured.
pub fn latency_svg(rows: &[Row], title: &str) -> Option<String> {
    let mut panels: Vec<(String, String)> = Vec::new();
    for r in rows.iter().filter(|r| PCTS.contains(&r.metric)) {
        let key = (r.arrangement.clone(), r.load.clone());
        if !panels.contains(&key) {
            panels.push(key);
        }
    }
    if panels.is_empty() {
        return None;
    }
    let all: Vec<f64> = rows
        .iter()
        .filter(|r| PCTS.contains(&r.metric))
        .flat_map(|r| r.cells.values().flat_map(|s| [s.min, s.max]))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor();
    let hi = all
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let rows_n = panels.len().div_ceil(COLS);
    let width = PANEL_W * COLS as f64;
    let height = PANEL_H * rows_n as f64 + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="18" font-size="14">{}</text>"#,
        escape(title)
    );
    legend(&mut s, width);
    for (i, (arr, load)) in panels.iter().enumerate() {
        let x0 = PANEL_W * (i % COLS) as f64;
        let y0 = 40.0 + PANEL_H * (i / COLS) as f64;
        panel(&mut s, rows, arr, load, x0, y0, (lo, hi));
    }
    s.push_str("</svg>\n");
    Some(s)
}

fn legend(s: &mut String, width: f64) {
    for (i, sys) in System::ALL.iter().enumerate() {
        let x = width - 330.0 + 80.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="8" width="10" height="10" fill="{}"/><text x="{}" y="17">{}</text>"#,
            color(*sys),
            x + 14.0,
            sys.label()
        );
    }
}

fn panel(
    s: &mut String,
    rows: &[Row],
    arr: &str,
    load: &str,
    x0: f64,
    y0: f64,
    (lo, hi): (f64, f64),
) {
    let plot_w = PANEL_W - MARGIN_L - 20.0;
    let plot_h = PANEL_H - MARGIN_T - MARGIN_B;
    let px = x0 + MARGIN_L;
    let py = y0 + MARGIN_T;
    let y_of = |v: f64| py + plot_h - (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo) * plot_h;
    let _ = writeln!(
        s,
        r#"<text x="{px}" y="{}" font-size="12">{} · {}</text>"#,
        y0 + 18.0,
        escape(arr),
        escape(load)
    );
    let mut e = lo;
    while e <= hi {
        let y = y_of(10f64.powf(e));
        let _ = writeln!(
            s,
            r##"<line x1="{px}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            px + plot_w,
            px - 4.0,
            y + 4.0,
            us_label(10f64.powf(e))
        );
        e += 1.0;
    }
    let group_w = plot_w / PCTS.len() as f64;
    let bar_w = group_w / (System::ALL.len() as f64 + 1.0);
    for (gi, m) in PCTS.iter().enumerate() {
        let gx = px + group_w * gi as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            py + plot_h + 16.0,
            m.label().trim_end_matches(" us")
        );
        let Some(row) = rows
            .iter()
            .find(|r| r.arrangement == arr && r.load == load && r.metric == *m)
        else {
            continue;
        };
        for (si, sys) in System::ALL.iter().enumerate() {
            let Some(sp) = row.cells.get(sys) else {
                continue;
            };
            let x = gx + bar_w * (si as f64 + 0.5);
            let top = y_of(sp.median);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {:.0} us ({:.0}-{:.0})</title></rect>"#,
                bar_w * 0.9,
                (py + plot_h - top).max(0.0),
                color(*sys),
                sys.label(),
                m.label(),
                sp.median,
                sp.min,
                sp.max
            );
            let cx = x + bar_w * 0.45;
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" x2="{cx:.1}" y1="{:.1}" y2="{:.1}" stroke="black"/>"#,
                y_of(sp.min),
                y_of(sp.max)
            );
        }
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" transform="rotate(-90 {:.1} {:.1})" text-anchor="middle">latency (log)</text>"#,
        x0 + 14.0,
        py + plot_h / 2.0,
        x0 + 14.0,
        py + plot_h / 2.0
    );
}

fn us_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{}s", v / 1e6)
    } else if v >= 1e3 {
        format!("{}ms", v / 1e3)
    } else {
        format!("{v}us")
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
