//! The validated config: settings, the service catalog, and the layers with their lineage.
//! Built from parsed documents; every check reports file, line, field and reason. Layer ids are
//! stable across incremental updates (a removed layer leaves an empty slot) so the planner can
//! recompile only the layers a change touches.

use crate::error::{ConfigError, Report};
use crate::load::ParsedDoc;
use crate::names::{self, BASELINE};
use crate::schema::{LayerKind, ServiceDoc, StoreDoc, TopicsDoc};
pub use microstax_table::{ContextSettings, HostPattern, Settings};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// Index of a layer in [`Config::layers`]; the org baseline is always 0.
pub type LayerIdx = usize;

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The layer label, e.g. `baseline`, `team/payments-team`, `branch/feature-a`; `default` for
    /// built-in defaults.
    pub layer: Arc<str>,
    /// The file that set it.
    pub file: Arc<str>,
    /// The line that set it (0 for built-in defaults).
    pub line: u32,
}

impl Origin {
    pub(crate) fn builtin() -> Self {
        Origin {
            layer: Arc::from("default"),
            file: Arc::from("built-in"),
            line: 0,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{} ({})", self.layer, self.file)
        } else {
            write!(f, "{} ({}:{})", self.layer, self.file, self.line)
        }
    }
}

/// An upstream endpoint, normalised to `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint(pub Arc<str>);

