//! One `Planner::plan` of the `planner+solver` benchmark's branch (200 image overrides of a
//! 2,000-service org), for counting its instructions under callgrind:
//!
//! ```text
//! cargo build --release -p microstax-bench --example plan_once
//! valgrind --tool=callgrind --toggle-collect='*Planner::plan' target/release/examples/plan_once
//! ```
//!
//! `plan_once N` plans N times (default 1), after one untimed plan that warms the caches.

#![allow(clippy::expect_used)]

#[path = "../benches/common/mod.rs"]
mod common;

use microstax_planner::Planner;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let one = common::world::world(1, 200);
    let planner = Planner::new(&one).expect("the world plans");
    let warm = planner.plan(&one, "b0", None).expect("b0 plans");
    let t0 = std::time::Instant::now();
    let mut cost = 0;
    for _ in 0..n {
        let p = planner.plan(&one, "b0", None).expect("b0 plans");
        cost = p.economics.cost;
    }
    println!(
        "{n} x Planner::plan: {:?} per plan; {} micro/h (warm-up {})",
        t0.elapsed() / n.max(1) as u32,
        cost,
        warm.economics.cost
    );
}
