//! Renderings of plans for people (an aligned text table) and for machines (JSON). Kept apart
//! from the plan types so the decision code never formats text beyond a reason.

use crate::cost::Resources;
use crate::diff::FieldChange;
use crate::economy::{money, Chosen, Economics};
use crate::plan::{Cause, Decision, Entry, Plan, Summary, REASON_PATHS};
use microstax_config::Origin;
use serde_json::{json, Value};

/// How many causes the text table spells out per entry (JSON has all).
const TABLE_CAUSES: usize = 3;

impl Plan {
    /// One-line summary: size and cost against cloning everything.
    pub fn summary_line(&self) -> String {
        summary_text(&self.summary)
    }

    /// A readable table: name, kind, decision, cost and reason per entry, then the summary.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let lineage: Vec<&str> = self.lineage.iter().map(|l| &**l).collect();
        out.push_str(&format!(
            "plan for {} (lineage: {})\n",
            self.layer,
            lineage.join(" -> ")
        ));
        if let Some((range, n)) = &self.source {
            out.push_str(&format!("source: {range}, {n} changed paths\n"));
        }
        out.push('\n');
        let rows: Vec<Vec<String>> = self
            .entries
            .iter()
            .map(|e| {
                vec![
                    e.name.to_string(),
                    e.kind.as_deref().unwrap_or(e.subject.as_str()).to_string(),
                    e.decision_text(),
                    cost_cell(e),
                    e.reason(TABLE_CAUSES),
                ]
            })
            .collect();
        out.push_str(&table(
            &["NAME", "KIND", "DECISION", "COST", "REASON"],
            &rows,
        ));
        out.push('\n');
        out.push_str(&self.summary_line());
        out.push('\n');
        out.push_str(&self.choices_table());
        out
    }

    /// The solver's part: per decision the chosen alternative, its cost, the runner-up and the
    /// binding reason; the totals against the baselines; the budget.
    pub fn choices_table(&self) -> String {
        let mut out = String::new();
        let rows: Vec<Vec<String>> = self
            .entries
            .iter()
            .filter_map(|e| e.chosen.as_ref().map(|c| (e, c)))
            .map(|(e, c)| {
                let mut chosen = c.label.to_string();
                if c.replicas > 1 {
                    chosen.push_str(&format!(" x{}", c.replicas));
                }
                vec![
                    e.name.to_string(),
                    chosen,
                    money(c.cost),
                    c.runner_up.as_ref().map_or_else(
                        || "-".to_string(),
                        |r| format!("{} {} (+{})", r.label, money(r.cost), money(r.delta)),
                    ),
                    c.reason.clone(),
                ]
            })
            .collect();
        let x = &self.economics;
        if !rows.is_empty() {
            out.push_str("\nchoices (cost per hour):\n");
            out.push_str(&table(
                &["NAME", "CHOSEN", "COST", "RUNNER-UP (PLAN +)", "BINDING"],
                &rows,
            ));
        }
        out.push('\n');
        out.push_str(&economics_text(x));
        out
    }

    /// The plan as JSON: layer, lineage, source, entries with structured causes, summary.
    pub fn to_json(&self) -> Value {
        json!({
            "layer": &*self.layer,
            "lineage": self.lineage.iter().map(|l| &**l).collect::<Vec<_>>(),
            "source": self.source.as_ref().map(|(r, n)| json!({ "range": &**r, "changed_paths": n })),
            "entries": self.entries.iter().map(entry_json).collect::<Vec<_>>(),
            "summary": summary_json(&self.summary),
            "economics": economics_json(&self.economics),
        })
    }
}

fn cost_cell(e: &Entry) -> String {
    match e.decision {
        Decision::Reuse { .. } => "-".into(),
        _ => e.cost.to_string(),
    }
}

