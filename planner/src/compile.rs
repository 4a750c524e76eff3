//! Compiling a validated [`Config`] into the immutable [`RoutingTable`] the proxy reads.
//!
//! The [`Compiler`] keeps what it needs to update a table incrementally: a change to one layer
//! recompiles that layer and its descendants (their routes carry values merged along the
//! lineage), shares every other layer's `Arc` with the previous table, and interns new
//! upstreams without renumbering old ones. An upstream no route names any more leaves the
//! table (so the proxy stops probing it and sweeps its state): the last upstream takes its id,
//! and only the layers naming that one are rewritten.

use crate::decision::{Decision, Subject};
use crate::environments::Environments;
use crate::planner::Planner;
use microstax_config::model::instance_address;
use microstax_config::table::{
    LayerRoutes, Route, RoutePolicy, ServiceIndex, Upstream, UpstreamTls, BASELINE_ID,
};
use microstax_config::Endpoint;
use microstax_config::{
    Config, Effective, LayerIdx, LayerKind, RouteKind, RoutingTable, UpstreamId,
};
use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;
use std::time::Duration;

/// Compiles configs into tables and keeps the state for incremental updates.
#[derive(Clone)]
pub struct Compiler {
    upstream_ids: FxHashMap<Upstream, UpstreamId>,
    /// Upstream TLS settings, shared by every upstream naming the same one.
    tls: FxHashMap<UpstreamTls, Arc<UpstreamTls>>,
    policies: FxHashMap<RoutePolicy, Arc<RoutePolicy>>,
    table: Arc<RoutingTable>,
    /// Per upstream id, the layers whose routes name it (an upstream is dropped when none does).
    users: Vec<FxHashSet<u32>>,
    /// Per layer id, the layers naming it as parent (so a subtree is found without a scan).
    children: FxHashMap<u32, Vec<u32>>,
    /// Set when the org declares `routing.instance_address`: forks the plan decides without a
    /// declared endpoint are routed to their planned branch-local instance.
    planner: Option<Arc<Planner>>,
    /// Set when an executor runs planned instances: their placements win over the template.
    environments: Option<Arc<dyn Environments>>,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler")
            .field("generation", &self.table.generation)
            .field("environments", &self.environments.is_some())
            .finish()
    }
}

impl Compiler {
    /// Compile `config` from scratch as generation `generation`.
    pub fn new(config: &Config, generation: u64) -> Compiler {
        Compiler::with_environments(config, generation, None)
    }

