//! The config directory watcher. Any filesystem event under the config path (a new, changed or
//! deleted file; an editor's write-to-temp-and-rename; a Kubernetes ConfigMap update, which
//! swaps the `..data` symlink instead of touching files) starts a short debounce window; then the
//! whole config is re-read and compared with what was last applied, and only the layers whose
//! file changed are sent to the control plane as one atomic change.

use crate::control::{Change, ChangeSource, ControlPlane};
use microstax_config::{
    parse_sources, read_sources, ConfigError, Diagnostic, LayerKind, SourceText,
};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The OS watch could not be set up.
    #[error("cannot watch {path}: {source}")]
    Notify {
        /// The watched path.
        path: String,
        /// The notify error.
        #[source]
        source: notify::Error,
    },
}

/// (kind, name) -> (file, file text) of what was last applied.
type Known = BTreeMap<(LayerKind, String), (String, String)>;

/// A running watcher; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watch `path` (a config directory or single file) and apply its changes to `control`.
/// `loaded` are the sources the control plane's config was built from (so an edit made between
/// that load and the watch starting is seen as a change); `debounce` is the quiet time gathered
/// after the first event of a burst.
pub fn watch(
    path: PathBuf,
    loaded: &[SourceText],
    control: Arc<ControlPlane>,
    debounce: Duration,
) -> Result<ConfigWatcher, WatchError> {
    let mut known = known_from(&control, loaded);
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // reading the config (as every reconcile does) raises access events: waking on them
        // re-read the files in a loop, ~150 times a second, for as long as the process ran
        if res.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            // a full channel already holds a pending wake-up: nothing is lost
            let _ = tx.try_send(());
        }
    })
    .map_err(|source| WatchError::Notify {
        path: path.display().to_string(),
        source,
    })?;
    let (target, mode) = if path.is_file() {
        (
            path.parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            RecursiveMode::NonRecursive,
        )
    } else {
        (path.clone(), RecursiveMode::Recursive)
    };
    watcher
        .watch(&target, mode)
        .map_err(|source| WatchError::Notify {
            path: target.display().to_string(),
            source,
        })?;
    let task = tokio::spawn(async move {
        // catch changes made between the initial load and the watch being set up
        reconcile(&path, &mut known, &control).await;
        while rx.recv().await.is_some() {
            tokio::time::sleep(debounce).await;
            while rx.try_recv().is_ok() {}
            reconcile(&path, &mut known, &control).await;
        }
    });
    Ok(ConfigWatcher {
        _watcher: watcher,
        task,
    })
}

/// What the files held when the control plane's config was loaded from them.
fn known_from(control: &ControlPlane, loaded: &[SourceText]) -> Known {
    let cfg = control.config();
    let texts: BTreeMap<&str, &str> = loaded
        .iter()
        .map(|s| (s.rel.as_str(), s.text.as_str()))
        .collect();
    let mut known = Known::new();
    for l in cfg.layers() {
        let Some(text) = texts.get(&*l.doc.file) else {
            continue;
        };
        let name = if l.kind == LayerKind::Org {
            String::new()
        } else {
            l.doc.name().to_string()
        };
        known.insert((l.kind, name), (l.doc.file.to_string(), text.to_string()));
    }
    known
}

/// Re-read the config and apply what changed since `known`.
async fn reconcile(path: &Path, known: &mut Known, control: &ControlPlane) {
    let sources = match read_sources(path) {
        Ok(s) => s,
        Err(e) => {
            control.reject(&e, ChangeSource::File);
            return;
        }
    };
    let (changes, next) = match diff(&sources, known) {
        Ok(v) => v,
        Err(e) => {
            control.reject(&e, ChangeSource::File);
            return;
        }
    };
    if changes.is_empty() {
        *known = next;
        return;
    }
    if control.apply(changes, ChangeSource::File).await.is_ok() {
        *known = next;
    }
}

/// The changes that turn `known` into `sources`, and the new `known`.
fn diff(sources: &[SourceText], known: &Known) -> Result<(Vec<Change>, Known), ConfigError> {
    let docs = parse_sources(sources)?;
    let texts: BTreeMap<&str, &str> = sources
        .iter()
        .map(|s| (s.rel.as_str(), s.text.as_str()))
        .collect();
    let mut next = Known::new();
    let mut changes = Vec::new();
    for doc in docs {
        let name = if doc.kind() == LayerKind::Org {
            String::new()
        } else {
            doc.name().to_string()
        };
        let key = (doc.kind(), name);
        let val = (
            doc.file.to_string(),
            texts
                .get(&*doc.file)
                .map(|t| t.to_string())
                .unwrap_or_default(),
        );
        if let Some((other, _)) = next.get(&key) {
            return Err(ConfigError::Invalid {
                diagnostics: vec![Diagnostic {
                    file: doc.file.clone(),
                    line: doc.spans.line("name"),
                    field: "name".into(),
                    reason: format!("duplicate layer name `{}`: also defined in {other}", key.1),
                }],
            });
        }
        if known.get(&key) != Some(&val) {
            changes.push(Change::Upsert(Box::new(doc)));
        }
        next.insert(key, val);
    }
    for (kind, name) in known.keys() {
        if *kind != LayerKind::Org && !next.keys().any(|(_, n)| n == name) {
            changes.push(Change::Remove { name: name.clone() });
        }
    }
    Ok((changes, next))
}
