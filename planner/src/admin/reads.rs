//! `GET /plan?branch=B` and `GET /explain?branch=B&service=S`: the same answers as the CLI, on
//! the live config. Query values are percent-decoded (`team%2Ffoo` is `team/foo`).

use super::query::{Query, MAX_QUERY};
use super::{error, json, Reply};
use crate::control::ControlPlane;
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

/// `GET /explain?branch=B&service=S`.
pub(super) fn explain(control: &ControlPlane, q: Option<&str>) -> Reply {
    let run = || -> Result<Reply, Box<Reply>> {
        let q = query(q)?;
        let branch = required(&q, "branch")?;
        let service = required(&q, "service")?;
        let cfg = control.config();
        let e = crate::explain(&cfg, branch, service)
            .map_err(|e| Box::new(error(StatusCode::NOT_FOUND, &e.to_string())))?;
        Ok(json(StatusCode::OK, &e.to_json()))
    };
    run().unwrap_or_else(|r| *r)
}
