//! The control plane's write path: every change (a file batch from the watcher, an admin API
//! write) is validated against the current config, compiled incrementally (only the layers it
//! touches and their descendants), and published through a [`TableSink`], one change at a time
//! so generations only go up. A rejected change leaves the last good config and table serving,
//! is logged with its file:line or API reason, and is counted.

use crate::compile::Compiler;
use arc_swap::ArcSwap;
use microstax_config::{Config, ConfigError, LayerIdx, LayerKind, ParsedDoc, RoutingTable};
use prometheus::{IntCounterVec, Opts, Registry};
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
}

impl ChangeSource {
    fn as_str(self) -> &'static str {
        match self {
            ChangeSource::File => "file",
            ChangeSource::Api => "api",
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
    },
}

/// What an accepted change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The generation now served.
    pub generation: u64,
    /// Names of the layers added, replaced or removed.
    pub layers: Vec<String>,
}

struct State {
    config: Config,
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
    ready: AtomicBool,
}

impl ControlPlane {
    /// Compile `config` as generation 1, publish it, and return the control plane.
    pub async fn start(
        config: Config,
        sink: Arc<dyn TableSink>,
        registry: &Registry,
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
        let compiler = Compiler::new(&config, 1);
        sink.publish(compiler.table().clone()).await;
        Ok(Arc::new(ControlPlane {
            config: ArcSwap::from_pointee(config.clone()),
            state: Mutex::new(State {
                config,
                compiler,
                generation: 1,
            }),
            sink,
            updates,
            rejected,
            ready: AtomicBool::new(true),
        }))
    }

    /// The current config (lock-free read).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Whether the first table has been published.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The table last published.
    pub async fn table(&self) -> Arc<RoutingTable> {
        self.state.lock().await.compiler.table().clone()
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

    /// Apply `changes` atomically: all are accepted or none is.
    pub async fn apply(
        &self,
        changes: Vec<Change>,
        source: ChangeSource,
    ) -> Result<Applied, ConfigError> {
        let mut state = self.state.lock().await;
        let outcome = apply_all(&state.config, changes);
        let (next, touched, names, full) = match outcome {
            Ok(v) => v,
            Err(e) => {
                self.reject(&e, source);
                return Err(e);
            }
        };
        let generation = state.generation + 1;
        let table = if full {
            state.compiler = Compiler::new(&next, generation);
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
        state.config = next.clone();
        self.config.store(Arc::new(next));
        self.updates.with_label_values(&[source.as_str()]).inc();
        tracing::info!(source = source.as_str(), generation, layers = ?names, "config change published");
        Ok(Applied {
            generation,
            layers: names,
        })
    }
}

type Outcome = (Config, Vec<LayerIdx>, Vec<String>, bool);

/// Apply changes to a scratch copy. Order inside a batch does not matter: upserts whose parent
/// arrives later in the batch and removals of parents whose children go too are retried in
/// further passes; every pass applies at least one change or the batch fails, so there are at
/// most as many passes as changes.
fn apply_all(current: &Config, changes: Vec<Change>) -> Result<Outcome, ConfigError> {
    let mut cfg = current.clone();
    let mut touched = Vec::new();
    let mut names = Vec::new();
    let mut full = false;
    let (orgs, rest): (Vec<Change>, Vec<Change>) = changes
        .into_iter()
        .partition(|c| matches!(c, Change::Upsert(d) if d.kind() == LayerKind::Org));
    for c in orgs {
        if let Change::Upsert(doc) = c {
            cfg = cfg.upsert(*doc)?.0;
            full = true;
            names.push("baseline".to_string());
        }
    }
    let mut pending = rest;
    while !pending.is_empty() {
        let before = pending.len();
        let mut retry = Vec::new();
        for c in pending {
            match apply_one(&cfg, &c) {
                Ok((next, id, name)) => {
                    cfg = next;
                    touched.push(id);
                    names.push(name);
                }
                Err(_) => retry.push(c),
            }
        }
        if retry.len() == before {
            // no progress in a whole pass: report the first change that still fails
            return Err(match retry.first().map(|c| apply_one(&cfg, c)) {
                Some(Err(e)) => e,
                _ => ConfigError::Invalid {
                    diagnostics: Vec::new(),
                },
            });
        }
        pending = retry;
    }
    Ok((cfg, touched, names, full))
}

fn apply_one(cfg: &Config, c: &Change) -> Result<(Config, LayerIdx, String), ConfigError> {
    match c {
        Change::Upsert(doc) => cfg
            .upsert((**doc).clone())
            .map(|(n, id)| (n, id, doc.name().to_string())),
        Change::Remove { name } => cfg.remove(name).map(|(n, id)| (n, id, name.clone())),
    }
}
