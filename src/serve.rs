//! Wiring helpers of `microstax run`: the adapter from the planner's table sink to the proxy,
//! the admin token, the tolerant config load, and the shutdown signal.

use crate::NetArgs;
use anyhow::{Context as _, Result};
use microstax_config::{RoutingTable, SourceText};
use microstax_planner::TableSink;
use microstax_proxy::Proxy;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Adapts the proxy to the planner's sink: the planner never depends on the proxy.
pub(crate) struct ProxySink(pub(crate) Arc<Proxy>);

impl TableSink for ProxySink {
    fn publish(&self, table: Arc<RoutingTable>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let report = self.0.publish(table).await;
            if report.new_upstreams > 0 {
                tracing::info!(
                    generation = report.generation,
                    new = report.new_upstreams,
                    ready = report.ready,
                    not_ready = report.not_ready,
                    "prewarmed new upstreams"
                );
            }
        })
    }
}

pub(crate) fn admin_token(net: &NetArgs) -> Result<Option<Vec<u8>>> {
    if let Some(path) = &net.admin_token_file {
        let t = std::fs::read_to_string(path)
            .with_context(|| format!("reading the admin token {}", path.display()))?;
        let t = t.trim();
        anyhow::ensure!(
            !t.is_empty(),
            "the admin token file {} is empty",
            path.display()
        );
        return Ok(Some(t.as_bytes().to_vec()));
    }
    Ok(std::env::var("MICROSTAX_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().as_bytes().to_vec()))
}

/// Load a config path to serve it: team and branch files that do not validate are left out (and
/// reported by the watcher, which retries them) instead of failing the start; the org file must
/// be valid.
pub(crate) fn load_tolerant(
    path: &std::path::Path,
) -> Result<(microstax_config::Config, Vec<SourceText>)> {
    let invalid = |e| anyhow::anyhow!("invalid config {}:\n{e}", path.display());
    let read = microstax_config::read_config(path).map_err(invalid)?;
    for w in &read.warnings {
        tracing::warn!("{w}");
    }
    let sources = read.files;
    let (cfg, left_out) = microstax_planner::build_tolerant(&sources).map_err(invalid)?;
    for e in &left_out {
        tracing::warn!("left out of the start, retried when the file changes:\n{e}");
    }
    Ok((cfg, sources))
}

/// SIGTERM and SIGINT (Ctrl-C), installed when made: made before the proxy says it is
/// serving, a signal sent as soon as it does is a drain, not the default disposition's kill.
pub(crate) struct Shutdown {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Shutdown {
    pub(crate) fn install() -> Result<Shutdown> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Shutdown {
                term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
                int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Shutdown {})
    }

    /// The next SIGTERM or SIGINT.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The next SIGTERM or Ctrl-C (for commands that stop at once, such as `microstax dev`).
pub(crate) async fn shutdown_signal() {
    match Shutdown::install() {
        Ok(mut s) => s.recv().await,
        Err(e) => {
            tracing::warn!("{e:#}: stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A second SIGTERM or Ctrl-C while draining: exit at once, without waiting for requests.
pub(crate) async fn force_exit_on_second_signal(mut signals: Shutdown) {
    signals.recv().await;
    eprintln!("error: second signal while draining: exiting without finishing requests");
    std::process::exit(i32::from(FORCED_EXIT));
}

/// Exit status of an exit forced by a second signal.
pub(crate) const FORCED_EXIT: u8 = 2;

/// SIGHUP deliveries (none on other platforms). Installing the handler is what keeps SIGHUP
/// from killing the process.
pub(crate) struct Hangups {
    #[cfg(unix)]
    sig: tokio::signal::unix::Signal,
}

impl Hangups {
    pub(crate) async fn recv(&mut self) -> Option<()> {
        #[cfg(unix)]
        return self.sig.recv().await;
        #[cfg(not(unix))]
        std::future::pending().await
    }
}

pub(crate) fn hangups() -> Result<Hangups> {
    Ok(Hangups {
        #[cfg(unix)]
        sig: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?,
    })
}
