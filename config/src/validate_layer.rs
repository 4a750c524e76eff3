//! Validation of one team or branch layer against the org catalog, and the value checks every
//! layer shares (endpoints, route policy). Parents are resolved afterwards, in `lineage`.

use crate::load::ParsedDoc;
use crate::model::{Config, Layer};
use crate::names::{self, BASELINE};
use crate::report::Report;
use crate::schema::{LayerKind, PolicyDoc, ServiceDoc, UpstreamTlsDoc};
use crate::values::{readiness_from_doc, Endpoint, LayerIdx};
use std::sync::Arc;

/// Service fields only the org layer sets.
const ORG_ONLY: [&str; 9] = [
    "hosts",
    "path_prefixes",
    "depends_on",
    "stores",
    "topics",
    "paths",
    "latency_objective_ms",
    "cold_start_ms",
    "min_replicas",
];

impl Config {
    /// Checks of one layer that need only the catalog; parents are resolved afterwards.
    pub(crate) fn add_layer_unchecked(
        &mut self,
        doc: ParsedDoc,
        report: &mut Report,
    ) -> Option<LayerIdx> {
        self.add_layer_as(doc, None, report)
    }

    /// [`Config::add_layer_unchecked`], or with `replacing` the id of the layer of the same name
    /// that the new one replaces (the name index then stays as it is).
    pub(crate) fn add_layer_as(
        &mut self,
        doc: ParsedDoc,
        replacing: Option<LayerIdx>,
        report: &mut Report,
    ) -> Option<LayerIdx> {
        let kind = doc.kind();
        let name = doc.name().to_string();
        let why = match kind {
            LayerKind::Branch => names::branch_name_error(&name),
            _ => names::plain_name_error(&name),
        };
        if let Some(why) = why {
            report.at(&doc, "name", format!("`{name}`: {why}"));
            return None;
        }
        if name == BASELINE {
            report.at(&doc, "name", "`baseline` is reserved for the org layer");
            return None;
        }
        if let Some(&other) = self
            .layer_index
            .get(name.as_str())
            .filter(|&&i| Some(i) != replacing)
        {
            let other_file = self
                .layer(other)
                .map_or_else(|| Arc::from("?"), |l| l.doc.file.clone());
            report.at(
                &doc,
                "name",
                format!("duplicate layer name `{name}`: also defined in {other_file}"),
            );
            return None;
        }
        let misplaced = [
            ("context", doc.doc.context.is_some()),
            ("routing", doc.doc.routing.is_some()),
            ("defaults", doc.doc.defaults.is_some()),
            ("stores", !doc.doc.stores.is_empty()),
        ];
        for (f, set) in misplaced {
            if set {
                report.at(&doc, f, "belongs in the org layer only");
            }
        }
        if let Some(l) = &doc.doc.lifecycle {
            crate::environments::check_lifecycle(&doc, kind, l, report);
        }
        crate::economics::check(&doc, kind, report);
        if kind == LayerKind::Team && doc.doc.source.is_some() {
            report.at(&doc, "source", "only branch layers have a source branch");
        }
        for (svc, s) in &doc.doc.services {
            let base = format!("services.{svc}");
            let Some(cat) = self.service_index.get(svc).map(|&i| &self.services[i]) else {
                report.at(
                    &doc,
                    &base,
                    format!("service `{svc}` is not declared in the org layer"),
                );
                continue;
            };
            for f in ORG_ONLY {
                if doc.spans.has(&format!("{base}.{f}")) {
                    report.at(&doc, &format!("{base}.{f}"), "is set in the org layer only");
                }
            }
            if kind == LayerKind::Team {
                for f in ["local", "migrations", "contracts"] {
                    if doc.spans.has(&format!("{base}.{f}")) {
                        report.at(&doc, &format!("{base}.{f}"), "belongs in a branch layer");
                    }
                }
            }
            if matches!(&s.endpoints, Some(e) if e.is_empty()) {
                report.at(
                    &doc,
                    &format!("{base}.endpoints"),
                    "is empty: omit it to keep the parent's endpoints",
                );
            }
            check_service_values(&doc, &base, s, report);
            crate::api::check_service(&doc, &base, s, &cat.depends_on, report);
            for (i, m) in s.migrations.iter().enumerate() {
                if !cat.stores.iter().any(|st| st.name == m.store) {
                    let field = format!("{base}.migrations.{i}.store");
                    report.at(
                        &doc,
                        &field,
                        format!("service `{svc}` does not use a store named `{}`", m.store),
                    );
                }
            }
            for topic in s.contracts.keys() {
                if !cat.topics.produces.iter().any(|t| t == topic) {
                    let field = format!("{base}.contracts.{topic}");
                    report.at(
                        &doc,
                        &field,
                        format!("service `{svc}` does not produce topic `{topic}`"),
                    );
                }
            }
        }
        let label: Arc<str> = Arc::from(format!("{}/{name}", kind.as_str()));
        let idx = self.layers.len();
        self.layers.push(Some(Arc::new(Layer {
            kind,
            name: name.clone(),
            label,
            parent: None,
            doc: Arc::new(doc),
        })));
        if replacing.is_none() {
            Arc::make_mut(&mut self.layer_index).insert(Arc::from(name), idx);
        }
        Some(idx)
    }
}

