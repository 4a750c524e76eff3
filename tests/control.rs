//! The control plane against the real binary (issue 8): one broken branch file rejects only
//! itself; a deleted parent file is reported with its path and keeps its children serving; a
//! deleted branch's upstream leaves the table; admin query parameters and branch names in the
//! path are percent-decoded; bad bodies answer 422 and are counted; dot segments in branch
//! names are refused.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use common::live::*;
use common::*;
use http::Method;
use std::collections::BTreeMap;

/// Start on a config directory with `branches` (name, parent, endpoint: 1 = v1, 2 = v2), plus
/// `files` (path under the config directory, text) as written.
async fn start_with(branches: &[(&str, &str, u8)], files: &[(&str, &str)]) -> Live {
    let branches: Vec<(String, String, u8)> = branches
        .iter()
        .map(|(n, p, e)| (n.to_string(), p.to_string(), *e))
        .collect();
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    Live::start_in(
        move |root, u| {
            let layers: Vec<(&str, String)> = branches
                .iter()
                .map(|(n, p, e)| (n.as_str(), branch(p, if *e == 1 { u.v1 } else { u.v2 }, "")))
                .collect();
            write_config(root, &org(u.base), &layers);
            for (path, text) in &files {
                std::fs::write(root.join(path), text).expect("file");
            }
        },
        None,
        1,
    )
    .await
}

async fn start(branches: &[(&str, &str, u8)]) -> Live {
    start_with(branches, &[]).await
}

/// An admin request with the token.
async fn admin(live: &Live, method: Method, path: &str, body: &str) -> Reply {
    live.admin(method, path, Some(TOKEN), body).await
}

async fn rejected(live: &Live, source: &str) -> f64 {
    let r = admin(live, Method::GET, "/metrics", "").await;
    assert_eq!(r.status, 200);
    metric(
        &r.text(),
        &format!("microstax_config_rejected_total{{source=\"{source}\"}}"),
    )
}

async fn wait_rejected(live: &Live, source: &str, at_least: f64) {
    wait_for(
        DEADLINE,
        &format!("{at_least} {source} rejections"),
        || async { (rejected(live, source).await >= at_least).then_some(()) },
    )
    .await;
}

