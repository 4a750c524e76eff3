//! The `microstax` binary: argument parsing and wiring only. Libraries do the work: config
//! loads and validates, the planner compiles tables, the proxy serves them.

// mimalloc: the request path's allocations that glibc serves slowly (an HTTP/2 stream's
// multi-KiB future, tokio's cache-aligned task cells) cost 6% of an h2c request's instructions
// under glibc. Without transparent huge pages (`no_thp`): with them, the idle RSS of a proxy
// with 1,000 branches went from 23 to 41 MiB; without, 27 MiB (bench/README.md)
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod demo;
mod dev;
mod edge;
mod environments;
mod fleet;
mod instances;
mod probe;
mod serve;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use microstax_config::SourceText;
use microstax_planner::admin::{AdminOptions, AdminState};
use microstax_planner::ControlPlane;
use microstax_proxy::{
    Drain, PrewarmOptions, Proxy, ProxyMetrics, ProxyOptions, Router, ServerOptions, Workers,
};
use serve::{admin_token, load_tolerant, Shutdown};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "microstax",
    version,
    about = "Branch-aware routing proxy and planner"
)]
struct Cli {
    /// Process log format (the access log is always JSON).
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and planner on a config directory (or single file).
    Run {
        /// Config directory (org.yaml, teams/, branches/) or a single multi-document file.
        #[arg(long, required_unless_present = "source")]
        config: Option<PathBuf>,
        #[command(flatten)]
        net: NetArgs,
        #[command(flatten)]
        exec: environments::ExecArgs,
        #[command(flatten)]
        fleet: fleet::FleetArgs,
    },
    /// List the instances a running proxy's executor runs for the live plans (from its admin
    /// API's `/instances`).
    Instances {
        /// The admin address of the running proxy.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Print the JSON as served.
        #[arg(long)]
        json: bool,
    },
    /// The local development proxy: the services named by --local go to local processes,
    /// everything else to the shared gateway at --remote, all on --branch.
    Dev(dev::DevArgs),
    /// Ask a health endpoint (default: the health listener's /readyz) and exit 0 when it
    /// answers 2xx: a container HEALTHCHECK or an exec probe.
    Probe {
        /// The address of the listener to ask.
        #[arg(long, default_value = "127.0.0.1:9902")]
        addr: SocketAddr,
        /// The path to ask.
        #[arg(long, default_value = "/readyz")]
        path: String,
        /// Longest wait for the answer, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Validate a config; print every error with file:line and exit non-zero if any.
    Check {
        /// Config directory or file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Plan a branch: per service reuse / fork / local (and per store and topic, isolate), with
    /// reasons and costs.
    Plan {
        /// Config directory or file.
        #[arg(long)]
        config: PathBuf,
        /// The branch to plan.
        #[arg(long)]
        branch: String,
        /// A git repository whose changes between --base and the branch mark services to fork.
        #[arg(long)]
        repo: Option<PathBuf>,
        /// Base ref for --repo (default: the layer's source.base, else main).
        #[arg(long)]
        base: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Explain one service in one branch: every effective value with the layer and file:line
    /// that set it, the plan's decision, and where a request would be routed.
    Explain {
        /// Config directory or file.
        #[arg(long)]
        config: PathBuf,
        /// The branch (or `baseline`).
        #[arg(long)]
        branch: String,
        /// The service.
        #[arg(long)]
        service: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mint a signed branch token (for an `--trust edge` listener, e.g. a preview link).
    Token {
        /// The branch the token selects.
        #[arg(long)]
        branch: String,
        /// How long the token is valid: 90s, 30m, 8h, 2d.
        #[arg(long, default_value = "8h")]
        ttl: String,
        /// The key file (its first key signs).
        #[arg(long)]
        key_file: PathBuf,
        /// The audience (the listener's --token-audience).
        #[arg(long, default_value = edge::DEFAULT_AUDIENCE)]
        audience: String,
    },
    /// Run the embedded demo: proxy, planner and demo upstreams, no files needed.
    Demo {
        #[command(flatten)]
        net: NetArgs,
        #[command(flatten)]
        exec: environments::ExecArgs,
        /// Write the embedded demo config into this directory as editable files, then exit.
        /// Files that differ from the demo (your edits) are not overwritten without --force.
        #[arg(long)]
        write_config: Option<PathBuf>,
        /// With --write-config: overwrite files that differ from the demo.
        #[arg(long, requires = "write_config")]
        force: bool,
        /// Serve demo upstreams for the endpoints of this config instead of the embedded one.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// One demo upstream as a process of its own: what the demo's `run:` blocks start for a
    /// branch's own instance (answers with its service, instance, pid and context).
    DemoService(demo::ServiceArgs),
}

#[derive(clap::Args, Clone)]
pub(crate) struct NetArgs {
    /// Proxy listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listen address (loopback by default).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Health listen address serving only /healthz, /readyz and /metrics (no write, no config
    /// value): bind it where kubelet and Prometheus reach, e.g. 0.0.0.0:9902. Off by default.
    #[arg(long)]
    health: Option<SocketAddr>,
    /// Whether the admin reads that reveal config values (/routes, /plan, /explain, /branches,
    /// /instances) need the admin token: `auto` (only when --admin is not loopback), `token`
    /// or `open`.
    #[arg(long, value_enum, default_value_t = AdminReads::Auto)]
    admin_reads: AdminReads,
    /// Proxy workers: threads each with its own runtime, listener and upstream pools.
    #[arg(long, default_value_t = default_workers())]
    workers: usize,
    /// File holding the bearer token for admin writes (else $MICROSTAX_ADMIN_TOKEN; with
    /// neither, admin writes are disabled).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Quiet time gathered after a config file event before reloading, in milliseconds.
    #[arg(long, default_value_t = 5)]
    debounce_ms: u64,
    /// Connections opened to each new upstream before a table naming it is published
    /// (0 turns prewarming off).
    #[arg(long, default_value_t = 2)]
    prewarm_connections: usize,
    #[command(flatten)]
    trust: edge::TrustArgs,
    /// After SIGTERM: how long the proxy keeps accepting (with /readyz 503 and
    /// `Connection: close` on HTTP/1 responses) so load balancers stop sending, in ms.
    #[arg(long, default_value_t = 5000)]
    drain_grace_ms: u64,
    /// Then: how long in-flight requests may take to finish before they are cut, in ms.
    #[arg(long, default_value_t = 10000)]
    drain_timeout_ms: u64,
    /// Join the listeners of another process already on --listen (a hand-over: the old
    /// process drains while this one serves). Without it, a listen address in use is an error.
    #[arg(long)]
    handover: bool,
    /// Time for a client to send a request's headers (and a new connection its first bytes);
    /// an idle HTTP/1 keep-alive connection is closed after it too, in ms.
    #[arg(long, default_value_t = 10000)]
    header_read_timeout_ms: u64,
    /// A connection with no request in flight this long is shut down (HTTP/2: GOAWAY), in ms.
    #[arg(long, default_value_t = 60000)]
    idle_timeout_ms: u64,
    /// Longest wait for the next chunk of a client's request body (between two reads, not for
    /// the whole body; 0: none), in ms: 408 before any response, else the stream is reset.
    #[arg(long, default_value_t = 60000)]
    request_body_idle_timeout_ms: u64,
    /// Longest wait for the next chunk of an upstream's response body (between two reads;
    /// 0: none), in ms: the client's stream is reset and the upstream connection closed.
    #[arg(long, default_value_t = 60000)]
    response_body_idle_timeout_ms: u64,
    /// Largest request head, in bytes (larger: 431).
    #[arg(long, default_value_t = microstax_proxy::server::DEFAULT_MAX_HEADER_BYTES)]
    max_header_bytes: usize,
    /// Most header fields in a request (more: 431).
    #[arg(long, default_value_t = microstax_proxy::server::DEFAULT_MAX_HEADERS)]
    max_headers: usize,
    /// Most concurrent HTTP/2 streams per connection.
    #[arg(long, default_value_t = microstax_proxy::server::DEFAULT_MAX_CONCURRENT_STREAMS)]
    max_concurrent_streams: u32,
    /// Most open client connections in all (more are closed at accept).
    #[arg(long, default_value_t = microstax_proxy::limits::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most open client connections from one peer address.
    #[arg(long, default_value_t = microstax_proxy::limits::DEFAULT_MAX_PER_PEER)]
    max_connections_per_peer: u32,
    /// Access log: `off`, `all`, or `sample:N` (one request in N; proxy-made 502/503/504
    /// always).
    #[arg(long, default_value = "off")]
    access_log: String,
    /// Write the access log to this file (appended) instead of stderr.
    #[arg(long)]
    access_log_file: Option<PathBuf>,
    #[command(flatten)]
    tls: edge::TlsArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AdminReads {
    /// Token needed unless the admin listener is on loopback.
    Auto,
    /// Token always needed.
    Token,
    /// Open to anyone who reaches the admin listener.
    Open,
}

impl AdminReads {
    fn protect(self, admin: SocketAddr) -> bool {
        match self {
            AdminReads::Auto => !admin.ip().is_loopback(),
            AdminReads::Token => true,
            AdminReads::Open => false,
        }
    }
}

/// The admin listener's bounds for `net`.
pub(crate) fn admin_options(net: &NetArgs) -> AdminOptions {
    AdminOptions {
        protect_reads: net.admin_reads.protect(net.admin),
        ..AdminOptions::default()
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Exit status of a drain whose timeout cut requests still in flight.
const EXIT_DRAIN_CUT: u8 = 3;

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(Exit::Done) => std::process::ExitCode::SUCCESS,
        Ok(Exit::Drained(r)) if r.cut == 0 => std::process::ExitCode::SUCCESS,
        Ok(Exit::Drained(r)) => {
            eprintln!(
                "error: the drain timeout cut {} connections with requests in flight",
                r.cut
            );
            std::process::ExitCode::from(EXIT_DRAIN_CUT)
        }
        Err(e) => {
            // one readable chain, no backtrace: these are user-facing errors
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// How a command ended.
pub(crate) enum Exit {
    Done,
    /// `run` or `demo` stopped after a drain.
    Drained(microstax_proxy::DrainReport),
}

impl From<()> for Exit {
    fn from((): ()) -> Exit {
        Exit::Done
    }
}

fn real_main() -> Result<Exit> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // colour only for a terminal: a file or a log collector gets no escape codes
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if cli.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    match cli.command {
        Command::Check { config } => check(&config).map(Exit::from),
        Command::Token {
            branch,
            ttl,
            key_file,
            audience,
        } => edge::mint(&branch, &ttl, &key_file, &audience).map(Exit::from),
        Command::Plan {
            config,
            branch,
            repo,
            base,
            json,
        } => {
            let (cfg, _) = load(&config)?;
            let changes = match &repo {
                Some(repo) => {
                    let (base, git_branch) =
                        microstax_planner::source_refs(&cfg, &branch, base.as_deref());
                    Some(microstax_planner::SourceChanges::from_git(
                        repo,
                        &base,
                        &git_branch,
                    )?)
                }
                None => None,
            };
            let planner = microstax_planner::Planner::new(&cfg)?;
            let fleet = planner.plan_all(&cfg)?;
            let plan = planner.plan_with(&cfg, &branch, changes.as_ref(), Some(&fleet))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan.to_json())?);
            } else {
                print!("{}", plan.to_table());
            }
            Ok(Exit::Done)
        }
        Command::Explain {
            config,
            branch,
            service,
            json,
        } => {
            let (cfg, _) = load(&config)?;
            let e = microstax_planner::explain(&cfg, &branch, &service)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e.to_json())?);
            } else {
                print!("{}", e.to_text());
            }
            Ok(Exit::Done)
        }
        Command::Run {
            config,
            net,
            exec,
            fleet,
        } => runtime()?.block_on(async {
            let Some(config) = config else {
                let source = fleet
                    .source
                    .as_ref()
                    .context("--config or --source is needed")?;
                return fleet::run_source(source, &net).await;
            };
            let (cfg, sources) = load_tolerant(&config)?;
            run(
                cfg,
                &net,
                &exec,
                &fleet,
                None,
                Some((config.clone(), sources)),
            )
            .await
        }),
        Command::DemoService(args) => runtime()?
            .block_on(demo::serve_service(args))
            .map(Exit::from),
        Command::Instances { admin, json } => runtime()?
            .block_on(instances::print(admin, json))
            .map(Exit::from),
        Command::Dev(args) => runtime()?.block_on(dev::run(args)).map(Exit::from),
        Command::Probe {
            addr,
            path,
            timeout_ms,
        } => runtime()?
            .block_on(probe::probe(addr, &path, Duration::from_millis(timeout_ms)))
            .map(Exit::from),
        Command::Demo {
            net,
            exec,
            write_config,
            force,
            config,
        } => {
            if let Some(dir) = write_config {
                let w = demo::write_config(&dir, force)?;
                println!(
                    "wrote the demo config to {} ({} files written, {} already up to date)",
                    dir.display(),
                    w.written,
                    w.unchanged
                );
                println!("run it with: microstax demo --config {}", dir.display());
                return Ok(Exit::Done);
            }
            runtime()?.block_on(async {
                match &config {
                    Some(path) => {
                        let (cfg, sources) = load(path)?;
                        run(
                            cfg,
                            &net,
                            &exec,
                            &Default::default(),
                            Some(Default::default()),
                            Some((path.clone(), sources)),
                        )
                        .await
                    }
                    None => {
                        let (cfg, listeners) = demo::embedded().await?;
                        run(cfg, &net, &exec, &Default::default(), Some(listeners), None).await
                    }
                }
            })
        }
    }
}

/// The main runtime: planner, admin API, demo upstreams. Requests are served by the proxy's
/// workers, each on a current-thread runtime of its own (no cross-thread wake-ups: one such
/// runtime measured 24.6 -> 18.4 us CPU per proxied request on this machine against a
/// multi-thread one).
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Load and validate a config path; also returns the sources read (for the watcher).
fn load(path: &std::path::Path) -> Result<(microstax_config::Config, Vec<SourceText>)> {
    let invalid = |e| anyhow::anyhow!("invalid config {}:\n{e}", path.display());
    let read = microstax_config::read_config(path).map_err(invalid)?;
    for w in &read.warnings {
        tracing::warn!("{w}");
    }
    let docs = microstax_config::parse_sources(&read.files).map_err(invalid)?;
    let cfg = microstax_config::Config::build(docs).map_err(invalid)?;
    Ok((cfg, read.files))
}

fn check(path: &std::path::Path) -> Result<()> {
    let built = microstax_config::read_config(path).and_then(|read| {
        for w in &read.warnings {
            eprintln!("warning: {w}");
        }
        microstax_config::Config::build(microstax_config::parse_sources(&read.files)?)
    });
    match built {
        Ok(cfg) => {
            let table = microstax_planner::compile(&cfg, 1);
            let (layers, routes) = table.counts();
            println!(
                "ok: {} services, {} layers, {} routes",
                cfg.services().len(),
                layers,
                routes
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

/// A proxy serving on its listeners, with the table of `cfg`.
pub(crate) struct Started {
    proxy: Arc<Proxy>,
    workers: Workers,
    listen: SocketAddr,
    /// `http`, or `https` with TLS termination.
    scheme: &'static str,
    drain: Arc<Drain>,
    trust: Arc<microstax_proxy::TrustPolicy>,
    _maintenance: tokio::task::JoinHandle<()>,
    _tls_reloader: Option<tokio::task::JoinHandle<()>>,
}

/// Build the proxy for `cfg` (its metrics in `registry`), bind its listeners and start its
/// workers (before the planner and the admin API, so every publish prewarms their pools).
pub(crate) fn start_proxy(
    cfg: &microstax_config::Config,
    net: &NetArgs,
    registry: &prometheus::Registry,
) -> Result<Started> {
    let metrics = ProxyMetrics::new(registry).context("registering proxy metrics")?;
    let router = Router::with_metrics(microstax_planner::compile(cfg, 1), metrics);
    let defaults = PrewarmOptions::default();
    let prewarm = PrewarmOptions {
        connections: net.prewarm_connections,
        max_upstreams: if net.prewarm_connections == 0 {
            0
        } else {
            defaults.max_upstreams
        },
        ..defaults
    };
    let options = ProxyOptions {
        prewarm,
        request_body_idle_timeout: Duration::from_millis(net.request_body_idle_timeout_ms),
        response_body_idle_timeout: Duration::from_millis(net.response_body_idle_timeout_ms),
    };
    let proxy = Proxy::new(router, options);
    let listeners = if net.handover {
        microstax_proxy::reuseport_listeners_handover(net.listen, net.workers.max(1))
    } else {
        microstax_proxy::reuseport_listeners(net.listen, net.workers.max(1))
    };
    let listeners = listeners.with_context(|| {
        format!(
            "binding the proxy listener {} (is another microstax running there? pass \
             --handover to share it while the old one drains)",
            net.listen
        )
    })?;
    let listen = listeners
        .first()
        .context("no proxy listener")?
        .local_addr()?;
    let drain = Arc::new(Drain::default());
    let trust = Arc::new(net.trust.policy(registry)?);
    let server_options = ServerOptions {
        trust: trust.clone(),
        drain: drain.clone(),
        drain_timeout: Duration::from_millis(net.drain_timeout_ms),
        header_read_timeout: Duration::from_millis(net.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(net.idle_timeout_ms),
        max_header_bytes: net.max_header_bytes,
        max_headers: net.max_headers,
        max_concurrent_streams: net.max_concurrent_streams,
        limits: Arc::new(microstax_proxy::ConnLimits::new(
            net.max_connections,
            net.max_connections_per_peer,
        )),
        access_log: Arc::new(edge::access_log(
            &net.access_log,
            net.access_log_file.as_deref(),
        )?),
        tls: net.tls.terminator()?,
    };
    let tls = server_options.tls.clone();
    microstax_proxy::EdgeMetrics::register(
        registry,
        server_options.tls.clone(),
        server_options.limits.clone(),
        server_options.access_log.clone(),
    )
    .context("registering edge metrics")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let workers = Workers::start(listeners, proxy.clone(), server_options)
        .context("starting the proxy workers")?;
    let maintenance = proxy.spawn_maintenance();
    let tls_reloader = tls.as_ref().map(|t| t.spawn_reloader());
    Ok(Started {
        proxy,
        workers,
        listen,
        scheme,
        drain,
        trust,
        _maintenance: maintenance,
        _tls_reloader: tls_reloader,
    })
}

impl Started {
    /// Serve until SIGTERM or Ctrl-C, then drain: `/readyz` answers 503 (`serving` false) and
    /// the listeners keep accepting for `--drain-grace-ms` (HTTP/1 responses say
    /// `Connection: close`, HTTP/2 connections get GOAWAY), then in-flight requests get
    /// `--drain-timeout-ms`. A second signal exits at once.
    pub(crate) async fn serve_until_signal(
        self,
        mut signals: Shutdown,
        serving: &AtomicBool,
        net: &NetArgs,
    ) -> microstax_proxy::DrainReport {
        let drain = self.drain.clone();
        let grace = Duration::from_millis(net.drain_grace_ms);
        self.workers
            .serve_until_drained(async {
                signals.recv().await;
                tracing::info!("shutting down: draining connections");
                serving.store(false, Ordering::Release);
                drain.start();
                tokio::spawn(serve::force_exit_on_second_signal(signals));
                tracing::info!(
                    grace_ms = net.drain_grace_ms,
                    "draining: still accepting for the grace"
                );
                tokio::time::sleep(grace).await;
                tracing::info!("draining: listeners closed, finishing in-flight requests");
            })
            .await
    }
}

/// `GET /upstreams`: every upstream the proxy's tables name, with its readiness, ejection and
/// failure streak (issue 10's outlier detection), connections and counters.
pub(crate) fn upstreams_view(proxy: &Arc<Proxy>) -> microstax_planner::admin::UpstreamsView {
    let proxy = proxy.clone();
    Arc::new(move || {
        let list: Vec<serde_json::Value> = proxy
            .router()
            .registry()
            .views()
            .into_iter()
            .map(|u| {
                serde_json::json!({
                    "upstream": &*u.authority,
                    "readiness": u.readiness,
                    "asleep": u.asleep,
                    "ejected": u.ejected,
                    "ejections": u.ejections,
                    "consecutive_failures": u.consecutive_failures,
                    "connections": {"open": u.connections.0, "connecting": u.connections.1},
                    "requests": u.requests,
                    "connect_errors": u.connect_errors,
                    "timeouts": u.timeouts,
                    "held": u.held,
                })
            })
            .collect();
        serde_json::json!({ "upstreams": list })
    })
}

/// Bind the admin listener (and the health listener, when `--health` is given) and serve them.
pub(crate) async fn serve_admin(net: &NetArgs, state: Arc<AdminState>) -> Result<SocketAddr> {
    let admin = TcpListener::bind(net.admin)
        .await
        .with_context(|| format!("binding the admin listener {}", net.admin))?;
    let admin_addr = admin.local_addr()?;
    if let Some(at) = net.health {
        let health = TcpListener::bind(at)
            .await
            .with_context(|| format!("binding the health listener {at}"))?;
        tracing::info!("health on http://{}", health.local_addr()?);
        tokio::spawn(microstax_planner::admin::serve_health(
            health,
            state.clone(),
            std::future::pending(),
        ));
    }
    tokio::spawn(microstax_planner::admin::serve(
        admin,
        state,
        std::future::pending(),
    ));
    Ok(admin_addr)
}

/// Wire planner to proxy and serve until a signal. With `demo_listeners`, also start demo
/// upstreams for the config's endpoints; with `watch`, follow changes to that config path.
async fn run(
    cfg: microstax_config::Config,
    net: &NetArgs,
    exec: &environments::ExecArgs,
    fleet: &fleet::FleetArgs,
    demo_listeners: Option<std::collections::BTreeMap<SocketAddr, TcpListener>>,
    watch: Option<(PathBuf, Vec<SourceText>)>,
) -> Result<Exit> {
    // installed first: from here on SIGHUP reloads instead of killing the process, and SIGTERM
    // drains
    let mut hangups = serve::hangups()?;
    let signals = Shutdown::install()?;
    let registry = prometheus::Registry::new();
    let started = start_proxy(&cfg, net, &registry)?;
    let (proxy, listen, scheme) = (started.proxy.clone(), started.listen, started.scheme);
    let trust = started.trust.clone();
    let (kind, state_dir, _demo_state) = exec.resolve(demo_listeners.is_some());
    let envs = environments::build(exec, kind, &state_dir, &cfg).await?;
    let expiry_metrics = environments::EnvironmentMetrics::new(&registry)
        .context("registering environment metrics")?;
    let (sink, published) = fleet::sink(fleet, proxy.clone());
    let control = ControlPlane::with_environments(
        cfg.clone(),
        sink,
        &registry,
        envs.clone()
            .map(|r| r as Arc<dyn microstax_planner::Environments>),
    )
    .context("registering planner metrics")?;
    let serving = Arc::new(AtomicBool::new(false));
    let state = Arc::new(AdminState {
        control: control.clone(),
        registry: registry.clone(),
        token: admin_token(net)?,
        serving: serving.clone(),
        options: admin_options(net),
        runtime: envs.clone(),
        source: None,
        upstreams: Some(upstreams_view(&proxy)),
    });
    // the admin API answers (`/readyz` 503 with the reason) while the first table is published
    let admin_addr = serve_admin(net, state).await?;
    control.publish_initial().await;
    let publisher = fleet::publisher(fleet, &control, published, &registry)?;
    let watcher = match watch {
        Some((path, sources)) => Some(microstax_planner::watch(
            path,
            &sources,
            control.clone(),
            Duration::from_millis(net.debounce_ms),
        )?),
        None => None,
    };
    if let Some(listeners) = demo_listeners {
        demo::start_upstreams(&cfg, listeners, listen).await?;
        println!(
            "microstax demo: proxy on http://{listen}, admin on http://{admin_addr}\ntry:\n{}",
            demo::curl_lines(listen)
        );
    } else {
        println!("microstax: proxy on {scheme}://{listen}, admin on http://{admin_addr}");
    }
    serving.store(true, Ordering::Release);
    if let Some(rt) = &envs {
        tokio::spawn(environments::keep_converged(
            rt.clone(),
            control.clone(),
            proxy.clone(),
            proxy.wakes(),
            expiry_metrics,
        ));
    }
    let watcher = watcher.map(Arc::new);
    let reloads = {
        let watcher = watcher.clone();
        let trust_args = net.trust.clone();
        let trust = trust.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                trust_args.reload_keys(&trust);
                match &watcher {
                    Some(w) => {
                        tracing::info!("SIGHUP: reloading the config");
                        w.reload();
                    }
                    None => tracing::info!("SIGHUP: no config path to reload"),
                }
            }
        })
    };
    let report = started.serve_until_signal(signals, &serving, net).await;
    reloads.abort();
    if let Some(p) = publisher {
        // a standby takes over at once rather than after the lease's TTL
        p.resign().await;
    }
    if let Some(rt) = &envs {
        // no orphan survives the proxy: every instance is stopped (SIGTERM, then SIGKILL)
        rt.reconciler().executor().shutdown().await;
    }
    Ok(Exit::Drained(report))
}
