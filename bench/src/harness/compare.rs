//! `compare`: the side-by-side run. For each arrangement (a CPU placement and worker count) it
//! starts the upstream, then for each round starts each system in turn (MicroStax, nginx,
//! HAProxy, direct: interleaved, so drift on a shared machine spreads over all of them), drives
//! every load of the arrangement through it, samples its CPU time and memory from `/proc`, and
//! stops it. At the end, unless told not to, it measures each proxy's instructions per request
//! under callgrind ([`super::instructions`]) once and adds them as their own row. The summary is
//! printed and written as markdown, JSON and SVG.

use super::grpcload::Shape;
use super::instructions::{self, Callgrind};
use super::load::{self, GenCtx, Load, Proto};
use super::procfs;
use super::procs::{pinned, Proc};
use super::report::{self, Metric, Sample};
use super::results::{write_results, Meta};
use super::systems::{self, Running, StartCtx, System, Upstreams};
use super::tools::{self, Tools};
use anyhow::{bail, Context as _};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Arguments of `compare`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Smoke run: 1 round of 1-second loads, written under bench/results/quick/.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of A B C D (default 3; 1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Seconds per load run (default 5; 1 with --quick).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Systems to run (default all).
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<System>,
    /// Arrangements to run by name (default all): iso-1w, sidecar-1w, shared-2w, h2up-1w.
    #[arg(long, value_delimiter = ',')]
    pub arrangements: Vec<String>,
    /// The microstax binary (default: built with cargo, or found next to this binary).
    #[arg(long)]
    pub microstax: Option<PathBuf>,
    /// Before each system's turn, wait up to this many seconds for the rest of the machine to
    /// go quiet (under 0.2 busy cores for 1 s); 0 disables (default 30; 0 with --quick). The
    /// foreign load is reported anyway.
    #[arg(long)]
    pub quiet_wait: Option<u64>,
    /// Output directory (default bench/results, or bench/results/quick with --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Branches in every system's table: `b1`, `b2` and fillers `br-0`, ... routed like `b2`
    /// (default 2, i.e. no fillers).
    #[arg(long)]
    pub branches: Option<usize>,
    /// Requests per proxy for the callgrind row (instructions per request at one worker with
    /// a table of 1,000 branches, as `instructions` measures it); default 20000 (2000 with
    /// --quick); 0 leaves the row out. Needs valgrind; without it the row is left out, noted.
    #[arg(long)]
    pub instructions: Option<u64>,
    /// Only the loads whose id contains one of these (e.g. `grpc,h2c 2B`; default all); an
    /// arrangement left with no load is skipped.
    #[arg(long, value_delimiter = ',')]
    pub loads: Vec<String>,
}

/// The arrangement and load names of the callgrind row.
pub(super) const CALLGRIND_ARRANGEMENT: &str = "callgrind-1w";
const CALLGRIND_LOAD: &str = "h1 2B, 1k branches";

/// A CPU placement with its worker count and loads.
pub struct Arrangement {
    pub name: &'static str,
    pub what: &'static str,
    pub workers: usize,
    pub gen_cpus: &'static str,
    pub proxy_cpus: &'static str,
    pub upstream_cpus: &'static str,
    pub gen_threads: u32,
    /// The proxies speak HTTP/2 (prior knowledge) to the upstream.
    pub upstream_h2: bool,
    pub loads: Vec<Load>,
}