    /// [`Compiler::new`], routing the forks that the plan decides without a declared endpoint to
    /// the instances `environments` placed for them.
    pub fn with_environments(
        config: &Config,
        generation: u64,
        environments: Option<Arc<dyn Environments>>,
    ) -> Compiler {
        let wanted = config.settings.instance_address.is_some() || environments.is_some();
        let planner = wanted.then_some(()).and_then(|_| match Planner::new(config) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::warn!(error = %e, "planned instances are not routed: the planner cannot index this config");
                None
            }
        });
        let mut c = Compiler {
            upstream_ids: FxHashMap::default(),
            tls: FxHashMap::default(),
            policies: FxHashMap::default(),
            table: Arc::new(empty_table(config)),
            users: Vec::new(),
            children: FxHashMap::default(),
            planner,
            environments,
        };
        let mut upstreams = Vec::new();
        let mut layers = Vec::with_capacity(config.layer_slots());
        for idx in 0..config.layer_slots() {
            layers.push(c.compile_layer(config, idx, &mut upstreams));
        }
        let table = RoutingTable {
            generation,
            settings: Arc::new(table_settings(config)),
            services: Arc::new(service_index(config)),
            branches: Arc::new(branch_index(config)),
            layers,
            upstreams: Arc::new(upstreams),
        };
        debug_assert_eq!(table.check_invariants(), Ok(()));
        c.users = vec![FxHashSet::default(); table.upstreams.len()];
        for (idx, l) in table.layers.iter().enumerate() {
            let Some(l) = l else { continue };
            for u in upstreams_of(l) {
                c.users[u as usize].insert(idx as u32);
            }
            if let Some(p) = l.parent {
                c.children.entry(p).or_default().push(idx as u32);
            }
        }
        c.table = Arc::new(table);
        c
    }

    /// `idx` and its descendants, parents first, from the child index.
    fn subtree(&self, idx: LayerIdx) -> Vec<LayerIdx> {
        let mut out = vec![idx];
        let mut i = 0;
        while i < out.len() {
            if let Some(c) = self.children.get(&(out[i] as u32)) {
                out.extend(c.iter().map(|&c| c as usize));
            }
            i += 1;
        }
        out
    }

    /// Record that layer `idx` changed from `before` to `after` (its parent link and the
    /// upstreams it names); returns the upstream ids no layer names any more.
    fn relink(
        &mut self,
        idx: LayerIdx,
        before: Option<&LayerRoutes>,
        after: Option<&LayerRoutes>,
    ) -> Vec<UpstreamId> {
        let id = idx as u32;
        let (old_parent, new_parent) =
            (before.and_then(|l| l.parent), after.and_then(|l| l.parent));
        if old_parent != new_parent {
            if let Some(p) = old_parent {
                if let Some(c) = self.children.get_mut(&p) {
                    c.retain(|&x| x != id);
                }
            }
            if let Some(p) = new_parent {
                self.children.entry(p).or_default().push(id);
            }
        }
        let old: FxHashSet<UpstreamId> = before.map(upstreams_of).unwrap_or_default();
        let new: FxHashSet<UpstreamId> = after.map(upstreams_of).unwrap_or_default();
        for &u in new.difference(&old) {
            if self.users.len() <= u as usize {
                self.users.resize(u as usize + 1, FxHashSet::default());
            }
            self.users[u as usize].insert(id);
        }
        let mut freed = Vec::new();
        for &u in old.difference(&new) {
            if let Some(set) = self.users.get_mut(u as usize) {
                set.remove(&id);
                if set.is_empty() {
                    freed.push(u);
                }
            }
        }
        freed
    }

    /// Drop the upstreams in `freed` that are still unnamed from `all`, keeping ids dense: the
    /// last upstream moves into each freed slot and the layers naming it are rewritten.
    fn drop_upstreams(
        &mut self,
        mut freed: Vec<UpstreamId>,
        all: &mut Vec<Upstream>,
        layers: &mut [Option<Arc<LayerRoutes>>],
    ) {
        freed.sort_unstable_by(|a, b| b.cmp(a));
        freed.dedup();
        for f in freed {
            let fi = f as usize;
            if self.users.get(fi).is_none_or(|s| !s.is_empty()) || fi >= all.len() {
                continue; // named again by a layer compiled in the same update
            }
            self.upstream_ids.remove(&all[fi]);
            let last = all.len() - 1;
            all.swap_remove(fi);
            self.users.swap_remove(fi);
            if fi == last {
                continue;
            }
            self.upstream_ids.insert(all[fi].clone(), f);
            for &l in &self.users[fi] {
                if let Some(Some(layer)) = layers.get_mut(l as usize) {
                    *layer = Arc::new(renumber(layer, last as UpstreamId, f));
                }
            }
        }
    }

    /// The last compiled table.
    pub fn table(&self) -> &Arc<RoutingTable> {
        &self.table
    }

    /// Recompile after `changed` (a layer that was added, replaced or removed) as generation
    /// `generation`: only that layer and its descendants are rebuilt. An org change rebuilds
    /// everything, since every route folds the org layer.
    pub fn update(
        &mut self,
        config: &Config,
        changed: LayerIdx,
        generation: u64,
    ) -> Arc<RoutingTable> {
        if changed == 0 {
            *self = Compiler::new(config, generation);
            return self.table.clone();
        }
        let prev = self.table.clone();
        let mut upstreams: Vec<Upstream> = Vec::new();
        let base_len = prev.upstreams.len();
        let mut layers = prev.layers.clone();
        layers.resize(config.layer_slots(), None);
        let affected = if config.layer(changed).is_some() {
            self.subtree(changed)
        } else {
            vec![changed]
        };
        let mut freed = Vec::new();
        for idx in affected {
            let compiled = self.compile_layer_offset(config, idx, base_len, &mut upstreams);
            let before = prev.layers.get(idx).cloned().flatten();
            freed.extend(self.relink(idx, before.as_deref(), compiled.as_deref()));
            layers[idx] = compiled;
        }
        let upstreams = if upstreams.is_empty() && freed.is_empty() {
            prev.upstreams.clone()
        } else {
            let mut all = Vec::with_capacity(base_len + upstreams.len());
            all.extend(prev.upstreams.iter().cloned());
            all.extend(upstreams);
            self.drop_upstreams(freed, &mut all, &mut layers);
            Arc::new(all)
        };
        let known = prev
            .layer(changed as u32)
            .filter(|l| prev.branch(&l.name) == Some(changed as u32))
            .map(|l| l.name.clone());
        let now = config
            .layer(changed)
            .filter(|l| l.kind == LayerKind::Branch)
            .map(|l| l.name.as_str());
        // adjust the previous index by this one layer: rebuilding it from `config` would also
        // name layers of the same batch that are not compiled into this table yet
        let branches = if known.as_deref() == now {
            prev.branches.clone()
        } else {
            let mut b = (*prev.branches).clone();
            if let Some(old) = &known {
                b.remove(&**old);
            }
            if let Some(name) = now {
                b.insert(name.into(), changed as u32);
            }
            Arc::new(b)
        };
        let table = RoutingTable {
            generation,
            settings: prev.settings.clone(),
            services: prev.services.clone(),
            layers,
            branches,
            upstreams,
        };
        debug_assert_eq!(table.check_invariants(), Ok(()));
        self.table = Arc::new(table);
        self.table.clone()
    }

    fn compile_layer(
        &mut self,
        config: &Config,
        idx: LayerIdx,
        upstreams: &mut Vec<Upstream>,
    ) -> Option<Arc<LayerRoutes>> {
        self.compile_layer_offset(config, idx, 0, upstreams)
    }

    /// Compile one layer; new upstreams are appended to `upstreams`, whose first element will
    /// get id `offset`.
    fn compile_layer_offset(
        &mut self,
        config: &Config,
        idx: LayerIdx,
        offset: usize,
        upstreams: &mut Vec<Upstream>,
    ) -> Option<Arc<LayerRoutes>> {
        let layer = config.layer(idx)?;
        let mut routes = Vec::new();
        for (sid, svc) in config.services().iter().enumerate() {
            let touches = layer.kind == LayerKind::Org
                || layer.service(&svc.name).is_some_and(|s| s.touches_route());
            if !touches {
                continue;
            }
            let Some(eff) = config.effective(idx, &svc.name) else {
                continue;
            };
            let (eps, _) = eff.upstreams();
            let tls = self.tls(&eff);
            let ids: Vec<UpstreamId> = eps
                .iter()
                .map(|e| self.intern(&e.0, &tls, offset, upstreams))
                .collect();
            let kind = if eff.local.is_some() {
                RouteKind::Local
            } else {
                match layer.kind {
                    LayerKind::Org => RouteKind::Baseline,
                    LayerKind::Team => RouteKind::Team,
                    LayerKind::Branch => RouteKind::Branch,
                }
            };
            routes.push(Route {
                service: sid as u32,
                layer: idx as u32,
                kind,
                upstreams: ids.into_boxed_slice(),
                policy: self.policy(&eff),
            });
        }
        if layer.kind == LayerKind::Branch {
            self.planned_routes(config, idx, offset, upstreams, &mut routes);
        }
        let lineage: Vec<u32> = config.lineage(idx).into_iter().map(|i| i as u32).collect();
        let is_branch = layer.kind == LayerKind::Branch;
        let key = &config.settings.context.baggage_key;
        Some(Arc::new(LayerRoutes {
            branch_value: is_branch
                .then(|| http::HeaderValue::from_str(&layer.name).ok())
                .flatten(),
            baggage_member: is_branch
                .then(|| http::HeaderValue::from_str(&format!("{key}={}", layer.name)).ok())
                .flatten(),
            name: Arc::from(layer.name.as_str()),
            label: layer.label.clone(),
            kind: layer.kind,
            parent: layer.parent.map(|p| p as u32),
            lineage: lineage.into_boxed_slice(),
            routes: routes.into_boxed_slice(),
        }))
    }

    /// Routes for services the plan forks in branch `idx` although the branch declares no
    /// endpoint for them (an image or env change, a derived fork): they go to the planned
    /// instance address instead of the parent's instance.
    fn planned_routes(
        &mut self,
        config: &Config,
        idx: LayerIdx,
        offset: usize,
        upstreams: &mut Vec<Upstream>,
        routes: &mut Vec<Route>,
    ) {
        let Some(planner) = self.planner.clone() else {
            return;
        };
        let template = config.settings.instance_address.as_deref();
        let environments = self.environments.clone();
        let Some(layer) = config.layer(idx) else {
            return;
        };
        // routes need only which services fork and their instances, which the rules decide
        // (the solver chooses how forks run, not whether): no solve on the compile path
        let plan = match planner.plan_rules(config, &layer.name, None) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(branch = %layer.name, error = %e, "branch not planned");
                return;
            }
        };
        for entry in plan
            .entries
            .iter()
            .filter(|e| e.subject == Subject::Service && e.decision == Decision::Fork)
        {
            let declared = layer
                .service(&entry.name)
                .is_some_and(|s| s.endpoints.is_some() || s.local.is_some());
            let Some(sid) = config
                .services()
                .iter()
                .position(|s| *s.name == *entry.name)
            else {
                continue;
            };
            if declared {
                continue;
            }
            let Some(eff) = config.effective(idx, &entry.name) else {
                continue;
            };
            let hex = entry.instance.hex();
            let placed = environments
                .as_ref()
                .map(|e| e.placement(entry.instance))
                .unwrap_or_default();
            // every replica the executor runs on its own address: the proxy balances over them
            let addrs: Vec<String> = match (placed.is_empty(), template) {
                (false, _) => placed.iter().map(|a| a.to_string()).collect(),
                (true, Some(t)) => vec![instance_address(
                    t,
                    &entry.name,
                    &layer.name,
                    hex.get(..12).unwrap_or(&hex),
                )],
                // not placed (yet, or it failed: `explain` and `/instances` say why)
                (true, None) => continue,
            };
            let tls = self.tls(&eff);
            let ids: Vec<UpstreamId> = addrs
                .iter()
                .filter_map(|a| Endpoint::parse(a).ok())
                .map(|ep| self.intern(&ep.0, &tls, offset, upstreams))
                .collect();
            if ids.is_empty() {
                continue;
            }
            let route = Route {
                service: sid as u32,
                layer: idx as u32,
                kind: RouteKind::Branch,
                upstreams: ids.into_boxed_slice(),
                policy: self.policy(&eff),
            };
            // a policy-only override compiled a route to the parent's instance: replace it
            match routes.iter_mut().find(|r| r.service as usize == sid) {
                Some(r) => *r = route,
                None => routes.push(route),
            }
        }
        routes.sort_by_key(|r| r.service);
    }

    fn intern(
        &mut self,
        authority: &Arc<str>,
        tls: &Option<Arc<UpstreamTls>>,
        offset: usize,
        upstreams: &mut Vec<Upstream>,
    ) -> UpstreamId {
        let up = Upstream {
            authority: authority.clone(),
            tls: tls.clone(),
        };
        if let Some(&id) = self.upstream_ids.get(&up) {
            return id;
        }
        let id = (offset + upstreams.len()) as UpstreamId;
        upstreams.push(up.clone());
        self.upstream_ids.insert(up, id);
        id
    }

    /// The route's upstream TLS, with its CA bundle read now (validation checked it was
    /// readable; should it have gone since, the bundle is empty and connections fail with why).
    fn tls(&mut self, eff: &Effective) -> Option<Arc<UpstreamTls>> {
        let doc = &eff.upstream_tls.as_ref()?.value;
        let ca_pem: Arc<[u8]> = match std::fs::read(&doc.ca_file) {
            Ok(pem) => pem.into(),
            Err(e) => {
                tracing::warn!(ca_file = %doc.ca_file, error = %e, "upstream CA bundle unreadable");
                Arc::from(Vec::new())
            }
        };
        let t = UpstreamTls {
            ca_file: Arc::from(doc.ca_file.as_str()),
            ca_pem,
            server_name: doc.server_name.as_deref().map(Arc::from),
        };
        Some(
            self.tls
                .entry(t.clone())
                .or_insert_with(|| Arc::new(t))
                .clone(),
        )
    }

    fn policy(&mut self, eff: &Effective) -> Arc<RoutePolicy> {
        let p = RoutePolicy {
            connect_timeout: Duration::from_millis(eff.connect_timeout_ms.value),
            request_timeout: Duration::from_millis(eff.request_timeout_ms.value),
            set_headers: eff
                .set_headers
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                        http::HeaderValue::from_str(&v.value).ok()?,
                    ))
                })
                .collect(),
            remove_headers: eff
                .remove_headers
                .keys()
                .filter_map(|k| http::HeaderName::from_bytes(k.as_bytes()).ok())
                .collect(),
            readiness: eff.readiness.value,
            protocol: eff.protocol.value,
            max_connections: eff.max_connections.value,
            max_pending: eff.max_pending_requests.value,
        };
        self.policies
            .entry(p.clone())
            .or_insert_with(|| Arc::new(p))
            .clone()
    }
}

