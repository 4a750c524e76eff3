//! The command store plugin: the operator's own create and delete commands, for stores no
//! built-in plugin knows (a managed database's CLI, a script around `docker run`, ...).
//!
//! Each command is a program and its arguments, run directly (no shell: use `sh` as the program
//! to get one). Placeholders in the arguments are filled per request: `{store}`, `{branch}`,
//! `{kind}`, `{name}` (the deterministic [`store_resource_name`]), `{baseline}` (the baseline's
//! connection string), and for delete also `{connection}` (what create printed). `{{` and `}}`
//! are literal braces; an unknown placeholder is rejected when the plugin is built. The same
//! values are in the environment as `MSX_STORE`, `MSX_BRANCH`, `MSX_KIND`, `MSX_NAME`,
//! `MSX_BASELINE` and `MSX_CONNECTION`. Inside a shell script (the argument after `-c` of `sh`,
//! `bash`, ...) placeholders are refused, because a branch name may hold shell syntax: use
//! `"$MSX_BRANCH"` there, or pass `{branch}` as a positional argument after the script.
//!
//! Create prints the branch's connection string: the last non-empty line of its stdout, trimmed.
//! A non-zero exit is a retryable backend error carrying the exit status and the tail of stderr.
//! Every run is bounded by [`CommandOptions::timeout`]: on expiry the command's process group is
//! sent SIGTERM, then SIGKILL after [`CommandOptions::kill_grace`]. When create fails after it
//! started (non-zero exit, timeout, no connection string), delete runs once with the same values,
//! so delete must be idempotent and must accept a store that was only partly made; in that run
//! `{connection}` is empty and `MSX_CONNECTION` unset.

use crate::error::StoreError;
use crate::executor::BoxFuture;
use crate::spec::StoreRequest;
use crate::store::name::store_resource_name;
use crate::store::{StoreHandle, StorePlugin};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A program and its arguments (placeholders not yet filled).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandSpec {
    /// Program to run (looked up on PATH when it has no `/`).
    pub program: String,
    /// Its arguments, with placeholders.
    pub args: Vec<String>,
}

/// Options of [`CommandStores`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOptions {
    /// Makes the store and prints its connection string.
    pub create: CommandSpec,
    /// Removes it (idempotent: also run after a failed create).
    pub delete: CommandSpec,
    /// Longest run of one command, output included (default 60 s).
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL on expiry (default 2 s).
    pub kill_grace: Duration,
}

impl CommandOptions {
    /// Options with these commands and the default bounds.
    pub fn new(create: CommandSpec, delete: CommandSpec) -> Self {
        CommandOptions {
            create,
            delete,
            timeout: Duration::from_secs(60),
            kill_grace: Duration::from_secs(2),
        }
    }
}

/// Why [`CommandStores::new`] refused its options.
#[derive(Debug, thiserror::Error)]
pub enum CommandConfigError {
    /// A command has an empty program.
    #[error("{which} command: the program is empty")]
    EmptyProgram {
        /// `create` or `delete`.
        which: &'static str,
    },
    /// An argument has a placeholder this command does not know.
    #[error("{which} command: unknown placeholder {{{placeholder}}} in {arg:?}")]
    UnknownPlaceholder {
        /// `create` or `delete`.
        which: &'static str,
        /// The placeholder's name.
        placeholder: String,
        /// The argument.
        arg: String,
    },
    /// A shell script has a placeholder (which could inject shell syntax).
    #[error(
        "{which} command: placeholder in the shell script {arg:?}; use \"$MSX_BRANCH\" and the \
         other MSX_ variables, or pass the placeholder as an argument after the script"
    )]
    PlaceholderInShell {
        /// `create` or `delete`.
        which: &'static str,
        /// The script.
        arg: String,
    },
}

/// Runs the operator's commands to create and delete branch stores (any kind).
#[derive(Debug, Clone)]
pub struct CommandStores {
    opts: CommandOptions,
}