/// The documented arrangements of a 2-core machine.
pub fn arrangements() -> Vec<Arrangement> {
    let sat = |proto, large| match proto {
        Proto::H1 => Load::Saturation {
            proto,
            large,
            conns: 64,
            streams: 1,
        },
        Proto::H2c => Load::Saturation {
            proto,
            large,
            conns: 8,
            streams: 16,
        },
    };
    // 1k/s over one connection: requests arrive one at a time, 1 ms apart, so p50 is the
    // latency a lone request sees. 10k/s over 10 connections: h2load starts every connection's
    // rate timer at about the same moment, so requests arrive in bursts of up to 10.
    let rate = |proto, rps: u32| Load::Rate {
        proto,
        rps,
        conns: if rps <= 1_000 { 1 } else { 10 },
    };
    // gRPC calls with the same concurrency as the h2c saturation load.
    let grpc = |shape| Load::Grpc {
        shape,
        conns: 8,
        streams: 16,
    };
    vec![
        Arrangement {
            name: "iso-1w",
            what: "1 worker; proxy alone on core 1; load generator and upstream on core 0",
            workers: 1,
            gen_cpus: "0",
            proxy_cpus: "1",
            upstream_cpus: "0",
            gen_threads: 1,
            upstream_h2: false,
            loads: vec![sat(Proto::H1, false), sat(Proto::H1, true), sat(Proto::H2c, false)],
        },
        Arrangement {
            name: "sidecar-1w",
            what: "1 worker; proxy and upstream share core 1 (a sidecar); load generator on core 0",
            workers: 1,
            gen_cpus: "0",
            proxy_cpus: "1",
            upstream_cpus: "1",
            gen_threads: 1,
            upstream_h2: false,
            loads: vec![
                rate(Proto::H1, 1_000),
                rate(Proto::H1, 10_000),
                rate(Proto::H2c, 1_000),
                rate(Proto::H2c, 10_000),
                sat(Proto::H1, false),
            ],
        },
        Arrangement {
            name: "shared-2w",
            what: "2 workers; proxy, upstream (2 threads) and load generator (2 threads) all on cores 0-1",
            workers: 2,
            gen_cpus: "0,1",
            proxy_cpus: "0,1",
            upstream_cpus: "0,1",
            gen_threads: 2,
            upstream_h2: false,
            loads: vec![sat(Proto::H1, false), sat(Proto::H2c, false)],
        },
        Arrangement {
            name: "h2up-1w",
            what: "1 worker; HTTP/2 (h2c prior knowledge) to the upstream; proxy alone on core 1; load generator and upstream on core 0",
            workers: 1,
            gen_cpus: "0",
            proxy_cpus: "1",
            upstream_cpus: "0",
            gen_threads: 1,
            upstream_h2: true,
            loads: vec![
                sat(Proto::H2c, false),
                grpc(Shape::Unary),
                Load::GrpcH2load {
                    conns: 8,
                    streams: 16,
                },
                grpc(Shape::Stream),
                grpc(Shape::Client),
                grpc(Shape::Bidi),
            ],
        },
    ]
}

/// Settings of one run after defaults.
pub(super) struct Plan {
    quiet_wait: u64,
    pub(super) rounds: usize,
    pub(super) duration_s: u64,
    systems: Vec<System>,
    pub(super) arrangements: Vec<Arrangement>,
    pub(super) out: PathBuf,
    branches: usize,
    pub(super) instructions: u64,
}

fn plan(args: &Args) -> anyhow::Result<Plan> {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    let systems = if args.systems.is_empty() {
        System::ALL.to_vec()
    } else {
        args.systems.clone()
    };
    let mut arrs = arrangements();
    if !args.arrangements.is_empty() {
        for a in &args.arrangements {
            if !arrs.iter().any(|x| x.name == a) {
                bail!("unknown arrangement `{a}`: use iso-1w, sidecar-1w, shared-2w or h2up-1w");
            }
        }
        arrs.retain(|x| args.arrangements.iter().any(|a| a == x.name));
    }
    if !args.loads.is_empty() {
        for a in &mut arrs {
            a.loads
                .retain(|l| args.loads.iter().any(|want| l.id().contains(want.as_str())));
        }
        arrs.retain(|a| !a.loads.is_empty());
        if arrs.is_empty() {
            bail!("no load matches --loads {}", args.loads.join(","));
        }
    }
    Ok(Plan {
        quiet_wait: args
            .quiet_wait
            .unwrap_or(if args.quick { 0 } else { 30 })
            .min(600),
        rounds: args
            .rounds
            .unwrap_or(if args.quick { 1 } else { 3 })
            .clamp(1, 50),
        duration_s: args
            .duration
            .unwrap_or(if args.quick { 1 } else { 5 })
            .clamp(1, 600),
        systems: System::ALL
            .into_iter()
            .filter(|s| systems.contains(s))
            .collect(),
        arrangements: arrs,
        branches: args.branches.unwrap_or(2).clamp(2, 100_000),
        instructions: args
            .instructions
            .unwrap_or(if args.quick { 2_000 } else { 20_000 }),
        out: args.out.clone().unwrap_or_else(|| {
            if args.quick {
                results.join("quick")
            } else {
                results
            }
        }),
    })
}

