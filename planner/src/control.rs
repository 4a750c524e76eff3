//! The control plane's write path: every change (a file batch from the watcher, an admin API
//! write) is validated against the current config, compiled incrementally (only the layers it
//! touches and their descendants), and published through a [`TableSink`], one change at a time
//! so generations only go up. A rejected change leaves the last good config and table serving,
//! is logged with its file:line or API reason, and is counted.
//!
//! An API write is one change, accepted or not ([`ControlPlane::apply`]). A file batch is
//! applied change by change ([`ControlPlane::apply_each`]): many developers share one config
//! directory, so one broken file is rejected alone (its last good version keeps serving) and
//! the others apply. The org file is the exception only in that a broken org is rejected whole:
//! the other files of the batch are then applied against the last good org.

use crate::compile::Compiler;
use crate::environments::Environments;
use arc_swap::ArcSwap;
use microstax_config::{
    Config, ConfigError, Diagnostic, LayerIdx, LayerKind, ParsedDoc, RoutingTable,
};
use prometheus::{IntCounterVec, Opts, Registry};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Mutex;

/// Where compiled tables go (the proxy, through an adapter in the binary: the planner never
/// depends on the proxy).
pub trait TableSink: Send + Sync + 'static {
    /// Publish `table` (prewarming as the sink sees fit); resolves once it is being served.
    fn publish(&self, table: Arc<RoutingTable>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Where a change came from (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    /// The config directory watcher.
    File,
    /// The admin API.
    Api,
    /// A shared store followed by a proxy (etcd).
    Etcd,
}

impl ChangeSource {
    fn as_str(self) -> &'static str {
        match self {
            ChangeSource::File => "file",
            ChangeSource::Api => "api",
            ChangeSource::Etcd => "etcd",
        }
    }
}

/// One change to the layer set.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add or replace a layer (an org document rebuilds everything).
    Upsert(Box<ParsedDoc>),
    /// Remove a team or branch layer.
    Remove {
        /// Layer name.
        name: String,
        /// Where the removal comes from, for diagnostics: the deleted file, or the API request
        /// (`api:DELETE /branches/x`).
        origin: Arc<str>,
    },
}

impl Change {
    fn label(&self) -> String {
        match self {
            Change::Upsert(d) if d.kind() == LayerKind::Org => "baseline".to_string(),
            Change::Upsert(d) => d.name().to_string(),
            Change::Remove { name, .. } => name.clone(),
        }
    }
}

/// What an accepted change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The generation now served.
    pub generation: u64,
    /// Names of the layers added, replaced or removed.
    pub layers: Vec<String>,
}

/// What a batch applied change by change did.
#[derive(Debug)]
pub struct BatchOutcome {
    /// The generation published, if any change was accepted.
    pub applied: Option<Applied>,
    /// Per change, in the order given: accepted, or why not.
    pub results: Vec<Result<(), ConfigError>>,
}

struct State {
    config: Arc<Config>,
    compiler: Compiler,
    generation: u64,
}

/// The planner's live state and write path.
pub struct ControlPlane {
    state: Mutex<State>,
    config: ArcSwap<Config>,
    sink: Arc<dyn TableSink>,
    updates: IntCounterVec,
    rejected: IntCounterVec,
    /// Set once the first table is published through the sink.
    ready: AtomicBool,
    /// Layers whose file is rejected (broken, or deleted while children remain) while their
    /// last good version keeps serving: layer name -> reason.
    held: ArcSwap<BTreeMap<String, String>>,
    /// What runs the plans, when an executor is configured.
    environments: Option<Arc<dyn Environments>>,
}

impl ControlPlane {
    /// Compile `config` as generation 1 without publishing it; the control plane is not ready
    /// until [`ControlPlane::publish_initial`] has run.
    pub fn new(
        config: Config,
        sink: Arc<dyn TableSink>,
        registry: &Registry,
    ) -> Result<Arc<ControlPlane>, prometheus::Error> {
        ControlPlane::with_environments(config, sink, registry, None)
    }

