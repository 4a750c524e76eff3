//! Routing end to end over real sockets: each context source and their precedence, lineage
//! fall-through, unknown branches (both modes), unknown services, and HTTP/2 cleartext.

mod common;

use common::*;

struct World {
    // kept alive for the test's duration
    _ups: Vec<Upstream>,
    files: Vec<(String, String)>,
}

/// Services a, b, c, d; team t overrides a; b1 (parent t) overrides b; b2 (parent b1)
/// overrides c; d is never overridden.
async fn world(strict: bool) -> World {
    let names = [
        "a@base", "b@base", "c@base", "d@base", "a@t", "b@b1", "c@b2",
    ];
    let mut ups = Vec::new();
    let mut addr = std::collections::HashMap::new();
    for n in names {
        let u = Upstream::start(n).await;
        addr.insert(n, u.addr.to_string());
        ups.push(u);
    }
    let org = format!(
        r#"
kind: org
context:
  host_patterns: ["{{branch}}.preview.test"]
  strict: {strict}
routing:
  debug_header: true
services:
  a: {{hosts: [a.svc], path_prefixes: [/a/], endpoints: ["{}"]}}
  b: {{hosts: [b.svc], path_prefixes: [/b/], endpoints: ["{}"]}}
  c: {{hosts: [c.svc], path_prefixes: [/c/], endpoints: ["{}"]}}
  d: {{hosts: [d.svc], path_prefixes: [/d/], endpoints: ["{}"]}}
"#,
        addr["a@base"], addr["b@base"], addr["c@base"], addr["d@base"]
    );
    let files = vec![
        ("org.yaml".to_string(), org),
        (
            "teams/t.yaml".into(),
            format!(
                "parent: baseline\nservices:\n  a: {{endpoints: [\"{}\"]}}\n",
                addr["a@t"]
            ),
        ),
        (
            "branches/b1.yaml".into(),
            format!(
                "parent: t\nservices:\n  b: {{endpoints: [\"{}\"]}}\n",
                addr["b@b1"]
            ),
        ),
        (
            "branches/b2.yaml".into(),
            format!(
                "parent: b1\nservices:\n  c: {{endpoints: [\"{}\"]}}\n",
                addr["c@b2"]
            ),
        ),
    ];
    World { _ups: ups, files }
}

