//! Validation: every mistake is reported with file, line, field and reason.

use microstax_config::{parse_text, Config, LayerKind};

mod common;

use common::build;

const ORG: &str = "kind: org
services:
  web:
    hosts: [web]
    endpoints: [\"127.0.0.1:1\"]
  orders:
    hosts: [orders]
    endpoints: [\"127.0.0.1:2\"]
    stores: [{name: orders-db, kind: postgres}]
";

fn errors(files: &[(&str, &str)]) -> Vec<String> {
    match build(files) {
        Ok(_) => Vec::new(),
        Err(e) => e.to_string().lines().map(str::to_string).collect(),
    }
}

fn assert_has(errs: &[String], want: &str) {
    assert!(
        errs.iter().any(|e| e == want),
        "missing `{want}` in:\n{}",
        errs.join("\n")
    );
}

#[test]
fn valid_config_builds() {
    let cfg = build(&[
        ("org.yaml", ORG),
        (
            "branches/a.yaml",
            "services:\n  web: {endpoints: [\"127.0.0.1:3\"]}\n",
        ),
    ])
    .expect("valid");
    assert_eq!(cfg.services().len(), 2);
    assert!(cfg.branch_id("a").is_some());
}

#[test]
fn unknown_parent() {
    let errs = errors(&[
        ("org.yaml", ORG),
        ("branches/a.yaml", "# comment\nparent: ghost\n"),
    ]);
    assert_has(
        &errs,
        "branches/a.yaml:2: parent: unknown parent `ghost`: name `baseline`, a team or a branch",
    );
}

#[test]
fn lineage_cycle() {
    let errs = errors(&[
        ("org.yaml", ORG),
        ("branches/a.yaml", "parent: b\n"),
        ("branches/b.yaml", "parent: c\n"),
        ("branches/c.yaml", "parent: a\n"),
    ]);
    assert_eq!(
        errs.iter().filter(|e| e.contains("lineage cycle")).count(),
        1,
        "{errs:?}"
    );
    assert!(
        errs[0].contains("a -> b -> c -> a") || errs[0].contains("lineage cycle"),
        "{errs:?}"
    );
}

#[test]
fn self_parent_is_a_cycle() {
    let errs = errors(&[("org.yaml", ORG), ("branches/a.yaml", "parent: a\n")]);
    assert_has(&errs, "branches/a.yaml:1: parent: lineage cycle: a -> a");
}

#[test]
fn override_of_undeclared_service() {
    let errs = errors(&[
        ("org.yaml", ORG),
        (
            "branches/a.yaml",
            "services:\n  billing:\n    endpoints: [\"127.0.0.1:9\"]\n",
        ),
    ]);
    assert_has(
        &errs,
        "branches/a.yaml:2: services.billing: service `billing` is not declared in the org layer",
    );
}

#[test]
fn duplicate_hosts() {
    let org = "kind: org\nservices:\n  a:\n    hosts: [x]\n    endpoints: [\"127.0.0.1:1\"]\n  b:\n    hosts: [y, X]\n    endpoints: [\"127.0.0.1:2\"]\n";
    let errs = errors(&[("org.yaml", org)]);
    assert_has(
        &errs,
        "org.yaml:7: services.b.hosts.1: duplicate host `x`: already used by service `a` (org.yaml:4)",
    );
}

#[test]
fn malformed_endpoints() {
    let br = "services:\n  web:\n    endpoints:\n      - \"127.0.0.1\"\n      - \"https://x:443\"\n      - \"h:99999\"\n      - \"bad host:1\"\n";
    let errs = errors(&[("org.yaml", ORG), ("branches/a.yaml", br)]);
    assert_has(
        &errs,
        "branches/a.yaml:4: services.web.endpoints.0: `127.0.0.1` has no port: write host:port",
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("branches/a.yaml:5: services.web.endpoints.1: https upstreams")),
        "{errs:?}"
    );
    assert_has(
        &errs,
        "branches/a.yaml:6: services.web.endpoints.2: `h:99999` has an invalid port",
    );
    assert_has(
        &errs,
        "branches/a.yaml:7: services.web.endpoints.3: `bad host:1` has an invalid host",
    );
}

#[test]
fn invalid_branch_names() {
    for (name, why) in [
        (
            "Feature",
            "name must start with a lower-case letter or digit",
        ),
        ("a b", "name may hold only a-z, 0-9, '.', '_', '-' and '/'"),
        ("baseline", ""),
    ] {
        let text = format!("kind: branch\nname: \"{name}\"\n");
        let errs = errors(&[("org.yaml", ORG), ("branches/x.yaml", &text)]);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("branches/x.yaml:2: name:") && e.contains(why)),
            "{name}: {errs:?}"
        );
    }
    let long = "a".repeat(64);
    let errs = errors(&[
        ("org.yaml", ORG),
        ("branches/x.yaml", &format!("name: {long}\n")),
    ]);
    assert!(
        errs.iter().any(|e| e.contains("longer than 63")),
        "{errs:?}"
    );
}

