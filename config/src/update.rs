//! Making a [`Config`]: the whole build from a set of documents, and incremental updates that
//! insert, replace or remove one layer, checked exactly as a whole build checks it, keeping
//! every other layer's id.

use crate::error::ConfigError;
use crate::load::ParsedDoc;
use crate::model::Config;
use crate::report::Report;
use crate::schema::LayerKind;
use crate::values::LayerIdx;
use std::sync::Arc;

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
            report.at(
                extra,
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
        let existing = next.layer_index.get(doc.name()).copied();
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
        let Some(new_idx) = next.add_layer_as(doc, existing, &mut report) else {
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
        Arc::make_mut(&mut next.layer_index).remove(name);
        Ok((next, idx))
    }
}
