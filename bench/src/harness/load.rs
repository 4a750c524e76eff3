//! The loads and the generators that drive them: `wrk` (HTTP/1.1 keep-alive, saturation),
//! `h2load` (h2c saturation; and fixed-rate runs in HTTP/1.1 or h2c with `--rps`, whose
//! per-request log gives the latency percentiles). Every request carries
//! `x-microstax-branch: b1`, so every request goes through the branch match.

use super::grpcload::{self, Shape};
use super::procs::{pinned, run_bounded_cpu};
use super::tools::Tools;
use anyhow::{bail, Context as _};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The branch header every generated request carries.
pub const BRANCH_HEADER: &str = "x-microstax-branch: b1";

/// Protocol spoken by the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    H1,
    H2c,
}

/// One load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Load {
    /// As fast as it goes: `conns` connections (`streams` concurrent streams each for h2c).
    Saturation {
        proto: Proto,
        large: bool,
        conns: u32,
        streams: u32,
    },
    /// A fixed total request rate spread over `conns` connections.
    Rate { proto: Proto, rps: u32, conns: u32 },
    /// gRPC calls as fast as they go over h2c: `conns` connections, `streams` calls in flight on
    /// each, every call checked (the harness's own generator, [`super::grpcload`]).
    Grpc {
        shape: Shape,
        conns: u32,
        streams: u32,
    },
    /// Unary gRPC-shaped POSTs from `h2load` (`-d` a file holding one length-prefixed message,
    /// `content-type: application/grpc`, `te: trailers`): a faster generator than
    /// [`Load::Grpc`], but h2load checks only the HTTP status, not `grpc-status`.
    GrpcH2load { conns: u32, streams: u32 },
}

impl Load {
    /// Short id used in tables, e.g. `h1 2B sat` or `h2c 10k/s`.
    pub fn id(&self) -> String {
        let p = |p: &Proto| match p {
            Proto::H1 => "h1",
            Proto::H2c => "h2c",
        };
        match self {
            Load::Saturation { proto, large, .. } => {
                format!("{} {} sat", p(proto), if *large { "16KiB" } else { "2B" })
            }
            Load::Rate { proto, rps, .. } if rps % 1000 == 0 => {
                format!("{} {}k/s", p(proto), rps / 1000)
            }
            Load::Rate { proto, rps, .. } => format!("{} {rps}/s", p(proto)),
            Load::Grpc { shape, .. } => format!("grpc {} sat", shape.label()),
            Load::GrpcH2load { .. } => "grpc unary h2load sat".to_string(),
        }
    }

    /// Whether the load speaks h2c (goes to a system's h2c listener).
    pub fn is_h2c(&self) -> bool {
        matches!(
            self,
            Load::Saturation {
                proto: Proto::H2c,
                ..
            } | Load::Rate {
                proto: Proto::H2c,
                ..
            } | Load::Grpc { .. }
                | Load::GrpcH2load { .. }
        )
    }
}

/// What one generator run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Completed requests in the measured period.
    pub requests: u64,
    /// Requests per second over the measured period.
    pub rps: f64,
    /// Failed requests: socket errors, timeouts and non-2xx answers.
    pub errors: u64,
    /// Latency percentiles in microseconds (fixed-rate loads only).
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    /// CPU seconds the generator itself used.
    pub gen_cpu_s: f64,
    /// gRPC messages received in checked calls (gRPC loads only).
    pub messages: Option<u64>,
    /// The first failure a gRPC load saw, if any.
    pub first_error: Option<String>,
}

/// Where and how long to run a generator.
pub struct GenCtx<'a> {
    pub tools: &'a Tools,
    pub cpus: &'a str,
    pub threads: u32,
    pub duration_s: u64,
    /// Scratch directory for generator output and logs.
    pub dir: &'a Path,
}

/// Extra time a generator gets beyond its duration before it is killed.
const GRACE: Duration = Duration::from_secs(15);

/// Run `load` against `addr`.
pub fn run(load: &Load, addr: SocketAddr, ctx: &GenCtx) -> anyhow::Result<Outcome> {
    match *load {
        Load::Saturation {
            proto: Proto::H1,
            large,
            conns,
            ..
        } => wrk(addr, large, conns, ctx),
        Load::Saturation {
            proto: Proto::H2c,
            large,
            conns,
            streams,
        } => h2load(addr, large, Proto::H2c, conns, streams, None, ctx),
        Load::Rate { proto, rps, conns } => h2load(addr, false, proto, conns, 1, Some(rps), ctx),
        Load::GrpcH2load { conns, streams } => grpc_h2load(addr, conns, streams, ctx),
        Load::Grpc {
            shape,
            conns,
            streams,
        } => grpc(addr, shape, conns, streams, ctx),
    }
}

