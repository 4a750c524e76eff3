//! The kubernetes executor renders valid manifests: every object is checked against the
//! Kubernetes schemas by `kubernetes-validate` (PyPI, installed by .ci/run), then names, labels,
//! image, ports, probe, resources and env are checked one by one; `stop` prunes the file.

#![allow(clippy::unwrap_used)]

use microstax_exec::kubernetes::{documents, object_name};
use microstax_exec::{
    Desired, DesiredInstance, ExecError, Executor, InstanceId, InstanceSpec, InstanceState,
    KubernetesExecutor, KubernetesOptions, ReconcileOptions, Reconciler, RunSpec,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn spec(id: &str, service: &str, branch: &str) -> InstanceSpec {
    InstanceSpec {
        id: InstanceId(Arc::from(id)),
        service: Arc::from(service),
        branch: Arc::from(branch),
        run: Some(RunSpec {
            command: "orders".into(),
            args: vec![],
            env: BTreeMap::new(),
            probe_path: "/healthz".into(),
            start_timeout: Duration::from_secs(30),
        }),
        image: Some("registry.example/orders:1.2".into()),
        env: BTreeMap::from([
            (
                "DATABASE_URL".into(),
                "postgres://db/orders_{branch}".into(),
            ),
            ("SELF".into(), "http://localhost:{port}/{service}".into()),
        ]),
        cpu_millis: Some(250),
        memory_mib: Some(256),
        replicas: 1,
    }
}

const ID_A: &str = "0123456789abcdef0123456789abcdef";
const ID_B: &str = "fedcba9876543210fedcba9876543210";
const ID_C: &str = "00000000000011111111111122222222";

fn is_dns_label(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap()
}

fn validate(files: &[std::path::PathBuf]) {
    let found = std::process::Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is missing in CI (.ci/run installs it)"
        );
        eprintln!("skipped the schema check: kubernetes-validate is not installed (pip install kubernetes-validate)");
        return;
    }
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate rejected the manifests:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rendered(dir: &Path, spec: &InstanceSpec) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{}.yaml", object_name(spec)))).unwrap();
    documents(&text)
}

