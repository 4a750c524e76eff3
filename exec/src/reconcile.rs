//! The reconciler: converges what runs (the executor's instances, the plugins' stores) to what
//! the live plans need. Desired state is the union of every live branch's plan; a pass creates
//! the stores a branch needs before starting the instances that use them, starts what is missing,
//! and gives back what nothing needs any more once it has been unneeded for a grace period (so a
//! branch file rewritten by an editor does not bounce its instances).
//!
//! A pass is idempotent: running it twice with the same desired state changes nothing the second
//! time. An instance that several branches share stays while any of them needs it, because the
//! desired state is keyed by content address. Stores made by a previous run are remembered in a
//! small record file, so a restarted proxy still drops the stores of branches deleted meanwhile.

use crate::error::StoreError;
use crate::executor::Executor;
use crate::spec::{InstanceId, InstanceSpec, InstanceState, StoreRequest};
use crate::store::{StoreHandle, StorePlugin};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A branch store: (store name, branch).
pub type StoreKey = (Arc<str>, Arc<str>);

/// One instance the live plans need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredInstance {
    /// What to run. Env values naming a store are filled in by the pass (see `store_env`).
    pub spec: InstanceSpec,
    /// The branches whose plans need it.
    pub branches: BTreeSet<Arc<str>>,
    /// Env variables that receive a branch store's connection string before the instance
    /// starts: (variable, store). The instance is not started until each store exists.
    pub store_env: Vec<(String, StoreKey)>,
    /// Scale to zero: stop it after this long without a request (`None`: keep it running).
    pub idle_after: Option<Duration>,
}

/// The union of every live branch's plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Instances by content address.
    pub instances: BTreeMap<InstanceId, DesiredInstance>,
    /// Branch stores.
    pub stores: BTreeMap<StoreKey, StoreRequest>,
}

/// Reconciler settings.
#[derive(Debug, Clone)]
pub struct ReconcileOptions {
    /// How long an instance or store stays after nothing needs it.
    pub grace: Duration,
    /// Where the record of created stores is kept (none: not kept across restarts).
    pub store_records: Option<PathBuf>,
}

impl Default for ReconcileOptions {
    fn default() -> ReconcileOptions {
        ReconcileOptions {
            grace: Duration::from_secs(10),
            store_records: None,
        }
    }
}

/// The outcome of one thing in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A store could not be created or dropped.
    Store {
        /// Which.
        key: StoreKey,
        /// Why.
        reason: String,
    },
    /// An instance could not be started (its reason, or the store it waits for).
    Instance {
        /// Which.
        id: InstanceId,
        /// Its service.
        service: Arc<str>,
        /// Why.
        reason: String,
    },
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Instances newly ensured.
    pub started: Vec<InstanceId>,
    /// Instances stopped (unneeded past the grace).
    pub stopped: Vec<InstanceId>,
    /// Stores created.
    pub stores_created: Vec<StoreKey>,
    /// Stores dropped.
    pub stores_dropped: Vec<StoreKey>,
    /// What failed, with reasons.
    pub failures: Vec<Failure>,
    /// Where each ensured instance answers.
    pub placements: BTreeMap<InstanceId, Arc<str>>,
}

impl Pass {
    /// Whether the pass changed anything.
    pub fn changed(&self) -> bool {
        !(self.started.is_empty()
            && self.stopped.is_empty()
            && self.stores_created.is_empty()
            && self.stores_dropped.is_empty())
    }
}

#[derive(Debug, Default)]
struct State {
    /// Instances ensured by this reconciler, with their address.
    placed: BTreeMap<InstanceId, Arc<str>>,
    /// The spec each placed instance was last ensured with: a spec that changed without
    /// changing the content address (its replicas) is ensured again.
    ensured: BTreeMap<InstanceId, InstanceSpec>,
    /// Unneeded since.
    released: BTreeMap<InstanceId, Instant>,
    /// Stores that exist.
    stores: BTreeMap<StoreKey, StoreHandle>,
    /// Stores unneeded since.
    stores_released: BTreeMap<StoreKey, Instant>,
    /// The last reason each store failed for (cleared when it is created).
    store_failures: BTreeMap<StoreKey, String>,
}

