//! The exact solver: the least assignment under a fixed total order, why each decision came out
//! as it did, its runner-up, and for infeasible input a small conflicting set.
//!
//! Order: lower total cost, then fewer instances, then the alternative indices compared one
//! decision after the other (a tie goes to the earlier alternative of the earlier decision), in
//! *tie order*: the components (decisions linked by implications) by their first decision, the
//! decisions of each in index order. Tie order is index order whenever no implication links a
//! decision to a later one across an unlinked one; it depends on which implications exist, never
//! on the order of the constraint list. (Plain index order would make ties between components
//! that a budget couples interleave, and the search could no longer prune them.)
//!
//! Method, exact by construction:
//! 1. root: drop not-allowed and forbidden alternatives, propagate implications to a fixpoint
//!    (an alternative whose implication cannot be met is dropped; a chosen trigger restricts its
//!    target), recording why each alternative was dropped;
//! 2. split decisions into components linked by implications and solve each by branch and
//!    bound (see `search`): without budgets the components are independent, so the product of
//!    their optima is the optimum, and if it meets every budget it is the optimum with budgets
//!    (budgets only remove assignments);
//! 3. otherwise search the union of the components that budgets touch jointly, with budget
//!    pruning and a Lagrangian bound; components no budget touches keep their optima.
//!
//! Every pruning rule discards only assignments that cannot beat the incumbent, so the search
//! returns the least assignment; the node limit ([`Solver::max_nodes`]) turns a search that would
//! run too long into an error instead of a guess.

use super::model::{Model, Scope};
use super::problem::{Choice, Malformed, Problem, Reason, Usage};
use super::search::{multipliers, search, seed, Blocks, Limit, Removal, State};
use std::fmt;

/// Why a decision took its alternative: about the alternative that ranks best on its own
/// (lowest cost, then fewest instances, then order) when that is not the one chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// The chosen alternative is the cheapest allowed one.
    Cheapest,
    /// The cheaper `alternative` is not allowed by its own facts.
    NotAllowed {
        /// The cheaper alternative.
        alternative: usize,
        /// Its reasons.
        reasons: Vec<Reason>,
    },
    /// A forbid constraint rules the cheaper alternative out.
    Forbidden {
        /// The cheaper alternative.
        alternative: usize,
        /// Index of the constraint.
        constraint: usize,
    },
    /// Implications rule the cheaper alternative out whatever else is chosen.
    Required {
        /// The cheaper alternative.
        alternative: usize,
        /// Indices of the constraints that rule it out, ordered by reason.
        constraints: Vec<usize>,
    },
    /// The cheaper alternative is possible but the best assignment with it costs more in all
    /// (what it implies elsewhere outweighs its saving).
    Dearer {
        /// The cheaper alternative.
        alternative: usize,
        /// Total cost of the best assignment with it.
        total_cost: u64,
    },
    /// The best assignment with the cheaper alternative costs the same and uses as many
    /// instances; the decision order broke the tie.
    Tie {
        /// The alternative tied with.
        alternative: usize,
    },
    /// Every assignment with the cheaper alternative exceeds a budget.
    Budget {
        /// The cheaper alternative.
        alternative: usize,
        /// The budgets its cheapest assignment exceeds.
        budgets: Vec<usize>,
    },
    /// No assignment with the cheaper alternative meets the constraints (found by search,
    /// not by a single implication).
    Conflict {
        /// The cheaper alternative.
        alternative: usize,
    },
    /// The solve with the cheaper alternative exceeded [`Solver::explain_nodes`], or was not
    /// asked for ([`Solver::bindings`]); the solution is still optimal, only this explanation
    /// is missing.
    Unresolved {
        /// The cheaper alternative.
        alternative: usize,
    },
}

/// The cheapest assignment in which a decision takes a different alternative (exact: a full
/// solve with the chosen alternative removed, budgets included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerUp {
    /// The decision's alternative in that assignment.
    pub alternative: usize,
    /// That assignment's total cost.
    pub total_cost: u64,
    /// Its instances.
    pub total_instances: u64,
    /// How much more it costs than the solution.
    pub delta: u64,
}

