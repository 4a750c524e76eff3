//! The systems under test and how each is started on loopback with the same routing: requests
//! with `x-microstax-branch: b1` (or `b2`) go to that branch's upstream, all others to the
//! baseline upstream. Each system gets its own temporary directory for config, pid and logs,
//! the same worker count, and the same CPU set. A start may add filler branches (`br-0`, ...,
//! routed like `b2`) so the table holds as many branches as a real fleet, and may run the
//! system's program under a wrapper (valgrind) in a single process.

use super::procs::{free_port, pinned, wait_port, Proc};
use super::tools::Tools;
use anyhow::{bail, Context as _};
use microstax_bench::synth;
use serde::Serialize;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// The load generator talks to the b1 upstream itself.
    Direct,
    Nginx,
    Haproxy,
    Microstax,
}

impl System {
    /// Every system, in the order of a round.
    pub const ALL: [System; 4] = [
        System::Microstax,
        System::Nginx,
        System::Haproxy,
        System::Direct,
    ];

    /// Display name.
    pub fn label(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Nginx => "nginx",
            System::Haproxy => "haproxy",
            System::Microstax => "microstax",
        }
    }
}

/// The upstream listeners, one per routing target.
#[derive(Debug, Clone, Copy)]
pub struct Upstreams {
    pub baseline: SocketAddr,
    pub b1: SocketAddr,
    pub b2: SocketAddr,
}

/// What a start needs besides the system.
pub struct StartCtx<'a> {
    pub tools: &'a Tools,
    pub microstax: Option<&'a Path>,
    pub upstreams: Upstreams,
    pub workers: usize,
    pub cpus: &'a str,
    /// Parent of the per-system temporary directories.
    pub tmp: &'a Path,
    /// Branches besides `b1` and `b2`, named `br-0`, `br-1`, ... and routed to the `b2`
    /// upstream, so the table has `2 + filler_branches` branches in every system.
    pub filler_branches: usize,
    /// A program and its arguments to run the system's program under (after `taskset`), e.g.
    /// `valgrind --tool=callgrind ...`; empty for none. With a wrapper nginx runs without a
    /// master process (`master_process off`), so the wrapped process is the one that serves.
    pub wrapper: &'a [OsString],
    /// How long the system may take to listen and to answer each routing probe.
    pub start_timeout: Duration,
    /// Speak HTTP/2 (prior knowledge) to the upstream instead of HTTP/1.1: MicroStax
    /// `policy.protocol: http2`, nginx `grpc_pass` (its only HTTP/2 upstream module), HAProxy
    /// `proto h2` on the server lines.
    pub upstream_h2: bool,
}

impl StartCtx<'_> {
    /// `taskset -c <cpus> [wrapper...] program`.
    fn command(&self, program: &Path) -> Command {
        match self.wrapper.split_first() {
            None => pinned(&self.tools.taskset, self.cpus, program),
            Some((first, rest)) => {
                let mut c = pinned(&self.tools.taskset, self.cpus, Path::new(first));
                c.args(rest).arg(program);
                c
            }
        }
    }

    /// The filler branch names.
    fn fillers(&self) -> impl Iterator<Item = String> {
        (0..self.filler_branches).map(|i| format!("br-{i}"))
    }
}

/// A started system (or the direct path, which starts nothing).
pub struct Running {
    pub system: System,
    /// Where HTTP/1.1 load goes.
    pub h1: SocketAddr,
    /// Where h2c (prior knowledge) load goes.
    pub h2c: SocketAddr,
    pub proc: Option<Proc>,
    _dir: tempfile::TempDir,
}

impl Running {
    /// Stop the system's process (and its workers).
    pub fn stop(mut self) {
        if let Some(p) = self.proc.as_mut() {
            p.stop(Duration::from_secs(3));
        }
    }
}

/// How long a system may take to start listening when run natively.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Start `system`, wait until it listens, and check that it routes the branch header.
pub fn start(system: System, ctx: &StartCtx) -> anyhow::Result<Running> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("{}-", system.label()))
        .tempdir_in(ctx.tmp)?;
    let mut running = match system {
        System::Direct => Running {
            system,
            h1: ctx.upstreams.b1,
            h2c: ctx.upstreams.b1,
            proc: None,
            _dir: dir,
        },
        System::Nginx => start_nginx(ctx, dir)?,
        System::Haproxy => start_haproxy(ctx, dir)?,
        System::Microstax => start_microstax(ctx, dir)?,
    };
    let deadline = Instant::now() + ctx.start_timeout;
    if let Some(p) = running.proc.as_mut() {
        wait_port(running.h1, p, deadline)?;
        wait_port(running.h2c, p, deadline)?;
    }
    check_routing(&running, ctx)
        .with_context(|| format!("{} does not route as configured", system.label()))?;
    Ok(running)
}