/// Run `compare`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut plan = plan(&args)?;
    let tools = tools::find(
        plan.systems.contains(&System::Nginx),
        plan.systems.contains(&System::Haproxy),
    )?;
    let tmp = tempfile::Builder::new()
        .prefix("microstax-bench-")
        .tempdir()?;
    let mut notes = Vec::new();
    let microstax = if plan.systems.contains(&System::Microstax) {
        match systems::microstax_binary(args.microstax.clone(), tmp.path()) {
            Ok(p) => Some(p),
            Err(e) => {
                let note = format!("MicroStax left out: {e:#}");
                eprintln!("{note}");
                notes.push(note);
                plan.systems.retain(|s| *s != System::Microstax);
                None
            }
        }
    } else {
        None
    };
    let meta = Meta::collect(&plan, &tools, tmp.path());
    eprintln!(
        "{} rounds x {} s per load; systems: {}",
        plan.rounds,
        plan.duration_s,
        plan.systems
            .iter()
            .map(|s| s.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut samples = Vec::new();
    for arr in &plan.arrangements {
        let ctx = RunCtx {
            tools: &tools,
            microstax: microstax.as_deref(),
            tmp: tmp.path(),
            duration_s: plan.duration_s,
            filler_branches: plan.branches.saturating_sub(2),
        };
        run_arrangement(arr, &plan, &ctx, &mut samples, &mut notes)?;
    }
    if plan.instructions > 0 {
        let ctx = RunCtx {
            tools: &tools,
            microstax: microstax.as_deref(),
            tmp: tmp.path(),
            duration_s: plan.duration_s,
            filler_branches: 0,
        };
        callgrind_row(&plan, &ctx, &mut samples, &mut notes)?;
    }
    let rows = report::summarize(&samples);
    println!("\n{}", report::text_table(&rows));
    for n in &notes {
        println!("note: {n}");
    }
    write_results(&plan, &meta, &samples, &rows, &notes)
}

struct RunCtx<'a> {
    tools: &'a Tools,
    microstax: Option<&'a Path>,
    tmp: &'a Path,
    duration_s: u64,
    filler_branches: usize,
}

fn run_arrangement(
    arr: &Arrangement,
    plan: &Plan,
    ctx: &RunCtx,
    samples: &mut Vec<Sample>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let (mut upstream, addrs) =
        start_upstream(ctx.tools, arr.upstream_cpus, arr.workers, arr.name, ctx.tmp)?;
    for round in 1..=plan.rounds {
        for &sys in &plan.systems {
            if plan.quiet_wait > 0 && !wait_quiet(Duration::from_secs(plan.quiet_wait)) {
                eprintln!(
                    "  (machine still busy after {} s; going on)",
                    plan.quiet_wait
                );
            }
            eprintln!(
                "[{}] round {round}/{}: {}",
                arr.name,
                plan.rounds,
                sys.label()
            );
            match run_system(sys, arr, round, addrs, upstream.pid(), ctx, notes) {
                Ok(s) => samples.extend(s),
                Err(e) => {
                    let note = format!("{} {} round {round} failed: {e:#}", arr.name, sys.label());
                    eprintln!("{note}");
                    notes.push(note);
                }
            }
            if upstream.exited()?.is_some() {
                bail!(
                    "the upstream exited during {}:\n{}",
                    arr.name,
                    upstream.output_tail()
                );
            }
        }
    }
    upstream.stop(Duration::from_secs(2));
    Ok(())
}

