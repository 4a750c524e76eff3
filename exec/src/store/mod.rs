//! Store plugins: create a branch's isolated copy of a store before its instances start, and drop
//! it when the branch goes. Nothing half-made is left behind: a create that fails part-way undoes
//! what it did before returning the error.

pub mod command;
pub mod name;
pub mod postgres;

use crate::error::StoreError;
use crate::executor::BoxFuture;
use crate::spec::StoreRequest;

/// A branch's store that exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreHandle {
    /// The request it answers.
    pub request: StoreRequest,
    /// The connection string handed to the branch's instances.
    pub connection: String,
    /// The plugin's own name for what it made (database or schema name, command output).
    pub resource: String,
}

/// Creates and drops branch stores of some kinds.
pub trait StorePlugin: Send + Sync {
    /// Plugin name (`postgres`, `command`).
    fn name(&self) -> &'static str;

    /// Create the store (idempotent: an existing one with the same name is reused).
    fn create<'a>(
        &'a self,
        req: &'a StoreRequest,
    ) -> BoxFuture<'a, Result<StoreHandle, StoreError>>;

    /// Drop it (idempotent: a missing one is not an error).
    fn drop_store<'a>(&'a self, handle: &'a StoreHandle) -> BoxFuture<'a, Result<(), StoreError>>;
}
