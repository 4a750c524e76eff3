//! Input bounds: a document nested deeper than the limit, or larger than the size limit, is
//! rejected with file:line and the limit, before any recursive parser sees it.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

use microstax_config::{parse_text, ConfigError, LayerKind};

fn reasons(e: &ConfigError) -> Vec<String> {
    e.diagnostics().iter().map(ToString::to_string).collect()
}

fn parse_branch(text: &str) -> Result<(), ConfigError> {
    parse_text(
        "branches/deep.yaml",
        text,
        Some(LayerKind::Branch),
        Some("deep"),
    )
    .map(|_| ())
}

#[test]
fn deeply_nested_sequences_are_rejected_with_the_limit() {
    // about 100 KB: `- - - ... x`, 50 000 levels on one line
    let text = format!("{}x\n", "- ".repeat(50_000));
    let err = parse_branch(&text).expect_err("too deep");
    assert_eq!(
        reasons(&err),
        ["branches/deep.yaml:1: nesting deeper than 64 levels"]
    );
}

#[test]
fn deeply_nested_flow_and_block_maps_are_rejected_at_their_line() {
    let flow = format!("services: {}{}\n", "[".repeat(20_000), "]".repeat(20_000));
    let err = parse_branch(&flow).expect_err("too deep");
    assert_eq!(
        reasons(&err),
        ["branches/deep.yaml:1: nesting deeper than 64 levels"]
    );
    // one key per line, each indented one step further: the 65th level is on line 65
    let mut block = String::new();
    for i in 0..100 {
        block.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
    }
    block.push_str(&format!("{}x\n", " ".repeat(100)));
    let err = parse_branch(&block).expect_err("too deep");
    assert_eq!(
        reasons(&err),
        ["branches/deep.yaml:65: nesting deeper than 64 levels"]
    );
}

#[test]
fn nesting_at_the_limit_reaches_the_schema_check() {
    // 64 levels are within the bound: the error is the schema's, not the limit's
    let text = format!("services: {}1{}\n", "[".repeat(63), "]".repeat(63));
    let err = parse_branch(&text).expect_err("not a map of services");
    let all = reasons(&err).join("\n");
    assert!(!all.contains("nesting deeper"), "{all}");
}

#[test]
fn documents_larger_than_the_limit_are_rejected() {
    let mut text = String::from("services:\n  web:\n    env:\n");
    let mut i = 0;
    while text.len() <= 1 << 20 {
        text.push_str(&format!("      K{i}: \"{}\"\n", "v".repeat(60)));
        i += 1;
    }
    let err = parse_branch(&text).expect_err("too large");
    let all = reasons(&err);
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(
        all[0].starts_with("branches/deep.yaml:")
            && all[0].ends_with(": document larger than 1 MiB"),
        "{all:?}"
    );
    // just under the limit is parsed as usual
    let mut ok = String::from("services:\n  web:\n    env:\n");
    let mut i = 0;
    while ok.len() < (1 << 20) - 200 {
        ok.push_str(&format!("      K{i}: \"{}\"\n", "v".repeat(60)));
        i += 1;
    }
    assert!(parse_branch(&ok).is_ok());
}
