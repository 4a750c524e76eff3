//! The exact solver against exhaustive enumeration on random problems (up to 12 decisions of
//! 2-4 alternatives, random implications, forbids, not-allowed alternatives and budgets, small
//! costs so ties are common): the same optimum under the same order, feasible assignments,
//! agreement on infeasibility, exact runner-ups, minimal conflicting sets, and results that do
//! not depend on running twice or on the order of the constraint list.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use microstax_planner::solve::brute::{check, minimum};
use microstax_planner::solve::{
    Alternative, Binding, Budget, Choice, Conflict, Constraint, DecisionVar, Problem, Solution,
    SolveError, Solver, SubjectKind, Usage,
};
use proptest::prelude::*;

/// Most assignments a generated problem may have, so enumeration stays fast.
const MAX_ASSIGNMENTS: usize = 20_000;

type Alt = (u64, u32, bool);

fn problem_strategy() -> impl Strategy<Value = Problem> {
    let alts = prop::collection::vec((0u64..12, 0u32..3, prop::bool::weighted(0.85)), 2..=4);
    let decisions = prop::collection::vec(alts, 1..=12);
    let reqs = prop::collection::vec((0usize..12, 0usize..4, 0usize..12, 1u64..16), 0..14);
    let forbids = prop::collection::vec((0usize..12, 0usize..4), 0..4);
    let budget = (
        prop::collection::vec(any::<bool>(), 12),
        prop::option::of(0u64..8),
        prop::option::of(0u64..50),
        0u64..3,
        0u64..10,
    );
    let budgets = prop::collection::vec(budget, 0..=2);
    (decisions, reqs, forbids, budgets)
        .prop_map(|(ds, reqs, forbids, budgets)| build(ds, reqs, forbids, budgets))
}

type BudgetGen = (Vec<bool>, Option<u64>, Option<u64>, u64, u64);

fn build(
    mut ds: Vec<Vec<Alt>>,
    reqs: Vec<(usize, usize, usize, u64)>,
    forbids: Vec<(usize, usize)>,
    budgets: Vec<BudgetGen>,
) -> Problem {
    while ds.iter().map(Vec::len).product::<usize>() > MAX_ASSIGNMENTS {
        ds.pop();
    }
    let n = ds.len();
    let decisions: Vec<DecisionVar> = ds
        .iter()
        .enumerate()
        .map(|(i, alts)| {
            let alternatives = alts
                .iter()
                .enumerate()
                .map(|(a, &(cost, inst, ok))| {
                    let x = Alternative::new(format!("alt{a}"), cost, inst);
                    if ok {
                        x
                    } else {
                        x.not_allowed(format!("d{i} alt{a} not allowed"))
                    }
                })
                .collect();
            DecisionVar::new(format!("d{i}"), SubjectKind::Service, alternatives)
        })
        .collect();
    let mut constraints = Vec::new();
    for (k, (d, a, d2, mask)) in reqs.into_iter().enumerate() {
        let (d, d2) = (d % n, d2 % n);
        let a = a % ds[d].len();
        let one_of: Vec<usize> = (0..ds[d2].len()).filter(|b| mask & (1 << b) != 0).collect();
        constraints.push(Constraint::Requires {
            when: Choice::new(d, a),
            then: d2,
            one_of,
            reason: format!("rule {k}").into(),
        });
    }
    for (k, (d, a)) in forbids.into_iter().enumerate() {
        let d = d % n;
        constraints.push(Constraint::Forbid {
            choice: Choice::new(d, a % ds[d].len()),
            reason: format!("forbid {k}").into(),
        });
    }
    let budgets = budgets
        .into_iter()
        .enumerate()
        .map(|(k, (members, mi, mc, ui, uc))| Budget {
            name: format!("team{k}").into(),
            decisions: (0..n).filter(|&d| members[d]).collect(),
            max_instances: mi,
            max_cost: mc,
            already_used: Usage {
                instances: ui,
                cost: uc,
            },
        })
        .collect();
    Problem {
        decisions,
        constraints,
        budgets,
    }
}

fn quick() -> Solver {
    Solver {
        runner_ups: false,
        ..Solver::default()
    }
}

/// A permutation of `0..n` from a seed (xorshift Fisher-Yates).
fn permutation(n: usize, mut seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    seed |= 1;
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    v
}

/// Binding with its constraint index mapped through `f`.
fn map_binding(b: &Binding, f: impl Fn(usize) -> usize + Copy) -> Binding {
    match b.clone() {
        Binding::Forbidden {
            alternative,
            constraint,
        } => Binding::Forbidden {
            alternative,
            constraint: f(constraint),
        },
        Binding::Required {
            alternative,
            constraints,
        } => Binding::Required {
            alternative,
            constraints: constraints.into_iter().map(f).collect(),
        },
        other => other,
    }
}

