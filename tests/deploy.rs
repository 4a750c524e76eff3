//! The deployment files agree with the binary: every Kubernetes manifest under
//! `deploy/kubernetes/` passes the Kubernetes schemas (`kubernetes-validate`, installed by
//! .ci/run), and every MicroStax container in them, like the Dockerfile, uses only flags the
//! binary has, exposes the ports its flags bind, probes the health listener's paths, mounts its
//! config where `--config` points, keeps the admin API on loopback, and drains within the pod's
//! grace period.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `--flags` `microstax SUBCOMMAND --help` lists.
fn flags(subcommand: &str) -> BTreeSet<String> {
    let out = std::process::Command::new(common::BIN)
        .args([subcommand, "--help"])
        .output()
        .expect("run --help");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| {
            let w = w.trim_end_matches([',', '.']);
            let name = w.split(['=', '[', '<']).next()?;
            (name.starts_with("--") && name.len() > 2).then(|| name.to_string())
        })
        .collect()
}

/// The value given to `flag` in `args` (`--flag VALUE` or `--flag=VALUE`).
fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(flag)?.strip_prefix('=')
        }
    })
}

fn addr(v: &str) -> SocketAddr {
    v.parse()
        .unwrap_or_else(|e| panic!("not an address: {v}: {e}"))
}

/// Check `args` of `microstax` against its flags; returns the (proxy, health) ports it binds
/// beyond loopback.
fn check_run_args(args: &[String], what: &str) -> (Option<u16>, Option<u16>) {
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "{what}: {args:?}"
    );
    let known = flags("run");
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let name = a.split('=').next().unwrap_or(a);
        assert!(
            known.contains(name),
            "{what}: `{name}` is not a flag of microstax run ({known:?})"
        );
    }
    assert!(
        arg(args, "--config").is_some() != arg(args, "--source").is_some(),
        "{what}: exactly one of --config and --source"
    );
    let admin = addr(arg(args, "--admin").unwrap_or("127.0.0.1:9901"));
    assert!(
        admin.ip().is_loopback(),
        "{what}: the admin API must stay on loopback"
    );
    let listen = addr(arg(args, "--listen").expect("--listen"));
    let health = arg(args, "--health").map(addr);
    let health = health.expect("--health: probes and metrics need a reachable listener");
    assert!(
        !health.ip().is_loopback(),
        "{what}: kubelet cannot reach a loopback health listener"
    );
    (
        (!listen.ip().is_loopback()).then_some(listen.port()),
        Some(health.port()),
    )
}

fn port_named(container: &Value, name: &str) -> Option<u16> {
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .map(|p| p as u16)
}

fn manifests() -> Vec<(PathBuf, Value)> {
    let dir = root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read");
        for doc in text.split("\n---\n") {
            let v: Value = serde_yaml_ng::from_str(doc).expect("yaml");
            out.push((f.clone(), v));
        }
    }
    out
}

fn validate(files: &[PathBuf]) {
    let found = std::process::Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is missing in CI (.ci/run installs it)"
        );
        eprintln!("skipped the schema check: kubernetes-validate is not installed");
        return;
    }
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn"])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "kubernetes-validate rejected the manifests:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn check_pod(pod: &Value, what: &str) -> usize {
    let mut found = 0;
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
    for c in pod["containers"].as_array().expect("containers") {
        let image = c["image"].as_str().unwrap_or("");
        let Some(tag) = image.strip_prefix("microstax:") else {
            continue;
        };
        found += 1;
        let what = format!("{what}/{}", c["name"]);
        assert_eq!(
            tag,
            env!("CARGO_PKG_VERSION"),
            "{what}: image tag is the crate version"
        );
        let args = strings(&c["args"]);
        let (proxy, health) = check_run_args(&args, &what);
        if let Some(p) = proxy {
            assert_eq!(
                port_named(c, "proxy"),
                Some(p),
                "{what}: containerPort proxy = --listen"
            );
        }
        assert_eq!(
            port_named(c, "health"),
            health,
            "{what}: containerPort health = --health"
        );
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let g = &c[probe]["httpGet"];
            assert_eq!(g["path"], path, "{what}: {probe}");
            assert_eq!(
                g["port"], "health",
                "{what}: {probe} on the health listener"
            );
        }
        if let Some(config) = arg(&args, "--config") {
            let mount = c["volumeMounts"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["mountPath"] == config))
                .unwrap_or_else(|| panic!("{what}: nothing mounted at --config {config}"));
            let volume = pod["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
                .unwrap_or_else(|| panic!("{what}: no volume {}", mount["name"]));
            assert!(
                volume["configMap"]["name"].is_string(),
                "{what}: config from a ConfigMap"
            );
            for item in volume["configMap"]["items"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let p = item["path"].as_str().unwrap_or("");
                assert!(
                    p == "org.yaml" || p.starts_with("teams/") || p.starts_with("branches/"),
                    "{what}: {p} is not in the config layout"
                );
            }
        }
        for env in arg(&args, "--source")
            .into_iter()
            .chain(arg(&args, "--publish"))
        {
            let var = env.trim_start_matches("$(").trim_end_matches(')');
            let defined = c["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["name"] == var));
            assert!(
                env.starts_with("etcd://") || defined,
                "{what}: {env} is neither an etcd:// address nor a defined env var"
            );
        }
        let ms = |flag: &str, default: &str| -> u64 {
            arg(&args, flag)
                .unwrap_or(default)
                .parse()
                .unwrap_or_else(|_| panic!("{what}: {flag}"))
        };
        // the binary's defaults (`microstax run --help`) when a flag is absent
        let drain =
            (ms("--drain-grace-ms", "5000") + ms("--drain-timeout-ms", "10000")).div_ceil(1000);
        let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            .as_u64()
            .unwrap_or(0);
        assert!(
            pre_stop + drain < grace,
            "{what}: preStop {pre_stop} s + drain {drain} s must end before the grace period {grace} s"
        );
        let requests = &c["resources"]["requests"];
        assert!(
            requests["cpu"].is_string() && requests["memory"].is_string(),
            "{what}: requests"
        );
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{what}: memory limit"
        );
    }
    found
}

