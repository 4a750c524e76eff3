//! Validation of the org layer: its settings (context sources, routing, defaults) and its
//! service catalog, which becomes the root of a new [`Config`]. Checks across services (unique
//! hosts, store kinds, globs) are in `catalog`.

use crate::load::ParsedDoc;
use crate::model::{Config, Layer, Service};
use crate::names::{self, BASELINE};
use crate::report::Report;
use crate::schema::LayerKind;
use crate::validate_layer::{check_policy, check_service_values};
use crate::values::{instance_address, Endpoint, Origin};
use microstax_table::{ContextSettings, HostPattern, Settings};
use std::collections::BTreeMap;
use std::sync::Arc;

impl Config {
    pub(crate) fn from_org(doc: ParsedDoc, report: &mut Report) -> Config {
        let file = doc.file.clone();
        let settings = settings_from(&doc, report);
        let mut services = Vec::new();
        let mut service_index = BTreeMap::new();
        let label: Arc<str> = Arc::from(BASELINE);
        for (name, s) in &doc.doc.services {
            let base = format!("services.{name}");
            if let Some(why) = names::plain_name_error(name) {
                report.at(&doc, &base, why);
            }
            match &s.endpoints {
                None => report.at(
                    &doc,
                    &format!("{base}.endpoints"),
                    "missing: the baseline needs at least one endpoint",
                ),
                Some(e) if e.is_empty() => report.at(
                    &doc,
                    &format!("{base}.endpoints"),
                    "is empty: the baseline needs at least one endpoint",
                ),
                Some(_) => {}
            }
            check_service_values(&doc, &base, s, report);
            crate::economics::check_service(&doc, &base, s, report);
            crate::api::check_service(&doc, &base, s, &s.depends_on, report);
            for f in ["local", "migrations", "contracts"] {
                if doc.spans.has(&format!("{base}.{f}")) {
                    report.at(
                        &doc,
                        &format!("{base}.{f}"),
                        "belongs in a branch layer, not the org layer",
                    );
                }
            }
            let mut hosts = Vec::new();
            for (i, h) in s.hosts.iter().enumerate() {
                let h = h.to_ascii_lowercase();
                let h = h.split(':').next().unwrap_or("").to_string();
                if h.is_empty() {
                    let field = format!("{base}.hosts.{i}");
                    report.at(&doc, &field, "host is empty");
                }
                hosts.push(h);
            }
            let mut path_prefixes = Vec::new();
            for (i, p) in s.path_prefixes.iter().enumerate() {
                let field = format!("{base}.path_prefixes.{i}");
                if !p.starts_with('/') {
                    report.at(
                        &doc,
                        &field,
                        format!("path prefix `{p}` must start with '/'"),
                    );
                    continue;
                }
                path_prefixes.push(p.trim_end_matches('/').to_string());
            }
            service_index.insert(name.clone(), services.len());
            services.push(Service {
                name: name.clone(),
                hosts,
                path_prefixes,
                depends_on: s.depends_on.clone(),
                stores: s.stores.clone(),
                topics: s.topics.clone().unwrap_or_default(),
                paths: s.paths.clone(),
                origin: Origin {
                    layer: label.clone(),
                    file: file.clone(),
                    line: doc.spans.line(&base),
                },
            });
        }
        crate::catalog::check(&doc, report);
        crate::environments::check_stores(&doc, report);
        crate::economics::check(&doc, LayerKind::Org, report);
        if let Some(l) = &doc.doc.lifecycle {
            crate::environments::check_lifecycle(&doc, LayerKind::Org, l, report);
        }
        for (name, s) in &doc.doc.services {
            for (i, d) in s.depends_on.iter().enumerate() {
                if !service_index.contains_key(d) {
                    let field = format!("services.{name}.depends_on.{i}");
                    report.at(&doc, &field, format!("unknown service `{d}`"));
                }
            }
        }
        if let Some(d) = &settings.default_service {
            if !service_index.contains_key(d) {
                report.at(
                    &doc,
                    "routing.default_service",
                    format!("unknown service `{d}`"),
                );
            }
        }
        for f in ["parent", "source"] {
            if doc.spans.has(f) {
                report.at(
                    &doc,
                    f,
                    "the org layer is the root: it has no parent or source",
                );
            }
        }
        let org = Layer {
            kind: LayerKind::Org,
            name: BASELINE.to_string(),
            label,
            parent: None,
            doc: Arc::new(doc),
        };
        Config {
            settings,
            services,
            service_index,
            layers: vec![Some(Arc::new(org))],
            layer_index: Arc::new(BTreeMap::new()),
        }
    }
}

fn settings_from(doc: &ParsedDoc, report: &mut Report) -> Settings {
    let ctx = doc.doc.context.clone().unwrap_or_default();
    let routing = doc.doc.routing.clone().unwrap_or_default();
    let mut header_name = |field: &str, v: Option<String>, default: &str| -> String {
        let v = v
            .unwrap_or_else(|| default.to_string())
            .to_ascii_lowercase();
        if http::HeaderName::from_bytes(v.as_bytes()).is_err() {
            report.at(doc, field, format!("`{v}` is not a valid header name"));
        }
        v
    };
    let header = header_name("context.header", ctx.header, "x-microstax-branch");
    let token_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
    };
    let baggage_key = ctx.baggage_key.unwrap_or_else(|| "microstax-branch".into());
    if !token_ok(&baggage_key) {
        report.at(
            doc,
            "context.baggage_key",
            "must be a token (RFC 7230): letters, digits and !#$%&'*+-.^_`|~",
        );
    }
    let cookie = ctx.cookie.unwrap_or_else(|| "microstax-branch".into());
    if !token_ok(&cookie) {
        report.at(doc, "context.cookie", "must be a cookie-name token");
    }
    let mut host_patterns = Vec::new();
    for (i, p) in ctx.host_patterns.iter().enumerate() {
        let field = format!("context.host_patterns.{i}");
        match HostPattern::parse(p) {
            Ok(hp) => host_patterns.push(hp),
            Err(why) => report.at(doc, &field, why),
        }
    }
    if let Some(d) = &doc.doc.defaults {
        check_policy(doc, "defaults", d, report);
    }
    if let Some(t) = &routing.instance_address {
        let field = "routing.instance_address";
        if !t.contains("{service}") || !(t.contains("{branch}") || t.contains("{instance}")) {
            report.at(
                doc,
                field,
                "must contain {service} and {branch} or {instance}",
            );
        } else if let Err(why) = Endpoint::parse(&instance_address(t, "svc", "a/b", "0123456789ab"))
        {
            report.at(doc, field, format!("does not make a valid endpoint: {why}"));
        }
    }
    Settings {
        context: ContextSettings {
            header,
            baggage_key,
            cookie,
            host_patterns,
            strict: ctx.strict.unwrap_or(false),
        },
        default_service: routing.default_service,
        debug_header: routing.debug_header.unwrap_or(false),
        label_branches: routing.label_branches,
        instance_address: routing.instance_address,
        // the compiler fills in the org's `lifecycle.hold_max_requests`
        hold_max_requests: crate::environments::DEFAULT_HOLD_MAX_REQUESTS,
    }
}
