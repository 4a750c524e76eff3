//! Proxy metrics on an explicit Prometheus registry. Label values stay bounded: service names come
//! from the catalog, route kinds and status classes are fixed sets, and a branch appears as a
//! label value only when the operator lists it in `routing.label_branches` (all others count
//! as `other`). Counter handles are resolved when a table is published, so the request path
//! only increments atomics: no label hashing and no lock per request.

use microstax_table::table::BASELINE_ID;
use microstax_table::{LayerId, RouteKind, RoutingTable, ServiceId};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use std::sync::Arc;

/// Route-kind label of a request (a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindLabel {
    /// Routed by a route of this kind.
    Route(RouteKind),
    /// The readiness policy sent it to the parent's route.
    Fallback,
    /// Answered by the proxy itself (no route).
    None,
}

impl KindLabel {
    const ALL: [KindLabel; 6] = [
        KindLabel::Route(RouteKind::Baseline),
        KindLabel::Route(RouteKind::Team),
        KindLabel::Route(RouteKind::Branch),
        KindLabel::Route(RouteKind::Local),
        KindLabel::Fallback,
        KindLabel::None,
    ];

    fn index(self) -> usize {
        match self {
            KindLabel::Route(RouteKind::Baseline) => 0,
            KindLabel::Route(RouteKind::Team) => 1,
            KindLabel::Route(RouteKind::Branch) => 2,
            KindLabel::Route(RouteKind::Local) => 3,
            KindLabel::Fallback => 4,
            KindLabel::None => 5,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            KindLabel::Route(k) => k.as_str(),
            KindLabel::Fallback => "fallback",
            KindLabel::None => "none",
        }
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const KINDS: usize = 6;

/// The metric families of a proxy.
#[derive(Clone)]
pub struct ProxyMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    connect_errors: IntCounterVec,
    timeouts: IntCounterVec,
    retries: IntCounterVec,
    overflows: IntCounterVec,
    /// Upstreams ejected now by passive outlier detection (all tables).
    pub ejected_upstreams: IntGauge,
    /// Ejections by passive outlier detection.
    pub ejections: IntCounter,
    /// Open client connections.
    pub active_connections: IntGauge,
    /// Generation of the table being served.
    pub table_generation: IntGauge,
    /// Tables swapped in.
    pub swaps: IntCounter,
    /// Time to bind, prewarm and swap a table.
    pub swap_duration: Histogram,
    /// Branches in the table.
    pub branches: IntGauge,
    /// Routes (overrides) in the table, baseline included.
    pub overrides: IntGauge,
    prewarm: IntCounterVec,
    /// Wakes sent for asleep upstreams (one per sleep: the instance starts from zero).
    pub cold_starts: IntCounter,
    /// Requests held now, waiting for an upstream to start or become ready.
    pub held_requests: IntGauge,
    /// Held requests answered 503 because the upstream's hold queue was full.
    pub hold_rejected_queue_full: IntCounter,
    /// Held requests answered 503 because the hold time of their route passed.
    pub hold_rejected_timeout: IntCounter,
    /// Client request bodies cut for stalling longer than the body idle timeout.
    pub request_body_idle_timeouts: IntCounter,
    /// Upstream response bodies cut for stalling longer than the body idle timeout.
    pub response_body_idle_timeouts: IntCounter,
}

impl std::fmt::Debug for ProxyMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProxyMetrics")
    }
}

