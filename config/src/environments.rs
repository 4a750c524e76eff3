//! Environments that run: the validated form of `run:` blocks, scale-to-zero, the lifecycle
//! settings (TTL, grace, the cold-start queue) and how branch copies of stores are made. The
//! planner turns these into what the executors start; this module only checks and resolves them.

use crate::load::ParsedDoc;
use crate::model::Config;
use crate::report::Report;
use crate::schema::{LayerKind, LifecycleDoc, RunDoc, StoreSettingsDoc};
use crate::values::LayerIdx;
use std::time::Duration;

/// Built-in grace before an unneeded instance or store is given back.
pub const DEFAULT_GRACE_MS: u64 = 10_000;
/// Built-in notice ahead of a branch's expiry.
pub const DEFAULT_EXPIRY_NOTICE_S: u64 = 3_600;
/// Built-in number of requests held per instance while it starts from zero.
pub const DEFAULT_HOLD_MAX_REQUESTS: u32 = 256;
/// Built-in longest start of a `run:` instance.
pub const DEFAULT_START_TIMEOUT_MS: u64 = 10_000;
/// The env variable that receives a branch store's connection string by default.
pub const DEFAULT_STORE_ENV: &str = "DATABASE_URL";

/// Org-wide lifecycle settings, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// Default branch TTL from its last request (`None`: never expires).
    pub ttl: Option<Duration>,
    /// How long ahead an expiry is announced.
    pub expiry_notice: Duration,
    /// How long unneeded instances and stores stay.
    pub grace: Duration,
    /// Requests held per instance while it starts from zero.
    pub hold_max_requests: u32,
}

/// The plugin that makes branch copies of a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorePluginKind {
    /// PostgreSQL: a schema or database per branch.
    Postgres,
    /// The user's own create and delete commands.
    Command {
        /// Create command (program, arguments).
        create: Vec<String>,
        /// Delete command.
        delete: Vec<String>,
    },
}

/// How a branch copy is made on a postgres server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreCopy {
    /// A schema per branch in the baseline database.
    Schema,
    /// An empty database per branch.
    Database,
    /// A database per branch copied from the baseline database.
    DatabaseFromTemplate,
}

/// How branch copies of one store are made, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Store name.
    pub name: String,
    /// The store's kind, from the catalog.
    pub kind: String,
    /// The plugin.
    pub plugin: StorePluginKind,
    /// The baseline's connection string.
    pub url: String,
    /// How a copy is made (postgres).
    pub copy: StoreCopy,
    /// The env variable that receives the copy's connection string.
    pub env: String,
}

const PLACEHOLDERS: [&str; 4] = ["{port}", "{instance}", "{service}", "{branch}"];

/// Check a `run:` block at `base` (e.g. `services.orders.run`).
pub(crate) fn check_run(doc: &ParsedDoc, base: &str, run: &RunDoc, report: &mut Report) {
    if run.command.trim().is_empty() {
        report.at(doc, &format!("{base}.command"), "is empty");
    }
    if let Some(p) = &run.probe {
        if !p.starts_with('/') {
            report.at(
                doc,
                &format!("{base}.probe"),
                "must be a path starting with '/'",
            );
        }
    }
    if run.start_timeout_ms == Some(0) {
        report.at(
            doc,
            &format!("{base}.start_timeout_ms"),
            "must be greater than 0",
        );
    }
    for (i, a) in run.args.iter().enumerate() {
        if let Err(why) = check_placeholders(a) {
            report.at(doc, &format!("{base}.args.{i}"), why);
        }
    }
    for (k, v) in &run.env {
        if !is_env_name(k) {
            report.at(
                doc,
                &format!("{base}.env.{k}"),
                "is not a valid environment variable name",
            );
        }
        if let Err(why) = check_placeholders(v) {
            report.at(doc, &format!("{base}.env.{k}"), why);
        }
    }
}

/// The reason for a token `placeholders_in` refused: an unclosed `{`, else `unknown`.
fn refused(s: &str, token: &str, unknown: String) -> String {
    if token.ends_with('}') {
        unknown
    } else {
        format!("`{s}` has an unclosed `{{`")
    }
}

