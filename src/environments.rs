//! Wiring of `--executor`: builds the executor and the store plugins the config names, the
//! reconciler over them and the planner's runtime, and the loop that keeps them converged.

use anyhow::{Context as _, Result};
use microstax_config::environments::StorePluginKind;
use microstax_config::Config;
use microstax_config::LayerKind;
use microstax_exec::store::command::{CommandOptions, CommandSpec};
use microstax_exec::{
    CommandStores, Executor, KubernetesExecutor, KubernetesOptions, PostgresStores,
    ProcessExecutor, ProcessOptions, ReconcileOptions, Reconciler, StorePlugin,
};
use microstax_exec::{InstanceId, InstanceState};
use microstax_planner::environments::replica_ids;
use microstax_planner::{Change, ChangeSource, ControlPlane, Runtime};
use microstax_proxy::Proxy;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which executor runs the plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExecutorKind {
    /// Route only: planned forks without an endpoint follow `routing.instance_address`.
    None,
    /// Start planned instances as local processes (each service's `run:` block).
    Process,
    /// Render planned instances as Kubernetes manifests into `--render-dir` (or stdout).
    Kubernetes,
}

/// Flags of the executor.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ExecArgs {
    /// What carries the plans out (default: none for `run`, process for `demo`).
    #[arg(long, value_enum)]
    pub(crate) executor: Option<ExecutorKind>,
    /// The process executor's records and instance logs (`state/`, `logs/`), and the record
    /// of created branch stores (default: `.microstax` for `run`; for `demo`, a directory of
    /// its own under the system's temporary directory, removed at exit).
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,
    /// The kubernetes executor's output directory (stdout when absent).
    #[arg(long)]
    pub(crate) render_dir: Option<PathBuf>,
    /// The kubernetes executor's namespace (none: `kubectl -n` decides).
    #[arg(long)]
    pub(crate) namespace: Option<String>,
}

/// A state directory of the demo's own, removed when the demo exits.
pub(crate) struct DemoState(PathBuf);

impl Drop for DemoState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl ExecArgs {
    /// The executor and state directory these flags choose; `demo` changes the defaults (the
    /// process executor, and a fresh state directory that the returned guard removes).
    pub(crate) fn resolve(&self, demo: bool) -> (ExecutorKind, PathBuf, Option<DemoState>) {
        let kind = self.executor.unwrap_or(if demo {
            ExecutorKind::Process
        } else {
            ExecutorKind::None
        });
        match &self.state_dir {
            Some(dir) => (kind, dir.clone(), None),
            None if demo && kind == ExecutorKind::Process => {
                let dir =
                    std::env::temp_dir().join(format!("microstax-demo-{}", std::process::id()));
                (kind, dir.clone(), Some(DemoState(dir)))
            }
            None => (kind, PathBuf::from(".microstax"), None),
        }
    }
}

/// The runtime for `kind`, or `None` with `--executor none`.
pub(crate) async fn build(
    args: &ExecArgs,
    kind: ExecutorKind,
    state_dir: &std::path::Path,
    cfg: &Config,
) -> Result<Option<Arc<Runtime>>> {
    let executor: Arc<dyn Executor> = match kind {
        ExecutorKind::None => return Ok(None),
        ExecutorKind::Process => Arc::new(
            ProcessExecutor::new(ProcessOptions::new(
                state_dir.join("state"),
                state_dir.join("logs"),
            ))
            .await
            .with_context(|| format!("starting the process executor in {}", state_dir.display()))?,
        ),
        ExecutorKind::Kubernetes => {
            let mut opts = match &args.render_dir {
                Some(d) => KubernetesOptions::directory(d.clone()),
                None => KubernetesOptions::stdout(),
            };
            opts.namespace = args.namespace.clone();
            Arc::new(KubernetesExecutor::new(opts).context("starting the kubernetes executor")?)
        }
    };
    let reconciler = Reconciler::new(
        executor,
        store_plugins(cfg)?,
        ReconcileOptions {
            grace: cfg.lifecycle().grace,
            store_records: Some(state_dir.join("stores.jsonl")),
        },
    );
    Ok(Some(Runtime::new(Arc::new(reconciler))))
}

