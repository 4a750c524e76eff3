//! The life of one instance, as one task: start, probe until ready, wait, restart with backoff,
//! and stop with a grace. The task owns the child; the executor's table only mirrors its state.

use super::record::{group_exists, proc_stat, signal_group, Record};
use super::{fill, Inner, Values};
use crate::spec::{InstanceSpec, InstanceState, RunSpec};
use rustix::process::Signal;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

/// The longest wait for the kernel to report a SIGKILLed child gone.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// What one start came to.
enum Outcome {
    /// Stopped on request; the instance is gone.
    Stopped,
    /// Exited, never became ready, or could not start.
    Failed { reason: String, was_ready: bool },
}

fn failed(reason: String) -> Outcome {
    Outcome::Failed {
        reason,
        was_ready: false,
    }
}

/// The args and env of a start on `port`, placeholders filled: the instance's effective env,
/// then `run.env` over it, then `PORT`.
pub(super) fn command_line(
    spec: &InstanceSpec,
    run: &RunSpec,
    port: u16,
) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
    let values = Values {
        port,
        instance: &spec.id.short(),
        service: &spec.service,
        branch: &spec.branch,
        env: &spec.env,
    };
    let args = run
        .args
        .iter()
        .map(|a| fill(a, &values))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = BTreeMap::new();
    for (name, value) in spec.env.iter().chain(&run.env) {
        env.insert(name.clone(), fill(value, &values)?);
    }
    env.insert("PORT".to_owned(), port.to_string());
    Ok((args, env))
}

/// Run the instance until it is stopped or restarts give up (then wait for the stop).
pub(super) async fn supervise(
    inner: Arc<Inner>,
    spec: InstanceSpec,
    mut stop: watch::Receiver<bool>,
) {
    let backoff = inner.opts.backoff.clone();
    let mut failures = 0u32;
    let mut delay = backoff.initial;
    let mut start = 0u32;
    loop {
        match run_once(&inner, &spec, start, &mut stop).await {
            Outcome::Stopped => break,
            Outcome::Failed { reason, was_ready } => {
                if was_ready {
                    failures = 0;
                    delay = backoff.initial;
                }
                failures = failures.saturating_add(1);
                let gave_up = failures >= backoff.give_up_after;
                tracing::warn!(id = %spec.id, service = %spec.service, %reason, gave_up, "instance failed");
                inner.set_state(&spec.id, InstanceState::Failed { reason, gave_up }, None);
                if gave_up {
                    let _ = stop.wait_for(|s| *s).await;
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                delay = delay.saturating_mul(2).min(backoff.max);
                start = start.saturating_add(1);
                inner.update(&spec.id, |e| {
                    e.observed.restarts = e.observed.restarts.saturating_add(1)
                });
            }
        }
    }
    inner.remove(&spec.id);
}

/// Kills the process group and deletes the record when dropped: after an orderly stop (what is
/// left of the group), after a crash (the children of the crashed leader), and when the task
/// itself is dropped with its runtime.
struct Guard {
    pgid: u32,
    record: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        signal_group(self.pgid, Signal::KILL);
        let _ = std::fs::remove_file(&self.record);
    }
}

enum Start {
    Ready,
    NotReady(String),
    Exited(std::io::Result<ExitStatus>),
    Stop,
}