#[test]
fn renders_valid_manifests_with_names_labels_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = KubernetesOptions::directory(dir.path());
    opts.namespace = Some("branches".into());
    let exec = KubernetesExecutor::new(opts).unwrap();
    let a = spec(ID_A, "orders", "main");
    let b = spec(
        ID_B,
        "Payments_Service.With.A.Name.Far.Too.Long.For.Kubernetes.Objects.v2",
        "Feature/Login_ÜX--",
    );
    let mut c = spec(ID_C, "9lives", "feat/x");
    c.run = None;
    c.cpu_millis = None;
    c.memory_mib = None;
    // the reliability floor the plan chose: one Deployment with that many replicas
    c.replicas = 3;
    for s in [&a, &b, &c] {
        exec.ensure(s).unwrap();
    }
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    validate(&files);

    assert_eq!(object_name(&a), "orders-0123456789ab");
    assert_eq!(
        find(&rendered(dir.path(), &c), "Deployment")["spec"]["replicas"],
        3
    );
    assert_eq!(
        find(&rendered(dir.path(), &a), "Deployment")["spec"]["replicas"],
        1
    );
    for s in [&a, &b, &c] {
        let name = object_name(s);
        assert!(is_dns_label(&name), "{name}");
        let docs = rendered(dir.path(), s);
        let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["ConfigMap", "Deployment", "Service"]);
        for doc in &docs {
            let meta = &doc["metadata"];
            assert_eq!(meta["name"], name.as_str());
            assert_eq!(meta["namespace"], "branches");
            let labels = &meta["labels"];
            assert_eq!(labels["app.kubernetes.io/managed-by"], "microstax");
            assert_eq!(labels["microstax.io/instance"], &s.id.0[..12]);
            assert_eq!(meta["annotations"]["microstax.io/instance-id"], &*s.id.0);
            assert_eq!(meta["annotations"]["microstax.io/branch"], &*s.branch);
            for value in labels.as_object().unwrap().values() {
                let v = value.as_str().unwrap();
                assert!(
                    v.len() <= 63 && !v.starts_with('-') && !v.ends_with('-'),
                    "{v}"
                );
            }
        }
    }
    assert!(object_name(&b).starts_with("payments-service-with-a-name"));
    assert!(object_name(&b).ends_with("-fedcba987654"));
    assert!(
        object_name(&c).starts_with("x9lives-"),
        "a name starts with a letter"
    );
    let b_labels = &rendered(dir.path(), &b)[0]["metadata"]["labels"];
    assert_eq!(b_labels["microstax.io/branch"], "Feature-Login_-X");

    let docs = rendered(dir.path(), &a);
    let config = find(&docs, "ConfigMap");
    assert_eq!(config["data"]["DATABASE_URL"], "postgres://db/orders_main");
    assert_eq!(config["data"]["SELF"], "http://localhost:8080/orders");
    assert_eq!(config["data"]["PORT"], "8080");
    let deploy = find(&docs, "Deployment");
    let pod = &deploy["spec"]["template"];
    assert_eq!(
        deploy["spec"]["selector"]["matchLabels"]["microstax.io/instance"],
        "0123456789ab"
    );
    assert_eq!(pod["metadata"]["labels"]["microstax.io/service"], "orders");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/orders:1.2");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(container["ports"][0]["name"], "http");
    assert_eq!(container["env"][0]["name"], "PORT");
    assert_eq!(container["env"][0]["value"], "8080");
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"],
        "orders-0123456789ab"
    );
    assert_eq!(container["resources"]["requests"]["cpu"], "250m");
    assert_eq!(container["resources"]["requests"]["memory"], "256Mi");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(container["readinessProbe"]["failureThreshold"], 6);
    let service = find(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(
        service["spec"]["selector"],
        deploy["spec"]["selector"]["matchLabels"]
    );

    let c_docs = rendered(dir.path(), &c);
    let c_container = &find(&c_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert!(
        c_container.get("readinessProbe").is_none(),
        "no probe path known"
    );
    assert!(c_container.get("resources").is_none());

    assert!(exec
        .observe()
        .iter()
        .all(|o| o.state == InstanceState::Rendered));
}

#[test]
fn stop_prunes_the_file_and_a_new_executor_adopts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let exec = KubernetesExecutor::new(KubernetesOptions::directory(dir.path())).unwrap();
    let a = spec(ID_A, "orders", "main");
    let b = spec(ID_B, "payments", "main");
    let mut changes = exec.changes();
    exec.ensure(&a).unwrap();
    exec.ensure(&a).unwrap();
    exec.ensure(&b).unwrap();
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    assert_eq!(exec.observe().len(), 2);
    let file_a = exec.file_of(&a).unwrap();
    assert!(file_a.exists());
    exec.stop(&a.id).unwrap();
    assert!(!file_a.exists(), "pruned");
    assert!(changes.has_changed().unwrap());
    assert_eq!(exec.observe().len(), 1);
    exec.stop(&a.id).unwrap();

    let again = KubernetesExecutor::new(KubernetesOptions::directory(dir.path())).unwrap();
    let seen = again.observe();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].id, b.id);
    assert_eq!(seen[0].state, InstanceState::Rendered);
    again.stop(&b.id).unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_adopted_manifest_is_rendered_again_when_its_replicas_changed() {
    let dir = tempfile::tempdir().unwrap();
    let exec = KubernetesExecutor::new(KubernetesOptions::directory(dir.path())).unwrap();
    let mut a = spec(ID_A, "orders", "main");
    exec.ensure(&a).unwrap();
    let replicas =
        |s: &InstanceSpec| find(&rendered(dir.path(), s), "Deployment")["spec"]["replicas"].clone();
    assert_eq!(replicas(&a), 1);
    // the replica count is not part of the content address: the same instance, ensured again
    // by a new executor that adopted its manifest, with the floor raised to 3
    drop(exec);
    let again = KubernetesExecutor::new(KubernetesOptions::directory(dir.path())).unwrap();
    assert_eq!(again.observe().len(), 1, "adopted");
    let mut changes = again.changes();
    changes.mark_unchanged();
    a.replicas = 3;
    again.ensure(&a).unwrap();
    assert_eq!(replicas(&a), 3);
    assert!(changes.has_changed().unwrap());
    // ensured again unchanged: the file is not rewritten and nothing is announced
    changes.mark_unchanged();
    again.ensure(&a).unwrap();
    assert!(!changes.has_changed().unwrap());
    assert_eq!(again.observe().len(), 1);
    validate(&[again.file_of(&a).unwrap()]);
}

