//! JSON renderings for the admin API: the routing table (`GET /routes`) and config errors. The
//! table itself stays plain data; its admin view is built here.

use microstax_config::table::LayerId;
use microstax_config::{ConfigError, RoutingTable};
use serde_json::{json, Value};

/// The table as JSON: generation, services, the upstreams it names, and the layers with their
/// lineage and overrides.
pub fn table_json(t: &RoutingTable) -> Value {
    let layer_label = |id: LayerId| t.layer(id).map_or("?", |l| &*l.label).to_string();
    let layers: Vec<Value> = t
        .layers
        .iter()
        .flatten()
        .map(|l| {
            let routes: Vec<Value> = l
                .routes
                .iter()
                .map(|r| {
                    let ups: Vec<&str> = r
                        .upstreams
                        .iter()
                        .filter_map(|u| t.upstream(*u))
                        .map(|u| &*u.authority)
                        .collect();
                    json!({
                        "service": t.service_name(r.service),
                        "kind": r.kind.as_str(),
                        "upstreams": ups,
                        "connect_timeout_ms": r.policy.connect_timeout.as_millis() as u64,
                        "request_timeout_ms": r.policy.request_timeout.as_millis() as u64,
                        "readiness": r.policy.readiness.to_string(),
                        "protocol": r.policy.protocol.as_str(),
                    })
                })
                .collect();
            json!({
                "name": &*l.name,
                "label": &*l.label,
                "kind": l.kind.as_str(),
                "lineage": l.lineage.iter().map(|&i| layer_label(i)).collect::<Vec<_>>(),
                "overrides": routes,
            })
        })
        .collect();
    json!({
        "generation": t.generation,
        "services": t.services.names.iter().map(|s| &**s).collect::<Vec<_>>(),
        "upstreams": t.upstreams.iter().map(|u| &*u.authority).collect::<Vec<_>>(),
        "layers": layers,
    })
}

/// A config error: the message and each diagnostic with file, line, field and reason.
pub fn config_error_json(e: &ConfigError) -> Value {
    let diags: Vec<Value> = e
        .diagnostics()
        .iter()
        .map(|d| json!({"file": &*d.file, "line": d.line, "field": d.field, "reason": d.reason}))
        .collect();
    json!({ "error": e.to_string(), "diagnostics": diags })
}