/// One postgres plugin for every postgres store, one command plugin per store with commands.
fn store_plugins(cfg: &Config) -> Result<BTreeMap<Arc<str>, Arc<dyn StorePlugin>>> {
    let mut out: BTreeMap<Arc<str>, Arc<dyn StorePlugin>> = BTreeMap::new();
    let names: Vec<String> = cfg
        .services()
        .iter()
        .flat_map(|s| s.stores.iter().map(|st| st.name.clone()))
        .collect();
    for name in names {
        let Some(s) = cfg.store_settings(&name) else {
            continue;
        };
        match s.plugin {
            StorePluginKind::Postgres => {
                out.entry(Arc::from(s.kind.as_str()))
                    .or_insert_with(|| Arc::new(PostgresStores::default()));
            }
            StorePluginKind::Command { create, delete } => {
                let spec = |c: &[String]| CommandSpec {
                    program: c.first().cloned().unwrap_or_default(),
                    args: c.iter().skip(1).cloned().collect(),
                };
                let plugin = CommandStores::new(CommandOptions::new(spec(&create), spec(&delete)))
                    .with_context(|| format!("store {name}: the create or delete command"))?;
                out.insert(Arc::from(name.as_str()), Arc::new(plugin));
            }
        }
    }
    Ok(out)
}

/// Keep the environments converged: a pass every second, at every executor change and at every
/// wake request (gives back what is unneeded past the grace, retries what failed, starts what a
/// request woke); readiness is pushed to the proxy as the executor reports it, idle instances
/// with `idle_after_s` are scaled to zero, and when a placement appears or goes the table is
/// recompiled so routes follow instances.
pub(crate) async fn keep_converged(
    runtime: Arc<Runtime>,
    control: Arc<ControlPlane>,
    proxy: Arc<Proxy>,
    mut wakes: Option<tokio::sync::mpsc::Receiver<Arc<str>>>,
    metrics: EnvironmentMetrics,
) {
    let mut changes = runtime.reconciler().executor().changes();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let activity = proxy.activity();
    let mut ready_since: BTreeMap<InstanceId, Instant> = BTreeMap::new();
    let mut ttl = TtlState::default();
    let mut asleep: std::collections::BTreeSet<InstanceId> = Default::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = changes.changed() => if r.is_err() { return },
            Some(authority) = recv(&mut wakes) => wake(&runtime, &authority),
        }
        expire_branches(&runtime, &control, &activity, &metrics, &mut ttl).await;
        let (_, placements_changed) = runtime.tick().await;
        if placements_changed {
            control.refresh().await;
        }
        let view = runtime.view();
        metrics.observe(&runtime, &view);
        let now = Instant::now();
        // parked instances (idle, or of a dormant branch) are asleep in the proxy: a request
        // for one sends a wake and is held
        for (id, addr) in &view.placements {
            if runtime.is_parked(id) {
                if asleep.insert(id.clone()) {
                    proxy.set_asleep(addr, true);
                }
            } else {
                asleep.remove(id);
            }
        }
        for (id, o) in &view.observed {
            let Some(addr) = view.placements.get(id) else {
                continue;
            };
            match &o.state {
                // a parked instance still running its grace out stays asleep in the proxy
                InstanceState::Ready { .. } if runtime.is_parked(id) => {}
                InstanceState::Ready { .. } => {
                    if !ready_since.contains_key(id) {
                        ready_since.insert(id.clone(), now);
                        proxy.set_asleep(addr, false);
                        proxy.set_ready(addr, true);
                    }
                }
                // crashed and restarting (or starting): requests are held per the readiness
                // policy instead of meeting a refused connection
                _ => {
                    if ready_since.remove(id).is_some() {
                        proxy.set_ready(addr, false);
                    }
                }
            }
        }
        ready_since.retain(|id, _| view.observed.contains_key(id));
        // scale to zero: an instance none of whose replicas was used for its idle_after, and
        // none of which has a request in flight or a tunnel open, is stopped (after the
        // grace); its upstreams are asleep, so the next request wakes it and is held meanwhile
        for (id, d) in &view.desired.instances {
            let Some(idle) = d.idle_after.filter(|_| !runtime.is_parked(id)) else {
                continue;
            };
            // a request in flight (or an open tunnel) on any replica: in use now
            if replicas_of(id, &view.placements).any(|(_, a)| activity.in_use_upstream(a) > 0) {
                continue;
            }
            let Some(last) = last_use(id, &view.placements, &ready_since, &activity) else {
                continue;
            };
            if now.saturating_duration_since(last) >= idle {
                tracing::info!(instance = %id.short(), service = %d.spec.service, "idle: scaled to zero");
                runtime.park(id);
                // every replica's upstream sleeps with it
                for (r, addr) in replicas_of(id, &view.placements) {
                    proxy.set_asleep(addr, true);
                    asleep.insert(r.clone());
                    ready_since.remove(r);
                }
            }
        }
    }
}

