//! Solver benchmarks on generated problems of a 2,000-service graph (each service calls up to
//! three lower services; every 4th owns a store, sometimes shared with its neighbour; every
//! 10th produces a topic the next nine consume):
//! - one branch touching 200 services: ~200 service decisions (own / shared with another
//!   branch of the identical spec / scaled to zero, where the latency objective allows), the
//!   callers whose env names a changed service, replicas where a reliability floor applies,
//!   the migrated stores (share / per-branch schema / database from a template / fork) with
//!   their other writers, the topics whose contract changed (per-branch topic / fork every
//!   consumer) with their consumers, latency implications along the call graph, and one team
//!   budget, either slack or binding (instances capped below the unconstrained optimum);
//! - a fleet re-plan: 10,000 independent branches of 5 changed services each, each against its
//!   team's budget (100 teams).
//!
//! - the same through the planner on a real config (`Planner::plan`: the rules' plan, the
//!   problem built from it, the solve and the write-back): one branch overriding the image of
//!   200 of 2,000 services (migrations on every 10th, a team budget), and `Planner::plan_every`
//!   over 10,000 branches of 5 overrides each in 100 budgeted teams (timed three times, with
//!   the minor page faults and kernel time of each run). The config is `common/world.rs`.
//!
//! Run: `cargo bench -p microstax-bench --bench solver`

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use common::world::{world, SERVICES, TEAMS};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use microstax_planner::solve::{
    baselines, solve, Alternative, Binding, Budget, Choice, Constraint, DecisionVar, Node, Problem,
    Solver, SubjectKind, Topology, Usage,
};
use microstax_planner::Planner;
use std::collections::BTreeMap;

const TOUCHED: usize = 200;
const BRANCHES: usize = 10_000;
const FLEET_TOUCHED: usize = 5;

/// Prices: micro-units per cpu-core-hour and per GiB-hour; expected active fraction (%).
const CORE_HOUR: u64 = 40_000;
const GIB_HOUR: u64 = 5_000;
const ACTIVE_PCT: u64 = 25;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// The org graph.
struct Graph {
    calls: Vec<Vec<usize>>,
    callers: Vec<Vec<usize>>,
    cpu_m: Vec<u64>,
    mem_mi: Vec<u64>,
    latency_slo: Vec<bool>,
    floor: Vec<bool>,
    /// Store of service i (every 4th), its kind, and its users.
    stores: BTreeMap<usize, (&'static str, Vec<usize>)>,
}

fn graph() -> Graph {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut calls = vec![Vec::new(); SERVICES];
    let mut callers = vec![Vec::new(); SERVICES];
    for i in 1..SERVICES {
        for _ in 0..r.below(4) {
            let j = r.below(i as u64) as usize;
            if !calls[i].contains(&j) {
                calls[i].push(j);
                callers[j].push(i);
            }
        }
    }
    let mut stores = BTreeMap::new();
    for i in (0..SERVICES).step_by(4) {
        let kind = ["postgres", "mysql", "redis"][i / 4 % 3];
        let mut users = vec![i];
        if i + 1 < SERVICES && r.chance(50) {
            users.push(i + 1);
        }
        stores.insert(i, (kind, users));
    }
    Graph {
        calls,
        callers,
        cpu_m: (0..SERVICES).map(|i| 100 + (i as u64 % 4) * 50).collect(),
        mem_mi: (0..SERVICES).map(|i| 128 + (i as u64 % 3) * 128).collect(),
        latency_slo: (0..SERVICES).map(|_| r.chance(20)).collect(),
        floor: (0..SERVICES).map(|_| r.chance(10)).collect(),
        stores,
    }
}

fn own(g: &Graph, s: usize) -> u64 {
    g.cpu_m[s] * CORE_HOUR / 1000 + g.mem_mi[s] * GIB_HOUR / 1024
}

/// Builds one branch's problem.
struct Builder<'g> {
    g: &'g Graph,
    p: Problem,
    service: BTreeMap<usize, usize>,
}