const CREATE_VARS: &[&str] = &["store", "branch", "kind", "name", "baseline"];
const DELETE_VARS: &[&str] = &["store", "branch", "kind", "name", "baseline", "connection"];
/// How much of stdout is kept (its tail: the connection string is the last line).
const STDOUT_KEEP: usize = 64 * 1024;
/// How much of stderr is kept, and quoted in errors.
const STDERR_KEEP: usize = 2 * 1024;

impl CommandStores {
    /// Checks the commands' placeholders and builds the plugin.
    pub fn new(opts: CommandOptions) -> Result<Self, CommandConfigError> {
        check_spec("create", &opts.create, CREATE_VARS)?;
        check_spec("delete", &opts.delete, DELETE_VARS)?;
        Ok(CommandStores { opts })
    }

    /// Its options.
    pub fn options(&self) -> &CommandOptions {
        &self.opts
    }

    async fn create_store(&self, req: &StoreRequest) -> Result<StoreHandle, StoreError> {
        let name = store_resource_name(&req.store, &req.branch);
        let vars = Vars {
            req,
            name: &name,
            connection: None,
        };
        let failure = match self.run(&self.opts.create, &vars).await {
            Ok(out) if out.status.success() => match last_line(&out.stdout) {
                Some(connection) => {
                    return Ok(StoreHandle {
                        request: req.clone(),
                        connection,
                        resource: name,
                    })
                }
                None => (
                    "create command printed no connection string".to_owned(),
                    false,
                ),
            },
            Ok(out) => (
                format!(
                    "create command exited with {}{}",
                    out.status,
                    stderr_note(&out.stderr)
                ),
                true,
            ),
            Err(Run::Spawn(e)) => {
                // Nothing ran, so there is nothing to delete.
                return Err(backend(
                    req,
                    format!(
                        "could not start create command {:?}: {e}",
                        self.opts.create.program
                    ),
                    false,
                ));
            }
            Err(Run::TimedOut { stderr }) => (
                format!(
                    "create command did not finish within {:?} and was killed{}",
                    self.opts.timeout,
                    stderr_note(&stderr)
                ),
                true,
            ),
        };
        let (reason, retryable) = failure;
        let note = match self.delete(&vars).await {
            Ok(()) => "; delete ran to undo it".to_owned(),
            Err(e) => format!("; undoing it failed too: {e}"),
        };
        Err(backend(req, format!("{reason}{note}"), retryable))
    }

    async fn drop_existing(&self, handle: &StoreHandle) -> Result<(), StoreError> {
        let req = &handle.request;
        let name = store_resource_name(&req.store, &req.branch);
        if handle.resource != name {
            return Err(StoreError::Invalid {
                store: req.store.to_string(),
                branch: req.branch.to_string(),
                reason: format!(
                    "handle names {:?}, but this store and branch map to {name:?}",
                    handle.resource
                ),
            });
        }
        let vars = Vars {
            req,
            name: &name,
            connection: Some(&handle.connection),
        };
        self.delete(&vars)
            .await
            .map_err(|reason| backend(req, reason, true))
    }

