//! The config-facing commands as a user runs them: the README's walk-through command lines run
//! verbatim from the repository root, `demo --write-config` refuses to overwrite edited files
//! unless `--force`, and `check` warns about (and `run` logs) files it does not read.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use common::BIN;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run the binary in `cwd` to completion (bounded by 30 s).
async fn microstax(cwd: &Path, args: &[&str]) -> Ran {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(BIN)
            .args(args)
            .current_dir(cwd)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("finished within 30 s")
    .expect("ran");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Every `$ microstax ...` block of the README with the output printed below it.
fn console_blocks(readme: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut lines = readme.lines();
    while let Some(l) = lines.next() {
        if l.trim() != "```console" {
            continue;
        }
        let block: Vec<String> = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .map(str::to_string)
            .collect();
        if let Some(cmd) = block.first().and_then(|c| c.strip_prefix("$ microstax ")) {
            out.push((cmd.to_string(), block[1..].to_vec()));
        }
    }
    out
}

/// `got` matches `want` line by line (trailing blanks ignored); a `...` line in `want` stands
/// for any number of lines.
fn matches(got: &str, want: &[String]) -> Result<(), String> {
    let got: Vec<&str> = got.lines().map(str::trim_end).collect();
    let mut g = 0;
    let mut skipping = false;
    for w in want.iter().map(|w| w.trim_end()) {
        if w == "..." {
            skipping = true;
            continue;
        }
        loop {
            match got.get(g) {
                Some(&line) if line == w => break,
                Some(_) if skipping => g += 1,
                Some(&line) => return Err(format!("line {}: got `{line}`, want `{w}`", g + 1)),
                None => return Err(format!("output ended; want `{w}`")),
            }
        }
        g += 1;
        skipping = false;
    }
    if !skipping && g < got.len() {
        return Err(format!("extra output from line {}: `{}`", g + 1, got[g]));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walk_through_runs_from_the_repo_root_as_written() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");

    // the setup line: in the repository its files are already there, and stay untouched
    assert!(
        readme.contains("microstax demo --write-config demo "),
        "the README's setup line moved"
    );
    let before: Vec<Vec<u8>> = walk(&root.join("demo"))
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    let r = microstax(&root, &["demo", "--write-config", "demo"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let after: Vec<Vec<u8>> = walk(&root.join("demo"))
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    assert_eq!(before, after, "demo/ changed");

    let blocks = console_blocks(&readme);
    let mut ran = 0;
    for (cmd, want) in &blocks {
        if cmd.contains("--repo") {
            continue; // needs the reader's own repository; planner/tests/git_repo.rs covers it
        }
        let (cmd, jq) = match cmd.split_once(" | jq ") {
            Some((c, f)) => (c, Some(f)),
            None => (cmd.as_str(), None),
        };
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let r = microstax(&root, &args).await;
        assert_eq!(r.code, Some(0), "`microstax {cmd}`: {}", r.stderr);
        match jq {
            Some(filter) => {
                // the one filter the README uses: `.entries[] | select(.name == "NAME")`
                let name = filter
                    .split("select(.name == \"")
                    .nth(1)
                    .and_then(|s| s.split('"').next())
                    .expect("a select(.name == ...) filter");
                let j: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
                let got = j["entries"]
                    .as_array()
                    .expect("entries")
                    .iter()
                    .find(|e| e["name"] == name)
                    .expect("entry");
                let want: serde_json::Value =
                    serde_json::from_str(&want.join("\n")).expect("README json");
                assert_eq!(got, &want, "`microstax {cmd} | jq {filter}`");
            }
            None => {
                if let Err(e) = matches(&r.stdout, want) {
                    panic!("`microstax {cmd}`: {e}\n{}", r.stdout);
                }
            }
        }
        ran += 1;
    }
    assert!(ran >= 5, "ran {ran} README commands");
}

/// Every file under `dir`, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A temporary directory holding the demo config in `cfg/`, written by the binary.
async fn demo_in_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = microstax(dir.path(), &["demo", "--write-config", "cfg"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_config_refuses_to_overwrite_edited_files_unless_forced() {
    let dir = demo_in_tempdir().await;
    let cwd = dir.path();
    let file = cwd.join("cfg/branches/feature-a.yaml");
    let original = std::fs::read_to_string(&file).expect("read");

    // writing again over identical files is fine
    let r = microstax(cwd, &["demo", "--write-config", "cfg"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);

    // an edited file is not overwritten, and nothing else is written either
    std::fs::write(&file, "# mine\nparent: baseline\n").expect("edit");
    std::fs::remove_file(cwd.join("cfg/org.yaml")).expect("rm");
    let r = microstax(cwd, &["demo", "--write-config", "cfg"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(
        r.stderr.contains("branches/feature-a.yaml") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        "# mine\nparent: baseline\n"
    );
    assert!(!cwd.join("cfg/org.yaml").exists(), "wrote nothing");

    // --force overwrites
    let r = microstax(cwd, &["demo", "--write-config", "cfg", "--force"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&file).expect("read"), original);
    assert!(cwd.join("cfg/org.yaml").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_files_it_does_not_read() {
    let dir = demo_in_tempdir().await;
    let cwd = dir.path();
    std::fs::write(cwd.join("cfg/branches/notes.txt"), "todo").expect("write");
    std::fs::copy(
        cwd.join("cfg/branches/feature-b.yaml"),
        cwd.join("cfg/feature-c.yaml"),
    )
    .expect("copy");
    let r = microstax(cwd, &["check", "--config", "cfg"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains("ok: 4 services, 5 layers"),
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stderr.lines().collect::<Vec<_>>(),
        [
            "warning: feature-c.yaml: not read: team and branch layers belong in teams/ and branches/",
            "warning: branches/notes.txt: not read: layer files end in .yaml, .yml or .json",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_the_files_it_does_not_read() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = demo_in_tempdir().await;
    std::fs::write(dir.path().join("cfg/branches/notes.txt"), "todo").expect("write");
    let mut child = Command::new(BIN)
        .args(["run", "--config", "cfg", "--listen", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0", "--workers", "1"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("branches/notes.txt: not read: layer files end in") {
                return Some(line);
            }
        }
        None
    })
    .await
    .expect("a warning within 20 s");
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    let line = found.expect("the warning");
    assert!(line.contains("WARN"), "{line}");
}
