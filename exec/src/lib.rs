//! MicroStax executors and store plugins: what turns a plan into running instances and isolated
//! stores. The planner decides *what* must exist (instance specs named by their content address,
//! store requests); this crate makes it exist and reports what does.
//!
//! It depends on neither the planner nor the config spec: its inputs are the plain specs of
//! [`spec`], so an executor can be tested, and later replaced, on its own.

pub mod error;
pub mod executor;
pub mod kubernetes;
pub mod process;
pub mod reconcile;
mod records;
pub mod spec;
pub mod store;

pub use error::{ExecError, StoreError};
pub use executor::{BoxFuture, Executor};
pub use kubernetes::{KubernetesExecutor, KubernetesOptions, RenderTarget};
pub use process::{Backoff, Ports, ProcessExecutor, ProcessOptions};
pub use reconcile::{
    Desired, DesiredInstance, Failure, Pass, ReconcileOptions, Reconciler, StoreKey,
};
pub use spec::{
    InstanceId, InstanceSpec, InstanceState, Observed, RunSpec, StoreMode, StoreRequest,
};
pub use store::{command::CommandStores, postgres::PostgresStores};
pub use store::{StoreHandle, StorePlugin};