/// The placements of instance `id`'s replicas: its own id (replica 0) and `<id>.k`, which sort
/// right after it (ids are of one length, so no other instance's id falls between).
fn replicas_of<'p>(
    id: &'p InstanceId,
    placements: &'p BTreeMap<InstanceId, Arc<str>>,
) -> impl Iterator<Item = (&'p InstanceId, &'p Arc<str>)> {
    placements
        .range(id.clone()..)
        .take_while(move |(r, _)| r.replica_of().0 == &*id.0)
}

/// When instance `id` was last used: the latest request routed to any of its replicas, or the
/// latest time one of them became ready (a replica that just started is not idle yet). Traffic
/// to any replica keeps all of them up. `None` while no replica is ready (starting, or crashed
/// and restarting): then nothing is scaled to zero.
fn last_use(
    id: &InstanceId,
    placements: &BTreeMap<InstanceId, Arc<str>>,
    ready_since: &BTreeMap<InstanceId, Instant>,
    activity: &microstax_proxy::Activity,
) -> Option<Instant> {
    let mut ready = None;
    let mut requested = None;
    for (r, addr) in replicas_of(id, placements) {
        ready = ready.max(ready_since.get(r).copied());
        requested = requested.max(activity.last_request_upstream(addr));
    }
    let ready = ready?;
    Some(requested.map_or(ready, |t| t.max(ready)))
}

/// Metrics of the environments (registered on the proxy's registry): branch expiry, instances
/// by state and current failures by kind.
#[derive(Clone)]
pub(crate) struct EnvironmentMetrics {
    expired: prometheus::IntCounterVec,
    notices: prometheus::IntCounter,
    instances: prometheus::IntGaugeVec,
    failures: prometheus::IntGaugeVec,
}

/// The `state` label values of `microstax_instances`.
const STATES: [&str; 7] = [
    "not_started",
    "starting",
    "ready",
    "failed",
    "stopping",
    "rendered",
    "scaled_to_zero",
];

impl EnvironmentMetrics {
    pub(crate) fn new(registry: &prometheus::Registry) -> Result<EnvironmentMetrics> {
        let expired = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "microstax_branches_expired_total",
                "Branches expired by their TTL: deleted (API-created) or dormant (file-backed)",
            ),
            &["outcome"],
        )?;
        let notices = prometheus::IntCounter::new(
            "microstax_branch_expiry_notices_total",
            "Expiries announced ahead of time",
        )?;
        let instances = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "microstax_instances",
                "Instances the live plans need, by state",
            ),
            &["state"],
        )?;
        let failures = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "microstax_environment_failures",
                "What stands in the way of the live plans now: a store that could not be created, an instance that failed, a fork that cannot be planned",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(expired.clone()))?;
        registry.register(Box::new(notices.clone()))?;
        registry.register(Box::new(instances.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(EnvironmentMetrics {
            expired,
            notices,
            instances,
            failures,
        })
    }

    /// Set the gauges from what the runtime knows now.
    fn observe(&self, runtime: &Runtime, view: &microstax_planner::RuntimeView) {
        let mut counts = [0i64; STATES.len()];
        // one count per process the executor runs: each replica in its own state (parking is
        // per instance: its replicas sleep and wake together)
        let replicas = view
            .desired
            .instances
            .iter()
            .flat_map(|(id, d)| replica_ids(id, d, view).into_iter().map(move |r| (id, r)));
        for (id, r) in replicas {
            let state = match view.observed.get(&r).map(|o| &o.state) {
                None if runtime.is_parked(id) => 6,
                None => 0,
                Some(InstanceState::Starting) => 1,
                Some(InstanceState::Ready { .. }) => 2,
                Some(InstanceState::Failed { .. }) => 3,
                Some(InstanceState::Stopping) => 4,
                Some(InstanceState::Rendered) => 5,
            };
            counts[state] += 1;
        }
        for (state, n) in STATES.iter().zip(counts) {
            self.instances.with_label_values(&[state]).set(n);
        }
        let (mut stores, mut instances) = (0, 0);
        for f in &view.failures {
            match f {
                microstax_exec::Failure::Store { .. } => stores += 1,
                microstax_exec::Failure::Instance { .. } => instances += 1,
            }
        }
        self.failures.with_label_values(&["store"]).set(stores);
        self.failures
            .with_label_values(&["instance"])
            .set(instances);
        self.failures
            .with_label_values(&["plan"])
            .set(view.problems.len() as i64);
    }
}