/// Every `{...}` in `s` must be a known placeholder of a `run:` block or `{env.NAME}`.
fn check_placeholders(s: &str) -> Result<(), String> {
    placeholders_in(s, &PLACEHOLDERS, true)
        .map_err(|token| refused(s, token, format!(
            "unknown placeholder `{token}`: use {{port}}, {{instance}}, {{service}}, {{branch}} or {{env.NAME}}"
        )))
}

/// Every `{...}` in a store command must be one of the store placeholders.
fn check_store_placeholders(s: &str) -> Result<(), String> {
    const STORE: [&str; 5] = ["{store}", "{branch}", "{kind}", "{name}", "{baseline}"];
    placeholders_in(s, &STORE, false).map_err(|token| refused(s, token, format!(
        "unknown placeholder `{token}`: use {{store}}, {{branch}}, {{kind}}, {{name}} or {{baseline}}"
    )))
}

/// The first `{...}` token of `s` not in `known` (nor `{env.NAME}` when `env` allows it); an
/// unclosed `{` is reported as the rest of the text.
fn placeholders_in<'s>(s: &'s str, known: &[&str], env: bool) -> Result<(), &'s str> {
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Err(&rest[start..]);
        };
        let token = &rest[start..start + len + 1];
        let is_env = env
            && token
                .strip_prefix("{env.")
                .and_then(|t| t.strip_suffix('}'))
                .is_some_and(is_env_name);
        if !(known.contains(&token) || is_env) {
            return Err(token);
        }
        rest = &rest[start + len + 1..];
    }
    Ok(())
}

fn is_env_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Check a layer's `lifecycle:` block: the org may set everything, a team or branch its TTL.
pub(crate) fn check_lifecycle(
    doc: &ParsedDoc,
    kind: LayerKind,
    l: &LifecycleDoc,
    report: &mut Report,
) {
    if kind != LayerKind::Org {
        let org_only = [
            ("lifecycle.expiry_notice_s", l.expiry_notice_s.is_some()),
            ("lifecycle.grace_ms", l.grace_ms.is_some()),
            ("lifecycle.hold_max_requests", l.hold_max_requests.is_some()),
        ];
        for (f, set) in org_only {
            if set {
                report.at(doc, f, "is set in the org layer only");
            }
        }
    }
    if l.hold_max_requests == Some(0) {
        report.at(doc, "lifecycle.hold_max_requests", "must be greater than 0");
    }
}

/// Check the org's `stores:` block against the catalog's store declarations.
pub(crate) fn check_stores(doc: &ParsedDoc, report: &mut Report) {
    for (name, s) in &doc.doc.stores {
        let base = format!("stores.{name}");
        let Some(kind) = catalog_kind(doc, name) else {
            report.at(
                doc,
                &base,
                format!("no service uses a store named `{name}`"),
            );
            continue;
        };
        if let Some(v) = &s.per_branch_schema {
            if crate::economics::schema_policy(v).is_none() {
                report.at(
                    doc,
                    &format!("{base}.per_branch_schema"),
                    format!("unknown value `{v}`: use always, additive or never"),
                );
            }
        }
        if !has_plugin_settings(s) {
            // only economic facts (per_branch_schema): no plugin makes the copies
            continue;
        }
        if let Err((field, why)) = settings_of(name, &kind, s) {
            report.at(doc, &format!("{base}.{field}"), why);
        }
    }
}

/// Whether a `stores:` entry says how copies are made (anything but `per_branch_schema`).
fn has_plugin_settings(s: &StoreSettingsDoc) -> bool {
    s.plugin.is_some()
        || s.url.is_some()
        || s.mode.is_some()
        || s.env.is_some()
        || !s.create.is_empty()
        || !s.delete.is_empty()
}

fn catalog_kind(doc: &ParsedDoc, store: &str) -> Option<String> {
    doc.doc
        .services
        .values()
        .flat_map(|s| s.stores.iter())
        .find(|st| st.name == store)
        .map(|st| st.kind.clone())
}

