//! Checks across the services of the org catalog: hosts and path prefixes that must be unique,
//! stores that must be declared with one kind, and the source path globs the planner compiles
//! (a glob or store the planner cannot index would otherwise pass validation and turn planned
//! routing off later). A repeat is reported at the declaration written second, in file order,
//! naming where the first one is.

use crate::load::ParsedDoc;
use crate::report::Report;
use globset::{GlobBuilder, GlobSetBuilder};
use std::collections::BTreeMap;

/// One declaration of a value that must agree across the catalog.
struct Claim {
    /// What must be unique: a host, a path prefix, a store name.
    key: String,
    /// The value it must agree on (the service for hosts and prefixes, the kind for stores).
    value: String,
    service: String,
    field: String,
    line: u32,
}

/// Run every cross-service check of the org document `doc`.
pub(crate) fn check(doc: &ParsedDoc, report: &mut Report) {
    let mut hosts = Vec::new();
    let mut prefixes = Vec::new();
    let mut stores = Vec::new();
    for (name, s) in &doc.doc.services {
        let base = format!("services.{name}");
        let claim = |key: String, value: &str, field: String| Claim {
            key,
            value: value.to_string(),
            service: name.clone(),
            line: doc.spans.line(&field),
            field,
        };
        for (i, h) in s.hosts.iter().enumerate() {
            let h = h.to_ascii_lowercase();
            let h = h.split(':').next().unwrap_or("");
            if !h.is_empty() {
                hosts.push(claim(h.to_string(), name, format!("{base}.hosts.{i}")));
            }
        }
        for (i, p) in s.path_prefixes.iter().enumerate() {
            if p.starts_with('/') {
                let norm = p.trim_end_matches('/').to_string();
                prefixes.push(claim(norm, name, format!("{base}.path_prefixes.{i}")));
            }
        }
        for (i, st) in s.stores.iter().enumerate() {
            let field = format!("{base}.stores.{i}.kind");
            stores.push(claim(st.name.clone(), &st.kind, field));
        }
    }
    let file = doc.file.as_ref();
    let always = |_: &Claim, _: &Claim| true;
    repeats(hosts, report, doc, always, |c, first| {
        format!(
            "duplicate host `{}`: already used by service `{}` ({file}:{})",
            c.key, first.service, first.line
        )
    });
    repeats(prefixes, report, doc, always, |c, first| {
        let shown = if c.key.is_empty() { "/" } else { &c.key };
        format!(
            "duplicate path prefix `{shown}`: already used by service `{}` ({file}:{})",
            first.service, first.line
        )
    });
    let differ = |c: &Claim, first: &Claim| c.value != first.value;
    repeats(stores, report, doc, differ, |c, first| {
        format!(
            "store `{}` is `{}` here but `{}` in service `{}` ({file}:{})",
            c.key, c.value, first.value, first.service, first.line
        )
    });
    check_globs(doc, report);
}

/// Claims in file order (stable, so one line keeps the order the claims were gathered in).
fn in_file_order(mut claims: Vec<Claim>) -> Vec<Claim> {
    claims.sort_by_key(|c| c.line);
    claims
}

/// Report every claim on a key an earlier claim holds, when `conflicts(claim, first)`.
fn repeats(
    claims: Vec<Claim>,
    report: &mut Report,
    doc: &ParsedDoc,
    conflicts: impl Fn(&Claim, &Claim) -> bool,
    reason: impl Fn(&Claim, &Claim) -> String,
) {
    let mut first: BTreeMap<String, Claim> = BTreeMap::new();
    for c in in_file_order(claims) {
        match first.get(&c.key) {
            Some(f) if conflicts(&c, f) => {
                report.push(&doc.file, c.line, &c.field, reason(&c, f));
            }
            Some(_) => {}
            None => {
                first.insert(c.key.clone(), c);
            }
        }
    }
}

/// Compile the `paths` globs as the planner does (`*` stays within a directory, `**` crosses
/// them), one by one and then together.
fn check_globs(doc: &ParsedDoc, report: &mut Report) {
    let mut set = GlobSetBuilder::new();
    let mut any = false;
    for (name, s) in &doc.doc.services {
        for (i, g) in s.paths.iter().enumerate() {
            match GlobBuilder::new(g).literal_separator(true).build() {
                Ok(glob) => {
                    set.add(glob);
                    any = true;
                }
                Err(e) => {
                    let field = format!("services.{name}.paths.{i}");
                    let why = format!("`{g}` is not a valid glob: {}", e.kind());
                    report.at(doc, &field, why);
                }
            }
        }
    }
    if any {
        if let Err(e) = set.build() {
            let why = format!("the path globs cannot be combined: {}", e.kind());
            report.at(doc, "services", why);
        }
    }
}
