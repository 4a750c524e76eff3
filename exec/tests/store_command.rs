//! The command store plugin with real `sh` scripts that create and delete marker files.

#![allow(clippy::unwrap_used)]

use microstax_exec::store::command::{
    CommandConfigError, CommandOptions, CommandSpec, CommandStores,
};
use microstax_exec::store::name::store_resource_name;
use microstax_exec::{StoreError, StoreMode, StorePlugin, StoreRequest};
use std::path::Path;
use std::time::{Duration, Instant};

fn sh(script: &str, dir: &Path) -> CommandSpec {
    CommandSpec {
        program: "sh".to_owned(),
        // The script reads its values from MSX_ variables and positional parameters, never
        // from text spliced into it.
        args: vec![
            "-c".to_owned(),
            script.to_owned(),
            "sh".to_owned(),
            dir.display().to_string(),
            "{name}".to_owned(),
        ],
    }
}

/// Delete removes every marker the scripts below may leave.
const DELETE: &str =
    r#"rm -f "$1/$2" "$1/partial" "$1/started" && echo "deleted $MSX_CONNECTION" >> "$1/log""#;

fn request(branch: &str) -> StoreRequest {
    StoreRequest {
        store: "cache".into(),
        kind: "redis".into(),
        branch: branch.into(),
        mode: StoreMode::Database,
        baseline: "redis://127.0.0.1:1/0".to_owned(),
    }
}

fn plugin(create: &str, dir: &Path, timeout: Duration) -> CommandStores {
    let mut opts = CommandOptions::new(sh(create, dir), sh(DELETE, dir));
    opts.timeout = timeout;
    opts.kill_grace = Duration::from_millis(300);
    CommandStores::new(opts).unwrap()
}

#[tokio::test]
async fn create_prints_the_connection_and_delete_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let create = r#"echo "$MSX_STORE $MSX_BRANCH $MSX_KIND $MSX_BASELINE" > "$1/$2"
echo "making it"
echo "redis://127.0.0.1:1/$2"
echo"#;
    let p = plugin(create, dir.path(), Duration::from_secs(10));
    let req = request("feature/a");
    let name = store_resource_name("cache", "feature/a");
    let handle = p.create(&req).await.unwrap();
    assert_eq!(handle.connection, format!("redis://127.0.0.1:1/{name}"));
    assert_eq!(handle.resource, name);
    let marker = dir.path().join(&name);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "cache feature/a redis redis://127.0.0.1:1/0"
    );

    p.drop_store(&handle).await.unwrap();
    assert!(!marker.exists());
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
    assert_eq!(log.trim(), format!("deleted {}", handle.connection));
    // Idempotent: delete of a missing store succeeds.
    p.drop_store(&handle).await.unwrap();
}

#[tokio::test]
async fn failing_create_reports_status_and_stderr_and_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let create = r#"touch "$1/partial"; echo "quota exceeded for $MSX_BRANCH" >&2; exit 3"#;
    let p = plugin(create, dir.path(), Duration::from_secs(10));
    let err = p.create(&request("feature_b")).await.unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
    assert!(err.retryable(), "{err}");
    let text = err.to_string();
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(text.contains("quota exceeded for feature_b"), "{text}");
    assert!(text.contains("delete ran"), "{text}");
    assert!(
        !dir.path().join("partial").exists(),
        "delete undid the partial create"
    );
}

#[tokio::test]
async fn create_without_output_fails_and_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let p = plugin(
        r#"touch "$1/partial"; echo "  ""#,
        dir.path(),
        Duration::from_secs(10),
    );
    let err = p.create(&request("feature_c")).await.unwrap_err();
    assert!(!err.retryable(), "{err}");
    assert!(err.to_string().contains("no connection string"), "{err}");
    assert!(!dir.path().join("partial").exists());
}

#[tokio::test]
async fn timed_out_create_is_killed_with_its_children_and_undone() {
    let dir = tempfile::tempdir().unwrap();
    // The script's own child holds stdout open: killing only `sh` would not end the run.
    let create = r#"touch "$1/started"; sleep 30 & echo $! > "$1/pid"; wait"#;
    let p = plugin(create, dir.path(), Duration::from_millis(500));
    let started = Instant::now();
    let err = p.create(&request("feature_d")).await.unwrap_err();
    let took = started.elapsed();
    assert!(err.retryable(), "{err}");
    assert!(err.to_string().contains("did not finish within"), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!dir.path().join("started").exists(), "delete ran");

    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(5);
    // Gone, or a zombie waiting for a reaper: either way no longer running.
    while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(Instant::now() < deadline, "sleep {} still runs", pid.trim());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn missing_program_is_not_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = CommandOptions::new(
        CommandSpec {
            program: dir.path().join("no-such-program").display().to_string(),
            args: vec![],
        },
        sh(DELETE, dir.path()),
    );
    opts.timeout = Duration::from_secs(5);
    let p = CommandStores::new(opts).unwrap();
    let err = p.create(&request("feature_e")).await.unwrap_err();
    assert!(!err.retryable(), "{err}");
    assert!(
        err.to_string().contains("could not start create command"),
        "{err}"
    );
}

#[test]
fn placeholders_are_checked_when_built() {
    let dir = Path::new("/tmp");
    let spliced = CommandOptions::new(
        CommandSpec {
            program: "/bin/sh".to_owned(),
            args: vec!["-c".to_owned(), "make-db {branch}".to_owned()],
        },
        sh(DELETE, dir),
    );
    assert!(matches!(
        CommandStores::new(spliced),
        Err(CommandConfigError::PlaceholderInShell { .. })
    ));
    let unknown = CommandOptions::new(
        CommandSpec {
            program: "make-db".to_owned(),
            args: vec!["--conn={connection}".to_owned()],
        },
        sh(DELETE, dir),
    );
    let err = CommandStores::new(unknown).unwrap_err();
    assert_eq!(
        err.to_string(),
        "create command: unknown placeholder {connection} in \"--conn={connection}\""
    );
}
