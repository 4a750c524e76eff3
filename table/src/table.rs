//! The routing table itself: the contract between planner (writer) and proxy (reader). Plain,
//! immutable data with interned ids; lookups are allocation-free and lock-free.
//!
//! Sparse by construction: a layer holds routes only for the services it overrides, and a lookup
//! walks the layer's precomputed lineage (self, parent, ..., baseline) until a layer has a route
//! for the service. Memory grows with overrides, not branches x services. Each route carries the
//! values already merged along its lineage, so the request path never merges.

pub use crate::kind::{LayerKind, RouteKind};
pub use crate::policy::{Readiness, RoutePolicy, UpstreamTls};
use crate::settings::Settings;
use http::HeaderValue;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Interned layer id (index into [`RoutingTable::layers`]); the baseline is 0.
pub type LayerId = u32;
/// Interned service id.
pub type ServiceId = u32;
/// Interned upstream id (index into [`RoutingTable::upstreams`]).
pub type UpstreamId = u32;

/// The baseline layer id.
pub const BASELINE_ID: LayerId = 0;

/// One route: where (layer, service) requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The service.
    pub service: ServiceId,
    /// The layer that supplied the route.
    pub layer: LayerId,
    /// Kind of that layer (or `Local`).
    pub kind: RouteKind,
    /// Upstreams, balanced per request.
    pub upstreams: Box<[UpstreamId]>,
    /// Forwarding policy.
    pub policy: Arc<RoutePolicy>,
}

/// The routes of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRoutes {
    /// Bare name (`baseline` for the org layer).
    pub name: Arc<str>,
    /// `baseline`, `team/<name>` or `branch/<name>`.
    pub label: Arc<str>,
    /// Kind of layer.
    pub kind: LayerKind,
    /// Parent layer (None only for the baseline).
    pub parent: Option<LayerId>,
    /// This layer, its parent, ..., the baseline.
    pub lineage: Box<[LayerId]>,
    /// Routes this layer overrides, sorted by service id.
    pub routes: Box<[Route]>,
    /// Branch layers: the name as a header value, prebuilt for the request path.
    pub branch_value: Option<HeaderValue>,
    /// Branch layers: the `key=name` baggage member, prebuilt for the request path.
    pub baggage_member: Option<HeaderValue>,
}

impl LayerRoutes {
    fn own_route(&self, service: ServiceId) -> Option<&Route> {
        self.routes
            .binary_search_by_key(&service, |r| r.service)
            .ok()
            .map(|i| &self.routes[i])
    }
}

/// One upstream endpoint. The same `host:port` reached with and without TLS (or with other
/// TLS settings) is two upstreams: their connections are never pooled together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// `host:port`.
    pub authority: Arc<str>,
    /// TLS to the upstream, when its route's policy asks for it (`None`: plain TCP).
    pub tls: Option<Arc<UpstreamTls>>,
}

/// Service resolution by Host and path prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceIndex {
    /// Service names by id.
    pub names: Box<[Arc<str>]>,
    /// Lower-case host (no port) -> service.
    pub hosts: FxHashMap<Box<str>, ServiceId>,
    /// Path prefix without trailing slash (`/` is the empty string) -> service.
    pub prefixes: FxHashMap<Box<str>, ServiceId>,
    /// Service used when nothing matches.
    pub default: Option<ServiceId>,
}

/// Longest host the resolver considers (DNS names are at most 253 bytes).
const MAX_HOST: usize = 256;

impl ServiceIndex {
    /// The service for a request: Host first (port and case ignored), then the longest matching
    /// path prefix on segment boundaries, then the default service.
    pub fn resolve(&self, host: Option<&str>, path: &str) -> Option<ServiceId> {
        if let Some(h) = host {
            let mut buf = [0u8; MAX_HOST];
            if let Some(key) = host_key(h, &mut buf) {
                if let Some(&id) = self.hosts.get(key) {
                    return Some(id);
                }
            }
        }
        if !self.prefixes.is_empty() {
            if let Some(id) = self.by_prefix(path) {
                return Some(id);
            }
        }
        self.default
    }

    fn by_prefix(&self, path: &str) -> Option<ServiceId> {
        let path = path.split('?').next().unwrap_or(path);
        let mut end = path.len();
        loop {
            let candidate = path[..end].trim_end_matches('/');
            if let Some(&id) = self.prefixes.get(candidate) {
                return Some(id);
            }
            if candidate.is_empty() {
                return None;
            }
            match candidate.rfind('/') {
                Some(i) => end = i,
                None => return None,
            }
        }
    }
}

/// Lower-case `host` without its port into `buf`; `None` when it does not fit or is not ASCII.
fn host_key<'a>(host: &str, buf: &'a mut [u8; MAX_HOST]) -> Option<&'a str> {
    let h = host.as_bytes();
    let h = if h.first() == Some(&b'[') {
        // [v6]:port -> [v6]
        match h.iter().position(|&b| b == b']') {
            Some(i) => &h[..=i],
            None => h,
        }
    } else {
        match h.iter().rposition(|&b| b == b':') {
            Some(i) => &h[..i],
            None => h,
        }
    };
    let h = h.strip_suffix(b".").unwrap_or(h);
    if h.len() > MAX_HOST || !h.is_ascii() {
        return None;
    }
    let out = &mut buf[..h.len()];
    for (o, b) in out.iter_mut().zip(h) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

