//! Layer merge laws: nearest layer wins field by field, maps merge key by key, and every value
//! names the layer, file and line that set it. Checked on generated lineages with proptest.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

use microstax_config::{parse_text, Config, LayerKind};
use proptest::prelude::*;

/// A chain baseline <- l1 <- l2 <- ... where layer i may set image and env keys.
fn chain(sets: &[(Option<u8>, Vec<u8>)]) -> Config {
    let mut docs = parse_text(
        "org.yaml",
        "kind: org\nservices:\n  s:\n    endpoints: [\"127.0.0.1:1\"]\n    image: img-org\n    env: {K0: org}\n",
        Some(LayerKind::Org),
        None,
    )
    .expect("org");
    for (i, (image, env)) in sets.iter().enumerate() {
        let parent = if i == 0 {
            "baseline".to_string()
        } else {
            format!("l{}", i - 1)
        };
        let mut text = format!("parent: {parent}\nservices:\n  s:\n");
        if let Some(img) = image {
            text.push_str(&format!("    image: img-{img}\n"));
        }
        text.push_str("    env:\n");
        for k in env {
            text.push_str(&format!("      K{k}: v{i}\n"));
        }
        if env.is_empty() {
            text = text.replace("    env:\n", "");
        }
        docs.extend(
            parse_text(
                &format!("branches/l{i}.yaml"),
                &text,
                Some(LayerKind::Branch),
                Some(&format!("l{i}")),
            )
            .expect("layer"),
        );
    }
    Config::build(docs).expect("valid chain")
}

proptest! {
    #[test]
    fn nearest_layer_wins_and_provenance_names_it(
        sets in proptest::collection::vec((proptest::option::of(0u8..5), proptest::collection::vec(0u8..4, 0..3)), 1..6)
    ) {
        let cfg = chain(&sets);
        let last = sets.len() - 1;
        let id = cfg.branch_id(&format!("l{last}")).expect("leaf");
        let eff = cfg.effective(id, "s").expect("eff");
        // image: nearest layer that sets it, else org
        let nearest = sets.iter().enumerate().rev().find_map(|(i, (img, _))| img.map(|v| (i, v)));
        let image = eff.image.clone().expect("image");
        match nearest {
            Some((i, v)) => {
                prop_assert_eq!(&image.value, &format!("img-{v}"));
                prop_assert_eq!(image.origin.layer.as_ref(), format!("branch/l{i}"));
                prop_assert_eq!(image.origin.file.as_ref(), format!("branches/l{i}.yaml"));
                prop_assert_eq!(image.origin.line, 4);
            }
            None => {
                prop_assert_eq!(&image.value, "img-org");
                prop_assert_eq!(image.origin.layer.as_ref(), "baseline");
            }
        }
        // env: key by key
        for k in 0u8..4 {
            let nearest = sets.iter().enumerate().rev().find(|(_, (_, env))| env.contains(&k)).map(|(i, _)| i);
            let got = eff.env.get(&format!("K{k}"));
            match (nearest, k) {
                (Some(i), _) => {
                    let got = got.expect("set");
                    prop_assert_eq!(&got.value, &format!("v{i}"));
                    prop_assert_eq!(got.origin.layer.as_ref(), format!("branch/l{i}"));
                }
                (None, 0) => prop_assert_eq!(got.map(|g| g.value.as_str()), Some("org")),
                (None, _) => prop_assert!(got.is_none()),
            }
        }
    }

    #[test]
    fn a_layer_without_changes_is_identical_to_its_parent(depth in 1usize..5) {
        let sets: Vec<(Option<u8>, Vec<u8>)> = (0..depth).map(|i| (Some(i as u8), vec![])).collect();
        let mut cfg = chain(&sets);
        let leaf = format!("l{}", depth - 1);
        let doc = parse_text("branches/empty.yaml", &format!("parent: {leaf}\n"), Some(LayerKind::Branch), Some("empty")).expect("p").remove(0);
        cfg = cfg.upsert(doc).expect("upsert").0;
        let parent = cfg.effective(cfg.branch_id(&leaf).expect("leaf"), "s").expect("e");
        let child = cfg.effective(cfg.branch_id("empty").expect("empty"), "s").expect("e");
        prop_assert_eq!(parent.fields(), child.fields());
    }
}

/// `Config::idle_after_s` is the effective merge's value, from every layer of a lineage.
#[test]
fn idle_after_s_is_the_merged_value() {
    let mut docs = parse_text(
        "org.yaml",
        "kind: org\nservices:\n  s:\n    endpoints: [\"127.0.0.1:1\"]\n  t:\n    endpoints: [\"127.0.0.1:2\"]\n    idle_after_s: 30\n",
        Some(LayerKind::Org),
        None,
    )
    .expect("org");
    for (i, text) in [
        "parent: baseline\nservices:\n  s:\n    image: a\n",
        "parent: l0\nservices:\n  s:\n    idle_after_s: 5\n  t:\n    idle_after_s: 7\n",
        "parent: l1\nservices:\n  t:\n    image: b\n",
    ]
    .iter()
    .enumerate()
    {
        docs.extend(
            parse_text(
                &format!("branches/l{i}.yaml"),
                text,
                Some(LayerKind::Branch),
                Some(&format!("l{i}")),
            )
            .expect("layer"),
        );
    }
    let cfg = Config::build(docs).expect("valid");
    let mut seen = Vec::new();
    for l in ["baseline", "l0", "l1", "l2"] {
        let id = cfg.layer_id(l).expect("layer");
        for s in ["s", "t", "missing"] {
            let merged = cfg
                .effective(id, s)
                .and_then(|e| e.idle_after_s.map(|v| v.value));
            assert_eq!(cfg.idle_after_s(id, s), merged, "{l} {s}");
            seen.push(merged);
        }
    }
    assert_eq!(
        seen,
        [
            None,
            Some(30),
            None,
            None,
            Some(30),
            None,
            Some(5),
            Some(7),
            None,
            Some(5),
            Some(7),
            None
        ]
    );
}