/// Converges executors and stores to the desired state.
pub struct Reconciler {
    executor: Arc<dyn Executor>,
    plugins: BTreeMap<Arc<str>, Arc<dyn StorePlugin>>,
    opts: ReconcileOptions,
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("executor", &self.executor.name())
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Reconciler {
    /// A reconciler over one executor and store plugins keyed by store name or kind
    /// (`postgres`, ...; the key `*` serves every store without a plugin of its own). Stores recorded by a previous run are
    /// loaded so they can be given back.
    pub fn new(
        executor: Arc<dyn Executor>,
        plugins: BTreeMap<Arc<str>, Arc<dyn StorePlugin>>,
        opts: ReconcileOptions,
    ) -> Reconciler {
        let mut state = State::default();
        if let Some(path) = &opts.store_records {
            for h in crate::records::load_stores(path) {
                state
                    .stores
                    .insert((h.request.store.clone(), h.request.branch.clone()), h);
            }
        }
        Reconciler {
            executor,
            plugins,
            opts,
            state: tokio::sync::Mutex::new(state),
        }
    }

    /// The executor.
    pub fn executor(&self) -> &Arc<dyn Executor> {
        &self.executor
    }

    /// The stores that exist now, by key.
    pub async fn stores(&self) -> BTreeMap<StoreKey, StoreHandle> {
        self.state.lock().await.stores.clone()
    }

    /// Where each instance this reconciler ensured answers.
    pub async fn placements(&self) -> BTreeMap<InstanceId, Arc<str>> {
        self.state.lock().await.placed.clone()
    }

    /// The plugin of a store: one registered under the store's own name (a command plugin with
    /// that store's commands), else under its kind (`postgres`), else under `*`.
    fn plugin(&self, req: &StoreRequest) -> Option<&Arc<dyn StorePlugin>> {
        self.plugins
            .get(&req.store)
            .or_else(|| self.plugins.get(&req.kind))
            .or_else(|| self.plugins.get("*"))
    }

    /// One pass at time `now` (passed in so tests control the grace without sleeping).
    pub async fn reconcile(&self, desired: &Desired, now: Instant) -> Pass {
        let mut st = self.state.lock().await;
        let mut pass = Pass::default();
        self.create_stores(&mut st, desired, &mut pass).await;
        self.ensure_instances(&mut st, desired, &mut pass);
        self.release_instances(&mut st, desired, now, &mut pass);
        self.release_stores(&mut st, desired, now, &mut pass).await;
        if pass.stores_created.len() + pass.stores_dropped.len() > 0 {
            if let Some(path) = &self.opts.store_records {
                if let Err(e) = crate::records::save_stores(path, st.stores.values()) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot record branch stores");
                }
            }
        }
        pass.placements = st.placed.clone();
        pass
    }

    async fn create_stores(&self, st: &mut State, desired: &Desired, pass: &mut Pass) {
        for (key, req) in &desired.stores {
            st.stores_released.remove(key);
            if st.stores.contains_key(key) {
                continue;
            }
            let made = match self.plugin(req) {
                Some(p) => p.create(req).await,
                None => Err(StoreError::Invalid {
                    store: req.store.to_string(),
                    branch: req.branch.to_string(),
                    reason: format!("no store plugin handles kind `{}`", req.kind),
                }),
            };
            match made {
                Ok(h) => {
                    st.store_failures.remove(key);
                    st.stores.insert(key.clone(), h);
                    pass.stores_created.push(key.clone());
                }
                Err(e) => {
                    let reason = e.to_string();
                    st.store_failures.insert(key.clone(), reason.clone());
                    pass.failures.push(Failure::Store {
                        key: key.clone(),
                        reason,
                    });
                }
            }
        }
    }

    fn ensure_instances(&self, st: &mut State, desired: &Desired, pass: &mut Pass) {
        let observed: BTreeMap<InstanceId, InstanceState> = self
            .executor
            .observe()
            .into_iter()
            .map(|o| (o.id, o.state))
            .collect();
        for (id, want) in &desired.instances {
            let spec = match bind_stores(want, &st.stores, &st.store_failures) {
                Ok(spec) => spec,
                Err(reason) => {
                    pass.failures.push(Failure::Instance {
                        id: id.clone(),
                        service: want.spec.service.clone(),
                        reason,
                    });
                    continue;
                }
            };
            for spec in self.replicas(spec) {
                let id = &spec.id;
                st.released.remove(id);
                match observed.get(id) {
                    // still stopping (given back, then needed again): started once it is gone
                    Some(InstanceState::Stopping) => continue,
                    Some(_) if st.placed.contains_key(id) && st.ensured.get(id) == Some(&spec) => {
                        continue
                    }
                    _ => {}
                }
                match self.executor.ensure(&spec) {
                    Ok(addr) => {
                        let new = st.placed.insert(id.clone(), addr).is_none();
                        st.ensured.insert(id.clone(), spec.clone());
                        if new || !observed.contains_key(id) {
                            pass.started.push(id.clone());
                        }
                    }
                    Err(e) => pass.failures.push(Failure::Instance {
                        id: id.clone(),
                        service: want.spec.service.clone(),
                        reason: e.to_string(),
                    }),
                }
            }
        }
    }

