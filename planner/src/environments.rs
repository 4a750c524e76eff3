//! Environments that run: from the plans of every live team and branch to what an executor
//! starts. The desired state is the union of the plans: each planned fork of a service that its
//! layer gives no endpoint of its own becomes an instance (named by its content address, so
//! layers that need the identical instance share one), and each isolated store with store
//! settings becomes a branch store, created before the instances that use it start.
//!
//! [`Environments`] is what the control plane calls before it compiles a change
//! ([`Environments::prepare`]) and what the compiler asks for the address of a planned instance
//! ([`Environments::placement`]). [`Runtime`] implements it over a [`Reconciler`].

use crate::decision::{Decision, Isolation, Subject};
use crate::instance::InstanceKey;
use crate::planner::Planner;
use arc_swap::ArcSwap;
use microstax_config::environments::{StoreCopy, DEFAULT_START_TIMEOUT_MS};
use microstax_config::Config;
use microstax_exec::{
    BoxFuture, Desired, DesiredInstance, Failure, InstanceId, InstanceSpec, Observed, Pass,
    Reconciler, RunSpec, StoreMode, StoreRequest,
};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the control plane needs of the environments behind it.
pub trait Environments: Send + Sync {
    /// Make what `config`'s plans need exist (stores created, instances started and placed)
    /// before the table that routes to them is compiled.
    fn prepare<'a>(&'a self, config: &'a Config) -> BoxFuture<'a, ()>;

    /// Where the planned instance `key` answers, once prepared: one address per replica the
    /// executor runs on its own (empty when it is not placed).
    fn placement(&self, key: InstanceKey) -> Vec<Arc<str>>;
}

/// Why a planned instance has no placement, by layer and service (for `explain`).
pub type Problems = BTreeMap<(String, String), String>;