impl Builder<'_> {
    fn alts_of(&self, d: usize, labels: &[&str]) -> Vec<usize> {
        self.p.decisions[d]
            .alternatives
            .iter()
            .enumerate()
            .filter(|(_, a)| labels.contains(&&*a.label))
            .map(|(i, _)| i)
            .collect()
    }

    fn zero(&self, s: usize) -> Alternative {
        let a = Alternative::new("scaled-to-zero", own(self.g, s) * ACTIVE_PCT / 100 + 200, 1);
        if self.g.latency_slo[s] {
            a.not_allowed(format!(
                "s{s}: cold start 2.5 s exceeds its latency objective of 500 ms"
            ))
        } else {
            a
        }
    }

    fn changed(&mut self, s: usize, shared: bool) -> usize {
        let mut alts = vec![Alternative::new("own-instance", own(self.g, s), 1)];
        if shared {
            alts.push(Alternative::new("shared-instance", own(self.g, s) / 2, 0));
        }
        alts.push(self.zero(s));
        self.push(s, alts)
    }

    fn push(&mut self, s: usize, alts: Vec<Alternative>) -> usize {
        let d = self.p.decisions.len();
        self.p.decisions.push(DecisionVar::new(
            format!("s{s}"),
            SubjectKind::Service,
            alts,
        ));
        self.service.insert(s, d);
        d
    }

    /// The decision of a service that may have to fork (reuse or fork), made on first use.
    fn dependent(&mut self, s: usize) -> usize {
        if let Some(&d) = self.service.get(&s) {
            return d;
        }
        let alts = vec![
            Alternative::new("reuse", 0, 0),
            Alternative::new("own-instance", own(self.g, s), 1),
            self.zero(s),
        ];
        self.push(s, alts)
    }

    fn require(&mut self, when: usize, labels: &[&str], then: usize, fork: &[&str], why: String) {
        let one_of = self.alts_of(then, fork);
        for a in self.alts_of(when, labels) {
            self.p.constraints.push(Constraint::Requires {
                when: Choice::new(when, a),
                then,
                one_of: one_of.clone(),
                reason: why.clone().into(),
            });
        }
    }
}

const FORKED: &[&str] = &["own-instance", "shared-instance", "scaled-to-zero"];
const OWN: &[&str] = &["own-instance", "scaled-to-zero"];

fn branch(g: &Graph, seed: u64, touched: usize) -> (Problem, Vec<usize>) {
    let mut r = Rng(seed | 1);
    let mut changed: Vec<usize> = Vec::new();
    while changed.len() < touched {
        let s = r.below(SERVICES as u64) as usize;
        if !changed.contains(&s) {
            changed.push(s);
        }
    }
    changed.sort_unstable();
    let mut b = Builder {
        g,
        p: Problem::default(),
        service: BTreeMap::new(),
    };
    for &s in &changed {
        let shared = r.chance(30);
        b.changed(s, shared);
    }
    for &s in &changed {
        let d = b.service[&s];
        if g.floor[s] {
            let rep = b.p.decisions.len();
            b.p.decisions.push(DecisionVar::new(
                format!("s{s}"),
                SubjectKind::Replicas,
                vec![
                    Alternative::new("replicas-1", 0, 0),
                    Alternative::new("replicas-2", own(g, s), 1),
                ],
            ));
            let why = format!("s{s} declares a reliability floor of 2 replicas");
            b.require(d, OWN, rep, &["replicas-2"], why);
        }
        // callers whose env names s must point at the branch's instance
        for &c in &g.callers[s] {
            if c % 2 == 0 && !changed.contains(&c) {
                let dc = b.dependent(c);
                b.require(d, FORKED, dc, OWN, format!("env of s{c} names s{s}"));
            }
        }
        // latency objectives along the call graph: no cold start below a caller that has one
        for &x in &g.calls[s] {
            if g.latency_slo[s] {
                if let Some(&dx) = b.service.get(&x) {
                    if changed.contains(&x) {
                        let why = format!("s{s}'s latency objective allows no cold start in s{x}");
                        b.require(
                            d,
                            &["own-instance"],
                            dx,
                            &["own-instance", "shared-instance"],
                            why,
                        );
                    }
                }
            }
        }
        if let Some((kind, users)) = g.stores.get(&s) {
            if r.chance(50) {
                let additive = r.chance(40);
                let m = 40 + r.below(60);
                let mut share = Alternative::new("share", 0, 0);
                if !additive {
                    share = share.not_allowed(format!("migration 00{m} of s{s} is not additive"));
                }
                let mut schema = Alternative::new("per-branch-schema", 300, 0);
                if *kind != "postgres" {
                    schema = schema.not_allowed(format!("{kind} has no per-branch schema"));
                } else if !additive {
                    schema = schema.not_allowed(format!("migration 00{m} of s{s} is not additive"));
                }
                let mut template = Alternative::new("database-from-template", 1_500, 0);
                if *kind == "redis" {
                    template = template.not_allowed("redis has no databases from a template");
                }
                let fork = if *kind == "redis" { 3_000 } else { 8_000 };
                let store = b.p.decisions.len();
                b.p.decisions.push(DecisionVar::new(
                    format!("db{s}"),
                    SubjectKind::Store,
                    vec![
                        share,
                        schema,
                        template,
                        Alternative::new("forked-instance", fork, 1),
                    ],
                ));
                for &u in users {
                    let du = b.dependent(u);
                    let why = format!("s{u} writes db{s}, isolated for the branch");
                    b.require(
                        store,
                        &[
                            "per-branch-schema",
                            "database-from-template",
                            "forked-instance",
                        ],
                        du,
                        OWN,
                        why,
                    );
                }
            }
        }
        if s % 10 == 0 && r.chance(50) {
            let topic = b.p.decisions.len();
            b.p.decisions.push(DecisionVar::new(
                format!("t{s}"),
                SubjectKind::Topic,
                vec![
                    Alternative::new("per-branch-topic", 2_000, 0),
                    Alternative::new("fork-consumers", 0, 0),
                ],
            ));
            for c in s + 1..(s + 10).min(SERVICES) {
                let dc = b.dependent(c);
                let why = format!("s{c} consumes t{s}, whose contract s{s} changes");
                b.require(topic, &["fork-consumers"], dc, OWN, why);
            }
        }
    }
    (b.p, changed)
}

