//! `instructions`: user-space instructions per proxied request under callgrind, a CPU figure
//! that does not swing with the load of a shared machine as CPU time does. Each proxy runs as
//! one process with one worker under `valgrind --tool=callgrind`, with a table of 1,000 branches.
//! The harness's own HTTP/1.1 client ([`super::h1client`]) sends a warm-up over keep-alive
//! connections; the counters are zeroed (`callgrind_control -z`); a fixed count of requests with
//! `x-microstax-branch: b1` goes over the same connections; the counters are dumped
//! (`callgrind_control -d`), and the dump's total Ir over the count is the figure. A second
//! window with no requests gives the proxy's idle instructions per second, so a reader can see
//! how much of the figure is time- rather than request-driven. Every wait has a deadline; every
//! process is stopped by its pid.

use super::compare::start_upstream;
use super::h1client::Clients;
use super::load::parse_h2load;
use super::procfs;
use super::procs::{pinned, run_bounded, run_bounded_cpu};
use super::results::Machine;
use super::systems::{self, Running, StartCtx, System, Upstreams};
use super::tools::{self, which, Tools};
use anyhow::{bail, Context as _};
use serde::Serialize;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Arguments of `microstax-bench instructions`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Measured requests per system.
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,
    /// Requests before the counters are zeroed (connections, pools, caches and valgrind's
    /// translations warm up).
    #[arg(long, default_value_t = 2_000)]
    pub warmup: u64,
    /// Keep-alive connections the requests are spread over.
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// Count h2c requests (HTTP/2 by prior knowledge, from `h2load`: `--conns` connections with
    /// this many streams in flight on each) instead of HTTP/1.1 ones from the harness's client
    #[arg(long)]
    pub h2c_streams: Option<u32>,
    /// Branches in every system's table (`b1`, `b2` and fillers routed like `b2`).
    #[arg(long, default_value_t = 1_000)]
    pub branches: usize,
    /// Also simulate the caches (`--cache-sim=yes`) and report first-level instruction and
    /// data misses per request: two proxies with equal instruction counts can differ in CPU
    /// time by how much code and data each request touches. Slower under valgrind.
    #[arg(long)]
    pub cache_sim: bool,
    /// Systems to measure (default microstax, nginx, haproxy; `direct` has no proxy to count).
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<System>,
    /// The microstax binary (default: built with cargo, or found next to this binary).
    #[arg(long)]
    pub microstax: Option<PathBuf>,
    /// Keep the callgrind dumps under this directory (`<system>/callgrind.out.<pid>.<n>`), e.g.
    /// for `callgrind_annotate`; by default they go to a temporary directory.
    #[arg(long)]
    pub dumps: Option<PathBuf>,
    /// Longest time the measured requests of one system may take, in seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Output directory (default bench/results).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// How one system is measured.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub requests: u64,
    pub warmup: u64,
    pub conns: usize,
    pub branches: usize,
    /// h2c from h2load with this many streams per connection; `None`: HTTP/1.1.
    pub h2c_streams: Option<u32>,
    /// Simulated caches: misses per request are reported too.
    pub cache_sim: bool,
    #[serde(skip)]
    pub timeout: Duration,
    #[serde(skip)]
    pub dumps: Option<PathBuf>,
}

impl Settings {
    /// The defaults of `instructions` with `requests` measured requests (for `compare`).
    pub fn with_requests(requests: u64) -> Settings {
        Settings {
            requests,
            warmup: (requests / 10).max(200),
            conns: 8,
            branches: 1_000,
            h2c_streams: None,
            cache_sim: false,
            timeout: Duration::from_secs(900),
            dumps: None,
        }
    }
}

/// The branch every measured request names; it overrides the one service.
pub const BRANCH: &str = "b1";
/// Proxy, upstream and client placement: the proxy alone on core 1 (as `iso-1w`).
const PROXY_CPUS: &str = "1";
const UPSTREAM_CPUS: &str = "0";
/// How long a system may take to start under valgrind (translation is slow on a busy machine).
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest wait for one `callgrind_control` command, and for its dump file to appear.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);
/// The idle window after the measured requests.
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// valgrind and its control script.
#[derive(Debug, Clone)]
pub struct Callgrind {
    pub valgrind: PathBuf,
    pub control: PathBuf,
}

