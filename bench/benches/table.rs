//! Micro-benchmarks of the routing table: lookup (branch name -> layer, Host -> service,
//! (layer, service) -> route, and the three together), compilation from a validated config, the
//! incremental update of one branch, and the memory of a compiled table.
//!
//! Sizes: 10 / 1k / 10k branches over 50 / 2k services; branches form chains of up to 4
//! (lineage depth up to 4 plus the baseline); each branch overrides 5 services. Configs come
//! from `microstax_bench::synth::Spec` as YAML text parsed by the real loader.
//!
//! The binary counts allocations with `stats_alloc` as its global allocator: the memory figure
//! is the live bytes a table keeps after its config is dropped, and the lookups are checked to
//! allocate nothing. The counter adds two atomic adds per allocation, which the compile and
//! update figures include; lookups do not allocate, so theirs are unaffected.
//!
//! Context extraction (header, baggage, cookie -> branch name, `ContextRules::extract` of the
//! proxy) is measured alone and together with `full_lookup` in the `extraction` group: the hot
//! path of a request's routing decision. The `parsing` group measures the baggage and cookie
//! parsers on realistic headers.

use criterion::{black_box, criterion_group, BenchmarkId, Criterion};
use microstax_bench::synth::Spec;
use microstax_config::{Config, LayerKind, RoutingTable};
use microstax_planner::{compile, Compiler};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// (branches, services).
const SIZES: [(usize, usize); 6] = [
    (10, 50),
    (1_000, 50),
    (10_000, 50),
    (10, 2_000),
    (1_000, 2_000),
    (10_000, 2_000),
];
const MAX_DEPTH: usize = 4;
const OVERRIDES: usize = 5;
/// Distinct queries cycled through by the lookup benches (a power of two).
const QUERIES: usize = 1024;

fn spec(branches: usize, services: usize) -> Spec {
    Spec {
        services,
        branches,
        max_depth: MAX_DEPTH,
        overrides: OVERRIDES,
    }
}

fn size_id(b: usize, s: usize) -> String {
    format!("{b}br_x_{s}svc")
}

fn build(spec: &Spec) -> Config {
    match spec.config() {
        Ok(c) => c,
        Err(e) => panic!("generated config is invalid: {e}"),
    }
}

/// One lookup input, both as request text and as interned ids.
struct Query {
    branch: String,
    host: String,
    layer: u32,
    service: u32,
}

/// Queries over the deepest branches: half ask for a service an ancestor overrides (found part
/// way up the lineage), half for any service (mostly a walk all the way to the baseline).
fn queries(spec: &Spec, table: &RoutingTable) -> Vec<Query> {
    (0..QUERIES)
        .map(|q| {
            let mut i = (q.wrapping_mul(7919)) % spec.branches;
            // move to the last branch of its chain: the longest lineage
            while i + 1 < spec.branches && spec.parent_of(i + 1) == Some(i) {
                i += 1;
            }
            let ancestor = spec.parent_of(i).unwrap_or(i);
            let svc = if q % 2 == 0 {
                spec.overridden(ancestor).nth(q % OVERRIDES).unwrap_or(0)
            } else {
                q.wrapping_mul(104_729) % spec.services
            };
            let branch = Spec::branch_name(i);
            let host = Spec::service_name(svc);
            let layer = table.branch(&branch).unwrap_or(0);
            let service = table.services.resolve(Some(&host), "/").unwrap_or(0);
            Query {
                branch,
                host,
                layer,
                service,
            }
        })
        .collect()
}

/// Branch name -> layer, Host -> service, (layer, service) -> route -> first upstream.
#[inline]
fn full_lookup(table: &RoutingTable, q: &Query) -> Option<u32> {
    let layer = table.branch(&q.branch).unwrap_or(0);
    let service = table.services.resolve(Some(&q.host), "/")?;
    let route = table.route(layer, service)?;
    route.upstreams.first().copied()
}

