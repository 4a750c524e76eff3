//! The admin view of a routing table (`GET /routes`): generation, services, and every layer with
//! its lineage and overrides. JSON belongs to the admin side; the table itself is plain data.

use microstax_config::table::{LayerId, RoutingTable};
use serde_json::{json, Value};

/// The table as JSON for the admin API.
pub fn routes_json(t: &RoutingTable) -> Value {
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
        "layers": layers,
    })
}