fn start_nginx(ctx: &StartCtx, dir: tempfile::TempDir) -> anyhow::Result<Running> {
    let Some(nginx) = ctx.tools.nginx.as_deref() else {
        bail!("nginx not found")
    };
    let (h1, h2c) = (loopback(free_port()?), loopback(free_port()?));
    let fillers: Vec<String> = ctx.fillers().collect();
    let conf = nginx_conf(
        dir.path(),
        NginxProcs {
            workers: ctx.workers,
            master: ctx.wrapper.is_empty(),
        },
        h1,
        h2c,
        &ctx.upstreams,
        &fillers,
        ctx.upstream_h2,
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut cmd = ctx.command(nginx);
    cmd.arg("-p").arg(dir.path()).arg("-c").arg(&path);
    let proc = Proc::spawn("nginx", cmd, dir.path())?;
    Ok(Running {
        system: System::Nginx,
        h1,
        h2c,
        proc: Some(proc),
        _dir: dir,
    })
}

fn start_haproxy(ctx: &StartCtx, dir: tempfile::TempDir) -> anyhow::Result<Running> {
    let Some(haproxy) = ctx.tools.haproxy.as_deref() else {
        bail!("haproxy not found")
    };
    let (h1, h2c) = (loopback(free_port()?), loopback(free_port()?));
    let path = dir.path().join("haproxy.cfg");
    let fillers: Vec<String> = ctx.fillers().collect();
    let map = (!fillers.is_empty()).then(|| dir.path().join("branches.map"));
    if let Some(m) = &map {
        std::fs::write(m, haproxy_map(&fillers))?;
    }
    let cfg = haproxy_cfg(
        ctx.workers,
        h1,
        h2c,
        &ctx.upstreams,
        map.as_deref(),
        ctx.upstream_h2,
    );
    std::fs::write(&path, cfg)?;
    let mut cmd = ctx.command(haproxy);
    cmd.arg("-f").arg(&path).arg("-db");
    let proc = Proc::spawn("haproxy", cmd, dir.path())?;
    Ok(Running {
        system: System::Haproxy,
        h1,
        h2c,
        proc: Some(proc),
        _dir: dir,
    })
}

fn start_microstax(ctx: &StartCtx, dir: tempfile::TempDir) -> anyhow::Result<Running> {
    let Some(bin) = ctx.microstax else {
        bail!("no microstax binary")
    };
    let u = &ctx.upstreams;
    let (b1, b2) = (u.b1.to_string(), u.b2.to_string());
    let fillers: Vec<String> = ctx.fillers().collect();
    let mut branches = vec![("b1", b1.as_str()), ("b2", b2.as_str())];
    branches.extend(fillers.iter().map(|f| (f.as_str(), b2.as_str())));
    let protocol = ctx.upstream_h2.then_some("http2");
    let layers = synth::header_routing_over(&u.baseline.to_string(), &branches, protocol);
    let config = dir.path().join("config");
    layers.write_dir(&config)?;
    let addr = loopback(free_port()?);
    let admin = loopback(free_port()?);
    let mut cmd = ctx.command(bin);
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--admin")
        .arg(admin.to_string())
        .arg("--workers")
        .arg(ctx.workers.to_string())
        // the harness measures serving, not draining: without a grace the proxy exits as soon
        // as its connections close, inside `Running::stop`'s grace, instead of being killed
        // (a profile-instrumented build writes its profile only on a clean exit)
        .arg("--drain-grace-ms")
        .arg("0")
        .env("RUST_LOG", "warn");
    let proc = Proc::spawn("microstax", cmd, dir.path())?;
    Ok(Running {
        system: System::Microstax,
        h1: addr,
        h2c: addr,
        proc: Some(proc),
        _dir: dir,
    })
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// nginx's process model.
#[derive(Debug, Clone, Copy)]
pub struct NginxProcs {
    /// Worker processes (ignored without a master).
    pub workers: usize,
    /// `master_process on` (an idle master and `workers` workers) or off (one process serves).
    pub master: bool,
}

/// nginx: one master (idle) and `workers` workers, or one process without a master; upstream
/// keep-alive; no request limit per connection (nginx closes keep-alive connections after 1000
/// requests by default, which would add reconnects the other systems do not pay). Each filler
/// branch is one more `map` entry to the `b2` upstream. With `upstream_h2` the location uses
/// `grpc_pass grpc://` instead of `proxy_pass`: nginx's proxy module speaks only HTTP/1.x to
/// upstreams, and its gRPC module, which speaks HTTP/2 to them, is its only way to reach an h2c
/// upstream (it forwards any request, not only gRPC ones, and keeps the upstream `keepalive`).
pub fn nginx_conf(
    dir: &Path,
    procs: NginxProcs,
    h1: SocketAddr,
    h2c: SocketAddr,
    u: &Upstreams,
    fillers: &[String],
    upstream_h2: bool,
) -> String {
    let pass = if upstream_h2 {
        "grpc_pass grpc://$microstax_backend;"
    } else {
        "proxy_pass http://$microstax_backend;\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";"
    };
    let d = dir.display();
    let (workers, master) = (procs.workers, if procs.master { "on" } else { "off" });
    let mut map = String::new();
    for f in fillers {
        map.push_str(&format!("        {f} branch_b2;\n"));
    }
    let user = if rustix::process::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    };
    format!(
        r#"{user}worker_processes {workers};
daemon off;
master_process {master};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    map $http_x_microstax_branch $microstax_backend {{
        default baseline;
        b1 branch_b1;
        b2 branch_b2;
{map}    }}
    upstream baseline {{ server {base}; keepalive 256; keepalive_requests 100000000; }}
    upstream branch_b1 {{ server {b1}; keepalive 256; keepalive_requests 100000000; }}
    upstream branch_b2 {{ server {b2}; keepalive 256; keepalive_requests 100000000; }}
    server {{
        listen {h1};
        listen {h2c} http2;
        location / {{
            {pass}
        }}
    }}
}}
"#,
        base = u.baseline,
        b1 = u.b1,
        b2 = u.b2,
    )
}

