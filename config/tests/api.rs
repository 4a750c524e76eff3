//! Route contracts in the config: `api` (a semver version) and `requires` (callee -> semver
//! requirement, keys among `depends_on`) validate with file, line, field and reason, and merge
//! along the lineage with their origins.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::build;

const ORG: &str = "kind: org
services:
  web:
    hosts: [web]
    endpoints: [\"127.0.0.1:1\"]
    depends_on: [orders]
    requires: {orders: \"^2\"}
  orders:
    hosts: [orders]
    endpoints: [\"127.0.0.1:2\"]
    api: \"2.3.0\"
";

fn errors(files: &[(&str, &str)]) -> String {
    match build(files) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_bad_version_names_file_line_and_field() {
    let branch = "services:\n  orders:\n    api: \"3.x\"\n";
    let e = errors(&[("org.yaml", ORG), ("branches/b.yaml", branch)]);
    assert!(
        e.contains("branches/b.yaml:3: services.orders.api: `3.x` is not a semver version"),
        "{e}"
    );
}

#[test]
fn a_bad_requirement_and_a_non_dependency_are_errors() {
    let org = ORG.replace(
        "requires: {orders: \"^2\"}",
        "requires: {orders: \"^^2\", payments: \"1\"}",
    );
    let e = errors(&[("org.yaml", &org)]);
    assert!(
        e.contains("org.yaml:7: services.web.requires.orders: `^^2` is not a semver requirement"),
        "{e}"
    );
    assert!(
        e.contains(
            "services.web.requires.payments: `payments` is not one of the service's depends_on"
        ),
        "{e}"
    );
    let branch = "services:\n  orders:\n    requires: {web: \"^1\"}\n";
    let e = errors(&[("org.yaml", ORG), ("branches/b.yaml", branch)]);
    assert!(
        e.contains("branches/b.yaml:3: services.orders.requires.web: `web` is not one of the service's depends_on"),
        "{e}"
    );
}

#[test]
fn a_branch_changes_api_and_requires_with_provenance() {
    let branch =
        "services:\n  orders:\n    api: \"3.0.0\"\n  web:\n    requires: {orders: \"^3\"}\n";
    let cfg = build(&[("org.yaml", ORG), ("branches/b.yaml", branch)]).unwrap();
    let b = cfg.layer_id("b").unwrap();
    let o = cfg.effective(b, "orders").unwrap();
    let api = o.api.unwrap();
    assert_eq!(api.value, "3.0.0");
    assert_eq!(api.origin.line, 3);
    let w = cfg.effective(b, "web").unwrap();
    assert_eq!(w.requires["orders"].value, "^3");
    assert_eq!(
        cfg.effective(0, "web").unwrap().requires["orders"].value,
        "^2"
    );
    assert!(microstax_config::api::satisfies("2.3.0", "^2"));
    assert!(!microstax_config::api::satisfies("3.0.0", "^2"));
}
