//! Change-to-effect latency: how long from a config change (a file renamed into place, or an
//! admin API write) to the first request served by the new route, over many changes; and the
//! latency of the first request to a new branch with and without prewarming. Everything runs on
//! loopback against the real `microstax` binary and in-process upstreams; every wait is bounded.

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

const TOKEN: &str = "bench-token";
/// Longest wait for one change to take effect.
const CHANGE_DEADLINE: Duration = Duration::from_secs(5);

/// Arguments of `microstax-bench changes`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The microstax binary (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/microstax")]
    pub binary: PathBuf,
    /// Changes per kind (file, API).
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// New branches per first-request measurement.
    #[arg(long, default_value_t = 30)]
    pub new_branches: usize,
    /// Where to write `changes.md` and `changes.json`.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Serve `name` as the body of every response on a new loopback port.
pub(crate) async fn upstream(name: String) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(name);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

struct Running {
    child: tokio::process::Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

/// The proxy and admin addresses from a started `microstax run`'s first line (`... proxy on
/// http://ADDR, admin on http://ADDR`), waiting at most `limit`; the rest of its stdout is drained
/// so it never blocks on a full pipe.
pub(crate) async fn addresses(
    child: &mut tokio::process::Child,
    limit: Duration,
) -> Result<(SocketAddr, SocketAddr)> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(limit, lines.next_line())
        .await
        .with_context(|| format!("microstax printed nothing within {limit:?}"))??
        .context("microstax exited")?;
    let addrs: Vec<SocketAddr> = line
        .split("http://")
        .skip(1)
        .filter_map(|s| s.split([',', ' ']).next()?.parse().ok())
        .collect();
    let [proxy, admin] = addrs[..] else {
        bail!("unexpected first line: {line}")
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((proxy, admin))
}

async fn start(binary: &Path, config: &Path, extra: &[&str]) -> Result<Running> {
    let mut child = tokio::process::Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ])
        .args(extra)
        .env("MICROSTAX_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let (proxy, admin) = addresses(&mut child, Duration::from_secs(20)).await?;
    Ok(Running {
        child,
        proxy,
        admin,
    })
}

pub(crate) async fn request(
    c: &HttpClient,
    method: hyper::Method,
    uri: String,
    headers: &[(&str, &str)],
    body: String,
) -> Result<(u16, String)> {
    let mut b = hyper::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        CHANGE_DEADLINE,
        c.request(b.body(Full::new(Bytes::from(body)))?),
    )
    .await??;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// GET through the proxy with branch `branch` until the answer is `want`; the time it took.
async fn until_served(
    c: &HttpClient,
    proxy: SocketAddr,
    branch: &str,
    want: &str,
    since: Instant,
) -> Result<Duration> {
    loop {
        let (_, body) = request(
            c,
            hyper::Method::GET,
            format!("http://{proxy}/"),
            &[("host", "app"), ("x-microstax-branch", branch)],
            String::new(),
        )
        .await?;
        if body == want {
            return Ok(since.elapsed());
        }
        if since.elapsed() > CHANGE_DEADLINE {
            bail!("a change to {branch} did not take effect within {CHANGE_DEADLINE:?}");
        }
    }
}

fn branch_text(parent: &str, ep: SocketAddr, rev: usize) -> String {
    format!("# revision {rev}\nparent: {parent}\nservices:\n  app: {{endpoints: [\"{ep}\"]}}\n")
}

/// min, median, p99, max in microseconds.
pub(crate) fn stats(v: &mut [Duration]) -> [f64; 4] {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let at = |q: f64| us(v[((v.len() - 1) as f64 * q).round() as usize]);
    [at(0.0), at(0.5), at(0.99), at(1.0)]
}

/// Run the measurement.
pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(measure(args))
}