/// HAProxy: one process with `workers` threads, HTTP mode, h2c on its own bind line. Without a
/// map file the branch is chosen by one ACL per branch; with one (filler branches) by a lookup
/// of the header in the map (`branch backend` lines, see [`haproxy_map`]), an ebtree lookup
/// rather than 1,000 ACLs tried in turn. With `upstream_h2` every server line has `proto h2`
/// (HTTP/2 prior knowledge to the upstream).
pub fn haproxy_cfg(
    workers: usize,
    h1: SocketAddr,
    h2c: SocketAddr,
    u: &Upstreams,
    map: Option<&Path>,
    upstream_h2: bool,
) -> String {
    let proto = if upstream_h2 { " proto h2" } else { "" };
    let choose = match map {
        None => "    use_backend branch_b1 if { req.hdr(x-microstax-branch) -m str b1 }\n    use_backend branch_b2 if { req.hdr(x-microstax-branch) -m str b2 }\n".to_string(),
        Some(m) => format!(
            "    use_backend %[req.hdr(x-microstax-branch),map_str({},baseline)]\n",
            m.display()
        ),
    };
    format!(
        r#"global
    nbthread {workers}
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
frontend fe
    bind {h1}
    bind {h2c} proto h2
{choose}    default_backend baseline
backend baseline
    server s0 {base}{proto}
backend branch_b1
    server s1 {b1}{proto}
backend branch_b2
    server s2 {b2}{proto}
"#,
        base = u.baseline,
        b1 = u.b1,
        b2 = u.b2,
    )
}

/// The HAProxy map of every branch to its backend: `b1`, `b2` and the fillers (to `b2`'s).
pub fn haproxy_map(fillers: &[String]) -> String {
    let mut m = String::from("b1 branch_b1\nb2 branch_b2\n");
    for f in fillers {
        m.push_str(&format!("{f} branch_b2\n"));
    }
    m
}

