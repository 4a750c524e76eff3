//! The economic settings: prices (org, overridden per team), team budgets, and the service and
//! store facts the cheapest-plan solver needs (latency objective, cold start, reliability floor,
//! whether a store allows per-branch schemas). This module checks them and resolves them with
//! their provenance; the planner prices alternatives with the result.

use crate::load::ParsedDoc;
use crate::model::Config;
use crate::report::Report;
use crate::schema::{BudgetDoc, LayerKind, PricesDoc};
use crate::values::{LayerIdx, Origin};
use std::sync::Arc;

/// Micro-units in one currency unit: prices are kept as integers so plan costs add exactly.
pub const MICROS: f64 = 1_000_000.0;
/// The largest price or budget accepted, per hour (keeps every sum far from overflow).
pub const MAX_PRICE: f64 = 1_000_000.0;
/// Built-in: one CPU core for an hour.
pub const DEFAULT_CPU_CORE_HOUR: f64 = 0.04;
/// Built-in: one GiB for an hour.
pub const DEFAULT_GIB_HOUR: f64 = 0.005;
/// Built-in: a per-branch database from a template, per hour.
pub const DEFAULT_DATABASE_FROM_TEMPLATE: f64 = 0.002;
/// Built-in: a per-branch schema, per hour.
pub const DEFAULT_PER_BRANCH_SCHEMA: f64 = 0.0005;
/// Built-in: a per-branch topic, per hour.
pub const DEFAULT_PER_BRANCH_TOPIC: f64 = 0.0001;
/// Built-in: the share of the time a branch is in use.
pub const DEFAULT_ACTIVE_FRACTION: f64 = 0.25;
/// Built-in: a service's expected cold start.
pub const DEFAULT_COLD_START_MS: u64 = 2_000;

/// One resolved price (or fraction) in micro-units, with where it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// Micro-units per hour (for `active_fraction`: parts per million).
    pub micros: u64,
    /// The layer, file and line that set it (built-in: `default (built-in)`).
    pub origin: Origin,
}

/// The prices one environment is planned with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prices {
    /// One CPU core for an hour.
    pub cpu_core_hour: Price,
    /// One GiB for an hour.
    pub gib_hour: Price,
    /// A forked store instance; `None`: priced by its resources.
    pub forked_instance: Option<Price>,
    /// A per-branch database from a template.
    pub database_from_template: Price,
    /// A per-branch schema.
    pub per_branch_schema: Price,
    /// Sharing the parent's store.
    pub share: Price,
    /// A per-branch topic.
    pub per_branch_topic: Price,
    /// The share of the time a branch is in use, in parts per million.
    pub active_fraction: Price,
}

/// A team's budget, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The team's layer.
    pub team: LayerIdx,
    /// Its label, `team/<name>`.
    pub label: Arc<str>,
    /// At most this many instances.
    pub max_instances: Option<u64>,
    /// At most this cost per hour, in micro-units.
    pub max_cost: Option<u64>,
    /// Where the budget is declared.
    pub origin: Origin,
}

/// How a store may be given a per-branch schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaPolicy {
    /// Whenever the kind has schemas.
    Always,
    /// Only when every migration of the branch is additive.
    Additive,
    /// Never.
    Never,
}

/// Parse a `per_branch_schema` value.
pub fn schema_policy(v: &str) -> Option<SchemaPolicy> {
    match v {
        "always" => Some(SchemaPolicy::Always),
        "additive" => Some(SchemaPolicy::Additive),
        "never" => Some(SchemaPolicy::Never),
        _ => None,
    }
}

fn micros(v: f64) -> u64 {
    // validated finite, non-negative and at most MAX_PRICE
    (v * MICROS).round().clamp(0.0, MAX_PRICE * MICROS) as u64
}

fn check_amount(doc: &ParsedDoc, field: &str, v: Option<f64>, report: &mut Report) {
    if let Some(v) = v {
        if !v.is_finite() || v < 0.0 {
            report.at(doc, field, "must be a number of at least 0");
        } else if v > MAX_PRICE {
            report.at(doc, field, format!("must be at most {MAX_PRICE}"));
        }
    }
}

/// Check a layer's `prices:` and `budget:` blocks.
pub(crate) fn check(doc: &ParsedDoc, kind: LayerKind, report: &mut Report) {
    if let Some(p) = &doc.doc.prices {
        if kind == LayerKind::Branch {
            report.at(doc, "prices", "belongs in the org layer or a team layer");
        }
        check_prices(doc, p, report);
    }
    if let Some(b) = &doc.doc.budget {
        if kind != LayerKind::Team {
            report.at(
                doc,
                "budget",
                "belongs in a team layer: it limits all of the team's branches",
            );
        }
        check_budget(doc, b, report);
    }
}

fn check_prices(doc: &ParsedDoc, p: &PricesDoc, report: &mut Report) {
    check_amount(doc, "prices.cpu_core_hour", p.cpu_core_hour, report);
    check_amount(doc, "prices.gib_hour", p.gib_hour, report);
    check_amount(doc, "prices.per_branch_topic", p.per_branch_topic, report);
    if let Some(s) = &p.stores {
        for (f, v) in [
            ("forked_instance", s.forked_instance),
            ("database_from_template", s.database_from_template),
            ("per_branch_schema", s.per_branch_schema),
            ("share", s.share),
        ] {
            check_amount(doc, &format!("prices.stores.{f}"), v, report);
        }
    }
    if let Some(f) = p.active_fraction {
        if !(f.is_finite() && f > 0.0 && f <= 1.0) {
            report.at(
                doc,
                "prices.active_fraction",
                "must be greater than 0 and at most 1",
            );
        }
    }
}