impl Callgrind {
    /// Find `valgrind` and `callgrind_control`, or name the apt package.
    pub fn find() -> anyhow::Result<Callgrind> {
        match (which("valgrind"), which("callgrind_control")) {
            (Some(valgrind), Some(control)) => Ok(Callgrind { valgrind, control }),
            _ => bail!("valgrind or callgrind_control not found: apt-get install -y valgrind"),
        }
    }

    /// The wrapper that runs a program under callgrind, dumping into `dir`; `cache_sim`
    /// simulates the caches as well.
    fn wrapper(&self, dir: &Path, cache_sim: bool) -> Vec<OsString> {
        let mut out = OsString::from("--callgrind-out-file=");
        out.push(dir.join("callgrind.out.%p"));
        vec![
            self.valgrind.clone().into_os_string(),
            "--tool=callgrind".into(),
            "--dump-instr=no".into(),
            "--vgdb=yes".into(),
            format!("--cache-sim={}", if cache_sim { "yes" } else { "no" }).into(),
            out,
        ]
    }

    /// Run `callgrind_control <flag> <pid>` and check it answered `OK`.
    fn control(&self, flag: &str, pid: u32, dir: &Path) -> anyhow::Result<()> {
        let mut cmd = std::process::Command::new(&self.control);
        cmd.arg(flag).arg(pid.to_string());
        let out = run_bounded("callgrind_control", cmd, dir, CONTROL_TIMEOUT)?;
        if !out.contains("OK") {
            bail!("callgrind_control {flag} {pid} did not answer OK:\n{out}");
        }
        Ok(())
    }
}

/// What was measured for one system.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub system: System,
    pub requests: u64,
    /// Total Ir (instructions executed in user space) of the measured requests' dump.
    pub ir: u64,
    pub ir_per_request: f64,
    /// Ir per second with no requests, over [`IDLE_WINDOW`] after the measured requests.
    pub idle_ir_per_s: f64,
    /// Wall time of the measured requests (under valgrind: tens of times slower than native).
    pub wall_s: f64,
    /// The dump of the measured requests.
    pub dump: PathBuf,
    /// Simulated cache misses per request, with `--cache-sim`.
    pub misses: Option<Misses>,
}

/// First-level cache misses per request under callgrind's cache simulation (its model of
/// this machine's caches): instruction fetches (`I1mr`), data reads (`D1mr`) and writes
/// (`D1mw`), and last-level misses of all three (`ILmr + DLmr + DLmw`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Misses {
    pub i1: f64,
    pub d1_read: f64,
    pub d1_write: f64,
    pub last_level: f64,
}

impl Misses {
    /// From a dump's totals, per request; `None` when it has no cache events.
    pub fn of(t: &CallgrindTotals, requests: u64) -> Option<Misses> {
        let per = |e: &str| t.event(e).map(|v| v as f64 / requests.max(1) as f64);
        Some(Misses {
            i1: per("I1mr")?,
            d1_read: per("D1mr")?,
            d1_write: per("D1mw")?,
            last_level: per("ILmr")? + per("DLmr")? + per("DLmw")?,
        })
    }
}

/// What measuring needs besides the system.
pub struct Env<'a> {
    pub tools: &'a Tools,
    pub callgrind: &'a Callgrind,
    pub microstax: Option<&'a Path>,
    pub upstreams: Upstreams,
    pub tmp: &'a Path,
}

