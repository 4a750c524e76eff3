//! The layer merge: the effective config of (layer, service) is the fold of the org defaults, the
//! org service entry, and every layer along the lineage from the root down; the nearest layer
//! wins, field by field (maps key by key). Every value records the layer, file and line that set
//! it, which is what `explain` prints and what the planner diffs.

use crate::model::Config;
use crate::schema::{MigrationDoc, PolicyDoc, ResourcesDoc, RunDoc, ServiceDoc, UpstreamTlsDoc};
pub use crate::values::{
    readiness_from_doc, Sourced, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_HOLD_MS,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PENDING_REQUESTS, DEFAULT_REQUEST_TIMEOUT_MS,
};
use crate::values::{Endpoint, LayerIdx, Origin};
pub use microstax_table::{Readiness, UpstreamProtocol};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The effective config of one service as seen from one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// Service name.
    pub service: String,
    /// Label of the layer this view is of.
    pub layer: Arc<str>,
    /// Upstream endpoints.
    pub endpoints: Sourced<Vec<Endpoint>>,
    /// A developer endpoint that replaces the endpoints, if set.
    pub local: Option<Sourced<Endpoint>>,
    /// Image or build.
    pub image: Option<Sourced<String>>,
    /// Resource requests.
    pub resources: Option<Sourced<ResourcesDoc>>,
    /// How to run it on this machine (replaced whole along the lineage).
    pub run: Option<Sourced<RunDoc>>,
    /// Scale to zero after this many idle seconds.
    pub idle_after_s: Option<Sourced<u64>>,
    /// Environment and config values.
    pub env: BTreeMap<String, Sourced<String>>,
    /// Connect timeout.
    pub connect_timeout_ms: Sourced<u64>,
    /// Response-header timeout.
    pub request_timeout_ms: Sourced<u64>,
    /// Headers set on the upstream request.
    pub set_headers: BTreeMap<String, Sourced<String>>,
    /// Headers removed from the upstream request.
    pub remove_headers: BTreeMap<String, Origin>,
    /// Readiness policy.
    pub readiness: Sourced<Readiness>,
    /// Protocol spoken to the upstream.
    pub protocol: Sourced<UpstreamProtocol>,
    /// Most connections open to one endpoint.
    pub max_connections: Sourced<u32>,
    /// Most requests waiting for a connection to one endpoint.
    pub max_pending_requests: Sourced<u32>,
    /// TLS to the upstream (the nearest layer's setting, whole).
    pub upstream_tls: Option<Sourced<UpstreamTlsDoc>>,
    /// Schema migrations applied along the lineage, oldest first.
    pub migrations: Vec<Sourced<MigrationDoc>>,
    /// Message contracts changed along the lineage, topic -> version.
    pub contracts: BTreeMap<String, Sourced<String>>,
    /// The API version the service serves (the nearest layer's).
    pub api: Option<Sourced<String>>,
    /// What it requires of its callees, callee -> semver requirement (key by key).
    pub requires: BTreeMap<String, Sourced<String>>,
}

/// One flattened field of an [`Effective`], for display and diffing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field path, e.g. `env.LOG_LEVEL`.
    pub name: String,
    /// The value, rendered.
    pub value: String,
    /// Who set it.
    pub origin: Origin,
}

impl Effective {
    /// The endpoints requests go to: the local endpoint when set, else the endpoints.
    pub fn upstreams(&self) -> (Vec<Endpoint>, &Origin) {
        match &self.local {
            Some(l) => (vec![l.value.clone()], &l.origin),
            None => (self.endpoints.value.clone(), &self.endpoints.origin),
        }
    }

