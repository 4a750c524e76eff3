//! Why a plan or an explanation could not be made. None of these is transient: retrying with
//! the same config gives the same error.

/// A planning error.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// No team or branch layer has that name.
    #[error("unknown branch or team `{0}`")]
    UnknownLayer(String),
    /// The org baseline was asked for a plan; it is the root and has nothing to diff against.
    #[error("`baseline` is the root: it has no parent to plan against")]
    Baseline,
    /// The org catalog has no such service.
    #[error("unknown service `{0}`")]
    UnknownService(String),
    /// A layer's lineage does not end at the baseline (the config validation rejects cycles,
    /// so this means the config was built without validation).
    #[error("lineage of `{layer}` does not reach the baseline: {detail}")]
    Lineage {
        /// The layer planned.
        layer: String,
        /// What was found instead.
        detail: String,
    },
    /// A service's `paths` entry is not a valid glob.
    #[error("service `{service}` has an invalid path glob `{glob}`")]
    Glob {
        /// The service declaring it.
        service: String,
        /// The glob as written.
        glob: String,
        /// Why it is invalid.
        #[source]
        source: globset::Error,
    },
    /// The path globs are valid one by one but cannot be combined (too large).
    #[error("the path globs of the catalog cannot be combined")]
    GlobSet {
        /// Why.
        #[source]
        source: globset::Error,
    },
    /// Two services declare the same store with different kinds.
    #[error("store `{store}` is declared as `{first}` by service `{first_service}` and as `{second}` by service `{second_service}`")]
    StoreKind {
        /// The store name.
        store: String,
        /// Kind given first.
        first: String,
        /// Service that gave it.
        first_service: String,
        /// The other kind.
        second: String,
        /// Service that gave it.
        second_service: String,
    },
    /// A [`crate::Planner`] was used with a config whose org layer is not the one it indexed.
    #[error("the planner was built for another org layer: build a new planner")]
    StaleOrg,
}