async fn measure(args: Args) -> Result<()> {
    anyhow::ensure!(
        args.changes > 0 && args.new_branches > 0,
        "counts must be positive"
    );
    let base = upstream("base".into()).await?;
    let a = upstream("a".into()).await?;
    let b = upstream("b".into()).await?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("branches"))?;
    std::fs::write(
        dir.path().join("org.yaml"),
        format!("kind: org\nservices:\n  app:\n    hosts: [app]\n    endpoints: [\"{base}\"]\n"),
    )?;
    let file = dir.path().join("branches/f.yaml");
    std::fs::write(&file, branch_text("baseline", a, 0))?;
    let c: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut ms = start(&args.binary, dir.path(), &[]).await?;

    // file changes: write a temporary file and rename it into place, as deploy tools do
    let mut file_lat = Vec::with_capacity(args.changes);
    for i in 1..=args.changes {
        let (ep, name) = if i % 2 == 1 { (b, "b") } else { (a, "a") };
        let tmp = dir.path().join("branches/.f.yaml.tmp");
        std::fs::write(&tmp, branch_text("baseline", ep, i))?;
        let t0 = Instant::now();
        std::fs::rename(&tmp, &file)?;
        file_lat.push(until_served(&c, ms.proxy, "f", name, t0).await?);
    }
    // API writes: the time includes the PUT round trip
    let mut api_lat = Vec::with_capacity(args.changes);
    let auth = format!("Bearer {TOKEN}");
    for i in 1..=args.changes {
        let (ep, name) = if i % 2 == 1 { (b, "b") } else { (a, "a") };
        let t0 = Instant::now();
        let (status, body) = request(
            &c,
            hyper::Method::PUT,
            format!("http://{}/branches/api", ms.admin),
            &[("authorization", &auth)],
            branch_text("baseline", ep, i),
        )
        .await?;
        anyhow::ensure!(status < 300, "PUT failed: {status} {body}");
        api_lat.push(until_served(&c, ms.proxy, "api", name, t0).await?);
    }
    // first request to a new branch on a new upstream, prewarmed (the default)
    let warm = first_requests(&c, &ms, args.new_branches, "warm").await?;
    let _ = ms.child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), ms.child.wait()).await;
    ms = start(&args.binary, dir.path(), &["--prewarm-connections", "0"]).await?;
    let cold = first_requests(&c, &ms, args.new_branches, "cold").await?;
    let _ = ms.child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), ms.child.wait()).await;

    let rows = [
        (
            "file rename -> first request on the new route",
            stats(&mut file_lat.clone()),
        ),
        (
            "admin PUT -> first request on the new route",
            stats(&mut api_lat.clone()),
        ),
        (
            "first request to a new branch, prewarmed",
            stats(&mut warm.clone()),
        ),
        (
            "first request to a new branch, no prewarm",
            stats(&mut cold.clone()),
        ),
    ];
    let date = String::from_utf8_lossy(
        &std::process::Command::new("date")
            .arg("-u")
            .arg("+%Y-%m-%d %H:%M UTC")
            .output()?
            .stdout,
    )
    .trim()
    .to_string();
    let mut md = format!(
        "# Change-to-effect latency: {date}\n\n{} file changes and {} API writes on one branch; {} new branches per first-request row. Release binary, `--workers 1`, debounce 5 ms, loopback.\n\n| measurement | min us | median us | p99 us | max us |\n|---|---|---|---|---|\n",
        args.changes, args.changes, args.new_branches
    );
    for (name, [min, med, p99, max]) in &rows {
        md.push_str(&format!(
            "| {name} | {min:.0} | {med:.0} | {p99:.0} | {max:.0} |\n"
        ));
    }
    print!("{md}");
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("changes.md"), &md)?;
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|(n, [min, med, p99, max])| serde_json::json!({"measurement": n, "min_us": min, "median_us": med, "p99_us": p99, "max_us": max}))
        .collect();
    std::fs::write(
        args.out.join("changes.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}

/// Create `n` branches, each on a fresh upstream, and time the first request to each.
async fn first_requests(
    c: &HttpClient,
    ms: &Running,
    n: usize,
    tag: &str,
) -> Result<Vec<Duration>> {
    let auth = format!("Bearer {TOKEN}");
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{tag}-{i}");
        let ep = upstream(name.clone()).await?;
        let (status, body) = request(
            c,
            hyper::Method::PUT,
            format!("http://{}/branches/{name}", ms.admin),
            &[("authorization", &auth)],
            branch_text("baseline", ep, 0),
        )
        .await?;
        anyhow::ensure!(status < 300, "PUT failed: {status} {body}");
        let t0 = Instant::now();
        let (_, got) = request(
            c,
            hyper::Method::GET,
            format!("http://{}/", ms.proxy),
            &[("host", "app"), ("x-microstax-branch", &name)],
            String::new(),
        )
        .await?;
        out.push(t0.elapsed());
        anyhow::ensure!(got == name, "new branch {name} answered by {got}");
    }
    Ok(out)
}
