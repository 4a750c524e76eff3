//! Scale to zero over real sockets: a request for an asleep upstream sends one wake and is held
//! in the upstream's bounded queue until the control plane starts the instance and pushes its
//! readiness; past the queue's bound or the route's hold time it gets 503 with `Retry-After`.
//! Activity: the last request per branch (layer id) and per upstream, and a layer slot whose
//! name changes does not inherit the old branch's activity.

#![allow(clippy::expect_used)]

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TryRecvError;

const DEADLINE: Duration = Duration::from_secs(10);

/// A loopback address nothing listens on (yet).
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn org(base: SocketAddr, hold_max: u32) -> String {
    format!(
        "kind: org\nlifecycle: {{hold_max_requests: {hold_max}}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n"
    )
}

fn branch(endpoint: SocketAddr, readiness: &str) -> String {
    format!(
        "parent: baseline\nservices:\n  api:\n    endpoints: [\"{endpoint}\"]\n    policy: {{readiness: {readiness}}}\n"
    )
}

/// Send a GET for branch `b` on its own task.
fn spawn_get(p: &ProxyUnderTest, b: &'static str) -> tokio::task::JoinHandle<Reply> {
    let client = h1_client();
    let addr = p.addr;
    tokio::spawn(async move {
        get(
            &client,
            addr,
            "/",
            &[("host", "api"), ("x-microstax-branch", b)],
        )
        .await
    })
}

