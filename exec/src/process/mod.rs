//! The process executor: runs each instance as a local child process on a loopback port.
//!
//! Every child gets its own process group, so a stop reaches whatever it forked. Each start is
//! recorded in the state directory (pid, group, port, start time) and the record is deleted once
//! the process is gone; a new executor on the same directory reaps what the records of a run that
//! crashed still name. A dropped executor, or a dropped runtime, SIGKILLs its groups; a crash of
//! the whole program is covered by the parent-death signal (see [`ProcessOptions`]) and, for the
//! children of children, by the reaping on the next start.
//!
//! Instances are not adopted across runs: a new executor stops what it finds and the reconciler
//! starts it again on its first pass, which keeps one owner per process.

mod fill;
mod options;
mod probe;
mod record;
mod spawner;
mod supervise;

pub(crate) use fill::{fill, Values};
pub use options::{Backoff, Ports, ProcessOptions, SELF_COMMAND};

use crate::error::ExecError;
use crate::executor::{BoxFuture, Executor};
use crate::spec::{InstanceId, InstanceSpec, InstanceState, Observed};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Runs instances as local processes. Construct with [`ProcessExecutor::new`] inside a tokio
/// runtime; stop with [`Executor::shutdown`].
#[derive(Debug)]
pub struct ProcessExecutor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    opts: ProcessOptions,
    runtime: tokio::runtime::Handle,
    spawner: spawner::Spawner,
    /// `setpriv`, when children get a parent-death signal.
    setpriv: Option<PathBuf>,
    table: Mutex<Table>,
    changes: watch::Sender<u64>,
    /// Holds the state directory's lock while the executor lives.
    _lock: std::fs::File,
}

/// Most ports of stopped instances remembered for their next start.
const PARKED_PORTS: usize = 4096;

#[derive(Debug, Default)]
struct Table {
    entries: BTreeMap<InstanceId, Entry>,
    /// The ports of stopped instances, offered again when the same id is ensured later (a
    /// scaled-to-zero instance wakes where its route already points). Bounded: the oldest
    /// entries go first past [`PARKED_PORTS`].
    parked: BTreeMap<InstanceId, u16>,
    /// Set by `shutdown`: no new instance starts after it.
    closed: bool,
}

#[derive(Debug)]
struct Entry {
    observed: Observed,
    port: Option<u16>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ProcessExecutor {
    /// Create the state and log directories, reap what the records of a previous run name (see
    /// the module doc), and get ready to run instances. Must run inside a tokio runtime (it
    /// keeps a handle to it for the instances' tasks).
    pub async fn new(opts: ProcessOptions) -> Result<Self, ExecError> {
        let io = |what: &str, source| ExecError::Io {
            id: "-".into(),
            what: what.to_owned(),
            source,
        };
        std::fs::create_dir_all(&opts.state_dir)
            .map_err(|e| io("create the state directory", e))?;
        std::fs::create_dir_all(&opts.log_dir).map_err(|e| io("create the log directory", e))?;
        let lock =
            lock_state_dir(&opts.state_dir).map_err(|e| io("lock the state directory", e))?;
        let reaped = record::reap(&opts.state_dir, opts.stop_grace, opts.probe_interval).await;
        if !reaped.is_empty() {
            tracing::info!(
                records = reaped.len(),
                "reaped the records of a previous run"
            );
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| io("find the tokio runtime", std::io::Error::other(e)))?;
        let spawner = spawner::Spawner::start(runtime.clone())
            .map_err(|e| io("start the spawning thread", e))?;
        let setpriv = if opts.parent_death_signal {
            let found = find_on_path("setpriv");
            if found.is_none() {
                tracing::warn!(
                    "setpriv not found: children outlive a crash until the next start reaps them"
                );
            }
            found
        } else {
            None
        };
        let (changes, _) = watch::channel(0);
        Ok(ProcessExecutor {
            inner: Arc::new(Inner {
                opts,
                runtime,
                spawner,
                setpriv,
                table: Mutex::new(Table::default()),
                changes,
                _lock: lock,
            }),
        })
    }

    /// The options it runs with.
    pub fn options(&self) -> &ProcessOptions {
        &self.inner.opts
    }

    /// Whether children are started under `setpriv --pdeathsig KILL`.
    pub fn uses_parent_death_signal(&self) -> bool {
        self.inner.setpriv.is_some()
    }
}

/// Take the state directory for this executor: reaping the records of a directory another live
/// executor uses would kill its instances.
fn lock_state_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "another executor uses it",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The log file of an instance: `<service>-<short id>.log`, the service name made safe for a
/// file name.
fn log_path(dir: &Path, spec: &InstanceSpec) -> PathBuf {
    let service: String = spec
        .service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{service}-{}.log", spec.id.short()))
}

/// Check what can be checked before a start: a `run:` block, and placeholders that resolve.
fn check(spec: &InstanceSpec) -> Result<(), ExecError> {
    let unrunnable = |reason: String| ExecError::Unrunnable {
        id: spec.id.to_string(),
        reason,
    };
    let run = spec
        .run
        .as_ref()
        .ok_or_else(|| unrunnable("no run block".into()))?;
    if run.command.is_empty() {
        return Err(unrunnable("empty command".into()));
    }
    supervise::command_line(spec, run, 0).map_err(unrunnable)?;
    Ok(())
}

impl Inner {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Change an entry and announce it; nothing when the entry is gone.
    fn update(&self, id: &InstanceId, f: impl FnOnce(&mut Entry)) {
        let found = match self.table().entries.get_mut(id) {
            Some(entry) => {
                f(entry);
                true
            }
            None => false,
        };
        if found {
            self.bump();
        }
    }

