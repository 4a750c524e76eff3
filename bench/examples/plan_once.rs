//! One `Planner::plan` of the `planner+solver` benchmark's branch (200 image overrides of a
//! 2,000-service org), for counting its instructions under callgrind:
//!
//! ```text
//! cargo build --release -p microstax-bench --example plan_once
//! valgrind --tool=callgrind --toggle-collect='microstax_planner::planner::Planner::plan_with' \
//!     target/release/examples/plan_once
//! ```
//!
//! `plan_once N` plans N times (default 1), after one untimed plan that warms the caches, and
//! prints a digest of the plan; `plan_once every B` runs `Planner::plan_every` over B branches
//! of 5 overrides (default 1,000) and prints a digest of all the plans (to check that two
//! builds plan identically).

#![allow(clippy::expect_used)]

#[path = "../benches/common/mod.rs"]
mod common;

use microstax_planner::Planner;

fn digest(x: &impl std::fmt::Debug) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&format!("{x:?}"), &mut h);
    std::hash::Hasher::finish(&h)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("every") {
        // `plan_once every B`: Planner::plan_every over B branches of 5 overrides
        let b = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000);
        let fleet = common::world::world(b, 5);
        let planner = Planner::new(&fleet).expect("the world plans");
        let t0 = std::time::Instant::now();
        let plans = planner.plan_every(&fleet);
        println!(
            "Planner::plan_every over {} layers: {:?}; plans digest {:016x}",
            plans.len(),
            t0.elapsed(),
            digest(&plans)
        );
        return;
    }
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1);
    let one = common::world::world(1, 200);
    let planner = Planner::new(&one).expect("the world plans");
    let warm = planner.plan(&one, "b0", None).expect("b0 plans");
    let t0 = std::time::Instant::now();
    let mut cost = 0;
    for _ in 0..n {
        let p = planner.plan(&one, "b0", None).expect("b0 plans");
        cost = p.economics.cost;
    }
    // the digest covers everything the plan says (entries, choices, reasons, runner-ups,
    // totals), to compare the plans of two builds
    println!(
        "{n} x Planner::plan: {:?} per plan; {} micro/h (warm-up {}); plan digest {:016x}",
        t0.elapsed() / n.max(1) as u32,
        cost,
        warm.economics.cost,
        digest(&warm)
    );
}