    /// Runs delete; the error is the reason text.
    async fn delete(&self, vars: &Vars<'_>) -> Result<(), String> {
        match self.run(&self.opts.delete, vars).await {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "delete command exited with {}{}",
                out.status,
                stderr_note(&out.stderr)
            )),
            Err(Run::Spawn(e)) => Err(format!(
                "could not start delete command {:?}: {e}",
                self.opts.delete.program
            )),
            Err(Run::TimedOut { stderr }) => Err(format!(
                "delete command did not finish within {:?} and was killed{}",
                self.opts.timeout,
                stderr_note(&stderr)
            )),
        }
    }

    /// Runs one command to its end (exit and both pipes closed) within the timeout.
    async fn run(&self, spec: &CommandSpec, vars: &Vars<'_>) -> Result<Output, Run> {
        let mut cmd = tokio::process::Command::new(&spec.program);
        for arg in &spec.args {
            // Keys were checked when built; `{connection}` is empty in the undo of a create.
            cmd.arg(fill(arg, |k| Some(vars.get(k).unwrap_or(""))).unwrap_or_else(|_| arg.clone()));
        }
        for (key, env) in [
            ("store", "MSX_STORE"),
            ("branch", "MSX_BRANCH"),
            ("kind", "MSX_KIND"),
            ("name", "MSX_NAME"),
            ("baseline", "MSX_BASELINE"),
            ("connection", "MSX_CONNECTION"),
        ] {
            if let Some(v) = vars.get(key) {
                cmd.env(env, v);
            }
        }
        // Its own process group, so expiry reaches what a script started too.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(Run::Spawn)?;
        let pid = child.id();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let finished = tokio::time::timeout(self.opts.timeout, async {
            let (status, (), ()) = tokio::join!(
                child.wait(),
                read_tail(stdout, &mut out, STDOUT_KEEP),
                read_tail(stderr, &mut err, STDERR_KEEP),
            );
            status
        })
        .await;
        match finished {
            Ok(Ok(status)) => Ok(Output {
                status,
                stdout: out,
                stderr: err,
            }),
            Ok(Err(e)) => Err(Run::Spawn(e)),
            Err(_) => {
                self.kill(pid, &mut child).await;
                Err(Run::TimedOut { stderr: err })
            }
        }
    }

    /// SIGTERM to the group, SIGKILL after the grace, then reap (bounded).
    async fn kill(&self, pid: Option<u32>, child: &mut tokio::process::Child) {
        let group = pid
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw);
        let signal = |sig| {
            if let Some(g) = group {
                // ESRCH (all gone already) is what we want.
                let _ = rustix::process::kill_process_group(g, sig);
            }
        };
        signal(rustix::process::Signal::TERM);
        if tokio::time::timeout(self.opts.kill_grace, child.wait())
            .await
            .is_err()
        {
            signal(rustix::process::Signal::KILL);
            let _ = child.start_kill();
            let _ = tokio::time::timeout(self.opts.kill_grace, child.wait()).await;
        }
        // Whatever of the group outlived the leader gets SIGKILL too.
        signal(rustix::process::Signal::KILL);
    }
}

impl StorePlugin for CommandStores {
    fn name(&self) -> &'static str {
        "command"
    }

    fn create<'a>(
        &'a self,
        req: &'a StoreRequest,
    ) -> BoxFuture<'a, Result<StoreHandle, StoreError>> {
        Box::pin(self.create_store(req))
    }

    fn drop_store<'a>(&'a self, handle: &'a StoreHandle) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.drop_existing(handle))
    }
}

/// The values of one run's placeholders.
struct Vars<'a> {
    req: &'a StoreRequest,
    name: &'a str,
    connection: Option<&'a str>,
}

impl Vars<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "store" => Some(&self.req.store),
            "branch" => Some(&self.req.branch),
            "kind" => Some(&self.req.kind),
            "name" => Some(self.name),
            "baseline" => Some(&self.req.baseline),
            "connection" => self.connection,
            _ => None,
        }
    }
}

struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

enum Run {
    Spawn(std::io::Error),
    TimedOut { stderr: Vec<u8> },
}

fn check_spec(
    which: &'static str,
    spec: &CommandSpec,
    known: &[&str],
) -> Result<(), CommandConfigError> {
    if spec.program.trim().is_empty() {
        return Err(CommandConfigError::EmptyProgram { which });
    }
    let shell = is_shell(&spec.program);
    let mut script_next = false;
    for arg in &spec.args {
        let used = std::cell::Cell::new(false);
        fill(arg, |k| {
            let ok = known.contains(&k);
            used.set(used.get() || ok);
            ok.then_some("")
        })
        .map_err(|placeholder| CommandConfigError::UnknownPlaceholder {
            which,
            placeholder,
            arg: arg.clone(),
        })?;
        if script_next && used.get() {
            return Err(CommandConfigError::PlaceholderInShell {
                which,
                arg: arg.clone(),
            });
        }
        // The argument after `-c` is the script; later ones are positional parameters.
        script_next = shell && is_command_flag(arg);
    }
    Ok(())
}

