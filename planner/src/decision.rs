//! The vocabulary of plans, shared by the rules (`engine`), the plan assembly (`planner`), the
//! renderings and the fleet view: what an entry is about, the decision taken, how a store or
//! topic is isolated, and the causes a person can check. A leaf module: it imports no other
//! module of the planner but `diff` (whose field changes are causes).

use crate::diff::FieldChange;
use microstax_config::Origin;
use std::fmt;
use std::sync::Arc;

/// What an entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A service of the catalog.
    Service,
    /// A data store.
    Store,
    /// A message topic.
    Topic,
}

impl Subject {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Subject::Service => "service",
            Subject::Store => "store",
            Subject::Topic => "topic",
        }
    }
}

/// How a store or topic is isolated for one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// A per-branch schema on the shared server (postgres and its kin).
    Schema,
    /// A per-branch database on the shared server (mysql, where schema means database, mongo).
    Database,
    /// A forked instance of the store (redis and anything unknown).
    Instance,
    /// A per-branch topic on the shared broker.
    Topic,
}

impl Isolation {
    /// The isolation a store kind allows, cheapest first.
    pub fn for_store_kind(kind: &str) -> Isolation {
        match kind.to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" | "cockroachdb" | "cockroach" => Isolation::Schema,
            "mysql" | "mariadb" | "mongodb" | "mongo" => Isolation::Database,
            _ => Isolation::Instance,
        }
    }

    /// Words for reasons.
    pub fn describe(self) -> &'static str {
        match self {
            Isolation::Schema => "per-branch schema",
            Isolation::Database => "per-branch database",
            Isolation::Instance => "forked instance",
            Isolation::Topic => "per-branch topic",
        }
    }
}

/// The decision for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Route to the instance of layer `from` (a label such as `team/payments-team`).
    Reuse {
        /// The layer whose instance is reused.
        from: Arc<str>,
    },
    /// A branch-local instance.
    Fork,
    /// A developer endpoint.
    Local,
    /// An isolated store or topic.
    Isolate(Isolation),
}

impl Decision {
    /// `reuse`, `fork`, `local` or `isolate`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Reuse { .. } => "reuse",
            Decision::Fork => "fork",
            Decision::Local => "local",
            Decision::Isolate(_) => "isolate",
        }
    }

    /// Whether the environment needs something of its own.
    pub fn is_moved(&self) -> bool {
        !matches!(self, Decision::Reuse { .. })
    }
}

/// One reason for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A spec or address field changed in the layer.
    Field(FieldChange),
    /// A route policy field changed in the layer (the instance is still reused).
    Policy(FieldChange),
    /// The layer restates values identical to its parent's.
    Restated {
        /// The layer.
        layer: Arc<str>,
    },
    /// Source paths owned by the service changed.
    Source {
        /// The first few changed paths.
        paths: Vec<String>,
        /// How many matched in all.
        total: usize,
        /// The compared range, `base...branch`.
        range: Arc<str>,
    },
    /// A developer endpoint.
    Local {
        /// `host:port`.
        endpoint: String,
        /// Where it is set.
        origin: Origin,
    },
    /// (store) A service migrates the store's schema.
    Migrates {
        /// The migrating service.
        service: Arc<str>,
        /// The migration's name.
        migration: String,
        /// Where it is declared.
        origin: Origin,
    },
    /// (service) It uses a store isolated in this layer.
    UsesStore {
        /// The store.
        store: Arc<str>,
        /// The layer isolating it.
        layer: Arc<str>,
    },
    /// (topic) A producer changed the topic's message contract.
    Contract {
        /// The producer.
        producer: Arc<str>,
        /// The new contract version.
        version: String,
        /// Where it is declared.
        origin: Origin,
    },
    /// (service) It consumes a topic isolated in this layer.
    ConsumesTopic {
        /// The topic.
        topic: Arc<str>,
        /// The layer isolating it.
        layer: Arc<str>,
    },
    /// (service) An env value names a dependency that moved in this layer.
    Dependency {
        /// The dependency.
        dependency: Arc<str>,
        /// The env key whose value names it.
        env: String,
        /// `forked` or `local`.
        moved: &'static str,
        /// The layer it moved in.
        layer: Arc<str>,
    },
}

/// How many changed paths a reason lists.
pub const REASON_PATHS: usize = 3;

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Field(c) => write!(f, "{c}"),
            Cause::Policy(c) => write!(f, "route policy only: {c}"),
            Cause::Restated { layer } => write!(f, "{layer} restates its parent's values"),
            Cause::Source {
                paths,
                total,
                range,
            } => {
                write!(f, "source changed in {range}: {}", paths.join(", "))?;
                if *total > paths.len() {
                    write!(f, " (+{} more)", total - paths.len())?;
                }
                Ok(())
            }
            Cause::Local { endpoint, origin } => {
                write!(f, "developer endpoint {endpoint} set in {origin}")
            }
            Cause::Migrates {
                service,
                migration,
                origin,
            } => write!(f, "{service} migrates schema ({migration}) in {origin}"),
            Cause::UsesStore { store, layer } => write!(f, "uses {store}, isolated in {layer}"),
            Cause::Contract {
                producer,
                version,
                origin,
            } => write!(
                f,
                "{producer} changes its contract to {version} in {origin}"
            ),
            Cause::ConsumesTopic { topic, layer } => {
                write!(f, "consumes {topic}, isolated in {layer}")
            }
            Cause::Dependency {
                dependency,
                env,
                moved,
                layer,
            } => write!(f, "env.{env} references {dependency}, {moved} in {layer}"),
        }
    }
}
