//! Samples, their summary (median with min and max over rounds), the ratios of MicroStax to the
//! others, and the table as text, markdown and JSON.

use super::systems::System;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One measured value of one round.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub arrangement: String,
    pub load: String,
    pub metric: Metric,
    pub system: System,
    pub round: usize,
    pub value: f64,
}

/// What a value measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Metric {
    #[serde(rename = "req_per_s")]
    Rps,
    #[serde(rename = "cpu_s_per_100k")]
    CpuPer100k,
    #[serde(rename = "p50_us")]
    P50,
    #[serde(rename = "p99_us")]
    P99,
    #[serde(rename = "p999_us")]
    P999,
    #[serde(rename = "errors")]
    Errors,
    /// CPU used on the machine by processes other than the generator, upstream and system
    /// under test, in cores, averaged over the load (another session's work on a shared host).
    #[serde(rename = "foreign_cores")]
    Foreign,
    #[serde(rename = "idle_rss_mib")]
    IdleRss,
    #[serde(rename = "peak_rss_mib")]
    PeakRss,
    /// User-space instructions per request under callgrind (`instructions`).
    #[serde(rename = "instructions_per_req")]
    InstrPerReq,
}

impl Metric {
    /// Column label.
    pub fn label(self) -> &'static str {
        match self {
            Metric::Rps => "req/s",
            Metric::CpuPer100k => "CPU s/100k req",
            Metric::P50 => "p50 us",
            Metric::P99 => "p99 us",
            Metric::P999 => "p99.9 us",
            Metric::Errors => "errors",
            Metric::Foreign => "foreign load (cores)",
            Metric::IdleRss => "idle RSS MiB",
            Metric::PeakRss => "peak RSS MiB",
            Metric::InstrPerReq => "instructions/req (callgrind)",
        }
    }

    fn format(self, v: f64) -> String {
        match self {
            Metric::Rps => format!("{v:.0}"),
            Metric::CpuPer100k => format!("{v:.3}"),
            Metric::P50 | Metric::P99 | Metric::P999 => format!("{v:.0}"),
            Metric::Errors => format!("{v:.0}"),
            Metric::Foreign => format!("{v:.2}"),
            Metric::IdleRss | Metric::PeakRss => format!("{v:.1}"),
            Metric::InstrPerReq => format!("{v:.0}"),
        }
    }
}

/// Median, min and max of a figure over rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// Summary of `v` (`None` if empty).
    pub fn of(v: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// One table row: a figure of one load in one arrangement, for every system.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub arrangement: String,
    pub load: String,
    pub metric: Metric,
    pub cells: BTreeMap<System, Spread>,
    /// MicroStax median over the other system's median.
    pub ratios: BTreeMap<System, f64>,
}

/// Group samples into rows, in the order the samples were first taken.
pub fn summarize(samples: &[Sample]) -> Vec<Row> {
    let mut order: Vec<(String, String, Metric)> = Vec::new();
    let mut values: BTreeMap<(String, String, Metric, System), Vec<f64>> = BTreeMap::new();
    for s in samples {
        let key = (s.arrangement.clone(), s.load.clone(), s.metric);
        if !order.contains(&key) {
            order.push(key);
        }
        values
            .entry((s.arrangement.clone(), s.load.clone(), s.metric, s.system))
            .or_default()
            .push(s.value);
    }
    let mut rows = Vec::new();
    for (arrangement, load, metric) in order {
        let mut cells = BTreeMap::new();
        for sys in System::ALL {
            let key = (arrangement.clone(), load.clone(), metric, sys);
            if let Some(sp) = values.get(&key).and_then(|v| Spread::of(v)) {
                cells.insert(sys, sp);
            }
        }
        if metric == Metric::Errors && cells.values().all(|s| s.max == 0.0) {
            continue;
        }
        let mut ratios = BTreeMap::new();
        let comparable = !matches!(metric, Metric::Foreign | Metric::Errors);
        if let Some(ms) = cells.get(&System::Microstax).filter(|_| comparable) {
            for other in [System::Nginx, System::Haproxy, System::Direct] {
                if let Some(o) = cells.get(&other).filter(|o| o.median != 0.0) {
                    ratios.insert(other, ms.median / o.median);
                }
            }
        }
        rows.push(Row {
            arrangement,
            load,
            metric,
            cells,
            ratios,
        });
    }
    rows
}

fn cell(row: &Row, sys: System) -> String {
    match row.cells.get(&sys) {
        Some(s) if s.n > 1 => format!(
            "{} ({}-{})",
            row.metric.format(s.median),
            row.metric.format(s.min),
            row.metric.format(s.max)
        ),
        Some(s) => row.metric.format(s.median),
        None => "-".into(),
    }
}

fn ratio(row: &Row, other: System) -> String {
    row.ratios
        .get(&other)
        .map_or("-".into(), |r| format!("{r:.2}"))
}

const HEAD: [&str; 10] = [
    "arrangement",
    "load",
    "metric",
    "microstax",
    "nginx",
    "haproxy",
    "direct",
    "MS/nginx",
    "MS/haproxy",
    "MS/direct",
];

fn columns(row: &Row) -> [String; 10] {
    [
        row.arrangement.clone(),
        row.load.clone(),
        row.metric.label().to_string(),
        cell(row, System::Microstax),
        cell(row, System::Nginx),
        cell(row, System::Haproxy),
        cell(row, System::Direct),
        ratio(row, System::Nginx),
        ratio(row, System::Haproxy),
        ratio(row, System::Direct),
    ]
}

/// The table with aligned columns, for the terminal.
pub fn text_table(rows: &[Row]) -> String {
    let body: Vec<[String; 10]> = rows.iter().map(columns).collect();
    let mut width = HEAD.map(str::len);
    for r in &body {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        for (c, w) in cells.iter().zip(width.iter()) {
            let _ = write!(out, "{c:<w$}  ");
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&mut out, &HEAD.map(String::from));
    for r in &body {
        line(&mut out, r);
    }
    out
}

/// The table as markdown.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n", HEAD.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(HEAD.len())));
    for r in rows {
        let _ = writeln!(out, "| {} |", columns(r).join(" | "));
    }
    out
}
