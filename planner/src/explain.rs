//! `explain`: the effective config of one service as seen from one layer, each value with the
//! layer and file:line that set it; the plan's decision for the service; and where a request
//! would be routed, found by compiling the table and doing the same lookup the proxy does.

use crate::compile::compile;
use crate::error::PlanError;
use crate::plan::Entry;
use crate::planner::{lineage, plan_branch};
use crate::render::{entry_json, origin_json, table};
use microstax_config::{Config, Field};
use serde_json::{json, Value};
use std::sync::Arc;

/// Where the proxy sends a request of the layer for the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteView {
    /// The layer whose route is used (the nearest in the lineage that has one).
    pub layer: Arc<str>,
    /// `baseline`, `team`, `branch` or `local`.
    pub kind: &'static str,
    /// Upstream `host:port`s.
    pub upstreams: Vec<String>,
    /// Connect timeout.
    pub connect_timeout_ms: u64,
    /// Response-header timeout.
    pub request_timeout_ms: u64,
    /// Readiness policy.
    pub readiness: String,
}

/// The answer of `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The layer's label.
    pub layer: Arc<str>,
    /// The service.
    pub service: String,
    /// The lineage, nearest first.
    pub lineage: Vec<Arc<str>>,
    /// Every effective field with its origin.
    pub fields: Vec<Field>,
    /// The route a request takes.
    pub route: Option<RouteView>,
    /// The plan's entry for the service (none for the baseline).
    pub decision: Option<Entry>,
    /// A warning when the plan and the routing table disagree.
    pub note: Option<String>,
    /// The planned instance as the executor runs it (a running proxy with an executor only).
    pub instance: Option<String>,
}

/// Explain `service` in the branch, team or `baseline` called `branch`, routing by the table
/// `config` compiles to without environments (what `microstax explain` shows offline).
pub fn explain(config: &Config, branch: &str, service: &str) -> Result<Explanation, PlanError> {
    explain_in(config, &compile(config, 0), branch, service)
}

/// [`explain`] with the route looked up in `table`, the one actually served (a running proxy's
/// table routes planned forks to their instances).
pub fn explain_in(
    config: &Config,
    table: &microstax_config::RoutingTable,
    branch: &str,
    service: &str,
) -> Result<Explanation, PlanError> {
    let idx = config
        .layer_id(branch)
        .ok_or_else(|| PlanError::UnknownLayer(branch.to_string()))?;
    let eff = config
        .effective(idx, service)
        .ok_or_else(|| PlanError::UnknownService(service.to_string()))?;
    let chain = lineage(config, idx)?;
    let labels: Vec<Arc<str>> = chain
        .iter()
        .filter_map(|&i| config.layer(i))
        .map(|l| l.label.clone())
        .collect();
    let route = table
        .services
        .names
        .iter()
        .position(|n| **n == *service)
        .and_then(|sid| table.route(idx as u32, sid as u32))
        .map(|r| RouteView {
            layer: table
                .layer(r.layer)
                .map_or_else(|| Arc::from("?"), |l| l.label.clone()),
            kind: r.kind.as_str(),
            upstreams: r
                .upstreams
                .iter()
                .filter_map(|&u| table.upstream(u))
                .map(|u| u.authority.to_string())
                .collect(),
            connect_timeout_ms: r.policy.connect_timeout.as_millis() as u64,
            request_timeout_ms: r.policy.request_timeout.as_millis() as u64,
            readiness: r.policy.readiness.to_string(),
        });
    let decision = if idx == 0 {
        None
    } else {
        plan_branch(config, branch, None)?.entry(service).cloned()
    };
    let layer = eff.layer.clone();
    let note = match (&decision, &route) {
        (Some(d), Some(r)) if d.decision.is_moved() && r.layer != layer => Some(format!(
            "the plan needs a {layer} instance of {service}, but no layer from {layer} to {} declares its endpoints: requests go to {}'s upstreams until one does, the org sets routing.instance_address, or an executor runs it (`--executor process`)",
            r.layer, r.layer
        )),
        _ => None,
    };
    Ok(Explanation {
        layer,
        service: service.to_string(),
        lineage: labels,
        fields: eff.fields(),
        route,
        decision,
        note,
        instance: None,
    })
}

impl Explanation {
    /// A readable report.
    pub fn to_text(&self) -> String {
        let lineage: Vec<&str> = self.lineage.iter().map(|l| &**l).collect();
        let mut out = format!(
            "{} in {} (lineage: {})\n\n",
            self.service,
            self.layer,
            lineage.join(" -> ")
        );
        let rows: Vec<Vec<String>> = self
            .fields
            .iter()
            .map(|f| vec![f.name.clone(), f.value.clone(), f.origin.to_string()])
            .collect();
        out.push_str(&table(&["FIELD", "VALUE", "SET BY"], &rows));
        out.push('\n');
        match &self.route {
            Some(r) => out.push_str(&format!(
                "route: {} ({}) -> {}; connect timeout {}ms, request timeout {}ms, readiness {}\n",
                r.layer,
                r.kind,
                r.upstreams.join(", "),
                r.connect_timeout_ms,
                r.request_timeout_ms,
                r.readiness
            )),
            None => out.push_str("route: none\n"),
        }
        if let Some(d) = &self.decision {
            out.push_str(&format!(
                "decision: {} - {}\n",
                d.decision_text(),
                d.reason(usize::MAX)
            ));
        }
        if let Some(i) = &self.instance {
            out.push_str(&format!("instance: {i}\n"));
        }
        if let Some(n) = &self.note {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "layer": &*self.layer,
            "service": self.service,
            "lineage": self.lineage.iter().map(|l| &**l).collect::<Vec<_>>(),
            "fields": self.fields.iter().map(|f| json!({
                "field": f.name,
                "value": f.value,
                "origin": origin_json(&f.origin),
            })).collect::<Vec<_>>(),
            "route": self.route.as_ref().map(|r| json!({
                "layer": &*r.layer,
                "kind": r.kind,
                "upstreams": r.upstreams,
                "connect_timeout_ms": r.connect_timeout_ms,
                "request_timeout_ms": r.request_timeout_ms,
                "readiness": r.readiness,
            })),
            "decision": self.decision.as_ref().map(entry_json),
            "note": self.note,
            "instance": self.instance,
        })
    }
}
