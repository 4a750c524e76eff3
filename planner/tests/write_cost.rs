//! The work of a one-branch write, counted (not timed): replacing one branch of a config with
//! thousands validates on a copy that shares the name index and the layers with the current
//! config, and compiles only that layer, so the allocations of a write do not grow with the
//! branch count. Its own test binary: the allocator counts every thread.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use microstax_config::{parse_text, Config, LayerKind, RoutingTable};
use microstax_planner::{Change, ChangeSource, ControlPlane, TableSink};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

struct NullSink;

impl TableSink for NullSink {
    fn publish(&self, _t: Arc<RoutingTable>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
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
        let name = format!("b{i}");
        docs.extend(
            parse_text(
                &format!("branches/{name}.yaml"),
                &text,
                Some(LayerKind::Branch),
                Some(&name),
            )
            .unwrap(),
        );
    }
    Config::build(docs).unwrap()
}

/// Allocations of one write replacing a leaf branch of a config with `branches` branches, and
/// of one copy of that config.
fn measure(branches: usize) -> (usize, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let registry = prometheus::Registry::new();
        let control = ControlPlane::start(config(branches), Arc::new(NullSink), &registry)
            .await
            .unwrap();
        let leaf = format!("b{}", branches - 1);
        let write = |v: usize| {
            let text =
                format!("parent: baseline\nservices:\n  s1: {{endpoints: [\"10.2.0.1:{v}\"]}}\n");
            let doc = parse_text("api", &text, Some(LayerKind::Branch), Some(&leaf))
                .unwrap()
                .remove(0);
            vec![Change::Upsert(Box::new(doc))]
        };
        // warm up: counter label handles, interned policies
        control.apply(write(1), ChangeSource::Api).await.unwrap();
        let changes = write(2);
        let region = Region::new(GLOBAL);
        control.apply(changes, ChangeSource::Api).await.unwrap();
        let writes = region.change().allocations;
        let cfg = control.config();
        let region = Region::new(GLOBAL);
        let copy = (*cfg).clone();
        let copies = region.change().allocations;
        drop(copy);
        (writes, copies)
    })
}

#[test]
fn a_one_branch_write_does_not_grow_with_the_branch_count() {
    let (small, _) = measure(100);
    let (large, copy) = measure(3000);
    eprintln!(
        "allocations per write: {small} at 100 branches, {large} at 3000 (one config copy: {copy})"
    );
    // replacing a layer shares the name index with the previous config: no per-branch copy
    assert!(
        large <= small + 16,
        "a write at 3000 branches made {large} allocations, {small} at 100 branches (one config \
         copy: {copy})"
    );
}