fn economics_text(x: &Economics) -> String {
    let b = &x.baselines;
    let vs = |name: &str, t: &crate::solve::Totals| {
        let pct = (t.cost.saturating_sub(x.cost).saturating_mul(100))
            .checked_div(t.cost)
            .unwrap_or(0);
        format!(
            "  {name:<36} {:>9}/h  {:>2} instances  (plan saves {pct}%)\n",
            money(t.cost),
            t.instances
        )
    };
    let mut out = format!("plan: {}/h, {} instances\n", money(x.cost), x.instances);
    out.push_str(&vs("clone everything", &b.clone_all));
    out.push_str(&vs("fork changed + their dependents", &b.fork_dependents));
    out.push_str(&vs("Kardinal (changed + stateful below)", &b.kardinal));
    if let Some(u) = &x.budget {
        let lim = |v: Option<u64>, f: &dyn Fn(u64) -> String| v.map_or_else(|| "-".into(), f);
        out.push_str(&format!(
            "budget of {} ({}): {} of {} instances, {}/h of {}/h across its live branches\n",
            u.team,
            u.origin,
            u.total.instances,
            lim(u.max_instances, &|v| v.to_string()),
            money(u.total.cost),
            lim(u.max_cost, &|v| money(v)),
        ));
    }
    if let Some(r) = &x.refused {
        out.push_str(&format!("REFUSED: {}\n", r.reason));
        for c in &r.conflicting {
            out.push_str(&format!("  conflicting: {c}\n"));
        }
        if let Some((names, cost, inst)) = &r.without_budget {
            out.push_str(&format!(
                "  cheapest without the budget: {}/h, {inst} instances: {}\n",
                money(*cost),
                names.join(", ")
            ));
        }
    }
    if let Some(e) = &x.error {
        out.push_str(&format!("solver: {e}\n"));
    }
    out
}

fn economics_json(x: &Economics) -> Value {
    let totals = |t: &crate::solve::Totals| json!({ "cost_micros": t.cost, "instances": t.instances, "nodes": t.nodes });
    json!({
        "cost_micros": x.cost,
        "instances": x.instances,
        "active_fraction_ppm": x.active_fraction_ppm,
        "prices": x.prices.iter().map(|(n, v, o)| json!({
            "name": n, "micros": v, "origin": o,
        })).collect::<Vec<_>>(),
        "baselines": {
            "clone_all": totals(&x.baselines.clone_all),
            "fork_dependents": totals(&x.baselines.fork_dependents),
            "kardinal": totals(&x.baselines.kardinal),
        },
        "budget": x.budget.as_ref().map(|u| json!({
            "team": &*u.team,
            "origin": u.origin,
            "max_instances": u.max_instances,
            "max_cost_micros": u.max_cost,
            "others": { "instances": u.others.instances, "cost_micros": u.others.cost },
            "total": { "instances": u.total.instances, "cost_micros": u.total.cost },
        })),
        "refused": x.refused.as_ref().map(|r| json!({
            "reason": r.reason,
            "conflicting": r.conflicting,
            "without_budget": r.without_budget.as_ref().map(|(n, c, i)| json!({
                "choices": n, "cost_micros": c, "instances": i,
            })),
        })),
        "error": x.error,
    })
}

