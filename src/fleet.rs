//! `microstax run` in a fleet: `--publish etcd://HOST:PORT/PREFIX` makes this planner a
//! candidate publisher of its layers to etcd (one leads at a time), and `--source
//! etcd://HOST:PORT/PREFIX` runs a proxy whose table is built from what the leading planner
//! published there instead of from a config directory.

use crate::serve::{admin_token, ProxySink, Shutdown};
use crate::NetArgs;
use anyhow::{Context as _, Result};
use microstax_planner::admin::AdminState;
use microstax_planner::etcd::{Endpoint, FollowOptions, NotifySink, PublishOptions, Publisher};
use microstax_planner::{ControlPlane, TableSink};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(clap::Args, Clone, Default)]
pub(crate) struct FleetArgs {
    /// Follow the layers a planner publishes to etcd at etcd://HOST:PORT/PREFIX instead of a
    /// config directory (a proxy of a fleet).
    #[arg(
        long,
        value_name = "etcd://HOST:PORT/PREFIX",
        conflicts_with = "config"
    )]
    pub(crate) source: Option<Endpoint>,
    /// Publish this planner's layers to etcd://HOST:PORT/PREFIX while it leads the election
    /// there (run several: one publishes, the others stand by).
    #[arg(long, value_name = "etcd://HOST:PORT/PREFIX", requires = "config")]
    pub(crate) publish: Option<Endpoint>,
    /// TTL of the publishing planner's etcd lease, in seconds: a standby takes over within
    /// about this long after the leader dies.
    #[arg(long, default_value_t = 5)]
    pub(crate) etcd_lease_ttl: u64,
    /// Most operations per etcd transaction (etcd's own max-txn-ops setting, 128 by default).
    #[arg(long, default_value_t = 128)]
    pub(crate) etcd_max_txn_ops: usize,
    /// This planner's name in the election (default: planner-PID).
    #[arg(long)]
    pub(crate) planner_id: Option<String>,
}

/// The sink of a planner's control plane and, with `--publish`, what tells the publisher of
/// each table published.
pub(crate) fn sink(
    fleet: &FleetArgs,
    proxy: Arc<microstax_proxy::Proxy>,
) -> (Arc<dyn TableSink>, Option<watch::Receiver<u64>>) {
    let inner: Arc<dyn TableSink> = Arc::new(ProxySink(proxy));
    if fleet.publish.is_none() {
        return (inner, None);
    }
    let (sink, rx) = NotifySink::new(inner);
    (sink, Some(rx))
}

/// Start the publisher when `--publish` is given.
pub(crate) fn publisher(
    fleet: &FleetArgs,
    control: &Arc<ControlPlane>,
    changes: Option<watch::Receiver<u64>>,
    registry: &prometheus::Registry,
) -> Result<Option<Publisher>> {
    let (Some(endpoint), Some(changes)) = (&fleet.publish, changes) else {
        return Ok(None);
    };
    let defaults = PublishOptions::default();
    let options = PublishOptions {
        id: fleet.planner_id.clone().unwrap_or(defaults.id.clone()),
        lease_ttl: Duration::from_secs(fleet.etcd_lease_ttl.max(1)),
        max_txn_ops: fleet.etcd_max_txn_ops.max(2),
        ..defaults
    };
    let p = Publisher::start(endpoint, control.clone(), changes, registry, options)
        .context("registering publisher metrics")?;
    Ok(Some(p))
}

/// A proxy whose table follows etcd: listeners and the admin API start at once, `/readyz`
/// answers 503 until the first complete load.
pub(crate) async fn run_source(endpoint: &Endpoint, net: &NetArgs) -> Result<crate::Exit> {
    let signals = Shutdown::install()?;
    let registry = prometheus::Registry::new();
    let placeholder = microstax_planner::etcd::follower::placeholder_config()
        .map_err(|e| anyhow::anyhow!("building the empty config: {e}"))?;
    let started = crate::start_proxy(&placeholder, net, &registry)?;
    let control = ControlPlane::new(
        placeholder,
        Arc::new(ProxySink(started.proxy.clone())),
        &registry,
    )
    .context("registering planner metrics")?;
    let following = microstax_planner::etcd::follow(
        endpoint,
        control.clone(),
        &registry,
        FollowOptions::default(),
    )
    .context("registering source metrics")?;
    let serving = Arc::new(AtomicBool::new(false));
    let state = Arc::new(AdminState {
        control,
        registry,
        token: admin_token(net)?,
        serving: serving.clone(),
        options: crate::admin_options(net),
        runtime: None,
        source: Some(following.status.clone()),
        upstreams: Some(crate::upstreams_view(&started.proxy)),
    });
    let admin_addr = crate::serve_admin(net, state).await?;
    println!(
        "microstax: proxy on {}://{}, admin on http://{admin_addr}, following etcd://{}{}",
        started.scheme, started.listen, endpoint.host_port, endpoint.prefix
    );
    serving.store(true, Ordering::Release);
    let report = started.serve_until_signal(signals, &serving, net).await;
    drop(following);
    Ok(crate::Exit::Drained(report))
}