impl ProxyMetrics {
    /// Create the families and register them on `registry`.
    pub fn new(registry: &Registry) -> Result<ProxyMetrics, prometheus::Error> {
        let body_idle = IntCounterVec::new(
            Opts::new(
                "microstax_body_idle_timeouts_total",
                "Bodies cut for stalling longer than the body idle timeout, by side \
                 (request: the client's; response: the upstream's)",
            ),
            &["side"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "microstax_hold_rejected_total",
                "Held requests answered 503, by reason (queue_full, timeout)",
            ),
            &["reason"],
        )?;
        let m = ProxyMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "microstax_requests_total",
                    "Requests by service, route kind, status class and (listed) branch",
                ),
                &["service", "route", "status", "branch"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "microstax_request_duration_seconds",
                    "Time to response headers",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ]),
                &["route"],
            )?,
            connect_errors: IntCounterVec::new(
                Opts::new(
                    "microstax_upstream_connect_errors_total",
                    "Failed upstream connections by service",
                ),
                &["service"],
            )?,
            timeouts: IntCounterVec::new(
                Opts::new(
                    "microstax_upstream_timeouts_total",
                    "Upstream timeouts by service",
                ),
                &["service"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "microstax_upstream_retries_total",
                    "Retried upstream attempts by service and outcome (retried, budget_exhausted)",
                ),
                &["service", "outcome"],
            )?,
            overflows: IntCounterVec::new(
                Opts::new(
                    "microstax_upstream_overflow_total",
                    "Requests answered 503 because their upstream's connections and pending queue were full",
                ),
                &["service"],
            )?,
            ejected_upstreams: IntGauge::new(
                "microstax_upstreams_ejected",
                "Upstream endpoints ejected now by passive outlier detection",
            )?,
            ejections: IntCounter::new(
                "microstax_upstream_ejections_total",
                "Upstream endpoints ejected by passive outlier detection",
            )?,
            active_connections: IntGauge::new(
                "microstax_active_connections",
                "Open client connections",
            )?,
            table_generation: IntGauge::new(
                "microstax_table_generation",
                "Generation of the routing table being served",
            )?,
            swaps: IntCounter::new("microstax_table_swaps_total", "Routing tables swapped in")?,
            swap_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "microstax_table_swap_duration_seconds",
                    "Time to bind, prewarm and swap a table",
                )
                .buckets(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
                ]),
            )?,
            branches: IntGauge::new("microstax_table_branches", "Branches in the routing table")?,
            overrides: IntGauge::new(
                "microstax_table_routes",
                "Routes in the routing table (baseline and overrides)",
            )?,
            prewarm: IntCounterVec::new(
                Opts::new(
                    "microstax_prewarm_total",
                    "Prewarm outcomes of new upstreams",
                ),
                &["outcome"],
            )?,
            cold_starts: IntCounter::new(
                "microstax_cold_starts_total",
                "Wakes sent for asleep upstreams (instances started from zero)",
            )?,
            held_requests: IntGauge::new(
                "microstax_held_requests",
                "Requests held while their upstream starts or becomes ready",
            )?,
            hold_rejected_queue_full: rejected.with_label_values(&["queue_full"]),
            hold_rejected_timeout: rejected.with_label_values(&["timeout"]),
            request_body_idle_timeouts: body_idle.with_label_values(&["request"]),
            response_body_idle_timeouts: body_idle.with_label_values(&["response"]),
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.connect_errors.clone()))?;
        registry.register(Box::new(m.timeouts.clone()))?;
        registry.register(Box::new(m.retries.clone()))?;
        registry.register(Box::new(m.overflows.clone()))?;
        registry.register(Box::new(m.ejected_upstreams.clone()))?;
        registry.register(Box::new(m.ejections.clone()))?;
        registry.register(Box::new(m.active_connections.clone()))?;
        registry.register(Box::new(m.table_generation.clone()))?;
        registry.register(Box::new(m.swaps.clone()))?;
        registry.register(Box::new(m.swap_duration.clone()))?;
        registry.register(Box::new(m.branches.clone()))?;
        registry.register(Box::new(m.overrides.clone()))?;
        registry.register(Box::new(m.prewarm.clone()))?;
        registry.register(Box::new(m.cold_starts.clone()))?;
        registry.register(Box::new(m.held_requests.clone()))?;
        registry.register(Box::new(rejected))?;
        registry.register(Box::new(body_idle))?;
        Ok(m)
    }

    /// Count one prewarm outcome (`ok`, `failed`).
    pub fn prewarm(&self, outcome: &str, n: u64) {
        if n > 0 {
            self.prewarm.with_label_values(&[outcome]).inc_by(n);
        }
    }

    /// Resolve the handles a table's requests will use. Reuses `prev` when the table has the
    /// same services and settings (the common case: a branch changed).
    pub fn bind(
        &self,
        table: &RoutingTable,
        prev: Option<&Arc<BoundMetrics>>,
    ) -> Arc<BoundMetrics> {
        let listed = &table.settings.label_branches;
        let branch_slot: Box<[u16]> = if listed.is_empty() {
            Box::default()
        } else {
            table
                .layers
                .iter()
                .map(|l| {
                    l.as_ref()
                        .and_then(|l| listed.iter().position(|b| **b == *l.name))
                        .map_or(0, |i| i as u16 + 1)
                })
                .collect()
        };
        if let Some(p) = prev {
            if Arc::ptr_eq(&p.services, &table.services)
                && Arc::ptr_eq(&p.settings, &table.settings)
            {
                return Arc::new(BoundMetrics {
                    branch_slot,
                    ..(**p).clone()
                });
            }
        }
        let names: Vec<&str> = table
            .services
            .names
            .iter()
            .map(|s| &**s)
            .chain(["-"])
            .collect();
        let mut slots: Vec<&str> = vec!["other"];
        slots.extend(listed.iter().map(String::as_str));
        let mut requests = Vec::with_capacity(names.len() * KINDS * slots.len());
        for svc in &names {
            for kind in KindLabel::ALL {
                for b in &slots {
                    let b = if listed.is_empty() { "-" } else { b };
                    requests.push(
                        CLASSES
                            .map(|c| self.requests.with_label_values(&[svc, kind.as_str(), c, b])),
                    );
                }
            }
        }
        Arc::new(BoundMetrics {
            services: table.services.clone(),
            settings: table.settings.clone(),
            slots: slots.len(),
            requests: requests.into(),
            duration: KindLabel::ALL.map(|k| self.duration.with_label_values(&[k.as_str()])),
            connect_errors: names
                .iter()
                .map(|s| self.connect_errors.with_label_values(&[s]))
                .collect(),
            timeouts: names
                .iter()
                .map(|s| self.timeouts.with_label_values(&[s]))
                .collect(),
            retries: names
                .iter()
                .map(|s| {
                    [
                        self.retries.with_label_values(&[s, "retried"]),
                        self.retries.with_label_values(&[s, "budget_exhausted"]),
                    ]
                })
                .collect(),
            overflows: names
                .iter()
                .map(|s| self.overflows.with_label_values(&[s]))
                .collect(),
            ejections: self.ejections.clone(),
            ejected: self.ejected_upstreams.clone(),
            branch_slot,
        })
    }
}