/// The explanation of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// What decided it.
    pub binding: Binding,
    /// The next-best assignment with another alternative (`None`: no other alternative can be
    /// taken, or runner-ups were not asked for, or `runner_up_unresolved`).
    pub runner_up: Option<RunnerUp>,
    /// The runner-up's solve exceeded [`Solver::explain_nodes`].
    pub runner_up_unresolved: bool,
}

/// The least assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Solution {
    /// The chosen alternative of each decision.
    pub chosen: Vec<usize>,
    /// Total cost (micro-units per hour) of this branch's choices.
    pub cost: u64,
    /// New instances of this branch's choices.
    pub instances: u64,
    /// Per budget, what the team uses in all with this solution (its other branches included).
    pub budgets: Vec<Usage>,
    /// Per decision, why.
    pub explained: Vec<Explained>,
}

impl Solution {
    /// Why decision `d` took its alternative, in words: `cheapest allowed`,
    /// `share is forbidden: migration 0042 is not additive`, ...
    pub fn why(&self, p: &Problem, d: usize) -> String {
        let Some(e) = self.explained.get(d) else {
            return String::new();
        };
        let label = |a: usize| {
            p.decisions[d]
                .alternatives
                .get(a)
                .map_or_else(String::new, |x| x.label.to_string())
        };
        match &e.binding {
            Binding::Cheapest => "cheapest allowed".to_string(),
            Binding::NotAllowed {
                alternative,
                reasons,
            } => {
                let r: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                format!("{} is not allowed: {}", label(*alternative), r.join("; "))
            }
            Binding::Forbidden {
                alternative,
                constraint,
            } => format!(
                "{} is forbidden: {}",
                label(*alternative),
                p.constraints[*constraint].reason()
            ),
            Binding::Required {
                alternative,
                constraints,
            } => {
                let r: Vec<String> = constraints
                    .iter()
                    .filter_map(|&c| p.constraints.get(c))
                    .map(|c| c.reason().to_string())
                    .collect();
                format!("{} is ruled out: {}", label(*alternative), r.join("; "))
            }
            Binding::Dearer {
                alternative,
                total_cost,
            } => format!(
                "{} costs {} more in all ({} against {})",
                label(*alternative),
                total_cost.saturating_sub(self.cost),
                total_cost,
                self.cost
            ),
            Binding::Tie { alternative } => format!(
                "ties with {} on cost and instances; the decision order decides",
                label(*alternative)
            ),
            Binding::Budget {
                alternative,
                budgets,
            } => {
                let names: Vec<&str> = budgets
                    .iter()
                    .filter_map(|&b| p.budgets.get(b))
                    .map(|b| &*b.name)
                    .collect();
                format!(
                    "{} would exceed the budget of {}",
                    label(*alternative),
                    names.join(", ")
                )
            }
            Binding::Conflict { alternative } => format!(
                "{} admits no assignment meeting the constraints",
                label(*alternative)
            ),
            Binding::Unresolved { alternative } => format!(
                "{} is cheaper on its own; proving what it costs in all took too long",
                label(*alternative)
            ),
        }
    }
}

/// One member of a conflicting set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Conflict {
    /// A constraint (index into [`Problem::constraints`]).
    Constraint(usize),
    /// A budget (index into [`Problem::budgets`]).
    Budget(usize),
    /// An alternative's own not-allowed facts.
    NotAllowed(Choice),
}

/// No assignment meets every constraint and budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Infeasible {
    /// In words.
    pub reason: String,
    /// Constraints, budgets and not-allowed facts that cannot hold together; relaxing any one
    /// of them helps when `minimal`.
    pub conflicting: Vec<Conflict>,
    /// Whether `conflicting` was shrunk until no member can be dropped (the shrinking stops
    /// after a bounded number of solves).
    pub minimal: bool,
    /// The cheapest solution when budgets are ignored, if the constraints alone can be met.
    pub cheapest_without_budgets: Option<Box<Solution>>,
}