#[test]
fn unknown_field_is_an_error_with_line() {
    let errs = errors(&[
        ("org.yaml", ORG),
        ("branches/a.yaml", "services:\n  web:\n    imagee: x\n"),
    ]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("branches/a.yaml:3:"), "{errs:?}");
    assert!(errs[0].contains("unknown field `imagee`"), "{errs:?}");
}

#[test]
fn yaml_syntax_error_has_line() {
    let errs = errors(&[
        ("org.yaml", ORG),
        ("branches/a.yaml", "services:\n  web: [unclosed\n"),
    ]);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("branches/a.yaml:"), "{errs:?}");
}

#[test]
fn org_only_fields_in_branch_and_bad_migration() {
    let br =
        "services:\n  orders:\n    hosts: [z]\n    migrations: [{store: other-db, name: m1}]\n";
    let errs = errors(&[("org.yaml", ORG), ("branches/a.yaml", br)]);
    assert_has(
        &errs,
        "branches/a.yaml:3: services.orders.hosts: is set in the org layer only",
    );
    assert_has(&errs, "branches/a.yaml:4: services.orders.migrations.0.store: service `orders` does not use a store named `other-db`");
}

#[test]
fn duplicate_layer_names_and_missing_org() {
    let errs = errors(&[
        ("org.yaml", ORG),
        ("teams/x.yaml", "parent: baseline\n"),
        ("branches/x.yaml", "parent: baseline\n"),
    ]);
    assert!(
        errs.iter().any(|e| e.starts_with("branches/x.yaml:")
            && e.contains("duplicate layer name `x`: also defined in teams/x.yaml")),
        "{errs:?}"
    );
    let errs = errors(&[("branches/x.yaml", "parent: baseline\n")]);
    assert!(errs.iter().any(|e| e.contains("no org layer")), "{errs:?}");
}

#[test]
fn single_file_with_all_layers() {
    let text = format!("{ORG}---\nkind: team\nname: t\n---\nkind: branch\nname: b\nparent: t\nservices:\n  web: {{endpoints: [\"127.0.0.1:5\"]}}\n");
    let docs = parse_text("all.yaml", &text, None, None).expect("parse");
    let cfg = Config::build(docs).expect("valid");
    let b = cfg.branch_id("b").expect("b");
    let eff = cfg.effective(b, "web").expect("eff");
    assert_eq!(eff.endpoints.origin.file.as_ref(), "all.yaml");
    assert_eq!(eff.endpoints.origin.line, 18);
    // each document must name its kind in a single file
    let err = parse_text("all.yaml", "services: {}\n---\nkind: org\n", None, None)
        .expect_err("kind required");
    assert!(err.to_string().contains("kind: missing"), "{err}");
}

#[test]
fn upsert_and_remove_keep_ids_and_validate() {
    let cfg = build(&[
        ("org.yaml", ORG),
        ("branches/a.yaml", "parent: baseline\n"),
        ("branches/b.yaml", "parent: a\n"),
    ])
    .expect("valid");
    let a = cfg.branch_id("a").expect("a");
    let doc = parse_text(
        "api",
        "services:\n  web: {endpoints: [\"127.0.0.1:7\"]}\n",
        Some(LayerKind::Branch),
        Some("a"),
    )
    .expect("parse")
    .remove(0);
    let (next, id) = cfg.upsert(doc).expect("upsert");
    assert_eq!(id, a, "replacing keeps the id");
    assert_eq!(next.subtree(a).len(), 2);
    let bad = parse_text("api", "parent: b\n", Some(LayerKind::Branch), Some("a"))
        .expect("parse")
        .remove(0);
    let err = next.upsert(bad).expect_err("cycle");
    assert!(err.to_string().contains("lineage cycle"), "{err}");
    let err = next.remove("a").expect_err("has children");
    assert!(err.to_string().contains("parent of b"), "{err}");
    let (after, _) = next.remove("b").expect("remove leaf");
    assert!(after.branch_id("b").is_none());
}

