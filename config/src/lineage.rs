//! Lineage: resolving each layer's parent, refusing cycles, and walking the tree (children,
//! subtrees, the chain from a layer up to the org baseline).

use crate::model::Config;
use crate::names::BASELINE;
use crate::report::Report;
use crate::schema::LayerKind;
use crate::values::LayerIdx;
use std::collections::BTreeSet;
use std::sync::Arc;

impl Config {
    pub(crate) fn resolve_parent_of(&mut self, idx: LayerIdx, report: &mut Report) {
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
            None => report.at(
                &layer.doc,
                "parent",
                format!("unknown parent `{parent_name}`: name `baseline`, a team or a branch"),
            ),
            Some(p) => {
                let parent_kind = self.layer(p).map(|l| l.kind);
                if layer.kind == LayerKind::Team && parent_kind == Some(LayerKind::Branch) {
                    report.at(
                        &layer.doc,
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

    pub(crate) fn resolve_parents(&mut self, report: &mut Report) {
        for idx in 1..self.layers.len() {
            self.resolve_parent_of(idx, report);
        }
    }

    pub(crate) fn check_cycles(&self, report: &mut Report) {
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
    pub(crate) fn report_cycle(&self, idx: LayerIdx, cycle: &[LayerIdx], report: &mut Report) {
        let Some(l) = self.layer(idx) else { return };
        let names: Vec<&str> = cycle
            .iter()
            .filter_map(|&i| self.layer(i))
            .map(|l| l.name.as_str())
            .collect();
        let reason = format!("lineage cycle: {} -> {}", names.join(" -> "), l.name);
        report.at(&l.doc, "parent", reason);
    }

    /// The layers of a cycle reachable from `idx`, if any.
    pub(crate) fn cycle_from(&self, idx: LayerIdx) -> Option<Vec<LayerIdx>> {
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
}
