//! Field-by-field diff of the effective config of (layer, service) against the parent layer's.
//!
//! This module owns two things: the diff itself (pure, over [`Field`] lists, so the laws can be
//! property-tested) and the classification of fields into what defines an instance (spec), where
//! it is reached (address) and how the proxy forwards to it (policy). The planner decides from
//! the classes: a spec or address change needs a branch-local instance, a policy-only change is
//! served by the proxy in front of the parent's instance.
//!
//! Values are compared, origins are not: a layer that restates its parent's value changes
//! nothing. Each change keeps the origin of the new value, which is always the diffed layer
//! itself, since the two folds differ only by that layer's entry.

use microstax_config::{Config, Effective, Field, LayerIdx, Origin};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// What a field is for, which decides what a change to it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldClass {
    /// Defines what runs: image, resources, env, migrations, contracts.
    Spec,
    /// Where the instance is reached: endpoints, or a developer's `local` endpoint.
    Address,
    /// How the proxy forwards to it: timeouts, header rules, readiness.
    Policy,
}

/// The class of a flattened field name as produced by [`Effective::fields`].
pub fn class(field: &str) -> FieldClass {
    if field == "endpoints" || field == "local" {
        FieldClass::Address
    } else if field.starts_with("policy.") || field == "idle_after_s" {
        FieldClass::Policy
    } else {
        FieldClass::Spec
    }
}

/// How one field differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// Set in the child, absent in the parent.
    Added,
    /// Set in both with different values.
    Changed,
    /// Set in the parent, absent in the child.
    Removed,
}

impl ChangeKind {
    /// The verb used in reasons.
    pub fn verb(self) -> &'static str {
        match self {
            ChangeKind::Added => "set",
            ChangeKind::Changed => "changed",
            ChangeKind::Removed => "removed",
        }
    }
}

/// One changed field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    /// Field path, e.g. `image` or `env.LOG_LEVEL`.
    pub field: String,
    /// How it differs.
    pub kind: ChangeKind,
    /// The parent's field, if it had one.
    pub before: Option<Field>,
    /// The child's field, if it has one.
    pub after: Option<Field>,
}

impl FieldChange {
    /// Where the change comes from: the new value's origin, or for a removal the origin of the
    /// removed value.
    pub fn origin(&self) -> Option<&Origin> {
        self.after
            .as_ref()
            .or(self.before.as_ref())
            .map(|f| &f.origin)
    }

    /// The field's class.
    pub fn class(&self) -> FieldClass {
        class(&self.field)
    }
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.after, &self.before) {
            (Some(a), _) => write!(f, "{} {} in {}", self.field, self.kind.verb(), a.origin),
            (None, Some(b)) => write!(f, "{} removed (was set in {})", self.field, b.origin),
            (None, None) => write!(f, "{} changed", self.field),
        }
    }
}

/// The diff of one service between a layer and its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDiff {
    /// Service name.
    pub service: String,
    /// Label of the diffed layer.
    pub layer: Arc<str>,
    /// Label of its parent.
    pub parent: Arc<str>,
    /// Changed fields, in the child's field order, removals last.
    pub changes: Vec<FieldChange>,
}