impl Infeasible {
    /// The conflicting set in words, one line each.
    pub fn describe(&self, p: &Problem) -> Vec<String> {
        self.conflicting
            .iter()
            .map(|c| match c {
                Conflict::Constraint(i) => p
                    .constraints
                    .get(*i)
                    .map_or_else(String::new, |c| c.reason().to_string()),
                Conflict::Budget(i) => p
                    .budgets
                    .get(*i)
                    .map_or_else(String::new, |b| format!("budget of {}", b.name)),
                Conflict::NotAllowed(ch) => {
                    let reasons = match &p.alternative(*ch).allowed {
                        Err(r) => r.iter().map(ToString::to_string).collect::<Vec<_>>(),
                        Ok(()) => Vec::new(),
                    };
                    format!("{} is not allowed: {}", p.describe(*ch), reasons.join("; "))
                }
            })
            .collect()
    }
}

impl fmt::Display for Infeasible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Why no solution came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SolveError {
    /// The problem cannot be met.
    #[error("no plan meets the constraints: {0}")]
    Infeasible(Box<Infeasible>),
    /// The problem is not well formed.
    #[error("malformed problem: {0}")]
    Malformed(#[from] Malformed),
    /// The search exceeded its node limit (the problem is too hard to solve exactly within it).
    #[error("search stopped after {0} nodes without proving the optimum")]
    Limit(u64),
}

/// The solver's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Solver {
    /// Most search nodes per solve (runner-ups and conflict shrinking are solves of their own).
    pub max_nodes: u64,
    /// Whether to compute each decision's exact runner-up (one extra solve per decision, of
    /// that decision's component only when budgets do not bind).
    pub runner_ups: bool,
    /// Most solves spent shrinking a conflicting set.
    pub max_conflict_solves: usize,
    /// Most search nodes per explanatory solve (a binding or a runner-up); beyond it the
    /// explanation is marked unresolved instead of failing the solve.
    pub explain_nodes: u64,
    /// Whether to solve again to explain a decision whose cheapest alternative is possible
    /// but not chosen (`Dearer`, `Tie`, `Budget`, `Conflict`); without it such decisions say
    /// `Unresolved`. Reasons found at the root (not allowed, forbidden, ruled out) are free.
    pub bindings: bool,
    /// Test support: whether the budget search starts from the Lagrangian heuristic's
    /// assignment (without it, the tests see the bounds alone at work).
    #[doc(hidden)]
    pub seed: bool,
}

impl Default for Solver {
    fn default() -> Self {
        Solver {
            max_nodes: 5_000_000,
            runner_ups: true,
            max_conflict_solves: 256,
            explain_nodes: 200_000,
            bindings: true,
            seed: true,
        }
    }
}

/// Solve with the default settings.
pub fn solve(p: &Problem) -> Result<Solution, SolveError> {
    Solver::default().solve(p)
}

/// What explanatory solves start from.
struct Ctx<'a> {
    p: &'a Problem,
    m: &'a Model,
    scope: &'a Scope,
    /// The propagated root of the main solve.
    base: &'a State,
    /// The main solve's budget-free optimum.
    free: &'a [usize],
}

/// What one solve found.
#[derive(Debug, Clone)]
enum Outcome {
    Feasible {
        chosen: Vec<usize>,
        /// The optimum without budgets (each component's optimum), reused by later solves.
        free: Vec<usize>,
    },
    /// Propagation alone empties a decision's domain.
    Empty {
        decision: usize,
        causes: Vec<Vec<Option<Removal>>>,
    },
    /// Search shows a component has no assignment.
    NoAssignment { component: Vec<u32> },
    /// Assignments exist, but none within the budgets.
    OverBudget { free: Vec<usize>, group: Vec<u32> },
}

/// The root state of `p` under `scope`: propagated, with the causes of removals.
type Root = (Model, State, Vec<Vec<Option<Removal>>>, Result<(), u32>);

fn root(p: &Problem, scope: &Scope) -> Root {
    let m = Model::new(p, scope);
    let (st, causes, r) = root_state(p, &m, scope);
    (m, st, causes, r)
}

