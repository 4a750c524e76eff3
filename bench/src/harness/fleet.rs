//! A fleet on etcd: from an admin write to the publishing planner until all three proxies that
//! follow etcd serve the new route, over many changes, at a small and a large number of branches.
//! A real etcd (Debian's `etcd-server`) is started on loopback ports with a temp data dir and
//! stopped by its pid; the planner and proxies are the real `microstax` binary.

use super::changes::{addresses, request, stats, upstream, HttpClient};
use anyhow::{bail, Context as _, Result};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-token";
/// Longest wait for one change to reach every proxy.
const CHANGE_DEADLINE: Duration = Duration::from_secs(10);

/// Arguments of `microstax-bench fleet`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The microstax binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/microstax")]
    pub binary: PathBuf,
    /// Changes per branch count.
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// Branch counts to measure at.
    #[arg(long, value_delimiter = ',', default_value = "10,10000")]
    pub branches: Vec<usize>,
    /// Where to write `fleet.md` and `fleet.json`.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

struct Etcd {
    child: std::process::Child,
    client: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

async fn start_etcd(c: &HttpClient) -> Result<Etcd> {
    let (client, peer) = (free_port()?, free_port()?);
    let dir = tempfile::tempdir()?;
    let (cu, pu) = (format!("http://{client}"), format!("http://{peer}"));
    let child = std::process::Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &cu, "--advertise-client-urls", &cu])
        .args([
            "--listen-peer-urls",
            &pu,
            "--initial-advertise-peer-urls",
            &pu,
        ])
        .args(["--initial-cluster", &format!("bench={pu}")])
        .args(["--log-level", "error", "--logger", "zap"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcd (apt-get install etcd-server)")?;
    let etcd = Etcd {
        child,
        client,
        _dir: dir,
    };
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = request(
            c,
            hyper::Method::POST,
            format!("{cu}/v3/kv/range"),
            &[],
            r#"{"key":"AA=="}"#.into(),
        )
        .await;
        if matches!(r, Ok((200, _))) {
            return Ok(etcd);
        }
        if Instant::now() > end {
            bail!("etcd did not answer within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Node {
    child: tokio::process::Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

async fn spawn(binary: &Path, args: &[&str]) -> Result<Node> {
    let mut child = tokio::process::Command::new(binary)
        .args(args)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .env("MICROSTAX_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let (proxy, admin) = addresses(&mut child, Duration::from_secs(60)).await?;
    Ok(Node {
        child,
        proxy,
        admin,
    })
}

fn branch_text(ep: SocketAddr, rev: usize) -> String {
    format!("# revision {rev}\nparent: baseline\nservices:\n  app: {{endpoints: [\"{ep}\"]}}\n")
}

/// GET `branch` through `proxy` until it answers `want`, bounded by the deadline from `since`.
async fn until_served(
    c: &HttpClient,
    proxy: SocketAddr,
    branch: &str,
    want: &str,
    since: Instant,
) -> Result<()> {
    loop {
        let r = request(
            c,
            hyper::Method::GET,
            format!("http://{proxy}/"),
            &[("host", "app"), ("x-microstax-branch", branch)],
            String::new(),
        )
        .await?;
        if r.1 == want {
            return Ok(());
        }
        if since.elapsed() > CHANGE_DEADLINE {
            bail!("a change to {branch} did not reach {proxy} within {CHANGE_DEADLINE:?}");
        }
    }
}

/// Run the measurement.
pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(measure(args))
}

/// One row: branch count, then min, median, p99, max in microseconds, and the start-up time
/// until all three proxies served.
type Row = (usize, [f64; 4], Duration);

async fn measure(args: Args) -> Result<()> {
    anyhow::ensure!(args.changes > 0, "the change count must be positive");
    let c: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut rows: Vec<Row> = Vec::new();
    for &n in &args.branches {
        rows.push(at(&args, &c, n).await?);
    }
    let date = String::from_utf8_lossy(
        &std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()?
            .stdout,
    )
    .trim()
    .to_string();
    let mut md = format!(
        "# Fleet on etcd: {date}\n\nOne planner (`--publish`), three proxies (`--source`), one real etcd 3.4, all on loopback, release binary, `--workers 1`. Per row, {} admin writes to one branch alternate its endpoint; each is timed from the write until all three proxies answer from the new endpoint (polled one after the other).\n\n| branches | min us | median us | p99 us | max us | start until all 3 serve, ms |\n|---|---|---|---|---|---|\n",
        args.changes
    );
    for (n, [min, med, p99, max], start) in &rows {
        md.push_str(&format!(
            "| {n} | {min:.0} | {med:.0} | {p99:.0} | {max:.0} | {} |\n",
            start.as_millis()
        ));
    }
    print!("{md}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("fleet.md"), &md)?;
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|(n, [min, med, p99, max], start)| serde_json::json!({"branches": n, "min_us": min, "median_us": med, "p99_us": p99, "max_us": max, "start_ms": start.as_millis() as u64}))
        .collect();
    std::fs::write(
        args.out.join("fleet.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}

async fn at(args: &Args, c: &HttpClient, branches: usize) -> Result<Row> {
    let etcd = start_etcd(c).await?;
    let base = upstream("base".into()).await?;
    let a = upstream("a".into()).await?;
    let b = upstream("b".into()).await?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("branches"))?;
    std::fs::write(
        dir.path().join("org.yaml"),
        format!("kind: org\nservices:\n  app:\n    hosts: [app]\n    endpoints: [\"{base}\"]\n"),
    )?;
    for i in 1..branches {
        std::fs::write(
            dir.path().join(format!("branches/b{i}.yaml")),
            branch_text(base, 0),
        )?;
    }
    std::fs::write(dir.path().join("branches/f.yaml"), branch_text(a, 0))?;
    let url = format!("etcd://{}/bench", etcd.client);
    let t0 = Instant::now();
    let config = dir.path().to_str().context("utf-8 path")?;
    let planner = spawn(
        &args.binary,
        &["run", "--config", config, "--publish", &url],
    )
    .await?;
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(spawn(&args.binary, &["run", "--source", &url]).await?);
    }
    for p in &proxies {
        let since = Instant::now();
        loop {
            let r = request(
                c,
                hyper::Method::GET,
                format!("http://{}/", p.proxy),
                &[("host", "app"), ("x-microstax-branch", "f")],
                String::new(),
            )
            .await?;
            if r.1 == "a" {
                break;
            }
            if since.elapsed() > Duration::from_secs(120) {
                bail!(
                    "proxy {} did not load {branches} branches within 120 s",
                    p.proxy
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let start = t0.elapsed();
    let auth = format!("Bearer {TOKEN}");
    let mut lat = Vec::with_capacity(args.changes);
    for i in 1..=args.changes {
        let (ep, name) = if i % 2 == 1 { (b, "b") } else { (a, "a") };
        let t = Instant::now();
        let (status, body) = request(
            c,
            hyper::Method::PUT,
            format!("http://{}/branches/f", planner.admin),
            &[("authorization", &auth)],
            branch_text(ep, i),
        )
        .await?;
        anyhow::ensure!(status < 300, "PUT failed: {status} {body}");
        for p in &proxies {
            until_served(c, p.proxy, "f", name, t).await?;
        }
        lat.push(t.elapsed());
    }
    for mut p in proxies.into_iter().chain([planner]) {
        let _ = p.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await;
    }
    drop(etcd);
    Ok((branches, stats(&mut lat), start))
}