fn is_shell(program: &str) -> bool {
    let base = program.rsplit('/').next().unwrap_or(program);
    matches!(
        base,
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash" | "busybox"
    )
}

/// `-c`, or a flag cluster holding `c` (`-ec`, `-xc`).
fn is_command_flag(arg: &str) -> bool {
    arg.strip_prefix('-')
        .is_some_and(|f| !f.starts_with('-') && f.contains('c'))
}

/// Fills `{key}` placeholders with `value(key)`; `{{`/`}}` are literal braces. Text in braces
/// that is not a placeholder name (`[a-z_]+`) is left as it is. Returns the unknown key.
fn fill<'v>(arg: &str, value: impl Fn(&str) -> Option<&'v str>) -> Result<String, String> {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('{') {
            if let Some(end) = tail.find('}') {
                let key = &tail[1..end];
                if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    out.push_str(value(key).ok_or_else(|| key.to_owned())?);
                    rest = &tail[end + 1..];
                    continue;
                }
            }
        }
        out.push_str(&tail[..1]);
        rest = &tail[1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads a pipe to its end, keeping the last `keep` bytes.
async fn read_tail(pipe: Option<impl AsyncRead + Unpin>, buf: &mut Vec<u8>, keep: usize) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = [0u8; 4096];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > keep {
                    buf.drain(..buf.len() - keep);
                }
            }
        }
    }
}

/// The last non-empty line, trimmed.
fn last_line(stdout: &[u8]) -> Option<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_owned)
}

fn stderr_note(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!("; stderr: {text}")
    }
}

fn backend(req: &StoreRequest, reason: String, retryable: bool) -> StoreError {
    StoreError::Backend {
        store: req.store.to_string(),
        branch: req.branch.to_string(),
        reason,
        retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_and_escape() {
        let v = |k: &str| (k == "branch").then_some("feat/x");
        assert_eq!(fill("db-{branch}", v).unwrap(), "db-feat/x");
        assert_eq!(fill("{{branch}}", v).unwrap(), "{branch}");
        assert_eq!(fill("awk { print }", v).unwrap(), "awk { print }");
        assert_eq!(fill("{nope}", v).unwrap_err(), "nope");
    }

    #[test]
    fn shell_scripts_refuse_placeholders() {
        let spec = |program: &str, args: &[&str]| CommandSpec {
            program: program.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        };
        let ok = spec("sh", &["-c", "make-db \"$1\"", "sh", "{branch}"]);
        assert!(check_spec("create", &ok, CREATE_VARS).is_ok());
        let bad = spec("/bin/sh", &["-ec", "make-db {branch}"]);
        assert!(matches!(
            check_spec("create", &bad, CREATE_VARS),
            Err(CommandConfigError::PlaceholderInShell { .. })
        ));
        let direct = spec("make-db", &["-c", "{branch}"]);
        assert!(check_spec("create", &direct, CREATE_VARS).is_ok());
        let unknown = spec("make-db", &["{connection}"]);
        assert!(matches!(
            check_spec("create", &unknown, CREATE_VARS),
            Err(CommandConfigError::UnknownPlaceholder { .. })
        ));
        assert!(check_spec("delete", &unknown, DELETE_VARS).is_ok());
    }

    #[test]
    fn last_line_is_the_connection() {
        assert_eq!(
            last_line(b"making it\npostgres://x/y  \n\n").as_deref(),
            Some("postgres://x/y")
        );
        assert_eq!(last_line(b" \n"), None);
    }
}
