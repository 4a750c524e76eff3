//! The executor interface: start, stop and observe instances named by their content address.
//! Methods return at once; the work (spawning, probing, stopping with a grace) runs on the
//! executor's own tasks, and every change of observed state is pushed on [`Executor::changes`], so
//! the reconciler and the proxy wait on a signal rather than poll (as Knative's activator does).

use crate::error::ExecError;
use crate::spec::{InstanceId, InstanceSpec, Observed};
use std::future::Future;
use std::pin::Pin;

/// A boxed future, for the dyn-compatible async parts of the interfaces.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs instances.
pub trait Executor: Send + Sync {
    /// `process` or `kubernetes` (a bounded metric label).
    fn name(&self) -> &'static str;

    /// Make sure the instance runs, and say where it answers (`host:port`). Idempotent: an
    /// instance already known with this id is left as it is (starting, ready or restarting) and
    /// its address is returned again. The address is fixed when the instance is first ensured
    /// and kept across restarts, so a route can name it before the instance is ready; readiness
    /// is then pushed on [`Executor::changes`].
    fn ensure(&self, spec: &InstanceSpec) -> Result<std::sync::Arc<str>, ExecError>;

    /// Whether one [`Executor::ensure`] runs every replica of a spec behind one address (the
    /// kubernetes executor: one Deployment with `replicas: N` behind its Service). When not, the
    /// reconciler ensures each replica as an instance of its own ([`InstanceId::replica`]), on
    /// its own address with its own readiness.
    fn runs_replicas(&self) -> bool {
        false
    }

    /// Stop the instance. Idempotent: an unknown id is not an error.
    fn stop(&self, id: &InstanceId) -> Result<(), ExecError>;

    /// Every instance the executor knows, in id order.
    fn observe(&self) -> Vec<Observed>;

    /// A counter bumped on every change of observed state.
    fn changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Stop everything and wait until it is gone (used when the proxy exits).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