#[tokio::test]
async fn the_reconciler_renders_a_placed_instance_again_when_its_replicas_change() {
    let dir = tempfile::tempdir().unwrap();
    let exec = Arc::new(KubernetesExecutor::new(KubernetesOptions::directory(dir.path())).unwrap());
    let rec = Reconciler::new(exec.clone(), BTreeMap::new(), ReconcileOptions::default());
    let mut a = spec(ID_A, "orders", "main");
    let desired = |s: &InstanceSpec| Desired {
        instances: BTreeMap::from([(
            s.id.clone(),
            DesiredInstance {
                spec: s.clone(),
                branches: BTreeSet::from([Arc::from("main")]),
                store_env: vec![],
                idle_after: None,
            },
        )]),
        stores: BTreeMap::new(),
    };
    let replicas =
        |s: &InstanceSpec| find(&rendered(dir.path(), s), "Deployment")["spec"]["replicas"].clone();
    let pass = rec.reconcile(&desired(&a), Instant::now()).await;
    assert_eq!(pass.started, [a.id.clone()]);
    assert_eq!(replicas(&a), 1);
    // the plan raises the floor: same content address, three replicas
    a.replicas = 3;
    let pass = rec.reconcile(&desired(&a), Instant::now()).await;
    assert!(pass.failures.is_empty(), "{:?}", pass.failures);
    assert!(
        pass.started.is_empty(),
        "not a new instance: {:?}",
        pass.started
    );
    assert_eq!(replicas(&a), 3);
    assert_eq!(pass.placements.len(), 1);
}

#[test]
fn an_instance_without_an_image_or_with_a_bad_env_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let exec = KubernetesExecutor::new(KubernetesOptions::directory(dir.path())).unwrap();
    let mut no_image = spec(ID_A, "orders", "main");
    no_image.image = None;
    let err = exec.ensure(&no_image).unwrap_err();
    assert!(matches!(err, ExecError::Unrunnable { .. }), "{err}");
    let mut bad_env = spec(ID_B, "orders", "main");
    bad_env.env.insert("NOT VALID".into(), "x".into());
    assert!(exec.ensure(&bad_env).is_err());
    assert!(exec.observe().is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Run by `renders_to_stdout` in a process of its own, whose stdout it reads.
#[test]
#[ignore = "a helper: runs only as a child of renders_to_stdout"]
fn stdout_helper() {
    if std::env::var_os("MICROSTAX_STDOUT_HELPER").is_none() {
        return;
    }
    let exec = KubernetesExecutor::new(KubernetesOptions::stdout()).unwrap();
    exec.ensure(&spec(ID_A, "orders", "main")).unwrap();
    assert_eq!(exec.file_of(&spec(ID_A, "orders", "main")), None);
    exec.stop(&InstanceId(Arc::from(ID_A))).unwrap();
}

#[test]
fn renders_to_stdout() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stdout_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MICROSTAX_STDOUT_HELPER", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // The test harness prints lines of its own around the documents.
    let docs: Vec<Value> = text
        .split("\n---\n")
        .filter_map(|chunk| {
            let json = &chunk[chunk.find('{')?..=chunk.rfind('}')?];
            serde_json::from_str(json).ok()
        })
        .collect();
    let kinds: Vec<_> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ConfigMap", "Deployment", "Service"], "{text}");
    assert!(docs
        .iter()
        .all(|d| d["metadata"]["name"] == "orders-0123456789ab"));
}

