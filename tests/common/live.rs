//! `microstax run` as a child process on a config directory of its own, with three upstreams
//! (`base`, `v1`, `v2`) and the admin token [`TOKEN`]: what the live-update and control-plane
//! tests share.

use super::*;
use http::Method;
use std::path::{Path, PathBuf};

/// The admin token the binary is started with.
pub const TOKEN: &str = "s3cret-token";
/// How long a change may take to show.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The org layer: one service `api` on `base`, with the route debug header on.
pub fn org(base: SocketAddr) -> String {
    format!("kind: org\nrouting: {{debug_header: true}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{base}\"]\n")
}

/// A branch layer overriding `api`'s endpoint, plus `extra` text.
pub fn branch(parent: &str, endpoint: SocketAddr, extra: &str) -> String {
    format!("parent: {parent}\nservices:\n  api:\n    endpoints: [\"{endpoint}\"]\n{extra}")
}

/// Lay out `root` as a config directory.
pub fn write_config(root: &Path, org_text: &str, branches: &[(&str, String)]) {
    std::fs::create_dir_all(root.join("branches")).expect("mkdir");
    std::fs::write(root.join("org.yaml"), org_text).expect("write org");
    for (name, text) in branches {
        std::fs::write(root.join("branches").join(format!("{name}.yaml")), text)
            .expect("write branch");
    }
}

/// A running binary and what it was started on.
pub struct Live {
    pub dir: tempfile::TempDir,
    pub child: Option<tokio::process::Child>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub client: TestClient,
    pub base: Upstream,
    pub v1: Upstream,
    pub v2: Upstream,
}

/// The upstreams a layout writes a config for.
pub struct Ups {
    pub base: SocketAddr,
    pub v1: SocketAddr,
    pub v2: SocketAddr,
}

impl Live {
    /// Start `workers` workers on the config laid out by `layout` in a temp dir; `config_path`
    /// overrides the path given to `--config` (relative to the temp dir).
    pub async fn start_in(
        layout: impl FnOnce(&Path, &Ups),
        config_path: Option<&str>,
        workers: usize,
    ) -> Live {
        let base = Upstream::start("base").await;
        let v1 = Upstream::start("v1").await;
        let v2 = Upstream::start("v2").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let ups = Ups {
            base: base.addr,
            v1: v1.addr,
            v2: v2.addr,
        };
        layout(dir.path(), &ups);
        let cfg: PathBuf =
            config_path.map_or_else(|| dir.path().to_path_buf(), |p| dir.path().join(p));
        let cfg = cfg.to_str().expect("utf8").to_string();
        let workers = workers.to_string();
        let (child, proxy, admin) = spawn_bin(
            &[
                "run",
                "--config",
                &cfg,
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--workers",
                &workers,
            ],
            &[("MICROSTAX_ADMIN_TOKEN", TOKEN)],
        )
        .await;
        Live {
            dir,
            child: Some(child),
            proxy,
            admin,
            client: h1_client(),
            base,
            v1,
            v2,
        }
    }

    /// The config directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Which upstream answers a request for `api` in `branch`.
    pub async fn upstream_for(&self, branch: &str) -> String {
        let r = get(
            &self.client,
            self.proxy,
            "/",
            &[("host", "api"), ("x-microstax-branch", branch)],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.upstream()
    }

    /// Poll until requests for `branch` reach `want`.
    pub async fn wait_route(&self, branch: &str, want: &str) {
        wait_for(DEADLINE, &format!("{branch} -> {want}"), || async {
            (self.upstream_for(branch).await == want).then_some(())
        })
        .await;
    }

    /// An admin request, with the bearer `token` when given.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut h = vec![];
        if let Some(a) = &auth {
            h.push(("authorization", a.as_str()));
        }
        send(&self.client, method, self.admin, path, &h, body).await
    }

    /// Stop the binary by its pid and wait for it.
    pub async fn stop(mut self) {
        if let Some(c) = self.child.take() {
            stop_bin(c).await;
        }
    }
}
