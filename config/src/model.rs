//! The validated config: settings, the service catalog, and the layers with their lineage,
//! and the read-only view of them. Layer ids are stable across incremental updates (a removed
//! layer leaves an empty slot) so the planner can recompile only the layers a change touches.
//! A config is made only by validation: `update` builds one (with `validate_org` for the org
//! layer and its catalog, `validate_layer` for each team and branch, `lineage` for parents) and
//! changes one layer at a time.

use crate::load::ParsedDoc;
use crate::names::BASELINE;
use crate::schema::{LayerKind, ServiceDoc, StoreDoc, TopicsDoc};
pub use crate::values::{instance_address, Endpoint, LayerIdx, Origin};
pub use microstax_table::{ContextSettings, HostPattern, Settings};
use std::collections::BTreeMap;
use std::sync::Arc;

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
    pub(crate) services: Vec<Service>,
    pub(crate) service_index: BTreeMap<String, usize>,
    /// Layer slots by id; `None` where a layer was removed.
    pub(crate) layers: Vec<Option<Arc<Layer>>>,
    /// Team and branch layers by name.
    /// Shared between a config and the next one a write makes from it, and copied only when a
    /// layer name comes or goes (replacing a layer, the common write, copies nothing).
    pub(crate) layer_index: Arc<BTreeMap<Arc<str>, LayerIdx>>,
}

impl Config {
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