impl ServiceDiff {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Diff two flattened field lists. Names are unique per list except for re-declared
/// migrations, where the last (nearest) one is kept.
pub fn diff_fields(parent: &[Field], child: &[Field]) -> Vec<FieldChange> {
    let before: BTreeMap<&str, &Field> = parent.iter().map(|f| (f.name.as_str(), f)).collect();
    let after: BTreeMap<&str, &Field> = child.iter().map(|f| (f.name.as_str(), f)).collect();
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for f in child {
        let name = f.name.as_str();
        if !seen.insert(name) {
            continue;
        }
        let Some(&a) = after.get(name) else { continue };
        match before.get(name) {
            None => out.push(FieldChange {
                field: f.name.clone(),
                kind: ChangeKind::Added,
                before: None,
                after: Some(a.clone()),
            }),
            Some(&b) if b.value != a.value => out.push(FieldChange {
                field: f.name.clone(),
                kind: ChangeKind::Changed,
                before: Some(b.clone()),
                after: Some(a.clone()),
            }),
            Some(_) => {}
        }
    }
    for (name, &b) in &before {
        if !after.contains_key(name) {
            out.push(FieldChange {
                field: b.name.clone(),
                kind: ChangeKind::Removed,
                before: Some(b.clone()),
                after: None,
            });
        }
    }
    out
}

/// Diff two effective configs of the same service.
pub fn diff_effective(parent: &Effective, child: &Effective) -> ServiceDiff {
    ServiceDiff {
        service: child.service.clone(),
        layer: child.layer.clone(),
        parent: parent.layer.clone(),
        changes: diff_fields(&parent.fields(), &child.fields()),
    }
}

/// Diff the effective config of `service` in `layer` against its parent layer's. `None` when
/// the layer or service is unknown, or the layer is the org baseline (it has no parent).
pub fn diff_service(config: &Config, layer: LayerIdx, service: &str) -> Option<ServiceDiff> {
    let parent = config.layer(layer)?.parent?;
    let child = config.effective(layer, service)?;
    let parent = config.effective(parent, service)?;
    Some(diff_effective(&parent, &child))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn origin(layer: &str, line: u32) -> Origin {
        Origin {
            layer: Arc::from(layer),
            file: Arc::from("f.yaml"),
            line,
        }
    }

    fn field(name: &str, value: &str, layer: &str, line: u32) -> Field {
        Field {
            name: name.into(),
            value: value.into(),
            origin: origin(layer, line),
        }
    }

    #[test]
    fn restated_value_is_not_a_change() {
        let p = vec![field("image", "a:1", "baseline", 3)];
        let c = vec![field("image", "a:1", "branch/x", 7)];
        assert!(diff_fields(&p, &c).is_empty());
    }

    #[test]
    fn change_keeps_the_new_origin() {
        let p = vec![field("image", "a:1", "baseline", 3)];
        let c = vec![
            field("image", "a:2", "branch/x", 7),
            field("env.X", "1", "branch/x", 9),
        ];
        let d = diff_fields(&p, &c);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].kind, ChangeKind::Changed);
        assert_eq!(d[0].origin(), Some(&origin("branch/x", 7)));
        assert_eq!(d[0].to_string(), "image changed in branch/x (f.yaml:7)");
        assert_eq!(d[1].kind, ChangeKind::Added);
        assert_eq!(d[1].to_string(), "env.X set in branch/x (f.yaml:9)");
    }

    #[test]
    fn removal_names_where_the_value_was_set() {
        let p = vec![field("local", "10.0.0.1:80", "branch/p", 4)];
        let d = diff_fields(&p, &[]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, ChangeKind::Removed);
        assert_eq!(
            d[0].to_string(),
            "local removed (was set in branch/p (f.yaml:4))"
        );
    }

    #[test]
    fn classes() {
        assert_eq!(class("endpoints"), FieldClass::Address);
        assert_eq!(class("local"), FieldClass::Address);
        assert_eq!(class("policy.readiness"), FieldClass::Policy);
        assert_eq!(class("image"), FieldClass::Spec);
        assert_eq!(class("env.POLICY"), FieldClass::Spec);
        assert_eq!(class("migrations.db.1"), FieldClass::Spec);
    }

    fn fields_strategy(layer: &'static str) -> impl Strategy<Value = Vec<Field>> {
        proptest::collection::btree_map("[a-e]", "[xyz]", 0..5).prop_map(move |m| {
            m.into_iter()
                .enumerate()
                .map(|(i, (k, v))| field(&k, &v, layer, i as u32 + 1))
                .collect()
        })
    }

    fn as_map(fields: &[Field]) -> BTreeMap<String, String> {
        fields
            .iter()
            .map(|f| (f.name.clone(), f.value.clone()))
            .collect()
    }

    proptest! {
        /// Applying the diff to the parent gives the child, and only differing names appear.
        #[test]
        fn diff_applies_back(p in fields_strategy("baseline"), c in fields_strategy("branch/x")) {
            let d = diff_fields(&p, &c);
            let mut m = as_map(&p);
            for ch in &d {
                match &ch.after {
                    Some(a) => { m.insert(a.name.clone(), a.value.clone()); }
                    None => { m.remove(&ch.field); }
                }
            }
            prop_assert_eq!(&m, &as_map(&c));
            let (pm, cm) = (as_map(&p), as_map(&c));
            for ch in &d {
                prop_assert_ne!(pm.get(&ch.field), cm.get(&ch.field));
                if let Some(a) = &ch.after {
                    prop_assert_eq!(&*a.origin.layer, "branch/x");
                }
            }
        }

        /// A list diffed against itself (whatever the origins) is empty.
        #[test]
        fn self_diff_is_empty(p in fields_strategy("baseline")) {
            let moved: Vec<Field> = p.iter().map(|f| Field { origin: origin("branch/y", 99), ..f.clone() }).collect();
            prop_assert!(diff_fields(&p, &moved).is_empty());
        }
    }
}
