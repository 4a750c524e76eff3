//! Plans in etcd, against a real etcd server and the real binary: the leading planner publishes
//! every team's and branch's plan (the JSON its admin `/plan` serves) under `PREFIX/plans/LABEL`
//! in its guarded transactions, rewrites only the plans a change alters, deletes a branch's plan
//! with the branch, and a stale plan key it finds on taking the lead. Read back through etcd's
//! JSON gateway.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;
#[path = "common/etcd.rs"]
mod etcd_server;

use common::*;
use etcd_server::EtcdServer;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(15);

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
}

/// The plan stored at `key` and its mod revision.
async fn stored(etcd: &EtcdServer, key: &str) -> Option<(serde_json::Value, i64)> {
    let (_, kv) = etcd.api().get(key).await.expect("read etcd");
    let kv = kv?;
    Some((
        serde_json::from_slice(&kv.value).expect("a plan is JSON"),
        kv.mod_revision,
    ))
}

async fn admin_plan(client: &TestClient, admin: SocketAddr, branch: &str) -> serde_json::Value {
    let r = get(client, admin, &format!("/plan?branch={branch}"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_publishes_each_branch_plan_and_rewrites_only_what_changed() {
    let etcd = EtcdServer::start().await;
    let (base, v1) = (Upstream::start("base").await, Upstream::start("v1").await);
    let client = h1_client();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("branches")).expect("mkdir");
    write(
        root,
        "org.yaml",
        &format!(
            "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{}\"]\n  web:\n    hosts: [web]\n    endpoints: [\"{}\"]\n",
            base.addr, base.addr
        ),
    );
    let api_only = format!(
        "parent: baseline\nservices:\n  api:\n    endpoints: [\"{}\"]\n",
        v1.addr
    );
    write(root, "branches/dev.yaml", &api_only);
    write(root, "branches/qa.yaml", &api_only);
    // left by an earlier planner for a branch that no longer exists
    etcd.put("/fleet/plans/branch/ghost", b"{}").await;

    let (child, _proxy, admin) = spawn_run(
        root,
        &[
            "--publish",
            &etcd.url("fleet"),
            "--etcd-lease-ttl",
            "2",
            "--planner-id",
            "a",
        ],
    )
    .await;

    let (dev, _) = wait_for(DEADLINE, "the plan of dev in etcd", || async {
        stored(&etcd, "/fleet/plans/branch/dev").await
    })
    .await;
    assert_eq!(dev, admin_plan(&client, admin, "dev").await);
    assert_eq!(dev["layer"], "branch/dev", "{dev}");
    let (qa, qa_rev) = stored(&etcd, "/fleet/plans/branch/qa")
        .await
        .expect("the plan of qa, in the same publish");
    assert_eq!(qa, admin_plan(&client, admin, "qa").await);
    wait_for(DEADLINE, "the stale plan deleted", || async {
        stored(&etcd, "/fleet/plans/branch/ghost")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // dev now also overrides web: its plan changes, qa's is not rewritten
    write(
        root,
        "branches/dev.yaml",
        &format!("{api_only}  web:\n    endpoints: [\"{}\"]\n", v1.addr),
    );
    let new_dev = wait_for(DEADLINE, "the new plan of dev in etcd", || async {
        let (p, _) = stored(&etcd, "/fleet/plans/branch/dev").await?;
        (p != dev).then_some(p)
    })
    .await;
    assert_eq!(new_dev, admin_plan(&client, admin, "dev").await);
    assert_eq!(
        stored(&etcd, "/fleet/plans/branch/qa").await.map(|s| s.1),
        Some(qa_rev),
        "an unchanged branch's plan is not rewritten"
    );

    // a removed branch's plan goes with it
    std::fs::remove_file(root.join("branches/qa.yaml")).expect("remove");
    wait_for(DEADLINE, "the plan of qa deleted", || async {
        stored(&etcd, "/fleet/plans/branch/qa")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(etcd
        .api()
        .get("/fleet/layers/branch/qa")
        .await
        .expect("read")
        .1
        .is_none());
    stop_bin(child).await;
}
