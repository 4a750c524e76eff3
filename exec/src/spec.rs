//! The vocabulary shared by executors, store plugins and the reconciler: what an instance is,
//! how to run it, what state it is in, and what a branch asks of a store.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The content address of an instance (the planner's `InstanceKey`, as 32 hex digits).
/// Identical specs have the same id, so branches that need the same instance share one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub Arc<str>);

impl InstanceId {
    /// The short form (12 hex digits, and `.k` for replica k) used in names, labels and logs.
    pub fn short(&self) -> String {
        let (base, k) = self.replica_of();
        let short = base.get(..12).unwrap_or(base);
        match k {
            0 => short.to_owned(),
            k => format!("{short}.{k}"),
        }
    }

    /// The id of replica `k` of this instance: the instance's own id for replica 0, `<id>.k`
    /// after it (an executor that runs one process per replica keeps each under its own id).
    pub fn replica(&self, k: u32) -> InstanceId {
        match k {
            0 => self.clone(),
            k => InstanceId(Arc::from(format!("{}.{k}", self.replica_of().0))),
        }
    }

    /// The instance's own id and the replica index (0 when it names no replica).
    pub fn replica_of(&self) -> (&str, u32) {
        match self.0.rsplit_once('.') {
            Some((base, k)) => match k.parse() {
                Ok(k) => (base, k),
                Err(_) => (&self.0, 0),
            },
            None => (&self.0, 0),
        }
    }

    /// The instance's own id (without a replica suffix).
    pub fn base(&self) -> InstanceId {
        match self.replica_of() {
            (_, 0) => self.clone(),
            (base, _) => InstanceId(Arc::from(base)),
        }
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How to run one service locally (the service's `run:` block, placeholders not yet filled).
///
/// Placeholders, filled by the executor in `args` and env values: `{port}` (the loopback port it
/// assigned), `{instance}` (the instance id, short form), `{service}`, `{branch}`, and
/// `{env.NAME}` (a value of the instance's effective env).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunSpec {
    /// Program to start (looked up on PATH when it has no `/`).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment for the process (on top of the instance's effective env).
    pub env: BTreeMap<String, String>,
    /// HTTP path answered once the instance is ready (`GET`, any status below 500).
    pub probe_path: String,
    /// Longest time from start to a ready probe before the start counts as failed.
    pub start_timeout: Duration,
}

/// One instance the plan needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceSpec {
    /// Content address.
    pub id: InstanceId,
    /// The service it runs.
    pub service: Arc<str>,
    /// The branch whose plan asked for it first (a label; others may share it).
    pub branch: Arc<str>,
    /// How to run it locally (process executor); `None` when only an image is known.
    pub run: Option<RunSpec>,
    /// The image it runs from (kubernetes executor).
    pub image: Option<String>,
    /// The effective env of the instance, the planner's rewritten values included (for example
    /// a `DATABASE_URL` pointing at the branch's isolated store).
    pub env: BTreeMap<String, String>,
    /// CPU request in millicores (kubernetes executor).
    pub cpu_millis: Option<u32>,
    /// Memory request in MiB (kubernetes executor).
    pub memory_mib: Option<u32>,
    /// Replicas the plan chose (the service's reliability floor; at least 1): the process
    /// executor runs one process per replica, the kubernetes executor renders `replicas: N`.
    pub replicas: u32,
}

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    /// Started, probe not answered yet.
    Starting,
    /// Answering its probe at `addr`.
    Ready {
        /// Where to send its requests.
        addr: SocketAddr,
    },
    /// Exited or never became ready; it is restarted with backoff unless `gave_up`.
    Failed {
        /// The executor's reason (exit status, probe timeout, spawn error, ...).
        reason: String,
        /// Whether restarts stopped (too many in a row).
        gave_up: bool,
    },
    /// Being stopped (SIGTERM sent, waiting for the grace).
    Stopping,
    /// Written out for an operator to apply (kubernetes executor); not observed running.
    Rendered,
}

/// What an executor reports about one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Which instance.
    pub id: InstanceId,
    /// Its service.
    pub service: Arc<str>,
    /// Its state.
    pub state: InstanceState,
    /// The process id, where there is one.
    pub pid: Option<u32>,
    /// Restarts so far.
    pub restarts: u32,
    /// When it entered its current state.
    pub since: SystemTime,
    /// Its output log, where there is one.
    pub log: Option<std::path::PathBuf>,
}

/// How a branch's copy of a store is made.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoreMode {
    /// A schema of its own in the baseline database.
    Schema,
    /// A database of its own, created from the baseline database as a template (a copy of its
    /// data and schema).
    DatabaseFromTemplate,
    /// An empty database of its own.
    Database,
}

/// What a branch asks of a store plugin.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreRequest {
    /// The store (`orders-db`).
    pub store: Arc<str>,
    /// Its kind (`postgres`, or whatever a command plugin handles).
    pub kind: Arc<str>,
    /// The branch it is isolated for.
    pub branch: Arc<str>,
    /// How.
    pub mode: StoreMode,
    /// The baseline's connection string (for postgres: a libpq URL).
    pub baseline: String,
}
