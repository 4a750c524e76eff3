//! `GET /branches`, `GET|PUT|DELETE /branches/{name}`. The name in the path is
//! percent-decoded (`team%2Ffoo` is `team/foo`) and checked against the branch name rules
//! before anything else. A body that is not a valid branch layer (bad YAML, an unknown field,
//! an empty body, a name other than the path's) answers `422` with diagnostics; every refused
//! write is logged and counted in `microstax_config_rejected_total{source="api"}`.

use super::json::config_error_json;
use super::query::decode;
use super::{error, json, AdminState, Reply};
use crate::control::{Change, ChangeSource, ControlPlane};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use microstax_config::{names, ConfigError, Diagnostic, LayerKind};
use std::sync::Arc;

/// The decoded, valid branch name of a request path, or the refusal (counted).
fn branch_name(control: &ControlPlane, raw: &str, source: &str) -> Result<String, Box<Reply>> {
    let refuse = |reason: String| {
        let e = ConfigError::Invalid {
            diagnostics: vec![Diagnostic {
                file: Arc::from(source),
                line: 0,
                field: "name".into(),
                reason,
            }],
        };
        control.reject(&e, ChangeSource::Api);
        Box::new(json(StatusCode::BAD_REQUEST, &config_error_json(&e)))
    };
    let name = decode(raw, false).map_err(|e| refuse(e.to_string()))?;
    if let Some(why) = names::branch_name_error(&name) {
        return Err(refuse(format!("`{name}`: {why}")));
    }
    Ok(name)
}

fn unprocessable(control: &ControlPlane, e: &ConfigError) -> Reply {
    control.reject(e, ChangeSource::Api);
    json(StatusCode::UNPROCESSABLE_ENTITY, &config_error_json(e))
}

fn one(source: &str, line: u32, field: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        diagnostics: vec![Diagnostic {
            file: Arc::from(source),
            line,
            field: field.into(),
            reason,
        }],
    }
}

/// `GET /branches`: every branch with its parent and file.
pub(super) fn list(
    control: &ControlPlane,
    runtime: Option<&crate::environments::Runtime>,
) -> Reply {
    let cfg = control.config();
    let branches: Vec<serde_json::Value> = cfg
        .layers()
        .filter(|l| l.kind == LayerKind::Branch)
        .map(|l| {
            let parent = l.parent.and_then(|p| cfg.layer(p)).map(|p| p.name.clone());
            let mut v = serde_json::json!({"name": l.name, "parent": parent, "file": &*l.doc.file});
            if let Some(why) = control.held(&l.name) {
                v["rejected"] = why.into();
            }
            if let Some(rt) = runtime {
                if let Some(t) = rt.expires_at(&l.name) {
                    let secs = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    v["expires_at"] = secs.into();
                }
                if rt.is_dormant(&l.name) {
                    v["dormant"] = true.into();
                }
            }
            v
        })
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "branches": branches }))
}

/// `GET /branches/{name}`: the layer as served, its lineage, and why its file is rejected if
/// it is (the last good version is what serves).
pub(super) fn get(control: &ControlPlane, raw: &str) -> Reply {
    let Ok(name) = decode(raw, false) else {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed percent escape in the name",
        );
    };
    let cfg = control.config();
    let Some(layer) = cfg.branch_id(&name).and_then(|id| cfg.layer(id)) else {
        return error(StatusCode::NOT_FOUND, &format!("no branch named `{name}`"));
    };
    let id = cfg.branch_id(&name).unwrap_or(0);
    let lineage: Vec<String> = cfg
        .lineage(id)
        .iter()
        .filter_map(|&i| cfg.layer(i))
        .map(|l| l.label.to_string())
        .collect();
    let doc = serde_json::to_value(&layer.doc.doc).unwrap_or(serde_json::Value::Null);
    let mut v = serde_json::json!({"name": name, "file": &*layer.doc.file, "lineage": lineage, "layer": doc});
    if let Some(why) = control.held(&name) {
        v["rejected"] = why.into();
    }
    json(StatusCode::OK, &v)
}

/// `PUT /branches/{name}`: create (201) or replace (200) a branch layer.
pub(super) async fn put(state: &AdminState, raw: &str, req: Request<Incoming>) -> Reply {
    let control = &state.control;
    let source = format!("api:PUT /branches/{raw}");
    let name = match branch_name(control, raw, &source) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let source = format!("api:PUT /branches/{name}");
    let max = state.options.max_body;
    let body = Limited::new(req.into_body(), max).collect();
    let body = match tokio::time::timeout(state.options.body_timeout, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("cannot read the body (at most {max} bytes): {e}"),
            )
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body did not arrive within {:?}",
                    state.options.body_timeout
                ),
            )
        }
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return unprocessable(
            control,
            &one(&source, 0, "", "the body is not UTF-8".into()),
        );
    };
    let mut docs =
        match microstax_config::parse_text(&source, text, Some(LayerKind::Branch), Some(&name)) {
            Ok(d) => d,
            Err(e) => return unprocessable(control, &e),
        };
    if docs.len() != 1 {
        return unprocessable(
            control,
            &one(
                &source,
                0,
                "",
                "send exactly one branch layer document".into(),
            ),
        );
    }
    let doc = docs.remove(0);
    if doc.name() != name {
        let e = one(
            &source,
            doc.spans.line("name"),
            "name",
            format!(
                "the body names branch `{}` but the path names `{name}`",
                doc.name()
            ),
        );
        return unprocessable(control, &e);
    }
    let existed = control.config().branch_id(&name).is_some();
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
        // apply has counted and logged it
        Err(e) => json(StatusCode::UNPROCESSABLE_ENTITY, &config_error_json(&e)),
    }
}

/// `DELETE /branches/{name}`: `409` while other layers name it as their parent.
pub(super) async fn delete(control: &ControlPlane, raw: &str) -> Reply {
    let source = format!("api:DELETE /branches/{raw}");
    let name = match branch_name(control, raw, &source) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    if control.config().branch_id(&name).is_none() {
        return error(StatusCode::NOT_FOUND, &format!("no branch named `{name}`"));
    }
    let change = Change::Remove {
        name: name.clone(),
        origin: Arc::from(format!("api:DELETE /branches/{name}")),
    };
    match control.apply(vec![change], ChangeSource::Api).await {
        Ok(a) => json(
            StatusCode::OK,
            &serde_json::json!({"deleted": name, "generation": a.generation}),
        ),
        Err(e) => json(StatusCode::CONFLICT, &config_error_json(&e)),
    }
}
