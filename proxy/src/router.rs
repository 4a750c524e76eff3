//! The published routing state. One [`ArcSwap`] holds one whole [`Snapshot`]: the compiled
//! table plus everything the proxy derives from it (bound upstream states, prepared context
//! rules, prebuilt header values). A request loads the snapshot once and keeps it to the end;
//! publishing builds the next snapshot off the request path and swaps it in whole.

use crate::context::ContextRules;
use crate::upstream::{ConnectTimeouts, Registry, UpstreamState};
use arc_swap::ArcSwap;
use http::HeaderValue;
use microstax_config::{LayerKind, RoutingTable};
use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::Duration;

/// Everything a request needs, immutable once published.
#[derive(Debug)]
pub struct Snapshot {
    /// The compiled table.
    pub table: Arc<RoutingTable>,
    /// Upstream states indexed by upstream id.
    pub upstreams: Box<[Arc<UpstreamState>]>,
    /// Context extraction rules.
    pub rules: ContextRules,
    /// Per layer id: the branch name as a header value (None for non-branch layers).
    pub branch_values: Box<[Option<HeaderValue>]>,
    /// Per layer id: the `key=name` baggage member as a header value.
    pub baggage_values: Box<[Option<HeaderValue>]>,
}

impl Snapshot {
    fn build(table: Arc<RoutingTable>, registry: &Registry) -> Snapshot {
        let upstreams = registry.bind(&table);
        let rules = ContextRules::new(&table.settings);
        let mut branch_values = Vec::with_capacity(table.layers.len());
        let mut baggage_values = Vec::with_capacity(table.layers.len());
        for l in &table.layers {
            let l = l.as_ref().filter(|l| l.kind == LayerKind::Branch);
            branch_values.push(l.and_then(|l| HeaderValue::from_str(&l.name).ok()));
            baggage_values.push(l.and_then(|l| {
                HeaderValue::from_str(&format!("{}={}", rules.baggage_key, l.name)).ok()
            }));
        }
        Snapshot {
            table,
            upstreams,
            rules,
            branch_values: branch_values.into_boxed_slice(),
            baggage_values: baggage_values.into_boxed_slice(),
        }
    }
}

/// Holds the current snapshot and publishes new ones.
#[derive(Debug)]
pub struct Router {
    current: ArcSwap<Snapshot>,
    registry: Registry,
    connect_timeouts: ConnectTimeouts,
}

impl Router {
    /// A router serving `table`.
    pub fn new(table: Arc<RoutingTable>) -> Arc<Router> {
        let registry = Registry::default();
        let timeouts = connect_timeouts(&table);
        let snap = Snapshot::build(table, &registry);
        Arc::new(Router {
            current: ArcSwap::from_pointee(snap),
            registry,
            connect_timeouts: Arc::new(ArcSwap::from_pointee(timeouts)),
        })
    }

    /// The current snapshot; a request calls this once.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Bind and swap in a new table. The caller has validated it; the swap is atomic.
    pub fn publish(&self, table: Arc<RoutingTable>) {
        self.connect_timeouts
            .store(Arc::new(connect_timeouts(&table)));
        let snap = Snapshot::build(table, &self.registry);
        self.current.store(Arc::new(snap));
    }

    /// The connect-timeout map shared with the connector.
    pub fn connect_timeouts(&self) -> ConnectTimeouts {
        self.connect_timeouts.clone()
    }

    /// The upstream registry (for the grace-period sweep and metrics).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The shortest connect timeout of any route naming each upstream.
fn connect_timeouts(table: &RoutingTable) -> FxHashMap<Arc<str>, Duration> {
    let mut out: FxHashMap<Arc<str>, Duration> = FxHashMap::default();
    for l in table.layers.iter().flatten() {
        for r in l.routes.iter() {
            for &u in r.upstreams.iter() {
                if let Some(up) = table.upstream(u) {
                    let t = r.policy.connect_timeout;
                    out.entry(up.authority.clone())
                        .and_modify(|d| *d = (*d).min(t))
                        .or_insert(t);
                }
            }
        }
    }
    out
}