fn check_budget(doc: &ParsedDoc, b: &BudgetDoc, report: &mut Report) {
    check_amount(doc, "budget.max_cost_per_hour", b.max_cost_per_hour, report);
    if b.max_instances.is_none() && b.max_cost_per_hour.is_none() {
        report.at(
            doc,
            "budget",
            "sets no limit: give max_instances or max_cost_per_hour",
        );
    }
}

/// Check the org catalog's economic service fields.
pub(crate) fn check_service(
    doc: &ParsedDoc,
    base: &str,
    s: &crate::schema::ServiceDoc,
    report: &mut Report,
) {
    if s.min_replicas == Some(0) {
        report.at(doc, &format!("{base}.min_replicas"), "must be at least 1");
    }
    if s.latency_objective_ms == Some(0) {
        report.at(
            doc,
            &format!("{base}.latency_objective_ms"),
            "must be greater than 0",
        );
    }
}

impl Config {
    /// The prices layer `idx` is planned with: each price from the nearest team of its lineage
    /// that sets it, else the org layer, else the built-in default.
    pub fn prices(&self, idx: LayerIdx) -> Prices {
        let chain: Vec<_> = self
            .lineage(idx)
            .into_iter()
            .filter_map(|i| self.layer(i))
            .filter(|l| l.kind != LayerKind::Branch)
            .collect();
        let find = |path: &str, get: &dyn Fn(&PricesDoc) -> Option<f64>| -> Option<Price> {
            chain.iter().find_map(|l| {
                let v = l.doc.doc.prices.as_ref().and_then(get)?;
                Some(Price {
                    micros: micros(v),
                    origin: l.origin(path),
                })
            })
        };
        let or = |p: Option<Price>, default: f64| {
            p.unwrap_or_else(|| Price {
                micros: micros(default),
                origin: Origin::builtin(),
            })
        };
        let store = |f: fn(&crate::schema::StorePricesDoc) -> Option<f64>| {
            move |p: &PricesDoc| p.stores.as_ref().and_then(f)
        };
        Prices {
            cpu_core_hour: or(
                find("prices.cpu_core_hour", &|p| p.cpu_core_hour),
                DEFAULT_CPU_CORE_HOUR,
            ),
            gib_hour: or(find("prices.gib_hour", &|p| p.gib_hour), DEFAULT_GIB_HOUR),
            forked_instance: find(
                "prices.stores.forked_instance",
                &store(|s| s.forked_instance),
            ),
            database_from_template: or(
                find(
                    "prices.stores.database_from_template",
                    &store(|s| s.database_from_template),
                ),
                DEFAULT_DATABASE_FROM_TEMPLATE,
            ),
            per_branch_schema: or(
                find(
                    "prices.stores.per_branch_schema",
                    &store(|s| s.per_branch_schema),
                ),
                DEFAULT_PER_BRANCH_SCHEMA,
            ),
            share: or(find("prices.stores.share", &store(|s| s.share)), 0.0),
            per_branch_topic: or(
                find("prices.per_branch_topic", &|p| p.per_branch_topic),
                DEFAULT_PER_BRANCH_TOPIC,
            ),
            active_fraction: or(
                find("prices.active_fraction", &|p| p.active_fraction),
                DEFAULT_ACTIVE_FRACTION,
            ),
        }
    }

    /// The budget layer `idx` counts against: the nearest team of its lineage with a
    /// `budget:` (the layer itself when it is that team).
    pub fn budget(&self, idx: LayerIdx) -> Option<Budget> {
        self.lineage(idx).into_iter().find_map(|i| {
            let l = self.layer(i)?;
            if l.kind != LayerKind::Team {
                return None;
            }
            let b = l.doc.doc.budget.as_ref()?;
            Some(Budget {
                team: i,
                label: l.label.clone(),
                max_instances: b.max_instances,
                max_cost: b.max_cost_per_hour.map(micros),
                origin: l.origin("budget"),
            })
        })
    }

    /// How `store` may get per-branch schemas (`stores.<name>.per_branch_schema`), with where
    /// it is said; `Always` by default.
    pub fn schema_policy(&self, store: &str) -> (SchemaPolicy, Option<Origin>) {
        let org = self.org();
        let set = org
            .doc
            .doc
            .stores
            .get(store)
            .and_then(|s| s.per_branch_schema.as_deref())
            .and_then(schema_policy);
        match set {
            Some(p) => (
                p,
                Some(org.origin(&format!("stores.{store}.per_branch_schema"))),
            ),
            None => (SchemaPolicy::Always, None),
        }
    }

    /// Where the org layer sets `field` of service `name` (e.g. `latency_objective_ms`).
    pub fn service_origin(&self, name: &str, field: &str) -> Origin {
        self.org().origin(&format!("services.{name}.{field}"))
    }

    /// The org catalog's document of service `name`.
    pub fn service_doc(&self, name: &str) -> Option<&crate::schema::ServiceDoc> {
        self.org().doc.doc.services.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_units_round() {
        assert_eq!(micros(0.04), 40_000);
        assert_eq!(micros(0.0000004), 0);
        assert_eq!(micros(1.5), 1_500_000);
    }
}
