//! The config directory watcher. Any filesystem event under the config path (a new, changed or
//! deleted file; an editor's write-to-temp-and-rename; a Kubernetes ConfigMap update, which
//! swaps the `..data` symlink instead of touching files) starts a short debounce window; then the
//! whole config is re-read and compared with what was last applied, and only the layers whose
//! file changed are sent to the control plane. Each file stands alone: one that does not parse
//! or validate is rejected (logged and counted once per version) while its layers keep their
//! last good version, and the other files apply. A deleted file whose layer is still the parent
//! of others is rejected the same way (named by its path, with the children), and applied once
//! they are gone.

use crate::control::{Change, ChangeSource, ControlPlane};
use microstax_config::{
    parse_text, read_sources, Config, ConfigError, Diagnostic, LayerKind, ParsedDoc, SourceText,
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

/// What the watcher remembers between reconciles.
#[derive(Debug, Default)]
struct Memory {
    /// What is applied.
    known: Known,
    /// Rejections already reported: file -> its text ("" for a deleted file), so a broken
    /// file is logged and counted once, not on every later reconcile.
    reported: BTreeMap<String, String>,
}
/// A running watcher; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
    wake: mpsc::Sender<()>,
}

impl ConfigWatcher {
    /// Re-read the config now, as a file event would (e.g. on SIGHUP): every file is validated
    /// and only the valid changes apply.
    pub fn reload(&self) {
        // a full channel already holds a pending reload: nothing is lost
        let _ = self.wake.try_send(());
    }
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
    let mut memory = Memory {
        known: known_from(&control, loaded),
        reported: BTreeMap::new(),
    };
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let wake = tx.clone();
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
        reconcile(&path, &mut memory, &control).await;
        while rx.recv().await.is_some() {
            tokio::time::sleep(debounce).await;
            while rx.try_recv().is_ok() {}
            reconcile(&path, &mut memory, &control).await;
        }
    });
    Ok(ConfigWatcher {
        _watcher: watcher,
        task,
        wake,
    })
}

