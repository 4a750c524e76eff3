//! Route contracts as solver constraints: on every `depends_on` edge a branch's routes use
//! (caller -> callee, at least one side branch-local), the callee instance served in the branch
//! context must serve an `api` that meets the `requires` of the caller instance used. A side is
//! branch-local when the branch forks it (any alternative but `reuse`) or runs it locally, else
//! the parent's instance (the parent layer's effective config) serves it. Incompatible pairs of
//! alternatives become `Requires`/`Forbid` constraints; an edge with no choice on either side
//! that is incompatible is returned as a fixed conflict.

use super::labels;
use crate::decision::Decision;
use crate::graph::Catalog;
use crate::plan::Plan;
use crate::solve::{Choice, Constraint, Problem, Reason};
use microstax_config::{Config, Effective, LayerIdx};

/// The two views of a service: as the branch runs it and as the parent serves it.
struct Sides {
    branch: Option<Effective>,
    parent: Option<Effective>,
}

/// Per service: for each alternative of its decision (or the one fixed case), whether it is
/// branch-local.
fn locality(plan: &Plan, problem: &Problem, decision: &[Option<usize>], s: usize) -> Vec<bool> {
    match decision.get(s).copied().flatten() {
        Some(d) => problem.decisions[d]
            .alternatives
            .iter()
            .map(|a| &*a.label != labels::REUSE)
            .collect(),
        None => vec![matches!(
            plan.entries.get(s).map(|e| &e.decision),
            Some(Decision::Fork | Decision::Local)
        )],
    }
}

/// Why `caller` (its `requires`) and `callee` (its `api`) are incompatible, if they are.
fn conflict(caller: &Effective, callee: &Effective) -> Option<String> {
    let req = caller.requires.get(&callee.service)?;
    let api = callee.api.as_ref()?;
    if microstax_config::api::satisfies(&api.value, &req.value) {
        return None;
    }
    Some(format!(
        "route {} -> {}: {} serves api {} (services.{}.api, {}), which does not meet {}'s requirement {} (services.{}.requires.{}, {})",
        caller.service,
        callee.service,
        callee.service,
        api.value,
        callee.service,
        api.origin,
        caller.service,
        req.value,
        caller.service,
        callee.service,
        req.origin,
    ))
}

/// Add the contract constraints of layer `idx`'s plan to `problem`; returns the conflicts no
/// choice can avoid.
pub(super) fn constrain(
    config: &Config,
    idx: LayerIdx,
    cat: &Catalog,
    plan: &Plan,
    decision: &[Option<usize>],
    problem: &mut Problem,
) -> Vec<String> {
    let lineage = config.lineage(idx);
    let Some(&parent) = lineage.get(1) else {
        return Vec::new();
    };
    let n = cat.names.len();
    // a requirement can only come from a layer of the lineage: look at what they wrote rather
    // than merging every service's effective spec (2k merges per layer made a 10k-branch
    // re-plan 4-10x slower)
    let uses_contracts = lineage.iter().any(|&l| {
        config.layer(l).is_some_and(|layer| {
            layer
                .doc
                .doc
                .services
                .values()
                .any(|s| !s.requires.is_empty())
        })
    });
    if !uses_contracts {
        return Vec::new();
    }
    let sides: Vec<Sides> = (0..n)
        .map(|s| Sides {
            branch: config.effective(idx, &cat.names[s]),
            parent: config.effective(parent, &cat.names[s]),
        })
        .collect();
    let view = |s: usize, local: bool| {
        let x = &sides[s];
        if local {
            x.branch.as_ref()
        } else {
            x.parent.as_ref()
        }
    };
    let mut fixed = Vec::new();
    for caller in 0..n {
        let cl = locality(plan, problem, decision, caller);
        for &callee in &cat.deps[caller] {
            let callee = callee as usize;
            let tl = locality(plan, problem, decision, callee);
            // per caller alternative, the callee alternatives it can be served by
            let compat: Vec<(Vec<usize>, Option<String>)> = cl
                .iter()
                .map(|&c_local| {
                    let mut ok = Vec::new();
                    let mut why = None;
                    for (k, &t_local) in tl.iter().enumerate() {
                        let bad = if c_local || t_local {
                            view(caller, c_local)
                                .zip(view(callee, t_local))
                                .and_then(|(a, b)| conflict(a, b))
                        } else {
                            None
                        };
                        match bad {
                            None => ok.push(k),
                            Some(w) => why = why.or(Some(w)),
                        }
                    }
                    (ok, why)
                })
                .collect();
            let dc = decision.get(caller).copied().flatten();
            let dt = decision.get(callee).copied().flatten();
            for (a, (ok, why)) in compat.into_iter().enumerate() {
                let Some(why) = why else { continue };
                let reason = Reason::new(why.as_str());
                match (dc, dt) {
                    (None, None) => fixed.push(why),
                    (Some(d), Some(t)) if !ok.is_empty() => {
                        problem.constraints.push(Constraint::Requires {
                            when: Choice::new(d, a),
                            then: t,
                            one_of: ok,
                            reason,
                        });
                    }
                    (Some(d), _) => problem.constraints.push(Constraint::Forbid {
                        choice: Choice::new(d, a),
                        reason,
                    }),
                    (None, Some(t)) => {
                        for k in (0..tl.len()).filter(|k| !ok.contains(k)) {
                            problem.constraints.push(Constraint::Forbid {
                                choice: Choice::new(t, k),
                                reason: reason.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    fixed
}
