//! The kubernetes executor, "render" mode: each instance it is asked to run becomes a ConfigMap
//! (its env), a Deployment and a Service, written as one multi-document file per instance
//! (`<name>.yaml`, each document JSON, which is YAML too) in a directory, or to stdout.
//!
//! Applying them is the operator's step, for example
//! `kubectl apply -f DIR --prune -l app.kubernetes.io/managed-by=microstax`: pruning by that
//! label deletes what `stop` removed from the directory. Nothing here talks to a cluster, so
//! instances are only ever [`InstanceState::Rendered`]. Files are left in place by `shutdown`
//! (they are the desired state, not processes), and a new executor on the same directory adopts
//! the files it finds, so a later `stop` prunes them.
//!
//! The objects follow the conventions of `deploy/kubernetes/` (its test compares them): the
//! labels `app.kubernetes.io/{name,part-of,managed-by}` and `microstax.io/*`; a non-root pod
//! without a service account token; a container that cannot escalate privileges, has no
//! capabilities and a read-only root filesystem (with an `emptyDir` at `/tmp`); requests from
//! the instance's cpu and memory and, as the manifests do, a memory limit equal to the memory
//! request and no CPU limit (no throttling); startup, readiness and liveness probes on the run
//! block's probe path; and a termination grace of [`TERMINATION_GRACE_SECS`].

use crate::error::ExecError;
use crate::executor::{BoxFuture, Executor};
use crate::process::{fill, Values};
use crate::spec::{InstanceId, InstanceSpec, InstanceState, Observed};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::watch;

/// The `app.kubernetes.io/managed-by` value on everything rendered.
pub const MANAGED_BY: &str = "microstax";
/// The `app.kubernetes.io/part-of` value on everything rendered, as in `deploy/kubernetes/`.
pub const PART_OF: &str = "microstax";
/// `terminationGracePeriodSeconds` of every pod, as in `deploy/kubernetes/`.
pub const TERMINATION_GRACE_SECS: u64 = 30;
/// The longest DNS-1123 label (object names, label values).
const MAX_LABEL: usize = 63;

/// Where manifests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderTarget {
    /// One `<name>.yaml` file per instance in this directory (created if missing).
    Directory(PathBuf),
    /// Written to stdout as they are rendered; `stop` then has no file to prune.
    Stdout,
}

/// Options of a [`KubernetesExecutor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesOptions {
    /// Where manifests go.
    pub target: RenderTarget,
    /// `metadata.namespace` of every object; `None` leaves it to `kubectl -n` (default).
    pub namespace: Option<String>,
    /// The port the container listens on, named `http`, passed as `PORT` and used by the
    /// Service and the readiness probe (default 8080).
    pub container_port: u16,
}

impl KubernetesOptions {
    /// Render into `dir`, no namespace, container port 8080.
    pub fn directory(dir: impl Into<PathBuf>) -> Self {
        KubernetesOptions {
            target: RenderTarget::Directory(dir.into()),
            namespace: None,
            container_port: 8080,
        }
    }

    /// Render to stdout, no namespace, container port 8080.
    pub fn stdout() -> Self {
        KubernetesOptions {
            target: RenderTarget::Stdout,
            ..Self::directory(PathBuf::new())
        }
    }
}

/// Renders instances as Kubernetes manifests.
#[derive(Debug)]
pub struct KubernetesExecutor {
    opts: KubernetesOptions,
    table: Mutex<BTreeMap<InstanceId, Observed>>,
    changes: watch::Sender<u64>,
}

fn io_error(id: &str, what: String, source: std::io::Error) -> ExecError {
    ExecError::Io {
        id: id.to_owned(),
        what,
        source,
    }
}

impl KubernetesExecutor {
    /// Create the output directory if needed and adopt the manifests already in it.
    pub fn new(opts: KubernetesOptions) -> Result<Self, ExecError> {
        if let Some(ns) = &opts.namespace {
            if ns.is_empty() || dns_chars(ns, MAX_LABEL) != *ns {
                return Err(ExecError::Options(format!(
                    "namespace {ns:?} is not a DNS-1123 label (lower-case letters, digits and \
                     dashes, at most 63)"
                )));
            }
        }
        let mut table = BTreeMap::new();
        if let RenderTarget::Directory(dir) = &opts.target {
            std::fs::create_dir_all(dir)
                .map_err(|e| io_error("-", format!("create the directory {}", dir.display()), e))?;
            for observed in adopt(dir) {
                table.insert(observed.id.clone(), observed);
            }
        }
        let (changes, _) = watch::channel(0);
        Ok(KubernetesExecutor {
            opts,
            table: Mutex::new(table),
            changes,
        })
    }

    /// The options it renders with.
    pub fn options(&self) -> &KubernetesOptions {
        &self.opts
    }

    /// The file an instance is rendered to (`None` when rendering to stdout).
    pub fn file_of(&self, spec: &InstanceSpec) -> Option<PathBuf> {
        match &self.opts.target {
            RenderTarget::Directory(dir) => {
                Some(dir.join(format!("{}.yaml", name_for(&spec.service, &spec.id))))
            }
            RenderTarget::Stdout => None,
        }
    }