/// Measure every selected proxy's instructions per request under callgrind, once, and add them
/// as samples of their own row; a missing valgrind or a failed system is noted, not fatal.
fn callgrind_row(
    plan: &Plan,
    ctx: &RunCtx,
    samples: &mut Vec<Sample>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let callgrind = match Callgrind::find() {
        Ok(c) => c,
        Err(e) => {
            let note = format!("callgrind row left out: {e:#}");
            eprintln!("{note}");
            notes.push(note);
            return Ok(());
        }
    };
    let settings = instructions::Settings::with_requests(plan.instructions);
    let (mut upstream, upstreams) = start_upstream(ctx.tools, "0", 1, "callgrind", ctx.tmp)?;
    let env = instructions::Env {
        tools: ctx.tools,
        callgrind: &callgrind,
        microstax: ctx.microstax,
        upstreams,
        tmp: ctx.tmp,
    };
    for &sys in plan.systems.iter().filter(|s| **s != System::Direct) {
        eprintln!(
            "[{CALLGRIND_ARRANGEMENT}] {}: {} requests under callgrind",
            sys.label(),
            settings.requests
        );
        match instructions::measure(sys, &env, &settings) {
            Ok(m) => samples.push(Sample {
                arrangement: CALLGRIND_ARRANGEMENT.to_string(),
                load: CALLGRIND_LOAD.to_string(),
                metric: Metric::InstrPerReq,
                system: sys,
                round: 1,
                value: m.ir_per_request,
            }),
            Err(e) => {
                let note = format!("{CALLGRIND_ARRANGEMENT} {} failed: {e:#}", sys.label());
                eprintln!("{note}");
                notes.push(note);
            }
        }
    }
    upstream.stop(Duration::from_secs(2));
    Ok(())
}

/// Busy cores below which the machine counts as quiet (the idle upstream and this harness
/// stay far below it).
const QUIET_CORES: f64 = 0.2;