/// The whole routing snapshot.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    /// Monotonic generation number, set by the publisher.
    pub generation: u64,
    /// Org-wide settings (context sources, strict mode, debug header).
    pub settings: Arc<Settings>,
    /// Service resolution.
    pub services: Arc<ServiceIndex>,
    /// Layers by id; a removed layer leaves `None`.
    pub layers: Vec<Option<Arc<LayerRoutes>>>,
    /// Branch name -> layer id (teams are not addressable by requests).
    pub branches: Arc<FxHashMap<Box<str>, LayerId>>,
    /// Upstreams by id.
    pub upstreams: Arc<Vec<Upstream>>,
}

impl RoutingTable {
    /// The layer id of a branch.
    #[inline]
    pub fn branch(&self, name: &str) -> Option<LayerId> {
        self.branches.get(name).copied()
    }

    /// A layer by id.
    #[inline]
    pub fn layer(&self, id: LayerId) -> Option<&LayerRoutes> {
        self.layers.get(id as usize).and_then(|l| l.as_deref())
    }

    /// The route of `service` for requests in layer `layer`: the nearest layer of its lineage
    /// that overrides the service, else the baseline.
    #[inline]
    pub fn route(&self, layer: LayerId, service: ServiceId) -> Option<&Route> {
        let l = self.layer(layer)?;
        l.lineage
            .iter()
            .find_map(|&id| self.layer(id).and_then(|x| x.own_route(service)))
    }

    /// The route the parent of `route`'s layer would use (for the readiness fallback).
    pub fn parent_route(&self, route: &Route) -> Option<&Route> {
        let parent = self.layer(route.layer)?.parent?;
        self.route(parent, route.service)
    }

    /// Name of a service.
    pub fn service_name(&self, id: ServiceId) -> &str {
        self.services.names.get(id as usize).map_or("?", |s| s)
    }

    /// An upstream by id.
    #[inline]
    pub fn upstream(&self, id: UpstreamId) -> Option<&Upstream> {
        self.upstreams.get(id as usize)
    }

    /// Number of live layers and of routes they hold (for gauges and tests).
    pub fn counts(&self) -> (usize, usize) {
        self.layers
            .iter()
            .flatten()
            .fold((0, 0), |(l, r), x| (l + 1, r + x.routes.len()))
    }

    /// Check the structural invariants a compiler must keep; returns the first broken one.
    /// Run in debug builds after every compile and in tests.
    pub fn check_invariants(&self) -> Result<(), String> {
        let base = self.layer(BASELINE_ID).ok_or("no baseline layer")?;
        if base.routes.len() != self.services.names.len() {
            return Err(format!(
                "baseline has {} routes for {} services",
                base.routes.len(),
                self.services.names.len()
            ));
        }
        for (id, l) in self.layers.iter().enumerate() {
            let Some(l) = l else { continue };
            if l.lineage.first() != Some(&(id as LayerId)) || l.lineage.last() != Some(&BASELINE_ID)
            {
                return Err(format!("layer {} has a bad lineage", l.label));
            }
            if l.routes.windows(2).any(|w| w[0].service >= w[1].service) {
                return Err(format!("layer {} routes are not sorted", l.label));
            }
            for r in l.routes.iter() {
                if r.upstreams.is_empty() || r.upstreams.iter().any(|u| self.upstream(*u).is_none())
                {
                    return Err(format!("layer {} has a route with bad upstreams", l.label));
                }
            }
        }
        for (name, &id) in self.branches.iter() {
            match self.layer(id) {
                Some(l) if *l.name == **name && l.kind == LayerKind::Branch => {}
                _ => return Err(format!("branch index entry {name} is stale")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_strips_port_case_and_dot() {
        let mut b = [0u8; MAX_HOST];
        assert_eq!(
            host_key("Orders.Example.COM:8080", &mut b),
            Some("orders.example.com")
        );
        assert_eq!(host_key("web.", &mut b), Some("web"));
        assert_eq!(host_key("[::1]:80", &mut b), Some("[::1]"));
        let long = "a".repeat(300);
        assert_eq!(host_key(&long, &mut b), None);
    }

    #[test]
    fn prefix_match_is_longest_on_segments() {
        let mut idx = ServiceIndex::default();
        idx.prefixes.insert("/orders".into(), 1);
        idx.prefixes.insert("/orders/admin".into(), 2);
        assert_eq!(idx.resolve(None, "/orders/x?y=1"), Some(1));
        assert_eq!(idx.resolve(None, "/orders"), Some(1));
        assert_eq!(idx.resolve(None, "/orders/admin/z"), Some(2));
        assert_eq!(idx.resolve(None, "/ordersx"), None);
        assert_eq!(idx.resolve(None, "/"), None);
        idx.prefixes.insert("".into(), 7);
        assert_eq!(idx.resolve(None, "/zzz"), Some(7));
    }
}