/// The desired state of `config`, and what could not be planned, per layer and service.
///
/// A forked instance that uses a store gets the connection string of the nearest layer of its
/// lineage that isolates the store (its own, or an ancestor's whose copy it reuses), else keeps
/// the baseline's. A store a plan isolates without `stores:` settings cannot be made: it is a
/// problem of its layer, and the instances that would use it are not started (they would write
/// to the baseline's store), so their forks stay unplaced and say why.
pub fn desired(config: &Config, planner: &Planner) -> (Desired, Problems) {
    let mut out = Desired::default();
    let mut problems = Problems::new();
    let mut plans = Vec::new();
    // per layer: the stores its plan isolates, with the request (None: no settings)
    let mut isolated: BTreeMap<usize, BTreeMap<String, Option<StoreRequest>>> = BTreeMap::new();
    for (idx, plan) in planner.plan_every(config) {
        let Some(layer) = config.layer(idx) else {
            continue;
        };
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                problems.insert((layer.name.clone(), "*".into()), e.to_string());
                continue;
            }
        };
        let mine = isolated.entry(idx).or_default();
        for e in plan
            .entries
            .iter()
            .filter(|e| e.subject == Subject::Store && matches!(e.decision, Decision::Isolate(_)))
        {
            let Some(s) = config.store_settings(&e.name) else {
                problems.insert(
                    (layer.name.clone(), e.name.to_string()),
                    format!(
                        "the plan isolates store {} but the org's `stores:` has no settings for it: nothing can create its branch copy",
                        e.name
                    ),
                );
                mine.insert(e.name.to_string(), None);
                continue;
            };
            // the solver's choice: a per-branch schema, or a database (from a template unless
            // the store's settings ask for empty ones)
            let mode = match (&e.decision, s.copy) {
                (Decision::Isolate(Isolation::Schema), _) => StoreMode::Schema,
                (Decision::Isolate(Isolation::Database), StoreCopy::Database) => {
                    StoreMode::Database
                }
                (Decision::Isolate(Isolation::Database), _) => StoreMode::DatabaseFromTemplate,
                (_, StoreCopy::DatabaseFromTemplate) => StoreMode::DatabaseFromTemplate,
                (_, StoreCopy::Schema) => StoreMode::Schema,
                (_, StoreCopy::Database) => StoreMode::Database,
            };
            let req = StoreRequest {
                store: Arc::from(e.name.as_ref()),
                kind: Arc::from(s.kind.as_str()),
                branch: Arc::from(layer.name.as_str()),
                mode,
                baseline: s.url.clone(),
            };
            out.stores
                .insert((req.store.clone(), req.branch.clone()), req.clone());
            mine.insert(e.name.to_string(), Some(req));
        }
        plans.push((layer, idx, plan));
    }
    for (layer, idx, plan) in &plans {
        let lineage = config.lineage(*idx);
        // the nearest isolation of `store` along the lineage: Some(None) when it has no settings
        let nearest = |store: &str| -> Option<&Option<StoreRequest>> {
            lineage
                .iter()
                .find_map(|i| isolated.get(i).and_then(|m| m.get(store)))
        };
        for e in plan
            .entries
            .iter()
            .filter(|e| e.subject == Subject::Service && e.decision == Decision::Fork)
        {
            let declared = layer
                .service(&e.name)
                .is_some_and(|s| s.endpoints.is_some() || s.local.is_some());
            if declared {
                continue;
            }
            let Some(eff) = config.effective(*idx, &e.name) else {
                continue;
            };
            let mut store_env = Vec::new();
            let mut unmade = Vec::new();
            if let Some(svc) = config.service(&e.name) {
                for st in &svc.stores {
                    match nearest(&st.name) {
                        Some(Some(req)) => {
                            if let Some(s) = config.store_settings(&st.name) {
                                store_env.push((s.env, (req.store.clone(), req.branch.clone())));
                            }
                        }
                        Some(None) => unmade.push(st.name.as_str()),
                        None => {}
                    }
                }
            }
            if !unmade.is_empty() {
                problems.insert(
                    (layer.name.clone(), e.name.to_string()),
                    format!(
                        "not started: it needs the branch copy of {}, which nothing can create (no `stores:` settings)",
                        unmade.join(", ")
                    ),
                );
                continue;
            }
            let id = InstanceId(Arc::from(e.instance.hex()));
            let run = eff.run.as_ref().map(|r| RunSpec {
                command: r.value.command.clone(),
                args: r.value.args.clone(),
                env: r.value.env.clone(),
                probe_path: r.value.probe.clone().unwrap_or_else(|| "/".into()),
                start_timeout: Duration::from_millis(
                    r.value.start_timeout_ms.unwrap_or(DEFAULT_START_TIMEOUT_MS),
                ),
            });
            if run.is_none() && eff.image.is_none() {
                problems.insert(
                    (layer.name.clone(), e.name.to_string()),
                    "no `run:` block or image says how to start it".into(),
                );
            }
            let spec = InstanceSpec {
                id: id.clone(),
                service: Arc::from(e.name.as_ref()),
                branch: Arc::from(layer.name.as_str()),
                run,
                image: eff.image.as_ref().map(|i| i.value.clone()),
                env: eff
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value.clone()))
                    .collect(),
                cpu_millis: eff.resources.as_ref().map(|r| r.value.cpu_m),
                memory_mib: eff.resources.as_ref().map(|r| r.value.memory_mi),
                replicas: e.chosen.as_ref().map_or(1, |c| c.replicas.max(1)),
            };
            // scaled to zero only where the solver chose it (a latency objective may keep it warm)
            let scaled = e
                .chosen
                .as_ref()
                .is_none_or(|c| &*c.label == crate::economy::labels::SCALED);
            let idle_after = eff
                .idle_after_s
                .as_ref()
                .filter(|_| scaled)
                .map(|i| Duration::from_secs(i.value));
            let entry = out.instances.entry(id).or_insert_with(|| DesiredInstance {
                spec,
                branches: BTreeSet::new(),
                store_env,
                idle_after,
            });
            entry.branches.insert(Arc::from(layer.name.as_str()));
        }
    }
    (out, problems)
}