fn grpc_h2load(
    addr: SocketAddr,
    conns: u32,
    streams: u32,
    ctx: &GenCtx,
) -> anyhow::Result<Outcome> {
    let msg = ctx.dir.join("grpc-unary.bin");
    std::fs::write(&msg, super::upstream::GRPC_MESSAGE)?;
    let mut cmd = pinned(&ctx.tools.taskset, ctx.cpus, &ctx.tools.h2load);
    cmd.arg("-t")
        .arg(ctx.threads.to_string())
        .arg("-c")
        .arg(conns.max(ctx.threads).to_string())
        .arg("-m")
        .arg(streams.max(1).to_string())
        .arg("-D")
        .arg(ctx.duration_s.to_string())
        .arg("-H")
        .arg(BRANCH_HEADER)
        .arg("-H")
        .arg("content-type: application/grpc")
        .arg("-H")
        .arg("te: trailers")
        .arg("-d")
        .arg(&msg)
        .arg(format!("http://{addr}/bench.Bench/Unary"));
    let (out, cpu) = run_bounded_cpu("h2load", cmd, ctx.dir, timeout(ctx))?;
    let mut o = parse_h2load(&out).with_context(|| format!("reading h2load output:\n{out}"))?;
    o.gen_cpu_s = cpu;
    Ok(o)
}

fn grpc(
    addr: SocketAddr,
    shape: Shape,
    conns: u32,
    streams: u32,
    ctx: &GenCtx,
) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe()?;
    let mut cmd = pinned(&ctx.tools.taskset, ctx.cpus, &exe);
    cmd.arg("grpc-load")
        .arg("--addr")
        .arg(addr.to_string())
        .arg("--shape")
        .arg(match shape {
            Shape::Unary => "unary",
            Shape::Stream => "stream",
            Shape::Client => "client",
            Shape::Bidi => "bidi",
        })
        .arg("--conns")
        .arg(conns.max(ctx.threads).to_string())
        .arg("--streams")
        .arg(streams.to_string())
        .arg("--threads")
        .arg(ctx.threads.to_string())
        .arg("--duration")
        .arg(ctx.duration_s.to_string());
    let (out, cpu) = run_bounded_cpu("grpc-load", cmd, ctx.dir, timeout(ctx))?;
    let (mut o, messages, first) =
        grpcload::parse(&out).with_context(|| format!("reading grpc-load output:\n{out}"))?;
    o.gen_cpu_s = cpu;
    o.messages = Some(messages);
    o.first_error = (!first.is_empty()).then_some(first);
    Ok(o)
}

fn url(addr: SocketAddr, large: bool) -> String {
    format!("http://{addr}/{}", if large { "large" } else { "" })
}

fn timeout(ctx: &GenCtx) -> Duration {
    Duration::from_secs(ctx.duration_s) + GRACE
}

fn wrk(addr: SocketAddr, large: bool, conns: u32, ctx: &GenCtx) -> anyhow::Result<Outcome> {
    let mut cmd: Command = pinned(&ctx.tools.taskset, ctx.cpus, &ctx.tools.wrk);
    cmd.arg("-t")
        .arg(ctx.threads.to_string())
        .arg("-c")
        .arg(conns.max(ctx.threads).to_string())
        .arg("-d")
        .arg(format!("{}s", ctx.duration_s))
        .arg("--timeout")
        .arg("5s")
        .arg("-H")
        .arg(BRANCH_HEADER)
        .arg(url(addr, large));
    let (out, cpu) = run_bounded_cpu("wrk", cmd, ctx.dir, timeout(ctx))?;
    let mut o = parse_wrk(&out).with_context(|| format!("reading wrk output:\n{out}"))?;
    o.gen_cpu_s = cpu;
    Ok(o)
}

/// Parse wrk's summary: `N requests in Xs`, `Requests/sec: R`, error lines.
pub fn parse_wrk(out: &str) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    let mut seen = false;
    for line in out.lines().map(str::trim) {
        if let Some(n) = line
            .split(" requests in ")
            .next()
            .filter(|_| line.contains(" requests in "))
        {
            o.requests = n.trim().parse()?;
        } else if let Some(r) = line.strip_prefix("Requests/sec:") {
            o.rps = r.trim().parse()?;
            seen = true;
        } else if let Some(r) = line.strip_prefix("Non-2xx or 3xx responses:") {
            o.errors += r.trim().parse::<u64>()?;
        } else if let Some(r) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in r.split(',') {
                if let Some(n) = part.split_whitespace().nth(1) {
                    o.errors += n.parse::<u64>()?;
                }
            }
        }
    }
    if !seen {
        bail!("no Requests/sec line");
    }
    Ok(o)
}