/// The propagated root of `m` (compiled under a scope with the same constraints and budgets as
/// `scope`) with `scope`'s removals.
fn root_state(
    p: &Problem,
    m: &Model,
    scope: &Scope,
) -> (State, Vec<Vec<Option<Removal>>>, Result<(), u32>) {
    let mut causes: Vec<Vec<Option<Removal>>> = p
        .decisions
        .iter()
        .map(|d| vec![None; d.alternatives.len()])
        .collect();
    let mut init: Vec<u64> = m.full.clone();
    for d in 0..m.n {
        let mut set = |mask: u64, why: Removal| {
            let gone = init[d] & mask;
            for (a, c) in causes[d].iter_mut().enumerate() {
                if gone & (1 << a) != 0 {
                    *c = Some(why);
                }
            }
            init[d] &= !mask;
        };
        set(scope.not_allowed[d], Removal::NotAllowed);
        set(scope.extra[d], Removal::Extra);
    }
    for &(c, ci) in &m.forbids {
        let bit = 1u64 << c.alternative;
        if init[c.decision] & bit != 0 {
            init[c.decision] &= !bit;
            causes[c.decision][c.alternative] = Some(Removal::Forbid(ci));
        }
    }
    let mut st = State::new(m, init);
    st.queue_all();
    let r = st.propagate(m, Some(&mut causes));
    st.clear_trail();
    (st, causes, r)
}

fn usage(p: &Problem, chosen: &[usize], ds: impl Iterator<Item = usize>) -> (u64, u64) {
    ds.fold((0u64, 0u64), |(c, i), d| {
        let a = &p.decisions[d].alternatives[chosen[d]];
        (c.saturating_add(a.cost), i + u64::from(a.instances))
    })
}

fn over_budgets(p: &Problem, m: &Model, chosen: &[usize]) -> Vec<usize> {
    m.buds
        .iter()
        .filter(|b| {
            let (c, i) = usage(p, chosen, b.members.iter().map(|&d| d as usize));
            b.free_instances.is_some_and(|f| i128::from(i) > f)
                || b.free_cost.is_some_and(|f| i128::from(c) > f)
        })
        .map(|b| b.bi)
        .collect()
}

impl Solver {
    /// The least assignment of `p`, explained.
    pub fn solve(&self, p: &Problem) -> Result<Solution, SolveError> {
        p.validate()?;
        self.solve_scope(p, &Scope::full(p))
    }

    fn solve_scope(&self, p: &Problem, scope: &Scope) -> Result<Solution, SolveError> {
        let mut nodes = 0u64;
        let (m, st, causes, r) = root(p, scope);
        let base = st.clone();
        let out = self.optimize(p, &m, st, r, &causes, None, &mut nodes)?;
        match out {
            Outcome::Feasible { chosen, free } => {
                let ctx = Ctx {
                    p,
                    m: &m,
                    scope,
                    base: &base,
                    free: &free,
                };
                self.explain(&ctx, &causes, chosen)
            }
            other => Err(SolveError::Infeasible(Box::new(
                self.infeasible(p, scope, &m, other)?,
            ))),
        }
    }

