//! File batches applied change by change: two new branches in one batch (a parent and its
//! child, listed child first) both land in one consistent table; a broken one is rejected alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use microstax_config::{parse_text, Config, LayerKind, RoutingTable};
use microstax_planner::{Change, ChangeSource, ControlPlane, TableSink};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

struct NullSink;

impl TableSink for NullSink {
    fn publish(&self, _t: Arc<RoutingTable>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

fn doc(name: &str, text: &str) -> Change {
    let d = parse_text(
        &format!("branches/{name}.yaml"),
        text,
        Some(LayerKind::Branch),
        Some(name),
    )
    .unwrap()
    .remove(0);
    Change::Upsert(Box::new(d))
}

#[tokio::test]
async fn new_layers_of_one_batch_land_together() {
    let org = "kind: org\nservices:\n  api: {hosts: [api], endpoints: [\"10.0.0.1:80\"]}\n";
    let cfg =
        Config::build(parse_text("org.yaml", org, Some(LayerKind::Org), None).unwrap()).unwrap();
    let control = ControlPlane::start(cfg, Arc::new(NullSink), &prometheus::Registry::new())
        .await
        .unwrap();
    let out = control
        .apply_each(
            vec![
                doc(
                    "child",
                    "parent: parent\nservices:\n  api: {endpoints: [\"10.0.0.3:80\"]}\n",
                ),
                doc(
                    "broken",
                    "parent: baseline\nservices:\n  api: {endpoints: [nope]}\n",
                ),
                doc(
                    "parent",
                    "parent: baseline\nservices:\n  api: {endpoints: [\"10.0.0.2:80\"]}\n",
                ),
            ],
            ChangeSource::File,
        )
        .await;
    assert!(out.applied.is_some());
    assert!(
        out.results[0].is_ok() && out.results[2].is_ok(),
        "{:?}",
        out.results
    );
    let e = out.results[1].as_ref().expect_err("broken is rejected");
    assert_eq!(&*e.diagnostics()[0].file, "branches/broken.yaml");
    let t = control.table().await;
    assert_eq!(t.check_invariants(), Ok(()));
    for (branch, want) in [("parent", "10.0.0.2:80"), ("child", "10.0.0.3:80")] {
        let r = t.route(t.branch(branch).expect(branch), 0).expect("route");
        assert_eq!(&*t.upstream(r.upstreams[0]).expect("up").authority, want);
    }
    assert!(t.branch("broken").is_none());
}