fn bench_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (b, s) in SIZES {
        let sp = spec(b, s);
        let table = compile(&build(&sp), 1);
        let qs = queries(&sp, &table);
        let id = size_id(b, s);
        g.bench_function(BenchmarkId::new("route", &id), |bn| {
            let mut i = 0usize;
            bn.iter(|| {
                let q = &qs[i & (QUERIES - 1)];
                i = i.wrapping_add(1);
                black_box(
                    table
                        .route(black_box(q.layer), black_box(q.service))
                        .map(|r| r.layer),
                )
            })
        });
        g.bench_function(BenchmarkId::new("branch_by_name", &id), |bn| {
            let mut i = 0usize;
            bn.iter(|| {
                let q = &qs[i & (QUERIES - 1)];
                i = i.wrapping_add(1);
                black_box(table.branch(black_box(&q.branch)))
            })
        });
        g.bench_function(BenchmarkId::new("service_by_host", &id), |bn| {
            let mut i = 0usize;
            bn.iter(|| {
                let q = &qs[i & (QUERIES - 1)];
                i = i.wrapping_add(1);
                black_box(table.services.resolve(Some(black_box(&q.host)), "/"))
            })
        });
        g.bench_function(BenchmarkId::new("all_three", &id), |bn| {
            let mut i = 0usize;
            bn.iter(|| {
                let q = &qs[i & (QUERIES - 1)];
                i = i.wrapping_add(1);
                black_box(full_lookup(&table, black_box(q)))
            })
        });
    }
    g.finish();
}

/// Realistic request headers carrying `branch` in each context source.
fn context_headers(branch: &str) -> [(&'static str, http::HeaderMap); 3] {
    let mk = |pairs: &[(&'static str, String)]| {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                h.append(*k, v);
            }
        }
        h.append(
            "user-agent",
            http::HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
        );
        h.append("accept", http::HeaderValue::from_static("application/json"));
        h
    };
    [
        ("header", mk(&[("x-microstax-branch", branch.to_string())])),
        (
            "baggage",
            mk(&[(
                "baggage",
                format!("userId=alice%40example.com;ttl=30, tenant=acme, microstax-branch={branch};src=ui, session=7f3a9c"),
            )]),
        ),
        (
            "cookie",
            mk(&[(
                "cookie",
                format!("_ga=GA1.2.123456789.1700000000; session=eyJhbGciOiJIUzI1NiJ9.e30.abc; theme=dark; microstax-branch={branch}; consent=yes"),
            )]),
        ),
    ]
}

fn bench_extraction(c: &mut Criterion) {
    let mut g = c.benchmark_group("extraction");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (b, s) in [(10, 50), (1_000, 2_000), (10_000, 2_000)] {
        let sp = spec(b, s);
        let table = compile(&build(&sp), 1);
        let rules = microstax_proxy::ContextRules::new(&table.settings);
        let qs = queries(&sp, &table);
        let id = size_id(b, s);
        for (source, headers) in context_headers(&qs[0].branch) {
            g.bench_function(BenchmarkId::new(format!("extract_{source}"), &id), |bn| {
                bn.iter(|| {
                    black_box(rules.extract(black_box(&headers), Some("svc0")))
                        .map(|(n, _)| n.as_str().len())
                })
            });
        }
        // per query: its own header map, extraction then branch + host + route
        let maps: Vec<(http::HeaderMap, String)> = qs
            .iter()
            .map(|q| {
                let [(_, h), _, _] = context_headers(&q.branch);
                (h, q.host.clone())
            })
            .collect();
        g.bench_function(BenchmarkId::new("extract_and_lookup", &id), |bn| {
            let mut i = 0usize;
            bn.iter(|| {
                let (h, host) = &maps[i & (QUERIES - 1)];
                i = i.wrapping_add(1);
                black_box(extract_and_lookup(&table, &rules, black_box(h), host))
            })
        });
    }
    g.finish();
}

/// The routing decision of a request: context, branch, service, route, upstream.
#[inline]
fn extract_and_lookup(
    table: &RoutingTable,
    rules: &microstax_proxy::ContextRules,
    h: &http::HeaderMap,
    host: &str,
) -> Option<u32> {
    let layer = rules
        .extract(h, Some(host))
        .and_then(|(name, _)| table.branch(name.as_str()))
        .unwrap_or(0);
    let service = table.services.resolve(Some(host), "/")?;
    table.route(layer, service)?.upstreams.first().copied()
}

fn bench_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("parsing");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let bag = b"userId=alice%40example.com;ttl=30, tenant=acme, microstax-branch=team%2Ffeature-42;src=ui, session=7f3a9c";
    g.bench_function("baggage_find_and_decode", |bn| {
        bn.iter(|| {
            let raw = microstax_proxy::baggage::find_raw(black_box(bag), "microstax-branch")?;
            let mut buf = [0u8; 63];
            microstax_proxy::baggage::percent_decode(raw, &mut buf)
        })
    });
    let cookie = b"_ga=GA1.2.123456789.1700000000; session=eyJhbGciOiJIUzI1NiJ9.e30.abc; theme=dark; microstax-branch=feature-42; consent=yes";
    g.bench_function("cookie_find", |bn| {
        bn.iter(|| {
            microstax_proxy::cookie::find(black_box(cookie), "microstax-branch").map(<[u8]>::len)
        })
    });
    g.finish();
}