#[allow(clippy::too_many_arguments)]
fn h2load(
    addr: SocketAddr,
    large: bool,
    proto: Proto,
    conns: u32,
    streams: u32,
    rate: Option<u32>,
    ctx: &GenCtx,
) -> anyhow::Result<Outcome> {
    let log = ctx.dir.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = pinned(&ctx.tools.taskset, ctx.cpus, &ctx.tools.h2load);
    let conns = conns.max(ctx.threads);
    cmd.arg("-t")
        .arg(ctx.threads.to_string())
        .arg("-c")
        .arg(conns.to_string())
        .arg("-m")
        .arg(streams.max(1).to_string())
        .arg("-D")
        .arg(ctx.duration_s.to_string())
        .arg("-H")
        .arg(BRANCH_HEADER);
    if proto == Proto::H1 {
        cmd.arg("--h1");
    }
    if let Some(total) = rate {
        let per_client = (f64::from(total) / f64::from(conns)).max(1.0);
        cmd.arg(format!("--rps={per_client}"))
            .arg(format!("--log-file={}", log.display()));
    }
    cmd.arg(url(addr, large));
    let (out, cpu) = run_bounded_cpu("h2load", cmd, ctx.dir, timeout(ctx))?;
    let mut o = parse_h2load(&out).with_context(|| format!("reading h2load output:\n{out}"))?;
    o.gen_cpu_s = cpu;
    if rate.is_some() {
        let text = std::fs::read_to_string(&log).context("reading the h2load log")?;
        let mut lat = parse_h2load_log(&text);
        if lat.is_empty() {
            bail!("h2load logged no successful request");
        }
        lat.sort_by(f64::total_cmp);
        o.p50_us = Some(percentile(&lat, 0.50));
        o.p99_us = Some(percentile(&lat, 0.99));
        o.p999_us = Some(percentile(&lat, 0.999));
    }
    Ok(o)
}

/// Parse h2load's summary: `finished in Xs, R req/s, ...` and the `requests:` counts.
pub fn parse_h2load(out: &str) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    let mut seen = false;
    for line in out.lines().map(str::trim) {
        if let Some(r) = line.strip_prefix("finished in ") {
            let rps = r.split(", ").nth(1).and_then(|s| s.strip_suffix(" req/s"));
            o.rps = rps.context("no req/s figure")?.parse()?;
            seen = true;
        } else if let Some(r) = line.strip_prefix("requests:") {
            // "N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            for part in r.split(',').map(str::trim) {
                let mut it = part.split_whitespace();
                let (Some(n), Some(what)) = (it.next(), it.next()) else {
                    continue;
                };
                let n: u64 = n.parse()?;
                match what {
                    "succeeded" => o.requests = n,
                    "failed" | "timeout" => o.errors += n,
                    _ => {}
                }
            }
        } else if let Some(r) = line.strip_prefix("status codes:") {
            // "N 2xx, N 3xx, N 4xx, N 5xx": h2load counts 4xx/5xx as succeeded
            for part in r.split(',').map(str::trim) {
                let mut it = part.split_whitespace();
                if let (Some(n), Some("4xx" | "5xx")) = (it.next(), it.next()) {
                    o.errors += n.parse::<u64>()?;
                }
            }
        }
    }
    if !seen {
        bail!("no `finished in` line");
    }
    Ok(o)
}

/// Latencies in microseconds of the 2xx rows of an h2load `--log-file`
/// (`start_us <TAB> status <TAB> duration_us`).
pub fn parse_h2load_log(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let _start = f.next()?;
            let status: u32 = f.next()?.trim().parse().ok()?;
            let us: f64 = f.next()?.trim().parse().ok()?;
            (200..300).contains(&status).then_some(us)
        })
        .collect()
}

/// Nearest-rank percentile of sorted `v` (`q` in 0..=1); `v` must not be empty.
pub fn percentile(v: &[f64], q: f64) -> f64 {
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk() -> anyhow::Result<()> {
        let out = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 10 connections\n  50452 requests in 1.00s, 4.09MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  50398.75\nTransfer/sec:      4.09MB\n";
        let o = parse_wrk(out)?;
        assert_eq!(o.requests, 50452);
        assert_eq!(o.errors, 7);
        assert!((o.rps - 50398.75).abs() < 1e-9);
        Ok(())
    }

    #[test]
    fn parses_h2load() -> anyhow::Result<()> {
        let out = "finished in 1.00s, 81234.00 req/s, 2.00MB/s\nrequests: 81234 total, 81250 started, 81234 done, 81230 succeeded, 4 failed, 4 errored, 0 timeout\nstatus codes: 81228 2xx, 0 3xx, 0 4xx, 2 5xx\n";
        let o = parse_h2load(out)?;
        assert_eq!(o.requests, 81230);
        assert_eq!(o.errors, 6);
        assert!((o.rps - 81234.0).abs() < 1e-9);
        Ok(())
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 500.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert_eq!(parse_h2load_log("1\t200\t35\n2\t502\t9\nbad\n"), vec![35.0]);
    }
}