/// What the runtime knows, for `/instances` and `explain`.
#[derive(Debug, Clone, Default)]
pub struct RuntimeView {
    /// The desired state last prepared.
    pub desired: Arc<Desired>,
    /// What the executor reports, by instance id.
    pub observed: BTreeMap<InstanceId, Observed>,
    /// Placements by instance id.
    pub placements: BTreeMap<InstanceId, Arc<str>>,
    /// Failures of the last pass.
    pub failures: Vec<Failure>,
    /// Planning problems of the last prepare.
    pub problems: Problems,
}

/// [`Environments`] over a reconciler: the planner's side of the executors.
pub struct Runtime {
    reconciler: Arc<Reconciler>,
    /// By instance key, the address of each replica in replica order.
    placements: ArcSwap<FxHashMap<u128, Vec<Arc<str>>>>,
    desired: ArcSwap<Desired>,
    problems: ArcSwap<Problems>,
    failures: ArcSwap<Vec<Failure>>,
    planner: tokio::sync::Mutex<Option<(usize, Arc<Planner>)>>,
    /// Instances scaled to zero: desired by their plans, but left out of the reconciled state
    /// until a request wakes them.
    parked: ArcSwap<BTreeSet<InstanceId>>,
    /// File-backed branches expired by their TTL: their instances are parked and their stores
    /// given back until a request for the branch arrives.
    dormant: ArcSwap<BTreeSet<Arc<str>>>,
    /// When each branch with a TTL expires, as last computed (for `/branches`).
    expiry: ArcSwap<BTreeMap<String, std::time::SystemTime>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("reconciler", &self.reconciler)
            .finish()
    }
}

impl Runtime {
    /// A runtime over `reconciler`.
    pub fn new(reconciler: Arc<Reconciler>) -> Arc<Runtime> {
        Arc::new(Runtime {
            reconciler,
            placements: ArcSwap::from_pointee(FxHashMap::default()),
            desired: ArcSwap::from_pointee(Desired::default()),
            problems: ArcSwap::from_pointee(Problems::new()),
            failures: ArcSwap::from_pointee(Vec::new()),
            planner: tokio::sync::Mutex::new(None),
            parked: ArcSwap::from_pointee(BTreeSet::new()),
            dormant: ArcSwap::from_pointee(BTreeSet::new()),
            expiry: ArcSwap::from_pointee(BTreeMap::new()),
        })
    }

    /// The reconciler.
    pub fn reconciler(&self) -> &Arc<Reconciler> {
        &self.reconciler
    }

    /// One reconcile pass with the desired state last prepared (for the periodic loop: stops
    /// what is unneeded past the grace, retries failed stores). Returns the pass and whether a
    /// placement appeared or went (then the table must be recompiled).
    pub async fn tick(&self) -> (Pass, bool) {
        let desired = self.desired.load_full();
        let parked = self.parked.load_full();
        let dormant = self.dormant.load_full();
        let pass = if parked.is_empty() && dormant.is_empty() {
            self.reconciler.reconcile(&desired, Instant::now()).await
        } else {
            let mut awake = (*desired).clone();
            awake.instances.retain(|id, _| !parked.contains(id));
            awake
                .stores
                .retain(|(_, branch), _| !dormant.contains(branch));
            self.reconciler.reconcile(&awake, Instant::now()).await
        };
        let changed = self.record(&pass);
        (pass, changed)
    }

    fn record(&self, pass: &Pass) -> bool {
        let parked = self.parked.load();
        let prev = self.placements.load();
        let mut by_replica: BTreeMap<(u128, u32), Arc<str>> = BTreeMap::new();
        for (id, a) in &pass.placements {
            let (base, k) = id.replica_of();
            if let Ok(key) = u128::from_str_radix(base, 16) {
                by_replica.insert((key, k), a.clone());
            }
        }
        let mut next: FxHashMap<u128, Vec<Arc<str>>> = FxHashMap::default();
        for ((key, _), a) in by_replica {
            next.entry(key).or_default().push(a);
        }
        // a parked instance keeps its address: its route stays and a request wakes it there
        for id in parked.iter() {
            if let Ok(k) = u128::from_str_radix(&id.0, 16) {
                if let Some(a) = prev.get(&k) {
                    next.entry(k).or_insert_with(|| a.clone());
                }
            }
        }
        let changed = **self.placements.load() != next;
        if changed {
            self.placements.store(Arc::new(next));
        }
        self.failures.store(Arc::new(pass.failures.clone()));
        for f in &pass.failures {
            tracing::warn!(failure = ?f, "environment not prepared");
        }
        changed
    }