/// Send one HTTP/1.1 request per branch header value and check which upstream answered (with
/// fillers, the last filler too).
fn check_routing(r: &Running, ctx: &StartCtx) -> anyhow::Result<()> {
    let last = ctx.fillers().last();
    let mut cases: Vec<(Option<&str>, &str)> = if r.system == System::Direct {
        vec![(Some("b1"), "b1")]
    } else {
        vec![(None, "baseline"), (Some("b1"), "b1"), (Some("b2"), "b2")]
    };
    if let Some(f) = last.as_deref().filter(|_| r.system != System::Direct) {
        cases.push((Some(f), "b2"));
    }
    let timeout = ctx.start_timeout.min(PROBE_TIMEOUT_MAX).max(PROBE_TIMEOUT);
    for (branch, want) in cases {
        let got = probe(r.h1, branch, timeout)?;
        if got != want {
            bail!("branch header {branch:?} reached upstream `{got}`, expected `{want}`");
        }
    }
    Ok(())
}

/// Timeout of a routing probe's connect, write and read at least.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a probe may take (under valgrind the first request translates much code).
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// One `Connection: close` request, with `timeout` for each of connect, write and read; returns
/// the `x-upstream` value of a 200 answer.
fn probe(addr: SocketAddr, branch: Option<&str>, timeout: Duration) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let header = branch.map_or(String::new(), |b| format!("x-microstax-branch: {b}\r\n"));
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: app\r\n{header}Connection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text.lines().next().unwrap_or("");
    if !status.contains(" 200") {
        bail!("answer was `{status}`");
    }
    let upstream = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-upstream")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok(upstream)
}

/// The MicroStax binary: `--microstax PATH`, else built with cargo (when run by `cargo run`),
/// else next to this binary.
pub fn microstax_binary(explicit: Option<PathBuf>, log_dir: &Path) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("microstax");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--release", "--bin", "microstax"]);
        if let Some(ws) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
            cmd.current_dir(ws);
        }
        eprintln!("building microstax (cargo build --release --bin microstax) ...");
        super::procs::run_bounded(
            "cargo-build-microstax",
            cmd,
            log_dir,
            Duration::from_secs(1200),
        )?;
    }
    if sibling.is_file() {
        Ok(sibling)
    } else {
        bail!("no microstax binary at {}: build it with `cargo build --release --bin microstax` or pass --microstax PATH", sibling.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups() -> Upstreams {
        Upstreams {
            baseline: loopback(9000),
            b1: loopback(9001),
            b2: loopback(9002),
        }
    }

    #[test]
    fn nginx_single_process_with_fillers() {
        let fillers = vec!["br-0".to_string(), "br-1".to_string()];
        let procs = NginxProcs {
            workers: 1,
            master: false,
        };
        let c = nginx_conf(
            Path::new("/t"),
            procs,
            loopback(1),
            loopback(2),
            &ups(),
            &fillers,
            false,
        );
        assert!(c.contains("master_process off;"));
        assert!(c.contains("        br-1 branch_b2;\n    }"));
        let procs = NginxProcs {
            workers: 2,
            master: true,
        };
        let c = nginx_conf(
            Path::new("/t"),
            procs,
            loopback(1),
            loopback(2),
            &ups(),
            &[],
            true,
        );
        assert!(c.contains("worker_processes 2;\n") && c.contains("master_process on;"));
        assert!(c.contains("grpc_pass grpc://$microstax_backend;") && !c.contains("proxy_pass"));
    }

    #[test]
    fn haproxy_uses_a_map_only_with_fillers() {
        let c = haproxy_cfg(1, loopback(1), loopback(2), &ups(), None, false);
        assert!(c.contains("use_backend branch_b1 if { req.hdr(x-microstax-branch) -m str b1 }"));
        assert!(!c.contains("proto h2\nbackend"));
        let c = haproxy_cfg(1, loopback(1), loopback(2), &ups(), None, true);
        assert!(c.contains("server s1 127.0.0.1:9001 proto h2\n"));
        let c = haproxy_cfg(
            1,
            loopback(1),
            loopback(2),
            &ups(),
            Some(Path::new("/t/m.map")),
            false,
        );
        assert!(c.contains("map_str(/t/m.map,baseline)") && !c.contains(" if {"));
        assert_eq!(
            haproxy_map(&["br-0".to_string()]),
            "b1 branch_b1\nb2 branch_b2\nbr-0 branch_b2\n"
        );
    }
}
