//! `microstax dev`: the local development proxy. Requests for the services named by `--local`
//! go to the developer's local processes; every other request goes to the shared environment's
//! gateway (`--remote`). Both carry the branch context (`x-microstax-branch`, plus the token
//! header when `--token` is given) unless the request already has one, so outbound calls the
//! local service sends back through this proxy (`HTTP_PROXY=http://LISTEN`, absolute-form
//! requests) stay on the branch too. Every answer says where it was served
//! (`x-microstax-dev: local` or `remote`), and each request is printed as one line.

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

#[derive(clap::Args, Clone)]
pub(crate) struct DevArgs {
    /// The branch this laptop works on.
    #[arg(long)]
    branch: String,
    /// A service served locally: SERVICE=HOST:PORT (repeat for several). A request is for
    /// SERVICE when its host, or the first label of it, is SERVICE.
    #[arg(long = "local", value_name = "SERVICE=ADDR", value_parser = parse_local)]
    locals: Vec<(String, SocketAddr)>,
    /// The shared environment's gateway, http://HOST:PORT: everything not local goes there.
    #[arg(long)]
    remote: String,
    /// Listen address (point the browser and the local service's HTTP_PROXY here).
    #[arg(long, default_value = "127.0.0.1:15000")]
    listen: SocketAddr,
    /// A token the gateway requires, sent in --token-header with every request that has none.
    #[arg(long)]
    token: Option<String>,
    /// The header that carries --token.
    #[arg(long, default_value = "x-microstax-token")]
    token_header: String,
    /// Longest wait for a local or remote answer's head, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
}

fn parse_local(s: &str) -> Result<(String, SocketAddr), String> {
    let (svc, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected SERVICE=HOST:PORT"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("`{s}`: {addr} is not HOST:PORT: {e}"))?;
    if svc.is_empty() {
        return Err(format!("`{s}`: the service name is empty"));
    }
    Ok((svc.to_ascii_lowercase(), addr))
}

type Body = BoxBody<Bytes, hyper::Error>;

struct Dev {
    locals: BTreeMap<String, SocketAddr>,
    remote: Uri,
    branch: HeaderValue,
    token: Option<(HeaderName, HeaderValue)>,
    client: Client<HttpConnector, Incoming>,
    timeout: Duration,
}

const BRANCH: HeaderName = HeaderName::from_static("x-microstax-branch");
const SERVED: HeaderName = HeaderName::from_static("x-microstax-dev");

/// Run the dev proxy until a signal.
pub(crate) async fn run(args: DevArgs) -> Result<()> {
    let remote: Uri = args
        .remote
        .parse()
        .with_context(|| format!("--remote {}", args.remote))?;
    anyhow::ensure!(
        remote.scheme_str() == Some("http") && remote.authority().is_some(),
        "--remote must be http://HOST:PORT, got {}",
        args.remote
    );
    let token = match &args.token {
        Some(t) => Some((
            HeaderName::try_from(args.token_header.as_str()).context("--token-header")?,
            HeaderValue::try_from(t.as_str()).context("--token")?,
        )),
        None => None,
    };
    let dev = Arc::new(Dev {
        locals: args.locals.iter().cloned().collect(),
        branch: HeaderValue::try_from(args.branch.as_str()).context("--branch")?,
        remote,
        token,
        client: Client::builder(TokioExecutor::new()).build_http(),
        timeout: Duration::from_millis(args.timeout_ms),
    });
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local: Vec<String> = dev.locals.iter().map(|(s, a)| format!("{s}={a}")).collect();
    println!(
        "microstax dev: proxy on http://{}, remote {} (branch {}, local: {})",
        listener.local_addr()?,
        args.remote.trim_end_matches('/'),
        args.branch,
        local.join(", ")
    );
    let shutdown = crate::serve::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => continue,
            },
            () = &mut shutdown => return Ok(()),
        };
        let dev = dev.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let dev = dev.clone();
                async move { Ok::<_, std::convert::Infallible>(dev.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Headers meant for one hop only, never forwarded.
const HOP: [&str; 6] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "te",
    "upgrade",
];

impl Dev {
    /// The request's host without port: from an absolute-form target, else the Host header.
    fn host(req: &Request<Incoming>) -> Option<String> {
        let h = match req.uri().host() {
            Some(h) => h.to_string(),
            None => {
                let v = req.headers().get(http::header::HOST)?.to_str().ok()?;
                v.rsplit_once(':')
                    .filter(|(_, p)| p.parse::<u16>().is_ok())
                    .map_or(v, |(h, _)| h)
                    .to_string()
            }
        };
        Some(h.to_ascii_lowercase())
    }

    fn local_for(&self, host: &str) -> Option<(&str, SocketAddr)> {
        let first = host.split('.').next().unwrap_or(host);
        self.locals
            .get_key_value(host)
            .or_else(|| self.locals.get_key_value(first))
            .map(|(s, a)| (s.as_str(), *a))
    }

    async fn handle(&self, mut req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let host = Self::host(&req).unwrap_or_default();
        let method = req.method().clone();
        let path = req
            .uri()
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        let (served, target) = match self.local_for(&host) {
            Some((_, addr)) => ("local", format!("http://{addr}{path}")),
            None => (
                "remote",
                format!("{}{path}", self.remote.to_string().trim_end_matches('/')),
            ),
        };
        let resp = match target.parse::<Uri>() {
            Ok(uri) => {
                self.prepare(&mut req, &host, uri);
                self.send(req).await
            }
            Err(e) => error(
                StatusCode::BAD_REQUEST,
                &format!("bad target {target}: {e}"),
            ),
        };
        let mut resp = resp;
        resp.headers_mut()
            .insert(SERVED, HeaderValue::from_static(served));
        println!(
            "{served:<6} {host} {method} {path} -> {} ({} ms)",
            resp.status().as_u16(),
            start.elapsed().as_millis()
        );
        resp
    }

    /// Point `req` at `uri`, keep its host, attach the branch context it lacks.
    fn prepare(&self, req: &mut Request<Incoming>, host: &str, uri: Uri) {
        let original_host = req.headers().get(http::header::HOST).cloned();
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        for name in HOP {
            h.remove(name);
        }
        if original_host.is_none() {
            if let Ok(v) = HeaderValue::try_from(host) {
                h.insert(http::header::HOST, v);
            }
        }
        let has_context = h.contains_key(&BRANCH)
            || h.get_all("baggage").iter().any(|v| {
                v.to_str().is_ok_and(|s| {
                    s.split(',')
                        .any(|m| m.trim().starts_with("microstax-branch="))
                })
            });
        if !has_context {
            h.insert(BRANCH, self.branch.clone());
        }
        if let Some((name, value)) = &self.token {
            if !h.contains_key(name) {
                h.insert(name.clone(), value.clone());
            }
        }
    }

    async fn send(&self, req: Request<Incoming>) -> Response<Body> {
        let target = req.uri().clone();
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => resp.map(BodyExt::boxed),
            Ok(Err(e)) => error(StatusCode::BAD_GATEWAY, &format!("{target}: {e}")),
            Err(_) => error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("{target}: no answer within {:?}", self.timeout),
            ),
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