    /// Scale `id` to zero: it stays desired (its route and address stay) but is stopped by the
    /// next pass past the grace, until [`Runtime::wake`].
    pub fn park(&self, id: &InstanceId) {
        let mut next = (**self.parked.load()).clone();
        if next.insert(id.base()) {
            self.parked.store(Arc::new(next));
        }
    }

    /// Start a scaled-to-zero instance again (at its old address, when it is still free).
    pub fn wake(&self, id: &InstanceId) -> bool {
        let id = &id.base();
        let mut next = (**self.parked.load()).clone();
        let was = next.remove(id);
        if was {
            self.parked.store(Arc::new(next));
            // the dormant branches it serves wake with it
            let desired = self.desired.load();
            if let Some(inst) = desired.instances.get(id) {
                let mut d = (**self.dormant.load()).clone();
                let before = d.len();
                d.retain(|b| !inst.branches.contains(b));
                if d.len() != before {
                    self.dormant.store(Arc::new(d));
                }
            }
        }
        was
    }

    /// Give back what file-backed branch `branch` holds until it is used again: its instances
    /// that no awake branch needs are parked (their routes stay, a request wakes them) and its
    /// stores dropped after the grace.
    pub fn make_dormant(&self, branch: &str) {
        let mut d = (**self.dormant.load()).clone();
        d.insert(Arc::from(branch));
        let desired = self.desired.load();
        let mut parked = (**self.parked.load()).clone();
        for (id, inst) in &desired.instances {
            if inst.branches.iter().all(|b| d.contains(b)) {
                parked.insert(id.clone());
            }
        }
        self.dormant.store(Arc::new(d));
        self.parked.store(Arc::new(parked));
    }

    /// Whether `branch` is dormant.
    pub fn is_dormant(&self, branch: &str) -> bool {
        self.dormant.load().contains(branch)
    }

    /// Wake a dormant branch: its stores are made again and its instances started.
    pub fn wake_branch(&self, branch: &str) {
        let mut d = (**self.dormant.load()).clone();
        if !d.remove(branch) {
            return;
        }
        self.dormant.store(Arc::new(d));
        let desired = self.desired.load();
        for (id, inst) in &desired.instances {
            if inst.branches.iter().any(|b| &**b == branch) {
                self.wake(id);
            }
        }
    }

    /// Record when branches expire (shown by `/branches`).
    pub fn set_expiry(&self, expiry: BTreeMap<String, std::time::SystemTime>) {
        self.expiry.store(Arc::new(expiry));
    }

    /// When `branch` expires, if it has a TTL.
    pub fn expires_at(&self, branch: &str) -> Option<std::time::SystemTime> {
        self.expiry.load().get(branch).copied()
    }

    /// Whether `id` is scaled to zero.
    pub fn is_parked(&self, id: &InstanceId) -> bool {
        self.parked.load().contains(&id.base())
    }

    /// What the runtime knows now.
    pub fn view(&self) -> RuntimeView {
        let placements = self
            .placements
            .load()
            .iter()
            .flat_map(|(k, addrs)| {
                let id = InstanceId(Arc::from(InstanceKey(*k).hex()));
                addrs
                    .iter()
                    .zip(0u32..)
                    .map(move |(a, r)| (id.replica(r), a.clone()))
            })
            .collect();
        RuntimeView {
            desired: self.desired.load_full(),
            observed: self
                .reconciler
                .executor()
                .observe()
                .into_iter()
                .map(|o| (o.id.clone(), o))
                .collect(),
            placements,
            failures: (**self.failures.load()).clone(),
            problems: (**self.problems.load()).clone(),
        }
    }

