//! The problem compiled for search: domains as bit masks, implications indexed by the decision
//! that triggers them and the decision they constrain (in a canonical order, so the order of
//! the caller's constraint list never changes a result), budgets with their members, and a
//! [`Scope`] saying which constraints, budgets and not-allowed facts are in force (the conflict
//! search relaxes them one set at a time).

use super::problem::{Choice, Constraint, Problem};

/// Which parts of a problem are in force for one solve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scope {
    /// Per constraint.
    pub constraints: Vec<bool>,
    /// Per budget.
    pub budgets: Vec<bool>,
    /// Per decision, the not-allowed alternatives whose prohibition holds.
    pub not_allowed: Vec<u64>,
    /// Per decision, alternatives removed for this solve only (runner-ups, what-ifs).
    pub extra: Vec<u64>,
}

impl Scope {
    /// Everything in force.
    pub fn full(p: &Problem) -> Scope {
        Scope {
            constraints: vec![true; p.constraints.len()],
            budgets: vec![true; p.budgets.len()],
            not_allowed: p
                .decisions
                .iter()
                .map(|d| {
                    d.alternatives
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| a.allowed.is_err())
                        .fold(0u64, |m, (i, _)| m | (1 << i))
                })
                .collect(),
            extra: vec![0; p.decisions.len()],
        }
    }

    /// The same scope without budgets.
    pub fn without_budgets(&self) -> Scope {
        let mut s = self.clone();
        s.budgets.iter_mut().for_each(|b| *b = false);
        s
    }
}

/// One implication in force.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Req {
    /// Index into the problem's constraints.
    pub ci: usize,
    pub when: u32,
    pub when_alt: u32,
    pub then: u32,
    pub mask: u64,
}

/// One budget in force.
#[derive(Debug, Clone)]
pub(crate) struct Bud {
    /// Index into the problem's budgets.
    pub bi: usize,
    pub members: Vec<u32>,
    /// Instances still free (`None`: no limit; negative: over already).
    pub free_instances: Option<i128>,
    /// Cost still free.
    pub free_cost: Option<i128>,
}

/// The compiled problem.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub n: usize,
    pub cost: Vec<Vec<u64>>,
    pub inst: Vec<Vec<u32>>,
    /// Allowed alternatives of each decision, before propagation (`full` masks all).
    pub full: Vec<u64>,
    pub reqs: Vec<Req>,
    pub by_when: Vec<Vec<u32>>,
    pub by_then: Vec<Vec<u32>>,
    /// Forbids in force, canonically ordered: `(choice, constraint index)`.
    pub forbids: Vec<(Choice, usize)>,
    pub buds: Vec<Bud>,
    pub buds_of: Vec<Vec<u32>>,
    /// Decisions linked by implications (see [`Model::components`]).
    pub comps: Vec<Vec<u32>>,
}

fn mask_of(alts: &[usize]) -> u64 {
    alts.iter().fold(0u64, |m, &a| m | (1u64 << a))
}

impl Model {
    /// Compile `p` (validated) under `scope`.
    pub fn new(p: &Problem, scope: &Scope) -> Model {
        let n = p.decisions.len();
        let cost: Vec<Vec<u64>> = p
            .decisions
            .iter()
            .map(|d| d.alternatives.iter().map(|a| a.cost).collect())
            .collect();
        let inst: Vec<Vec<u32>> = p
            .decisions
            .iter()
            .map(|d| d.alternatives.iter().map(|a| a.instances).collect())
            .collect();
        let full: Vec<u64> = p
            .decisions
            .iter()
            .map(|d| match d.alternatives.len() {
                64 => u64::MAX,
                k => (1u64 << k) - 1,
            })
            .collect();
        let mut reqs = Vec::new();
        let mut forbids = Vec::new();
        for (ci, c) in p.constraints.iter().enumerate() {
            if !scope.constraints[ci] {
                continue;
            }
            match c {
                Constraint::Requires {
                    when, then, one_of, ..
                } => reqs.push(Req {
                    ci,
                    when: when.decision as u32,
                    when_alt: when.alternative as u32,
                    then: *then as u32,
                    mask: mask_of(one_of),
                }),
                Constraint::Forbid { choice, .. } => forbids.push((*choice, ci)),
            }
        }
        // canonical order: by content, then by reason, so a shuffled constraint list
        // propagates in the same order and records the same causes
        let reason = |ci: usize| p.constraints[ci].reason();
        reqs.sort_by(|a, b| {
            (a.when, a.when_alt, a.then, a.mask)
                .cmp(&(b.when, b.when_alt, b.then, b.mask))
                .then_with(|| reason(a.ci).cmp(reason(b.ci)))
        });
        forbids.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| reason(a.1).cmp(reason(b.1))));
        let mut by_when = vec![Vec::new(); n];
        let mut by_then = vec![Vec::new(); n];
        for (i, r) in reqs.iter().enumerate() {
            by_when[r.when as usize].push(i as u32);
            by_then[r.then as usize].push(i as u32);
        }
        let mut buds = Vec::new();
        let mut buds_of = vec![Vec::new(); n];
        for (bi, b) in p.budgets.iter().enumerate() {
            if !scope.budgets[bi] {
                continue;
            }
            let mut members: Vec<u32> = b.decisions.iter().map(|&d| d as u32).collect();
            members.sort_unstable();
            members.dedup();
            for &d in &members {
                buds_of[d as usize].push(buds.len() as u32);
            }
            buds.push(Bud {
                bi,
                members,
                free_instances: b
                    .max_instances
                    .map(|m| i128::from(m) - i128::from(b.already_used.instances)),
                free_cost: b
                    .max_cost
                    .map(|m| i128::from(m) - i128::from(b.already_used.cost)),
            });
        }
        let mut m = Model {
            n,
            cost,
            inst,
            full,
            reqs,
            by_when,
            by_then,
            forbids,
            buds,
            buds_of,
            comps: Vec::new(),
        };
        m.comps = m.components();
        m
    }

    /// Decisions linked by implications, each component in index order, components ordered
    /// by their first decision.
    fn components(&self) -> Vec<Vec<u32>> {
        let mut parent: Vec<u32> = (0..self.n as u32).collect();
        fn find(parent: &mut [u32], mut x: u32) -> u32 {
            while parent[x as usize] != x {
                let up = parent[parent[x as usize] as usize];
                parent[x as usize] = up;
                x = up;
            }
            x
        }
        for r in &self.reqs {
            let a = find(&mut parent, r.when);
            let b = find(&mut parent, r.then);
            if a != b {
                let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                parent[hi as usize] = lo;
            }
        }
        let mut slot: Vec<u32> = vec![u32::MAX; self.n];
        let mut out: Vec<Vec<u32>> = Vec::new();
        for d in 0..self.n as u32 {
            let root = find(&mut parent, d) as usize;
            if slot[root] == u32::MAX {
                slot[root] = out.len() as u32;
                out.push(Vec::new());
            }
            out[slot[root] as usize].push(d);
        }
        out
    }
}
