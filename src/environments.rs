//! Wiring of `--executor`: builds the executor and the store plugins the config names, the
//! reconciler over them and the planner's runtime, and the loop that keeps them converged.

use anyhow::{Context as _, Result};
use microstax_config::environments::StorePluginKind;
use microstax_config::Config;
use microstax_exec::store::command::{CommandOptions, CommandSpec};
use microstax_exec::{
    CommandStores, Executor, KubernetesExecutor, KubernetesOptions, PostgresStores,
    ProcessExecutor, ProcessOptions, ReconcileOptions, Reconciler, StorePlugin,
};
use microstax_planner::{ControlPlane, Runtime};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which executor runs the plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExecutorKind {
    /// Route only: planned forks without an endpoint follow `routing.instance_address`.
    None,
    /// Start planned instances as local processes (each service's `run:` block).
    Process,
    /// Render planned instances as Kubernetes manifests into `--render-dir` (or stdout).
    Kubernetes,
}

/// Flags of the executor.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct ExecArgs {
    /// What carries the plans out.
    #[arg(long, value_enum, default_value = "none")]
    pub(crate) executor: ExecutorKind,
    /// The process executor's records and instance logs (`state/`, `logs/`), and the record
    /// of created branch stores.
    #[arg(long, default_value = ".microstax")]
    pub(crate) state_dir: PathBuf,
    /// The kubernetes executor's output directory (stdout when absent).
    #[arg(long)]
    pub(crate) render_dir: Option<PathBuf>,
    /// The kubernetes executor's namespace (none: `kubectl -n` decides).
    #[arg(long)]
    pub(crate) namespace: Option<String>,
}

/// The runtime for `args`, or `None` with `--executor none`.
pub(crate) async fn build(args: &ExecArgs, cfg: &Config) -> Result<Option<Arc<Runtime>>> {
    let executor: Arc<dyn Executor> = match args.executor {
        ExecutorKind::None => return Ok(None),
        ExecutorKind::Process => Arc::new(
            ProcessExecutor::new(ProcessOptions::new(
                args.state_dir.join("state"),
                args.state_dir.join("logs"),
            ))
            .await
            .with_context(|| {
                format!(
                    "starting the process executor in {}",
                    args.state_dir.display()
                )
            })?,
        ),
        ExecutorKind::Kubernetes => {
            let mut opts = match &args.render_dir {
                Some(d) => KubernetesOptions::directory(d.clone()),
                None => KubernetesOptions::stdout(),
            };
            opts.namespace = args.namespace.clone();
            Arc::new(KubernetesExecutor::new(opts).context("starting the kubernetes executor")?)
        }
    };
    let reconciler = Reconciler::new(
        executor,
        store_plugins(cfg)?,
        ReconcileOptions {
            grace: cfg.lifecycle().grace,
            store_records: Some(args.state_dir.join("stores.jsonl")),
        },
    );
    Ok(Some(Runtime::new(Arc::new(reconciler))))
}

/// One postgres plugin for every postgres store, one command plugin per store with commands.
fn store_plugins(cfg: &Config) -> Result<BTreeMap<Arc<str>, Arc<dyn StorePlugin>>> {
    let mut out: BTreeMap<Arc<str>, Arc<dyn StorePlugin>> = BTreeMap::new();
    let names: Vec<String> = cfg
        .services()
        .iter()
        .flat_map(|s| s.stores.iter().map(|st| st.name.clone()))
        .collect();
    for name in names {
        let Some(s) = cfg.store_settings(&name) else {
            continue;
        };
        match s.plugin {
            StorePluginKind::Postgres => {
                out.entry(Arc::from(s.kind.as_str()))
                    .or_insert_with(|| Arc::new(PostgresStores::default()));
            }
            StorePluginKind::Command { create, delete } => {
                let spec = |c: &[String]| CommandSpec {
                    program: c.first().cloned().unwrap_or_default(),
                    args: c.iter().skip(1).cloned().collect(),
                };
                let plugin = CommandStores::new(CommandOptions::new(spec(&create), spec(&delete)))
                    .with_context(|| format!("store {name}: the create or delete command"))?;
                out.insert(Arc::from(name.as_str()), Arc::new(plugin));
            }
        }
    }
    Ok(out)
}

/// Keep the environments converged: a pass every second and at every executor change (gives
/// back what is unneeded past the grace, retries what failed); when a placement appears or goes,
/// the table is recompiled so routes follow instances.
pub(crate) async fn keep_converged(runtime: Arc<Runtime>, control: Arc<ControlPlane>) {
    let mut changes = runtime.reconciler().executor().changes();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = changes.changed() => if r.is_err() { return },
        }
        let (_, placements_changed) = runtime.tick().await;
        if placements_changed {
            control.refresh().await;
        }
    }
}
