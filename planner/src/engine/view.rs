//! The data of plans in progress: what one layer changes relative to its parent
//! ([`LayerPlan`]), the baseline's instances ([`Base`]), every address of one layer
//! ([`Addresses`]), and a [`View`] over a lineage's plans that answers "whose instance serves
//! this here". Plain data: the rules that fill it are in the parent module.

use crate::cost::Resources;
use crate::decision::Cause;
use crate::instance::InstanceKey;
use microstax_config::Effective;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// A service this layer needs its own instance of.
#[derive(Debug, Clone)]
pub(crate) struct MovedService {
    pub local: bool,
    pub causes: Vec<Cause>,
    pub key: InstanceKey,
    pub resources: Resources,
}

/// A store or topic this layer isolates.
#[derive(Debug, Clone)]
pub(crate) struct Moved {
    pub causes: Vec<Cause>,
    pub key: InstanceKey,
}

/// What one layer changes relative to its parent.
#[derive(Debug, Clone)]
pub(crate) struct LayerPlan {
    pub label: Arc<str>,
    pub services: FxHashMap<u32, MovedService>,
    /// Notes on services the layer mentions but still reuses (policy-only, restated).
    pub notes: FxHashMap<u32, Vec<Cause>>,
    pub stores: FxHashMap<u32, Moved>,
    pub topics: FxHashMap<u32, Moved>,
}

/// The instances of the org baseline.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    pub label: Arc<str>,
    pub services: Vec<(InstanceKey, Resources)>,
    /// The baseline's env references of each service: (dependency, env key).
    pub refs: Vec<Vec<(u32, String)>>,
    pub stores: Vec<InstanceKey>,
    pub topics: Vec<InstanceKey>,
}

/// Addresses of every instance of one layer, by catalog id.
pub(crate) struct Addresses {
    pub services: Vec<InstanceKey>,
    pub stores: Vec<InstanceKey>,
    pub topics: Vec<InstanceKey>,
    pub edges: Vec<Vec<(u32, String)>>,
    pub effs: Vec<Effective>,
}

/// The plans of a lineage, nearest layer first, over the baseline: answers "whose instance
/// serves this here".
#[derive(Debug)]
pub(crate) struct View<'a> {
    plans: Vec<&'a LayerPlan>,
    base: &'a Base,
}

impl<'a> View<'a> {
    pub(crate) fn new(plans: Vec<&'a LayerPlan>, base: &'a Base) -> View<'a> {
        View { plans, base }
    }

    pub(crate) fn target(&self) -> Option<&'a LayerPlan> {
        self.plans.first().copied()
    }

    pub(crate) fn label(&self) -> &'a Arc<str> {
        self.plans.first().map_or(&self.base.label, |p| &p.label)
    }

    pub(crate) fn labels(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self.plans.iter().map(|p| p.label.clone()).collect();
        out.push(self.base.label.clone());
        out
    }

    /// Owner layer, key and resources of the instance serving service `s`.
    pub(crate) fn service(&self, s: u32) -> (&'a Arc<str>, InstanceKey, Resources) {
        for p in &self.plans {
            if let Some(m) = p.services.get(&s) {
                return (&p.label, m.key, m.resources);
            }
        }
        let (k, r) = self
            .base
            .services
            .get(s as usize)
            .copied()
            .unwrap_or_default();
        (&self.base.label, k, r)
    }

    /// The baseline's env references of service `s`.
    pub(crate) fn base_refs(&self, s: u32) -> &'a [(u32, String)] {
        self.base.refs.get(s as usize).map_or(&[], Vec::as_slice)
    }

    /// Owner layer and key of store `x`.
    pub(crate) fn store(&self, x: u32) -> (&'a Arc<str>, InstanceKey) {
        for p in &self.plans {
            if let Some(m) = p.stores.get(&x) {
                return (&p.label, m.key);
            }
        }
        (
            &self.base.label,
            self.base
                .stores
                .get(x as usize)
                .copied()
                .unwrap_or_default(),
        )
    }

    /// Owner layer and key of topic `t`.
    pub(crate) fn topic(&self, t: u32) -> (&'a Arc<str>, InstanceKey) {
        for p in &self.plans {
            if let Some(m) = p.topics.get(&t) {
                return (&p.label, m.key);
            }
        }
        (
            &self.base.label,
            self.base
                .topics
                .get(t as usize)
                .copied()
                .unwrap_or_default(),
        )
    }
}
