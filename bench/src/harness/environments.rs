//! Environments that run, measured: `microstax run --executor process` against a config whose
//! service has a `run:` block (a small python3 HTTP server), on loopback, with real processes.
//! Four figures: branch created -> first request served by its own instance; the same python
//! server's own start-up, started directly, so the rest is what MicroStax adds; a held request
//! waking a scaled-to-zero instance; and, with 1,000 branch files, the time to `/readyz` and the
//! time of one admin write. Every wait is bounded; every process started is stopped by its pid.

use super::changes::{addresses, request, stats, upstream, HttpClient};
use super::procs::free_port;
use anyhow::{bail, ensure, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustix::process::{kill_process, Pid, Signal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token";
/// Longest wait for one instance to start, one wake, or one change to take effect.
const DEADLINE: Duration = Duration::from_secs(20);
/// Longest wait for the 1,000-branch start to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between polls: short against the figures, long enough not to starve the child's start
/// of one of the two cores.
const POLL: Duration = Duration::from_millis(1);

/// The instance: answers every GET with `instance=<id> flag=<FLAG>` (as `tests/environments.rs`).
const CHILD: &str = include_str!("../../../tests/fixtures/instance.py");

/// Arguments of `microstax-bench environments`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The microstax binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/microstax")]
    pub binary: PathBuf,
    /// New branches, each with its own instance.
    #[arg(long, default_value_t = 50)]
    pub branches: usize,
    /// Wakes from zero.
    #[arg(long, default_value_t = 10)]
    pub wakes: usize,
    /// Branch files present at the start of the fleet run.
    #[arg(long, default_value_t = 1000)]
    pub fleet: usize,
    /// Admin writes timed on the fleet.
    #[arg(long, default_value_t = 20)]
    pub writes: usize,
    /// A smoke run: 10 branches, 3 wakes, 200-branch fleet, 5 writes; writes under `quick/`.
    #[arg(long)]
    pub quick: bool,
    /// Where to write `environments.md` and `environments.json`.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

/// A running `microstax run --executor process`.
struct Ms {
    child: tokio::process::Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

/// One row of the report: what was timed, and the samples.
struct Row {
    name: &'static str,
    samples: Vec<Duration>,
}

/// Run the measurement.
pub fn run(mut args: Args) -> Result<()> {
    if args.quick {
        args.branches = 10;
        args.wakes = 3;
        args.fleet = 200;
        args.writes = 5;
        args.out = args.out.join("quick");
    }
    ensure!(
        args.branches > 0 && args.wakes > 0 && args.fleet > 0 && args.writes > 0,
        "counts must be positive"
    );
    ensure!(
        args.binary.exists(),
        "{} not found: run `cargo build --release` first",
        args.binary.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(measure(args))
}

/// Write `org.yaml` (one service `api` with a `run:` block; `extra` goes into the service) and
/// the child's script into `cfg`.
fn write_org(cfg: &Path, base: SocketAddr, extra: &str) -> Result<()> {
    std::fs::create_dir_all(cfg.join("branches"))?;
    let child = cfg.join("child.py");
    std::fs::write(&child, CHILD)?;
    let org = format!(
        "kind: org\nlifecycle: {{grace_ms: 200}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n{extra}    run:\n      command: python3\n      args: [\"{}\", \"{{port}}\", \"{{instance}}\"]\n      start_timeout_ms: 10000\n",
        child.display()
    );
    std::fs::write(cfg.join("org.yaml"), org)?;
    Ok(())
}

fn branch_yaml(flag: &str) -> String {
    format!("parent: baseline\nservices:\n  api:\n    env: {{FLAG: \"{flag}\"}}\n")
}

/// Write `branches/<name>.yaml` under a temporary name and rename it into place; the instant of
/// the rename.
fn write_branch(cfg: &Path, name: &str, flag: &str) -> Result<Instant> {
    let tmp = cfg.join(format!("branches/.{name}.tmp"));
    std::fs::write(&tmp, branch_yaml(flag))?;
    let t0 = Instant::now();
    std::fs::rename(&tmp, cfg.join(format!("branches/{name}.yaml")))?;
    Ok(t0)
}

/// Start `microstax run` with the process executor; the instant just before the spawn.
async fn start(binary: &Path, cfg: &Path, state: &Path) -> Result<(Ms, Instant)> {
    let token_file = state.with_extension("token");
    std::fs::write(&token_file, TOKEN)?;
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .args(["run", "--config"])
        .arg(cfg)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--executor",
            "process",
            "--state-dir",
        ])
        .arg(state)
        .arg("--admin-token-file")
        .arg(&token_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let (proxy, admin) = addresses(&mut child, READY_DEADLINE).await?;
    Ok((
        Ms {
            child,
            proxy,
            admin,
        },
        t0,
    ))
}

/// SIGTERM by pid (the proxy stops its instances before it exits), SIGKILL if it lingers.
async fn stop(mut ms: Ms) {
    if let Some(pid) = ms.child.id().and_then(|p| Pid::from_raw(p as i32)) {
        let _ = kill_process(pid, Signal::TERM);
    }
    if tokio::time::timeout(Duration::from_secs(15), ms.child.wait())
        .await
        .is_err()
    {
        let _ = ms.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), ms.child.wait()).await;
    }
}

/// GET `uri` with `headers`: status, one response header's value, body.
async fn get(
    c: &HttpClient,
    uri: String,
    headers: &[(&str, &str)],
    want_header: &str,
) -> Result<(u16, Option<String>, String)> {
    let mut b = hyper::Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp =
        tokio::time::timeout(DEADLINE, c.request(b.body(Full::new(Bytes::new()))?)).await??;
    let status = resp.status().as_u16();
    let header = resp
        .headers()
        .get(want_header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, header, String::from_utf8_lossy(&bytes).into_owned()))
}