#[derive(Default)]
struct TtlState {
    /// When each branch was first seen (a branch never requested expires from then).
    first_seen: BTreeMap<String, Instant>,
    /// When each dormant branch went dormant.
    dormant_since: BTreeMap<String, Instant>,
    /// Branches whose expiry was announced.
    noticed: std::collections::BTreeSet<String>,
}

/// Branch TTL: a branch with no request for its TTL (from its last request, or from when it
/// appeared) expires, unless other layers name it as parent. An API-created branch is deleted; a
/// file-backed one keeps its file and goes dormant (instances parked, stores given back) until a
/// request for it arrives. Expiry is announced `expiry_notice` ahead (log and metric), and
/// `/branches` shows `expires_at`.
async fn expire_branches(
    runtime: &Runtime,
    control: &ControlPlane,
    activity: &microstax_proxy::Activity,
    metrics: &EnvironmentMetrics,
    st: &mut TtlState,
) {
    let cfg = control.config();
    let notice = cfg.lifecycle().expiry_notice;
    let now = Instant::now();
    let wall = std::time::SystemTime::now();
    let mut expiry = BTreeMap::new();
    let mut delete = Vec::new();
    for layer in cfg.layers().filter(|l| l.kind == LayerKind::Branch) {
        let name = &layer.name;
        let Some(idx) = cfg.layer_id(name) else {
            continue;
        };
        let seen = *st.first_seen.entry(name.clone()).or_insert(now);
        let last_request = activity.last_request_branch(name);
        if let Some(since) = st.dormant_since.get(name) {
            if last_request.is_some_and(|t| t > *since) || !runtime.is_dormant(name) {
                tracing::info!(branch = %name, "used again: environment prepared");
                runtime.wake_branch(name);
                st.dormant_since.remove(name);
                st.first_seen.insert(name.clone(), now);
            }
            continue;
        }
        let Some(ttl) = cfg.ttl(idx) else {
            continue;
        };
        let last = last_request.map_or(seen, |t| t.max(seen));
        let expires = last + ttl;
        expiry.insert(name.clone(), wall + expires.saturating_duration_since(now));
        if !cfg.children(idx).is_empty() {
            continue; // a parent with live children is never collected
        }
        if now >= expires {
            if layer.doc.file.starts_with("api:") {
                delete.push(name.clone());
            } else {
                tracing::info!(branch = %name, "expired: instances and stores given back until it is used again");
                runtime.make_dormant(name);
                st.dormant_since.insert(name.clone(), now);
                metrics.expired.with_label_values(&["dormant"]).inc();
            }
            st.noticed.remove(name);
        } else if now + notice >= expires && st.noticed.insert(name.clone()) {
            tracing::warn!(branch = %name, in_s = expires.saturating_duration_since(now).as_secs(), "branch expires soon without a request");
            metrics.notices.inc();
        }
    }
    runtime.set_expiry(expiry);
    for name in delete {
        let change = Change::Remove {
            name: name.clone(),
            origin: Arc::from("ttl"),
        };
        match control.apply(vec![change], ChangeSource::Api).await {
            Ok(_) => {
                tracing::info!(branch = %name, "expired: deleted");
                metrics.expired.with_label_values(&["deleted"]).inc();
                st.first_seen.remove(&name);
            }
            Err(e) => tracing::warn!(branch = %name, error = %e, "expired branch not deleted"),
        }
    }
}

async fn recv(wakes: &mut Option<tokio::sync::mpsc::Receiver<Arc<str>>>) -> Option<Arc<str>> {
    match wakes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A request woke `authority`: start the parked instance placed there.
fn wake(runtime: &Runtime, authority: &str) {
    let view = runtime.view();
    for (id, addr) in &view.placements {
        if &**addr == authority && runtime.wake(id) {
            tracing::info!(instance = %id.short(), "woken by a request");
        }
    }
}
