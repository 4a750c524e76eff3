//! Helpers shared by the planner's integration tests: configs from inline YAML and the demo
//! fixture.

#![allow(dead_code)]

use microstax_config::{parse_text, Config, ConfigError, LayerKind};
use std::path::PathBuf;

/// Build a config from `(path, yaml)` pairs laid out like a config directory: `org.yaml`,
/// `teams/<name>.yaml`, `branches/<name>.yaml`.
pub fn config(files: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut docs = Vec::new();
    for (path, text) in files {
        let stem = path
            .rsplit('/')
            .next()
            .unwrap_or(path)
            .trim_end_matches(".yaml");
        let (kind, name) = if *path == "org.yaml" {
            (LayerKind::Org, None)
        } else if path.starts_with("teams/") {
            (LayerKind::Team, Some(stem))
        } else {
            (LayerKind::Branch, Some(stem))
        };
        docs.extend(parse_text(path, text, Some(kind), name)?);
    }
    Config::build(docs)
}

/// The demo config directory: the repository's `demo/`, which the embedded demo and the
/// README's walk-through use too.
pub fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../demo")
}

/// The loaded demo config.
pub fn demo() -> Config {
    microstax_config::load(&demo_dir()).unwrap()
}
