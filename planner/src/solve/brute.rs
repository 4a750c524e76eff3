//! Exhaustive enumeration, the reference the solver is tested against: every assignment is
//! checked directly against every rule (no propagation, no bounds) and the least under the
//! solver's order (cost, instances, alternatives in tie order: see [`tie_order`]) is kept. Test support only;
//! exponential in the number of decisions.

use super::problem::{Constraint, Problem};

/// The least feasible assignment found by enumeration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brute {
    /// The chosen alternative per decision.
    pub chosen: Vec<usize>,
    /// Its cost.
    pub cost: u64,
    /// Its instances.
    pub instances: u64,
}

/// Check one assignment against every rule: `Ok((cost, instances))` or the first rule broken.
pub fn check(p: &Problem, chosen: &[usize]) -> Result<(u64, u64), String> {
    if chosen.len() != p.decisions.len() {
        return Err("wrong length".into());
    }
    let mut cost = 0u64;
    let mut inst = 0u64;
    for (d, &a) in chosen.iter().enumerate() {
        let Some(alt) = p.decisions[d].alternatives.get(a) else {
            return Err(format!("decision {d} has no alternative {a}"));
        };
        if alt.allowed.is_err() {
            return Err(format!("decision {d}: alternative {a} is not allowed"));
        }
        cost += alt.cost;
        inst += u64::from(alt.instances);
    }
    for (ci, c) in p.constraints.iter().enumerate() {
        match c {
            Constraint::Requires {
                when, then, one_of, ..
            } => {
                if chosen[when.decision] == when.alternative && !one_of.contains(&chosen[*then]) {
                    return Err(format!("implication {ci} broken"));
                }
            }
            Constraint::Forbid { choice, .. } => {
                if chosen[choice.decision] == choice.alternative {
                    return Err(format!("forbid {ci} broken"));
                }
            }
        }
    }
    for b in &p.budgets {
        let mut ds = b.decisions.clone();
        ds.sort_unstable();
        ds.dedup();
        let (mut c, mut i) = (b.already_used.cost, b.already_used.instances);
        for d in ds {
            let alt = &p.decisions[d].alternatives[chosen[d]];
            c += alt.cost;
            i += u64::from(alt.instances);
        }
        if b.max_cost.is_some_and(|m| c > m) || b.max_instances.is_some_and(|m| i > m) {
            return Err(format!("budget {} exceeded", b.name));
        }
    }
    Ok((cost, inst))
}

/// The solver's tie order: decisions linked by implications form groups; groups come in the
/// order of their first decision, and each group's decisions in index order.
pub fn tie_order(p: &Problem) -> Vec<usize> {
    let n = p.decisions.len();
    let mut group: Vec<usize> = (0..n).collect();
    // relabel to a fixpoint: each decision takes the least label linked to it
    loop {
        let mut changed = false;
        for c in &p.constraints {
            if let Constraint::Requires { when, then, .. } = c {
                let (a, b) = (group[when.decision], group[*then]);
                if a != b {
                    let low = a.min(b);
                    for g in group.iter_mut() {
                        if *g == a || *g == b {
                            *g = low;
                        }
                    }
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&d| (group[d], d));
    order
}

/// The least feasible assignment, or `None` when none is feasible. `ignore_budgets` checks the
/// constraints only.
pub fn minimum(p: &Problem, ignore_budgets: bool) -> Option<Brute> {
    let q;
    let p = if ignore_budgets {
        q = Problem {
            budgets: Vec::new(),
            ..p.clone()
        };
        &q
    } else {
        p
    };
    if p.decisions.iter().any(|d| d.alternatives.is_empty()) {
        return None;
    }
    let n = p.decisions.len();
    let order = tie_order(p);
    let key = |v: &[usize]| -> Vec<usize> { order.iter().map(|&d| v[d]).collect() };
    let mut cur = vec![0usize; n];
    let mut best: Option<Brute> = None;
    loop {
        if let Ok((cost, instances)) = check(p, &cur) {
            let better = best.as_ref().is_none_or(|b| {
                (cost, instances, key(&cur)) < (b.cost, b.instances, key(&b.chosen))
            });
            if better {
                best = Some(Brute {
                    chosen: cur.clone(),
                    cost,
                    instances,
                });
            }
        }
        // odometer, last decision fastest
        let mut i = n;
        loop {
            if i == 0 {
                return best;
            }
            i -= 1;
            cur[i] += 1;
            if cur[i] < p.decisions[i].alternatives.len() {
                break;
            }
            cur[i] = 0;
        }
    }
}