    fn set_state(&self, id: &InstanceId, state: InstanceState, pid: Option<u32>) {
        self.update(id, |e| {
            e.observed.state = state;
            e.observed.pid = pid;
            e.observed.since = SystemTime::now();
        });
    }

    fn remove(&self, id: &InstanceId) {
        let mut table = self.table();
        let removed = table.entries.remove(id);
        if let Some(port) = removed.as_ref().and_then(|e| e.port) {
            if table.parked.len() >= PARKED_PORTS {
                if let Some(first) = table.parked.keys().next().cloned() {
                    table.parked.remove(&first);
                }
            }
            table.parked.insert(id.clone(), port);
        }
        drop(table);
        let removed = removed.is_some();
        if removed {
            self.bump();
        }
    }

    /// The port of `id`: chosen at its first start and held in its entry, so no other instance
    /// gets it and a restart answers where the routes already point.
    fn allocate_port(&self, id: &InstanceId) -> std::io::Result<u16> {
        let mut table = self.table();
        if let Some(port) = table.entries.get(id).and_then(|e| e.port) {
            return Ok(port);
        }
        // the port this id had before it was stopped, if nobody took it meanwhile
        if let Some(port) = table.parked.remove(id) {
            let held = table.entries.values().any(|e| e.port == Some(port));
            if !held && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                if let Some(entry) = table.entries.get_mut(id) {
                    entry.port = Some(port);
                }
                return Ok(port);
            }
        }
        let held: Vec<u16> = table
            .entries
            .iter()
            .filter(|(other, _)| *other != id)
            .filter_map(|(_, e)| e.port)
            .collect();
        let port = match &self.opts.ports {
            Ports::Kernel => kernel_port(&held)?,
            Ports::Range(range) => range
                .clone()
                .filter(|p| !held.contains(p))
                .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("no free port in {range:?}"),
                    )
                })?,
        };
        if let Some(entry) = table.entries.get_mut(id) {
            entry.port = Some(port);
        }
        Ok(port)
    }
}

fn kernel_port(held: &[u16]) -> std::io::Result<u16> {
    // The kernel hands out ephemeral ports in turn, so a port an instance holds but has not
    // bound yet comes back only rarely; a few tries are plenty.
    let mut last = 0;
    for _ in 0..8 {
        last = std::net::TcpListener::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port();
        if !held.contains(&last) {
            return Ok(last);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("the kernel keeps handing out held port {last}"),
    ))
}

/// `127.0.0.1:port`.
fn authority(port: u16) -> Arc<str> {
    Arc::from(format!("127.0.0.1:{port}"))
}

impl Executor for ProcessExecutor {
    fn name(&self) -> &'static str {
        "process"
    }

    fn ensure(&self, spec: &InstanceSpec) -> Result<Arc<str>, ExecError> {
        check(spec)?;
        let mut table = self.inner.table();
        if let Some(port) = table.entries.get(&spec.id).and_then(|e| e.port) {
            return Ok(authority(port));
        }
        if table.closed {
            return Err(ExecError::Unrunnable {
                id: spec.id.to_string(),
                reason: "the executor is shut down".into(),
            });
        }
        let (stop, stop_rx) = watch::channel(false);
        let observed = Observed {
            id: spec.id.clone(),
            service: spec.service.clone(),
            state: InstanceState::Starting,
            pid: None,
            restarts: 0,
            since: SystemTime::now(),
            log: Some(log_path(&self.inner.opts.log_dir, spec)),
        };
        let task = self.inner.runtime.spawn(supervise::supervise(
            self.inner.clone(),
            spec.clone(),
            stop_rx,
        ));
        table.entries.insert(
            spec.id.clone(),
            Entry {
                observed,
                port: None,
                stop,
                task: Some(task),
            },
        );
        drop(table);
        let port = self
            .inner
            .allocate_port(&spec.id)
            .map_err(|source| ExecError::Io {
                id: spec.id.to_string(),
                what: "choosing a port".into(),
                source,
            })?;
        self.inner.bump();
        Ok(authority(port))
    }

    fn stop(&self, id: &InstanceId) -> Result<(), ExecError> {
        if let Some(entry) = self.inner.table().entries.get(id) {
            entry.stop.send_replace(true);
        }
        Ok(())
    }

    fn observe(&self) -> Vec<Observed> {
        self.inner
            .table()
            .entries
            .values()
            .map(|e| e.observed.clone())
            .collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        let tasks: Vec<JoinHandle<()>> = {
            let mut table = self.inner.table();
            table.closed = true;
            table
                .entries
                .values_mut()
                .filter_map(|e| {
                    e.stop.send_replace(true);
                    e.task.take()
                })
                .collect()
        };
        Box::pin(async move {
            for task in tasks {
                let _ = task.await;
            }
        })
    }
}

impl Drop for ProcessExecutor {
    /// Without a `shutdown`, abort the instances' tasks: each kills its process group as it is
    /// dropped (no grace) and deletes its record.
    fn drop(&mut self) {
        let mut table = self.inner.table();
        for entry in table.entries.values_mut() {
            if let Some(task) = entry.task.take() {
                task.abort();
            }
        }
    }
}