/// The value of one series in Prometheus text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_branch_file_rejects_only_itself() {
    let live = start(&[("a", "baseline", 1), ("b", "baseline", 1)]).await;
    assert_eq!(live.upstream_for("a").await, "v1");
    // one developer's typo and another's edit land in the same reconcile
    let (a, b) = (
        live.root().join("branches/a.yaml"),
        live.root().join("branches/b.yaml"),
    );
    std::fs::write(
        &a,
        "parent: baseline\nservices:\n  api: {endpoints: [nope]}\n",
    )
    .expect("a");
    std::fs::write(&b, branch("baseline", live.v2.addr, "")).expect("b");
    live.wait_route("b", "v2").await;
    wait_rejected(&live, "file", 1.0).await;
    assert_eq!(
        live.upstream_for("a").await,
        "v1",
        "a's last good version serves"
    );
    // later edits of other files still apply, and the broken file is not counted again
    std::fs::write(
        live.root().join("branches/c.yaml"),
        branch("baseline", live.v2.addr, ""),
    )
    .expect("c");
    live.wait_route("c", "v2").await;
    assert_eq!(rejected(&live, "file").await, 1.0);
    // fixing the broken file applies it
    std::fs::write(&a, branch("baseline", live.v2.addr, "")).expect("fix a");
    live.wait_route("a", "v2").await;
    let _ = (&live.base, &live.v1);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_parent_file_is_reported_with_its_path() {
    let live = start(&[("dev", "baseline", 1), ("feat", "dev", 2)]).await;
    assert_eq!(live.upstream_for("feat").await, "v2");
    std::fs::remove_file(live.root().join("branches/dev.yaml")).expect("rm dev");
    wait_rejected(&live, "file", 1.0).await;
    // the children keep their lineage; the admin API says the file is gone and who holds it
    let r = admin(&live, Method::GET, "/branches/dev", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let why = r.json()["rejected"].as_str().unwrap_or("").to_string();
    assert!(
        why.contains("branches/dev.yaml") && why.contains("feat"),
        "{}",
        r.text()
    );
    assert!(!why.contains("api:0"), "{why}");
    assert_eq!(live.upstream_for("feat").await, "v2");
    // once the child goes too, the deferred delete applies
    std::fs::remove_file(live.root().join("branches/feat.yaml")).expect("rm feat");
    live.wait_route("dev", "base").await;
    live.wait_route("feat", "base").await;
    let r = admin(&live, Method::GET, "/branches/dev", "").await;
    assert_eq!(r.status, 404);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_branch_upstream_leaves_the_table() {
    let live = start(&[("dev", "baseline", 1)]).await;
    let routes = |r: &Reply| -> Vec<String> {
        r.json()["upstreams"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let r = admin(&live, Method::GET, "/routes", "").await;
    assert!(
        routes(&r).contains(&live.v1.addr.to_string()),
        "{}",
        r.text()
    );
    std::fs::remove_file(live.root().join("branches/dev.yaml")).expect("rm");
    live.wait_route("dev", "base").await;
    let r = admin(&live, Method::GET, "/routes", "").await;
    assert_eq!(routes(&r), vec![live.base.addr.to_string()], "{}", r.text());
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_decodes_names_and_answers_422_for_bad_bodies() {
    let live = start(&[("dev", "baseline", 1)]).await;
    let body = branch("baseline", live.v2.addr, "");
    // a slash in a branch name, percent-encoded in the path and in the query
    let r = admin(&live, Method::PUT, "/branches/team%2Ffoo", &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(live.upstream_for("team/foo").await, "v2");
    let r = admin(&live, Method::GET, "/plan?branch=team%2Ffoo", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = admin(
        &live,
        Method::GET,
        "/explain?branch=team%2Ffoo&service=api",
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // bad YAML, an unknown field and an empty body are invalid layers: 422, counted
    let before = rejected(&live, "api").await;
    for bad in [
        "services: [not, a, map\n",
        "parent: baseline\nsurvices: {}\n",
        "",
    ] {
        let r = admin(&live, Method::PUT, "/branches/x", bad).await;
        assert_eq!(r.status, 422, "{bad:?}: {}", r.text());
        assert!(r.json()["diagnostics"].is_array(), "{}", r.text());
    }
    assert_eq!(rejected(&live, "api").await, before + 3.0);
    // dot segments are not branch names
    for name in ["a%2F..%2F..%2Fetc", "a/../../etc", "a/./b", "a//b"] {
        let r = admin(&live, Method::PUT, &format!("/branches/{name}"), &body).await;
        assert!(r.status.is_client_error(), "{name}: {}", r.text());
    }
    let r = admin(&live, Method::GET, "/branches", "").await;
    let names: BTreeMap<String, ()> = r.json()["branches"]
        .as_array()
        .expect("branches")
        .iter()
        .filter_map(|b| Some((b["name"].as_str()?.to_string(), ())))
        .collect();
    assert_eq!(
        names.keys().cloned().collect::<Vec<_>>(),
        vec!["dev".to_string(), "team/foo".to_string()]
    );
    let _ = (&live.base, &live.v1);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_branch_file_does_not_stop_the_start() {
    let live = start_with(
        &[("ok", "baseline", 2)],
        &[
            (
                "branches/typo.yaml",
                "parent: baseline\nservices:\n  api: {endpoints: [nope]}\n",
            ),
            ("branches/orphan.yaml", "parent: typo\nservices: {}\n"),
        ],
    )
    .await;
    assert_eq!(live.upstream_for("ok").await, "v2");
    assert_eq!(live.upstream_for("typo").await, "base", "left out");
    // the watcher reports both left-out files (the orphan needs the broken one)
    wait_rejected(&live, "file", 2.0).await;
    // fixing the file applies it, and its child with it
    let fixed = branch("baseline", live.v1.addr, "");
    std::fs::write(live.root().join("branches/typo.yaml"), fixed).expect("fix");
    live.wait_route("typo", "v1").await;
    live.wait_route("orphan", "v1").await;
    let _ = &live.base;
    live.stop().await;
}
