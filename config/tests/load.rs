//! Reading a config directory: files that are not read are reported as warnings, not ignored
//! silently.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

use microstax_config::read_config;

#[test]
fn stray_files_are_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for d in ["branches/alice", "teams"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    let org = "kind: org\nservices:\n  web:\n    endpoints: [\"127.0.0.1:1\"]\n";
    let branch = "services:\n  web:\n    endpoints: [\"127.0.0.1:2\"]\n";
    for (f, text) in [
        ("org.yaml", org),
        ("org.yml", org),
        ("prod.yaml", branch),
        ("README.md", "notes"),
        ("branches/dev.yaml", branch),
        ("branches/notes.txt", "todo"),
        ("branches/alice/fix.yaml", branch),
        ("branches/.dev.yaml.swp", "editor state"),
        ("teams/core.json", "{}"),
    ] {
        std::fs::write(root.join(f), text).expect("write");
    }
    let read = read_config(root).expect("reads");
    let files: Vec<&str> = read.files.iter().map(|s| s.rel.as_str()).collect();
    assert_eq!(files, ["org.yaml", "teams/core.json", "branches/dev.yaml"]);
    let warnings: Vec<String> = read.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "org.yml: not read: org.yaml is the org layer",
            "prod.yaml: not read: team and branch layers belong in teams/ and branches/",
            "branches/alice: not read: subdirectories are not searched (a branch named alice/x is a file with `name: alice/x`)",
            "branches/notes.txt: not read: layer files end in .yaml, .yml or .json",
        ]
    );
}