/// Start `sys` under callgrind, warm it up, count the instructions of `settings.requests`
/// requests and of an idle window, stop it.
pub fn measure(sys: System, env: &Env, settings: &Settings) -> anyhow::Result<Measurement> {
    if sys == System::Direct {
        bail!("the direct path has no proxy to count");
    }
    let dir = match &settings.dumps {
        Some(d) => d.join(sys.label()),
        None => env.tmp.join(format!("callgrind-{}", sys.label())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let wrapper = env.callgrind.wrapper(&dir, settings.cache_sim);
    let start = StartCtx {
        tools: env.tools,
        microstax: env.microstax,
        upstreams: env.upstreams,
        workers: 1,
        cpus: PROXY_CPUS,
        tmp: env.tmp,
        filler_branches: settings.branches.saturating_sub(2),
        wrapper: &wrapper,
        start_timeout: START_TIMEOUT,
        upstream_h2: false,
    };
    let mut running = systems::start(sys, &start)?;
    let result = count(&mut running, env.tools, env.callgrind, settings, &dir);
    running.stop();
    result
}

/// Warm `running` up, then count the measured requests and the idle window.
fn count(
    running: &mut Running,
    tools: &Tools,
    cg: &Callgrind,
    settings: &Settings,
    dir: &Path,
) -> anyhow::Result<Measurement> {
    let sys = running.system;
    let pid = running.proc.as_ref().map_or(0, |p| p.pid());
    let mut load = Generator::new(running, tools, settings, dir)?;
    // a proxy may still be busy after it listens (MicroStax's watcher re-reads all 1,000 branch
    // files once at start): that work is not per request
    wait_idle(pid, Instant::now() + START_TIMEOUT).context("after start")?;
    load.run(settings.warmup).context("warm-up")?;
    wait_idle(pid, Instant::now() + START_TIMEOUT).context("after the warm-up")?;
    cg.control("-z", pid, dir)?;
    let t0 = Instant::now();
    load.run(settings.requests)?;
    let wall_s = t0.elapsed().as_secs_f64();
    let (dump, totals) = dump_totals(cg, pid, dir)?;
    let ir = totals.event("Ir").unwrap_or(0);
    cg.control("-z", pid, dir)?;
    let t1 = Instant::now();
    // a measurement window, not a synchronisation wait
    std::thread::sleep(IDLE_WINDOW);
    let (_, idle) = dump_totals(cg, pid, dir)?;
    let idle = idle.event("Ir").unwrap_or(0);
    let idle_ir_per_s = idle as f64 / t1.elapsed().as_secs_f64();
    if let Some(p) = running.proc.as_mut() {
        if let Some(st) = p.exited()? {
            bail!(
                "{} exited during the run ({st}):\n{}",
                sys.label(),
                p.output_tail()
            );
        }
    }
    Ok(Measurement {
        system: sys,
        requests: settings.requests,
        ir,
        ir_per_request: ir as f64 / settings.requests.max(1) as f64,
        idle_ir_per_s,
        wall_s,
        dump,
        misses: Misses::of(&totals, settings.requests),
    })
}

/// The measured requests' source: the harness's HTTP/1.1 client, or `h2load` for h2c.
enum Generator<'a> {
    H1 {
        clients: Clients,
        request: Vec<u8>,
        deadline: Instant,
    },
    H2c {
        addr: std::net::SocketAddr,
        tools: &'a Tools,
        settings: &'a Settings,
        streams: u32,
        dir: &'a Path,
    },
}

impl<'a> Generator<'a> {
    fn new(
        running: &Running,
        tools: &'a Tools,
        settings: &'a Settings,
        dir: &'a Path,
    ) -> anyhow::Result<Generator<'a>> {
        Ok(match settings.h2c_streams {
            None => Generator::H1 {
                clients: Clients::connect(running.h1, settings.conns, START_TIMEOUT)?,
                request: request_bytes(),
                deadline: Instant::now() + settings.timeout,
            },
            Some(streams) => Generator::H2c {
                addr: running.h2c,
                tools,
                settings,
                streams,
                dir,
            },
        })
    }

    /// Send `n` requests, every answer checked (h2c: all of them 2xx, as h2load counts).
    fn run(&mut self, n: u64) -> anyhow::Result<()> {
        match self {
            Generator::H1 {
                clients,
                request,
                deadline,
            } => clients.run(n, request, BRANCH, *deadline),
            Generator::H2c {
                addr,
                tools,
                settings,
                streams,
                dir,
            } => {
                let mut cmd = pinned(&tools.taskset, UPSTREAM_CPUS, &tools.h2load);
                cmd.arg("-n")
                    .arg(n.to_string())
                    .arg("-c")
                    .arg(settings.conns.to_string())
                    .arg("-m")
                    .arg(streams.to_string())
                    .arg("-H")
                    .arg(format!("x-microstax-branch: {BRANCH}"))
                    .arg(format!("http://{addr}/"));
                let (out, _) = run_bounded_cpu("h2load", cmd, dir, settings.timeout)?;
                let o = parse_h2load(&out).with_context(|| format!("h2load said:\n{out}"))?;
                if o.requests != n || o.errors > 0 {
                    bail!(
                        "{} of {n} h2c requests succeeded, {} failed:\n{out}",
                        o.requests,
                        o.errors
                    );
                }
                Ok(())
            }
        }
    }
}

