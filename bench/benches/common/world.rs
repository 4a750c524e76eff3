//! The real config of the `planner+solver` benchmarks (`benches/solver.rs`) and of
//! `examples/plan_once.rs`: 2,000 services, 100 budgeted teams and generated branches.

use microstax_config::load::ParsedDoc;
use microstax_config::schema::{
    BudgetDoc, Document, LayerKind, MigrationDoc, ResourcesDoc, ServiceDoc, StoreDoc,
};
use microstax_config::spans::Spans;
use microstax_config::Config;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Services of the org catalog.
pub const SERVICES: usize = 2_000;
/// Budgeted teams.
pub const TEAMS: usize = 100;

fn parsed(file: String, doc: Document) -> ParsedDoc {
    ParsedDoc {
        file: Arc::from(file),
        doc,
        spans: Arc::new(Spans::default()),
    }
}

/// A real config: 2,000 services (each calls up to three lower ones, every 4th owns a postgres
/// store), 100 teams with a budget, and `branches` branches of `per` image overrides each
/// (a migration on the first override of every 10th service touched).
pub fn world(branches: usize, per: usize) -> Config {
    let services = (0..SERVICES)
        .map(|i| {
            let deps = (1..=3)
                .filter(|k| i >= k * 7)
                .map(|k| format!("s{}", i - k * 7))
                .collect();
            let s = ServiceDoc {
                hosts: vec![format!("s{i}")],
                endpoints: Some(vec![format!("10.0.{}.{}:8080", i / 250, i % 250)]),
                image: Some(format!("registry/s{i}:1")),
                resources: Some(ResourcesDoc {
                    cpu_m: 100 + (i % 4) as u32 * 50,
                    memory_mi: 128,
                }),
                depends_on: deps,
                stores: if i.is_multiple_of(4) {
                    vec![StoreDoc {
                        name: format!("db{i}"),
                        kind: "postgres".into(),
                    }]
                } else {
                    vec![]
                },
                ..ServiceDoc::default()
            };
            (format!("s{i}"), s)
        })
        .collect();
    let org = Document {
        kind: Some(LayerKind::Org),
        services,
        ..Document::default()
    };
    let mut docs = vec![parsed("org.yaml".into(), org)];
    for t in 0..TEAMS {
        docs.push(parsed(
            format!("teams/t{t}.yaml"),
            Document {
                kind: Some(LayerKind::Team),
                name: Some(format!("t{t}")),
                parent: Some("baseline".into()),
                budget: Some(BudgetDoc {
                    max_instances: Some(100_000),
                    max_cost_per_hour: None,
                }),
                ..Document::default()
            },
        ));
    }
    for j in 0..branches {
        let mut services = BTreeMap::new();
        for k in 0..per {
            let i = (j * 13 + k * 397) % SERVICES;
            let mut s = ServiceDoc {
                image: Some(format!("registry/s{i}:b{j}")),
                ..ServiceDoc::default()
            };
            if k.is_multiple_of(10) && i.is_multiple_of(4) {
                s.migrations = vec![MigrationDoc {
                    store: format!("db{i}"),
                    name: format!("m{j}"),
                    additive: false,
                }];
            }
            services.insert(format!("s{i}"), s);
        }
        docs.push(parsed(
            format!("branches/b{j}.yaml"),
            Document {
                kind: Some(LayerKind::Branch),
                name: Some(format!("b{j}")),
                parent: Some(format!("t{}", j % TEAMS)),
                services,
                ..Document::default()
            },
        ));
    }
    Config::build(docs).unwrap()
}
