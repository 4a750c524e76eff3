//! The published routing state. One [`ArcSwap`] holds one whole [`Snapshot`]: the compiled
//! table plus everything the proxy derives from it (bound upstream states, prepared context
//! rules). A request loads the snapshot once and keeps it to the end;
//! publishing builds the next snapshot off the request path and swaps it in whole.

use crate::activity::LayerActivity;
use crate::context::ContextRules;
use crate::metrics::{BoundMetrics, ProxyMetrics};
use crate::upstream::{Registry, UpstreamState};
use arc_swap::ArcSwap;
use microstax_table::RoutingTable;
use std::sync::Arc;

/// Everything a request needs, immutable once published.
#[derive(Debug)]
pub struct Snapshot {
    /// The compiled table.
    pub table: Arc<RoutingTable>,
    /// Upstream states indexed by upstream id.
    pub upstreams: Box<[Arc<UpstreamState>]>,
    /// Context extraction rules.
    pub rules: ContextRules,
    /// Metric handles for this table.
    pub metrics: Arc<BoundMetrics>,
}

/// A table bound to upstream states, ready to be swapped in.
#[derive(Debug)]
pub struct Staged {
    /// The snapshot to publish.
    pub snapshot: Snapshot,
    /// Upstreams no earlier table named (to prewarm before the swap).
    pub new_upstreams: Vec<Arc<UpstreamState>>,
}

impl Snapshot {
    /// Bind `table`. Per-layer values (header values of branch names) are prebuilt in the table
    /// by the compiler, and what the previous snapshot bound the new table shares (the upstream
    /// list, the context rules) is reused, so publishing a one-branch change does no per-layer
    /// work (no registry lookup either, when the change added or dropped no endpoint).
    fn build(
        table: Arc<RoutingTable>,
        registry: &Registry,
        metrics: &ProxyMetrics,
        prev: Option<&Snapshot>,
    ) -> Staged {
        let (upstreams, created) = bind_upstreams(&table, registry, prev);
        let new_upstreams = created
            .iter()
            .filter_map(|&i| upstreams.get(i).cloned())
            .collect();
        let bound = metrics.bind(&table, prev.map(|p| &p.metrics));
        let rules = match prev.filter(|p| Arc::ptr_eq(&p.table.settings, &table.settings)) {
            Some(p) => p.rules.clone(),
            None => ContextRules::new(&table.settings),
        };
        Staged {
            snapshot: Snapshot {
                table,
                upstreams,
                rules,
                metrics: bound,
            },
            new_upstreams,
        }
    }
}

/// The upstream states of `table`: when it shares its upstream list with the previous snapshot's
/// table (a change that added or dropped no endpoint), the previous binding as it is; else the
/// registry's binding (which also finds the upstreams no earlier table named).
fn bind_upstreams(
    table: &RoutingTable,
    registry: &Registry,
    prev: Option<&Snapshot>,
) -> (Box<[Arc<UpstreamState>]>, Vec<usize>) {
    match prev {
        Some(p) if Arc::ptr_eq(&p.table.upstreams, &table.upstreams) => {
            (p.upstreams.clone(), Vec::new())
        }
        _ => registry.bind(table),
    }
}

/// Holds the current snapshot and publishes new ones.
#[derive(Debug)]
pub struct Router {
    current: ArcSwap<Snapshot>,
    registry: Registry,
    metrics: ProxyMetrics,
    /// Last request per layer id (kept across tables; see `crate::activity`).
    layers: LayerActivity,
}

impl Router {
    /// A router serving `table`, with metrics on a registry of its own.
    pub fn new(table: Arc<RoutingTable>) -> Arc<Router> {
        // registering on a fresh registry cannot collide
        let metrics = ProxyMetrics::new(&prometheus::Registry::new());
        match metrics {
            Ok(m) => Router::with_metrics(table, m),
            Err(_) => unreachable_metrics(),
        }
    }

    /// A router serving `table` that reports to `metrics`.
    pub fn with_metrics(table: Arc<RoutingTable>, metrics: ProxyMetrics) -> Arc<Router> {
        let registry = Registry::default();
        let staged = Snapshot::build(table, &registry, &metrics, None);
        let router = Router {
            current: ArcSwap::from_pointee(staged.snapshot),
            registry,
            metrics,
            layers: LayerActivity::new(),
        };
        router.record_table(&router.load());
        Arc::new(router)
    }

    /// The metric families.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// Bind `table` to upstream states without publishing it.
    pub fn stage(&self, table: Arc<RoutingTable>) -> Staged {
        let prev = self.load();
        Snapshot::build(table, &self.registry, &self.metrics, Some(&prev))
    }

    /// Swap a staged table in (atomically: one store of one snapshot). Layer slots whose name
    /// changed are rebound first, so no request on the new table sees another layer's activity.
    pub fn commit(&self, staged: Staged) {
        let snap = Arc::new(staged.snapshot);
        self.layers.rebind(&self.load().table, &snap.table);
        self.current.store(snap.clone());
        self.metrics.swaps.inc();
        self.record_table(&snap);
    }

    fn record_table(&self, snap: &Snapshot) {
        let (_, routes) = snap.table.counts();
        self.metrics
            .table_generation
            .set(snap.table.generation as i64);
        self.metrics.branches.set(snap.table.branches.len() as i64);
        self.metrics.overrides.set(routes as i64);
    }

    /// The current snapshot; a request calls this once.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Bind and swap in a new table without prewarming (see `Proxy::publish` for that).
    pub fn publish(&self, table: Arc<RoutingTable>) {
        let staged = self.stage(table);
        self.commit(staged);
    }

    /// Last request per layer id.
    pub(crate) fn layer_activity(&self) -> &LayerActivity {
        &self.layers
    }

    /// The upstream registry (for the grace-period sweep and metrics).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[allow(clippy::panic)]
fn unreachable_metrics() -> ! {
    panic!("registering metrics on a new, empty registry cannot fail")
}
