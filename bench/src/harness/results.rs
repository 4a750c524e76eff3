//! The results of a `compare` run: what the run was (date, machine, tools, arrangements) and the
//! markdown, JSON and SVG files written from its samples.

use super::compare::Plan;
use super::report::{self, Sample};
use super::svg;
use super::tools::{self, Tools};
use anyhow::Context as _;
use std::path::Path;

/// The machine and the moment of a run.
#[derive(serde::Serialize)]
pub(super) struct Machine {
    pub(super) date_utc: String,
    pub(super) kernel: String,
    pub(super) cpu: String,
    pub(super) cores: usize,
    /// `/proc/loadavg` when the run started: other work on this shared machine shows here.
    pub(super) loadavg_at_start: String,
}

impl Machine {
    pub(super) fn collect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        Machine {
            date_utc: utc_now(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }

    /// `Machine: CPU (N cores), kernel K; load average at start: L.`
    pub(super) fn sentence(&self) -> String {
        format!(
            "Machine: {} ({} cores), kernel {}; load average at start: {}.",
            self.cpu, self.cores, self.kernel, self.loadavg_at_start
        )
    }
}

/// What the report says about the run besides the figures.
#[derive(serde::Serialize)]
pub(super) struct Meta {
    #[serde(flatten)]
    machine: Machine,
    rounds: usize,
    duration_s: u64,
    tools: Vec<(String, String)>,
    arrangements: Vec<(String, String)>,
}

impl Meta {
    pub(super) fn collect(plan: &Plan, tools: &Tools, dir: &Path) -> Meta {
        let mut versions = vec![
            (
                "wrk".to_string(),
                tools::version(&tools.wrk, "--version", dir),
            ),
            (
                "h2load".to_string(),
                tools::version(&tools.h2load, "--version", dir),
            ),
        ];
        if let Some(n) = &tools.nginx {
            versions.push(("nginx".into(), tools::version(n, "-v", dir)));
        }
        if let Some(h) = &tools.haproxy {
            versions.push(("haproxy".into(), tools::version(h, "-v", dir)));
        }
        Meta {
            machine: Machine::collect(),
            rounds: plan.rounds,
            duration_s: plan.duration_s,
            tools: versions,
            arrangements: plan
                .arrangements
                .iter()
                .map(|a| (a.name.to_string(), a.what.to_string()))
                .chain((plan.instructions > 0).then(|| {
                    (
                        super::compare::CALLGRIND_ARRANGEMENT.to_string(),
                        format!(
                            "instructions per request under callgrind (see `instructions`): \
                             1 worker in one process on core 1, {} requests over 8 keep-alive \
                             connections, a table of 1,000 branches; one run, no spread",
                            plan.instructions
                        ),
                    )
                }))
                .collect(),
        }
    }
}

pub(super) fn write_results(
    plan: &Plan,
    meta: &Meta,
    samples: &[Sample],
    rows: &[report::Row],
    notes: &[String],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&plan.out)
        .with_context(|| format!("creating {}", plan.out.display()))?;
    let mut md = format!(
        "# MicroStax compare: {}\n\n{} rounds, {} s per load, medians with (min-max) over rounds. \
         {}\n\n",
        meta.machine.date_utc,
        meta.rounds,
        meta.duration_s,
        meta.machine.sentence()
    );
    for (name, what) in &meta.arrangements {
        md.push_str(&format!("- `{name}`: {what}\n"));
    }
    md.push_str("\nTools: ");
    md.push_str(
        &meta
            .tools
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; "),
    );
    md.push_str("\n\n");
    md.push_str(&report::markdown_table(rows));
    for n in notes {
        md.push_str(&format!("\nNote: {n}\n"));
    }
    let md_path = plan.out.join("compare.md");
    std::fs::write(&md_path, md)?;
    let json =
        serde_json::json!({ "meta": meta, "rows": rows, "samples": samples, "notes": notes });
    std::fs::write(
        plan.out.join("compare.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    if let Some(svg) = svg::latency_svg(
        rows,
        &format!(
            "Fixed-rate latency, {} (median, min-max whiskers)",
            meta.machine.date_utc
        ),
    ) {
        std::fs::write(plan.out.join("latency.svg"), svg)?;
    }
    eprintln!(
        "wrote {} (and compare.json, latency.svg)",
        md_path.display()
    );
    Ok(())
}

/// Current UTC time as `YYYY-MM-DD HH:MM`.
fn utc_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M")
        .to_string()
}
