//! Changed source paths of a branch, from a real git repository through the git CLI.
//!
//! The changes are those of `git diff base...branch`: from the merge base of the two refs to the
//! branch, so commits that landed on the base after the branch forked do not count. Renames are
//! listed as a deletion and an addition, so the service owning the old path is marked too. Each
//! path carries its new blob id, which (with the merge base) makes the source part of an
//! instance's content address: two branches with the same change share an instance.

use microstax_config::Config;
use std::path::Path;
use std::process::Command;

/// One changed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathChange {
    /// Path relative to the repository root, `/`-separated.
    pub path: String,
    /// The blob id in the branch, `None` when the path was deleted or the id is unknown.
    pub blob: Option<String>,
}

/// The source changes of one branch against a base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceChanges {
    /// The base ref, e.g. `main`.
    pub base: String,
    /// The branch ref.
    pub branch: String,
    /// The merge base commit, when known.
    pub merge_base: Option<String>,
    /// Changed paths, in git's order.
    pub paths: Vec<PathChange>,
}

/// Why the git CLI could not give the changes. Retrying helps only if the repository changes
/// (a missing ref gets fetched); the same call fails the same way.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// A ref that would be read as an option or is empty.
    #[error("invalid git ref `{0}`: refs must be non-empty and must not start with '-'")]
    BadRef(String),
    /// git could not be started.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// git ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// The exit status.
        status: String,
        /// What git printed on stderr, trimmed.
        stderr: String,
    },
    /// git's output could not be parsed.
    #[error("`{command}` printed unexpected output: {detail}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong.
        detail: String,
    },
}

impl SourceChanges {
    /// Changes given as plain paths (no blob ids), e.g. from a CI system's changed-files list.
    pub fn from_paths<I, S>(base: &str, branch: &str, paths: I) -> SourceChanges
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        SourceChanges {
            base: base.to_string(),
            branch: branch.to_string(),
            merge_base: None,
            paths: paths
                .into_iter()
                .map(|p| PathChange {
                    path: p.into(),
                    blob: None,
                })
                .collect(),
        }
    }

    /// Read the changes of `branch` against `base` from the repository at `repo`, as
    /// `git diff base...branch` lists them.
    pub fn from_git(repo: &Path, base: &str, branch: &str) -> Result<SourceChanges, GitError> {
        for r in [base, branch] {
            if r.is_empty() || r.starts_with('-') || r.contains('\0') {
                return Err(GitError::BadRef(r.to_string()));
            }
        }
        let merge_base = git(repo, &["merge-base", base, branch])?;
        let merge_base = String::from_utf8_lossy(&merge_base).trim().to_string();
        let range = format!("{base}...{branch}");
        let args = [
            "diff",
            "--raw",
            "-z",
            "--no-renames",
            "--no-abbrev",
            "--no-color",
            "--no-ext-diff",
            range.as_str(),
            "--",
        ];
        let out = git(repo, &args)?;
        let paths = parse_raw(&out).map_err(|detail| GitError::Output {
            command: command_line(repo, &args),
            detail,
        })?;
        Ok(SourceChanges {
            base: base.to_string(),
            branch: branch.to_string(),
            merge_base: Some(merge_base).filter(|m| !m.is_empty()),
            paths,
        })
    }

    /// `base...branch`.
    pub fn range(&self) -> String {
        format!("{}...{}", self.base, self.branch)
    }
}

/// The git refs to diff for a branch layer: its `source` block if it has one, else the layer
/// name; the base is `base` if given, else the source block's base, else `main`. Returns
/// `(base, branch)`.
pub fn source_refs(config: &Config, branch: &str, base: Option<&str>) -> (String, String) {
    let source = config
        .layer_id(branch)
        .and_then(|i| config.layer(i))
        .and_then(|l| l.doc.doc.source.clone());
    let git_branch = source
        .as_ref()
        .map_or(branch, |s| s.branch.as_str())
        .to_string();
    let git_base = base
        .or(source.as_ref().and_then(|s| s.base.as_deref()))
        .unwrap_or("main")
        .to_string();
    (git_base, git_branch)
}

fn command_line(repo: &Path, args: &[&str]) -> String {
    format!("git -C {} {}", repo.display(), args.join(" "))
}

fn git(repo: &Path, args: &[&str]) -> Result<Vec<u8>, GitError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        // a caller running inside a git hook must not redirect us to its own repository
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .output()
        .map_err(|source| GitError::Spawn {
            command: command_line(repo, args),
            source,
        })?;
    if !out.status.success() {
        return Err(GitError::Failed {
            command: command_line(repo, args),
            status: out
                .status
                .code()
                .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Parse `git diff --raw -z --no-renames` output: `:mode mode old new status\0path\0` records.
fn parse_raw(out: &[u8]) -> Result<Vec<PathChange>, String> {
    let mut fields = out.split(|&b| b == 0).filter(|f| !f.is_empty());
    let mut paths = Vec::new();
    while let Some(meta) = fields.next() {
        let meta = String::from_utf8_lossy(meta);
        let Some(meta) = meta.strip_prefix(':') else {
            return Err(format!("expected a `:` record, found `{meta}`"));
        };
        let parts: Vec<&str> = meta.split(' ').collect();
        let [_, _, _, new, status] = parts.as_slice() else {
            return Err(format!("a record has {} fields, expected 5", parts.len()));
        };
        let Some(path) = fields.next() else {
            return Err("a record has no path".into());
        };
        let deleted = status.starts_with('D') || new.bytes().all(|b| b == b'0');
        paths.push(PathChange {
            path: String::from_utf8_lossy(path).into_owned(),
            blob: (!deleted).then(|| new.to_string()),
        });
    }
    Ok(paths)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_raw_records() {
        let z = "0000000000000000000000000000000000000000";
        let a = "1111111111111111111111111111111111111111";
        let b = "2222222222222222222222222222222222222222";
        let out = format!(
            ":100644 100644 {a} {b} M\0src/a b.rs\0:100644 000000 {a} {z} D\0old.rs\0:000000 100644 {z} {b} A\0new.rs\0"
        );
        let p = parse_raw(out.as_bytes()).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].path, "src/a b.rs");
        assert_eq!(p[0].blob.as_deref(), Some(b));
        assert_eq!(p[1].blob, None);
        assert_eq!(p[2].path, "new.rs");
        assert!(parse_raw(b"").unwrap().is_empty());
        assert!(parse_raw(b"garbage\0x\0").is_err());
        assert!(parse_raw(format!(":100644 100644 {a} {b} M\0").as_bytes()).is_err());
    }

    #[test]
    fn refs_that_look_like_options_are_refused() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            SourceChanges::from_git(&dir, "--output=/tmp/x", "main"),
            Err(GitError::BadRef(_))
        ));
        assert!(matches!(
            SourceChanges::from_git(&dir, "main", ""),
            Err(GitError::BadRef(_))
        ));
    }

    #[test]
    fn from_paths_has_no_blobs() {
        let c = SourceChanges::from_paths("main", "x", ["a", "b"]);
        assert_eq!(c.range(), "main...x");
        assert_eq!(c.paths.len(), 2);
        assert!(c.paths.iter().all(|p| p.blob.is_none()));
    }
}