    /// [`ControlPlane::new`] with environments that run the plans: every change is prepared
    /// (stores created, instances started and placed) before its table is compiled, so a new
    /// branch's forks route to their own instances from its first table on.
    pub fn with_environments(
        config: Config,
        sink: Arc<dyn TableSink>,
        registry: &Registry,
        environments: Option<Arc<dyn Environments>>,
    ) -> Result<Arc<ControlPlane>, prometheus::Error> {
        let updates = IntCounterVec::new(
            Opts::new(
                "microstax_config_updates_total",
                "Accepted config changes by source",
            ),
            &["source"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "microstax_config_rejected_total",
                "Rejected config changes by source",
            ),
            &["source"],
        )?;
        registry.register(Box::new(updates.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        let compiler = Compiler::with_environments(&config, 1, environments.clone());
        let config = Arc::new(config);
        Ok(Arc::new(ControlPlane {
            config: ArcSwap::new(config.clone()),
            state: Mutex::new(State {
                config,
                compiler,
                generation: 1,
            }),
            sink,
            updates,
            rejected,
            ready: AtomicBool::new(false),
            held: ArcSwap::from_pointee(BTreeMap::new()),
            environments,
        }))
    }

    /// Publish the first table (generation 1); the control plane is ready once the sink has
    /// taken it. Later calls publish nothing.
    pub async fn publish_initial(&self) {
        let mut state = self.state.lock().await;
        if self.ready.load(Ordering::Acquire) {
            return;
        }
        if let Some(env) = &self.environments {
            env.prepare(&state.config).await;
            let config = state.config.clone();
            state.compiler = Compiler::with_environments(&config, 1, Some(env.clone()));
        }
        self.sink.publish(state.compiler.table().clone()).await;
        self.ready.store(true, Ordering::Release);
    }

    /// [`ControlPlane::new`] then [`ControlPlane::publish_initial`].
    pub async fn start(
        config: Config,
        sink: Arc<dyn TableSink>,
        registry: &Registry,
    ) -> Result<Arc<ControlPlane>, prometheus::Error> {
        let control = ControlPlane::new(config, sink, registry)?;
        control.publish_initial().await;
        Ok(control)
    }

    /// The current config (lock-free read).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Whether the first complete config has been published to the sink.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The table last published.
    pub async fn table(&self) -> Arc<RoutingTable> {
        self.state.lock().await.compiler.table().clone()
    }

    /// Why the file of layer `name` is currently rejected while its last good version serves.
    pub fn held(&self, name: &str) -> Option<String> {
        self.held.load().get(name).cloned()
    }

    /// Replace the set of layers held at their last good version (by the file watcher).
    pub fn set_held(&self, held: BTreeMap<String, String>) {
        self.held.store(Arc::new(held));
    }

    /// Count and log a change that was rejected before it reached [`ControlPlane::apply`] (for
    /// example a file that does not parse).
    pub fn reject(&self, e: &ConfigError, source: ChangeSource) {
        self.rejected.with_label_values(&[source.as_str()]).inc();
        tracing::warn!(
            source = source.as_str(),
            "config change rejected, last good table keeps serving:\n{e}"
        );
    }

    /// Recompile and publish the current config as a new generation (when the environments'
    /// placements changed outside a config change, for example an instance that could not be
    /// started at first). Does nothing before the first publish.
    pub async fn refresh(&self) {
        let mut state = self.state.lock().await;
        if !self.ready.load(Ordering::Acquire) {
            return;
        }
        let generation = state.generation + 1;
        let config = state.config.clone();
        state.compiler =
            Compiler::with_environments(&config, generation, self.environments.clone());
        self.sink.publish(state.compiler.table().clone()).await;
        state.generation = generation;
    }

    /// Apply `changes` atomically: all are accepted or none is (rejections are counted).
    pub async fn apply(
        &self,
        changes: Vec<Change>,
        source: ChangeSource,
    ) -> Result<Applied, ConfigError> {
        let mut state = self.state.lock().await;
        let (next, touched, names, full) = match apply_all(&state.config, changes) {
            Ok(v) => v,
            Err(e) => {
                self.reject(&e, source);
                return Err(e);
            }
        };
        Ok(self
            .publish(&mut state, next, touched, names, full, source)
            .await)
    }

    /// Replace the whole config with `next`, already validated (a first load from a shared
    /// store, built in one pass instead of layer by layer), compiled in full and published as
    /// the next generation.
    pub async fn replace(&self, next: Config, source: ChangeSource) -> Applied {
        let mut state = self.state.lock().await;
        let names = vec![format!("{} layers", next.layers().count())];
        self.publish(&mut state, next, Vec::new(), names, true, source)
            .await
    }

    /// Apply `changes` one by one: each is accepted or rejected on its own (a rejected change
    /// leaves its layer's last good version in place). Everything accepted is published as one
    /// generation. Rejections are returned, not counted: the caller reports them.
    pub async fn apply_each(&self, changes: Vec<Change>, source: ChangeSource) -> BatchOutcome {
        let mut state = self.state.lock().await;
        let (next, touched, names, full, results) = apply_separately(&state.config, changes);
        let applied = match next {
            Some(next) => Some(
                self.publish(&mut state, next, touched, names, full, source)
                    .await,
            ),
            None => None,
        };
        BatchOutcome { applied, results }
    }

    async fn publish(
        &self,
        state: &mut State,
        next: Config,
        touched: Vec<LayerIdx>,
        names: Vec<String>,
        full: bool,
        source: ChangeSource,
    ) -> Applied {
        let generation = state.generation + 1;
        if let Some(env) = &self.environments {
            env.prepare(&next).await;
        }
        let table = if full {
            state.compiler =
                Compiler::with_environments(&next, generation, self.environments.clone());
            state.compiler.table().clone()
        } else {
            let mut table = state.compiler.table().clone();
            for id in touched {
                table = state.compiler.update(&next, id, generation);
            }
            table
        };
        self.sink.publish(table).await;
        state.generation = generation;
        state.config = Arc::new(next);
        self.config.store(state.config.clone());
        self.updates.with_label_values(&[source.as_str()]).inc();
        tracing::info!(source = source.as_str(), generation, layers = ?names, "config change published");
        Applied {
            generation,
            layers: names,
        }
    }
}

type Outcome = (Config, Vec<LayerIdx>, Vec<String>, bool);

/// Apply changes atomically to the current config. Order inside a batch does not matter:
/// upserts whose parent arrives later in the batch and removals of parents whose children go
/// too are retried in further passes; every pass applies at least one change or the batch
/// fails, so there are at most as many passes as changes.
fn apply_all(current: &Config, changes: Vec<Change>) -> Result<Outcome, ConfigError> {
    let (next, touched, names, full, results) = apply_separately(current, changes);
    if let Some(e) = results.into_iter().find_map(Result::err) {
        return Err(e);
    }
    let next = next.unwrap_or_else(|| current.clone());
    Ok((next, touched, names, full))
}

type Separate = (
    Option<Config>,
    Vec<LayerIdx>,
    Vec<String>,
    bool,
    Vec<Result<(), ConfigError>>,
);

/// Apply each change that validates; the others get their error. Returns the new config (None
/// when nothing was accepted), the touched layers, their names, whether the org changed (a
/// full recompile), and a result per change.
fn apply_separately(current: &Config, changes: Vec<Change>) -> Separate {
    let mut results: Vec<Option<Result<(), ConfigError>>> = changes.iter().map(|_| None).collect();
    let mut next: Option<Config> = None;
    let mut touched = Vec::new();
    let mut names = Vec::new();
    let mut full = false;
    let is_org = |c: &Change| matches!(c, Change::Upsert(d) if d.kind() == LayerKind::Org);
    if let Some(i) = changes.iter().position(is_org) {
        match apply_org(current, &changes, i) {
            Ok((cfg, whole)) => {
                full = true;
                next = Some(cfg);
                if whole {
                    // the org and the layers of the batch validated together (a coupled
                    // change such as a service renamed in the org and in its branches)
                    let names = changes.iter().map(Change::label).collect();
                    let results = changes.iter().map(|_| Ok(())).collect();
                    return (next, Vec::new(), names, true, results);
                }
                names.push("baseline".to_string());
                results[i] = Some(Ok(()));
            }
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    loop {
        let mut progress = false;
        for (i, c) in changes.iter().enumerate() {
            if results[i].is_some() || is_org(c) {
                continue;
            }
            let base = next.as_ref().unwrap_or(current);
            if let Ok((cfg, id)) = apply_one(base, c) {
                next = Some(cfg);
                touched.push(id);
                names.push(c.label());
                results[i] = Some(Ok(()));
                progress = true;
            }
        }
        if !progress {
            break;
        }
    }
    let base = next.as_ref().unwrap_or(current);
    let results = changes
        .iter()
        .zip(results)
        .map(|(c, r)| match r {
            Some(r) => r,
            // no pass could apply it: report its own error against the final config
            None => apply_one(base, c).map(|_| ()),
        })
        .collect();
    (next, touched, names, full, results)
}

/// Apply the org document `changes[i]`: alone against the current layers, else together with
/// the batch's other layer changes. Returns the config and whether the whole batch went in.
fn apply_org(
    current: &Config,
    changes: &[Change],
    i: usize,
) -> Result<(Config, bool), ConfigError> {
    let Change::Upsert(org) = &changes[i] else {
        return Err(ConfigError::Invalid {
            diagnostics: Vec::new(),
        });
    };
    let alone = match current.upsert((**org).clone()) {
        Ok((cfg, _)) => {
            crate::budget::check(&cfg, 0, &org.file)?;
            return Ok((cfg, false));
        }
        Err(e) => e,
    };
    let mut layers: BTreeMap<&str, ParsedDoc> = current
        .layers()
        .filter(|l| l.kind != LayerKind::Org)
        .map(|l| (l.name.as_str(), (*l.doc).clone()))
        .collect();
    for c in changes {
        match c {
            Change::Upsert(d) if d.kind() != LayerKind::Org => {
                layers.insert(d.name(), (**d).clone());
            }
            Change::Remove { name, .. } => {
                layers.remove(name.as_str());
            }
            Change::Upsert(_) => {}
        }
    }
    let mut docs = vec![(**org).clone()];
    docs.extend(layers.into_values());
    match Config::build(docs) {
        Ok(cfg) => Ok((cfg, true)),
        Err(_) => Err(alone),
    }
}

fn apply_one(cfg: &Config, c: &Change) -> Result<(Config, LayerIdx), ConfigError> {
    match c {
        Change::Upsert(doc) => {
            let (next, id) = cfg.upsert((**doc).clone())?;
            // a write that takes its team over budget is refused, never trimmed
            crate::budget::check(&next, id, &doc.file)?;
            // so is one that leaves a branch's routes with an incompatible contract
            crate::contract_check::check(&next, id, &doc.file)?;
            Ok((next, id))
        }
        Change::Remove { name, origin } => {
            if let Some(idx) = cfg.layer_id(name) {
                let children: Vec<&str> = cfg
                    .children(idx)
                    .iter()
                    .filter_map(|&c| cfg.layer(c))
                    .map(|l| l.name.as_str())
                    .collect();
                if !children.is_empty() {
                    return Err(ConfigError::Invalid {
                        diagnostics: vec![Diagnostic {
                            file: origin.clone(),
                            line: 0,
                            field: String::new(),
                            reason: format!(
                                "`{name}` cannot be removed: it is the parent of {}; it keeps \
                                 serving until they are removed or re-parented",
                                children.join(", ")
                            ),
                        }],
                    });
                }
            }
            cfg.remove(name)
        }
    }
}