async fn wait_held(p: &ProxyUnderTest, up: SocketAddr, n: u32) {
    let key = up.to_string();
    wait_for(DEADLINE, &format!("{n} held requests"), || async {
        (p.proxy.held(&key) == Some(n)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_asleep_upstream_is_woken_and_its_request_held_until_it_serves() {
    let base = Upstream::start("base").await;
    let dead = dead_addr();
    let cfg = config(&[
        ("org.yaml", &org(base.addr, 256)),
        (
            "branches/b.yaml",
            &branch(dead, "{policy: hold, hold_ms: 8000}"),
        ),
    ]);
    let p = ProxyUnderTest::start(&cfg).await;
    let mut wakes = p.proxy.wakes().expect("wakes");
    assert!(p.proxy.wakes().is_none(), "the wake receiver is taken once");
    assert!(p.proxy.set_asleep(&dead.to_string(), true));

    let held = spawn_get(&p, "b");
    let woke = tokio::time::timeout(DEADLINE, wakes.recv())
        .await
        .expect("no wake within the deadline")
        .expect("wake channel closed");
    assert_eq!(&*woke, dead.to_string());
    wait_held(&p, dead, 1).await;
    assert!(
        !held.is_finished(),
        "the request is held while the upstream sleeps"
    );

    // the control plane starts the instance, then says it is awake and ready
    let late = Upstream::start_on("late", dead).await;
    assert!(p.proxy.set_asleep(&dead.to_string(), false));
    assert!(p.proxy.set_ready(&dead.to_string(), true));
    let r = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("held request not released")
        .expect("join");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), "late");
    let waited = r
        .headers
        .get("x-microstax-cold-start-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(waited.is_some(), "no cold-start header: {:?}", r.headers);
    assert_eq!(p.proxy.held(&dead.to_string()), Some(0));

    // awake: the next request goes straight through, with no wake and no cold-start header
    let r = spawn_get(&p, "b").await.expect("join");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers.get("x-microstax-cold-start-ms").is_none());
    assert!(matches!(wakes.try_recv(), Err(TryRecvError::Empty)));
    drop(late);
    p.shutdown().await;
}

#[tokio::test]
async fn the_hold_queue_is_bounded_and_a_sleep_sends_one_wake() {
    let base = Upstream::start("base").await;
    let dead = dead_addr();
    let cfg = config(&[
        ("org.yaml", &org(base.addr, 2)),
        (
            "branches/b.yaml",
            &branch(dead, "{policy: hold, hold_ms: 8000}"),
        ),
    ]);
    let p = ProxyUnderTest::start(&cfg).await;
    let mut wakes = p.proxy.wakes().expect("wakes");
    p.proxy.set_asleep(&dead.to_string(), true);
    let first = spawn_get(&p, "b");
    let second = spawn_get(&p, "b");
    wait_held(&p, dead, 2).await;
    let metrics = p.router.metrics();
    assert_eq!(metrics.held_requests.get(), 2);

    // a third request finds the queue full: 503 at once, with Retry-After and the reason
    let r = spawn_get(&p, "b").await.expect("join");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(r.text().contains("hold queue full"), "{}", r.text());
    assert_eq!(metrics.hold_rejected_queue_full.get(), 1);

    // three requests during one sleep sent one wake
    let woke = wakes.try_recv().expect("one wake");
    assert_eq!(&*woke, dead.to_string());
    assert!(matches!(wakes.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(metrics.cold_starts.get(), 1);

    let late = Upstream::start_on("late", dead).await;
    p.proxy.set_asleep(&dead.to_string(), false);
    p.proxy.set_ready(&dead.to_string(), true);
    for held in [first, second] {
        let r = tokio::time::timeout(DEADLINE, held)
            .await
            .expect("held request not released")
            .expect("join");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.headers.get("x-microstax-cold-start-ms").is_some());
    }
    assert_eq!(metrics.held_requests.get(), 0);
    // a new sleep sends a new wake
    p.proxy.set_asleep(&dead.to_string(), true);
    let r = spawn_get(&p, "b");
    let woke = tokio::time::timeout(DEADLINE, wakes.recv())
        .await
        .expect("no second wake")
        .expect("wake channel closed");
    assert_eq!(&*woke, dead.to_string());
    p.proxy.set_asleep(&dead.to_string(), false);
    p.proxy.set_ready(&dead.to_string(), true);
    assert_eq!(r.await.expect("join").status, 200);
    drop(late);
    p.shutdown().await;
}

#[tokio::test]
async fn a_request_held_past_its_hold_time_gets_503_with_the_reason() {
    let base = Upstream::start("base").await;
    let dead = dead_addr();
    let cfg = config(&[
        ("org.yaml", &org(base.addr, 256)),
        (
            "branches/b.yaml",
            &branch(dead, "{policy: hold, hold_ms: 200}"),
        ),
    ]);
    let p = ProxyUnderTest::start(&cfg).await;
    let _wakes = p.proxy.wakes().expect("wakes");
    p.proxy.set_asleep(&dead.to_string(), true);
    let r = spawn_get(&p, "b").await.expect("join");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("held 200 ms"), "{}", r.text());
    assert!(r.text().contains("asleep"), "{}", r.text());
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(p.proxy.held(&dead.to_string()), Some(0));
    assert_eq!(p.router.metrics().hold_rejected_timeout.get(), 1);
    assert_eq!(p.router.metrics().held_requests.get(), 0);
    p.shutdown().await;
}

#[tokio::test]
async fn fail_and_fallback_policies_wake_an_asleep_upstream_without_holding() {
    let base = Upstream::start("base").await;
    let (df, dfb) = (dead_addr(), dead_addr());
    let cfg = config(&[
        ("org.yaml", &org(base.addr, 256)),
        ("branches/f.yaml", &branch(df, "{policy: fail}")),
        ("branches/fb.yaml", &branch(dfb, "{policy: fallback}")),
    ]);
    let p = ProxyUnderTest::start(&cfg).await;
    let mut wakes = p.proxy.wakes().expect("wakes");
    p.proxy.set_asleep(&df.to_string(), true);
    p.proxy.set_asleep(&dfb.to_string(), true);

    let r = spawn_get(&p, "f").await.expect("join");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.headers.get("retry-after").is_some());
    let woke = wakes.try_recv().expect("fail sent a wake");
    assert_eq!(&*woke, df.to_string());

    let r = spawn_get(&p, "fb").await.expect("join");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), "base");
    assert_eq!(
        r.headers.get("x-microstax-fallback").map(|v| v.as_bytes()),
        Some(&b"not-ready"[..])
    );
    let woke = wakes.try_recv().expect("fallback sent a wake");
    assert_eq!(&*woke, dfb.to_string());
    p.shutdown().await;
}

#[tokio::test]
async fn activity_is_recorded_per_branch_and_per_upstream() {
    let base = Upstream::start("base").await;
    let bu = Upstream::start("b").await;
    let cfg = config(&[
        ("org.yaml", &org(base.addr, 256)),
        ("branches/b.yaml", &branch(bu.addr, "{policy: fail}")),
        ("branches/idle.yaml", &branch(bu.addr, "{policy: fail}")),
    ]);
    let p = ProxyUnderTest::start(&cfg).await;
    let activity = p.proxy.activity();
    let table = p.router.load().table.clone();
    let b = table.branch("b").expect("b");
    let idle = table.branch("idle").expect("idle");
    assert_eq!(activity.last_request_layer(b), None);
    assert_eq!(activity.last_request_upstream(&bu.addr.to_string()), None);

    let before = Instant::now();
    let r = spawn_get(&p, "b").await.expect("join");
    assert_eq!(r.status, 200, "{}", r.text());
    let after = Instant::now();
    // stamps have millisecond resolution, truncated
    let recent = |t: Option<Instant>| {
        t.is_some_and(|t| t + Duration::from_millis(1) >= before && t <= after)
    };
    assert!(recent(activity.last_request_layer(b)));
    assert!(recent(activity.last_request_branch("b")));
    assert!(recent(activity.last_request_upstream(&bu.addr.to_string())));
    assert_eq!(activity.last_request_layer(idle), None, "never used");
    assert_eq!(activity.last_request_branch("idle"), None);
    assert_eq!(activity.last_request_upstream("127.0.0.1:1"), None);
    assert_eq!(activity.last_request_layer(u32::MAX), None);
    p.shutdown().await;
}