fn bench_compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    for (b, s) in SIZES {
        let cfg = build(&spec(b, s));
        g.bench_function(BenchmarkId::from_parameter(size_id(b, s)), |bn| {
            bn.iter(|| black_box(compile(&cfg, 1)))
        });
    }
    g.finish();
}

/// The same config with branch `i` changed (new endpoint names), and the branch's layer id.
fn changed_branch(spec: &Spec, cfg: &Config, i: usize) -> (Config, usize) {
    let name = Spec::branch_name(i);
    let text = spec.branch_text(i, "-v2");
    let docs =
        match microstax_config::parse_text("api", &text, Some(LayerKind::Branch), Some(&name)) {
            Ok(d) => d,
            Err(e) => panic!("changed branch does not parse: {e}"),
        };
    match docs.into_iter().next().map(|d| cfg.upsert(d)) {
        Some(Ok(x)) => x,
        Some(Err(e)) => panic!("changed branch is invalid: {e}"),
        None => panic!("no document"),
    }
}

fn bench_update(c: &mut Criterion) {
    let mut g = c.benchmark_group("update_one_branch");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (b, s) in SIZES {
        let sp = spec(b, s);
        let cfg = build(&sp);
        // a chain root (recompiles it and its 3 descendants) and a leaf (only itself)
        for (what, i) in [("chain_root", 0), ("leaf", MAX_DEPTH - 1)] {
            let (cfg2, idx) = changed_branch(&sp, &cfg, i);
            let versions = [&cfg2, &cfg];
            let mut compiler = Compiler::new(&cfg, 1);
            let mut gen = 1u64;
            let id = format!("{what}/{}", size_id(b, s));
            g.bench_function(BenchmarkId::from_parameter(id), |bn| {
                bn.iter(|| {
                    gen += 1;
                    // alternate between the two versions so every update changes the table
                    let t = compiler.update(versions[(gen & 1) as usize], idx, gen);
                    black_box(t.generation)
                })
            });
        }
    }
    g.finish();
}

fn live_bytes() -> isize {
    let s = GLOBAL.stats();
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

/// Print the live bytes of a compiled table at 10k branches x 2k services x 5 overrides, and
/// check that lookups do not allocate.
fn report_memory() {
    let sp = spec(10_000, 2_000);
    let before = live_bytes();
    let cfg = build(&sp);
    let with_config = live_bytes();
    let table: Arc<RoutingTable> = compile(&cfg, 1);
    drop(cfg);
    let table_only = live_bytes();
    let (layers, routes) = table.counts();
    println!(
        "memory: table at {} branches x {} services x {} overrides (depth <= {}): {} bytes ({:.2} MiB), {} layers, {} routes; the validated config it came from: {} bytes ({:.2} MiB)",
        sp.branches,
        sp.services,
        sp.overrides,
        sp.max_depth,
        table_only - before,
        (table_only - before) as f64 / 1_048_576.0,
        layers,
        routes,
        with_config - before,
        (with_config - before) as f64 / 1_048_576.0,
    );
    let qs = queries(&sp, &table);
    let allocs_before = GLOBAL.stats().allocations;
    let mut found = 0usize;
    for q in qs.iter().cycle().take(100_000) {
        found += usize::from(full_lookup(&table, q).is_some());
    }
    let allocs = GLOBAL.stats().allocations - allocs_before;
    println!("memory: allocations during 100000 lookups (branch + host + route): {allocs} ({found} found)");
    let rules = microstax_proxy::ContextRules::new(&table.settings);
    let maps: Vec<(http::HeaderMap, String)> = qs
        .iter()
        .map(|q| {
            let [_, (_, h), _] = context_headers(&q.branch);
            (h, q.host.clone())
        })
        .collect();
    let allocs_before = GLOBAL.stats().allocations;
    let mut found = 0usize;
    for (h, host) in maps.iter().cycle().take(100_000) {
        found += usize::from(extract_and_lookup(&table, &rules, h, host).is_some());
    }
    let allocs = GLOBAL.stats().allocations - allocs_before;
    println!(
        "memory: allocations during 100000 baggage extractions + lookups: {allocs} ({found} found)"
    );
}

criterion_group!(
    benches,
    bench_lookup,
    bench_extraction,
    bench_parsing,
    bench_compile,
    bench_update
);

fn main() {
    report_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
