//! Where things live under the prefix, and how a layer is written there:
//! `PREFIX/layers/org`, `PREFIX/layers/team/NAME`, `PREFIX/layers/branch/NAME` hold each layer's
//! document as JSON (which the YAML parser reads); `PREFIX/leader` is the election key, attached
//! to the active planner's lease; `PREFIX/plans/LABEL` (`PREFIX/plans/team/NAME`,
//! `PREFIX/plans/branch/NAME`) holds each team's and branch's plan, the JSON the admin `/plan`
//! serves (read-only output: followers do not read it); `PREFIX/meta` is rewritten by every publish (its revision
//! guards the next one).

use microstax_config::{parse_text, ConfigError, Diagnostic, LayerKind, ParsedDoc};
use serde_json::Value;
use std::sync::Arc;

/// The keys of one prefix.
#[derive(Debug, Clone)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// The layout under `prefix` (`/name`, no trailing slash).
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.to_string(),
        }
    }

    /// Prefix of every layer key.
    pub fn layers(&self) -> String {
        format!("{}/layers/", self.prefix)
    }

    /// Prefix of every plan key.
    pub fn plans(&self) -> String {
        format!("{}/plans/", self.prefix)
    }

    /// The key of a layer's plan, by its label (`team/NAME`, `branch/NAME`).
    pub fn plan_key(&self, label: &str) -> String {
        format!("{}{label}", self.plans())
    }

    /// The election key.
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    /// The publish marker.
    pub fn meta(&self) -> String {
        format!("{}/meta", self.prefix)
    }

    /// The key of a layer.
    pub fn layer_key(&self, kind: LayerKind, name: &str) -> String {
        match kind {
            LayerKind::Org => format!("{}org", self.layers()),
            LayerKind::Team => format!("{}team/{name}", self.layers()),
            LayerKind::Branch => format!("{}branch/{name}", self.layers()),
        }
    }

    /// The kind and name a layer key stands for (None for a key of no layer).
    pub fn parse_key<'k>(&self, key: &'k str) -> Option<(LayerKind, &'k str)> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix("/layers/")?;
        if rest == "org" {
            return Some((LayerKind::Org, ""));
        }
        if let Some(n) = rest.strip_prefix("team/").filter(|n| !n.is_empty()) {
            return Some((LayerKind::Team, n));
        }
        rest.strip_prefix("branch/")
            .filter(|n| !n.is_empty())
            .map(|n| (LayerKind::Branch, n))
    }
}

/// A layer's value: its document as JSON, with only the fields the document sets. serde
/// writes every field (absent ones as `null`, `[]` or `{}`), and validation tells "set" from
/// "absent" by the field's position in the source: a field the source did not set must not be
/// written. The source's field paths ([`Spans`](microstax_config::spans::Spans)) choose what is
/// kept; a field set in a short form (a string for a map, say) is kept whole as serde wrote it.
pub fn encode(doc: &ParsedDoc) -> Vec<u8> {
    let mut v = serde_json::to_value(&doc.doc).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        // kind and name come from the key
        map.remove("kind");
        map.remove("name");
    }
    prune(&mut v, "", &doc.spans);
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Keep the members of `v` (at `path`) the source sets; drop `null`s the source did not write.
fn prune(v: &mut Value, path: &str, spans: &microstax_config::spans::Spans) {
    let child = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(map) => {
            let any_set = map.keys().any(|k| spans.has(&child(k)));
            map.retain(|k, m| {
                if any_set {
                    spans.has(&child(k))
                } else {
                    !m.is_null()
                }
            });
            for (k, m) in map.iter_mut() {
                prune(m, &child(k), spans);
            }
        }
        Value::Array(items) => {
            for (i, m) in items.iter_mut().enumerate() {
                prune(m, &child(&i.to_string()), spans);
            }
        }
        _ => {}
    }
}

/// Parse the value of a layer key, validated like a file: the key fixes its kind and name.
pub fn decode(
    key: &str,
    kind: LayerKind,
    name: &str,
    value: &[u8],
) -> Result<ParsedDoc, ConfigError> {
    let file = format!("etcd:{key}");
    let text =
        std::str::from_utf8(value).map_err(|_| refused(&file, "", "the value is not UTF-8"))?;
    let stem = (kind != LayerKind::Org).then_some(name);
    let mut docs = parse_text(&file, text, Some(kind), stem)?;
    if docs.len() != 1 {
        return Err(refused(&file, "", "a layer key holds exactly one document"));
    }
    let doc = docs.remove(0);
    if doc.kind() != kind || (kind != LayerKind::Org && doc.name() != name) {
        return Err(refused(
            &file,
            "name",
            "the document's kind and name differ from its key",
        ));
    }
    Ok(doc)
}

fn refused(file: &str, field: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        diagnostics: vec![Diagnostic {
            file: Arc::from(file),
            line: 0,
            field: field.into(),
            reason: reason.into(),
        }],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;
    use microstax_config::Config;

    #[test]
    fn keys_name_their_layers() {
        let l = Layout::new("/p");
        let k = l.layer_key(LayerKind::Branch, "team/x");
        assert_eq!(k, "/p/layers/branch/team/x");
        assert_eq!(l.parse_key(&k), Some((LayerKind::Branch, "team/x")));
        assert_eq!(l.parse_key("/p/layers/org"), Some((LayerKind::Org, "")));
        assert_eq!(l.parse_key("/p/meta"), None);
        assert_eq!(l.parse_key("/p/layers/team/"), None);
    }

    #[test]
    fn a_layer_written_as_json_reads_back_to_the_same_config() {
        let org = "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"127.0.0.1:1\"]\n    env: {A: \"1\"}\n";
        let br = "parent: baseline\nservices:\n  api:\n    endpoints: [\"127.0.0.1:2\"]\n";
        let o = parse_text("org.yaml", org, Some(LayerKind::Org), None).expect("org");
        let b = parse_text(
            "branches/dev.yaml",
            br,
            Some(LayerKind::Branch),
            Some("dev"),
        )
        .expect("branch");
        let l = Layout::new("/p");
        let o2 = decode(
            &l.layer_key(LayerKind::Org, ""),
            LayerKind::Org,
            "",
            &encode(&o[0]),
        )
        .expect("org reads back");
        let b2 = decode(
            &l.layer_key(LayerKind::Branch, "dev"),
            LayerKind::Branch,
            "dev",
            &encode(&b[0]),
        )
        .expect("branch reads back");
        assert_eq!(
            String::from_utf8_lossy(&encode(&o[0])),
            r#"{"services":{"api":{"endpoints":["127.0.0.1:1"],"env":{"A":"1"},"hosts":["api"]}}}"#
        );
        let a = Config::build(vec![o[0].clone(), b[0].clone()]).expect("valid");
        let c = Config::build(vec![o2, b2]).expect("valid after the round trip");
        assert_eq!(
            crate::compile(&a, 1).counts(),
            crate::compile(&c, 1).counts()
        );
    }

    #[test]
    fn a_corrupt_value_is_refused_with_its_key() {
        let e = decode("/p/layers/branch/x", LayerKind::Branch, "x", b"{not: [json")
            .expect_err("corrupt");
        assert!(e.to_string().contains("etcd:/p/layers/branch/x"), "{e}");
        let wrong = decode(
            "/p/layers/branch/x",
            LayerKind::Branch,
            "x",
            br#"{"name": "y", "parent": "baseline"}"#,
        );
        assert!(wrong.is_err());
    }
}