#[tokio::test]
async fn a_layer_slot_whose_name_changed_does_not_inherit_activity() {
    let base = Upstream::start("base").await;
    let bu = Upstream::start("b").await;
    let cfg = config(&[
        ("org.yaml", &org(base.addr, 256)),
        ("branches/a.yaml", &branch(bu.addr, "{policy: fail}")),
        ("branches/b.yaml", &branch(bu.addr, "{policy: fail}")),
    ]);
    let p = ProxyUnderTest::start(&cfg).await;
    let activity = p.proxy.activity();
    let b_id = p.router.load().table.branch("b").expect("b");
    let r = spawn_get(&p, "b").await.expect("join");
    assert_eq!(r.status, 200, "{}", r.text());
    let stamp = activity
        .last_request_layer(b_id)
        .expect("b's request recorded");

    // a rebuilt config (as an org change makes) renumbers: a new branch `c` takes b's old id
    // and `b` another one; b keeps its activity under its new id, c starts with none
    let next = config(&[
        ("org.yaml", &org(base.addr, 256)),
        ("branches/c.yaml", &branch(bu.addr, "{policy: fail}")),
        ("branches/a.yaml", &branch(bu.addr, "{policy: fail}")),
        ("branches/b.yaml", &branch(bu.addr, "{policy: fail}")),
    ]);
    let table = microstax_planner::compile(&next, 2);
    let c_id = table.branch("c").expect("c");
    let b_new = table.branch("b").expect("b");
    let now_at_old = table.layer(b_id).map(|l| l.name.to_string());
    assert!(
        b_new != b_id && now_at_old.as_deref() != Some("b"),
        "the rebuild was expected to move b (c {c_id}, b {b_new}, old b {b_id})"
    );
    p.router.publish(table);
    assert_eq!(
        activity.last_request_layer(b_id),
        None,
        "slot {b_id} (now {now_at_old:?}) inherited b's activity"
    );
    assert_eq!(activity.last_request_layer(c_id), None, "c was never used");
    assert_eq!(activity.last_request_layer(b_new), Some(stamp));
    assert_eq!(activity.last_request_branch("b"), Some(stamp));
    p.shutdown().await;
}

#[tokio::test]
async fn a_not_ready_upstream_is_held_in_the_same_bounded_queue_without_a_wake() {
    let base = Upstream::start("base").await;
    let bu = Upstream::start("b").await;
    let cfg = config(&[
        ("org.yaml", &org(base.addr, 1)),
        (
            "branches/b.yaml",
            &branch(bu.addr, "{policy: hold, hold_ms: 8000}"),
        ),
    ]);
    let p = ProxyUnderTest::start(&cfg).await;
    let mut wakes = p.proxy.wakes().expect("wakes");
    // pushed readiness: the instance is starting, not asleep
    assert!(p.proxy.set_ready(&bu.addr.to_string(), false));
    let held = spawn_get(&p, "b");
    wait_held(&p, bu.addr, 1).await;
    let r = spawn_get(&p, "b").await.expect("join");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("not ready: hold queue full"),
        "{}",
        r.text()
    );
    assert!(matches!(wakes.try_recv(), Err(TryRecvError::Empty)));
    p.proxy.set_ready(&bu.addr.to_string(), true);
    let r = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("held request not released")
        .expect("join");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), "b");
    assert!(r.headers.get("x-microstax-cold-start-ms").is_some());
    assert!(!p.proxy.set_ready("127.0.0.1:1", true), "unknown upstream");
    p.shutdown().await;
}