pub(crate) fn check_service_values(
    doc: &ParsedDoc,
    base: &str,
    s: &ServiceDoc,
    report: &mut Report,
) {
    for (i, e) in s.endpoints.iter().flatten().enumerate() {
        let field = format!("{base}.endpoints.{i}");
        if let Err(why) = Endpoint::parse(e) {
            report.at(doc, &field, why);
        }
    }
    if let Some(l) = &s.local {
        let field = format!("{base}.local");
        if let Err(why) = Endpoint::parse(l) {
            report.at(doc, &field, why);
        }
    }
    if let Some(p) = &s.policy {
        check_policy(doc, &format!("{base}.policy"), p, report);
    }
    if let Some(r) = &s.run {
        crate::environments::check_run(doc, &format!("{base}.run"), r, report);
    }
    if s.idle_after_s == Some(0) {
        report.at(
            doc,
            &format!("{base}.idle_after_s"),
            "must be greater than 0: omit it to keep instances running",
        );
    }
}

pub(crate) fn check_policy(doc: &ParsedDoc, base: &str, p: &PolicyDoc, report: &mut Report) {
    for (f, v) in [
        ("connect_timeout_ms", p.connect_timeout_ms),
        ("request_timeout_ms", p.request_timeout_ms),
        ("max_connections", p.max_connections.map(u64::from)),
    ] {
        if v == Some(0) {
            let field = format!("{base}.{f}");
            report.at(doc, &field, "must be greater than 0");
        }
    }
    if let Some(r) = &p.readiness {
        let field = format!("{base}.readiness.policy");
        if let Err(why) = readiness_from_doc(r) {
            report.at(doc, &field, why);
        }
    }
    if let Some(v) = &p.protocol {
        if microstax_table::UpstreamProtocol::parse(v).is_none() {
            let field = format!("{base}.protocol");
            report.at(
                doc,
                &field,
                format!("unknown protocol `{v}`: use auto, http1 or http2"),
            );
        }
    }
    if let Some(t) = &p.upstream_tls {
        check_upstream_tls(doc, &format!("{base}.upstream_tls"), t, report);
    }
    if let Some(h) = &p.request_headers {
        for (k, v) in &h.set {
            let field = format!("{base}.request_headers.set.{k}");
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                report.at(doc, &field, format!("`{k}` is not a valid header name"));
            } else if http::HeaderValue::from_str(v).is_err() {
                report.at(doc, &field, "is not a valid header value");
            }
        }
        for (i, k) in h.remove.iter().enumerate() {
            let field = format!("{base}.request_headers.remove.{i}");
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                report.at(doc, &field, format!("`{k}` is not a valid header name"));
            }
        }
    }
}

/// A CA bundle must be readable and hold at least one PEM certificate (the proxy parses it);
/// a server name must be a DNS name or an IP address.
fn check_upstream_tls(doc: &ParsedDoc, base: &str, t: &UpstreamTlsDoc, report: &mut Report) {
    let field = format!("{base}.ca_file");
    if t.ca_file.is_empty() {
        report.at(doc, &field, "must name a PEM file of CA certificates");
    } else {
        match std::fs::read(&t.ca_file) {
            Err(e) => report.at(doc, &field, format!("cannot read `{}`: {e}", t.ca_file)),
            Ok(pem) if !contains(&pem, b"-----BEGIN CERTIFICATE-----") => report.at(
                doc,
                &field,
                format!("`{}` holds no PEM certificate", t.ca_file),
            ),
            Ok(_) => {}
        }
    }
    if let Some(n) = &t.server_name {
        let dns = !n.is_empty()
            && n.len() <= 253
            && n.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !dns && n.parse::<std::net::IpAddr>().is_err() {
            report.at(
                doc,
                &format!("{base}.server_name"),
                format!("`{n}` is not a DNS name or an IP address"),
            );
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