/// Wait until the machine's busy CPU over a 1 s window is under [`QUIET_CORES`], or until
/// `max` has passed; returns whether it went quiet. Between systems nothing of this run is
/// working, so what is busy then is other work on the machine.
fn wait_quiet(max: Duration) -> bool {
    let deadline = Instant::now() + max;
    loop {
        let (b0, t0) = (procfs::machine_busy_seconds(), Instant::now());
        // a measurement window, not a synchronisation wait
        std::thread::sleep(Duration::from_secs(1));
        let busy = (procfs::machine_busy_seconds() - b0) / t0.elapsed().as_secs_f64();
        if busy < QUIET_CORES {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// Start the upstream child (`workers` threads) pinned to `cpus`; read its addresses. `name`
/// names its stderr file.
pub(super) fn start_upstream(
    tools: &Tools,
    cpus: &str,
    workers: usize,
    name: &str,
    dir: &Path,
) -> anyhow::Result<(Proc, Upstreams)> {
    let exe = std::env::current_exe()?;
    let mut cmd = pinned(&tools.taskset, cpus, &exe);
    cmd.args(["upstream", "--roles", "baseline,b1,b2", "--workers"])
        .arg(workers.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let stderr = dir.join(format!("upstream-{name}.err"));
    cmd.stderr(std::fs::File::create(&stderr)?);
    let mut proc = Proc::spawn_with("upstream", cmd, dir.join("upstream.none"), stderr)?;
    let out = proc
        .child_mut()
        .and_then(|c| c.stdout.take())
        .context("upstream stdout is not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).map_err(|_| {
        anyhow::anyhow!(
            "the upstream did not report its addresses:\n{}",
            proc.output_tail()
        )
    })?;
    let addr = |role: &str| -> anyhow::Result<std::net::SocketAddr> {
        let v = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(role)?.strip_prefix('='))
            .with_context(|| format!("no `{role}` in upstream line `{line}`"))?;
        Ok(v.parse()?)
    };
    let ups = Upstreams {
        baseline: addr("baseline")?,
        b1: addr("b1")?,
        b2: addr("b2")?,
    };
    Ok((proc, ups))
}

/// Start one system, run every load of the arrangement through it, stop it.
fn run_system(
    sys: System,
    arr: &Arrangement,
    round: usize,
    ups: Upstreams,
    upstream_pid: u32,
    ctx: &RunCtx,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Sample>> {
    let start = StartCtx {
        tools: ctx.tools,
        microstax: ctx.microstax,
        upstreams: ups,
        workers: arr.workers,
        cpus: arr.proxy_cpus,
        tmp: ctx.tmp,
        filler_branches: ctx.filler_branches,
        wrapper: &[],
        start_timeout: systems::START_TIMEOUT,
        upstream_h2: arr.upstream_h2,
    };
    let mut running = systems::start(sys, &start)?;
    let result = drive(&mut running, arr, round, upstream_pid, ctx, notes);
    running.stop();
    result
}

fn drive(
    running: &mut Running,
    arr: &Arrangement,
    round: usize,
    upstream_pid: u32,
    ctx: &RunCtx,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Sample>> {
    let sys = running.system;
    let mut out = Vec::new();
    let mut push = |load: &str, metric: Metric, value: f64| {
        out.push(Sample {
            arrangement: arr.name.to_string(),
            load: load.to_string(),
            metric,
            system: sys,
            round,
            value,
        });
    };
    let gen = GenCtx {
        tools: ctx.tools,
        cpus: arr.gen_cpus,
        threads: arr.gen_threads,
        duration_s: 1,
        dir: ctx.tmp,
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    if let Some(p) = running.proc.as_mut() {
        push(
            "process",
            Metric::IdleRss,
            mib(procfs::vm_kib(&p.tree(), "VmRSS")),
        );
    }
    // Warm-up: fill connection pools and caches; not measured.
    let warm = Load::Saturation {
        proto: Proto::H1,
        large: false,
        conns: 64,
        streams: 1,
    };
    load::run(&warm, running.h1, &gen).context("warm-up")?;
    let gen = GenCtx {
        duration_s: ctx.duration_s,
        ..gen
    };
    for l in &arr.loads {
        let addr = if l.is_h2c() { running.h2c } else { running.h1 };
        let me = std::process::id();
        let (machine0, t0) = (procfs::machine_busy_seconds(), Instant::now());
        let (up0, me0) = (
            procfs::cpu_seconds(&[upstream_pid]),
            procfs::cpu_seconds(&[me]),
        );
        let cpu0 = running
            .proc
            .as_mut()
            .map(|p| procfs::cpu_seconds(&p.tree()));
        let o = load::run(l, addr, &gen).with_context(|| l.id())?;
        let cpu1 = running
            .proc
            .as_mut()
            .map(|p| procfs::cpu_seconds(&p.tree()));
        let (up1, me1) = (
            procfs::cpu_seconds(&[upstream_pid]),
            procfs::cpu_seconds(&[me]),
        );
        let (machine1, wall) = (procfs::machine_busy_seconds(), t0.elapsed());
        // CPU the machine spent on anything but this run: another session's work
        let ours =
            cpu1.unwrap_or(0.0) - cpu0.unwrap_or(0.0) + (up1 - up0) + (me1 - me0) + o.gen_cpu_s;
        let foreign = ((machine1 - machine0) - ours).max(0.0) / wall.as_secs_f64().max(1e-3);
        let id = l.id();
        if let Some(e) = o.first_error.as_deref().filter(|_| o.errors > 0) {
            let note = format!(
                "{} {id} {} round {round}: {} failed calls (not counted as throughput); first: {e}",
                arr.name,
                sys.label(),
                o.errors
            );
            eprintln!("{note}");
            notes.push(note);
        }
        push(&id, Metric::Rps, o.rps);
        push(&id, Metric::Errors, o.errors as f64);
        push(&id, Metric::Foreign, foreign);
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            if o.requests > 0 {
                push(&id, Metric::CpuPer100k, (b - a) / o.requests as f64 * 1e5);
            }
        }
        for (m, v) in [
            (Metric::P50, o.p50_us),
            (Metric::P99, o.p99_us),
            (Metric::P999, o.p999_us),
        ] {
            if let Some(v) = v {
                push(&id, m, v);
            }
        }
    }
    if let Some(p) = running.proc.as_mut() {
        push(
            "process",
            Metric::PeakRss,
            mib(procfs::vm_kib(&p.tree(), "VmHWM")),
        );
        if let Some(st) = p.exited()? {
            bail!(
                "{} exited during the run ({st}):\n{}",
                sys.label(),
                p.output_tail()
            );
        }
    }
    Ok(out)
}