    /// Every field, flattened, in a stable order.
    pub fn fields(&self) -> Vec<Field> {
        let mut out = Vec::new();
        let mut push = |name: String, value: String, origin: &Origin| {
            out.push(Field {
                name,
                value,
                origin: origin.clone(),
            });
        };
        let eps: Vec<&str> = self.endpoints.value.iter().map(|e| &*e.0).collect();
        push("endpoints".into(), eps.join(","), &self.endpoints.origin);
        if let Some(l) = &self.local {
            push("local".into(), l.value.to_string(), &l.origin);
        }
        if let Some(i) = &self.image {
            push("image".into(), i.value.clone(), &i.origin);
        }
        if let Some(r) = &self.resources {
            push(
                "resources".into(),
                format!("cpu_m={} memory_mi={}", r.value.cpu_m, r.value.memory_mi),
                &r.origin,
            );
        }
        if let Some(r) = &self.run {
            let mut cmd = vec![r.value.command.clone()];
            cmd.extend(r.value.args.iter().cloned());
            push("run".into(), cmd.join(" "), &r.origin);
            for (k, v) in &r.value.env {
                push(format!("run.env.{k}"), v.clone(), &r.origin);
            }
            if let Some(p) = &r.value.probe {
                push("run.probe".into(), p.clone(), &r.origin);
            }
            if let Some(t) = r.value.start_timeout_ms {
                push("run.start_timeout_ms".into(), t.to_string(), &r.origin);
            }
        }
        if let Some(i) = &self.idle_after_s {
            push("idle_after_s".into(), i.value.to_string(), &i.origin);
        }
        for (k, v) in &self.env {
            push(format!("env.{k}"), v.value.clone(), &v.origin);
        }
        push(
            "policy.connect_timeout_ms".into(),
            self.connect_timeout_ms.value.to_string(),
            &self.connect_timeout_ms.origin,
        );
        push(
            "policy.request_timeout_ms".into(),
            self.request_timeout_ms.value.to_string(),
            &self.request_timeout_ms.origin,
        );
        for (k, v) in &self.set_headers {
            push(
                format!("policy.request_headers.set.{k}"),
                v.value.clone(),
                &v.origin,
            );
        }
        for (k, o) in &self.remove_headers {
            push(
                format!("policy.request_headers.remove.{k}"),
                "removed".into(),
                o,
            );
        }
        push(
            "policy.readiness".into(),
            self.readiness.value.to_string(),
            &self.readiness.origin,
        );
        push(
            "policy.protocol".into(),
            self.protocol.value.to_string(),
            &self.protocol.origin,
        );
        push(
            "policy.max_connections".into(),
            self.max_connections.value.to_string(),
            &self.max_connections.origin,
        );
        push(
            "policy.max_pending_requests".into(),
            self.max_pending_requests.value.to_string(),
            &self.max_pending_requests.origin,
        );
        if let Some(t) = &self.upstream_tls {
            let name = t.value.server_name.as_deref().unwrap_or("endpoint host");
            push(
                "policy.upstream_tls".into(),
                format!("ca_file {} server_name {name}", t.value.ca_file),
                &t.origin,
            );
        }
        for m in &self.migrations {
            push(
                format!("migrations.{}.{}", m.value.store, m.value.name),
                "applied".into(),
                &m.origin,
            );
        }
        for (k, v) in &self.contracts {
            push(format!("contracts.{k}"), v.value.clone(), &v.origin);
        }
        if let Some(a) = &self.api {
            push("api".into(), a.value.clone(), &a.origin);
        }
        for (k, v) in &self.requires {
            push(format!("requires.{k}"), v.value.clone(), &v.origin);
        }
        out
    }
}

impl ServiceDoc {
    /// Whether this entry changes where or how requests are routed (so the layer needs its own
    /// route for the service in the table).
    pub fn touches_route(&self) -> bool {
        self.endpoints.is_some() || self.local.is_some() || self.policy.is_some()
    }
}

fn apply_policy(e: &mut Effective, p: &PolicyDoc, at: &dyn Fn(&str) -> Origin, base: &str) {
    if let Some(v) = p.connect_timeout_ms {
        e.connect_timeout_ms = Sourced {
            value: v,
            origin: at(&format!("{base}.connect_timeout_ms")),
        };
    }
    if let Some(v) = p.request_timeout_ms {
        e.request_timeout_ms = Sourced {
            value: v,
            origin: at(&format!("{base}.request_timeout_ms")),
        };
    }
    if let Some(r) = &p.readiness {
        if let Ok(v) = readiness_from_doc(r) {
            e.readiness = Sourced {
                value: v,
                origin: at(&format!("{base}.readiness")),
            };
        }
    }
    if let Some(v) = p.max_connections {
        e.max_connections = Sourced {
            value: v,
            origin: at(&format!("{base}.max_connections")),
        };
    }
    if let Some(v) = p.max_pending_requests {
        e.max_pending_requests = Sourced {
            value: v,
            origin: at(&format!("{base}.max_pending_requests")),
        };
    }
    if let Some(t) = &p.upstream_tls {
        e.upstream_tls = Some(Sourced {
            value: t.clone(),
            origin: at(&format!("{base}.upstream_tls")),
        });
    }
    if let Some(v) = p.protocol.as_deref().and_then(UpstreamProtocol::parse) {
        e.protocol = Sourced {
            value: v,
            origin: at(&format!("{base}.protocol")),
        };
    }
    if let Some(h) = &p.request_headers {
        for (k, v) in &h.set {
            let k = k.to_ascii_lowercase();
            e.remove_headers.remove(&k);
            let origin = at(&format!("{base}.request_headers.set.{k}"));
            e.set_headers.insert(
                k,
                Sourced {
                    value: v.clone(),
                    origin,
                },
            );
        }
        for (i, k) in h.remove.iter().enumerate() {
            let k = k.to_ascii_lowercase();
            e.set_headers.remove(&k);
            e.remove_headers
                .insert(k, at(&format!("{base}.request_headers.remove.{i}")));
        }
    }
}