/// The validated settings of one store, or the field and reason that make them invalid.
fn settings_of(
    name: &str,
    kind: &str,
    s: &StoreSettingsDoc,
) -> Result<StoreSettings, (&'static str, String)> {
    let is_pg = matches!(
        kind.to_ascii_lowercase().as_str(),
        "postgres" | "postgresql"
    );
    let plugin = match s.plugin.as_deref() {
        Some("postgres") => StorePluginKind::Postgres,
        None if is_pg => StorePluginKind::Postgres,
        Some("command") | None => {
            if s.create.is_empty() || s.delete.is_empty() {
                return Err((
                    "create",
                    "the command plugin needs both `create` and `delete` commands".into(),
                ));
            }
            for c in s.create.iter().chain(&s.delete) {
                check_store_placeholders(c).map_err(|why| ("create", why))?;
            }
            StorePluginKind::Command {
                create: s.create.clone(),
                delete: s.delete.clone(),
            }
        }
        Some(other) => {
            return Err((
                "plugin",
                format!("unknown store plugin `{other}`: use postgres or command"),
            ))
        }
    };
    let url = s.url.clone().unwrap_or_default();
    if plugin == StorePluginKind::Postgres
        && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
    {
        {
            return Err((
                "url",
                "the postgres plugin needs the baseline's `postgres://` URL".into(),
            ));
        }
    }
    let copy = match s.mode.as_deref() {
        None | Some("schema") => StoreCopy::Schema,
        Some("database") => StoreCopy::Database,
        Some("database-from-template") => StoreCopy::DatabaseFromTemplate,
        Some(other) => {
            return Err((
                "mode",
                format!("unknown mode `{other}`: use schema, database or database-from-template"),
            ))
        }
    };
    let env = s
        .env
        .clone()
        .unwrap_or_else(|| DEFAULT_STORE_ENV.to_string());
    if !is_env_name(&env) {
        return Err((
            "env",
            format!("`{env}` is not a valid environment variable name"),
        ));
    }
    Ok(StoreSettings {
        name: name.to_string(),
        kind: kind.to_string(),
        plugin,
        url,
        copy,
        env,
    })
}

impl Config {
    /// Org-wide lifecycle settings with defaults filled in.
    pub fn lifecycle(&self) -> Lifecycle {
        let l = self.org().doc.doc.lifecycle.clone().unwrap_or_default();
        Lifecycle {
            ttl: l.ttl_s.filter(|&s| s > 0).map(Duration::from_secs),
            expiry_notice: Duration::from_secs(
                l.expiry_notice_s.unwrap_or(DEFAULT_EXPIRY_NOTICE_S),
            ),
            grace: Duration::from_millis(l.grace_ms.unwrap_or(DEFAULT_GRACE_MS)),
            hold_max_requests: l.hold_max_requests.unwrap_or(DEFAULT_HOLD_MAX_REQUESTS),
        }
    }

    /// The TTL of a layer: its own `lifecycle.ttl_s`, else the nearest ancestor's, else the org
    /// default. `None`: it never expires (a `ttl_s` of 0 says so explicitly).
    pub fn ttl(&self, layer: LayerIdx) -> Option<Duration> {
        for idx in self.lineage(layer) {
            let Some(l) = self.layer(idx) else { continue };
            if let Some(t) = l.doc.doc.lifecycle.as_ref().and_then(|l| l.ttl_s) {
                return (t > 0).then(|| Duration::from_secs(t));
            }
        }
        None
    }

    /// How branch copies of `store` are made, if the org layer says.
    pub fn store_settings(&self, store: &str) -> Option<StoreSettings> {
        let doc = &self.org().doc;
        let s = doc
            .doc
            .stores
            .get(store)
            .filter(|s| has_plugin_settings(s))?;
        let kind = catalog_kind(doc, store)?;
        settings_of(store, &kind, s).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders() {
        assert!(check_placeholders("127.0.0.1:{port}").is_ok());
        assert!(check_placeholders("{env.DATABASE_URL}/x").is_ok());
        assert!(check_placeholders("{nope}").is_err());
        assert!(check_placeholders("{env.}").is_err());
        assert!(check_placeholders("{port").is_err_and(|e| e.contains("unclosed")));
        assert!(check_store_placeholders("mk {store} {branch} {name}").is_ok());
        assert!(check_store_placeholders("{port}").is_err());
    }
}
