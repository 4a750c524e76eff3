//! The config loader on file text and API bodies: parse as an org file, then as a branch
//! layer over a fixed org; build either; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use microstax_config::{parse_text, Config, LayerKind};

const ORG: &str = "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"127.0.0.1:1\"]\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(docs) = parse_text("org.yaml", text, Some(LayerKind::Org), None) {
        let _ = Config::build(docs);
    }
    let Ok(mut docs) = parse_text("org.yaml", ORG, Some(LayerKind::Org), None) else {
        return;
    };
    if let Ok(branch) = parse_text("api:PUT /branches/fz", text, Some(LayerKind::Branch), Some("fz")) {
        docs.extend(branch);
        let _ = Config::build(docs);
    }
});
