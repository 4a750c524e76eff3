//! Source changes from a real git repository built in a temp dir: a base and feature branches,
//! a shared library change, a rename, and a commit on the base after the branch point (which a
//! merge-base diff must ignore). Checks the plan and its reasons, sharing by identical source,
//! and the typed errors.

#![allow(clippy::unwrap_used)]

mod common;

use microstax_planner::{source_refs, Decision, GitError, Planner, SourceChanges};
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(dir: &Path, path: &str, text: &str) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn commit(dir: &Path, msg: &str) {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", msg]);
}

/// main: the four services and a shared money library; feature-x and feature-y make the same
/// change (orders, the shared library, a file moved from web to orders); feature-z changes the
/// library differently; then main gets an inventory commit.
fn repo() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    git(d, &["init", "-q"]);
    git(d, &["config", "user.name", "Planner Test"]);
    git(d, &["config", "user.email", "planner@example.com"]);
    git(d, &["config", "commit.gpgsign", "false"]);
    git(d, &["checkout", "-q", "-b", "main"]);
    for (p, t) in [
        ("services/web/index.html", "<h1>shop</h1>\n"),
        ("services/web/helpers.js", "export const f = 1;\n"),
        ("services/orders/api.rs", "fn create() {}\n"),
        ("services/payments/api.rs", "fn charge() {}\n"),
        ("services/inventory/api.rs", "fn reserve() {}\n"),
        ("libs/money/lib.rs", "pub type Cents = i64;\n"),
        ("README.md", "shop\n"),
    ] {
        write(d, p, t);
    }
    commit(d, "base");
    let change = |branch: &str, money: &str| {
        git(d, &["checkout", "-q", "-b", branch, "main"]);
        write(d, "services/orders/api.rs", "fn create() { validate(); }\n");
        write(d, "services/orders/new.rs", "fn validate() {}\n");
        write(d, "libs/money/lib.rs", money);
        git(
            d,
            &[
                "mv",
                "services/web/helpers.js",
                "services/orders/helpers.js",
            ],
        );
        commit(d, &format!("{branch}: orders validation"));
    };
    change("feature-x", "pub type Cents = i128;\n");
    change("feature-y", "pub type Cents = i128;\n");
    change("feature-z", "pub type Cents = u64;\n");
    git(d, &["checkout", "-q", "main"]);
    write(d, "services/inventory/api.rs", "fn reserve() { lock(); }\n");
    commit(d, "main: inventory locking");
    tmp
}

fn config() -> microstax_config::Config {
    let org = std::fs::read_to_string(common::demo_dir().join("org.yaml")).unwrap();
    common::config(&[
        ("org.yaml", &org),
        (
            "branches/x.yaml",
            "services: {}\nsource: {branch: feature-x, base: main}\n",
        ),
        (
            "branches/y.yaml",
            "services: {}\nsource: {branch: feature-y}\n",
        ),
        (
            "branches/z.yaml",
            "services: {}\nsource: {branch: feature-z}\n",
        ),
    ])
    .unwrap()
}

fn changes(repo: &Path, c: &microstax_config::Config, layer: &str) -> SourceChanges {
    let (base, branch) = source_refs(c, layer, None);
    SourceChanges::from_git(repo, &base, &branch).unwrap()
}

#[test]
fn merge_base_diff_lists_changed_paths() {
    let r = repo();
    let c = config();
    let ch = changes(r.path(), &c, "x");
    assert_eq!(
        (ch.base.as_str(), ch.branch.as_str()),
        ("main", "feature-x")
    );
    let paths: Vec<&str> = ch.paths.iter().map(|p| p.path.as_str()).collect();
    // the rename shows both sides; main's later inventory commit is not a change of feature-x
    assert_eq!(
        paths,
        [
            "libs/money/lib.rs",
            "services/orders/api.rs",
            "services/orders/helpers.js",
            "services/orders/new.rs",
            "services/web/helpers.js",
        ]
    );
    let deleted = ch
        .paths
        .iter()
        .find(|p| p.path == "services/web/helpers.js")
        .unwrap();
    assert_eq!(deleted.blob, None);
    assert!(ch.paths[0].blob.as_deref().is_some_and(|b| b.len() == 40));
    assert_eq!(ch.merge_base.as_deref().map(str::len), Some(40));
}

#[test]
fn plan_forks_owners_of_changed_paths_with_reasons() {
    let r = repo();
    let c = config();
    let ch = changes(r.path(), &c, "x");
    let p = Planner::new(&c).unwrap().plan(&c, "x", Some(&ch)).unwrap();
    let line = |n: &str| p.entry(n).unwrap().to_string();
    assert_eq!(
        line("orders"),
        "orders: fork - source changed in main...feature-x: libs/money/lib.rs, \
         services/orders/api.rs, services/orders/helpers.js (+1 more)"
    );
    // the shared library marks every service that uses it
    assert_eq!(
        line("payments"),
        "payments: fork - source changed in main...feature-x: libs/money/lib.rs"
    );
    // a file moved away from web changes web too
    assert_eq!(
        line("web"),
        "web: fork - source changed in main...feature-x: services/web/helpers.js"
    );
    assert_eq!(
        line("inventory"),
        "inventory: reuse - identical to baseline"
    );
    assert_eq!(p.summary.forked, 3);
    assert_eq!(
        p.source.as_ref().map(|(r, n)| (&**r, *n)),
        Some(("main...feature-x", 5))
    );
    let j = p.to_json();
    assert_eq!(j["entries"][1]["causes"][0]["kind"], "source");
    assert_eq!(j["entries"][1]["causes"][0]["total"], 4);
}

#[test]
fn identical_source_changes_share_instances() {
    let r = repo();
    let c = config();
    let planner = Planner::new(&c).unwrap();
    let plan = |l: &str| {
        planner
            .plan(&c, l, Some(&changes(r.path(), &c, l)))
            .unwrap()
    };
    let (x, y, z) = (plan("x"), plan("y"), plan("z"));
    for s in ["orders", "payments", "web"] {
        assert_eq!(x.entry(s).unwrap().decision, Decision::Fork);
        assert_eq!(
            x.entry(s).unwrap().instance,
            y.entry(s).unwrap().instance,
            "{s}"
        );
    }
    // z changed the shared library differently: orders and payments differ, web does not
    assert_ne!(
        x.entry("orders").unwrap().instance,
        z.entry("orders").unwrap().instance
    );
    assert_ne!(
        x.entry("payments").unwrap().instance,
        z.entry("payments").unwrap().instance
    );
    assert_eq!(
        x.entry("web").unwrap().instance,
        z.entry("web").unwrap().instance
    );
}

#[test]
fn git_failures_name_the_command_and_stderr() {
    let r = repo();
    let e = SourceChanges::from_git(r.path(), "main", "no-such-branch").unwrap_err();
    match &e {
        GitError::Failed {
            command,
            stderr,
            status,
        } => {
            assert!(command.starts_with("git -C "), "{command}");
            assert!(
                command.ends_with("merge-base main no-such-branch"),
                "{command}"
            );
            assert!(!stderr.is_empty());
            assert!(status.starts_with("exit "), "{status}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        e.to_string().contains("merge-base main no-such-branch"),
        "{e}"
    );
    let not_repo = tempfile::tempdir().unwrap();
    let e = SourceChanges::from_git(not_repo.path(), "main", "x").unwrap_err();
    assert!(matches!(e, GitError::Failed { .. }), "{e}");
}
