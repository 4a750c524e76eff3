//! What the config tests share: a config built from in-memory files, each file's layer kind and
//! name taken from its place (`teams/`, `branches/`, else the org) as a config directory does.

use microstax_config::{parse_text, Config, ConfigError, LayerKind};

/// Build a config from `(path, text)` files.
pub fn build(files: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut docs = Vec::new();
    for (file, text) in files {
        let kind = if file.starts_with("teams/") {
            LayerKind::Team
        } else if file.starts_with("branches/") {
            LayerKind::Branch
        } else {
            LayerKind::Org
        };
        let stem = std::path::Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str());
        docs.extend(parse_text(file, text, Some(kind), stem)?);
    }
    Config::build(docs)
}