    /// The ConfigMap, Deployment and Service of an instance.
    pub fn render(&self, spec: &InstanceSpec) -> Result<Vec<Value>, ExecError> {
        render(spec, &self.opts)
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<InstanceId, Observed>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether `spec`'s file holds `text` already (never, when rendering to stdout: a spec
    /// ensured again there changed, and its manifests are written out again).
    fn is_written(&self, spec: &InstanceSpec, text: &str) -> bool {
        self.file_of(spec)
            .and_then(|path| std::fs::read_to_string(path).ok())
            .is_some_and(|on_disk| on_disk == text)
    }

    fn write(&self, spec: &InstanceSpec, text: &str) -> Result<(), ExecError> {
        let id = spec.id.to_string();
        match self.file_of(spec) {
            Some(path) => {
                let tmp = path.with_extension("yaml.tmp");
                std::fs::write(&tmp, text)
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .map_err(|e| io_error(&id, format!("write {}", path.display()), e))
            }
            None => std::io::stdout()
                .lock()
                .write_all(text.as_bytes())
                .map_err(|e| io_error(&id, "write to stdout".into(), e)),
        }
    }
}

/// The manifests of every file in `dir` this executor wrote, as rendered instances.
fn adopt(dir: &Path) -> Vec<Observed> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            let first = documents(&text).into_iter().next()?;
            let meta = first.get("metadata")?;
            let labels = meta.get("labels")?;
            if labels.get("app.kubernetes.io/managed-by")?.as_str()? != MANAGED_BY {
                return None;
            }
            let notes = meta.get("annotations")?;
            Some(Observed {
                id: InstanceId(Arc::from(notes.get("microstax.io/instance-id")?.as_str()?)),
                service: Arc::from(notes.get("microstax.io/service")?.as_str()?),
                state: InstanceState::Rendered,
                pid: None,
                restarts: 0,
                since: SystemTime::now(),
                log: None,
            })
        })
        .collect()
}

/// The JSON documents of a multi-document file as this module writes it (each after a `---`
/// line); anything that is not such a document is skipped.
pub fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .map(|doc| doc.trim().trim_start_matches("---").trim())
        .filter(|doc| !doc.is_empty())
        .filter_map(|doc| serde_json::from_str(doc).ok())
        .collect()
}

/// `<service>-<short id>`: a DNS-1123 label that starts with a letter (so it also suits a
/// Service name) and has at most 63 characters.
pub fn object_name(spec: &InstanceSpec) -> String {
    name_for(&spec.service, &spec.id)
}

fn name_for(service: &str, id: &InstanceId) -> String {
    let short = dns_chars(&id.short(), 12);
    let room = MAX_LABEL - short.len() - 1;
    format!("{}-{short}", dns_label(service, room))
}

/// Lower-case letters, digits and single dashes, starting with a letter, ending with a letter or
/// digit, at most `max` long (`x` when nothing is left).
fn dns_label(text: &str, max: usize) -> String {
    let mut out = dns_chars(text, max);
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert(0, 'x');
        out = dns_chars(&out, max);
    }
    out
}

/// Lower-case letters, digits and single dashes, neither starting nor ending with a dash, at most
/// `max` long.
fn dns_chars(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(max);
    out.trim_end_matches('-').to_owned()
}

