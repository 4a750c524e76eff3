//! `GET /plan?branch=B` and `GET /explain?branch=B&service=S`: the same answers as the CLI, on
//! the live config. Query values are percent-decoded (`team%2Ffoo` is `team/foo`).

use super::query::{Query, MAX_QUERY};
use super::{error, json, Reply};
use crate::control::ControlPlane;
use crate::environments::Runtime;
use hyper::StatusCode;

fn query(q: Option<&str>) -> Result<Query, Box<Reply>> {
    let q = q.unwrap_or("");
    if q.len() > MAX_QUERY {
        return Err(Box::new(error(
            StatusCode::URI_TOO_LONG,
            &format!("the query is longer than {MAX_QUERY} bytes"),
        )));
    }
    Query::parse(q).map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, &e.to_string())))
}

fn required<'q>(q: &'q Query, key: &str) -> Result<&'q str, Box<Reply>> {
    q.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("missing query parameter `{key}`"),
        ))
    })
}

/// `GET /plan?branch=B`.
pub(super) fn plan(control: &ControlPlane, q: Option<&str>) -> Reply {
    let run = || -> Result<Reply, Box<Reply>> {
        let q = query(q)?;
        let branch = required(&q, "branch")?;
        let cfg = control.config();
        let p = crate::plan_branch(&cfg, branch, None)
            .map_err(|e| Box::new(error(StatusCode::NOT_FOUND, &e.to_string())))?;
        Ok(json(StatusCode::OK, &p.to_json()))
    };
    run().unwrap_or_else(|r| *r)
}

/// `GET /explain?branch=B&service=S`: routed by the table being served, and with an executor,
/// the planned instance's state (or why it is not running) in `instance` and `note`.
pub(super) async fn explain(
    control: &ControlPlane,
    runtime: Option<&Runtime>,
    q: Option<&str>,
) -> Reply {
    let (branch, service) = match query(q).and_then(|q| {
        Ok((
            required(&q, "branch")?.to_string(),
            required(&q, "service")?.to_string(),
        ))
    }) {
        Ok(bs) => bs,
        Err(r) => return *r,
    };
    let cfg = control.config();
    let table = control.table().await;
    let mut e = match crate::explain::explain_in(&cfg, &table, &branch, &service) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::NOT_FOUND, &e.to_string()),
    };
    if let (Some(rt), Some(d)) = (runtime, &e.decision) {
        if d.decision == crate::decision::Decision::Fork {
            let layer = cfg
                .layer_id(&branch)
                .and_then(|i| cfg.layer(i))
                .map(|l| l.name.clone())
                .unwrap_or_default();
            let (instance, problem) = rt.status(&layer, &service, d.instance);
            e.instance = instance;
            if let Some(p) = problem {
                e.note = Some(p);
            } else if e.instance.is_some() && e.route.as_ref().is_some_and(|r| r.layer == e.layer) {
                e.note = None;
            }
        }
    }
    json(StatusCode::OK, &e.to_json())
}