    /// One solve from a propagated root. `hint`: a previous budget-free optimum and the one
    /// decision whose scope changed; components without it keep their previous optimum.
    #[allow(clippy::too_many_arguments)]
    fn optimize(
        &self,
        p: &Problem,
        m: &Model,
        mut st: State,
        root: Result<(), u32>,
        causes: &[Vec<Option<Removal>>],
        hint: Option<(&[usize], usize)>,
        nodes: &mut u64,
    ) -> Result<Outcome, SolveError> {
        if let Err(d) = root {
            return Ok(Outcome::Empty {
                decision: d as usize,
                causes: causes.to_vec(),
            });
        }
        let limit = |_: Limit| SolveError::Limit(self.max_nodes);
        let comps = &m.comps;
        let mut free = vec![0usize; m.n];
        for comp in comps {
            if let Some((base, focus)) = hint {
                if !comp.contains(&(focus as u32)) {
                    for &d in comp {
                        free[d as usize] = base[d as usize];
                    }
                    continue;
                }
            }
            let best = search(m, &mut st, comp, false, None, None, self.max_nodes, nodes)
                .map_err(limit)?;
            let Some(best) = best else {
                return Ok(Outcome::NoAssignment {
                    component: comp.clone(),
                });
            };
            for (k, &d) in comp.iter().enumerate() {
                free[d as usize] = usize::from(best.vals[k]);
            }
        }
        if over_budgets(p, m, &free).is_empty() {
            return Ok(Outcome::Feasible {
                chosen: free.clone(),
                free,
            });
        }
        let mut touched = vec![false; m.n];
        for b in &m.buds {
            for &d in &b.members {
                touched[d as usize] = true;
            }
        }
        let coupled: Vec<Vec<u32>> = comps
            .iter()
            .filter(|c| c.iter().any(|&d| touched[d as usize]))
            .cloned()
            .collect();
        let order: Vec<u32> = coupled.iter().flatten().copied().collect();
        let mut group = order.clone();
        group.sort_unstable();
        if !st.budgets_ok(m) {
            return Ok(Outcome::OverBudget { free, group });
        }
        // the seed's multiplier accounts for what implications force; the per-decision one
        // does not, so it is only the fallback
        let start = seed(m, &st, &coupled, &order, self.max_nodes, nodes).map_err(limit)?;
        let lambda: Vec<u64> = match &start {
            Some((_, l)) => m
                .buds
                .iter()
                .map(|b| if b.free_instances.is_some() { *l } else { 0 })
                .collect(),
            None => multipliers(m, &st.dom),
        };
        let start = if self.seed {
            start.map(|(b, _)| b)
        } else {
            None
        };
        st.reweight(m, &lambda);
        let blocks = Blocks::new(m, &st, &coupled, self.max_nodes, nodes).map_err(limit)?;
        let best = search(
            m,
            &mut st,
            &order,
            true,
            blocks.as_ref(),
            start,
            self.max_nodes,
            nodes,
        )
        .map_err(limit)?;
        let Some(best) = best else {
            return Ok(Outcome::OverBudget { free, group });
        };
        let mut chosen = free.clone();
        for (k, &d) in order.iter().enumerate() {
            chosen[d as usize] = usize::from(best.vals[k]);
        }
        Ok(Outcome::Feasible { chosen, free })
    }

    /// Solve again with the alternatives `gone` of decision `focus` removed, from the
    /// propagated root `ctx.base` (propagation to a fixpoint is unique, so removing them from
    /// the root's fixpoint and propagating reaches the fixpoint a fresh root would), reusing
    /// the budget-free optimum `ctx.free` outside `focus`'s component. `learn`: whether an
    /// empty domain needs its causes (`Outcome::Empty` then traces back to the constraints);
    /// without it that outcome carries no causes, which spares a fresh root per forced
    /// decision.
    fn resolve(
        &self,
        ctx: &Ctx<'_>,
        focus: usize,
        gone: u64,
        learn: bool,
    ) -> Result<Outcome, SolveError> {
        let mut nodes = 0;
        let empty = |decision: usize| Outcome::Empty {
            decision,
            causes: Vec::new(),
        };
        if !learn && ctx.base.dom[focus] & !gone == 0 {
            return Ok(empty(focus));
        }
        let mut st = ctx.base.clone();
        let r = st.restrict(ctx.m, focus, !gone);
        if let (Err(d), false) = (r, learn) {
            return Ok(empty(d as usize));
        }
        if r.is_err() {
            // rare: redo from scratch to learn why
            let mut s = ctx.scope.clone();
            s.extra[focus] |= gone;
            let (st, causes, r) = root_state(ctx.p, ctx.m, &s);
            return self.optimize(ctx.p, ctx.m, st, r, &causes, None, &mut nodes);
        }
        self.optimize(
            ctx.p,
            ctx.m,
            st,
            r,
            &[],
            Some((ctx.free, focus)),
            &mut nodes,
        )
    }