/// The body of a request for `branch` through the proxy.
async fn branch_body(c: &HttpClient, ms: &Ms, branch: &str) -> Result<String> {
    let (_, _, body) = get(
        c,
        format!("http://{}/", ms.proxy),
        &[("host", "api"), ("x-microstax-branch", branch)],
        "",
    )
    .await?;
    Ok(body)
}

/// Poll `branch` until its body satisfies `done`; the time since `since`.
async fn until_body(
    c: &HttpClient,
    ms: &Ms,
    branch: &str,
    since: Instant,
    done: impl Fn(&str) -> bool,
) -> Result<Duration> {
    loop {
        let body = branch_body(c, ms, branch).await?;
        if done(&body) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > DEADLINE {
            bail!("{branch} not served as expected within {DEADLINE:?} (last body: {body})");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn instances(c: &HttpClient, ms: &Ms) -> Result<serde_json::Value> {
    let (_, _, body) = get(c, format!("http://{}/instances", ms.admin), &[], "").await?;
    Ok(serde_json::from_str(&body)?)
}

/// Alive and not a zombie.
fn pid_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

async fn measure(args: Args) -> Result<()> {
    let c: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let base = upstream("base".into()).await?;
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();

    let (created, direct) = branches_created(&args, &c, base, dir.path()).await?;
    rows.push(Row {
        name: "branch file renamed -> first request served by its own instance",
        samples: created,
    });
    rows.push(Row {
        name: "the same python server started directly -> first answer",
        samples: direct,
    });
    let (wakes, cold_ms) = wakes(&args, &c, base, dir.path()).await?;
    rows.push(Row {
        name: "request to a scaled-to-zero instance (held, wakes it)",
        samples: wakes,
    });
    let (ready, puts, served) = fleet(&args, &c, base, dir.path()).await?;
    rows.push(Row {
        name: "fleet: spawn -> /readyz 200",
        samples: vec![ready],
    });
    rows.push(Row {
        name: "fleet: admin PUT of one more branch (round trip)",
        samples: puts,
    });
    rows.push(Row {
        name: "fleet: admin PUT sent -> first request served on the new branch",
        samples: served,
    });
    report(&args, rows, &cold_ms)
}

/// 1. Each new branch file (own env value, so own instance) to the first request its instance
///    answers; 2. after each, one direct start of the same script, so both see the same load.
async fn branches_created(
    args: &Args,
    c: &HttpClient,
    base: SocketAddr,
    dir: &Path,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let cfg = dir.join("new");
    write_org(&cfg, base, "")?;
    let (ms, _) = start(&args.binary, &cfg, &dir.join("new-state")).await?;
    let mut out = Vec::with_capacity(args.branches);
    let mut direct = Vec::with_capacity(args.branches);
    let mut result = Ok(());
    for k in 0..args.branches {
        let name = format!("b{k}");
        let t0 = write_branch(&cfg, &name, &name)?;
        let want = format!("flag={name}");
        match until_body(c, &ms, &name, t0, |b| {
            b.starts_with("instance=") && b.ends_with(&want)
        })
        .await
        {
            Ok(d) => out.push(d),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        match direct_starts(c, cfg.join("child.py"), 1).await {
            Ok(d) => direct.extend(d),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        let v = instances(c, &ms).await?;
        let n = v["instances"].as_array().map_or(0, Vec::len);
        if n != args.branches {
            result = Err(anyhow::anyhow!(
                "expected {} instances, /instances lists {n}",
                args.branches
            ));
        }
    }
    stop(ms).await;
    result.map(|()| (out, direct))
}

/// 2. The child's own start-up: the same script with the same interpreter, spawned by the harness
///    on a free port, to its first answer.
async fn direct_starts(c: &HttpClient, script: PathBuf, n: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let port = free_port()?;
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg("direct")
            .env("FLAG", "direct")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting python3")?;
        let answered = loop {
            let r = get(c, format!("http://127.0.0.1:{port}/"), &[], "").await;
            if matches!(r, Ok((200, _, _))) {
                break Ok(t0.elapsed());
            }
            if t0.elapsed() > DEADLINE {
                break Err(anyhow::anyhow!(
                    "python3 did not answer within {DEADLINE:?}"
                ));
            }
            tokio::time::sleep(POLL).await;
        };
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        out.push(answered?);
    }
    Ok(out)
}

/// 3. `idle_after_s: 1`: wait until the instance's process is gone, then time one request; the
///    latencies and the `x-microstax-cold-start-ms` values.
async fn wakes(
    args: &Args,
    c: &HttpClient,
    base: SocketAddr,
    dir: &Path,
) -> Result<(Vec<Duration>, Vec<f64>)> {
    let cfg = dir.join("wake");
    write_org(
        &cfg,
        base,
        "    idle_after_s: 1\n    policy: {readiness: {policy: hold, hold_ms: 10000}}\n",
    )?;
    write_branch(&cfg, "wake", "wake")?;
    let (ms, _) = start(&args.binary, &cfg, &dir.join("wake-state")).await?;
    let r = wake_loop(args.wakes, c, &ms).await;
    stop(ms).await;
    r
}

async fn wake_loop(n: usize, c: &HttpClient, ms: &Ms) -> Result<(Vec<Duration>, Vec<f64>)> {
    let headers = [("host", "api"), ("x-microstax-branch", "wake")];
    let uri = format!("http://{}/", ms.proxy);
    until_body(c, ms, "wake", Instant::now(), |b| {
        b.starts_with("instance=")
    })
    .await?;
    let (mut lat, mut cold) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut last_pid = None;
    for _ in 0..n {
        // the pid of the running instance (a new one after each wake)
        let t = Instant::now();
        let pid = loop {
            let v = instances(c, ms).await?;
            if let Some(p) = v["instances"][0]["pid"].as_u64() {
                if Some(p) != last_pid && pid_alive(p) {
                    break p;
                }
            }
            ensure!(t.elapsed() < DEADLINE, "no new running instance: {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        last_pid = Some(pid);
        while pid_alive(pid) {
            ensure!(
                t.elapsed() < DEADLINE,
                "instance {pid} not stopped when idle"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t0 = Instant::now();
        let (status, header, body) =
            get(c, uri.clone(), &headers, "x-microstax-cold-start-ms").await?;
        lat.push(t0.elapsed());
        ensure!(
            status == 200 && body.starts_with("instance="),
            "wake answered {status}: {body}"
        );
        let ms_held = header
            .context("no x-microstax-cold-start-ms on the waking request")?
            .parse::<f64>()?;
        cold.push(ms_held);
    }
    Ok((lat, cold))
}

/// 4. `fleet` branch files sharing one instance: spawn to `/readyz`, then admin PUTs of one more
///    branch each (round trip, and to the first request served on it).
async fn fleet(
    args: &Args,
    c: &HttpClient,
    base: SocketAddr,
    dir: &Path,
) -> Result<(Duration, Vec<Duration>, Vec<Duration>)> {
    let cfg = dir.join("fleet");
    write_org(&cfg, base, "")?;
    for k in 0..args.fleet {
        std::fs::write(
            cfg.join(format!("branches/f{k}.yaml")),
            branch_yaml("shared"),
        )?;
    }
    let (ms, t0) = start(&args.binary, &cfg, &dir.join("fleet-state")).await?;
    let r = fleet_writes(args.writes, c, &ms, t0).await;
    stop(ms).await;
    r
}

async fn fleet_writes(
    n: usize,
    c: &HttpClient,
    ms: &Ms,
    t0: Instant,
) -> Result<(Duration, Vec<Duration>, Vec<Duration>)> {
    let ready = loop {
        let r = get(c, format!("http://{}/readyz", ms.admin), &[], "").await;
        if matches!(r, Ok((200, _, _))) {
            break t0.elapsed();
        }
        ensure!(
            t0.elapsed() < READY_DEADLINE,
            "not ready within {READY_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    until_body(c, ms, "f0", Instant::now(), |b| b.starts_with("instance=")).await?;
    let auth = format!("Bearer {TOKEN}");
    let (mut puts, mut served) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for j in 0..n {
        let name = format!("new{j}");
        let t = Instant::now();
        let (status, body) = request(
            c,
            hyper::Method::PUT,
            format!("http://{}/branches/{name}", ms.admin),
            &[("authorization", &auth)],
            branch_yaml("shared"),
        )
        .await?;
        puts.push(t.elapsed());
        ensure!(status < 300, "PUT failed: {status} {body}");
        served.push(until_body(c, ms, &name, t, |b| b.starts_with("instance=")).await?);
    }
    Ok((ready, puts, served))
}

fn date() -> Result<String> {
    Ok(String::from_utf8_lossy(
        &std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()?
            .stdout,
    )
    .trim()
    .to_string())
}

fn report(args: &Args, rows: Vec<Row>, cold_ms: &[f64]) -> Result<()> {
    let ms = |us: f64| us / 1000.0;
    let mut md = format!(
        "# Environments that run: {}\n\nRelease binary, `--executor process`, `--workers 1`, debounce 5 ms, loopback; the instance is a python3 `http.server`. {} new branches (each its own instance), {} wakes (`idle_after_s: 1`, hold), a fleet of {} branch files sharing one instance with {} admin writes.\n\n| measurement | n | min ms | median ms | p99 ms | max ms |\n|---|---|---|---|---|---|\n",
        date()?,
        args.branches,
        args.wakes,
        args.fleet,
        args.writes
    );
    let mut json = Vec::new();
    let mut medians = Vec::new();
    for row in &rows {
        let [min, med, p99, max] = stats(&mut row.samples.clone());
        medians.push((med, p99));
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            row.name,
            row.samples.len(),
            ms(min),
            ms(med),
            ms(p99),
            ms(max)
        ));
        json.push(serde_json::json!({"measurement": row.name, "n": row.samples.len(), "min_us": min, "median_us": med, "p99_us": p99, "max_us": max}));
    }
    let mut cold = cold_ms.to_vec();
    cold.sort_by(f64::total_cmp);
    let cold_med = cold.get(cold.len() / 2).copied().unwrap_or(f64::NAN);
    let (cold_min, cold_max) = (
        cold.first().copied().unwrap_or(f64::NAN),
        cold.last().copied().unwrap_or(f64::NAN),
    );
    md.push_str(&format!(
        "| `x-microstax-cold-start-ms` on the waking request | {} | {cold_min:.0} | {cold_med:.0} | | {cold_max:.0} |\n",
        cold.len()
    ));
    let overhead_med = ms(medians[0].0 - medians[1].0);
    let overhead_p99 = ms(medians[0].1 - medians[1].0);
    md.push_str(&format!(
        "\nNot the instance's own start-up (row 1 minus the median of row 2): median {overhead_med:.1} ms, p99 {overhead_p99:.1} ms (goal < 50 ms: {}).\n",
        if overhead_med < 50.0 { "met at the median" } else { "not met" }
    ));
    json.push(serde_json::json!({"measurement": "overhead: created minus direct start (median)", "median_ms": overhead_med, "p99_ms": overhead_p99}));
    json.push(serde_json::json!({"measurement": "x-microstax-cold-start-ms", "values": cold}));
    print!("{md}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("environments.md"), &md)?;
    std::fs::write(
        args.out.join("environments.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
