//! The embedded demo: a config with four services, a team layer and three branches, served by
//! in-process demo upstreams that answer with JSON naming the instance that answered and the
//! branch context it received. `web` calls `orders` and `payments` back through the proxy, so
//! one request shows a whole tree.

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use microstax_config::{Config, LayerKind, ParsedDoc};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The demo config files (path relative to the config dir, text), as in the repository's
/// `demo/`: a valid config with every endpoint on a fixed 127.0.0.1 port, so `demo/` works
/// as written (`microstax plan --config demo`). The embedded demo moves each endpoint to a
/// port of its own; the layer that declares an endpoint names its instance.
const FILES: [(&str, &str); 5] = [
    ("org.yaml", include_str!("../demo/org.yaml")),
    (
        "teams/payments-team.yaml",
        include_str!("../demo/teams/payments-team.yaml"),
    ),
    (
        "branches/feature-a.yaml",
        include_str!("../demo/branches/feature-a.yaml"),
    ),
    (
        "branches/feature-b.yaml",
        include_str!("../demo/branches/feature-b.yaml"),
    ),
    (
        "branches/pay-fix.yaml",
        include_str!("../demo/branches/pay-fix.yaml"),
    ),
];

/// What `--write-config` did.
pub struct Written {
    /// Files written.
    pub written: usize,
    /// Files that already held the demo text.
    pub unchanged: usize,
}

