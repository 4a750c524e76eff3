//! Renderings of plans for people (an aligned text table) and for machines (JSON). Kept apart
//! from the plan types so the decision code never formats text beyond a reason.

use crate::cost::Resources;
use crate::diff::FieldChange;
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
        })
    }
}

fn cost_cell(e: &Entry) -> String {
    match e.decision {
        Decision::Reuse { .. } => "-".into(),
        _ => e.cost.to_string(),
    }
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
    });
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