/// The Deployment of `deploy/kubernetes/gateway.yaml`: the conventions a rendered instance
/// follows are read from the manifests themselves, not restated here.
fn gateway_deployment() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/gateway.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    text.split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str::<Value>(doc).unwrap())
        .find(|d| d["kind"] == "Deployment")
        .unwrap()
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn the_rendered_deployment_follows_the_deploy_manifests_conventions() {
    let gateway = gateway_deployment();
    let g_pod = &gateway["spec"]["template"]["spec"];
    let g_container = &g_pod["containers"][0];

    let dir = tempfile::tempdir().unwrap();
    let exec = KubernetesExecutor::new(KubernetesOptions::directory(dir.path())).unwrap();
    let a = spec(ID_A, "orders", "main");
    let mut bare = spec(ID_B, "payments", "main");
    bare.run = None;
    bare.cpu_millis = None;
    exec.ensure(&a).unwrap();
    exec.ensure(&bare).unwrap();
    validate(&[exec.file_of(&a).unwrap(), exec.file_of(&bare).unwrap()]);

    let docs = rendered(dir.path(), &a);
    // no namespace option: left to `kubectl -n`, on every object
    assert!(docs
        .iter()
        .all(|d| d["metadata"].get("namespace").is_none()));
    let deploy = find(&docs, "Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // every label key the manifests use, with the same meaning, on every object and the pod
    for labels in docs
        .iter()
        .map(|d| &d["metadata"]["labels"])
        .chain([&deploy["spec"]["template"]["metadata"]["labels"]])
    {
        for key in keys(&gateway["metadata"]["labels"]) {
            assert!(labels.get(key).is_some(), "label {key} missing: {labels}");
        }
        assert_eq!(
            labels["app.kubernetes.io/part-of"],
            gateway["metadata"]["labels"]["app.kubernetes.io/part-of"]
        );
        assert_eq!(labels["app.kubernetes.io/name"], "orders");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "microstax");
        for key in keys(labels) {
            assert!(
                key.starts_with("app.kubernetes.io/") || key.starts_with("microstax.io/"),
                "{key}"
            );
        }
    }

    // the security context: non-root pod, and the container's exactly as the manifests'
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"],
        g_pod["securityContext"]["runAsNonRoot"]
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"], g_container["securityContext"]);
    // a read-only root filesystem, with a writable /tmp
    let tmp = &container["volumeMounts"][0];
    assert_eq!(tmp["mountPath"], "/tmp");
    assert_eq!(pod["volumes"][0]["name"], tmp["name"]);
    assert!(pod["volumes"][0]["emptyDir"].is_object());
    assert_eq!(
        pod["automountServiceAccountToken"],
        g_pod["automountServiceAccountToken"]
    );
    assert_eq!(
        pod["terminationGracePeriodSeconds"],
        g_pod["terminationGracePeriodSeconds"]
    );

    // requests from the instance, limits as the manifests: memory only, no CPU throttling
    let resources = &container["resources"];
    assert_eq!(resources["requests"]["cpu"], "250m");
    assert_eq!(resources["requests"]["memory"], "256Mi");
    assert_eq!(
        keys(&resources["limits"]),
        keys(&g_container["resources"]["limits"])
    );
    assert_eq!(resources["limits"]["memory"], "256Mi");

    // probes on the run block's path: startup within start_timeout, then liveness and readiness
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    let live = &container["livenessProbe"];
    assert_eq!(live["httpGet"]["path"], "/healthz");
    assert_eq!(live["httpGet"]["port"], "http");
    assert_eq!(
        live["periodSeconds"],
        g_container["livenessProbe"]["periodSeconds"]
    );
    let startup = &container["startupProbe"];
    assert_eq!(startup["httpGet"]["path"], "/healthz");
    let budget =
        startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    assert!(budget >= 30, "startup allows start_timeout: {startup}");

    // an instance without a run block or a cpu: no probes, a memory request and limit only
    let b_docs = rendered(dir.path(), &bare);
    let b_container = &find(&b_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert!(b_container.get("livenessProbe").is_none());
    assert!(b_container.get("startupProbe").is_none());
    assert_eq!(keys(&b_container["resources"]["requests"]), ["memory"]);
    assert_eq!(b_container["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(
        b_container["securityContext"],
        g_container["securityContext"]
    );
}

#[test]
fn a_namespace_that_is_not_a_dns_label_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["Branches", "", "-x", "a_b", &"n".repeat(64)] {
        let mut opts = KubernetesOptions::directory(dir.path());
        opts.namespace = Some(bad.to_string());
        let err = KubernetesExecutor::new(opts).unwrap_err();
        assert!(err.to_string().contains("namespace"), "{bad:?}: {err}");
    }
    let mut opts = KubernetesOptions::directory(dir.path());
    opts.namespace = Some("microstax".into());
    assert!(KubernetesExecutor::new(opts).is_ok());
}
