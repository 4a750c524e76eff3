//! The `microstax` binary: argument parsing and wiring only. Libraries do the work: config
//! loads and validates, the planner compiles tables, the proxy serves them.

mod demo;
mod dev;
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
    PrewarmOptions, Proxy, ProxyMetrics, ProxyOptions, Router, ServerOptions, Workers,
};
use serve::{admin_token, load_tolerant, shutdown_signal};
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
    /// Seconds open connections get to finish after SIGTERM before they are closed (keep it
    /// below the pod's terminationGracePeriodSeconds).
    #[arg(long, default_value_t = 10)]
    drain_timeout_s: u64,
    /// Connections opened to each new upstream before a table naming it is published
    /// (0 turns prewarming off).
    #[arg(long, default_value_t = 2)]
    prewarm_connections: usize,
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

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // one readable chain, no backtrace: these are user-facing errors
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
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
            let plan = microstax_planner::plan_branch(&cfg, &branch, changes.as_ref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plan.to_json())?);
            } else {
                print!("{}", plan.to_table());
            }
            Ok(())
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
            Ok(())
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
        Command::Instances { admin, json } => runtime()?.block_on(instances::print(admin, json)),
        Command::Dev(args) => runtime()?.block_on(dev::run(args)),
        Command::Probe {
            addr,
            path,
            timeout_ms,
        } => runtime()?.block_on(probe::probe(addr, &path, Duration::from_millis(timeout_ms))),
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
                return Ok(());
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
    _maintenance: tokio::task::JoinHandle<()>,
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
    let proxy = Proxy::new(router, ProxyOptions { prewarm });
    let listeners = microstax_proxy::reuseport_listeners(net.listen, net.workers.max(1))
        .with_context(|| format!("binding the proxy listener {}", net.listen))?;
    let listen = listeners
        .first()
        .context("no proxy listener")?
        .local_addr()?;
    let server = ServerOptions {
        drain_timeout: Duration::from_secs(net.drain_timeout_s),
        ..ServerOptions::default()
    };
    let workers =
        Workers::start(listeners, proxy.clone(), server).context("starting the proxy workers")?;
    let maintenance = proxy.spawn_maintenance();
    Ok(Started {
        proxy,
        workers,
        listen,
        _maintenance: maintenance,
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
) -> Result<()> {
    let registry = prometheus::Registry::new();
    let started = start_proxy(&cfg, net, &registry)?;
    let (proxy, listen) = (started.proxy.clone(), started.listen);
    let envs = environments::build(exec, &cfg).await?;
    let expiry_metrics =
        environments::ExpiryMetrics::new(&registry).context("registering expiry metrics")?;
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
    });
    // the admin API answers (`/readyz` 503 with the reason) while the first table is published
    let admin_addr = serve_admin(net, state).await?;
    control.publish_initial().await;
    let publisher = fleet::publisher(fleet, &control, published, &registry)?;
    let _watcher = match watch {
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
        println!("microstax: proxy on http://{listen}, admin on http://{admin_addr}");
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
    started.workers.serve_until(shutdown_signal()).await;
    if let Some(p) = publisher {
        // a standby takes over at once rather than after the lease's TTL
        p.resign().await;
    }
    if let Some(rt) = &envs {
        // no orphan survives the proxy: every instance is stopped (SIGTERM, then SIGKILL)
        rt.reconciler().executor().shutdown().await;
    }
    Ok(())
}