    /// The planned instance `key` of `service` in `layer` as the executor runs it (state,
    /// address, pid), and why it is not running when something stands in its way (a planning
    /// problem, a failed store or start). For `explain`.
    pub fn status(
        &self,
        layer: &str,
        service: &str,
        key: InstanceKey,
    ) -> (Option<String>, Option<String>) {
        let v = self.view();
        let id = InstanceId(Arc::from(key.hex()));
        let mut problem = v
            .problems
            .get(&(layer.to_string(), service.to_string()))
            .or_else(|| v.problems.get(&(layer.to_string(), "*".to_string())))
            .cloned();
        for f in &v.failures {
            match f {
                Failure::Instance {
                    id: fid, reason, ..
                } if *fid == id => {
                    problem.get_or_insert_with(|| format!("instance {}: {reason}", id.short()));
                }
                Failure::Store { key, reason } if &*key.1 == layer => {
                    problem.get_or_insert_with(|| format!("store {}: {reason}", key.0));
                }
                _ => {}
            }
        }
        let Some(d) = v.desired.instances.get(&id) else {
            return (None, problem);
        };
        let replicas = replica_ids(&id, d, &v);
        let mut text = replicas
            .iter()
            .map(|r| self.replica_text(r, &v))
            .collect::<Vec<_>>()
            .join("; ");
        if replicas.len() > 1 {
            text = format!("{} replicas: {text}", replicas.len());
        }
        if d.branches.len() > 1 {
            let b: Vec<&str> = d.branches.iter().map(|b| &**b).collect();
            text.push_str(&format!(", shared by {}", b.join(", ")));
        }
        (Some(text), problem)
    }

    /// The state of instance or replica `id` as `/instances` and `explain` show it: what the
    /// executor reports, else `scaled to zero` (parked) or `not started`.
    fn state_of(&self, id: &InstanceId, o: Option<&Observed>) -> String {
        match o.map(|o| &o.state) {
            None if self.is_parked(id) => "scaled to zero".to_string(),
            None => "not started".to_string(),
            Some(s) => state_text(s),
        }
    }

    /// One instance or replica as `explain` shows it: id, state, address and pid.
    fn replica_text(&self, id: &InstanceId, v: &RuntimeView) -> String {
        let o = v.observed.get(id);
        let mut text = format!("{} ({})", id.short(), self.state_of(id, o));
        if let Some(a) = v.placements.get(id) {
            text.push_str(&format!(" at {a}"));
        }
        if let Some(pid) = o.and_then(|o| o.pid) {
            text.push_str(&format!(", pid {pid}"));
        }
        text
    }

    async fn planner(&self, config: &Config) -> Option<Arc<Planner>> {
        // the planner indexes the org catalog: rebuild it only when the org layer changed
        let org = Arc::as_ptr(config.org()) as usize;
        let mut slot = self.planner.lock().await;
        if let Some((ptr, p)) = slot.as_ref() {
            if *ptr == org {
                return Some(p.clone());
            }
        }
        match Planner::new(config) {
            Ok(p) => {
                let p = Arc::new(p);
                *slot = Some((org, p.clone()));
                Some(p)
            }
            Err(e) => {
                tracing::warn!(error = %e, "environments not planned: the planner cannot index this config");
                None
            }
        }
    }
}

impl Environments for Runtime {
    fn prepare<'a>(&'a self, config: &'a Config) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let Some(planner) = self.planner(config).await else {
                return;
            };
            let (desired, problems) = desired(config, &planner);
            self.desired.store(Arc::new(desired));
            self.problems.store(Arc::new(problems));
            self.tick().await;
        })
    }

    fn placement(&self, key: InstanceKey) -> Vec<Arc<str>> {
        self.placements
            .load()
            .get(&key.0)
            .cloned()
            .unwrap_or_default()
    }
}

