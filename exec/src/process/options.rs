//! How a [`super::ProcessExecutor`] runs its instances: where it keeps records and logs, which
//! ports it hands out, and how patiently it stops, probes and restarts.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

/// Where the loopback ports of instances come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    /// Ask the kernel for a free port (bind `127.0.0.1:0`, note the port, close it). Another
    /// program may take the port before the instance binds it; the instance then fails to start
    /// and is restarted on a new port.
    Kernel,
    /// The first port of the range that no other instance of this executor holds and that can be
    /// bound right now.
    Range(RangeInclusive<u16>),
}

/// Restart policy after an instance exits or never becomes ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Wait before the first restart (default 100 ms); doubled after each failure in a row.
    pub initial: Duration,
    /// Longest wait between restarts (default 10 s).
    pub max: Duration,
    /// Failures in a row after which restarts stop and the instance stays `Failed` with
    /// `gave_up: true` until it is stopped (default 5). A start that reaches `Ready` resets the
    /// count, so a service that crashes once an hour is restarted forever.
    pub give_up_after: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            give_up_after: 5,
        }
    }
}

/// Options of a [`super::ProcessExecutor`]. Start from [`ProcessOptions::new`] and change fields.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// One record file per running instance (`<id>.json`: pid, process group, port, start time),
    /// read on the next start to reap what a crashed run left. Created if missing. One executor
    /// at a time: it holds a lock on `<state_dir>/.lock` (released by the kernel if it dies).
    pub state_dir: PathBuf,
    /// One log per instance (`<service>-<short id>.log`, stdout and stderr, appended across
    /// restarts). Created if missing.
    pub log_dir: PathBuf,
    /// A log at least this long when an instance (re)starts is moved to `<name>.log.1`,
    /// replacing the previous one, so the logs of a crash-looping instance stay bounded (default
    /// 16 MiB; a child that keeps running can write past it until its next start).
    pub log_max_bytes: u64,
    /// Port source (default [`Ports::Kernel`]).
    pub ports: Ports,
    /// Time between SIGTERM and SIGKILL when stopping (default 5 s).
    pub stop_grace: Duration,
    /// Restart policy (see [`Backoff`] for defaults).
    pub backoff: Backoff,
    /// Longest time between two readiness probes while starting (default 100 ms; the first
    /// probes come every 5 ms, slowing by 5 ms every ten probes up to this); one probe attempt
    /// also gives up after this long at least, and at most one second.
    pub probe_interval: Duration,
    /// Start children under `setpriv --pdeathsig KILL` (util-linux) when `setpriv` is on PATH, so
    /// that the kernel kills them if the executor's process dies without running any cleanup
    /// (default true). Without it, a crash leaves them running until the next start reaps them.
    pub parent_death_signal: bool,
    /// Pass the executor's own environment to children, under the instance's (default true).
    /// When false, children get only `PATH` from it.
    pub inherit_env: bool,
    /// What a `run:` command of exactly [`SELF_COMMAND`] starts: the running program (default
    /// `std::env::current_exe()`), so a config can name the `microstax` binary that runs it
    /// wherever it is installed (the demo's instances are `microstax demo-service`).
    pub self_exe: Option<PathBuf>,
}

/// The `run:` command that stands for [`ProcessOptions::self_exe`].
pub const SELF_COMMAND: &str = "{microstax}";

impl ProcessOptions {
    /// Options with the defaults above, keeping records in `state_dir` and logs in `log_dir`.
    pub fn new(state_dir: impl Into<PathBuf>, log_dir: impl Into<PathBuf>) -> Self {
        ProcessOptions {
            state_dir: state_dir.into(),
            log_dir: log_dir.into(),
            log_max_bytes: 16 << 20,
            ports: Ports::Kernel,
            stop_grace: Duration::from_secs(5),
            backoff: Backoff::default(),
            probe_interval: Duration::from_millis(100),
            parent_death_signal: true,
            inherit_env: true,
            self_exe: std::env::current_exe().ok(),
        }
    }
}