#[test]
fn empty_files_are_rejected() {
    for text in ["", "\n\n", "# only a comment\n", "---\n"] {
        let err = parse_text("branches/x.yaml", text, Some(LayerKind::Branch), Some("x"))
            .expect_err("empty");
        assert!(err.to_string().contains("holds no document"), "{err}");
    }
}

#[test]
fn invalid_path_glob_is_rejected_with_its_line() {
    // the planner compiles these globs; a bad one used to pass validation and then turn
    // planned routing off at compile time
    let org = "kind: org\nrouting: {instance_address: \"{service}-{instance}.svc:80\"}\nservices:\n  web:\n    endpoints: [\"127.0.0.1:1\"]\n    paths:\n      - \"src/web/**\"\n      - \"src/[oops\"\n";
    let errs = errors(&[("org.yaml", org)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(
            "org.yaml:8: services.web.paths.1: `src/[oops` is not a valid glob: unclosed character class"
        ),
        "{errs:?}"
    );
}

#[test]
fn conflicting_store_kinds_are_rejected_at_the_second_declaration() {
    // `zeta` comes first in the file, `alpha` first in name order: the error belongs to the
    // line written second
    let org = "kind: org\nservices:\n  zeta:\n    endpoints: [\"127.0.0.1:1\"]\n    stores: [{name: db, kind: postgres}]\n  alpha:\n    endpoints: [\"127.0.0.1:2\"]\n    stores:\n      - {name: db, kind: redis}\n";
    let errs = errors(&[("org.yaml", org)]);
    assert_eq!(
        errs,
        ["org.yaml:9: services.alpha.stores.0.kind: store `db` is `redis` here but `postgres` in service `zeta` (org.yaml:5)"]
    );
}

#[test]
fn duplicate_host_and_prefix_point_at_the_second_declaration() {
    // `web` is written first; `api` sorts first by name but is the second declaration
    let org = "kind: org\nservices:\n  web:\n    hosts: [shop]\n    path_prefixes: [/shop/]\n    endpoints: [\"127.0.0.1:1\"]\n  api:\n    hosts:\n      - Shop:8080\n    path_prefixes:\n      - /shop\n    endpoints: [\"127.0.0.1:2\"]\n";
    let errs = errors(&[("org.yaml", org)]);
    assert_eq!(
        errs,
        [
            "org.yaml:9: services.api.hosts.0: duplicate host `shop`: already used by service `web` (org.yaml:4)",
            "org.yaml:11: services.api.path_prefixes.0: duplicate path prefix `/shop`: already used by service `web` (org.yaml:5)",
        ]
    );
}

#[test]
fn endpoint_with_a_path_is_refused_for_its_path() {
    let br = "services:\n  web:\n    endpoints:\n      - \"http://h:80/path\"\n      - \"h:80/v1/\"\n      - \"http://h:80/\"\n";
    let errs = errors(&[("org.yaml", ORG), ("branches/a.yaml", br)]);
    assert_eq!(
        errs,
        [
            "branches/a.yaml:4: services.web.endpoints.0: `http://h:80/path` has a path: an endpoint is host:port or http://host:port, and requests keep their own path",
            "branches/a.yaml:5: services.web.endpoints.1: `h:80/v1/` has a path: an endpoint is host:port or http://host:port, and requests keep their own path",
        ]
    );
}

#[test]
fn org_update_with_a_bad_glob_or_store_kind_is_refused() {
    // "validate, then swap": an org update is validated like a file before it can be applied
    let cfg = build(&[("org.yaml", ORG)]).expect("valid");
    for (bad, want) in [
        (
            format!("{ORG}    paths: [\"src/{{a\"]\n"),
            "org.yaml:10: services.orders.paths.0: `src/{a` is not a valid glob",
        ),
        (
            format!("{ORG}  cache:\n    endpoints: [\"127.0.0.1:3\"]\n    stores: [{{name: orders-db, kind: redis}}]\n"),
            "org.yaml:12: services.cache.stores.0.kind: store `orders-db` is `redis` here but `postgres` in service `orders` (org.yaml:9)",
        ),
    ] {
        let doc = parse_text("org.yaml", &bad, Some(LayerKind::Org), None)
            .expect("parses")
            .remove(0);
        let err = cfg.upsert(doc).expect_err("refused").to_string();
        assert!(err.starts_with(want), "{err}");
    }
}

#[test]
fn diagnostics_come_in_file_order() {
    // services are checked in name order; the report reads top to bottom
    let org = "kind: org\nservices:\n  zeta:\n    endpoints: [\"no-port\"]\n  alpha:\n    endpoints: [\"also-no-port\"]\n";
    let errs = errors(&[("org.yaml", org)]);
    assert_eq!(
        errs,
        [
            "org.yaml:4: services.zeta.endpoints.0: `no-port` has no port: write host:port",
            "org.yaml:6: services.alpha.endpoints.0: `also-no-port` has no port: write host:port",
        ]
    );
}

#[test]
fn run_blocks_stores_and_lifecycle_are_checked_at_their_lines() {
    let org = format!(
        "{ORG}    run: {{command: \"\", args: [\"{{nope}}\"], probe: healthz}}\n    idle_after_s: 0\nstores:\n  orders-db: {{url: \"mysql://x\"}}\n  ghost-db: {{url: \"postgres://a@127.0.0.1/b\"}}\nlifecycle: {{ttl_s: 3600, hold_max_requests: 0}}\n"
    );
    let e = errors(&[("org.yaml", &org)]);
    let has = |needle: &str| e.iter().any(|l| l.contains(needle));
    assert!(has("services.orders.run.command: is empty"), "{e:?}");
    assert!(
        has("services.orders.run.args.0: unknown placeholder `{nope}`"),
        "{e:?}"
    );
    assert!(has("services.orders.run.probe: must be a path"), "{e:?}");
    assert!(
        has("services.orders.idle_after_s: must be greater than 0"),
        "{e:?}"
    );
    assert!(
        has("stores.orders-db.url: the postgres plugin needs"),
        "{e:?}"
    );
    assert!(
        has("stores.ghost-db: no service uses a store named `ghost-db`"),
        "{e:?}"
    );
    assert!(
        has("lifecycle.hold_max_requests: must be greater than 0"),
        "{e:?}"
    );
    // a branch may not set org-only lifecycle fields or stores
    let branch =
        "parent: baseline\nlifecycle: {grace_ms: 5}\nstores: {x: {url: \"postgres://a@h/b\"}}\n";
    let e = errors(&[("org.yaml", ORG), ("branches/b.yaml", branch)]);
    assert!(
        e.iter()
            .any(|l| l
                .contains("branches/b.yaml:2: lifecycle.grace_ms: is set in the org layer only")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|l| l.contains("branches/b.yaml:3: stores: belongs in the org layer only")),
        "{e:?}"
    );
    // and a valid one builds, with its settings resolved
    let ok = format!(
        "{ORG}    run: {{command: python3, args: [\"-m\", \"http.server\", \"{{port}}\"]}}\nstores:\n  orders-db: {{url: \"postgres://a@127.0.0.1:5432/orders\", mode: database-from-template}}\nlifecycle: {{grace_ms: 500}}\n"
    );
    let cfg = build(&[("org.yaml", &ok)]).unwrap();
    assert_eq!(cfg.lifecycle().grace, std::time::Duration::from_millis(500));
    let s = cfg.store_settings("orders-db").unwrap();
    assert_eq!(s.env, "DATABASE_URL");
    assert_eq!(
        s.copy,
        microstax_config::environments::StoreCopy::DatabaseFromTemplate
    );
}

#[test]
fn upstream_protocol_is_checked_at_its_line_and_merged_along_the_lineage() {
    let org = "kind: org\nservices:\n  api:\n    endpoints: [\"a:1\"]\n    policy: {protocol: http2}\n  web:\n    endpoints: [\"b:1\"]\n    policy:\n      protocol: grpc\n";
    assert_eq!(
        errors(&[("org.yaml", org)]),
        ["org.yaml:9: services.web.policy.protocol: unknown protocol `grpc`: use auto, http1 or http2"]
    );
    let org = "kind: org\nservices:\n  api:\n    endpoints: [\"a:1\"]\n    policy: {protocol: http2}\n  web:\n    endpoints: [\"b:1\"]\n";
    let br = "parent: baseline\nservices:\n  api: {policy: {protocol: http1}}\n";
    let c = build(&[("org.yaml", org), ("branches/dev.yaml", br)]).expect("valid");
    let proto = |layer: &str, svc: &str| {
        let idx = c.layer_id(layer).expect("layer");
        c.effective(idx, svc).expect("service").protocol.value
    };
    use microstax_config::merge::UpstreamProtocol;
    assert_eq!(proto("baseline", "api"), UpstreamProtocol::Http2);
    assert_eq!(proto("baseline", "web"), UpstreamProtocol::Auto);
    assert_eq!(proto("dev", "api"), UpstreamProtocol::Http1);
}