fn apply_service(e: &mut Effective, s: &ServiceDoc, at: &dyn Fn(&str) -> Origin, base: &str) {
    if let Some(eps) = &s.endpoints {
        let value = eps.iter().filter_map(|x| Endpoint::parse(x).ok()).collect();
        e.endpoints = Sourced {
            value,
            origin: at(&format!("{base}.endpoints")),
        };
        // new endpoints replace a developer endpoint set further up the lineage
        e.local = None;
    }
    if let Some(l) = s.local.as_deref().and_then(|l| Endpoint::parse(l).ok()) {
        e.local = Some(Sourced {
            value: l,
            origin: at(&format!("{base}.local")),
        });
    }
    if let Some(i) = &s.image {
        e.image = Some(Sourced {
            value: i.clone(),
            origin: at(&format!("{base}.image")),
        });
    }
    if let Some(r) = s.resources {
        e.resources = Some(Sourced {
            value: r,
            origin: at(&format!("{base}.resources")),
        });
    }
    if let Some(r) = &s.run {
        e.run = Some(Sourced {
            value: r.clone(),
            origin: at(&format!("{base}.run")),
        });
    }
    if let Some(v) = s.idle_after_s {
        e.idle_after_s = Some(Sourced {
            value: v,
            origin: at(&format!("{base}.idle_after_s")),
        });
    }
    for (k, v) in &s.env {
        e.env.insert(
            k.clone(),
            Sourced {
                value: v.clone(),
                origin: at(&format!("{base}.env.{k}")),
            },
        );
    }
    if let Some(p) = &s.policy {
        apply_policy(e, p, at, &format!("{base}.policy"));
    }
    for (i, m) in s.migrations.iter().enumerate() {
        e.migrations.push(Sourced {
            value: m.clone(),
            origin: at(&format!("{base}.migrations.{i}")),
        });
    }
    for (k, v) in &s.contracts {
        e.contracts.insert(
            k.clone(),
            Sourced {
                value: v.clone(),
                origin: at(&format!("{base}.contracts.{k}")),
            },
        );
    }
    if let Some(a) = &s.api {
        e.api = Some(Sourced {
            value: a.clone(),
            origin: at(&format!("{base}.api")),
        });
    }
    for (k, v) in &s.requires {
        e.requires.insert(
            k.clone(),
            Sourced {
                value: v.clone(),
                origin: at(&format!("{base}.requires.{k}")),
            },
        );
    }
}

impl Config {
    /// The effective config of `service` as seen from layer `layer`, or `None` when either is
    /// unknown.
    pub fn effective(&self, layer: LayerIdx, service: &str) -> Option<Effective> {
        self.service(service)?;
        let target = self.layer(layer)?;
        let org = self.org();
        let builtin = Origin::builtin();
        let mut e = Effective {
            service: service.to_string(),
            layer: target.label.clone(),
            endpoints: Sourced {
                value: Vec::new(),
                origin: builtin.clone(),
            },
            local: None,
            image: None,
            resources: None,
            run: None,
            idle_after_s: None,
            env: BTreeMap::new(),
            connect_timeout_ms: Sourced {
                value: DEFAULT_CONNECT_TIMEOUT_MS,
                origin: builtin.clone(),
            },
            request_timeout_ms: Sourced {
                value: DEFAULT_REQUEST_TIMEOUT_MS,
                origin: builtin.clone(),
            },
            set_headers: BTreeMap::new(),
            remove_headers: BTreeMap::new(),
            readiness: Sourced {
                value: Readiness::Hold {
                    ms: DEFAULT_HOLD_MS,
                },
                origin: builtin.clone(),
            },
            protocol: Sourced {
                value: UpstreamProtocol::Auto,
                origin: builtin.clone(),
            },
            max_connections: Sourced {
                value: DEFAULT_MAX_CONNECTIONS,
                origin: builtin.clone(),
            },
            max_pending_requests: Sourced {
                value: DEFAULT_MAX_PENDING_REQUESTS,
                origin: builtin,
            },
            upstream_tls: None,
            migrations: Vec::new(),
            contracts: BTreeMap::new(),
            api: None,
            requires: BTreeMap::new(),
        };
        if let Some(d) = &org.doc.doc.defaults {
            apply_policy(&mut e, d, &|p| org.origin(p), "defaults");
        }
        let mut chain = self.lineage(layer);
        chain.reverse();
        let base = format!("services.{service}");
        for idx in chain {
            let Some(l) = self.layer(idx) else { continue };
            if let Some(s) = l.service(service) {
                apply_service(&mut e, s, &|p| l.origin(p), &base);
            }
        }
        Some(e)
    }

    /// `idle_after_s` of [`Config::effective`] without the merge (and without its origin): the
    /// value of the nearest layer of `layer`'s lineage that sets it for `service`.
    pub fn idle_after_s(&self, layer: LayerIdx, service: &str) -> Option<u64> {
        self.service(service)?;
        self.layer(layer)?;
        self.lineage(layer)
            .into_iter()
            .filter_map(|idx| self.layer(idx)?.service(service)?.idle_after_s)
            .next()
    }
}
