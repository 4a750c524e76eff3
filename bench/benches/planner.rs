//! Planner benchmarks on a generated 2,000-service catalog with 10,000 branches (5 overrides
//! each, lineages up to 3 branches deep): a full plan of one branch (index the catalog, address
//! the baseline, plan the lineage), a replan of one branch with the planner reused after the
//! branch changed, and planning the whole fleet with sharing.
//!
//! Run: `cargo bench -p microstax-bench --bench planner`

#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use microstax_config::load::ParsedDoc;
use microstax_config::schema::{
    Document, LayerKind, MigrationDoc, ResourcesDoc, ServiceDoc, StoreDoc, TopicsDoc,
};
use microstax_config::spans::Spans;
use microstax_config::Config;
use microstax_planner::{plan_branch, Planner};
use std::collections::BTreeMap;
use std::sync::Arc;

const SERVICES: usize = 2_000;
const BRANCHES: usize = 10_000;
const OVERRIDES: usize = 5;

fn doc(file: String, doc: Document) -> ParsedDoc {
    ParsedDoc {
        file: Arc::from(file),
        doc,
        spans: Arc::new(Spans::default()),
    }
}

/// Service `i` calls three lower services, names the first in its env on even ids, owns a
/// postgres store on every 4th id, and produces (every 10th id) or consumes a topic.
fn service(i: usize) -> ServiceDoc {
    let deps: Vec<String> = (1..=3)
        .filter(|k| i >= k * 7)
        .map(|k| format!("s{}", i - k * 7))
        .collect();
    let mut env = BTreeMap::new();
    if i >= 7 && i.is_multiple_of(2) {
        env.insert("DEP_URL".to_string(), format!("http://s{}:8080", i - 7));
    }
    ServiceDoc {
        hosts: vec![format!("s{i}")],
        endpoints: Some(vec![format!("10.0.{}.{}:8080", i / 250, i % 250)]),
        image: Some(format!("registry/s{i}:1")),
        resources: Some(ResourcesDoc {
            cpu_m: 100 + (i % 4) as u32 * 50,
            memory_mi: 128,
        }),
        depends_on: deps,
        env,
        stores: if i.is_multiple_of(4) {
            vec![StoreDoc {
                name: format!("db{i}"),
                kind: "postgres".into(),
            }]
        } else {
            vec![]
        },
        topics: Some(TopicsDoc {
            produces: if i.is_multiple_of(10) {
                vec![format!("t{i}")]
            } else {
                vec![]
            },
            consumes: if !i.is_multiple_of(10) {
                vec![format!("t{}", i / 10 * 10)]
            } else {
                vec![]
            },
        }),
        paths: vec![format!("services/s{i}/**")],
        ..ServiceDoc::default()
    }
}

/// Branch `j`: parent baseline (j < 1000), a first-level branch (j < 4000) or a second-level
/// one; five image overrides (the last a hotfix image shared by many branches), an env change,
/// a migration on every 10th branch and a contract change on every 20th.
fn branch(j: usize, version: usize) -> ParsedDoc {
    let parent = match j {
        0..1000 => "baseline".to_string(),
        1000..4000 => format!("b{}", j % 1000),
        _ => format!("b{}", 1000 + j % 3000),
    };
    let mut services = BTreeMap::new();
    for k in 0..OVERRIDES {
        // the last override is a hotfix image many branches share
        let (i, image) = match k {
            4 => ((j % 50) * 40, format!("registry/s{}:hotfix", (j % 50) * 40)),
            _ => {
                let i = (j * 13 + k * 397) % SERVICES;
                (i, format!("registry/s{i}:b{j}-v{version}"))
            }
        };
        let mut s = ServiceDoc {
            image: Some(image),
            ..ServiceDoc::default()
        };
        if k == 0 {
            s.env.insert("FEATURE".into(), format!("b{j}"));
        }
        if k == 1 && j.is_multiple_of(10) && i % 4 == 0 {
            s.migrations = vec![MigrationDoc {
                store: format!("db{i}"),
                name: format!("m{j}"),
                additive: false,
            }];
        }
        if k == 2 && j.is_multiple_of(20) && i % 10 == 0 {
            s.contracts.insert(format!("t{i}"), format!("v{j}"));
        }
        services.insert(format!("s{i}"), s);
    }
    let d = Document {
        kind: Some(LayerKind::Branch),
        name: Some(format!("b{j}")),
        parent: Some(parent),
        services,
        ..Document::default()
    };
    doc(format!("branches/b{j}.yaml"), d)
}

fn world() -> Config {
    let org = Document {
        kind: Some(LayerKind::Org),
        services: (0..SERVICES)
            .map(|i| (format!("s{i}"), service(i)))
            .collect(),
        ..Document::default()
    };
    let mut docs = vec![doc("org.yaml".into(), org)];
    docs.extend((0..BRANCHES).map(|j| branch(j, 0)));
    Config::build(docs).unwrap()
}

fn bench(c: &mut Criterion) {
    let config = world();
    let target = "b9999";
    let planner = Planner::new(&config).unwrap();
    let plan = planner.plan(&config, target, None).unwrap();
    let fleet = planner.plan_all(&config).unwrap();
    eprintln!(
        "world: {} services, {} layers; {target}: lineage {}, {}; fleet: {} instances with sharing, {} without, {} if cloned",
        config.services().len(),
        config.layer_slots(),
        plan.lineage.len(),
        plan.summary_line().replace('\n', "; "),
        fleet.instances,
        fleet.instances_unshared,
        fleet.instances_if_cloned,
    );
    let (changed, _) = config.upsert(branch(9999, 1)).unwrap();

    let mut g = c.benchmark_group("planner");
    g.bench_function("full plan of one branch (2k services, 10k branches)", |b| {
        b.iter(|| plan_branch(black_box(&config), black_box(target), None).unwrap())
    });
    g.bench_function("one-branch replan after the branch changed", |b| {
        b.iter(|| {
            planner
                .plan(black_box(&changed), black_box(target), None)
                .unwrap()
        })
    });
    g.bench_function("build planner (index catalog, address baseline)", |b| {
        b.iter(|| Planner::new(black_box(&config)).unwrap())
    });
    g.bench_function("config upsert of one branch (context, not planner)", |b| {
        b.iter(|| config.upsert(branch(9999, 2)).unwrap())
    });
    g.sample_size(10);
    g.bench_function("plan all 10k branches with sharing", |b| {
        b.iter(|| planner.plan_all(black_box(&config)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
