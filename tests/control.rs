//! The control plane against the real binary (issue 8): one broken branch file rejects only
//! itself; a deleted parent file is reported with its path and keeps its children serving; a
//! deleted branch's upstream leaves the table; admin query parameters and branch names in the
//! path are percent-decoded; bad bodies answer 422 and are counted; dot segments in branch
//! names are refused.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use common::*;
use http::Method;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const TOKEN: &str = "s3cret-token";
const DEADLINE: Duration = Duration::from_secs(10);

struct Live {
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
    proxy: SocketAddr,
    admin: SocketAddr,
    client: TestClient,
    base: Upstream,
    v1: Upstream,
    v2: Upstream,
}

fn org(base: SocketAddr) -> String {
    format!("kind: org\nrouting: {{debug_header: true}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n")
}

fn branch(parent: &str, endpoint: SocketAddr) -> String {
    format!("parent: {parent}\nservices:\n  api:\n    endpoints: [\"{endpoint}\"]\n")
}

impl Live {
    /// Start on a config directory with `branches` (name, parent, endpoint: 1 = v1, 2 = v2).
    async fn start(branches: &[(&str, &str, u8)]) -> Live {
        Live::start_with(branches, &[]).await
    }

    /// As [`Live::start`], plus `files` (path under the config directory, text) as written.
    async fn start_with(branches: &[(&str, &str, u8)], files: &[(&str, &str)]) -> Live {
        let base = Upstream::start("base").await;
        let v1 = Upstream::start("v1").await;
        let v2 = Upstream::start("v2").await;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("branches")).expect("mkdir");
        std::fs::write(dir.path().join("org.yaml"), org(base.addr)).expect("org");
        for (name, parent, ep) in branches {
            let ep = if *ep == 1 { v1.addr } else { v2.addr };
            std::fs::write(
                dir.path().join(format!("branches/{name}.yaml")),
                branch(parent, ep),
            )
            .expect("branch");
        }
        for (path, text) in files {
            std::fs::write(dir.path().join(path), text).expect("file");
        }
        let cfg = dir.path().to_str().expect("utf8").to_string();
        let (child, proxy, admin) = spawn_bin(
            &[
                "run",
                "--config",
                &cfg,
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--workers",
                "1",
            ],
            &[("MICROSTAX_ADMIN_TOKEN", TOKEN)],
        )
        .await;
        Live {
            dir,
            child: Some(child),
            proxy,
            admin,
            client: h1_client(),
            base,
            v1,
            v2,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    async fn upstream_for(&self, branch: &str) -> String {
        let r = get(
            &self.client,
            self.proxy,
            "/",
            &[("host", "api"), ("x-microstax-branch", branch)],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.upstream()
    }

    async fn wait_route(&self, branch: &str, want: &str) {
        wait_for(DEADLINE, &format!("{branch} -> {want}"), || async {
            (self.upstream_for(branch).await == want).then_some(())
        })
        .await;
    }

    async fn admin(&self, method: Method, path: &str, body: &str) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        send(
            &self.client,
            method,
            self.admin,
            path,
            &[("authorization", &auth)],
            body,
        )
        .await
    }

    async fn rejected(&self, source: &str) -> f64 {
        let r = self.admin(Method::GET, "/metrics", "").await;
        assert_eq!(r.status, 200);
        metric(
            &r.text(),
            &format!("microstax_config_rejected_total{{source=\"{source}\"}}"),
        )
    }

    async fn wait_rejected(&self, source: &str, at_least: f64) {
        wait_for(
            DEADLINE,
            &format!("{at_least} {source} rejections"),
            || async { (self.rejected(source).await >= at_least).then_some(()) },
        )
        .await;
    }

    async fn stop(mut self) {
        if let Some(c) = self.child.take() {
            stop_bin(c).await;
        }
    }
}

/// The value of one series in Prometheus text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_branch_file_rejects_only_itself() {
    let live = Live::start(&[("a", "baseline", 1), ("b", "baseline", 1)]).await;
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
    std::fs::write(&b, branch("baseline", live.v2.addr)).expect("b");
    live.wait_route("b", "v2").await;
    live.wait_rejected("file", 1.0).await;
    assert_eq!(
        live.upstream_for("a").await,
        "v1",
        "a's last good version serves"
    );
    // later edits of other files still apply, and the broken file is not counted again
    std::fs::write(
        live.root().join("branches/c.yaml"),
        branch("baseline", live.v2.addr),
    )
    .expect("c");
    live.wait_route("c", "v2").await;
    assert_eq!(live.rejected("file").await, 1.0);
    // fixing the broken file applies it
    std::fs::write(&a, branch("baseline", live.v2.addr)).expect("fix a");
    live.wait_route("a", "v2").await;
    let _ = (&live.base, &live.v1);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_parent_file_is_reported_with_its_path() {
    let live = Live::start(&[("dev", "baseline", 1), ("feat", "dev", 2)]).await;
    assert_eq!(live.upstream_for("feat").await, "v2");
    std::fs::remove_file(live.root().join("branches/dev.yaml")).expect("rm dev");
    live.wait_rejected("file", 1.0).await;
    // the children keep their lineage; the admin API says the file is gone and who holds it
    let r = live.admin(Method::GET, "/branches/dev", "").await;
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
    let r = live.admin(Method::GET, "/branches/dev", "").await;
    assert_eq!(r.status, 404);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_branch_upstream_leaves_the_table() {
    let live = Live::start(&[("dev", "baseline", 1)]).await;
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
    let r = live.admin(Method::GET, "/routes", "").await;
    assert!(
        routes(&r).contains(&live.v1.addr.to_string()),
        "{}",
        r.text()
    );
    std::fs::remove_file(live.root().join("branches/dev.yaml")).expect("rm");
    live.wait_route("dev", "base").await;
    let r = live.admin(Method::GET, "/routes", "").await;
    assert_eq!(routes(&r), vec![live.base.addr.to_string()], "{}", r.text());
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_decodes_names_and_answers_422_for_bad_bodies() {
    let live = Live::start(&[("dev", "baseline", 1)]).await;
    let body = branch("baseline", live.v2.addr);
    // a slash in a branch name, percent-encoded in the path and in the query
    let r = live.admin(Method::PUT, "/branches/team%2Ffoo", &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(live.upstream_for("team/foo").await, "v2");
    let r = live.admin(Method::GET, "/plan?branch=team%2Ffoo", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = live
        .admin(Method::GET, "/explain?branch=team%2Ffoo&service=api", "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // bad YAML, an unknown field and an empty body are invalid layers: 422, counted
    let before = live.rejected("api").await;
    for bad in [
        "services: [not, a, map\n",
        "parent: baseline\nsurvices: {}\n",
        "",
    ] {
        let r = live.admin(Method::PUT, "/branches/x", bad).await;
        assert_eq!(r.status, 422, "{bad:?}: {}", r.text());
        assert!(r.json()["diagnostics"].is_array(), "{}", r.text());
    }
    assert_eq!(live.rejected("api").await, before + 3.0);
    // dot segments are not branch names
    for name in ["a%2F..%2F..%2Fetc", "a/../../etc", "a/./b", "a//b"] {
        let r = live
            .admin(Method::PUT, &format!("/branches/{name}"), &body)
            .await;
        assert!(r.status.is_client_error(), "{name}: {}", r.text());
    }
    let r = live.admin(Method::GET, "/branches", "").await;
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
    let live = Live::start_with(
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
    live.wait_rejected("file", 2.0).await;
    // fixing the file applies it, and its child with it
    let fixed = branch("baseline", live.v1.addr);
    std::fs::write(live.root().join("branches/typo.yaml"), fixed).expect("fix");
    live.wait_route("typo", "v1").await;
    live.wait_route("orphan", "v1").await;
    let _ = &live.base;
    live.stop().await;
}