/// Handles for one table; indexed by service id (the last index is "no service").
#[derive(Clone)]
pub struct BoundMetrics {
    services: Arc<microstax_table::table::ServiceIndex>,
    settings: Arc<microstax_table::Settings>,
    slots: usize,
    requests: Arc<[[IntCounter; 5]]>,
    duration: [Histogram; KINDS],
    connect_errors: Arc<[IntCounter]>,
    timeouts: Arc<[IntCounter]>,
    retries: Arc<[[IntCounter; 2]]>,
    overflows: Arc<[IntCounter]>,
    pub(crate) ejections: IntCounter,
    pub(crate) ejected: IntGauge,
    branch_slot: Box<[u16]>,
}

impl std::fmt::Debug for BoundMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoundMetrics")
    }
}

impl BoundMetrics {
    fn service_index(&self, service: Option<ServiceId>) -> usize {
        let n = self.services.names.len();
        service.map_or(n, |s| (s as usize).min(n))
    }

    /// Count a finished request.
    #[inline]
    pub fn request(
        &self,
        service: Option<ServiceId>,
        kind: KindLabel,
        layer: LayerId,
        status: u16,
        seconds: f64,
    ) {
        let slot = if layer == BASELINE_ID {
            0
        } else {
            self.branch_slot.get(layer as usize).copied().unwrap_or(0) as usize
        };
        let idx = (self.service_index(service) * KINDS + kind.index()) * self.slots + slot;
        let class = ((status / 100).clamp(1, 5) - 1) as usize;
        if let Some(c) = self.requests.get(idx) {
            c[class].inc();
        }
        self.duration[kind.index()].observe(seconds);
    }

    /// Count a failed upstream connection.
    pub fn connect_error(&self, service: ServiceId) {
        if let Some(c) = self.connect_errors.get(self.service_index(Some(service))) {
            c.inc();
        }
    }

    /// Count a retry (`true`), or one the retry budget refused (`false`).
    pub fn retry(&self, service: ServiceId, retried: bool) {
        if let Some(c) = self.retries.get(self.service_index(Some(service))) {
            c[usize::from(!retried)].inc();
        }
    }

    /// Count a request refused because its upstream's limits were reached.
    pub fn overflow(&self, service: ServiceId) {
        if let Some(c) = self.overflows.get(self.service_index(Some(service))) {
            c.inc();
        }
    }

    /// Count an upstream timeout.
    pub fn timeout(&self, service: ServiceId) {
        if let Some(c) = self.timeouts.get(self.service_index(Some(service))) {
            c.inc();
        }
    }
}