/// A label value: letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit, at
/// most 63 long. The raw value goes in an annotation next to it.
fn label_value(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(MAX_LABEL)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// A ConfigMap key (and so an env name from `envFrom`): `[-._a-zA-Z0-9]+`.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn render(spec: &InstanceSpec, opts: &KubernetesOptions) -> Result<Vec<Value>, ExecError> {
    let unrunnable = |reason: String| ExecError::Unrunnable {
        id: spec.id.to_string(),
        reason,
    };
    let image = spec
        .image
        .as_deref()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| unrunnable("no image".into()))?;
    let port = opts.container_port;
    let name = object_name(spec);
    let short = &spec.id.short();

    let selector = json!({
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "microstax.io/instance": label_value(short),
    });
    let labels = json!({
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/name": label_value(&spec.service),
        "app.kubernetes.io/part-of": PART_OF,
        "microstax.io/service": label_value(&spec.service),
        "microstax.io/branch": label_value(&spec.branch),
        "microstax.io/instance": label_value(short),
    });
    let annotations = json!({
        "microstax.io/instance-id": spec.id.to_string(),
        "microstax.io/service": &*spec.service,
        "microstax.io/branch": &*spec.branch,
    });
    let mut metadata = json!({ "name": name, "labels": labels, "annotations": annotations });
    if let (Some(ns), Some(meta)) = (&opts.namespace, metadata.as_object_mut()) {
        meta.insert("namespace".into(), json!(ns));
    }

    let values = Values {
        port,
        instance: short,
        service: &spec.service,
        branch: &spec.branch,
        env: &spec.env,
    };
    let mut data = Map::new();
    for (key, value) in &spec.env {
        if !valid_key(key) {
            return Err(unrunnable(format!(
                "env name {key:?} is not a valid ConfigMap key"
            )));
        }
        data.insert(
            key.clone(),
            json!(fill(value, &values).map_err(unrunnable)?),
        );
    }
    data.insert("PORT".into(), json!(port.to_string()));
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": data,
    });

    let mut container = json!({
        "name": dns_label(&spec.service, MAX_LABEL),
        "image": image,
        "ports": [{ "name": "http", "containerPort": port, "protocol": "TCP" }],
        "envFrom": [{ "configMapRef": { "name": name } }],
        "env": [{ "name": "PORT", "value": port.to_string() }],
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
        "volumeMounts": [{ "name": "tmp", "mountPath": "/tmp" }],
    });
    if let Some(c) = container.as_object_mut() {
        let mut requests = Map::new();
        if let Some(cpu) = spec.cpu_millis {
            requests.insert("cpu".into(), json!(format!("{cpu}m")));
        }
        if let Some(mem) = spec.memory_mib {
            requests.insert("memory".into(), json!(format!("{mem}Mi")));
        }
        if !requests.is_empty() {
            let mut resources = json!({ "requests": requests });
            // memory is not compressible: limited to what was asked; CPU is, and is not limited
            if let (Some(mem), Some(r)) = (spec.memory_mib, resources.as_object_mut()) {
                r.insert("limits".into(), json!({ "memory": format!("{mem}Mi") }));
            }
            c.insert("resources".into(), resources);
        }
        if let Some(run) = &spec.run {
            let period = 5u64;
            // Allow start_timeout for the first success before the pod counts as not ready.
            let failures = run.start_timeout.as_secs().div_ceil(period).max(3);
            c.insert(
                "readinessProbe".into(),
                json!({
                    "httpGet": { "path": run.probe_path, "port": "http" },
                    "periodSeconds": period,
                    "failureThreshold": failures,
                }),
            );
            // liveness waits for the startup probe, which allows start_timeout
            c.insert(
                "startupProbe".into(),
                json!({
                    "httpGet": { "path": run.probe_path, "port": "http" },
                    "periodSeconds": period,
                    "failureThreshold": failures,
                }),
            );
            c.insert(
                "livenessProbe".into(),
                json!({
                    "httpGet": { "path": run.probe_path, "port": "http" },
                    "periodSeconds": 10,
                    "failureThreshold": 3,
                }),
            );
        }
    }
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": spec.replicas.max(1),
            "selector": { "matchLabels": selector },
            "template": {
                "metadata": { "labels": labels, "annotations": annotations },
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECS,
                    "securityContext": { "runAsNonRoot": true },
                    "containers": [container],
                    "volumes": [{ "name": "tmp", "emptyDir": {} }],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{ "name": "http", "port": port, "targetPort": "http", "protocol": "TCP" }],
        },
    });
    Ok(vec![config_map, deployment, service])
}

/// Documents as one multi-document YAML text (each document JSON after a `---` line).
fn manifest(docs: &[Value]) -> String {
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(doc).unwrap_or_default());
        out.push('\n');
    }
    out
}

impl KubernetesExecutor {
    /// Where the instance's Service answers inside the cluster: `<name>.<namespace>.svc:<port>`
    /// (`<name>:<port>` when no namespace is set, resolved in the proxy's own namespace).
    pub fn authority(&self, spec: &InstanceSpec) -> Arc<str> {
        let name = name_for(&spec.service, &spec.id);
        let port = self.opts.container_port;
        Arc::from(match &self.opts.namespace {
            Some(ns) => format!("{name}.{ns}.svc:{port}"),
            None => format!("{name}:{port}"),
        })
    }
}

impl Executor for KubernetesExecutor {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn runs_replicas(&self) -> bool {
        true
    }

    fn ensure(&self, spec: &InstanceSpec) -> Result<Arc<str>, ExecError> {
        let authority = self.authority(spec);
        let text = manifest(&self.render(spec)?);
        if self.table().contains_key(&spec.id) {
            // rendered before (or adopted from a previous run): rendered again only when the
            // spec changed what is not in its content address (its replicas)
            if !self.is_written(spec, &text) {
                self.write(spec, &text)?;
                self.bump();
            }
            return Ok(authority);
        }
        self.write(spec, &text)?;
        self.table().insert(
            spec.id.clone(),
            Observed {
                id: spec.id.clone(),
                service: spec.service.clone(),
                state: InstanceState::Rendered,
                pid: None,
                restarts: 0,
                since: SystemTime::now(),
                log: None,
            },
        );
        self.bump();
        Ok(authority)
    }

    fn stop(&self, id: &InstanceId) -> Result<(), ExecError> {
        let Some(observed) = self.table().remove(id) else {
            return Ok(());
        };
        self.bump();
        if let RenderTarget::Directory(dir) = &self.opts.target {
            let path = dir.join(format!("{}.yaml", name_for(&observed.service, id)));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io_error(
                        &id.to_string(),
                        format!("remove {}", path.display()),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    fn observe(&self) -> Vec<Observed> {
        self.table().values().cloned().collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
