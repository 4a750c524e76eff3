//! Prometheus view of the edge counters kept as plain atomics on their owners (TLS reloads and
//! handshakes, connections refused by the limits, access-log lines dropped): a collector that
//! reads them at scrape time, so the owners need no registry and the request path no label.

use crate::access_log::AccessLog;
use crate::limits::ConnLimits;
use crate::tls::TlsTerminator;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, Registry};
use std::sync::Arc;

/// The collector of one listener's edge counters.
pub struct EdgeMetrics {
    tls: Option<Arc<TlsTerminator>>,
    limits: Arc<ConnLimits>,
    log: Arc<AccessLog>,
    counters: [IntCounter; 5],
}

impl EdgeMetrics {
    /// Register the counters of `tls`, `limits` and `log` on `registry`.
    pub fn register(
        registry: &Registry,
        tls: Option<Arc<TlsTerminator>>,
        limits: Arc<ConnLimits>,
        log: Arc<AccessLog>,
    ) -> Result<(), prometheus::Error> {
        let c = |name: &str, help: &str| IntCounter::new(name, help);
        let counters = [
            c(
                "microstax_tls_reloads_total",
                "TLS certificate sets swapped in",
            )?,
            c(
                "microstax_tls_reload_failures_total",
                "TLS reloads refused (broken PEM, mismatched key): the old certificates serve",
            )?,
            c(
                "microstax_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out",
            )?,
            c(
                "microstax_connections_refused_total",
                "Client connections closed at accept by the global or per-peer limit",
            )?,
            c(
                "microstax_access_log_dropped_total",
                "Access-log lines dropped because the writer fell behind",
            )?,
        ];
        registry.register(Box::new(EdgeMetrics {
            tls,
            limits,
            log,
            counters,
        }))
    }

    fn values(&self) -> [u64; 5] {
        let t = self.tls.as_deref();
        [
            t.map_or(0, TlsTerminator::reloads),
            t.map_or(0, TlsTerminator::reload_failures),
            t.map_or(0, TlsTerminator::handshake_failures),
            self.limits.refused(),
            self.log.dropped(),
        ]
    }
}

impl Collector for EdgeMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.counters.iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.counters
            .iter()
            .zip(self.values())
            .flat_map(|(c, v)| {
                c.reset();
                c.inc_by(v);
                c.collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters_at_scrape_time() {
        let r = Registry::new();
        let limits = Arc::new(ConnLimits::new(0, 1));
        EdgeMetrics::register(&r, None, limits.clone(), Arc::default()).unwrap();
        assert!(limits.admit("10.0.0.1".parse().unwrap()).is_none());
        let f = r.gather();
        let refused = f
            .iter()
            .find(|m| m.name() == "microstax_connections_refused_total")
            .unwrap();
        assert_eq!(refused.get_metric()[0].get_counter().get_value(), 1.0);
    }
}
