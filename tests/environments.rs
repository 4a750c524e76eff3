//! Environments that run, end to end: `microstax run --executor process` on a watched config
//! directory. A new branch file leads to its planned fork running as a real process and its
//! requests served by it; a second branch with the identical spec shares that process; deleting
//! the branches gives the process back (its pid gone) after the grace; stopping the proxy stops
//! every instance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);

/// A tiny HTTP server: answers every GET with `instance=<id> flag=<FLAG>`.
const CHILD: &str = include_str!("fixtures/instance.py");

fn write_org(dir: &Path, base: &str) {
    std::fs::create_dir_all(dir.join("branches")).unwrap();
    std::fs::write(dir.join("child.py"), CHILD).unwrap();
    let child = dir.join("child.py");
    let org = format!(
        "kind: org\nlifecycle: {{grace_ms: 200}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n    run:\n      command: python3\n      args: [\"{}\", \"{{port}}\", \"{{instance}}\"]\n      start_timeout_ms: 10000\n",
        child.display()
    );
    std::fs::write(dir.join("org.yaml"), org).unwrap();
}

fn write_branch(dir: &Path, name: &str, flag: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(
        &tmp,
        format!("parent: baseline\nservices:\n  api:\n    env: {{FLAG: \"{flag}\"}}\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, dir.join(format!("branches/{name}.yaml"))).unwrap();
}

/// The config directory of these tests (the org above, served by a baseline upstream) and a
/// state directory for the process executor.
struct Setup {
    _base: Upstream,
    dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
    state: std::path::PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        let base = Upstream::start("base").await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg");
        write_org(&cfg, &base.addr.to_string());
        let state = dir.path().join("state");
        Setup {
            _base: base,
            dir,
            cfg,
            state,
        }
    }

    /// `microstax run --executor process` on the config, plus `extra` flags.
    async fn run(
        &self,
        extra: &[&str],
    ) -> (
        tokio::process::Child,
        std::net::SocketAddr,
        std::net::SocketAddr,
    ) {
        let mut flags = vec!["--executor", "process", "--state-dir"];
        flags.push(self.state.to_str().unwrap());
        flags.extend_from_slice(extra);
        spawn_run(&self.cfg, &flags).await
    }
}

fn pid_alive(pid: u64) -> bool {
    // a zombie (exited, not yet reaped by an init that does not reap) is gone for our purposes
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_files_start_share_and_give_back_real_processes() {
    let setup = Setup::new().await;
    let cfg = setup.cfg.clone();
    let (child, proxy, admin) = setup.run(&[]).await;
    let c = h1_client();
    let body_for = |branch: &'static str| {
        let c = c.clone();
        async move {
            let r = get(
                &c,
                proxy,
                "/",
                &[("host", "api"), ("x-microstax-branch", branch)],
            )
            .await;
            (r.status, r.text())
        }
    };
    // no branch yet: the baseline answers
    let (status, text) = body_for("feat").await;
    assert_eq!(status, 200);
    assert!(text.contains("\"base\""), "{text}");

    // a new branch file: its fork runs as a process of its own and serves the branch
    write_branch(&cfg, "feat", "on");
    let served = wait_for(DEADLINE, "feat served by its own instance", || async {
        let (status, text) = body_for("feat").await;
        (status == 200 && text.starts_with("instance=")).then_some(text)
    })
    .await;
    assert!(served.ends_with("flag=on"), "{served}");
    // the baseline is untouched
    assert!(body_for("other").await.1.contains("\"base\""));

    let instances = |c: TestClient| async move { get(&c, admin, "/instances", &[]).await.json() };
    let v = instances(c.clone()).await;
    assert_eq!(v["executor"], "process", "{v}");
    let list = v["instances"].as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "{v}");
    let pid = list[0]["pid"].as_u64().expect("a pid");
    assert!(pid_alive(pid));
    assert!(
        served.contains(list[0]["instance"].as_str().unwrap()),
        "{served} {v}"
    );

    // a second branch with the identical spec shares the process
    write_branch(&cfg, "feat2", "on");
    let v = wait_for(DEADLINE, "feat2 planned", || async {
        let v = instances(c.clone()).await;
        let b = v["instances"][0]["branches"].as_array().map_or(0, Vec::len);
        (b == 2).then_some(v)
    })
    .await;
    assert_eq!(v["instances"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["instances"][0]["pid"].as_u64(), Some(pid), "{v}");
    let (_, text2) = body_for("feat2").await;
    assert_eq!(text2, served, "feat2 is served by the same instance");

    // a branch with another spec gets an instance of its own
    write_branch(&cfg, "feat3", "off");
    let other = wait_for(DEADLINE, "feat3 served by its own instance", || async {
        let (status, text) = body_for("feat3").await;
        (status == 200 && text.ends_with("flag=off")).then_some(text)
    })
    .await;
    assert_ne!(other, served);

    // deleting the branches gives the processes back after the grace
    for b in ["feat", "feat2", "feat3"] {
        std::fs::remove_file(cfg.join(format!("branches/{b}.yaml"))).unwrap();
    }
    wait_for(DEADLINE, "the instances given back", || async {
        let v = instances(c.clone()).await;
        v["instances"]
            .as_array()
            .is_some_and(Vec::is_empty)
            .then_some(())
    })
    .await;
    wait_for(DEADLINE, "the first instance's pid gone", || async {
        (!pid_alive(pid)).then_some(())
    })
    .await;
    assert!(body_for("feat").await.1.contains("\"base\""));
    stop_bin(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_proxy_stops_its_instances() {
    let setup = Setup::new().await;
    let cfg = setup.cfg.clone();
    write_branch(&cfg, "feat", "on");
    let (child, proxy, admin) = setup.run(&[]).await;
    let c = h1_client();
    // the branch existed before the start: its instance is started before the first table
    // (a first request is held while it starts; on a loaded machine the start may outlast the
    // hold, so poll)
    let r = wait_for(DEADLINE, "the branch served by its instance", || async {
        let r = get(
            &c,
            proxy,
            "/",
            &[("host", "api"), ("x-microstax-branch", "feat")],
        )
        .await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert!(r.text().starts_with("instance="), "{}", r.text());
    let v = get(&c, admin, "/instances", &[]).await.json();
    let pid = v["instances"][0]["pid"].as_u64().expect("a pid");
    assert!(pid_alive(pid));
    // SIGTERM by pid: the proxy drains and stops every instance before it exits
    let proxy_pid = child.id().expect("pid");
    signal(u64::from(proxy_pid), rustix::process::Signal::TERM);
    let mut child = child;
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the proxy exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(!pid_alive(pid), "instance {pid} outlived the proxy");
}

/// Send `signal` to process `pid` (by pid, never by name).
fn signal(pid: u64, signal: rustix::process::Signal) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, signal);
    }
}

/// A request for a scaled-to-zero instance: held while it starts, then served by it.
async fn served_after_a_cold_start(
    c: &TestClient,
    proxy: std::net::SocketAddr,
    headers: &[(&str, &str)],
) {
    let r = get(c, proxy, "/", headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("instance="), "{}", r.text());
    assert!(
        r.headers.contains_key("x-microstax-cold-start-ms"),
        "{:?}",
        r.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_scales_to_zero_and_a_request_wakes_it() {
    let setup = Setup::new().await;
    let cfg = setup.cfg.clone();
    // idle after 1 s; the wake may take a while on a loaded machine: hold up to 10 s
    let org = std::fs::read_to_string(cfg.join("org.yaml"))
        .unwrap()
        .replace(
        "    run:\n",
        "    idle_after_s: 1\n    policy: {readiness: {policy: hold, hold_ms: 10000}}\n    run:\n",
    );
    std::fs::write(cfg.join("org.yaml"), org).unwrap();
    write_branch(&cfg, "feat", "on");
    let (child, proxy, admin) = setup.run(&[]).await;
    let c = h1_client();
    let headers = [("host", "api"), ("x-microstax-branch", "feat")];
    let r = get(&c, proxy, "/", &headers).await;
    assert!(r.text().starts_with("instance="), "{}", r.text());
    let v = get(&c, admin, "/instances", &[]).await.json();
    let pid = v["instances"][0]["pid"].as_u64().expect("a pid");
    // no request for a while: the instance is stopped, its address kept
    wait_for(DEADLINE, "the idle instance stopped", || async {
        (!pid_alive(pid)).then_some(())
    })
    .await;
    // the next request wakes it and is held until it answers
    served_after_a_cold_start(&c, proxy, &headers).await;
    let v = get(&c, admin, "/instances", &[]).await.json();
    let pid2 = v["instances"][0]["pid"].as_u64().expect("a pid");
    assert_ne!(pid2, pid);
    stop_bin(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_branches_expire_by_their_ttl() {
    let setup = Setup::new().await;
    let cfg = setup.cfg.clone();
    // a file-backed parent with a child, both with a TTL of 1 s
    std::fs::write(
        cfg.join("branches/parent.yaml"),
        "parent: baseline\nlifecycle: {ttl_s: 1}\nservices:\n  api:\n    env: {FLAG: parent}\n",
    )
    .unwrap();
    std::fs::write(
        cfg.join("branches/child.yaml"),
        "parent: parent\nlifecycle: {ttl_s: 1}\nservices:\n  api:\n    env: {FLAG: child}\n",
    )
    .unwrap();
    let token = setup.dir.path().join("token");
    std::fs::write(&token, "ttl-token").unwrap();
    let (child, proxy, admin) = setup
        .run(&["--admin-token-file", token.to_str().unwrap()])
        .await;
    let c = h1_client();
    // an API-created branch with a TTL
    let req = http::Request::put(format!("http://{admin}/branches/api-made"))
        .header("authorization", "Bearer ttl-token")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            "parent: baseline\nlifecycle: {ttl_s: 1}\n",
        )))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 201);
    let listed = get(&c, admin, "/branches", &[]).await.json();
    let has_expiry = |v: &serde_json::Value, name: &str| {
        v["branches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == name && b["expires_at"].as_u64().is_some())
    };
    wait_for(DEADLINE, "expires_at listed", || async {
        let v = get(&c, admin, "/branches", &[]).await.json();
        has_expiry(&v, "child").then_some(())
    })
    .await;
    drop(listed);

    // the API-created branch is deleted; the file-backed child goes dormant (its instance given
    // back) and the parent, which has a child, is never collected
    wait_for(DEADLINE, "the API branch deleted", || async {
        let r = get(&c, admin, "/branches/api-made", &[]).await;
        (r.status == 404).then_some(())
    })
    .await;
    wait_for(DEADLINE, "the child dormant", || async {
        let v = get(&c, admin, "/branches", &[]).await.json();
        let dormant = v["branches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == "child" && b["dormant"] == true);
        dormant.then_some(())
    })
    .await;
    let v = get(&c, admin, "/branches", &[]).await.json();
    let parent = v["branches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "parent")
        .cloned()
        .unwrap();
    assert!(parent.get("dormant").is_none(), "{parent}");
    // the dormant child's instance is stopped; the parent's keeps running
    wait_for(DEADLINE, "the child's instance given back", || async {
        let v = get(&c, admin, "/instances", &[]).await.json();
        let n = v["instances"].as_array().map_or(0, Vec::len);
        let stopped = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["pid"].is_null())
            .count();
        (n == 2 && stopped == 1).then_some(())
    })
    .await;
    // a request for the child wakes it: served by its own instance again
    let r = get(
        &c,
        proxy,
        "/",
        &[("host", "api"), ("x-microstax-branch", "child")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().ends_with("flag=child"), "{}", r.text());
    stop_bin(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_reaps_what_a_killed_one_left() {
    let setup = Setup::new().await;
    let cfg = setup.cfg.clone();
    write_branch(&cfg, "feat", "on");
    let (child, _, admin) = setup.run(&[]).await;
    let c = h1_client();
    let pid = wait_for(DEADLINE, "the instance's pid", || async {
        let v = get(&c, admin, "/instances", &[]).await.json();
        v["instances"][0]["pid"].as_u64()
    })
    .await;
    assert!(pid_alive(pid));
    // SIGKILL: no drain, no shutdown of the instances
    let mut child = child;
    signal(
        u64::from(child.id().expect("pid")),
        rustix::process::Signal::KILL,
    );
    let _ = tokio::time::timeout(DEADLINE, child.wait()).await;
    // the next start on the same state directory leaves no instance of the old run behind
    let (child, proxy, admin) = setup.run(&[]).await;
    wait_for(DEADLINE, "the old instance gone", || async {
        (!pid_alive(pid)).then_some(())
    })
    .await;
    let pid2 = wait_for(DEADLINE, "the new instance's pid", || async {
        let v = get(&c, admin, "/instances", &[]).await.json();
        v["instances"][0]["pid"].as_u64()
    })
    .await;
    assert_ne!(pid2, pid);
    let v = get(&c, admin, "/instances", &[]).await.json();
    assert_eq!(v["instances"].as_array().map(Vec::len), Some(1), "{v}");
    let r = get(
        &c,
        proxy,
        "/",
        &[("host", "api"), ("x-microstax-branch", "feat")],
    )
    .await;
    assert!(r.text().starts_with("instance="), "{}", r.text());
    stop_bin(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_is_restarted_and_serves_its_branch_again() {
    let setup = Setup::new().await;
    let cfg = setup.cfg.clone();
    write_branch(&cfg, "feat", "on");
    let (child, proxy, admin) = setup.run(&[]).await;
    let c = h1_client();
    let headers = [("host", "api"), ("x-microstax-branch", "feat")];
    let first = get(&c, proxy, "/", &headers).await.text();
    assert!(first.starts_with("instance="), "{first}");
    let v = get(&c, admin, "/instances", &[]).await.json();
    let pid = v["instances"][0]["pid"].as_u64().expect("a pid");
    signal(pid, rustix::process::Signal::KILL);
    // requests sent right after the crash, before the executor has noticed it, meet the refused
    // port: they are held (the route's readiness policy) until the restart answers, not 502
    for i in 0..5 {
        let r = get(&c, proxy, "/", &headers).await;
        assert_eq!(r.status, 200, "request {i} after the crash: {}", r.text());
        assert_eq!(r.text(), first);
    }
    // the executor restarted it at the same address
    wait_for(DEADLINE, "the instance restarted", || async {
        let v = get(&c, admin, "/instances", &[]).await.json();
        (v["instances"][0]["restarts"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    let again = wait_for(DEADLINE, "the branch served again", || async {
        let r = get(&c, proxy, "/", &headers).await;
        (r.status == 200).then(|| r.text())
    })
    .await;
    assert_eq!(again, first);
    let v = get(&c, admin, "/instances", &[]).await.json();
    assert_ne!(v["instances"][0]["pid"].as_u64(), Some(pid), "{v}");
    stop_bin(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_settings_keeps_its_users_from_starting_and_says_why() {
    let base = Upstream::start("base").await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg");
    std::fs::create_dir_all(cfg.join("branches")).unwrap();
    let child = dir.path().join("child.py");
    std::fs::write(&child, CHILD).unwrap();
    // `api` uses the postgres store `db`; the org has no `stores:` settings for it
    std::fs::write(
        cfg.join("org.yaml"),
        format!(
            "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{}\"]\n    stores: [{{name: db, kind: postgres}}]\n    run:\n      command: python3\n      args: [\"{}\", \"{{port}}\", \"{{instance}}\"]\n",
            base.addr,
            child.display()
        ),
    )
    .unwrap();
    // a migration isolates `db` for the branch
    std::fs::write(
        cfg.join("branches/mig.yaml"),
        "parent: baseline\nservices:\n  api:\n    image: api:2\n    migrations: [{store: db, name: 0001_add}]\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    let (child, proxy, admin) = spawn_run_processes(&cfg, &state).await;
    let c = h1_client();
    let v = get(&c, admin, "/instances", &[]).await.json();
    assert_eq!(
        v["instances"],
        serde_json::json!([]),
        "nothing started: {v}"
    );
    let failures = v["failures"].as_array().unwrap();
    let reasons: Vec<&str> = failures
        .iter()
        .filter_map(|f| f["reason"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("isolates store db") && r.contains("no settings")),
        "{v}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not started") && r.contains("db")),
        "{v}"
    );
    // explain says why, and the branch keeps the baseline's instance
    let e = get(&c, admin, "/explain?branch=mig&service=api", &[])
        .await
        .json();
    assert!(
        e["note"]
            .as_str()
            .is_some_and(|n| n.contains("not started")),
        "{e}"
    );
    let r = get(
        &c,
        proxy,
        "/",
        &[("host", "api"), ("x-microstax-branch", "mig")],
    )
    .await;
    assert!(r.text().contains("\"base\""), "{}", r.text());
    // and a metric counts it
    let metrics = wait_for(DEADLINE, "the failure gauge", || async {
        let m = get(&c, admin, "/metrics", &[]).await.text();
        m.lines()
            .any(|l| l.starts_with("microstax_environment_failures{kind=\"plan\"} 2"))
            .then_some(m)
    })
    .await;
    assert!(
        metrics.contains("microstax_instances{state=\"ready\"} 0"),
        "{metrics}"
    );
    stop_bin(child).await;
}

/// One replica as `/instances` shows it.
#[derive(Debug, Clone)]
struct Replica {
    index: u64,
    pid: u64,
    log: std::path::PathBuf,
}

/// The ready replicas `/instances` lists, by replica index.
async fn ready_replicas(c: &TestClient, admin: std::net::SocketAddr) -> Vec<Replica> {
    let v = get(c, admin, "/instances", &[]).await.json();
    let mut out: Vec<Replica> = v["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["state"] == "ready")
        .filter_map(|i| {
            Some(Replica {
                index: i["replica"].as_u64()?,
                pid: i["pid"].as_u64()?,
                log: i["log"].as_str()?.into(),
            })
        })
        .collect();
    out.sort_by_key(|r| r.index);
    out
}

/// Wait until `n` replicas are ready; they are returned by replica index.
async fn wait_ready_replicas(
    c: &TestClient,
    admin: std::net::SocketAddr,
    n: usize,
) -> Vec<Replica> {
    wait_for(DEADLINE, &format!("{n} ready replicas"), || async {
        let ready = ready_replicas(c, admin).await;
        (ready.len() == n).then_some(ready)
    })
    .await
}

/// The headers of a request for branch `feat`'s `api`.
const FEAT: [(&str, &str); 2] = [("host", "api"), ("x-microstax-branch", "feat")];

/// A run of the replica tests: `api` runs two replicas (its reliability floor) for branch
/// `feat`, with `extra` lines in its service block; returned once both are ready.
struct ReplicaRun {
    setup: Setup,
    child: tokio::process::Child,
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    c: TestClient,
    replicas: Vec<Replica>,
}

impl ReplicaRun {
    async fn start(extra: &str) -> ReplicaRun {
        let setup = Setup::new().await;
        let org = std::fs::read_to_string(setup.cfg.join("org.yaml")).unwrap();
        let org = org.replace(
            "    run:\n",
            &format!("    min_replicas: 2\n{extra}    run:\n"),
        );
        std::fs::write(setup.cfg.join("org.yaml"), org).unwrap();
        write_branch(&setup.cfg, "feat", "on");
        // one proxy worker (`spawn_run`): the balancer's in-flight counts are per worker
        let (child, proxy, admin) = setup.run(&[]).await;
        let c = h1_client();
        let replicas = wait_ready_replicas(&c, admin, 2).await;
        ReplicaRun {
            setup,
            child,
            proxy,
            admin,
            c,
            replicas,
        }
    }
}

/// Scale to zero after 1 s idle; a wake may take a while on a loaded machine: hold up to 10 s.
const SCALED: &str =
    "    idle_after_s: 1\n    policy: {readiness: {policy: hold, hold_ms: 10000}}\n";

/// Both replicas answer through the proxy (bounded: 200 requests).
async fn both_answer(c: &TestClient, proxy: std::net::SocketAddr, headers: &[(&str, &str)]) {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let r = get(c, proxy, "/", headers).await;
        assert_eq!(r.status, 200, "{}", r.text());
        seen.insert(r.text());
        if seen.len() == 2 {
            return;
        }
    }
    panic!("only one replica answered: {seen:?}");
}

/// Every replica of `after` runs a process other than its namesake of `before`.
fn assert_new_processes(after: &[Replica], before: &[Replica]) {
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(before) {
        assert_ne!(a.pid, b.pid, "replica {} runs a new process", a.index);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_run_as_processes_share_the_load_and_survive_a_crash() {
    let ReplicaRun {
        setup: _setup,
        child,
        proxy,
        admin,
        c,
        replicas,
    } = ReplicaRun::start("").await;
    let headers = FEAT;
    let pids: Vec<u64> = replicas.iter().map(|r| r.pid).collect();
    assert_ne!(pids[0], pids[1]);
    // both replicas answer through the proxy
    both_answer(&c, proxy, &headers).await;
    // the state gauge counts each replica, as /instances lists them (it counted the instance
    // once, by replica 0, before)
    let rows = get(&c, admin, "/instances", &[]).await.json();
    let ready = rows["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["state"] == "ready")
        .count();
    let line = format!("microstax_instances{{state=\"ready\"}} {ready}");
    wait_for(DEADLINE, &line, || async {
        let m = get(&c, admin, "/metrics", &[]).await.text();
        m.lines().any(|l| l == line).then_some(())
    })
    .await;
    // one replica crashes: requests keep succeeding, and it comes back with a new pid
    signal(pids[1], rustix::process::Signal::KILL);
    for i in 0..20 {
        let r = get(&c, proxy, "/", &headers).await;
        assert_eq!(r.status, 200, "request {i} after the crash: {}", r.text());
    }
    wait_for(DEADLINE, "the crashed replica restarted", || async {
        let ready: Vec<u64> = ready_replicas(&c, admin)
            .await
            .iter()
            .map(|r| r.pid)
            .collect();
        (ready.len() == 2 && ready.contains(&pids[0]) && !ready.contains(&pids[1])).then_some(())
    })
    .await;
    stop_bin(child).await;
}

/// Whether `log` has the line the fixture prints when it takes a `/hold` request for `until`.
fn holds(log: &Path, until: &Path) -> bool {
    let line = format!("held {}", until.display());
    std::fs::read_to_string(log).is_ok_and(|s| s.lines().any(|l| l == line))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_to_any_replica_keeps_every_replica_from_scaling_to_zero() {
    let ReplicaRun {
        setup: _setup,
        child,
        proxy,
        admin,
        c,
        replicas,
    } = ReplicaRun::start(SCALED).await;
    let headers = FEAT;
    // replica 0 answers `/fail0` with 500 (replica 1 with 200) until outlier detection ejects
    // it (5 in a row); then every request goes to replica 1 for the ejection's 10 s and replica
    // 0's upstream sees none, with no request in flight anywhere (bounded: 100 requests)
    let rows = get(&c, admin, "/instances", &[]).await.json();
    let first = rows["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["replica"] == 0)
        .and_then(|i| i["address"].as_str().map(String::from))
        .expect("replica 0's address");
    let ejected = || async {
        let v = get(&c, admin, "/upstreams", &[]).await.json();
        v["upstreams"].as_array().is_some_and(|l| {
            l.iter()
                .any(|u| u["upstream"] == first.as_str() && u["ejected"] == true)
        })
    };
    let mut sent = 0;
    while !ejected().await {
        assert!(sent < 100, "replica 0 not ejected after {sent} requests");
        let _ = get(&c, proxy, "/fail0", &headers).await;
        sent += 1;
    }
    // seven idle periods of requests that all reach replica 1 (within the ejection's 10 s):
    // the instance is not idle, so neither replica stops (bounded by time, paced every 50 ms)
    let end = std::time::Instant::now() + Duration::from_secs(7);
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut served = 0;
    while std::time::Instant::now() < end {
        pace.tick().await;
        let r = get(&c, proxy, "/", &headers).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // a request held for a wake means the instance was put to sleep under it
        assert!(
            !r.headers.contains_key("x-microstax-cold-start-ms"),
            "request {served} was held for a cold start: {:?}",
            r.headers
        );
        for r in &replicas {
            assert!(
                pid_alive(r.pid),
                "replica {} (pid {}) stopped while replica 1 served {served} requests",
                r.index,
                r.pid
            );
        }
        // (checked last: after a scale-down under it, a restarted replica 0 may answer)
        assert!(
            r.text().contains(".1 flag="),
            "replica 1 answers: {}",
            r.text()
        );
        served += 1;
    }
    let m = get(&c, admin, "/metrics", &[]).await.text();
    assert!(
        m.lines().any(|l| l == "microstax_cold_starts_total 0"),
        "no wake was needed: {}",
        m.lines()
            .filter(|l| l.contains("cold_starts"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    stop_bin(child).await;
}

/// Wait until no process of `replicas` is alive.
async fn all_stopped(replicas: &[Replica], what: &str) {
    wait_for(DEADLINE, what, || async {
        replicas.iter().all(|r| !pid_alive(r.pid)).then_some(())
    })
    .await;
}

/// For six idle periods of [`SCALED`], every replica of `replicas` stays ready with the same
/// process (not stopping, not scaled to zero) while `what` keeps the instance in use (bounded
/// by time: the window is the claim; checked every 50 ms).
async fn stays_ready(
    c: &TestClient,
    admin: std::net::SocketAddr,
    replicas: &[Replica],
    what: &str,
) {
    let end = std::time::Instant::now() + Duration::from_secs(6);
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    while std::time::Instant::now() < end {
        pace.tick().await;
        let ready = ready_replicas(c, admin).await;
        assert_eq!(
            ready.iter().map(|r| r.pid).collect::<Vec<_>>(),
            replicas.iter().map(|r| r.pid).collect::<Vec<_>>(),
            "a replica stopped with {what}: {}",
            get(c, admin, "/instances", &[]).await.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_keeps_its_instance_from_scaling_to_zero() {
    let ReplicaRun {
        setup,
        child,
        proxy,
        admin,
        c,
        replicas,
    } = ReplicaRun::start(SCALED).await;
    let headers = FEAT;
    // one request the instance answers only when told to, and no other traffic
    let until = setup.dir.path().join("release");
    let path = format!("/hold?until={}", until.display());
    let task = {
        let (c, headers) = (c.clone(), headers);
        tokio::spawn(async move { get(&c, proxy, &path, &headers).await })
    };
    wait_for(DEADLINE, "the held request taken", || async {
        replicas.iter().any(|r| holds(&r.log, &until)).then_some(())
    })
    .await;
    // without the count of requests in flight, the instance is scaled to zero about 3.5 s in
    stays_ready(&c, admin, &replicas, "a request in flight").await;
    std::fs::write(&until, "").unwrap();
    let r = task.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // the request's end counts as its last use: an idle period later both replicas stop
    all_stopped(&replicas, "both replicas stopped after the request ended").await;
    stop_bin(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_its_instance_from_scaling_to_zero() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest as _, Message};
    let ReplicaRun {
        setup: _setup,
        child,
        proxy,
        admin,
        c,
        replicas,
    } = ReplicaRun::start(SCALED).await;
    let mut req = format!("ws://{proxy}/chat").into_client_request().unwrap();
    for (name, value) in FEAT {
        req.headers_mut().insert(name, value.parse().unwrap());
    }
    let (mut sock, resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
        .await
        .expect("the WebSocket handshake within the deadline")
        .expect("the WebSocket handshake");
    assert_eq!(resp.status(), 101);
    // one message there and back, within the deadline
    let mut echo = async |text: &str| {
        sock.send(Message::text(text)).await.unwrap();
        let back = tokio::time::timeout(DEADLINE, sock.next()).await.unwrap();
        assert_eq!(back.unwrap().unwrap().into_text().unwrap().as_str(), text);
    };
    echo("first").await;
    // no traffic on the tunnel or anywhere (without the count, the instance is scaled to zero
    // a few seconds in and the tunnel cut)
    stays_ready(&c, admin, &replicas, "a WebSocket open").await;
    // the tunnel still carries messages, and once it is closed the instance is idle again
    echo("second").await;
    let _ = sock.close(None).await;
    drop(sock);
    all_stopped(
        &replicas,
        "both replicas stopped after the WebSocket closed",
    )
    .await;
    stop_bin(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_scale_to_zero_together_and_a_request_starts_them_all_again() {
    let ReplicaRun {
        setup: _setup,
        child,
        proxy,
        admin,
        c,
        replicas: before,
    } = ReplicaRun::start(SCALED).await;
    let headers = FEAT;
    let r = get(&c, proxy, "/", &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // no request for an idle period: both replicas stop, and both say so
    all_stopped(&before, "both idle replicas stopped").await;
    wait_for(DEADLINE, "both replicas shown scaled to zero", || async {
        let v = get(&c, admin, "/instances", &[]).await.json();
        let states: Vec<String> = v["instances"]
            .as_array()?
            .iter()
            .filter_map(|i| Some(i["state"].as_str()?.to_owned()))
            .collect();
        (states == ["scaled to zero", "scaled to zero"]).then_some(())
    })
    .await;
    // one request wakes the instance: it is held until a replica answers it
    served_after_a_cold_start(&c, proxy, &headers).await;
    // and every replica runs again (new processes), sharing the load as before
    let after = wait_ready_replicas(&c, admin, 2).await;
    assert_new_processes(&after, &before);
    both_answer(&c, proxy, &headers).await;
    stop_bin(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_reaps_the_replicas_a_killed_one_left_and_starts_them_again() {
    let ReplicaRun {
        setup,
        mut child,
        c,
        replicas: before,
        ..
    } = ReplicaRun::start("").await;
    // SIGKILL: no drain, no shutdown of the instances
    signal(
        u64::from(child.id().expect("pid")),
        rustix::process::Signal::KILL,
    );
    let _ = tokio::time::timeout(DEADLINE, child.wait()).await;
    // the next run on the same state directory does not adopt them: it reaps both (by their
    // records) and starts both again, so no replica of the old run is left behind
    let (child, proxy, admin) = setup.run(&[]).await;
    wait_for(DEADLINE, "the old replicas gone", || async {
        before.iter().all(|r| !pid_alive(r.pid)).then_some(())
    })
    .await;
    let after = wait_ready_replicas(&c, admin, 2).await;
    assert_new_processes(&after, &before);
    let r = get(&c, proxy, "/", &FEAT).await;
    assert_eq!(r.status, 200, "{}", r.text());
    stop_bin(child).await;
}