impl World {
    fn config(&self) -> microstax_config::Config {
        let f: Vec<(&str, &str)> = self
            .files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        config(&f)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_deep_lineage_falls_through_to_baseline() {
    let w = world(false).await;
    let p = ProxyUnderTest::start(&w.config()).await;
    let c = h1_client();
    let br = [("x-microstax-branch", "b2")];
    for (host, want) in [
        ("a.svc", "a@t"),
        ("b.svc", "b@b1"),
        ("c.svc", "c@b2"),
        ("d.svc", "d@base"),
    ] {
        let hdrs = [br[0], ("host", host)];
        let r = get(&c, p.addr, "/", &hdrs).await;
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert_eq!(r.upstream(), want, "host {host} in b2");
    }
    // b1 sees its own b, the team's a, and baseline c
    let r = get(&c, p.addr, "/c/x", &[("x-microstax-branch", "b1")]).await;
    assert_eq!(r.upstream(), "c@base");
    let r = get(&c, p.addr, "/a/x", &[("x-microstax-branch", "b1")]).await;
    assert_eq!(r.upstream(), "a@t");
    assert!(r.route().contains("layer=team/t"), "{}", r.route());
    // no context: baseline everywhere
    let r = get(&c, p.addr, "/a/", &[]).await;
    assert_eq!(r.upstream(), "a@base");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_context_source_and_precedence() {
    let w = world(false).await;
    let p = ProxyUnderTest::start(&w.config()).await;
    let c = h1_client();
    // each source alone selects b1 (which overrides b)
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("host", "b.svc"), ("x-microstax-branch", "b1")],
            "source=header",
        ),
        (
            &[
                ("host", "b.svc"),
                ("baggage", "k=v, microstax-branch=b1;p=1"),
            ],
            "source=baggage",
        ),
        (
            &[("host", "b.svc"), ("cookie", "x=1; microstax-branch=b1")],
            "source=cookie",
        ),
        (&[("host", "b1.preview.test")], "source=host"),
    ];
    for (hdrs, source) in cases {
        let path = if source == "source=host" { "/b/x" } else { "/" };
        let r = get(&c, p.addr, path, hdrs).await;
        assert_eq!(r.upstream(), "b@b1", "{source}: {}", r.route());
        assert!(r.route().contains(source), "{}", r.route());
    }
    // precedence: header > baggage > cookie > host; b2 vs b1 are told apart by service c
    let all = [
        ("host", "b1.preview.test"),
        ("x-microstax-branch", "b2"),
        ("baggage", "microstax-branch=b1"),
        ("cookie", "microstax-branch=b1"),
    ];
    let r = get(&c, p.addr, "/c/", &all).await;
    assert_eq!(r.upstream(), "c@b2", "header wins");
    let r = get(
        &c,
        p.addr,
        "/c/",
        &[all[0], ("baggage", "microstax-branch=b2"), all[3]],
    )
    .await;
    assert_eq!(r.upstream(), "c@b2", "baggage beats cookie and host");
    let r = get(
        &c,
        p.addr,
        "/c/",
        &[all[0], ("cookie", "microstax-branch=b2")],
    )
    .await;
    assert_eq!(r.upstream(), "c@b2", "cookie beats host");
    // a malformed header is ignored and the next source is used
    let r = get(
        &c,
        p.addr,
        "/c/",
        &[
            ("x-microstax-branch", "Not Valid!"),
            ("cookie", "microstax-branch=b2"),
        ],
    )
    .await;
    assert_eq!(r.upstream(), "c@b2");
    assert!(r.route().contains("source=cookie"));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_branch_baseline_or_strict_404() {
    let w = world(false).await;
    let p = ProxyUnderTest::start(&w.config()).await;
    let c = h1_client();
    let r = get(&c, p.addr, "/b/", &[("x-microstax-branch", "nope")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), "b@base");
    assert!(r.route().contains("unknown-branch"));
    // the context still travels to the next hop
    assert_eq!(r.seen("x-microstax-branch").as_deref(), Some("nope"));
    p.shutdown().await;

    let w = world(true).await;
    let p = ProxyUnderTest::start(&w.config()).await;
    let r = get(&c, p.addr, "/b/", &[("x-microstax-branch", "nope")]).await;
    assert_eq!(r.status, 404);
    let body = r.text();
    assert_eq!(body.lines().count(), 1, "one-line reason: {body}");
    assert!(body.contains("unknown branch `nope`"), "{body}");
    // a known branch and no branch still route in strict mode
    assert_eq!(
        get(&c, p.addr, "/b/", &[("x-microstax-branch", "b1")])
            .await
            .upstream(),
        "b@b1"
    );
    assert_eq!(get(&c, p.addr, "/b/", &[]).await.upstream(), "b@base");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_is_404_with_reason() {
    let w = world(false).await;
    let p = ProxyUnderTest::start(&w.config()).await;
    let c = h1_client();
    let r = get(&c, p.addr, "/zzz/1", &[("host", "nobody.example")]).await;
    assert_eq!(r.status, 404);
    assert!(
        r.text()
            .contains("no service for host `nobody.example` and path `/zzz/1`"),
        "{}",
        r.text()
    );
    // Host match ignores case and port
    let r = get(&c, p.addr, "/", &[("host", "D.SVC:8080")]).await;
    assert_eq!(r.upstream(), "d@base");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_client() {
    let w = world(false).await;
    let p = ProxyUnderTest::start(&w.config()).await;
    let c = h2_client();
    // over h2 the host travels as :authority, so route by path prefix and header
    let r = get(&c, p.addr, "/b/x", &[("x-microstax-branch", "b1")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream(), "b@b1");
    assert_eq!(r.seen("via").as_deref(), Some("2 microstax"));
    // the HTTP/1.1 upstream receives a Host header built from :authority
    assert_eq!(r.seen("host"), Some(p.addr.to_string()));
    // many concurrent streams on one connection
    let mut joins = Vec::new();
    for i in 0..32 {
        let c = c.clone();
        let addr = p.addr;
        joins.push(tokio::spawn(async move {
            let br = if i % 2 == 0 { "b1" } else { "b2" };
            let r = get(&c, addr, "/c/", &[("x-microstax-branch", br)]).await;
            (br, r.upstream())
        }));
    }
    for j in joins {
        let (br, up) = j.await.expect("join");
        assert_eq!(up, if br == "b1" { "c@base" } else { "c@b2" });
    }
    p.shutdown().await;
}
