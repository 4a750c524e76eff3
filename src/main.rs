//! The `microstax` binary: argument parsing and wiring only. Libraries do the work: config
//! loads and validates, the planner compiles tables, the proxy serves them.

mod demo;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use microstax_proxy::{Proxy, Router, ServerOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Validate a config; print every error with file:line and exit non-zero if any.
    Check {
        /// Config directory or file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run the embedded demo: proxy, planner and demo upstreams, no files needed.
    Demo {
        #[command(flatten)]
        net: NetArgs,
        /// Write the embedded demo config into this directory as editable files, then exit.
        #[arg(long)]
        write_config: Option<PathBuf>,
        /// Serve demo upstreams for the endpoints of this config instead of the embedded one.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args, Clone)]
struct NetArgs {
    /// Proxy listen address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listen address (loopback by default).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Worker threads of the proxy runtime.
    #[arg(long, default_value_t = default_workers())]
    workers: usize,
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn main() -> Result<()> {
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
        Command::Run { config, net } => runtime(net.workers)?.block_on(async {
            let cfg = load(&config)?;
            run(cfg, &net, None).await
        }),
        Command::Demo {
            net,
            write_config,
            config,
        } => {
            if let Some(dir) = write_config {
                demo::write_config(&dir)?;
                println!("wrote the demo config to {}", dir.display());
                println!("run it with: microstax demo --config {}", dir.display());
                return Ok(());
            }
            runtime(net.workers)?.block_on(async {
                let (cfg, listeners) = match &config {
                    Some(path) => (load(path)?, Default::default()),
                    None => demo::embedded().await?,
                };
                run(cfg, &net, Some(listeners)).await
            })
        }
    }
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn load(path: &std::path::Path) -> Result<microstax_config::Config> {
    microstax_config::load(path)
        .map_err(|e| anyhow::anyhow!("invalid config {}:\n{e}", path.display()))
}

fn check(path: &std::path::Path) -> Result<()> {
    match microstax_config::load(path) {
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

/// Wire planner to proxy and serve until a signal. With `demo_listeners`, also start demo
/// upstreams for the config's endpoints.
async fn run(
    cfg: microstax_config::Config,
    net: &NetArgs,
    demo_listeners: Option<std::collections::BTreeMap<SocketAddr, TcpListener>>,
) -> Result<()> {
    let table = microstax_planner::compile(&cfg, 1);
    let router = Router::new(table);
    let proxy = Proxy::new(router.clone());
    let listener = TcpListener::bind(net.listen)
        .await
        .with_context(|| format!("binding the proxy listener {}", net.listen))?;
    let listen = listener.local_addr()?;
    let admin = TcpListener::bind(net.admin)
        .await
        .with_context(|| format!("binding the admin listener {}", net.admin))?;
    let admin_addr = admin.local_addr()?;
    tokio::spawn(health::serve(admin));
    if let Some(listeners) = demo_listeners {
        demo::start_upstreams(&cfg, listeners, listen).await?;
        println!(
            "microstax demo: proxy on http://{listen}, admin on http://{admin_addr}\ntry:\n{}",
            demo::curl_lines(listen)
        );
    } else {
        println!("microstax: proxy on http://{listen}, admin on http://{admin_addr}");
    }
    microstax_proxy::serve(listener, proxy, ServerOptions::default(), shutdown_signal()).await;
    let _ = Arc::strong_count(&router);
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: draining connections");
}

mod health {
    //! Minimal admin listener until the admin API lands: `/healthz` only.
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use tokio::net::TcpListener;

    pub async fn serve(listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let (status, body) = match req.uri().path() {
                        "/healthz" => (200, "ok\n"),
                        _ => (404, "not found\n"),
                    };
                    let mut r =
                        hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }
}
