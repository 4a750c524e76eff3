//! The demo's environments run: `microstax demo` starts the demo's branch-local instances as
//! real processes (the process executor running `microstax demo-service`), so for every branch
//! and every service the plan's decision, the route `explain` reports and the instance that
//! answers agree. A branch added to a written demo config starts its instance, deleting it
//! stops the process, and stopping the demo leaves no process and no state directory behind.

#![allow(clippy::expect_used)]

mod common;

use common::*;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);
const SERVICES: [&str; 4] = ["web", "orders", "payments", "inventory"];

fn pid_alive(pid: u64) -> bool {
    // a zombie (exited, not yet reaped) is gone for our purposes
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// The plan's entry for `service` in `plan` (the `/plan` JSON).
fn entry<'p>(plan: &'p serde_json::Value, service: &str) -> &'p serde_json::Value {
    plan["entries"]
        .as_array()
        .and_then(|e| {
            e.iter()
                .find(|e| e["subject"] == "service" && e["name"] == service)
        })
        .unwrap_or_else(|| panic!("no plan entry for {service}: {plan}"))
}

/// Ask `service` directly (Host header) with the branch header `branch`.
async fn ask(c: &TestClient, proxy: std::net::SocketAddr, service: &str, branch: &str) -> Reply {
    get(
        c,
        proxy,
        "/",
        &[("host", service), ("x-microstax-branch", branch)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_plans_routes_and_instances_agree_for_every_service() {
    let (child, proxy, admin) = spawn_bin(
        &["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        &[],
    )
    .await;
    let demo_pid = child.id().expect("pid");
    let c = h1_client();
    let mut forks: Vec<(String, String, u64)> = Vec::new();
    for branch in ["feature-a", "feature-b", "pay-fix"] {
        let plan = get(&c, admin, &format!("/plan?branch={branch}"), &[])
            .await
            .json();
        for service in SERVICES {
            let e = entry(&plan, service);
            let r = ask(&c, proxy, service, branch).await;
            assert_eq!(r.status, 200, "{branch}/{service}: {}", r.text());
            let answer = r.json();
            let explain = get(
                &c,
                admin,
                &format!("/explain?branch={branch}&service={service}"),
                &[],
            )
            .await
            .json();
            let what = format!("{branch}/{service}: plan {e}, answer {answer}, explain {explain}");
            match e["decision"].as_str() {
                Some("fork") => {
                    // its own process: the planned instance, by content address
                    assert_eq!(answer["instance"], format!("branch/{branch}"), "{what}");
                    let id = e["instance"].as_str().expect("instance");
                    assert_eq!(answer["instance_id"].as_str(), id.get(..12), "{what}");
                    let pid = answer["pid"].as_u64().expect("a pid");
                    assert_ne!(pid, u64::from(demo_pid), "{what}");
                    assert!(pid_alive(pid), "{what}");
                    assert_eq!(
                        explain["route"]["layer"],
                        format!("branch/{branch}"),
                        "{what}"
                    );
                    assert!(explain["note"].is_null(), "{what}");
                    assert!(
                        explain["instance"]
                            .as_str()
                            .is_some_and(|i| i.contains("(ready)")),
                        "{what}"
                    );
                    forks.push((branch.into(), service.into(), pid));
                }
                Some("reuse") => {
                    assert_eq!(answer["instance"], e["from"], "{what}");
                    assert_eq!(explain["route"]["layer"], e["from"], "{what}");
                }
                other => panic!("unexpected decision {other:?}: {what}"),
            }
        }
    }
    // feature-a forks orders and inventory (it consumes the topic feature-a isolates);
    // feature-b forks inventory and orders (which references inventory)
    let mut got: Vec<(&str, &str)> = forks
        .iter()
        .map(|(b, s, _)| (b.as_str(), s.as_str()))
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        [
            ("feature-a", "inventory"),
            ("feature-a", "orders"),
            ("feature-b", "inventory"),
            ("feature-b", "orders"),
        ]
    );

    // feature-a isolates orders-db; feature-b's orders reuses feature-a's copy, not the baseline
    let a = ask(&c, proxy, "orders", "feature-a").await.json();
    let b = ask(&c, proxy, "orders", "feature-b").await.json();
    let db = a["database_url"].as_str().expect("feature-a's database");
    assert!(db.contains("msx_orders_db_feature_a"), "{a}");
    assert_eq!(b["database_url"].as_str(), Some(db), "{b}");

    // `microstax instances` lists the four processes
    let out = tokio::process::Command::new(BIN)
        .args(["instances", "--admin", &admin.to_string()])
        .output()
        .await
        .expect("instances");
    let text = String::from_utf8_lossy(&out.stdout);
    for (_, _, pid) in &forks {
        assert!(text.contains(&pid.to_string()), "{text}");
    }

    // stopping the demo stops its instances and removes its state directory
    stop_bin(child).await;
    for (branch, service, pid) in &forks {
        assert!(!pid_alive(*pid), "{branch}/{service} (pid {pid}) survived");
    }
    let state = std::env::temp_dir().join(format!("microstax-demo-{demo_pid}"));
    assert!(!state.exists(), "{} left behind", state.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_added_to_the_demo_starts_its_instance_and_deleting_it_stops_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("cfg");
    let out = tokio::process::Command::new(BIN)
        .args(["demo", "--write-config"])
        .arg(&cfg)
        .output()
        .await
        .expect("write");
    assert!(out.status.success());
    // give unneeded instances back quickly
    let org = cfg.join("org.yaml");
    let text = std::fs::read_to_string(&org).expect("org");
    std::fs::write(&org, format!("{text}lifecycle: {{grace_ms: 100}}\n")).expect("org");
    let state = dir.path().join("state");
    let (child, proxy, admin) = spawn_bin(
        &[
            "demo",
            "--config",
            cfg.to_str().expect("utf-8"),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--state-dir",
            state.to_str().expect("utf-8"),
        ],
        &[],
    )
    .await;
    let c = h1_client();
    assert_eq!(
        ask(&c, proxy, "payments", "feature-c").await.json()["instance"],
        "baseline"
    );
    let tmp = cfg.join("branches/.feature-c.tmp");
    std::fs::write(
        &tmp,
        "parent: baseline\nservices:\n  payments:\n    env: {FEATURE_C: \"on\"}\n",
    )
    .expect("branch");
    std::fs::rename(&tmp, cfg.join("branches/feature-c.yaml")).expect("rename");
    let pid = wait_for(DEADLINE, "feature-c's payments instance", || async {
        let j = ask(&c, proxy, "payments", "feature-c").await.json();
        (j["instance"] == "branch/feature-c").then(|| j["pid"].as_u64())?
    })
    .await;
    assert!(pid_alive(pid));
    let v = get(&c, admin, "/instances", &[]).await.json();
    assert!(
        v["instances"]
            .as_array()
            .is_some_and(|l| l.iter().any(|i| i["pid"].as_u64() == Some(pid))),
        "{v}"
    );

    std::fs::remove_file(cfg.join("branches/feature-c.yaml")).expect("delete");
    wait_for(DEADLINE, "feature-c's instance stopped", || async {
        (!pid_alive(pid)).then_some(())
    })
    .await;
    assert_eq!(
        ask(&c, proxy, "payments", "feature-c").await.json()["instance"],
        "baseline"
    );
    stop_bin(child).await;
}