fn team_budget(p: &mut Problem, name: String, max_instances: Option<u64>, used: Usage) {
    p.budgets.push(Budget {
        name: name.into(),
        decisions: (0..p.decisions.len()).collect(),
        max_instances,
        max_cost: Some(used.cost + 50_000_000),
        already_used: used,
    });
}

fn topology(g: &Graph, changed: &[usize]) -> Topology {
    let mut nodes: Vec<Node> = (0..SERVICES)
        .map(|s| Node {
            name: format!("s{s}").into(),
            cost: own(g, s),
            instances: 1,
            stateful: false,
            changed: changed.binary_search(&s).is_ok(),
            calls: g.calls[s].clone(),
        })
        .collect();
    for (&s, (kind, users)) in &g.stores {
        let x = nodes.len();
        nodes.push(Node {
            name: format!("db{s}").into(),
            cost: if *kind == "redis" { 3_000 } else { 8_000 },
            instances: 1,
            stateful: true,
            changed: false,
            calls: Vec::new(),
        });
        for &u in users {
            nodes[u].calls.push(x);
        }
    }
    Topology { nodes }
}

fn bench(c: &mut Criterion) {
    let g = graph();
    let (mut slack, changed) = branch(&g, 42, TOUCHED);
    let used = Usage {
        instances: 300,
        cost: 2_000_000,
    };
    let free = solve(&slack).unwrap();
    let mut binding = slack.clone();
    team_budget(&mut slack, "payments".into(), Some(10_000), used);
    // cap instances 15 below the unconstrained optimum, so the budget search runs
    team_budget(
        &mut binding,
        "payments".into(),
        Some(used.instances + free.instances - 15),
        used,
    );
    let s = solve(&slack).unwrap();
    let t = solve(&binding).unwrap();
    let base = baselines(&topology(&g, &changed));
    let forced = s.explained.iter().filter(|e| e.runner_up.is_none()).count();
    let unresolved = t
        .explained
        .iter()
        .filter(|e| e.runner_up_unresolved || matches!(e.binding, Binding::Unresolved { .. }))
        .count();
    eprintln!(
        "one branch: {} decisions, {} constraints; optimum {} micro/h, {} instances ({} decisions forced); \
         with instances capped at {}: {} micro/h, {} instances ({} explanations unresolved); baselines: clone all {} micro/h ({} instances), \
         fork dependents {} ({}), kardinal {} ({})",
        slack.decisions.len(),
        slack.constraints.len(),
        s.cost,
        s.instances,
        forced,
        free.instances - 15,
        t.cost,
        t.instances,
        unresolved,
        base.clone_all.cost,
        base.clone_all.instances,
        base.fork_dependents.cost,
        base.fork_dependents.instances,
        base.kardinal.cost,
        base.kardinal.instances,
    );
    let fleet: Vec<Problem> = (0..BRANCHES)
        .map(|j| {
            let (mut p, _) = branch(&g, 1_000 + j as u64, FLEET_TOUCHED);
            let team = j % TEAMS;
            let used = Usage {
                instances: 20 + (team as u64 % 7),
                cost: 100_000,
            };
            team_budget(
                &mut p,
                format!("team{team}"),
                Some(used.instances + 12),
                used,
            );
            p
        })
        .collect();
    let decisions: usize = fleet.iter().map(|p| p.decisions.len()).sum();
    let feasible = fleet.iter().filter(|p| solve(p).is_ok()).count();
    let bare = Solver {
        runner_ups: false,
        bindings: false,
        ..Solver::default()
    };
    let t0 = std::time::Instant::now();
    let infeasible = fleet.iter().filter(|p| bare.solve(p).is_err()).count();
    let all = t0.elapsed();
    let t0 = std::time::Instant::now();
    for p in &fleet {
        let mut q = p.clone();
        q.budgets.clear();
        let _ = bare.solve(&q);
    }
    eprintln!(
        "fleet, optimum only: {all:?} in all ({infeasible} infeasible, with conflicting sets); \
         the same branches without budgets: {:?}",
        t0.elapsed()
    );
    eprintln!(
        "fleet: {BRANCHES} branches, {decisions} decisions in all, {feasible} within their team budget"
    );
    let quick = Solver {
        runner_ups: false,
        ..Solver::default()
    };
    let mut grp = c.benchmark_group("solver");
    grp.bench_function("one branch, 200 of 2k services, slack budget", |b| {
        b.iter(|| solve(black_box(&slack)).unwrap())
    });
    grp.bench_function(
        "one branch, 200 of 2k services, slack budget, no runner-ups",
        |b| b.iter(|| quick.solve(black_box(&slack)).unwrap()),
    );
    grp.bench_function("one branch, 200 of 2k services, binding budget", |b| {
        b.iter(|| solve(black_box(&binding)).unwrap())
    });
    grp.bench_function(
        "one branch, 200 of 2k services, binding budget, no runner-ups",
        |b| b.iter(|| quick.solve(black_box(&binding)).unwrap()),
    );
    grp.bench_function(
        "one branch, 200 of 2k services, slack budget, optimum only",
        |b| b.iter(|| bare.solve(black_box(&slack)).unwrap()),
    );
    grp.bench_function(
        "one branch, 200 of 2k services, binding budget, optimum only",
        |b| b.iter(|| bare.solve(black_box(&binding)).unwrap()),
    );
    grp.sample_size(10);
    grp.bench_function("fleet re-plan, 10k branches of 5 changed services", |b| {
        b.iter(|| {
            fleet
                .iter()
                .map(|p| solve(black_box(p)).map_or(0, |s| s.cost))
                .sum::<u64>()
        })
    });
    grp.bench_function("fleet re-plan, 10k branches, optimum only", |b| {
        b.iter(|| {
            fleet
                .iter()
                .map(|p| bare.solve(black_box(p)).map_or(0, |s| s.cost))
                .sum::<u64>()
        })
    });
    grp.finish();
}

