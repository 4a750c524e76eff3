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

pub(crate) async fn shutdown_signal() {
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
