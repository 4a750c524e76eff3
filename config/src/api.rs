//! Route contracts: the API version a service serves (`api`) and what a caller requires of
//! each callee (`requires`), as semver. This module checks that they parse and name real
//! dependencies; the planner checks every edge a branch's routes use against them.

use crate::load::ParsedDoc;
use crate::report::Report;
use crate::schema::ServiceDoc;

pub use semver::{Version, VersionReq};

/// Parse an `api` value.
pub fn version(text: &str) -> Result<Version, String> {
    Version::parse(text.trim()).map_err(|e| format!("`{text}` is not a semver version: {e}"))
}

/// Parse a `requires` value.
pub fn requirement(text: &str) -> Result<VersionReq, String> {
    VersionReq::parse(text.trim()).map_err(|e| format!("`{text}` is not a semver requirement: {e}"))
}

/// Whether `api` (a version) meets `req` (a requirement); unparsable values never do.
pub fn satisfies(api: &str, req: &str) -> bool {
    match (version(api), requirement(req)) {
        (Ok(v), Ok(r)) => r.matches(&v),
        _ => false,
    }
}

/// Check `api` and `requires` of service entry `s` at `base` against the catalog's
/// `depends_on` of that service.
pub(crate) fn check_service(
    doc: &ParsedDoc,
    base: &str,
    s: &ServiceDoc,
    depends_on: &[String],
    report: &mut Report,
) {
    if let Some(a) = &s.api {
        if let Err(why) = version(a) {
            report.at(doc, &format!("{base}.api"), why);
        }
    }
    for (callee, req) in &s.requires {
        let field = format!("{base}.requires.{callee}");
        if !depends_on.iter().any(|d| d == callee) {
            report.at(
                doc,
                &field,
                format!("`{callee}` is not one of the service's depends_on"),
            );
        }
        if let Err(why) = requirement(req) {
            report.at(doc, &field, why);
        }
    }
}