/// Busy cores under which a process counts as idle, and the window it is measured over.
const IDLE_CORES: f64 = 0.05;
const IDLE_PROBE: Duration = Duration::from_millis(500);

/// Wait until `pid` uses under [`IDLE_CORES`] over [`IDLE_PROBE`], failing at `deadline`.
fn wait_idle(pid: u32, deadline: Instant) -> anyhow::Result<()> {
    loop {
        let (c0, t0) = (procfs::cpu_seconds(&[pid]), Instant::now());
        // a measurement window, not a synchronisation wait
        std::thread::sleep(IDLE_PROBE);
        let busy = (procfs::cpu_seconds(&[pid]) - c0) / t0.elapsed().as_secs_f64();
        if busy < IDLE_CORES {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("process {pid} still busy ({busy:.2} cores) at the deadline");
        }
    }
}

/// The one request every client sends: the same bytes to every system.
fn request_bytes() -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: app\r\nx-microstax-branch: {BRANCH}\r\n\r\n").into_bytes()
}

/// Dump the counters of `pid` and read the totals of the new dump file (once it has an Ir
/// total).
fn dump_totals(cg: &Callgrind, pid: u32, dir: &Path) -> anyhow::Result<(PathBuf, CallgrindTotals)> {
    let before = last_dump(dir, pid);
    cg.control("-d", pid, dir)?;
    let deadline = Instant::now() + CONTROL_TIMEOUT;
    loop {
        // the file is written before callgrind_control answers; poll in case it is not whole yet
        if let Some((n, path)) =
            last_dump(dir, pid).filter(|d| Some(d.0) > before.as_ref().map(|b| b.0))
        {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Ok(t) = parse_callgrind(&text) {
                if t.event("Ir").is_some() {
                    return Ok((path, t));
                }
            }
            if Instant::now() >= deadline {
                bail!("dump {n} of {pid} ({}) has no Ir total", path.display());
            }
        } else if Instant::now() >= deadline {
            bail!("callgrind wrote no new dump for {pid} in {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The highest-numbered dump `callgrind.out.<pid>.<n>` in `dir`.
fn last_dump(dir: &Path, pid: u32) -> Option<(u32, PathBuf)> {
    let prefix = format!("callgrind.out.{pid}.");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u32 = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|d| d.0)
}

/// The event names and totals of a callgrind output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallgrindTotals {
    /// From the `events:` line, e.g. `["Ir"]`.
    pub events: Vec<String>,
    /// The `totals:` line (the sum of the file's cost lines), summed over parts if several.
    pub totals: Option<Vec<u64>>,
    /// The `summary:` line of the header.
    pub summary: Option<Vec<u64>>,
}

impl CallgrindTotals {
    /// The total of event `name`: from `totals:`, else from `summary:`.
    pub fn event(&self, name: &str) -> Option<u64> {
        let i = self.events.iter().position(|e| e == name)?;
        self.totals
            .as_ref()
            .or(self.summary.as_ref())
            .and_then(|v| v.get(i).copied())
    }
}

/// Parse the `events:`, `summary:` and `totals:` lines of a callgrind output file.
pub fn parse_callgrind(text: &str) -> anyhow::Result<CallgrindTotals> {
    let numbers = |rest: &str, what: &str| -> anyhow::Result<Vec<u64>> {
        rest.split_whitespace()
            .map(|n| {
                n.parse::<u64>()
                    .with_context(|| format!("`{what}` value `{n}`"))
            })
            .collect()
    };
    let mut events = None;
    let mut totals: Option<Vec<u64>> = None;
    let mut summary = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("events:") {
            events = Some(
                rest.split_whitespace()
                    .map(str::to_string)
                    .collect::<Vec<_>>(),
            );
        } else if let Some(rest) = line.strip_prefix("summary:") {
            summary = Some(numbers(rest, "summary")?);
        } else if let Some(rest) = line.strip_prefix("totals:") {
            let v = numbers(rest, "totals")?;
            totals = Some(match totals {
                None => v,
                Some(t) => t
                    .iter()
                    .zip(v.iter().chain(std::iter::repeat(&0)))
                    .map(|(a, b)| a + b)
                    .collect(),
            });
        }
    }
    let Some(events) = events.filter(|e| !e.is_empty()) else {
        bail!("no `events:` line: not a callgrind output file");
    };
    if totals.is_none() && summary.is_none() {
        bail!("no `totals:` or `summary:` line (the dump is incomplete)");
    }
    Ok(CallgrindTotals {
        events,
        totals,
        summary,
    })
}

/// Run `instructions`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.requests == 0 || args.conns == 0 {
        bail!("--requests and --conns must be at least 1");
    }
    let callgrind = Callgrind::find()?;
    let Some(taskset) = which("taskset") else {
        bail!("taskset not found: apt-get install -y util-linux");
    };
    let mut systems: Vec<System> = if args.systems.is_empty() {
        vec![System::Microstax, System::Nginx, System::Haproxy]
    } else {
        args.systems.clone()
    };
    systems.retain(|s| *s != System::Direct);
    let h2load = match (args.h2c_streams, which("h2load")) {
        (Some(_), None) => bail!("h2load not found: apt-get install -y nghttp2-client"),
        (_, found) => found.unwrap_or_default(),
    };
    let tools = Tools {
        nginx: which("nginx"),
        haproxy: which("haproxy"),
        taskset,
        h2load,
        ..Tools::default()
    };
    let tmp = tempfile::Builder::new()
        .prefix("microstax-bench-cg-")
        .tempdir()?;
    let mut notes = Vec::new();
    let microstax = if systems.contains(&System::Microstax) {
        Some(systems::microstax_binary(
            args.microstax.clone(),
            tmp.path(),
        )?)
    } else {
        None
    };
    let machine = Machine::collect();
    let mut versions = vec![(
        "valgrind".to_string(),
        tools::version(&callgrind.valgrind, "--version", tmp.path()),
    )];
    for (name, path) in [("nginx", &tools.nginx), ("haproxy", &tools.haproxy)] {
        match path {
            Some(p) => versions.push((name.into(), tools::version(p, "-v", tmp.path()))),
            None if systems.iter().any(|s| s.label() == name) => {
                let note = format!("{name} left out: not found (apt-get install -y {name})");
                eprintln!("{note}");
                notes.push(note);
                systems.retain(|s| s.label() != name);
            }
            None => {}
        }
    }
    let settings = Settings {
        requests: args.requests,
        warmup: args.warmup,
        conns: args.conns,
        branches: args.branches.max(2),
        h2c_streams: args.h2c_streams.map(|m| m.max(1)),
        cache_sim: args.cache_sim,
        timeout: Duration::from_secs(args.timeout.clamp(1, 3600)),
        dumps: args.dumps.clone(),
    };
    let (mut upstream, upstreams) =
        start_upstream(&tools, UPSTREAM_CPUS, 1, "instructions", tmp.path())?;
    let env = Env {
        tools: &tools,
        callgrind: &callgrind,
        microstax: microstax.as_deref(),
        upstreams,
        tmp: tmp.path(),
    };
    let mut measured = Vec::new();
    for &sys in &systems {
        eprintln!(
            "[instructions] {}: {} requests after {} warm-up over {} connections, {} branches",
            sys.label(),
            settings.requests,
            settings.warmup,
            settings.conns,
            settings.branches
        );
        match measure(sys, &env, &settings) {
            Ok(m) => {
                eprintln!(
                    "  {:.0} Ir/request ({} Ir), idle {:.0} Ir/s, {:.1} s",
                    m.ir_per_request, m.ir, m.idle_ir_per_s, m.wall_s
                );
                measured.push(m);
            }
            Err(e) => {
                let note = format!("{} failed: {e:#}", sys.label());
                eprintln!("{note}");
                notes.push(note);
            }
        }
    }
    upstream.stop(Duration::from_secs(2));
    let out = args
        .out
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    let md = markdown(&machine, &versions, &settings, &measured, &notes);
    println!("\n{md}");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("instructions.md"), &md)?;
    let json = serde_json::json!({
        "meta": { "machine": machine, "tools": versions, "settings": settings },
        "measurements": measured,
        "ratios_microstax_over": ratios(&measured),
        "notes": notes,
    });
    std::fs::write(
        out.join("instructions.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!("wrote {}", out.join("instructions.md").display());
    if measured.is_empty() {
        bail!("no system was measured");
    }
    Ok(())
}

/// MicroStax's Ir per request over each other system's.
fn ratios(measured: &[Measurement]) -> Vec<(System, f64)> {
    let Some(ms) = measured.iter().find(|m| m.system == System::Microstax) else {
        return Vec::new();
    };
    measured
        .iter()
        .filter(|m| m.system != System::Microstax && m.ir_per_request > 0.0)
        .map(|m| (m.system, ms.ir_per_request / m.ir_per_request))
        .collect()
}

fn markdown(
    machine: &Machine,
    versions: &[(String, String)],
    s: &Settings,
    measured: &[Measurement],
    notes: &[String],
) -> String {
    let mut md = format!(
        "# Instructions per request under callgrind: {}\n\n\
         {} {} GET requests (2-byte answers) after {} of warm-up, over {} keep-alive \
         connections {}, each with `x-microstax-branch: {BRANCH}`; \
         a table of {} branches; one worker in one process, pinned to core {PROXY_CPUS}, under \
         `valgrind --tool=callgrind --dump-instr=no`; counters zeroed after the warm-up \
         (`callgrind_control -z`) and dumped after the last answer (`callgrind_control -d`). \
         Ir is user-space instructions (the kernel's share is not counted). Idle Ir/s: the \
         same process over {} s with no requests. {}\n\nTools: {}\n\n",
        machine.date_utc,
        s.requests,
        if s.h2c_streams.is_some() {
            "h2c (HTTP/2 prior knowledge)"
        } else {
            "HTTP/1.1"
        },
        s.warmup,
        s.conns,
        match s.h2c_streams {
            Some(m) => format!("from `h2load` with {m} streams in flight on each"),
            None => "from the harness's own client".to_string(),
        },
        s.branches,
        IDLE_WINDOW.as_secs(),
        machine.sentence(),
        versions
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let cache = measured.iter().any(|m| m.misses.is_some());
    if cache {
        md.push_str(
            "Caches simulated (`--cache-sim=yes`, callgrind's model of this machine's caches): \
             misses per request of the first-level instruction cache (I1), of first-level data \
             reads and writes (D1r, D1w), and of the last level (LL, all three kinds).\n\n",
        );
    }
    md.push_str("| system | requests | Ir | Ir / request | idle Ir/s | wall s (under valgrind) | MicroStax / system |");
    md.push_str(if cache {
        " I1 miss / req | D1r miss / req | D1w miss / req | LL miss / req |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    } else {
        "\n|---|---|---|---|---|---|---|\n"
    });
    let ratios = ratios(measured);
    for m in measured {
        let ratio = ratios
            .iter()
            .find(|r| r.0 == m.system)
            .map_or("-".to_string(), |r| format!("{:.2}", r.1));
        let _ = write!(
            md,
            "| {} | {} | {} | {:.0} | {:.0} | {:.1} | {ratio} |",
            m.system.label(),
            m.requests,
            m.ir,
            m.ir_per_request,
            m.idle_ir_per_s,
            m.wall_s
        );
        if cache {
            match m.misses {
                Some(c) => {
                    let _ = write!(
                        md,
                        " {:.0} | {:.0} | {:.0} | {:.1} |",
                        c.i1, c.d1_read, c.d1_write, c.last_level
                    );
                }
                None => md.push_str(" - | - | - | - |"),
            }
        }
        md.push('\n');
    }
    for n in notes {
        let _ = write!(md, "\nNote: {n}\n");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape callgrind 3.19 writes for a dump (`callgrind_control -d`), abridged.
    const DUMP: &str = "# callgrind format\nversion: 1\ncreator: callgrind-3.19.0\npid: 4242\ncmd:  nginx -p /tmp/x\npart: 1\n\n\ndesc: I1 cache: \ndesc: Timerange: Basic block 100 - 900\ndesc: Trigger: dump\n\npositions: line\nevents: Ir\nsummary: 680123456\n\n\nob=(3) /usr/lib/x86_64-linux-gnu/libc.so.6\nfl=(220) ???\nfn=(970) epoll_wait\n0 5\n\ntotals: 680123461\n";

    #[test]
    fn callgrind_totals_are_read_from_the_totals_line() -> anyhow::Result<()> {
        let t = parse_callgrind(DUMP)?;
        assert_eq!(t.events, vec!["Ir".to_string()]);
        assert_eq!(t.summary, Some(vec![680_123_456]));
        assert_eq!(t.event("Ir"), Some(680_123_461));
        assert_eq!(t.event("Dr"), None);
        Ok(())
    }

    #[test]
    fn callgrind_several_events_and_summary_only() -> anyhow::Result<()> {
        let t = parse_callgrind("events: Ir Dr Dw\nsummary: 10 20 30\n")?;
        assert_eq!(t.event("Dr"), Some(20));
        assert_eq!(t.event("Dw"), Some(30));
        assert_eq!(t.totals, None);
        Ok(())
    }

    #[test]
    fn cache_misses_per_request_come_from_the_cache_events() -> anyhow::Result<()> {
        // the totals of a real dump with `--cache-sim=yes` (20,000 requests)
        let t = parse_callgrind(
            "events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw\n\
             totals: 353404128 99059678 77151676 22078622 3328382 3258979 22 17834 50\n",
        )?;
        let m = Misses::of(&t, 20_000).context("cache events")?;
        assert_eq!(m.i1, 22078622.0 / 20_000.0);
        assert_eq!(m.d1_read, 3328382.0 / 20_000.0);
        assert_eq!(m.d1_write, 3258979.0 / 20_000.0);
        assert_eq!(m.last_level, (22 + 17834 + 50) as f64 / 20_000.0);
        // a dump without cache simulation has no misses to report
        assert_eq!(Misses::of(&parse_callgrind(DUMP)?, 20_000), None);
        Ok(())
    }

    #[test]
    fn callgrind_totals_of_several_parts_add_up() -> anyhow::Result<()> {
        let t = parse_callgrind("events: Ir\npart: 1\ntotals: 7\npart: 2\ntotals: 5\n")?;
        assert_eq!(t.event("Ir"), Some(12));
        Ok(())
    }

    #[test]
    fn callgrind_bad_files_are_errors() {
        assert!(parse_callgrind("").is_err(), "empty");
        assert!(parse_callgrind("events: Ir\n").is_err(), "no totals yet");
        assert!(
            parse_callgrind("summary: 5\ntotals: 5\n").is_err(),
            "no events"
        );
        assert!(
            parse_callgrind("events: Ir\ntotals: 5x\n").is_err(),
            "not a number"
        );
    }

    #[test]
    fn ratios_are_microstax_over_the_others() {
        let m = |system, ir_per_request| Measurement {
            system,
            requests: 1,
            ir: 0,
            ir_per_request,
            idle_ir_per_s: 0.0,
            wall_s: 0.0,
            dump: PathBuf::new(),
            misses: None,
        };
        let r = ratios(&[m(System::Microstax, 30.0), m(System::Nginx, 20.0)]);
        assert_eq!(r, vec![(System::Nginx, 1.5)]);
        assert!(ratios(&[m(System::Nginx, 20.0)]).is_empty());
    }

    #[test]
    fn every_system_gets_the_same_request() {
        let r = String::from_utf8(request_bytes()).unwrap_or_default();
        assert_eq!(
            r,
            "GET / HTTP/1.1\r\nHost: app\r\nx-microstax-branch: b1\r\n\r\n"
        );
    }
}