/// The upstream ids the routes of `l` name.
fn upstreams_of(l: &LayerRoutes) -> FxHashSet<UpstreamId> {
    l.routes
        .iter()
        .flat_map(|r| r.upstreams.iter().copied())
        .collect()
}

/// `l` with upstream id `from` replaced by `to`.
fn renumber(l: &LayerRoutes, from: UpstreamId, to: UpstreamId) -> LayerRoutes {
    let mut out = l.clone();
    out.routes = l
        .routes
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.upstreams = r
                .upstreams
                .iter()
                .map(|&u| if u == from { to } else { u })
                .collect();
            r
        })
        .collect();
    out
}

/// Compile `config` from scratch (convenience over [`Compiler::new`]).
pub fn compile(config: &Config, generation: u64) -> Arc<RoutingTable> {
    Compiler::new(config, generation).table.clone()
}

/// The org settings as the proxy reads them, with the cold-start hold bound from `lifecycle`.
fn table_settings(config: &Config) -> microstax_config::Settings {
    microstax_config::Settings {
        hold_max_requests: config.lifecycle().hold_max_requests,
        ..config.settings.clone()
    }
}

fn empty_table(config: &Config) -> RoutingTable {
    RoutingTable {
        generation: 0,
        settings: Arc::new(table_settings(config)),
        services: Arc::new(ServiceIndex::default()),
        layers: Vec::new(),
        branches: Arc::new(FxHashMap::default()),
        upstreams: Arc::new(Vec::new()),
    }
}

fn service_index(config: &Config) -> ServiceIndex {
    let mut idx = ServiceIndex::default();
    let mut names = Vec::new();
    for (i, s) in config.services().iter().enumerate() {
        let id = i as u32;
        names.push(Arc::from(s.name.as_str()));
        for h in &s.hosts {
            idx.hosts.insert(h.as_str().into(), id);
        }
        for p in &s.path_prefixes {
            idx.prefixes.insert(p.as_str().into(), id);
        }
    }
    idx.names = names.into_boxed_slice();
    idx.default = config
        .settings
        .default_service
        .as_deref()
        .and_then(|d| config.services().iter().position(|s| s.name == d))
        .map(|i| i as u32);
    idx
}

fn branch_index(config: &Config) -> FxHashMap<Box<str>, u32> {
    config
        .layers()
        .filter(|l| l.kind == LayerKind::Branch)
        .filter_map(|l| Some((l.name.as_str().into(), config.layer_id(&l.name)? as u32)))
        .collect()
}

/// The baseline layer id, re-exported for readers of compiled tables.
pub const BASELINE: u32 = BASELINE_ID;