#[test]
fn every_manifest_validates_and_agrees_with_the_binary() {
    let docs = manifests();
    let files: BTreeSet<PathBuf> = docs.iter().map(|(f, _)| f.clone()).collect();
    validate(&files.into_iter().collect::<Vec<_>>());
    let mut containers = 0;
    let mut kinds = BTreeSet::new();
    for (file, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or("").to_string();
        let what = format!("{}:{kind}/{}", file.display(), doc["metadata"]["name"]);
        if let Some(pod) = doc["spec"]["template"]["spec"].as_object() {
            containers += check_pod(&Value::Object(pod.clone()), &what);
        }
        kinds.insert(kind);
    }
    assert!(containers >= 3, "gateway, planner and sidecar containers");
    for k in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "StatefulSet",
    ] {
        assert!(kinds.contains(k), "no {k} in deploy/kubernetes");
    }
}

/// The JSON array of a Dockerfile instruction in exec form.
fn exec_form(dockerfile: &str, instruction: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let line = joined
        .lines()
        .rfind(|l| l.starts_with(instruction))
        .unwrap_or_else(|| panic!("no {instruction}"));
    let json = &line[line
        .find('[')
        .unwrap_or_else(|| panic!("{instruction} not in exec form"))..];
    serde_json::from_str(json).expect("exec form is a JSON array")
}

/// The lines of a Dockerfile or shell script that are not comments.
fn code_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect()
}

#[test]
fn the_dockerfile_agrees_with_the_binary() {
    let path: &Path = &root().join("Dockerfile");
    let text = std::fs::read_to_string(path).expect("Dockerfile");
    assert_eq!(
        exec_form(&text, "ENTRYPOINT"),
        vec!["/usr/local/bin/microstax"]
    );
    let cmd = exec_form(&text, "CMD");
    let (proxy, health) = check_run_args(&cmd, "Dockerfile CMD");
    let exposed: BTreeSet<u16> = text
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| {
            l.split_whitespace()
                .map(|p| p.parse::<u16>().expect("port"))
        })
        .collect();
    let bound: BTreeSet<u16> = proxy.into_iter().chain(health).collect();
    assert_eq!(
        exposed, bound,
        "EXPOSE lists exactly the ports CMD binds beyond loopback"
    );
    let check = exec_form(&text, "HEALTHCHECK");
    assert_eq!(
        check[..2],
        ["/usr/local/bin/microstax", "probe"],
        "{check:?}"
    );
    let probe_flags = flags("probe");
    for a in check.iter().filter(|a| a.starts_with("--")) {
        assert!(
            probe_flags.contains(a.as_str()),
            "{a} is not a flag of microstax probe"
        );
    }
    let probed = addr(arg(&check, "--addr").expect("--addr"));
    assert_eq!(
        Some(probed.port()),
        health,
        "HEALTHCHECK asks the health listener"
    );
    let user = text
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("USER");
    assert!(
        !matches!(user.split(':').next(), Some("0" | "root")),
        "the runtime user is not root"
    );
    assert!(
        text.contains("cargo build --release --locked --bin microstax"),
        "the image builds as CI does: --locked against Cargo.lock"
    );
    let stages = text.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "multi-stage: build and runtime");
    // the profile-guided build: the build stage turns it on, installs what the script runs,
    // and runs the script, which exists, parses, and builds as CI does with the profile flags
    let build_stage = code_lines(text.split("\nFROM ").nth(1).expect("a build stage"));
    let at = |needle: &str| build_stage.iter().position(|l| l.contains(needle));
    let script = "bench/scripts/pgo-build.sh";
    let (Some(arg), Some(run)) = (at("ARG PGO=1"), at(&format!("{script} /out/microstax"))) else {
        panic!("the build stage declares ARG PGO=1 and runs {script}")
    };
    assert!(arg < run, "ARG PGO comes before the step that reads it");
    for install in ["wrk nghttp2-client", "rustup component add llvm-tools"] {
        assert!(
            at(install).is_some_and(|i| i < run),
            "the build stage installs {install} before the PGO build"
        );
    }
    let path = root().join(script);
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("bash");
    assert!(
        syntax.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path)
        .expect("pgo script")
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "{script} is executable");
    let body = std::fs::read_to_string(&path).expect("pgo script");
    let code = code_lines(&body);
    for needed in [
        "-Cprofile-generate=",
        "microstax-bench\" compare",
        "\" merge -o",
        "-Cprofile-use=",
        "cargo build --release --locked --bin microstax",
    ] {
        assert!(
            code.iter().any(|l| l.contains(needed)),
            "{script} runs {needed}"
        );
    }
}
