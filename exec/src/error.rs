//! Errors of executors and store plugins. Each says what failed and whether trying again can help.

/// An executor could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The spec cannot be run by this executor (no `run:` block, bad placeholder, ...).
    #[error("instance {id}: cannot run: {reason}")]
    Unrunnable {
        /// Instance id.
        id: String,
        /// Why.
        reason: String,
    },
    /// An I/O step failed (spawn, state directory, rendering a file).
    #[error("instance {id}: {what}")]
    Io {
        /// Instance id (or `-` when not about one instance).
        id: String,
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The executor's own options are unusable (a namespace that is not a DNS label, ...).
    #[error("bad executor options: {0}")]
    Options(String),
}

impl ExecError {
    /// Whether the same request may succeed later (I/O may; an unrunnable spec will not).
    pub fn retryable(&self) -> bool {
        matches!(self, ExecError::Io { .. })
    }
}

/// A store plugin could not create or drop a branch's store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request does not fit the plugin (unsupported mode or kind, bad baseline URL).
    #[error("store {store} for branch {branch}: {reason}")]
    Invalid {
        /// Store name.
        store: String,
        /// Branch.
        branch: String,
        /// Why.
        reason: String,
    },
    /// The backend refused or failed (connection, SQL error, command exit status).
    #[error("store {store} for branch {branch}: {reason}")]
    Backend {
        /// Store name.
        store: String,
        /// Branch.
        branch: String,
        /// What the backend said.
        reason: String,
        /// Whether trying again may help (a refused connection may; a SQL syntax error not).
        retryable: bool,
    },
}

impl StoreError {
    /// Whether the same request may succeed later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Backend {
                retryable: true,
                ..
            }
        )
    }
}