/// Write the demo config into `dir`. Files already holding the demo text are left alone; a file
/// holding anything else is a person's edit and is overwritten only with `force`: without it,
/// nothing at all is written.
pub fn write_config(dir: &Path, force: bool) -> Result<Written> {
    let mut plan = Vec::new();
    let mut edited = Vec::new();
    for (rel, text) in FILES {
        let path = dir.join(rel);
        match std::fs::read(&path) {
            Ok(old) if old == text.as_bytes() => continue,
            Ok(_) => edited.push(path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        plan.push((path, text));
    }
    if !edited.is_empty() && !force {
        anyhow::bail!(
            "not overwriting files that differ from the demo: {} (pass --force to overwrite them)",
            edited.join(", ")
        );
    }
    let written = plan.len();
    for (path, text) in plan {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Written {
        written,
        unchanged: FILES.len() - written,
    })
}

/// Parse the demo files with `edit` applied to each text.
fn demo_config(edit: impl Fn(&str) -> String) -> Result<Config> {
    let mut docs: Vec<ParsedDoc> = Vec::new();
    for (rel, text) in FILES {
        let kind = match rel.split('/').next() {
            Some("teams") => LayerKind::Team,
            Some("branches") => LayerKind::Branch,
            _ => LayerKind::Org,
        };
        let stem = Path::new(rel).file_stem().and_then(|s| s.to_str());
        docs.extend(microstax_config::parse_text(
            &format!("demo/{rel}"),
            &edit(text),
            Some(kind),
            stem,
        )?);
    }
    Ok(Config::build(docs)?)
}

/// Bind one loopback listener per demo instance and return the config pointing at them.
pub async fn embedded() -> Result<(Config, BTreeMap<SocketAddr, TcpListener>)> {
    let fixed = demo_config(str::to_string)?;
    let mut moved: Vec<(String, String)> = Vec::new();
    let mut listeners = BTreeMap::new();
    for addr in instances(&fixed).into_keys() {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a demo upstream")?;
        let a = l.local_addr()?;
        // endpoints are written quoted: the quotes keep `:9101` from matching inside `:91010`
        moved.push((format!("\"{addr}\""), format!("\"{a}\"")));
        listeners.insert(a, l);
    }
    let config = demo_config(|text| {
        moved
            .iter()
            .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
    })?;
    Ok((config, listeners))
}

/// Which (service, instance) each endpoint of `config` stands for: the layer that declares an
/// endpoint names the instance (`baseline`, `team/payments-team`, `branch/feature-a`, ...).
pub fn instances(config: &Config) -> BTreeMap<SocketAddr, (String, String)> {
    let mut out = BTreeMap::new();
    for layer in config.layers() {
        for (svc, s) in &layer.doc.doc.services {
            for e in s.endpoints.iter().flatten().chain(s.local.iter()) {
                if let Ok(ep) = microstax_config::Endpoint::parse(e) {
                    if let Ok(addr) = ep.0.parse::<SocketAddr>() {
                        out.entry(addr)
                            .or_insert_with(|| (svc.clone(), layer.label.to_string()));
                    }
                }
            }
        }
    }
    out
}

/// Start a demo upstream for every endpoint of `config`, on the given pre-bound listeners or by
/// binding the endpoint's address. `proxy` is where `web` sends its calls.
pub async fn start_upstreams(
    config: &Config,
    mut listeners: BTreeMap<SocketAddr, TcpListener>,
    proxy: SocketAddr,
) -> Result<()> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let context_header: Arc<str> = Arc::from(config.settings.context.header.as_str());
    for (addr, (service, instance)) in instances(config) {
        let listener = match listeners.remove(&addr) {
            Some(l) => l,
            None => TcpListener::bind(addr).await.with_context(|| {
                format!("binding demo upstream {service} ({instance}) on {addr}")
            })?,
        };
        let app = Arc::new(DemoApp {
            service,
            instance,
            proxy,
            client: client.clone(),
            header: context_header.clone(),
            extra: serde_json::Map::new(),
        });
        tokio::spawn(serve_app(listener, app));
    }
    Ok(())
}

struct DemoApp {
    service: String,
    instance: String,
    proxy: SocketAddr,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    /// The branch header to propagate (the config's `context.header`).
    header: Arc<str>,
    /// More fields of every answer (a process instance's pid and database).
    extra: serde_json::Map<String, serde_json::Value>,
}

/// `microstax demo-service`: one demo upstream as a process of its own, as the process executor
/// starts the demo's branch-local instances.
#[derive(clap::Args, Clone, Debug)]
pub struct ServiceArgs {
    /// The service it answers for.
    #[arg(long)]
    service: String,
    /// The instance it names in its answers (e.g. `branch/feature-a`).
    #[arg(long)]
    instance: String,
    /// The instance's content address (short form), named in its answers as `instance_id`.
    #[arg(long)]
    id: Option<String>,
    /// The loopback port to listen on.
    #[arg(long)]
    port: u16,
    /// Where `web` sends its calls (default: `$UPSTREAM_VIA`, else http://127.0.0.1:8080).
    #[arg(long)]
    proxy: Option<String>,
    /// The branch header to propagate.
    #[arg(long, default_value = "x-microstax-branch")]
    context_header: String,
}

/// Serve one demo upstream until the process is stopped. Answers also name the process's pid
/// and, when it has one, the `DATABASE_URL` it was given (a branch's isolated store).
pub async fn serve_service(args: ServiceArgs) -> Result<()> {
    let via = args
        .proxy
        .or_else(|| std::env::var("UPSTREAM_VIA").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let proxy: SocketAddr = via
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("--proxy {via}: not http://IP:PORT"))?;
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, args.port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{}", args.port))?;
    let mut extra = serde_json::Map::new();
    if let Some(id) = args.id {
        extra.insert("instance_id".into(), id.into());
    }
    extra.insert("pid".into(), std::process::id().into());
    if let Ok(db) = std::env::var("DATABASE_URL") {
        extra.insert("database_url".into(), db.into());
    }
    let app = Arc::new(DemoApp {
        service: args.service,
        instance: args.instance,
        proxy,
        client: Client::builder(TokioExecutor::new()).build_http(),
        header: Arc::from(args.context_header.as_str()),
        extra,
    });
    serve_app(listener, app).await;
    Ok(())
}

async fn serve_app(listener: TcpListener, app: Arc<DemoApp>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.answer(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

impl DemoApp {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let ctx_header = get(&self.header);
        let baggage = get("baggage");
        let mut body = serde_json::json!({
            "service": self.service,
            "instance": self.instance,
            "method": req.method().as_str(),
            "path": req.uri().path(),
            "context": {
                "branch_header": ctx_header,
                "baggage": baggage,
            },
        });
        for (k, v) in &self.extra {
            body[k] = v.clone();
        }
        if self.service == "web" {
            let mut calls = serde_json::Map::new();
            for callee in ["orders", "payments"] {
                calls.insert(
                    callee.to_string(),
                    self.call(callee, ctx_header.as_deref(), baggage.as_deref())
                        .await,
                );
            }
            body["calls"] = serde_json::Value::Object(calls);
        }
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }

    /// Call `service` through the proxy, propagating the context this request carried.
    async fn call(
        &self,
        service: &str,
        branch: Option<&str>,
        baggage: Option<&str>,
    ) -> serde_json::Value {
        let uri = format!("http://{}/", self.proxy);
        let mut b = Request::get(uri).header(header::HOST, service);
        if let Some(v) = branch {
            b = b.header(&*self.header, v);
        }
        if let Some(v) = baggage {
            b = b.header("baggage", v);
        }
        let Ok(req) = b.body(Empty::new()) else {
            return serde_json::json!({"error": "bad request"});
        };
        let resp = match self.client.request(req).await {
            Ok(r) => r,
            Err(e) => return serde_json::json!({"error": e.to_string()}),
        };
        let status = resp.status();
        let bytes = match resp.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return serde_json::json!({"error": e.to_string()}),
        };
        if status != StatusCode::OK {
            return serde_json::json!({"status": status.as_u16(), "body": String::from_utf8_lossy(&bytes)});
        }
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::json!({"body": String::from_utf8_lossy(&bytes)}))
    }
}

/// The curl lines printed when the demo starts.
pub fn curl_lines(listen: SocketAddr) -> String {
    let a = listen;
    [
        format!("curl -s http://{a}/ -H 'Host: web'                                   # baseline tree"),
        format!("curl -s http://{a}/ -H 'Host: web' -H 'x-microstax-branch: feature-a'  # orders from feature-a"),
        format!("curl -s http://{a}/ -H 'Host: web' -H 'baggage: microstax-branch=feature-b'  # lineage feature-b -> feature-a"),
        format!("curl -s http://{a}/web/ -b 'microstax-branch=pay-fix'                # payments from team/payments-team"),
        format!("curl -s http://{a}/web/ -H 'Host: feature-b.preview.localhost'       # branch from a host pattern"),
        format!("curl -si http://{a}/orders/ -H 'x-microstax-branch: no-such-branch'  # unknown branch: baseline"),
    ]
    .join("\n")
}
