//! The proxy's share of a one-branch write, counted (not timed): staging the table that replaces
//! one branch reuses what the previous snapshot derived for every other layer and upstream, so
//! its allocations do not grow with the branch count. Its own test binary: the allocator counts
//! every thread.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use microstax_config::{parse_text, Config, LayerKind};
use microstax_planner::Compiler;
use microstax_proxy::Router;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn branch(name: &str, text: &str) -> microstax_config::ParsedDoc {
    parse_text(
        &format!("branches/{name}.yaml"),
        text,
        Some(LayerKind::Branch),
        Some(name),
    )
    .unwrap()
    .remove(0)
}

fn config(branches: usize) -> Config {
    let mut org = String::from("kind: org\nservices:\n");
    for s in 0..10 {
        org.push_str(&format!(
            "  s{s}: {{hosts: [s{s}], endpoints: [\"10.0.0.1:{}\"]}}\n",
            1000 + s
        ));
    }
    let mut docs = parse_text("org.yaml", &org, Some(LayerKind::Org), None).unwrap();
    for i in 0..branches {
        let parent = if i % 4 == 0 {
            "baseline".to_string()
        } else {
            format!("b{}", i - 1)
        };
        let text = format!(
            "parent: {parent}\nservices:\n  s{}: {{endpoints: [\"10.1.0.1:{}\"]}}\n",
            i % 10,
            2000 + i
        );
        docs.push(branch(&format!("b{i}"), &text));
    }
    Config::build(docs).unwrap()
}

/// Allocations of staging and committing a table that changes one leaf branch's policy (its
/// endpoints stay, so the upstream list is shared), at `branches` branches.
fn measure(branches: usize) -> usize {
    let mut cfg = config(branches);
    let mut compiler = Compiler::new(&cfg, 1);
    let router = Router::new(compiler.table().clone());
    let leaf = format!("b{}", branches - 1);
    let mut publish = |cfg: &mut Config, generation: u64| {
        let text = format!(
            "parent: baseline\nservices:\n  s1: {{endpoints: [\"10.0.0.1:1001\"], policy: {{request_timeout_ms: {}}}}}\n",
            1000 + generation
        );
        let (next, idx) = cfg.upsert(branch(&leaf, &text)).unwrap();
        *cfg = next;
        let table = compiler.update(cfg, idx, generation);
        let region = Region::new(GLOBAL);
        let staged = router.stage(table);
        router.commit(staged);
        region.change().allocations
    };
    publish(&mut cfg, 2); // warm up: the leaf's new policy
    publish(&mut cfg, 3)
}

#[test]
fn staging_a_one_branch_change_does_not_grow_with_the_branch_count() {
    let small = measure(100);
    let large = measure(3000);
    eprintln!("allocations to stage and commit: {small} at 100 branches, {large} at 3000");
    assert!(
        large <= small + 16,
        "staging at 3000 branches made {large} allocations, {small} at 100"
    );
}
