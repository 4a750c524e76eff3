//! The record of branch stores this host created, one JSON object per line, so that a restarted
//! proxy can give back the stores of branches deleted while it was down. Written to a temporary
//! file and renamed into place, so a crash mid-write leaves the previous record.

use crate::spec::{StoreMode, StoreRequest};
use crate::store::StoreHandle;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

fn mode_str(m: &StoreMode) -> &'static str {
    match m {
        StoreMode::Schema => "schema",
        StoreMode::DatabaseFromTemplate => "database-from-template",
        StoreMode::Database => "database",
    }
}

fn mode_from(s: &str) -> Option<StoreMode> {
    Some(match s {
        "schema" => StoreMode::Schema,
        "database-from-template" => StoreMode::DatabaseFromTemplate,
        "database" => StoreMode::Database,
        _ => return None,
    })
}

/// Write the record.
pub(crate) fn save_stores<'a>(
    path: &Path,
    stores: impl Iterator<Item = &'a StoreHandle>,
) -> std::io::Result<()> {
    let mut out = String::new();
    for h in stores {
        let r = &h.request;
        let line = json!({
            "store": &*r.store, "kind": &*r.kind, "branch": &*r.branch,
            "mode": mode_str(&r.mode), "baseline": r.baseline,
            "connection": h.connection, "resource": h.resource,
        });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, path)
}

/// Read the record; a missing file is empty, an unreadable line is skipped with a warning.
pub(crate) fn load_stores(path: &Path) -> Vec<StoreHandle> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the branch-store record");
            return Vec::new();
        }
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let parsed = parse(l);
            if parsed.is_none() {
                tracing::warn!(path = %path.display(), line = l, "skipping a bad branch-store record");
            }
            parsed
        })
        .collect()
}

fn parse(line: &str) -> Option<StoreHandle> {
    let v: Value = serde_json::from_str(line).ok()?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Some(StoreHandle {
        request: StoreRequest {
            store: Arc::from(s("store")?),
            kind: Arc::from(s("kind")?),
            branch: Arc::from(s("branch")?),
            mode: mode_from(&s("mode")?)?,
            baseline: s("baseline")?,
        },
        connection: s("connection")?,
        resource: s("resource")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stores.jsonl");
        assert!(load_stores(&path).is_empty());
        let h = StoreHandle {
            request: StoreRequest {
                store: "orders-db".into(),
                kind: "postgres".into(),
                branch: "feature/a".into(),
                mode: StoreMode::DatabaseFromTemplate,
                baseline: "postgres://u@127.0.0.1:5/orders".into(),
            },
            connection: "postgres://u@127.0.0.1:5/msx_orders_db_feature_a".into(),
            resource: "msx_orders_db_feature_a".into(),
        };
        save_stores(&path, [&h].into_iter()).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("not json\n{\"store\":1}\n");
        std::fs::write(&path, text).unwrap();
        assert_eq!(load_stores(&path), vec![h]);
    }
}