/// The ids the executor runs `id` under: its replicas' when it runs them one by one (their
/// placements or observations say so), else `id` alone.
pub fn replica_ids(id: &InstanceId, d: &DesiredInstance, v: &RuntimeView) -> Vec<InstanceId> {
    let split = (1..d.spec.replicas).any(|k| {
        let r = id.replica(k);
        v.placements.contains_key(&r) || v.observed.contains_key(&r)
    });
    if split {
        (0..d.spec.replicas).map(|k| id.replica(k)).collect()
    } else {
        vec![id.clone()]
    }
}

/// An instance state as `/instances` and `explain` show it.
fn state_text(s: &microstax_exec::InstanceState) -> String {
    use microstax_exec::InstanceState as S;
    match s {
        S::Starting => "starting".into(),
        S::Ready { .. } => "ready".into(),
        S::Failed {
            reason,
            gave_up: true,
        } => format!("failed (gave up): {reason}"),
        S::Failed { reason, .. } => format!("failed, restarting: {reason}"),
        S::Stopping => "stopping".into(),
        S::Rendered => "rendered".into(),
    }
}

/// The `/instances` view: every desired instance with the branches that need it, its state,
/// address, pid and log, and every failure with its reason. With no executor: says so.
pub fn instances_json(runtime: Option<&Runtime>) -> serde_json::Value {
    use serde_json::json;
    let Some(rt) = runtime else {
        return json!({
            "executor": "none",
            "note": "no executor is configured: planned forks without an endpoint are routed by routing.instance_address or to the parent's instance (start with --executor process)",
            "instances": [],
        });
    };
    let v = rt.view();
    let mut instances: Vec<serde_json::Value> = v
        .desired
        .instances
        .iter()
        .flat_map(|(id, d)| replica_ids(id, d, &v).into_iter().map(move |r| (r, d)))
        .map(|(id, d)| {
            let id = &id;
            let o = v.observed.get(id);
            json!({
                "instance": id.short(),
                "id": &*id.0,
                "replica": id.replica_of().1,
                "replicas": d.spec.replicas,
                "service": &*d.spec.service,
                "branches": d.branches.iter().map(|b| &**b).collect::<Vec<_>>(),
                "state": rt.state_of(id, o),
                "address": v.placements.get(id).map(|a| &**a),
                "pid": o.and_then(|o| o.pid),
                "restarts": o.map_or(0, |o| o.restarts),
                "log": o.and_then(|o| o.log.as_ref()).map(|p| p.display().to_string()),
            })
        })
        .collect();
    // what still runs but no plan needs (given back after the grace)
    for (id, o) in &v.observed {
        let wanted = v
            .desired
            .instances
            .get(&id.base())
            .is_some_and(|d| id.replica_of().1 < d.spec.replicas);
        if !wanted {
            instances.push(json!({
                "instance": id.short(), "id": &*id.0, "service": &*o.service,
                "branches": [], "state": format!("{} (unneeded, given back after the grace)", state_text(&o.state)),
                "address": v.placements.get(id).map(|a| &**a), "pid": o.pid,
                "restarts": o.restarts, "log": o.log.as_ref().map(|p| p.display().to_string()),
            }));
        }
    }
    let failures: Vec<serde_json::Value> = v
        .failures
        .iter()
        .map(|f| match f {
            Failure::Store { key, reason } => {
                json!({"store": &*key.0, "branch": &*key.1, "reason": reason})
            }
            Failure::Instance { id, service, reason } => {
                json!({"instance": id.short(), "service": &**service, "reason": reason})
            }
        })
        .chain(v.problems.iter().map(|((layer, service), reason)| {
            json!({"branch": layer, "service": service, "reason": reason})
        }))
        .collect();
    json!({
        "executor": rt.reconciler().executor().name(),
        "instances": instances,
        "stores": v.desired.stores.keys().map(|(s, b)| json!({"store": &**s, "branch": &**b})).collect::<Vec<_>>(),
        "failures": failures,
    })
}