    fn explain(
        &self,
        ctx: &Ctx<'_>,
        causes: &[Vec<Option<Removal>>],
        chosen: Vec<usize>,
    ) -> Result<Solution, SolveError> {
        let (p, m) = (ctx.p, ctx.m);
        let (cost, instances) = usage(p, &chosen, 0..m.n);
        let budgets = p
            .budgets
            .iter()
            .map(|b| {
                let mut ds = b.decisions.clone();
                ds.sort_unstable();
                ds.dedup();
                let (c, i) = usage(p, &chosen, ds.into_iter());
                Usage {
                    instances: b.already_used.instances.saturating_add(i),
                    cost: b.already_used.cost.saturating_add(c),
                }
            })
            .collect();
        let mut explained = Vec::with_capacity(m.n);
        for (d, &c) in chosen.iter().enumerate() {
            let (runner_up, unresolved) = if self.runner_ups {
                match self.runner_up(ctx, d, c, cost)? {
                    Ok(r) => (r, false),
                    Err(()) => (None, true),
                }
            } else {
                (None, false)
            };
            let binding = self.binding(ctx, causes, d, c, cost, instances, runner_up)?;
            explained.push(Explained {
                binding,
                runner_up,
                runner_up_unresolved: unresolved,
            });
        }
        Ok(Solution {
            chosen,
            cost,
            instances,
            budgets,
            explained,
        })
    }

    fn runner_up(
        &self,
        ctx: &Ctx<'_>,
        d: usize,
        chosen: usize,
        cost: u64,
    ) -> Result<Result<Option<RunnerUp>, ()>, SolveError> {
        let p = ctx.p;
        let r = self.explanatory().resolve(ctx, d, 1u64 << chosen, false);
        if let Err(SolveError::Limit(_)) = r {
            return Ok(Err(()));
        }
        Ok(Ok(match r? {
            Outcome::Feasible { chosen: c, .. } => {
                let (tc, ti) = usage(p, &c, 0..c.len());
                Some(RunnerUp {
                    alternative: c[d],
                    total_cost: tc,
                    total_instances: ti,
                    delta: tc.saturating_sub(cost),
                })
            }
            _ => None,
        }))
    }