impl Endpoint {
    /// Parse `host:port` or `http://host:port`.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let rest = if let Some(r) = s.strip_prefix("http://") {
            r
        } else if s.starts_with("https://") {
            return Err(
                "https upstreams are not supported yet (TLS to upstreams is planned)".into(),
            );
        } else if s.contains("://") {
            return Err("only http:// endpoints are supported".into());
        } else {
            s
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        // a path cannot be honoured (requests keep their own) and must not be dropped silently
        if rest.contains(['/', '?', '#']) {
            return Err(format!(
                "`{s}` has a path: an endpoint is host:port or http://host:port, and requests keep their own path"
            ));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no port: write host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{s}` has an invalid port"))?;
        if port == 0 {
            return Err(format!("`{s}` has port 0"));
        }
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        };
        if !host_ok {
            return Err(format!("`{s}` has an invalid host"));
        }
        Ok(Endpoint(Arc::from(
            format!("{host}:{port}").to_ascii_lowercase(),
        )))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Fill an instance address template. `branch` has `/` replaced by `-` (a host label).
pub fn instance_address(template: &str, service: &str, branch: &str, instance: &str) -> String {
    template
        .replace("{service}", service)
        .replace("{branch}", &branch.replace('/', "-"))
        .replace("{instance}", instance)
}

/// A service of the org catalog: what it is, apart from values layers may override.
#[derive(Debug, Clone)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Host names (lower case, no port).
    pub hosts: Vec<String>,
    /// Path prefixes, normalised without a trailing slash (`/` becomes empty).
    pub path_prefixes: Vec<String>,
    /// Services it calls.
    pub depends_on: Vec<String>,
    /// Stores it uses.
    pub stores: Vec<StoreDoc>,
    /// Topics it produces and consumes.
    pub topics: TopicsDoc,
    /// Source globs that belong to it.
    pub paths: Vec<String>,
    /// Where it is declared.
    pub origin: Origin,
}

/// A layer: the org baseline, a team or a branch.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Kind of layer.
    pub kind: LayerKind,
    /// Bare name (`baseline` for the org layer).
    pub name: String,
    /// `baseline`, `team/<name>` or `branch/<name>`.
    pub label: Arc<str>,
    /// Parent layer (None only for the org layer).
    pub parent: Option<LayerIdx>,
    /// The document as written.
    pub doc: Arc<ParsedDoc>,
}

impl Layer {
    /// The origin of the field at `path` in this layer's document.
    pub fn origin(&self, path: &str) -> Origin {
        Origin {
            layer: self.label.clone(),
            file: self.doc.file.clone(),
            line: self.doc.spans.line(path),
        }
    }

    /// This layer's entry for a service, if it has one.
    pub fn service(&self, name: &str) -> Option<&ServiceDoc> {
        self.doc.doc.services.get(name)
    }
}

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Org-wide settings.
    pub settings: Settings,
    services: Vec<Service>,
    service_index: BTreeMap<String, usize>,
    layers: Vec<Option<Arc<Layer>>>,
    layer_index: BTreeMap<String, LayerIdx>,
}

const ORG_ONLY: [&str; 5] = ["hosts", "path_prefixes", "depends_on", "stores", "topics"];

impl Config {
    /// Validate a whole set of documents (exactly one org document, any number of layers).
    pub fn build(docs: Vec<ParsedDoc>) -> Result<Config, ConfigError> {
        let mut report = Report::default();
        let mut orgs = docs.iter().filter(|d| d.kind() == LayerKind::Org);
        let Some(org) = orgs.next() else {
            let file = docs
                .first()
                .map_or_else(|| Arc::from("config"), |d| d.file.clone());
            return Err(ConfigError::one(
                &file,
                0,
                "kind",
                "no org layer: one document must be `kind: org`",
            ));
        };
        for extra in orgs {
            report.push(
                &extra.file,
                extra.spans.line("kind"),
                "kind",
                format!("a second org layer; the first is in {}", org.file),
            );
        }
        let mut cfg = Config::from_org(org.clone(), &mut report);
        for d in docs.into_iter().filter(|d| d.kind() != LayerKind::Org) {
            cfg.add_layer_unchecked(d, &mut report);
        }
        cfg.resolve_parents(&mut report);
        cfg.check_cycles(&mut report);
        report.finish()?;
        Ok(cfg)
    }

    fn from_org(doc: ParsedDoc, report: &mut Report) -> Config {
        let file = doc.file.clone();
        let settings = settings_from(&doc, report);
        let mut services = Vec::new();
        let mut service_index = BTreeMap::new();
        let label: Arc<str> = Arc::from(BASELINE);
        for (name, s) in &doc.doc.services {
            let base = format!("services.{name}");
            let line = |f: &str| doc.spans.line(&format!("{base}.{f}"));
            if let Some(why) = names::plain_name_error(name) {
                report.push(&file, doc.spans.line(&base), &base, why);
            }
            match &s.endpoints {
                None => report.push(
                    &file,
                    doc.spans.line(&base),
                    &format!("{base}.endpoints"),
                    "missing: the baseline needs at least one endpoint",
                ),
                Some(e) if e.is_empty() => report.push(
                    &file,
                    line("endpoints"),
                    &format!("{base}.endpoints"),
                    "is empty: the baseline needs at least one endpoint",
                ),
                Some(_) => {}
            }
            check_service_values(&doc, &base, s, report);
            for f in ["local", "migrations", "contracts"] {
                if doc.spans.has(&format!("{base}.{f}")) {
                    report.push(
                        &file,
                        line(f),
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
                    report.push(&file, doc.spans.line(&field), &field, "host is empty");
                }
                hosts.push(h);
            }
            let mut path_prefixes = Vec::new();
            for (i, p) in s.path_prefixes.iter().enumerate() {
                let field = format!("{base}.path_prefixes.{i}");
                if !p.starts_with('/') {
                    report.push(
                        &file,
                        doc.spans.line(&field),
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
        for (name, s) in &doc.doc.services {
            for (i, d) in s.depends_on.iter().enumerate() {
                if !service_index.contains_key(d) {
                    let field = format!("services.{name}.depends_on.{i}");
                    report.push(
                        &file,
                        doc.spans.line(&field),
                        &field,
                        format!("unknown service `{d}`"),
                    );
                }
            }
        }
        if let Some(d) = &settings.default_service {
            if !service_index.contains_key(d) {
                report.push(
                    &file,
                    doc.spans.line("routing.default_service"),
                    "routing.default_service",
                    format!("unknown service `{d}`"),
                );
            }
        }
        for f in ["parent", "source"] {
            if doc.spans.has(f) {
                report.push(
                    &file,
                    doc.spans.line(f),
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
            layer_index: BTreeMap::new(),
        }
    }

    /// Checks of one layer that need only the catalog; parents are resolved afterwards.
    fn add_layer_unchecked(&mut self, doc: ParsedDoc, report: &mut Report) -> Option<LayerIdx> {
        let kind = doc.kind();
        let name = doc.name().to_string();
        let file = doc.file.clone();
        let name_line = doc.spans.line("name");
        let why = match kind {
            LayerKind::Branch => names::branch_name_error(&name),
            _ => names::plain_name_error(&name),
        };
        if let Some(why) = why {
            report.push(&file, name_line, "name", format!("`{name}`: {why}"));
            return None;
        }
        if name == BASELINE {
            report.push(
                &file,
                name_line,
                "name",
                "`baseline` is reserved for the org layer",
            );
            return None;
        }
        if let Some(&other) = self.layer_index.get(&name) {
            let other_file = self
                .layer(other)
                .map_or_else(|| Arc::from("?"), |l| l.doc.file.clone());
            report.push(
                &file,
                name_line,
                "name",
                format!("duplicate layer name `{name}`: also defined in {other_file}"),
            );
            return None;
        }
        let misplaced = [
            ("context", doc.doc.context.is_some()),
            ("routing", doc.doc.routing.is_some()),
            ("defaults", doc.doc.defaults.is_some()),
        ];
        for (f, set) in misplaced {
            if set {
                report.push(&file, doc.spans.line(f), f, "belongs in the org layer only");
            }
        }
        if kind == LayerKind::Team && doc.doc.source.is_some() {
            report.push(
                &file,
                doc.spans.line("source"),
                "source",
                "only branch layers have a source branch",
            );
        }
        for (svc, s) in &doc.doc.services {
            let base = format!("services.{svc}");
            let Some(cat) = self.service_index.get(svc).map(|&i| &self.services[i]) else {
                report.push(
                    &file,
                    doc.spans.line(&base),
                    &base,
                    format!("service `{svc}` is not declared in the org layer"),
                );
                continue;
            };
            for f in ORG_ONLY.iter().chain(["paths"].iter()) {
                if doc.spans.has(&format!("{base}.{f}")) {
                    report.push(
                        &file,
                        doc.spans.line(&format!("{base}.{f}")),
                        &format!("{base}.{f}"),
                        "is set in the org layer only",
                    );
                }
            }
            if kind == LayerKind::Team {
                for f in ["local", "migrations", "contracts"] {
                    if doc.spans.has(&format!("{base}.{f}")) {
                        report.push(
                            &file,
                            doc.spans.line(&format!("{base}.{f}")),
                            &format!("{base}.{f}"),
                            "belongs in a branch layer",
                        );
                    }
                }
            }
            if matches!(&s.endpoints, Some(e) if e.is_empty()) {
                report.push(
                    &file,
                    doc.spans.line(&format!("{base}.endpoints")),
                    &format!("{base}.endpoints"),
                    "is empty: omit it to keep the parent's endpoints",
                );
            }
            check_service_values(&doc, &base, s, report);
            for (i, m) in s.migrations.iter().enumerate() {
                if !cat.stores.iter().any(|st| st.name == m.store) {
                    let field = format!("{base}.migrations.{i}.store");
                    report.push(
                        &file,
                        doc.spans.line(&field),
                        &field,
                        format!("service `{svc}` does not use a store named `{}`", m.store),
                    );
                }
            }
            for topic in s.contracts.keys() {
                if !cat.topics.produces.iter().any(|t| t == topic) {
                    let field = format!("{base}.contracts.{topic}");
                    report.push(
                        &file,
                        doc.spans.line(&field),
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
        self.layer_index.insert(name, idx);
        Some(idx)
    }

    fn resolve_parent_of(&mut self, idx: LayerIdx, report: &mut Report) {
        let Some(layer) = self.layer(idx).cloned() else {
            return;
        };
        let parent_name = layer.doc.doc.parent.as_deref().unwrap_or(BASELINE);
        let parent = if parent_name == BASELINE {
            Some(0)
        } else {
            self.layer_index.get(parent_name).copied()
        };
        match parent {
            None => report.push(
                &layer.doc.file,
                layer.doc.spans.line("parent"),
                "parent",
                format!("unknown parent `{parent_name}`: name `baseline`, a team or a branch"),
            ),
            Some(p) => {
                let parent_kind = self.layer(p).map(|l| l.kind);
                if layer.kind == LayerKind::Team && parent_kind == Some(LayerKind::Branch) {
                    report.push(
                        &layer.doc.file,
                        layer.doc.spans.line("parent"),
                        "parent",
                        format!("a team cannot have a branch (`{parent_name}`) as parent"),
                    );
                }
                let mut l = (*layer).clone();
                l.parent = Some(p);
                self.layers[idx] = Some(Arc::new(l));
            }
        }
    }

    fn resolve_parents(&mut self, report: &mut Report) {
        for idx in 1..self.layers.len() {
            self.resolve_parent_of(idx, report);
        }
    }

    fn check_cycles(&self, report: &mut Report) {
        let mut reported = BTreeSet::new();
        for idx in 1..self.layers.len() {
            if let Some(cycle) = self.cycle_from(idx) {
                let key: BTreeSet<_> = cycle.iter().copied().collect();
                if reported.insert(key.into_iter().collect::<Vec<_>>()) {
                    self.report_cycle(idx, &cycle, report);
                }
            }
        }
    }

    /// Report the lineage cycle `cycle` (starting at `idx`) at `idx`'s `parent` field.
    fn report_cycle(&self, idx: LayerIdx, cycle: &[LayerIdx], report: &mut Report) {
        let Some(l) = self.layer(idx) else { return };
        let names: Vec<&str> = cycle
            .iter()
            .filter_map(|&i| self.layer(i))
            .map(|l| l.name.as_str())
            .collect();
        let reason = format!("lineage cycle: {} -> {}", names.join(" -> "), l.name);
        report.push(&l.doc.file, l.doc.spans.line("parent"), "parent", reason);
    }

    /// The layers of a cycle reachable from `idx`, if any.
    fn cycle_from(&self, idx: LayerIdx) -> Option<Vec<LayerIdx>> {
        let mut path = vec![idx];
        let mut cur = idx;
        while let Some(p) = self.layer(cur).and_then(|l| l.parent) {
            if p == idx {
                return Some(path);
            }
            if path.contains(&p) || path.len() > self.layers.len() {
                return None; // a cycle further up: reported from one of its own members
            }
            path.push(p);
            cur = p;
        }
        None
    }

    /// Insert or replace one team or branch layer, validated exactly like a file. Returns the
    /// new config and the id of the layer. An org document rebuilds the whole config.
    pub fn upsert(&self, doc: ParsedDoc) -> Result<(Config, LayerIdx), ConfigError> {
        if doc.kind() == LayerKind::Org {
            let mut docs: Vec<ParsedDoc> = self
                .layers()
                .filter(|l| l.kind != LayerKind::Org)
                .map(|l| (*l.doc).clone())
                .collect();
            docs.insert(0, doc);
            return Config::build(docs).map(|c| (c, 0));
        }
        let mut next = self.clone();
        let existing = next.layer_index.remove(doc.name());
        if let Some(old) = existing {
            if let Some(l) = next.layer(old) {
                if l.kind != doc.kind() {
                    return Err(ConfigError::one(
                        &doc.file,
                        doc.spans.line("kind"),
                        "kind",
                        format!("`{}` is a {} layer already", doc.name(), l.kind.as_str()),
                    ));
                }
            }
        }
        let mut report = Report::default();
        let file = doc.file.clone();
        let Some(new_idx) = next.add_layer_unchecked(doc, &mut report) else {
            return Err(match report.finish() {
                Err(e) => e,
                Ok(()) => ConfigError::one(&file, 0, "name", "layer rejected"),
            });
        };
        // keep the old id so descendants and the compiled table stay valid
        let idx = match existing {
            Some(old) => {
                let l = next.layers.pop().flatten();
                next.layers[old] = l;
                next.layer_index.insert(
                    next.layer(old).map(|l| l.name.clone()).unwrap_or_default(),
                    old,
                );
                old
            }
            None => new_idx,
        };
        next.resolve_parent_of(idx, &mut report);
        if let Some(cycle) = next.cycle_from(idx) {
            next.report_cycle(idx, &cycle, &mut report);
        }
        report.finish()?;
        Ok((next, idx))
    }

    /// Remove a team or branch layer. Refused while other layers name it as their parent.
    pub fn remove(&self, name: &str) -> Result<(Config, LayerIdx), ConfigError> {
        let api: Arc<str> = Arc::from("api");
        let Some(&idx) = self.layer_index.get(name) else {
            return Err(ConfigError::one(
                &api,
                0,
                "name",
                format!("no layer named `{name}`"),
            ));
        };
        let children: Vec<&str> = self
            .children(idx)
            .iter()
            .filter_map(|&c| self.layer(c))
            .map(|l| l.name.as_str())
            .collect();
        if !children.is_empty() {
            return Err(ConfigError::one(
                &api,
                0,
                "name",
                format!(
                    "`{name}` is the parent of {}: remove or re-parent them first",
                    children.join(", ")
                ),
            ));
        }
        let mut next = self.clone();
        next.layers[idx] = None;
        next.layer_index.remove(name);
        Ok((next, idx))
    }

    /// The layer at `idx`, if that slot is in use.
    pub fn layer(&self, idx: LayerIdx) -> Option<&Arc<Layer>> {
        self.layers.get(idx).and_then(Option::as_ref)
    }

    /// Number of layer slots (ids range over `0..layer_slots()`).
    pub fn layer_slots(&self) -> usize {
        self.layers.len()
    }

    /// Every layer in id order, org first.
    pub fn layers(&self) -> impl Iterator<Item = &Arc<Layer>> {
        self.layers.iter().flatten()
    }

    /// Id of the team or branch layer called `name` (`baseline` gives the org layer).
    pub fn layer_id(&self, name: &str) -> Option<LayerIdx> {
        if name == BASELINE {
            return Some(0);
        }
        self.layer_index.get(name).copied()
    }

    /// Id of the branch called `name` (teams are not addressable by requests).
    pub fn branch_id(&self, name: &str) -> Option<LayerIdx> {
        self.layer_id(name)
            .filter(|&i| self.layer(i).is_some_and(|l| l.kind == LayerKind::Branch))
    }

    /// The layers that name `idx` as their parent.
    pub fn children(&self, idx: LayerIdx) -> Vec<LayerIdx> {
        (0..self.layers.len())
            .filter(|&i| i != idx && self.layer(i).and_then(|l| l.parent) == Some(idx))
            .collect()
    }

    /// `idx` and all its descendants, parents before children.
    pub fn subtree(&self, idx: LayerIdx) -> Vec<LayerIdx> {
        let mut out = vec![idx];
        let mut i = 0;
        while i < out.len() {
            let c = self.children(out[i]);
            out.extend(c);
            i += 1;
        }
        out
    }

    /// The lineage of `idx`: itself, its parent, ..., the org layer.
    pub fn lineage(&self, idx: LayerIdx) -> Vec<LayerIdx> {
        let mut out = vec![idx];
        let mut cur = idx;
        while let Some(p) = self.layer(cur).and_then(|l| l.parent) {
            if out.contains(&p) {
                break;
            }
            out.push(p);
            cur = p;
        }
        out
    }

    /// The service catalog in name order.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// A catalog service by name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.service_index.get(name).map(|&i| &self.services[i])
    }

    /// The org layer.
    pub fn org(&self) -> &Arc<Layer> {
        match self.layers.first().and_then(Option::as_ref) {
            Some(l) => l,
            None => unreachable_org(),
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_org() -> ! {
    panic!("a Config always holds its org layer at index 0")
}

fn check_service_values(doc: &ParsedDoc, base: &str, s: &ServiceDoc, report: &mut Report) {
    let file = &doc.file;
    for (i, e) in s.endpoints.iter().flatten().enumerate() {
        let field = format!("{base}.endpoints.{i}");
        if let Err(why) = Endpoint::parse(e) {
            report.push(file, doc.spans.line(&field), &field, why);
        }
    }
    if let Some(l) = &s.local {
        let field = format!("{base}.local");
        if let Err(why) = Endpoint::parse(l) {
            report.push(file, doc.spans.line(&field), &field, why);
        }
    }
    if let Some(p) = &s.policy {
        check_policy(doc, &format!("{base}.policy"), p, report);
    }
}

pub(crate) fn check_policy(
    doc: &ParsedDoc,
    base: &str,
    p: &crate::schema::PolicyDoc,
    report: &mut Report,
) {
    let file = &doc.file;
    for (f, v) in [
        ("connect_timeout_ms", p.connect_timeout_ms),
        ("request_timeout_ms", p.request_timeout_ms),
    ] {
        if v == Some(0) {
            let field = format!("{base}.{f}");
            report.push(
                file,
                doc.spans.line(&field),
                &field,
                "must be greater than 0",
            );
        }
    }
    if let Some(r) = &p.readiness {
        let field = format!("{base}.readiness.policy");
        if let Err(why) = crate::merge::readiness_from_doc(r) {
            report.push(file, doc.spans.line(&field), &field, why);
        }
    }
    if let Some(h) = &p.request_headers {
        for (k, v) in &h.set {
            let field = format!("{base}.request_headers.set.{k}");
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                report.push(
                    file,
                    doc.spans.line(&field),
                    &field,
                    format!("`{k}` is not a valid header name"),
                );
            } else if http::HeaderValue::from_str(v).is_err() {
                report.push(
                    file,
                    doc.spans.line(&field),
                    &field,
                    "is not a valid header value",
                );
            }
        }
        for (i, k) in h.remove.iter().enumerate() {
            let field = format!("{base}.request_headers.remove.{i}");
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                report.push(
                    file,
                    doc.spans.line(&field),
                    &field,
                    format!("`{k}` is not a valid header name"),
                );
            }
        }
    }
}

fn settings_from(doc: &ParsedDoc, report: &mut Report) -> Settings {
    let file = &doc.file;
    let ctx = doc.doc.context.clone().unwrap_or_default();
    let routing = doc.doc.routing.clone().unwrap_or_default();
    let mut header_name = |field: &str, v: Option<String>, default: &str| -> String {
        let v = v
            .unwrap_or_else(|| default.to_string())
            .to_ascii_lowercase();
        if http::HeaderName::from_bytes(v.as_bytes()).is_err() {
            report.push(
                file,
                doc.spans.line(field),
                field,
                format!("`{v}` is not a valid header name"),
            );
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
        report.push(
            file,
            doc.spans.line("context.baggage_key"),
            "context.baggage_key",
            "must be a token (RFC 7230): letters, digits and !#$%&'*+-.^_`|~",
        );
    }
    let cookie = ctx.cookie.unwrap_or_else(|| "microstax-branch".into());
    if !token_ok(&cookie) {
        report.push(
            file,
            doc.spans.line("context.cookie"),
            "context.cookie",
            "must be a cookie-name token",
        );
    }
    let mut host_patterns = Vec::new();
    for (i, p) in ctx.host_patterns.iter().enumerate() {
        let field = format!("context.host_patterns.{i}");
        match HostPattern::parse(p) {
            Ok(hp) => host_patterns.push(hp),
            Err(why) => report.push(file, doc.spans.line(&field), &field, why),
        }
    }
    if let Some(d) = &doc.doc.defaults {
        check_policy(doc, "defaults", d, report);
    }
    if let Some(t) = &routing.instance_address {
        let field = "routing.instance_address";
        let line = doc.spans.line(field);
        if !t.contains("{service}") || !(t.contains("{branch}") || t.contains("{instance}")) {
            report.push(
                file,
                line,
                field,
                "must contain {service} and {branch} or {instance}",
            );
        } else if let Err(why) = Endpoint::parse(&instance_address(t, "svc", "a/b", "0123456789ab"))
        {
            report.push(
                file,
                line,
                field,
                format!("does not make a valid endpoint: {why}"),
            );
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
    }
}