/// The problem in which only `set` holds (other constraints and budgets dropped, other
/// not-allowed alternatives allowed).
fn only(p: &Problem, set: &[Conflict]) -> Problem {
    let mut q = p.clone();
    for (d, dv) in q.decisions.iter_mut().enumerate() {
        for (a, alt) in dv.alternatives.iter_mut().enumerate() {
            if !set.contains(&Conflict::NotAllowed(Choice::new(d, a))) {
                alt.allowed = Ok(());
            }
        }
    }
    q.constraints = (0..p.constraints.len())
        .filter(|&i| set.contains(&Conflict::Constraint(i)))
        .map(|i| p.constraints[i].clone())
        .collect();
    q.budgets = (0..p.budgets.len())
        .filter(|&i| set.contains(&Conflict::Budget(i)))
        .map(|i| p.budgets[i].clone())
        .collect();
    q
}

fn assert_matches_brute(
    p: &Problem,
    s: &Result<Solution, SolveError>,
) -> Result<(), TestCaseError> {
    let brute = minimum(p, false);
    match (s, &brute) {
        (Ok(s), Some(b)) => {
            prop_assert_eq!(check(p, &s.chosen), Ok((s.cost, s.instances)));
            prop_assert_eq!(
                (s.cost, s.instances, &s.chosen),
                (b.cost, b.instances, &b.chosen)
            );
        }
        (Err(SolveError::Infeasible(inf)), None) => {
            let relaxed = minimum(p, true);
            let got = inf
                .cheapest_without_budgets
                .as_ref()
                .map(|s| s.chosen.clone());
            prop_assert_eq!(got, relaxed.map(|b| b.chosen));
        }
        (s, b) => prop_assert!(false, "solver {:?} but brute force {:?}", s, b),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Same optimum (cost, instances and the assignment itself, ties included) as enumeration;
    /// the assignment passes an independent check; infeasible exactly when enumeration finds
    /// nothing, with the cheapest plan without budgets.
    #[test]
    fn optimum_equals_brute_force(p in problem_strategy()) {
        let s = quick().solve(&p);
        assert_matches_brute(&p, &s)?;
        // the bounds alone, without the heuristic's incumbent (which can hide a bound that
        // prunes too much)
        let unseeded = Solver { seed: false, ..Solver::default() };
        let u = unseeded.solve(&p);
        assert_matches_brute(&p, &u)?;
        if let (Ok(s), Ok(u)) = (&s, &u) {
            prop_assert_eq!(&s.chosen, &u.chosen);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    /// Each runner-up is the least assignment with that decision's chosen alternative removed.
    #[test]
    fn runner_ups_are_exact(p in problem_strategy()) {
        for seeded in [true, false] {
            let solver = Solver { seed: seeded, ..Solver::default() };
            let Ok(s) = solver.solve(&p) else { return Ok(()) };
            for (d, e) in s.explained.iter().enumerate() {
                prop_assert!(!e.runner_up_unresolved);
                let mut q = p.clone();
                q.constraints.push(Constraint::Forbid {
                    choice: Choice::new(d, s.chosen[d]),
                    reason: "runner-up".into(),
                });
                let b = minimum(&q, false);
                let got = e.runner_up.map(|r| (r.alternative, r.total_cost, r.total_instances));
                prop_assert_eq!(got, b.map(|b| (b.chosen[d], b.cost, b.instances)));
                if let Some(r) = e.runner_up {
                    prop_assert_eq!(r.delta, r.total_cost - s.cost);
                }
            }
        }
    }

    /// Solving twice gives the identical solution; shuffling the constraint list gives the
    /// same assignment, totals, runner-ups and bindings (constraint indices mapped).
    #[test]
    fn deterministic_under_repeat_and_shuffle(p in problem_strategy(), seed in any::<u64>()) {
        let a = Solver::default().solve(&p);
        let b = Solver::default().solve(&p);
        prop_assert_eq!(&a, &b);
        let perm = permutation(p.constraints.len(), seed);
        let mut q = p.clone();
        // constraint i of q is constraint perm[i] of p
        q.constraints = perm.iter().map(|&i| p.constraints[i].clone()).collect();
        let c = Solver::default().solve(&q);
        match (&a, &c) {
            (Ok(a), Ok(c)) => {
                prop_assert_eq!(&a.chosen, &c.chosen);
                prop_assert_eq!((a.cost, a.instances), (c.cost, c.instances));
                for (x, y) in a.explained.iter().zip(&c.explained) {
                    prop_assert_eq!(x.runner_up, y.runner_up);
                    prop_assert_eq!(&x.binding, &map_binding(&y.binding, |i| perm[i]));
                }
            }
            (Err(SolveError::Infeasible(_)), Err(SolveError::Infeasible(_))) => {}
            (a, c) => prop_assert!(false, "{:?} against {:?}", a, c),
        }
    }

    /// A conflicting set marked minimal is infeasible on its own, and dropping any member of
    /// it makes it feasible.
    #[test]
    fn conflicting_sets_are_minimal(p in problem_strategy()) {
        let Err(SolveError::Infeasible(inf)) = quick().solve(&p) else { return Ok(()) };
        prop_assert!(!inf.conflicting.is_empty());
        prop_assert!(minimum(&only(&p, &inf.conflicting), false).is_none());
        if inf.minimal {
            for i in 0..inf.conflicting.len() {
                let mut rest = inf.conflicting.clone();
                rest.remove(i);
                prop_assert!(minimum(&only(&p, &rest), false).is_some(), "member {} is redundant", i);
            }
        }
    }
}

/// The worked example of the README: a store whose migration is not additive cannot be shared,
/// so the per-branch schema wins over forking the store, and its writers must fork.
#[test]
fn store_share_forbidden_by_migration() {
    let p = Problem {
        decisions: vec![
            DecisionVar::new(
                "orders-db",
                SubjectKind::Store,
                vec![
                    Alternative::new("share", 0, 0).not_allowed("migration 0042 is not additive"),
                    Alternative::new("per-branch-schema", 1_000, 0),
                    Alternative::new("forked-instance", 50_000, 1),
                ],
            ),
            DecisionVar::new(
                "billing",
                SubjectKind::Service,
                vec![
                    Alternative::new("reuse", 0, 0),
                    Alternative::new("own-instance", 20_000, 1),
                    Alternative::new("scaled-to-zero", 4_000, 1),
                ],
            ),
        ],
        constraints: vec![
            Constraint::Requires {
                when: Choice::new(0, 1),
                then: 1,
                one_of: vec![1, 2],
                reason: "billing writes orders-db, isolated per branch".into(),
            },
            Constraint::Requires {
                when: Choice::new(0, 2),
                then: 1,
                one_of: vec![1, 2],
                reason: "billing writes orders-db, forked".into(),
            },
        ],
        budgets: vec![],
    };
    let s = Solver::default().solve(&p).unwrap();
    assert_eq!(s.chosen, vec![1, 2]);
    assert_eq!(s.cost, 5_000);
    assert_eq!(
        s.why(&p, 0),
        "share is not allowed: migration 0042 is not additive"
    );
    assert_eq!(
        s.why(&p, 1),
        "reuse is ruled out: billing writes orders-db, forked; \
         billing writes orders-db, isolated per branch"
    );
    let r = s.explained[1].runner_up.unwrap();
    assert_eq!((r.alternative, r.delta), (1, 16_000));
    // a team at its instance limit cannot take the scaled-to-zero writer
    let mut tight = p.clone();
    tight.budgets.push(Budget {
        name: "payments".into(),
        decisions: vec![0, 1],
        max_instances: Some(3),
        max_cost: None,
        already_used: Usage {
            instances: 3,
            cost: 0,
        },
    });
    let Err(SolveError::Infeasible(inf)) = Solver::default().solve(&tight) else {
        panic!("expected infeasible");
    };
    assert!(inf.minimal);
    assert!(inf.conflicting.contains(&Conflict::Budget(0)));
    assert_eq!(
        inf.cheapest_without_budgets.as_ref().unwrap().chosen,
        vec![1, 2]
    );
}

/// Bad indices are rejected with a reason, never solved around; a search that would exceed its
/// node limit says so instead of guessing.
#[test]
fn malformed_input_and_node_limit() {
    let d = DecisionVar::new(
        "orders",
        SubjectKind::Service,
        vec![Alternative::new("own-instance", 10, 1)],
    );
    let p = Problem {
        decisions: vec![d.clone()],
        constraints: vec![Constraint::Forbid {
            choice: Choice::new(0, 3),
            reason: "x".into(),
        }],
        budgets: vec![],
    };
    assert!(matches!(
        Solver::default().solve(&p),
        Err(SolveError::Malformed(_))
    ));
    // 12 independent two-way decisions tied on cost: the first component search alone needs
    // more than one node
    let two = DecisionVar::new(
        "x",
        SubjectKind::Service,
        vec![Alternative::new("a", 1, 1), Alternative::new("b", 1, 1)],
    );
    let p = Problem {
        decisions: vec![two; 12],
        constraints: vec![],
        budgets: vec![],
    };
    let tiny = Solver {
        max_nodes: 1,
        ..Solver::default()
    };
    assert!(matches!(tiny.solve(&p), Err(SolveError::Limit(1))));
    let s = Solver::default().solve(&p).unwrap();
    assert_eq!(s.chosen, vec![0; 12]);
    assert!(s
        .explained
        .iter()
        .all(|e| e.runner_up.map(|r| r.delta) == Some(0)));
}