fn real(c: &mut Criterion) {
    let one = world(1, TOUCHED);
    let planner = Planner::new(&one).unwrap();
    let p = planner.plan(&one, "b0", None).unwrap();
    let x = &p.economics;
    eprintln!(
        "real config, one branch of 200 overrides: {} choices, {} micro/h, {} instances; \
         clone all {} ({}), fork dependents {} ({}), kardinal {} ({})",
        p.entries.iter().filter(|e| e.chosen.is_some()).count(),
        x.cost,
        x.instances,
        x.baselines.clone_all.cost,
        x.baselines.clone_all.instances,
        x.baselines.fork_dependents.cost,
        x.baselines.fork_dependents.instances,
        x.baselines.kardinal.cost,
        x.baselines.kardinal.instances,
    );
    let mut grp = c.benchmark_group("planner+solver");
    grp.bench_function("Planner::plan, one branch, 200 of 2k services", |b| {
        b.iter(|| planner.plan(black_box(&one), "b0", None).unwrap())
    });
    grp.finish();
    let fleet = world(BRANCHES, FLEET_TOUCHED);
    let planner = Planner::new(&fleet).unwrap();
    for run in 0..3 {
        let before = faults_and_system_time();
        let t0 = std::time::Instant::now();
        let plans = planner.plan_every(&fleet);
        let took = t0.elapsed();
        let after = faults_and_system_time();
        let cost: u64 = plans
            .iter()
            .filter_map(|(_, p)| p.as_ref().ok())
            .map(|p| p.economics.cost)
            .sum();
        eprintln!(
            "real config, Planner::plan_every over {} layers (10k branches, 100 teams), run {run}: {took:?} ({cost} micro/h in all; {} minor page faults, {:.1} s in the kernel; plans of {} entries of {} bytes)",
            plans.len(),
            after.0 - before.0,
            (after.1 - before.1) as f64 / 100.0,
            plans.iter().filter_map(|(_, p)| p.as_ref().ok()).map(|p| p.entries.len()).sum::<usize>(),
            std::mem::size_of::<microstax_planner::plan::Entry>(),
        );
    }
}

/// This process's minor page faults and system time in clock ticks (`/proc/self/stat` fields
/// 10 and 15; ticks are 1/100 s on Linux), or zeros where that file is not readable.
fn faults_and_system_time() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // fields after the command name, which is in parentheses and may hold spaces
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (
        f.get(7).copied().unwrap_or(0),
        f.get(12).copied().unwrap_or(0),
    )
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(4));
    targets = bench, real
}
criterion_main!(benches);