/// Build the config to start serving from `sources`, leaving out the team and branch files
/// that do not parse or validate (and the layers that need them) rather than refusing to start:
/// one developer's typo must not keep every branch down. Returns the config and why each file
/// was left out; the watcher started with these sources reports and retries those files. The
/// org file must be valid: every layer depends on it.
pub fn build_tolerant(sources: &[SourceText]) -> Result<(Config, Vec<ConfigError>), ConfigError> {
    let mut left_out: Vec<ConfigError> = Vec::new();
    let mut docs: Vec<ParsedDoc> = Vec::new();
    for s in sources {
        match parse_text(&s.rel, &s.text, s.kind, s.stem.as_deref()) {
            Ok(d) => docs.extend(d),
            Err(e) if s.kind.is_some_and(|k| k != LayerKind::Org) => left_out.push(e),
            Err(e) => return Err(e),
        }
    }
    // each round leaves out at least one more file, so this ends
    loop {
        let e = match Config::build(docs.clone()) {
            Ok(cfg) => return Ok((cfg, left_out)),
            Err(e) => e,
        };
        let bad: std::collections::BTreeSet<Arc<str>> =
            e.diagnostics().iter().map(|d| d.file.clone()).collect();
        let is_layer_file = |f: &Arc<str>| {
            sources
                .iter()
                .any(|s| *s.rel == **f && s.kind.is_some_and(|k| k != LayerKind::Org))
        };
        if bad.is_empty() || !bad.iter().all(is_layer_file) {
            return Err(e);
        }
        docs.retain(|d| !bad.contains(&d.file));
        left_out.push(e);
    }
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

/// One change proposed by a reconcile: the layer key, the file it comes from (with its text),
/// and the change.
struct Proposed {
    key: (LayerKind, String),
    file: String,
    text: String,
    change: Change,
}

/// Re-read the config and apply what changed since `memory.known`, file by file: a file that
/// does not parse or validate is rejected alone (its layers keep their last good version) and
/// the others apply.
async fn reconcile(path: &Path, memory: &mut Memory, control: &ControlPlane) {
    let sources = match read_sources(path) {
        Ok(s) => s,
        Err(e) => {
            report(memory, control, "", "", &e);
            return;
        }
    };
    let (proposed, broken) = diff(&sources, &memory.known);
    let mut still_broken: BTreeMap<String, String> = BTreeMap::new();
    let mut held = BTreeMap::new();
    for (file, text, e, layers) in broken {
        report(memory, control, &file, &text, &e);
        for l in layers {
            held.insert(l, e.to_string());
        }
        still_broken.insert(file, text);
    }
    if !proposed.is_empty() {
        let changes = proposed.iter().map(|p| p.change.clone()).collect();
        let outcome = control.apply_each(changes, ChangeSource::File).await;
        for (p, r) in proposed.into_iter().zip(outcome.results) {
            match r {
                Ok(()) => match p.change {
                    Change::Remove { .. } => {
                        memory.known.remove(&p.key);
                    }
                    Change::Upsert(_) => {
                        memory.known.insert(p.key, (p.file, p.text));
                    }
                },
                Err(e) => {
                    report(memory, control, &p.file, &p.text, &e);
                    if !p.key.1.is_empty() {
                        held.insert(p.key.1.clone(), e.to_string());
                    }
                    still_broken.insert(p.file, p.text);
                }
            }
        }
    }
    // a file that is fine again is reported afresh if it breaks later
    memory.reported.retain(|f, _| still_broken.contains_key(f));
    control.set_held(held);
}

/// Log and count a rejection once per file version.
fn report(memory: &mut Memory, control: &ControlPlane, file: &str, text: &str, e: &ConfigError) {
    if memory.reported.get(file).map(String::as_str) == Some(text) {
        return;
    }
    memory.reported.insert(file.to_string(), text.to_string());
    control.reject(e, ChangeSource::File);
}

/// A file that could not be used: its path, text, why, and the names of the layers it held
/// when last applied (they keep serving).
type Broken = (String, String, ConfigError, Vec<String>);

/// The changes that turn `known` into `sources`, one per changed layer, and the files that do
/// not parse (their layers are left as they are).
fn diff(sources: &[SourceText], known: &Known) -> (Vec<Proposed>, Vec<Broken>) {
    let mut seen: BTreeMap<(LayerKind, String), String> = BTreeMap::new();
    let mut proposed = Vec::new();
    let mut broken = Vec::new();
    for s in sources {
        let docs = match parse_text(&s.rel, &s.text, s.kind, s.stem.as_deref()) {
            Ok(d) => d,
            Err(e) => {
                // keep every layer this file held: a broken file is not a deleted one
                let layers: Vec<String> = known
                    .iter()
                    .filter(|(_, (f, _))| *f == s.rel)
                    .map(|((_, n), _)| n.clone())
                    .collect();
                for (k, (f, _)) in known {
                    if *f == s.rel {
                        seen.insert(k.clone(), f.clone());
                    }
                }
                broken.push((s.rel.clone(), s.text.clone(), e, layers));
                continue;
            }
        };
        for doc in docs {
            let name = if doc.kind() == LayerKind::Org {
                String::new()
            } else {
                doc.name().to_string()
            };
            let key = (doc.kind(), name);
            if let Some(other) = seen.get(&key) {
                let e = ConfigError::Invalid {
                    diagnostics: vec![Diagnostic {
                        file: doc.file.clone(),
                        line: doc.spans.line("name"),
                        field: "name".into(),
                        reason: format!(
                            "duplicate layer name `{}`: also defined in {other}",
                            key.1
                        ),
                    }],
                };
                broken.push((s.rel.clone(), s.text.clone(), e, Vec::new()));
                continue;
            }
            seen.insert(key.clone(), s.rel.clone());
            let val = (s.rel.clone(), s.text.clone());
            if known.get(&key) != Some(&val) {
                proposed.push(Proposed {
                    key,
                    file: s.rel.clone(),
                    text: s.text.clone(),
                    change: Change::Upsert(Box::new(doc)),
                });
            }
        }
    }
    for (key, (file, _)) in known {
        if key.0 != LayerKind::Org && !seen.keys().any(|(_, n)| *n == key.1) {
            proposed.push(Proposed {
                key: key.clone(),
                file: file.clone(),
                text: String::new(),
                change: Change::Remove {
                    name: key.1.clone(),
                    origin: Arc::from(format!("{file} (deleted)")),
                },
            });
        }
    }
    (proposed, broken)
}