async fn run_once(
    inner: &Inner,
    spec: &InstanceSpec,
    start: u32,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    let Some(run) = spec.run.as_ref() else {
        return failed("no run block".into());
    };
    inner.set_state(&spec.id, InstanceState::Starting, None);
    let port = match inner.allocate_port(&spec.id) {
        Ok(port) => port,
        Err(e) => return failed(format!("no free port: {e}")),
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let command = match build(inner, spec, run, port, start) {
        Ok(command) => command,
        Err(reason) => return failed(reason),
    };
    let mut child = match inner.spawner.spawn(command).await {
        Ok(child) => child,
        Err(e) => return failed(format!("cannot start {}: {e}", run.command)),
    };
    let Some(pid) = child.id() else {
        return failed("exited at once".into());
    };
    let guard = Guard {
        pgid: pid,
        record: Record::path(&inner.opts.state_dir, &spec.id.0),
    };
    let record = Record {
        id: spec.id.to_string(),
        service: spec.service.to_string(),
        pid,
        pgid: pid,
        port,
        start_time: proc_stat(pid).map_or(0, |s| s.start_time),
    };
    if let Err(e) = record.write(&inner.opts.state_dir) {
        tracing::warn!(id = %spec.id, error = %e, "cannot record the instance: a crash would leave it running");
    }
    inner.set_state(&spec.id, InstanceState::Starting, Some(pid));

    let deadline = Instant::now() + run.start_timeout;
    let interval = inner.opts.probe_interval;
    let started = tokio::select! {
        r = super::probe::until_ready(addr, &run.probe_path, interval, deadline) => match r {
            Ok(()) => Start::Ready,
            Err(last) => Start::NotReady(last),
        },
        status = child.wait() => Start::Exited(status),
        _ = stop.wait_for(|s| *s) => Start::Stop,
    };
    match started {
        Start::Ready => {}
        Start::Exited(status) => {
            drop(guard);
            return failed(format!("exited before it was ready: {}", describe(status)));
        }
        Start::NotReady(last) => {
            terminate(inner, &mut child, guard).await;
            return failed(format!(
                "not ready within {:?} (last probe: {last})",
                run.start_timeout
            ));
        }
        Start::Stop => {
            inner.set_state(&spec.id, InstanceState::Stopping, Some(pid));
            terminate(inner, &mut child, guard).await;
            return Outcome::Stopped;
        }
    }

    tracing::info!(id = %spec.id, service = %spec.service, %addr, pid, "instance ready");
    inner.set_state(&spec.id, InstanceState::Ready { addr }, Some(pid));
    let exited = tokio::select! {
        status = child.wait() => Some(status),
        _ = stop.wait_for(|s| *s) => None,
    };
    match exited {
        Some(status) => {
            drop(guard);
            Outcome::Failed {
                reason: format!("exited: {}", describe(status)),
                was_ready: true,
            }
        }
        None => {
            inner.set_state(&spec.id, InstanceState::Stopping, Some(pid));
            terminate(inner, &mut child, guard).await;
            Outcome::Stopped
        }
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// The command of one start: log file opened for appending with a header line, own process
/// group, env and args filled, under `setpriv` when the executor uses it.
fn build(
    inner: &Inner,
    spec: &InstanceSpec,
    run: &RunSpec,
    port: u16,
    start: u32,
) -> Result<Command, String> {
    let (args, env) = command_line(spec, run, port)?;
    let log_path = super::log_path(&inner.opts.log_dir, spec);
    rotate(&log_path, inner.opts.log_max_bytes);
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open the log {}: {e}", log_path.display()))?;
    let _ = writeln!(
        log,
        "--- microstax: start {start} of {} ({}) on port {port}",
        spec.service, spec.id
    );
    let err_log = log
        .try_clone()
        .map_err(|e| format!("cannot share the log file: {e}"))?;
    let program = program(&inner.opts, run)?;
    let mut command = match &inner.setpriv {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(program);
            c
        }
        None => Command::new(program),
    };
    command.args(args);
    if !inner.opts.inherit_env {
        command.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
    }
    command
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err_log))
        .process_group(0)
        .kill_on_drop(true);
    Ok(command)
}

/// The program a start runs: `run.command`, or the running binary for [`SELF_COMMAND`].
pub(super) fn program<'a>(
    opts: &'a super::ProcessOptions,
    run: &'a RunSpec,
) -> Result<&'a std::ffi::OsStr, String> {
    if run.command != super::options::SELF_COMMAND {
        return Ok(run.command.as_ref());
    }
    opts.self_exe
        .as_deref()
        .map(std::path::Path::as_os_str)
        .ok_or_else(|| format!("{}: the running program's path is unknown", run.command))
}

/// Move a log past its bound to `<name>.log.1` (the previous one is replaced).
fn rotate(log: &std::path::Path, max: u64) {
    if std::fs::metadata(log).is_ok_and(|m| m.len() >= max) {
        let mut old = log.as_os_str().to_owned();
        old.push(".1");
        if let Err(e) = std::fs::rename(log, &old) {
            tracing::warn!(log = %log.display(), error = %e, "cannot rotate the log");
        }
    }
}

/// SIGTERM to the group, SIGKILL after the grace; then wait (within the grace) for the rest of
/// the group to leave before the guard kills what remains.
async fn terminate(inner: &Inner, child: &mut Child, guard: Guard) {
    let deadline = Instant::now() + inner.opts.stop_grace;
    signal_group(guard.pgid, Signal::TERM);
    if tokio::time::timeout_at(deadline, child.wait())
        .await
        .is_err()
    {
        signal_group(guard.pgid, Signal::KILL);
        let _ = tokio::time::timeout(REAP_LIMIT, child.wait()).await;
    }
    while group_exists(guard.pgid) && Instant::now() < deadline {
        tokio::time::sleep(inner.opts.probe_interval).await;
    }
    drop(guard);
}
