//! The admin API, on its own listener (loopback by default). Reads are open; writes
//! (`PUT`/`DELETE /branches/{name}`) need `Authorization: Bearer <token>`, compared in constant
//! time, and are validated exactly like files. Errors are JSON with a message; unknown paths
//! are 404.

use crate::control::{Change, ChangeSource, ControlPlane};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use microstax_config::{ConfigError, LayerKind};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

/// Largest accepted request body (a layer document).
const MAX_BODY: usize = 1 << 20;

/// Extra read endpoints served from planner logic the admin module does not own (plan,
/// explain): `(path, handler)`; the handler gets the query string and returns JSON or an error.
pub type Extra = Arc<
    dyn Fn(&str, &ControlPlane) -> Option<Result<serde_json::Value, (StatusCode, String)>>
        + Send
        + Sync,
>;

/// What the admin API serves.
pub struct AdminState {
    /// The control plane (config, table, writes).
    pub control: Arc<ControlPlane>,
    /// The metrics registry rendered at `/metrics`.
    pub registry: prometheus::Registry,
    /// Bearer token for writes; `None` disables writes.
    pub token: Option<Vec<u8>>,
    /// Set once the proxy listeners are bound (for `/readyz`).
    pub serving: Arc<AtomicBool>,
    /// Handler for `GET /explain` and `GET /plan` (path without the leading slash, query).
    pub extra: Option<Extra>,
}

type Reply = Response<Full<Bytes>>;

/// Serve the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let Ok((stream, _)) = acc else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            () = &mut shutdown => return,
        }
    }
}

fn json(status: StatusCode, v: &serde_json::Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

fn config_error(status: StatusCode, e: &ConfigError) -> Reply {
    let diags: Vec<serde_json::Value> = e
        .diagnostics()
        .iter()
        .map(|d| serde_json::json!({"file": &*d.file, "line": d.line, "field": d.field, "reason": d.reason}))
        .collect();
    json(
        status,
        &serde_json::json!({ "error": e.to_string(), "diagnostics": diags }),
    )
}

async fn handle(state: &AdminState, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (Method::GET, "/readyz") => {
            let ready = state.control.is_ready() && state.serving.load(Ordering::Acquire);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &serde_json::json!({"ready": ready}))
        }
        (Method::GET, "/metrics") => metrics(&state.registry),
        (Method::GET, "/routes") => json(StatusCode::OK, &state.control.table().await.to_json()),
        (Method::GET, "/branches") => list_branches(&state.control),
        (Method::GET, p) if p.starts_with("/branches/") => {
            get_branch(&state.control, &p["/branches/".len()..])
        }
        (Method::PUT, p) if p.starts_with("/branches/") => {
            if let Err(r) = authorize(state, &req) {
                return *r;
            }
            let name = p["/branches/".len()..].to_string();
            put_branch(&state.control, &name, req).await
        }
        (Method::DELETE, p) if p.starts_with("/branches/") => {
            if let Err(r) = authorize(state, &req) {
                return *r;
            }
            delete_branch(&state.control, &p["/branches/".len()..]).await
        }
        (Method::GET, p) => match state
            .extra
            .as_ref()
            .and_then(|x| x(&format!("{}?{query}", &p[1..]), &state.control))
        {
            Some(Ok(v)) => json(StatusCode::OK, &v),
            Some(Err((status, msg))) => error(status, &msg),
            None => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {p}")),
        },
        (_, p) if p.starts_with("/branches") => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use GET, PUT or DELETE")
        }
        (_, p) => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {p}")),
    }
}

/// Why a write is refused, if it is.
fn authorize(state: &AdminState, req: &Request<Incoming>) -> Result<(), Box<Reply>> {
    let Some(token) = &state.token else {
        let msg = "admin writes are disabled: no token is configured";
        return Err(Box::new(error(StatusCode::FORBIDDEN, msg)));
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if bool::from(given.ct_eq(token.as_slice())) {
        Ok(())
    } else {
        let msg = "a valid bearer token is required for writes";
        Err(Box::new(error(StatusCode::UNAUTHORIZED, msg)))
    }
}

fn metrics(registry: &prometheus::Registry) -> Reply {
    let mut buf = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut buf) {
        Ok(()) => {
            let mut r = Response::new(Full::new(Bytes::from(buf)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding metrics failed: {e}"),
        ),
    }
}

fn list_branches(control: &ControlPlane) -> Reply {
    let cfg = control.config();
    let branches: Vec<serde_json::Value> = cfg
        .layers()
        .filter(|l| l.kind == LayerKind::Branch)
        .map(|l| {
            let parent = l.parent.and_then(|p| cfg.layer(p)).map(|p| p.name.clone());
            serde_json::json!({"name": l.name, "parent": parent, "file": &*l.doc.file})
        })
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "branches": branches }))
}

fn get_branch(control: &ControlPlane, name: &str) -> Reply {
    let cfg = control.config();
    let Some(id) = cfg.branch_id(name) else {
        return error(StatusCode::NOT_FOUND, &format!("no branch named `{name}`"));
    };
    let Some(layer) = cfg.layer(id) else {
        return error(StatusCode::NOT_FOUND, &format!("no branch named `{name}`"));
    };
    let lineage: Vec<String> = cfg
        .lineage(id)
        .iter()
        .filter_map(|&i| cfg.layer(i))
        .map(|l| l.label.to_string())
        .collect();
    let doc = serde_json::to_value(&layer.doc.doc).unwrap_or(serde_json::Value::Null);
    json(
        StatusCode::OK,
        &serde_json::json!({"name": name, "file": &*layer.doc.file, "lineage": lineage, "layer": doc}),
    )
}

async fn put_branch(control: &ControlPlane, name: &str, req: Request<Incoming>) -> Reply {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("cannot read the body (at most {MAX_BODY} bytes): {e}"),
            )
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not UTF-8");
    };
    let source = format!("api:PUT /branches/{name}");
    let mut docs =
        match microstax_config::parse_text(&source, text, Some(LayerKind::Branch), Some(name)) {
            Ok(d) => d,
            Err(e) => return config_error(StatusCode::BAD_REQUEST, &e),
        };
    if docs.len() != 1 {
        return error(
            StatusCode::BAD_REQUEST,
            "send exactly one branch layer document",
        );
    }
    let doc = docs.remove(0);
    if doc.name() != name {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "the body names branch `{}` but the path names `{name}`",
                doc.name()
            ),
        );
    }
    let existed = control.config().branch_id(name).is_some();
    match control
        .apply(vec![Change::Upsert(Box::new(doc))], ChangeSource::Api)
        .await
    {
        Ok(a) => {
            let status = if existed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            json(
                status,
                &serde_json::json!({"branch": name, "generation": a.generation}),
            )
        }
        Err(e) => config_error(StatusCode::UNPROCESSABLE_ENTITY, &e),
    }
}

async fn delete_branch(control: &ControlPlane, name: &str) -> Reply {
    if control.config().branch_id(name).is_none() {
        return error(StatusCode::NOT_FOUND, &format!("no branch named `{name}`"));
    }
    match control
        .apply(
            vec![Change::Remove {
                name: name.to_string(),
            }],
            ChangeSource::Api,
        )
        .await
    {
        Ok(a) => json(
            StatusCode::OK,
            &serde_json::json!({"deleted": name, "generation": a.generation}),
        ),
        Err(e) => config_error(StatusCode::CONFLICT, &e),
    }
}
