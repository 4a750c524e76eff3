//! Live updates against the real binary: file edits, rename-into-place, ConfigMap-style symlink
//! swaps and admin writes each change routing (observed by real requests within a deadline);
//! invalid files and writes are rejected while routing stays; writes need the token; metrics
//! parse and count; readiness policies and prewarming; and a zero-loss run of 200 swaps under
//! load.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use common::live::*;
use common::*;
use http::Method;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

trait Metrics {
    async fn metrics(&self) -> BTreeMap<String, f64>;
}

impl Metrics for Live {
    async fn metrics(&self) -> BTreeMap<String, f64> {
        let r = self.admin(Method::GET, "/metrics", None, "").await;
        assert_eq!(r.status, 200);
        parse_prometheus(&r.text())
    }
}

/// [`Live::start_in`] with two workers and one branch `dev` on `v1`.
async fn start() -> Live {
    Live::start_in(
        |root, u| write_config(root, &org(u.base), &[("dev", branch("baseline", u.v1, ""))]),
        None,
        2,
    )
    .await
}

/// Strict parse of the Prometheus text format: every line is a comment (`# HELP`/`# TYPE`) or
/// `name{label="value",...} number`. Returns `name{sorted labels}` -> value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}")),
            ),
            None => (series, ""),
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        let mut pairs: Vec<String> = Vec::new();
        if !labels.is_empty() {
            for pair in labels.split("\",") {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label: {line}"));
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label name: {line}"
                );
                pairs.push(format!("{k}={}", v.trim_end_matches('"')));
            }
        }
        pairs.sort();
        out.insert(format!("{name}{{{}}}", pairs.join(",")), value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edit_rename_and_delete_change_routing() {
    let live = start().await;
    assert_eq!(live.upstream_for("dev").await, "v1");

    // edit in place
    let dev = live.root().join("branches/dev.yaml");
    std::fs::write(&dev, branch("baseline", live.v2.addr, "")).expect("edit");
    live.wait_route("dev", "v2").await;

    // an editor's write-to-temp-and-rename creates a new branch
    let tmp = live.root().join("branches/.new.yaml.swp");
    std::fs::write(&tmp, branch("dev", live.v1.addr, "")).expect("tmp");
    std::fs::rename(&tmp, live.root().join("branches/new.yaml")).expect("rename");
    live.wait_route("new", "v1").await;

    // deleting the file removes the branch: requests fall back to the baseline
    std::fs::remove_file(live.root().join("branches/new.yaml")).expect("rm");
    live.wait_route("new", "base").await;
    assert_eq!(live.upstream_for("dev").await, "v2");
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_symlink_swap_changes_routing() {
    // the layout a Kubernetes ConfigMap volume uses: files are symlinks through `..data`,
    // which is itself a symlink to a timestamped directory, swapped atomically on update
    let live = Live::start_in(
        |root, u| {
            let v = root.join("cm/..2026_01");
            write_config(&v, &org(u.base), &[("dev", branch("baseline", u.v1, ""))]);
            std::os::unix::fs::symlink("..2026_01", root.join("cm/..data")).expect("..data");
            std::os::unix::fs::symlink("..data/org.yaml", root.join("cm/org.yaml"))
                .expect("org link");
            std::os::unix::fs::symlink("..data/branches", root.join("cm/branches"))
                .expect("branches link");
        },
        Some("cm"),
        2,
    )
    .await;
    assert_eq!(live.upstream_for("dev").await, "v1");
    let cm = live.root().join("cm");
    let org_text = std::fs::read_to_string(cm.join("org.yaml")).expect("read org");
    write_config(
        &cm.join("..2026_02"),
        &org_text,
        &[("dev", branch("baseline", live.v2.addr, ""))],
    );
    std::os::unix::fs::symlink("..2026_02", cm.join("..data_tmp")).expect("tmp link");
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).expect("swap");
    live.wait_route("dev", "v2").await;
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_is_rejected_and_routing_stays() {
    let live = start().await;
    let dev = live.root().join("branches/dev.yaml");
    std::fs::write(&dev, branch("no-such-parent", live.v2.addr, "")).expect("bad edit");
    wait_for(DEADLINE, "a counted rejection", || async {
        let m = live.metrics().await;
        (m.get("microstax_config_rejected_total{source=file}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        live.upstream_for("dev").await,
        "v1",
        "last good table keeps serving"
    );
    std::fs::write(&dev, "services: [not, a, map\n").expect("syntax error");
    wait_for(DEADLINE, "a second rejection", || async {
        let m = live.metrics().await;
        (m.get("microstax_config_rejected_total{source=file}")
            .copied()
            .unwrap_or(0.0)
            >= 2.0)
            .then_some(())
    })
    .await;
    assert_eq!(live.upstream_for("dev").await, "v1");
    // fixing the file is picked up
    std::fs::write(&dev, branch("baseline", live.v2.addr, "")).expect("fix");
    live.wait_route("dev", "v2").await;
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_reads_writes_and_token() {
    let live = start().await;
    let body = format!(
        "parent: dev\nservices:\n  api: {{endpoints: [\"{}\"]}}\n",
        live.v2.addr
    );
    // writes need the token
    let r = live.admin(Method::PUT, "/branches/feat", None, &body).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = live
        .admin(Method::PUT, "/branches/feat", Some("wrong"), &body)
        .await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]
        .as_str()
        .unwrap_or("")
        .contains("bearer token"));
    assert_eq!(
        live.upstream_for("feat").await,
        "base",
        "unknown until created"
    );

    let r = live
        .admin(Method::PUT, "/branches/feat", Some(TOKEN), &body)
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let generation = r.json()["generation"].as_u64().expect("generation");
    // the write returns once the table is published
    assert_eq!(live.upstream_for("feat").await, "v2");
    // JSON bodies work too; replacing answers 200
    let json_body = format!(
        "{{\"parent\": \"dev\", \"services\": {{\"api\": {{\"endpoints\": [\"{}\"]}}}}}}",
        live.v1.addr
    );
    let r = live
        .admin(Method::PUT, "/branches/feat", Some(TOKEN), &json_body)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["generation"].as_u64() > Some(generation));
    assert_eq!(live.upstream_for("feat").await, "v1");

    // an invalid write is rejected with its reason and changes nothing
    let bad = "parent: feat\nservices:\n  api:\n    endpoints: [\"nope\"]\n";
    let r = live
        .admin(Method::PUT, "/branches/feat", Some(TOKEN), bad)
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    let j = r.json();
    // diagnostics come in line order: the self-parent cycle (line 1) first, then the endpoint
    let d = &j["diagnostics"][1];
    assert_eq!(j["diagnostics"][0]["field"], "parent");
    assert_eq!(d["file"], "api:PUT /branches/feat");
    assert_eq!(d["line"], 4);
    assert_eq!(d["field"], "services.api.endpoints.0");
    assert_eq!(live.upstream_for("feat").await, "v1");
    let r = live
        .admin(Method::PUT, "/branches/feat", Some(TOKEN), "name: other\n")
        .await;
    assert_eq!(r.status, 422);
    let r = live
        .admin(Method::PUT, "/branches/Bad%20Name", Some(TOKEN), "{}")
        .await;
    assert!(r.status.is_client_error());

    // reads are open
    let r = live.admin(Method::GET, "/branches/feat", None, "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["lineage"],
        serde_json::json!(["branch/feat", "branch/dev", "baseline"])
    );
    let r = live.admin(Method::GET, "/branches", None, "").await;
    assert_eq!(r.json()["branches"].as_array().map(Vec::len), Some(2));
    let r = live.admin(Method::GET, "/routes", None, "").await;
    assert!(r.json()["generation"].as_u64() > Some(generation));
    let r = live.admin(Method::GET, "/readyz", None, "").await;
    assert_eq!(r.status, 200);
    // plan and explain answer on the live config, as the CLI does
    let r = live.admin(Method::GET, "/plan?branch=dev", None, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let api = r.json()["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["name"] == "api")
        .cloned()
        .expect("api");
    assert_eq!(api["decision"], "fork", "{api}");
    let r = live
        .admin(Method::GET, "/explain?branch=feat&service=api", None, "")
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("branch/feat"), "{}", r.text());
    let r = live.admin(Method::GET, "/plan", None, "").await;
    assert_eq!(r.status, 400);
    let r = live
        .admin(Method::GET, "/plan?branch=ghost", None, "")
        .await;
    assert_eq!(r.status, 404);
    let r = live.admin(Method::GET, "/nope", None, "").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());

    // deleting: a parent with children is refused, a leaf goes
    let r = live
        .admin(Method::DELETE, "/branches/dev", Some(TOKEN), "")
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = live
        .admin(Method::DELETE, "/branches/feat", Some(TOKEN), "")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(live.upstream_for("feat").await, "base");
    let r = live
        .admin(Method::DELETE, "/branches/feat", Some(TOKEN), "")
        .await;
    assert_eq!(r.status, 404);
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_requests() {
    let live = start().await;
    for _ in 0..7 {
        assert_eq!(live.upstream_for("dev").await, "v1");
    }
    for _ in 0..3 {
        assert_eq!(live.upstream_for("baseline-please").await, "base");
    }
    let m = live.metrics().await;
    let key = |route: &str| {
        format!("microstax_requests_total{{branch=-,route={route},service=api,status=2xx}}")
    };
    assert_eq!(m.get(&key("branch")).copied(), Some(7.0), "{m:#?}");
    assert_eq!(m.get(&key("baseline")).copied(), Some(3.0));
    assert_eq!(
        m.get("microstax_request_duration_seconds_count{route=branch}")
            .copied(),
        Some(7.0)
    );
    assert_eq!(m.get("microstax_table_branches{}").copied(), Some(1.0));
    assert!(m.get("microstax_table_generation{}").copied() >= Some(1.0));
    assert!(m.contains_key("microstax_active_connections{}"));
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_policies_and_prewarming() {
    let live = start().await;
    let dead: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let put = |name: &'static str, ep: SocketAddr, extra: &'static str| {
        let live = &live;
        async move {
            let body = branch("baseline", ep, extra);
            let r = live
                .admin(
                    Method::PUT,
                    &format!("/branches/{name}"),
                    Some(TOKEN),
                    &body,
                )
                .await;
            assert!(r.status.is_success(), "{}", r.text());
        }
    };
    // fallback: the parent's route, marked
    put("fb", dead, "    policy: {readiness: {policy: fallback}}\n").await;
    let r = get(
        &live.client,
        live.proxy,
        "/",
        &[("host", "api"), ("x-microstax-branch", "fb")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), "base");
    assert_eq!(
        r.headers.get("x-microstax-fallback").map(|v| v.as_bytes()),
        Some(&b"not-ready"[..])
    );
    // fail: 503 with the reason
    put("ff", dead, "    policy: {readiness: {policy: fail}}\n").await;
    let r = get(
        &live.client,
        live.proxy,
        "/",
        &[("host", "api"), ("x-microstax-branch", "ff")],
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("not ready"), "{}", r.text());
    // hold: the request waits until the upstream comes up
    put(
        "fh",
        dead,
        "    policy: {readiness: {policy: hold, hold_ms: 8000}}\n",
    )
    .await;
    let c = live.client.clone();
    let proxy = live.proxy;
    let held = tokio::spawn(async move {
        get(
            &c,
            proxy,
            "/",
            &[("host", "api"), ("x-microstax-branch", "fh")],
        )
        .await
    });
    let late = Upstream::start_on("late", dead).await;
    let r = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("held request timed out")
        .expect("join");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), "late");
    drop(late);

    // prewarm: connections are open before the write returns, and the first request reuses one
    let warm = Upstream::start("warm").await;
    put("pw", warm.addr, "").await;
    assert!(
        warm.conns.load(Ordering::SeqCst) >= 1,
        "prewarm opened no connection"
    );
    // the swap waits for one answer per worker; the other prewarm connections (2 on each of
    // the 2 workers) are still being opened in the background
    let opened = wait_for(DEADLINE, "4 prewarmed connections", || async {
        let n = warm.conns.load(Ordering::SeqCst);
        (n >= 4).then_some(n)
    })
    .await;
    let r = get(
        &live.client,
        live.proxy,
        "/",
        &[("host", "api"), ("x-microstax-branch", "pw")],
    )
    .await;
    assert_eq!(r.upstream(), "warm");
    assert_eq!(
        warm.conns.load(Ordering::SeqCst),
        opened,
        "first request paid a connect"
    );
    let m = live.metrics().await;
    assert!(m.get("microstax_prewarm_total{outcome=ok}").copied() >= Some(1.0));
    assert!(m.get("microstax_prewarm_total{outcome=failed}").copied() >= Some(1.0));
    let _ = (&live.base, &live.v1, &live.v2);
    live.stop().await;
}

/// Parse `gen=N` from the route header.
fn generation_of(r: &Reply) -> u64 {
    r.route()
        .split("; ")
        .find_map(|p| p.strip_prefix("gen="))
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no generation in `{}`", r.route()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_under_200_swaps() {
    let live = start().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for i in 0..16 {
        // one client per worker with one pooled connection: requests go over one connection
        let client: TestClient =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http();
        let (stop, total, proxy) = (stop.clone(), total.clone(), live.proxy);
        workers.push(tokio::spawn(async move {
            let mut last_gen = 0;
            let mut n = 0u64;
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end && n < 200_000 {
                let br = if i % 2 == 0 { "dev" } else { "nobody" };
                let r = get(
                    &client,
                    proxy,
                    "/",
                    &[("host", "api"), ("x-microstax-branch", br)],
                )
                .await;
                assert_eq!(r.status, 200, "request failed during swaps: {}", r.text());
                let g = generation_of(&r);
                assert!(
                    g >= last_gen,
                    "generation went backwards on a connection: {last_gen} -> {g}"
                );
                last_gen = g;
                n += 1;
            }
            total.fetch_add(n, Ordering::Relaxed);
            last_gen
        }));
    }
    let dev = live.root().join("branches/dev.yaml");
    let swaps_start = Instant::now();
    let mut generation = 1u64;
    for i in 0..100 {
        // through a file: wait until the new generation is served
        let ep = if i % 2 == 0 {
            live.v2.addr
        } else {
            live.v1.addr
        };
        // every write is distinct, so each one is a change to apply
        let text = format!("# revision {i}\n{}", branch("baseline", ep, ""));
        std::fs::write(&dev, text).expect("write");
        let want = generation + 1;
        wait_for(DEADLINE, "file swap", || async {
            let r = live.admin(Method::GET, "/routes", None, "").await;
            r.json()["generation"].as_u64().filter(|g| *g >= want)
        })
        .await;
        // through the API
        let body = branch("dev", ep, "");
        let r = live
            .admin(Method::PUT, "/branches/api-made", Some(TOKEN), &body)
            .await;
        assert!(r.status.is_success(), "{}", r.text());
        generation = r.json()["generation"].as_u64().expect("generation");
    }
    let swap_secs = swaps_start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let last = w.await.expect("worker panicked");
        assert!(last >= 1);
    }
    let n = total.load(Ordering::Relaxed);
    assert!(
        generation >= 201,
        "expected 200 swaps, generation is {generation}"
    );
    assert!(n > 0);
    eprintln!("zero-loss: {n} requests, 0 failed, 200 swaps in {swap_secs:.2} s");
    live.stop().await;
}
