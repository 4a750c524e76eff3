//! The stable CI gate of the fuzz targets in `fuzz/`: a bounded, seeded loop of mutated and
//! random inputs through the same parsers (baggage, cookie, host patterns, context
//! resolution, the token verifier, the config loader on files and API bodies), replaying every
//! committed seed and corpus file first; and request heads sent through the real proxy over
//! real sockets, after which it must still serve. libFuzzer (`cargo fuzz run <target> -s none`)
//! explores further; this loop keeps every input it was given a regression test.
#![allow(clippy::expect_used)]

mod common;

use common::*;
use microstax_config::{parse_text, Config, HostPattern, LayerKind};
use microstax_proxy::{baggage, cookie, ContextRules, ServerOptions, TokenKeys};
use std::path::Path;
use std::time::Duration;

/// Mutated inputs per target (bounded: the whole file runs in seconds).
const ROUNDS: usize = 3000;

/// xorshift64*: deterministic, so a failure names its round.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// A mutation of `seed`: byte flips, inserts of interesting bytes, cuts, duplications.
    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        const SPICE: &[u8] = b"=;,%\"\\\r\n\t :/.{}-_[]*&?#\x00\xff";
        let mut v = seed.to_vec();
        for _ in 0..1 + self.below(8) {
            let at = self.below(v.len() + 1);
            match self.below(5) {
                0 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = self.next() as u8;
                }
                1 => v.insert(at, SPICE[self.below(SPICE.len())]),
                2 if at < v.len() => v.truncate(at),
                3 if !v.is_empty() => {
                    let i = self.below(v.len());
                    let chunk = v[i..].iter().take(16).copied().collect::<Vec<_>>();
                    v.splice(at..at, chunk);
                }
                _ => {
                    let n = self.below(32);
                    for _ in 0..n {
                        v.insert(at.min(v.len()), self.next() as u8);
                    }
                }
            }
        }
        v
    }
}

/// Seeds and corpus files of `target` (fuzz/seeds/<target> and fuzz/corpus/<target>).
fn inputs(target: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut all = Vec::new();
    for dir in ["seeds", "corpus"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            let mut paths: Vec<_> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
            paths.sort();
            for p in paths {
                all.push(std::fs::read(&p).expect("read corpus file"));
            }
        }
    }
    assert!(!all.is_empty(), "no seeds for {target}");
    all
}

/// Every committed input of `target`, then `ROUNDS` mutations of them, through `f`.
fn run(target: &str, mut f: impl FnMut(&[u8])) {
    let seeds = inputs(target);
    for s in &seeds {
        f(s);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    for _ in 0..ROUNDS {
        let seed = &seeds[rng.below(seeds.len())];
        f(&rng.mutate(seed));
    }
}

fn rules() -> ContextRules {
    ContextRules {
        header: http::HeaderName::from_static("x-microstax-branch"),
        baggage_key: "microstax-branch".into(),
        cookie: "microstax-branch".into(),
        patterns: vec![HostPattern::parse("{branch}.preview.example.com").expect("pattern")]
            .into_boxed_slice(),
    }
}

#[test]
fn baggage_parser() {
    let key = "microstax-branch";
    run("baggage", |d| {
        if let Some(raw) = baggage::find_raw(d, key) {
            let mut buf = [0u8; 63];
            let _ = baggage::percent_decode(raw, &mut buf);
        }
        let _ = baggage::has_member(std::iter::once(d), key);
        let rest = baggage::without_member(&[d, d], key);
        assert!(!baggage::has_member(std::iter::once(&rest[..]), key));
        let _ = baggage::with_member(&[d], key, "dev");
    });
}

#[test]
fn cookie_parser() {
    run("cookie", |d| {
        let _ = cookie::find(d, "microstax-branch");
        let rest = cookie::without(d, &["microstax-branch", "microstax-token"]);
        assert!(cookie::find(&rest, "microstax-branch").is_none());
    });
}

#[test]
fn host_patterns_and_context() {
    let r = rules();
    run("host_pattern", |d| {
        let s = String::from_utf8_lossy(d);
        let (pattern, host) = s.split_once('\n').unwrap_or((&s, "x"));
        let _ = HostPattern::parse(pattern);
        let _ = r.extract(&http::HeaderMap::new(), Some(host));
    });
    run("context", |d| {
        let mut h = http::HeaderMap::new();
        for line in d.split(|&b| b == b'\n') {
            let Some(i) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(&line[..i]),
                http::HeaderValue::from_bytes(line[i + 1..].trim_ascii()),
            ) {
                h.append(n, v);
            }
        }
        let host = h
            .get("host")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let _ = r.extract(&h, host.as_deref());
    });
}

#[test]
fn token_verifier() {
    let keys = TokenKeys::new(&["fuzz-key-0123456789abcdef"]).expect("keys");
    let good = keys.mint("dev", "microstax", u64::MAX).expect("mint");
    let mut accepted = 0;
    run("token", |d| {
        if let Ok((b, _)) = keys.verify(d, "microstax", 0) {
            assert!(!b.as_str().is_empty());
            accepted += 1;
        }
    });
    // a mutation that still verifies would be a forgery: only the real token does
    assert_eq!(accepted, 0);
    assert!(keys.verify(good.as_bytes(), "microstax", 0).is_ok());
}

#[test]
fn config_loader_on_files_and_api_bodies() {
    const ORG: &str =
        "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"127.0.0.1:1\"]\n";
    run("config", |d| {
        let text = String::from_utf8_lossy(d);
        if let Ok(docs) = parse_text("org.yaml", &text, Some(LayerKind::Org), None) {
            let _ = Config::build(docs);
        }
        let mut docs = parse_text("org.yaml", ORG, Some(LayerKind::Org), None).expect("org");
        if let Ok(b) = parse_text(
            "api:PUT /branches/fz",
            &text,
            Some(LayerKind::Branch),
            Some("fz"),
        ) {
            docs.extend(b);
            let _ = Config::build(docs);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_through_the_proxy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("base").await;
    let cfg = config(&[(
        "org.yaml",
        &format!(
            "kind: org\ncontext: {{host_patterns: [\"{{branch}}.preview.test\"]}}\nrouting: {{default_service: api}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{}\"]\n",
            up.addr
        ),
    )]);
    let opts = ServerOptions {
        header_read_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let p = ProxyUnderTest::start_with(&cfg, opts).await;
    let seeds = inputs("request_head");
    let mut rng = Rng(0x5eed);
    for round in 0..300 {
        let input = if round < seeds.len() {
            seeds[round].clone()
        } else {
            let i = rng.below(seeds.len());
            rng.mutate(&seeds[i])
        };
        let mut s = tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect");
        let _ = s.write_all(&input).await;
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "round {round}: no end within 10 s for {input:?}"
        );
        if out.starts_with(b"HTTP/1.1 5") {
            let head = String::from_utf8_lossy(&out);
            assert!(!head.starts_with("HTTP/1.1 500"), "round {round}: {head}");
        }
    }
    // and it still serves
    let r = get(&h1_client(), p.addr, "/", &[("host", "api")]).await;
    assert_eq!(r.status, 200);
}