    /// What to ensure for `spec`: itself, when the executor runs its replicas behind one
    /// address (or it has one), else one instance per replica, each under its replica id.
    fn replicas(&self, spec: InstanceSpec) -> Vec<InstanceSpec> {
        if spec.replicas <= 1 || self.executor.runs_replicas() {
            return vec![spec];
        }
        (0..spec.replicas)
            .map(|k| InstanceSpec {
                id: spec.id.replica(k),
                replicas: 1,
                ..spec.clone()
            })
            .collect()
    }

    /// Whether `id` (an instance or one of its replicas) is one the desired state asks for.
    fn wanted(&self, desired: &Desired, id: &InstanceId) -> bool {
        let (_, k) = id.replica_of();
        desired
            .instances
            .get(&id.base())
            .is_some_and(|d| k == 0 || (k < d.spec.replicas && !self.executor.runs_replicas()))
    }

    fn release_instances(&self, st: &mut State, desired: &Desired, now: Instant, pass: &mut Pass) {
        // What the executor knows but nothing needs: ours, or left over by a previous run.
        let known: BTreeSet<InstanceId> = self
            .executor
            .observe()
            .into_iter()
            .filter(|o| o.state != InstanceState::Stopping)
            .map(|o| o.id)
            .chain(st.placed.keys().cloned())
            .collect();
        for id in known {
            if self.wanted(desired, &id) {
                continue;
            }
            let since = *st.released.entry(id.clone()).or_insert(now);
            if now.saturating_duration_since(since) < self.opts.grace {
                continue;
            }
            match self.executor.stop(&id) {
                Ok(()) => {
                    st.released.remove(&id);
                    st.placed.remove(&id);
                    st.ensured.remove(&id);
                    pass.stopped.push(id);
                }
                Err(e) => pass.failures.push(Failure::Instance {
                    service: Arc::from("?"),
                    reason: e.to_string(),
                    id,
                }),
            }
        }
    }

    async fn release_stores(
        &self,
        st: &mut State,
        desired: &Desired,
        now: Instant,
        pass: &mut Pass,
    ) {
        let unneeded: Vec<StoreKey> = st
            .stores
            .keys()
            .filter(|k| !desired.stores.contains_key(*k))
            .cloned()
            .collect();
        // A store is dropped only once no instance that could use it is still placed.
        let in_use: BTreeSet<&StoreKey> = desired
            .instances
            .values()
            .flat_map(|d| d.store_env.iter().map(|(_, k)| k))
            .collect();
        for key in unneeded {
            let since = *st.stores_released.entry(key.clone()).or_insert(now);
            if now.saturating_duration_since(since) < self.opts.grace || in_use.contains(&key) {
                continue;
            }
            let Some(handle) = st.stores.get(&key).cloned() else {
                continue;
            };
            let dropped = match self.plugin(&handle.request) {
                Some(p) => p.drop_store(&handle).await,
                None => Ok(()),
            };
            match dropped {
                Ok(()) => {
                    st.stores.remove(&key);
                    st.stores_released.remove(&key);
                    pass.stores_dropped.push(key);
                }
                Err(e) => pass.failures.push(Failure::Store {
                    key,
                    reason: e.to_string(),
                }),
            }
        }
    }
}

/// The instance's spec with the connection strings of its stores filled in, or why it cannot
/// start yet.
fn bind_stores(
    want: &DesiredInstance,
    stores: &BTreeMap<StoreKey, StoreHandle>,
    failures: &BTreeMap<StoreKey, String>,
) -> Result<InstanceSpec, String> {
    let mut spec = want.spec.clone();
    for (var, key) in &want.store_env {
        match stores.get(key) {
            Some(h) => {
                spec.env.insert(var.clone(), h.connection.clone());
            }
            None => {
                return Err(match failures.get(key) {
                    Some(why) => format!("waits for store {} of {}: {why}", key.0, key.1),
                    None => format!("waits for store {} of {}", key.0, key.1),
                })
            }
        }
    }
    Ok(spec)
}