    /// The settings for explanatory solves (bindings, runner-ups).
    fn explanatory(&self) -> Solver {
        Solver {
            max_nodes: self.explain_nodes,
            ..*self
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn binding(
        &self,
        ctx: &Ctx<'_>,
        causes: &[Vec<Option<Removal>>],
        d: usize,
        chosen: usize,
        cost: u64,
        instances: u64,
        runner_up: Option<RunnerUp>,
    ) -> Result<Binding, SolveError> {
        let (p, m) = (ctx.p, ctx.m);
        let alts = &p.decisions[d].alternatives;
        let rank = |a: usize| (alts[a].cost, alts[a].instances, a);
        let Some(best) = (0..alts.len()).min_by_key(|&a| rank(a)) else {
            return Ok(Binding::Cheapest);
        };
        if best == chosen {
            return Ok(Binding::Cheapest);
        }
        let alternative = best;
        match causes[d][best] {
            Some(Removal::NotAllowed) => {
                let reasons = alts[best].allowed.clone().err().unwrap_or_default();
                return Ok(Binding::NotAllowed {
                    alternative,
                    reasons,
                });
            }
            Some(Removal::Forbid(constraint)) => {
                return Ok(Binding::Forbidden {
                    alternative,
                    constraint,
                })
            }
            Some(Removal::Forward(constraint) | Removal::Backward(constraint)) => {
                return Ok(Binding::Required {
                    alternative,
                    constraints: vec![constraint],
                })
            }
            Some(Removal::Extra) => return Ok(Binding::Conflict { alternative }),
            None => {}
        }
        let totals = match runner_up {
            Some(r) if r.alternative == best => Some((r.total_cost, r.total_instances)),
            _ if !self.bindings => return Ok(Binding::Unresolved { alternative }),
            _ => {
                let gone = all_of(alts.len()) & !(1u64 << best);
                let r = self.explanatory().resolve(ctx, d, gone, true);
                if let Err(SolveError::Limit(_)) = r {
                    return Ok(Binding::Unresolved { alternative });
                }
                match r? {
                    Outcome::Feasible { chosen: c, .. } => Some(usage(p, &c, 0..c.len())),
                    Outcome::OverBudget { free: f, .. } => {
                        return Ok(Binding::Budget {
                            alternative,
                            budgets: over_budgets(p, m, &f),
                        });
                    }
                    Outcome::Empty { decision, causes } => {
                        let mut constraints: Vec<usize> = trace(decision, &causes, m)
                            .into_iter()
                            .filter_map(|c| match c {
                                Conflict::Constraint(i) => Some(i),
                                _ => None,
                            })
                            .collect();
                        constraints.sort_by(|&a, &b| {
                            p.constraints[a]
                                .reason()
                                .cmp(p.constraints[b].reason())
                                .then(a.cmp(&b))
                        });
                        if constraints.is_empty() {
                            return Ok(Binding::Conflict { alternative });
                        }
                        return Ok(Binding::Required {
                            alternative,
                            constraints,
                        });
                    }
                    _ => return Ok(Binding::Conflict { alternative }),
                }
            }
        };
        Ok(match totals {
            Some((c, i)) if (c, i) == (cost, instances) => Binding::Tie { alternative },
            Some((c, _)) => Binding::Dearer {
                alternative,
                total_cost: c,
            },
            None => Binding::Conflict { alternative },
        })
    }

    fn infeasible(
        &self,
        p: &Problem,
        scope: &Scope,
        m: &Model,
        out: Outcome,
    ) -> Result<Infeasible, SolveError> {
        let name = |d: usize| p.decisions[d].name.to_string();
        let (reason, universe, relaxed) = match out {
            Outcome::Empty { decision, causes } => (
                format!("no alternative of {} meets the constraints", name(decision)),
                trace(decision, &causes, m),
                None,
            ),
            Outcome::NoAssignment { component } => {
                let names: Vec<String> = component.iter().map(|&d| name(d as usize)).collect();
                (
                    format!(
                        "no assignment of {} meets the constraints together",
                        names.join(", ")
                    ),
                    within(p, scope, &component, false),
                    None,
                )
            }
            Outcome::OverBudget { free, group } => {
                let over: Vec<String> = over_budgets(p, m, &free)
                    .into_iter()
                    .map(|b| p.budgets[b].name.to_string())
                    .collect();
                let relaxed = self.solve_scope(p, &scope.without_budgets()).ok();
                (
                    format!(
                        "the budget of {} cannot hold what the constraints require",
                        over.join(", ")
                    ),
                    within(p, scope, &group, true),
                    relaxed,
                )
            }
            Outcome::Feasible { .. } => (String::new(), Vec::new(), None),
        };
        let (conflicting, minimal) = self.shrink(p, universe);
        Ok(Infeasible {
            reason,
            conflicting,
            minimal,
            cheapest_without_budgets: relaxed.map(Box::new),
        })
    }

    /// Shrink a conflicting set: drop chunks of members while what is left stays infeasible,
    /// halving the chunk down to single members.
    fn shrink(&self, p: &Problem, mut keep: Vec<Conflict>) -> (Vec<Conflict>, bool) {
        let quick = Solver {
            runner_ups: false,
            max_nodes: self.explain_nodes,
            ..*self
        };
        let mut solves = 0usize;
        let mut exact = true;
        let mut infeasible = |set: &[Conflict]| -> Option<bool> {
            if solves >= self.max_conflict_solves {
                return None;
            }
            solves += 1;
            let scope = scope_of(p, set);
            let (m, st, causes, r) = root(p, &scope);
            let mut nodes = 0;
            match quick.optimize(p, &m, st, r, &causes, None, &mut nodes) {
                Ok(Outcome::Feasible { .. }) => Some(false),
                Err(_) => {
                    // unknown: keep the member, and do not claim minimality
                    exact = false;
                    Some(false)
                }
                Ok(_) => Some(true),
            }
        };
        let mut chunk = keep.len().div_ceil(2).max(1);
        loop {
            let mut i = 0;
            while i < keep.len() {
                let end = (i + chunk).min(keep.len());
                let rest: Vec<Conflict> = keep[..i].iter().chain(&keep[end..]).cloned().collect();
                match infeasible(&rest) {
                    Some(true) => keep = rest,
                    Some(false) => i = end,
                    None => return (keep, false),
                }
            }
            if chunk == 1 {
                return (keep, exact);
            }
            chunk = chunk.div_ceil(2);
        }
    }
}

/// The mask of `k` alternatives.
fn all_of(k: usize) -> u64 {
    if k >= 64 {
        u64::MAX
    } else {
        (1u64 << k) - 1
    }
}

/// The scope in which only `set` holds.
fn scope_of(p: &Problem, set: &[Conflict]) -> Scope {
    let mut s = Scope {
        constraints: vec![false; p.constraints.len()],
        budgets: vec![false; p.budgets.len()],
        not_allowed: vec![0; p.decisions.len()],
        extra: vec![0; p.decisions.len()],
    };
    for c in set {
        match *c {
            Conflict::Constraint(i) => s.constraints[i] = true,
            Conflict::Budget(i) => s.budgets[i] = true,
            Conflict::NotAllowed(ch) => s.not_allowed[ch.decision] |= 1 << ch.alternative,
        }
    }
    s
}

/// Everything in force that touches the decisions of `group` (and the budgets, if asked).
fn within(p: &Problem, scope: &Scope, group: &[u32], budgets: bool) -> Vec<Conflict> {
    let mut inside = vec![false; p.decisions.len()];
    for &d in group {
        inside[d as usize] = true;
    }
    let mut out = Vec::new();
    if budgets {
        out.extend(
            (0..p.budgets.len())
                .filter(|&b| scope.budgets[b])
                .map(Conflict::Budget),
        );
    }
    for (ci, c) in p.constraints.iter().enumerate() {
        let d = match c {
            super::problem::Constraint::Requires { when, .. } => when.decision,
            super::problem::Constraint::Forbid { choice, .. } => choice.decision,
        };
        if scope.constraints[ci] && inside[d] {
            out.push(Conflict::Constraint(ci));
        }
    }
    for &d in group {
        let d = d as usize;
        for a in 0..p.decisions[d].alternatives.len() {
            if scope.not_allowed[d] & (1 << a) != 0 {
                out.push(Conflict::NotAllowed(Choice::new(d, a)));
            }
        }
    }
    out
}

/// The removals that emptied `decision`'s domain at the root, followed back to their causes.
fn trace(decision: usize, causes: &[Vec<Option<Removal>>], m: &Model) -> Vec<Conflict> {
    let mut seen: Vec<Vec<bool>> = causes.iter().map(|c| vec![false; c.len()]).collect();
    let mut out = std::collections::BTreeSet::new();
    let mut stack: Vec<(usize, usize)> =
        (0..causes[decision].len()).map(|a| (decision, a)).collect();
    let req = |ci: usize| m.reqs.iter().find(|r| r.ci == ci).copied();
    while let Some((d, a)) = stack.pop() {
        if std::mem::replace(&mut seen[d][a], true) {
            continue;
        }
        match causes[d][a] {
            Some(Removal::NotAllowed) => {
                out.insert(Conflict::NotAllowed(Choice::new(d, a)));
            }
            Some(Removal::Forbid(ci)) => {
                out.insert(Conflict::Constraint(ci));
            }
            Some(Removal::Forward(ci)) => {
                out.insert(Conflict::Constraint(ci));
                if let Some(r) = req(ci) {
                    let w = r.when as usize;
                    stack.extend(
                        (0..causes[w].len())
                            .filter(|&b| b != r.when_alt as usize)
                            .map(|b| (w, b)),
                    );
                }
            }
            Some(Removal::Backward(ci)) => {
                out.insert(Conflict::Constraint(ci));
                if let Some(r) = req(ci) {
                    let t = r.then as usize;
                    stack.extend(
                        (0..causes[t].len())
                            .filter(|&b| r.mask & (1 << b) != 0)
                            .map(|b| (t, b)),
                    );
                }
            }
            Some(Removal::Extra) | None => {}
        }
    }
    out.into_iter().collect()
}