fn chosen_json(c: &Chosen) -> Value {
    json!({
        "alternative": &*c.label,
        "cost_micros": c.cost,
        "instances": c.instances,
        "replicas": c.replicas,
        "reason": c.reason,
        "runner_up": c.runner_up.as_ref().map(|r| json!({
            "alternative": &*r.label, "cost_micros": r.cost, "plan_delta_micros": r.delta,
        })),
        "alternatives": c.alternatives.iter().map(|a| json!({
            "alternative": &*a.label,
            "cost_micros": a.cost,
            "instances": a.instances,
            "not_allowed": a.not_allowed,
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn summary_text(s: &Summary) -> String {
    let saved = s.saved();
    let pct = |saved: u64, all: u64| (saved.saturating_mul(100)).checked_div(all).unwrap_or(0);
    format!(
        "forked {} of {} services ({} local, {} reused); isolated {} of {} stores and {} of {} topics\n\
         cost {} vs {} to clone everything: saves {} ({}% cpu, {}% memory)",
        s.forked,
        s.services,
        s.local,
        s.reused,
        s.stores_isolated,
        s.stores,
        s.topics_isolated,
        s.topics,
        s.cost,
        s.clone_cost,
        saved,
        pct(saved.cpu_m, s.clone_cost.cpu_m),
        pct(saved.memory_mi, s.clone_cost.memory_mi),
    )
}

pub(crate) fn summary_json(s: &Summary) -> Value {
    json!({
        "services": s.services,
        "forked": s.forked,
        "local": s.local,
        "reused": s.reused,
        "stores": s.stores,
        "stores_isolated": s.stores_isolated,
        "topics": s.topics,
        "topics_isolated": s.topics_isolated,
        "cost": s.cost.to_json(),
        "clone_cost": s.clone_cost.to_json(),
        "saved": s.saved().to_json(),
    })
}

pub(crate) fn entry_json(e: &Entry) -> Value {
    let mut v = json!({
        "subject": e.subject.as_str(),
        "name": &*e.name,
        "decision": e.decision.as_str(),
        "reason": e.reason(usize::MAX),
        "causes": e.causes.iter().map(cause_json).collect::<Vec<_>>(),
        "cost": e.cost.to_json(),
        "instance": e.instance.hex(),
        "shared_with": e.shared_with.iter().map(|s| &**s).collect::<Vec<_>>(),
        "resources": e.resources.to_json(),
    });
    if let Some(c) = &e.chosen {
        v["chosen"] = chosen_json(c);
    }
    if let Some(k) = &e.kind {
        v["kind"] = json!(&**k);
    }
    match &e.decision {
        Decision::Reuse { from } => v["from"] = json!(&**from),
        Decision::Isolate(i) => v["isolation"] = json!(i.describe()),
        Decision::Fork | Decision::Local => {}
    }
    v
}

pub(crate) fn origin_json(o: &Origin) -> Value {
    json!({ "layer": &*o.layer, "file": &*o.file, "line": o.line })
}

fn change_json(kind: &str, c: &FieldChange) -> Value {
    json!({
        "kind": kind,
        "field": c.field,
        "change": c.kind.verb(),
        "before": c.before.as_ref().map(|f| &f.value),
        "after": c.after.as_ref().map(|f| &f.value),
        "origin": c.origin().map(origin_json),
    })
}

pub(crate) fn cause_json(c: &Cause) -> Value {
    let mut v = match c {
        Cause::Field(ch) => change_json("field", ch),
        Cause::Policy(ch) => change_json("policy", ch),
        Cause::Restated { layer } => json!({ "kind": "restated", "layer": &**layer }),
        Cause::Source {
            paths,
            total,
            range,
        } => json!({
            "kind": "source", "paths": paths, "total": total, "range": &**range,
            "listed": REASON_PATHS.min(*total),
        }),
        Cause::Local { endpoint, origin } => {
            json!({ "kind": "local", "endpoint": endpoint, "origin": origin_json(origin) })
        }
        Cause::Migrates {
            service,
            migration,
            origin,
        } => json!({
            "kind": "migrates", "service": &**service, "migration": migration, "origin": origin_json(origin),
        }),
        Cause::UsesStore { store, layer } => {
            json!({ "kind": "uses_store", "store": &**store, "layer": &**layer })
        }
        Cause::Contract {
            producer,
            version,
            origin,
        } => json!({
            "kind": "contract", "producer": &**producer, "version": version, "origin": origin_json(origin),
        }),
        Cause::ConsumesTopic { topic, layer } => {
            json!({ "kind": "consumes_topic", "topic": &**topic, "layer": &**layer })
        }
        Cause::Dependency {
            dependency,
            env,
            moved,
            layer,
        } => json!({
            "kind": "dependency", "dependency": &**dependency, "env": env, "moved": moved, "layer": &**layer,
        }),
    };
    v["text"] = json!(c.to_string());
    v
}

/// Align columns; the last column is not padded, so long reasons do not widen the table.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i + 1 < n {
                l.push_str(c);
                l.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            } else {
                l.push_str(c);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// Resources for a table cell.
pub(crate) fn resources_cell(r: Resources) -> String {
    r.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_all_but_the_last_column() {
        let t = table(
            &["A", "B", "C"],
            &[
                vec!["xx".into(), "y".into(), "long reason".into()],
                vec!["x".into(), "yyy".into(), "z".into()],
            ],
        );
        assert_eq!(t, "A   B    C\nxx  y    long reason\nx   yyy  z\n");
    }
}