#[tokio::test]
async fn a_fallback_to_an_asleep_parent_wakes_the_parent_and_follows_its_policy() {
    let base = Upstream::start("base").await;
    let (dp, dc) = (dead_addr(), dead_addr());
    let child = format!(
        "parent: p\nservices:\n  api:\n    endpoints: [\"{dc}\"]\n    policy: {{readiness: {{policy: fallback}}}}\n"
    );
    let cfg = config(&[
        ("org.yaml", &org(base.addr, 256)),
        (
            "branches/p.yaml",
            &branch(dp, "{policy: hold, hold_ms: 8000}"),
        ),
        ("branches/c.yaml", &child),
    ]);
    let p = ProxyUnderTest::start(&cfg).await;
    let mut wakes = p.proxy.wakes().expect("wakes");
    p.proxy.set_asleep(&dp.to_string(), true);
    p.proxy.set_asleep(&dc.to_string(), true);
    let held = spawn_get(&p, "c");
    wait_held(&p, dp, 1).await;
    let mut woke = vec![
        wakes.try_recv().expect("a wake").to_string(),
        wakes.try_recv().expect("a second wake").to_string(),
    ];
    woke.sort();
    let mut want = vec![dp.to_string(), dc.to_string()];
    want.sort();
    assert_eq!(
        woke, want,
        "both the child's and the parent's upstream are woken"
    );

    let parent = Upstream::start_on("parent", dp).await;
    p.proxy.set_asleep(&dp.to_string(), false);
    p.proxy.set_ready(&dp.to_string(), true);
    let r = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("held request not released")
        .expect("join");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), "parent");
    assert!(r.headers.get("x-microstax-fallback").is_some());
    assert!(r.headers.get("x-microstax-cold-start-ms").is_some());
    drop(parent);
    p.shutdown().await;
}

/// A branch whose `api` runs two replicas (two endpoints), with `readiness`.
fn replicas_branch(a: SocketAddr, b: SocketAddr, readiness: &str) -> String {
    format!(
        "parent: baseline\nservices:\n  api:\n    endpoints: [\"{a}\", \"{b}\"]\n    policy: {{readiness: {readiness}}}\n"
    )
}

#[tokio::test]
async fn a_request_balanced_to_a_replica_that_cannot_serve_goes_to_one_that_does() {
    let base = Upstream::start("base").await;
    let live = Upstream::start("live").await;
    let dead = dead_addr();
    let cfg = config(&[
        ("org.yaml", &org(base.addr, 256)),
        (
            "branches/b.yaml",
            &replicas_branch(dead, live.addr, "{policy: hold, hold_ms: 300}"),
        ),
    ]);
    let p = ProxyUnderTest::start(&cfg).await;
    let mut wakes = p.proxy.wakes().expect("wakes");
    // one replica crashed (its executor pushed not ready): the balancer still draws it, but
    // its requests go to the replica that serves instead of waiting for the restart
    assert!(p.proxy.set_ready(&dead.to_string(), false));
    for i in 0..20 {
        let r = spawn_get(&p, "b").await.expect("join");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.upstream(), "live", "request {i}");
        assert!(r.headers.get("x-microstax-cold-start-ms").is_none());
    }
    assert!(matches!(wakes.try_recv(), Err(TryRecvError::Empty)));
    p.shutdown().await;
}

#[tokio::test]
async fn a_woken_route_with_replicas_releases_its_held_requests_to_the_first_replica_ready() {
    let base = Upstream::start("base").await;
    let (a, b) = (dead_addr(), dead_addr());
    let cfg = config(&[
        ("org.yaml", &org(base.addr, 256)),
        (
            "branches/b.yaml",
            &replicas_branch(a, b, "{policy: hold, hold_ms: 8000}"),
        ),
    ]);
    let p = ProxyUnderTest::start(&cfg).await;
    let mut wakes = p.proxy.wakes().expect("wakes");
    // scaled to zero: both replicas asleep
    assert!(p.proxy.set_asleep(&a.to_string(), true));
    assert!(p.proxy.set_asleep(&b.to_string(), true));
    let held: Vec<_> = (0..10).map(|_| spawn_get(&p, "b")).collect();
    let (ka, kb) = (a.to_string(), b.to_string());
    wait_for(DEADLINE, "10 held requests", || async {
        let n = p.proxy.held(&ka).unwrap_or(0) + p.proxy.held(&kb).unwrap_or(0);
        (n == 10).then_some(())
    })
    .await;
    let woke = tokio::time::timeout(DEADLINE, wakes.recv())
        .await
        .expect("no wake within the deadline")
        .expect("wake channel closed");
    assert!(*woke == *ka || *woke == *kb, "{woke}");
    // replica b is up first (a is still starting): every held request goes to b, including
    // those the balancer had drawn a for
    let up = Upstream::start_on("b", b).await;
    assert!(p.proxy.set_asleep(&kb, false));
    assert!(p.proxy.set_ready(&kb, true));
    for (i, h) in held.into_iter().enumerate() {
        let r = tokio::time::timeout(DEADLINE, h)
            .await
            .expect("held request not released")
            .expect("join");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.upstream(), "b", "request {i}");
        assert!(r.headers.get("x-microstax-cold-start-ms").is_some());
    }
    assert_eq!(p.proxy.held(&ka), Some(0));
    drop(up);
    p.shutdown().await;
}
