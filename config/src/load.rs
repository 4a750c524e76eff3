//! Reading config sources: a directory (`org.yaml`, `teams/*.yaml`, `branches/*.yaml`), a single
//! file holding every layer as YAML documents separated by `---`, or one layer sent to the admin
//! API. JSON is accepted wherever YAML is (it is parsed by the same YAML parser).

use crate::error::{ConfigError, Diagnostic};
use crate::schema::{Document, LayerKind};
use crate::spans::{self, Spans};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One parsed document with where it came from.
#[derive(Debug, Clone)]
pub struct ParsedDoc {
    /// File path (relative to the config root when loaded from a directory) or API source.
    pub file: Arc<str>,
    /// The document as written, with `kind` and `name` filled in from its place when absent.
    pub doc: Document,
    /// Field positions.
    pub spans: Arc<Spans>,
}

impl ParsedDoc {
    /// The layer kind (always set after loading).
    pub fn kind(&self) -> LayerKind {
        self.doc.kind.unwrap_or(LayerKind::Branch)
    }

    /// The layer name (always set for team and branch layers after loading).
    pub fn name(&self) -> &str {
        self.doc.name.as_deref().unwrap_or("")
    }
}

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Deepest nesting of collections a document may have. The schema needs six levels
/// (`services.web.policy.request_headers.set.NAME`); the bound keeps a hostile file or API body
/// from exhausting the stack of a recursive parser or the memory of the position index.
pub const MAX_DEPTH: usize = 64;

/// Largest text (one file or one API body, all its documents) accepted, in bytes.
pub const MAX_BYTES: usize = 1 << 20;

/// Refuse a text beyond [`MAX_BYTES`], naming the line where the limit is crossed.
fn check_size(file: &Arc<str>, text: &str) -> Result<(), ConfigError> {
    if text.len() <= MAX_BYTES {
        return Ok(());
    }
    let head = text.as_bytes().get(..MAX_BYTES).unwrap_or_default();
    let line = head.iter().filter(|&&b| b == b'\n').count() + 1;
    Err(ConfigError::one(
        file,
        u32::try_from(line).unwrap_or(u32::MAX),
        "",
        format!("document larger than {} MiB", MAX_BYTES >> 20),
    ))
}

/// Parse every document of `text`. `default_kind`/`default_name` fill in fields the documents
/// leave out; with several documents in one text each must say its own kind and name.
pub fn parse_text(
    file: &str,
    text: &str,
    default_kind: Option<LayerKind>,
    default_name: Option<&str>,
) -> Result<Vec<ParsedDoc>, ConfigError> {
    let file: Arc<str> = Arc::from(file);
    check_size(&file, text)?;
    // an empty file is never a valid layer: it is also what a reader sees while an editor is
    // rewriting a file in place, and must not be applied as "a layer with no overrides"
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    if blank {
        return Err(ConfigError::one(&file, 1, "", "the file holds no document"));
    }
    // bounded before serde sees the text: its recursion would otherwise be the first to look
    let mut spans = spans::index(text, MAX_DEPTH)
        .map_err(|d| {
            ConfigError::one(
                &file,
                d.line,
                "",
                format!("nesting deeper than {MAX_DEPTH} levels"),
            )
        })?
        .into_iter();
    let mut out = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let doc = Document::deserialize(de).map_err(|e| yaml_error(&file, &e))?;
        let span = spans.next().unwrap_or_default();
        out.push(ParsedDoc {
            file: file.clone(),
            doc,
            spans: Arc::new(span),
        });
    }
    let single = out.len() == 1;
    for p in &mut out {
        if p.doc.kind.is_none() {
            p.doc.kind = default_kind.filter(|_| single);
        }
        let Some(kind) = p.doc.kind else {
            return Err(ConfigError::one(
                &file,
                p.spans.line(""),
                "kind",
                "missing: each document must say `kind: org`, `team` or `branch`",
            ));
        };
        if let (Some(want), true) = (default_kind, single) {
            if want != kind {
                return Err(ConfigError::one(
                    &file,
                    p.spans.line("kind"),
                    "kind",
                    format!(
                        "is `{}` but the file sits where `{}` layers belong",
                        kind.as_str(),
                        want.as_str()
                    ),
                ));
            }
        }
        if p.doc.name.is_none() && kind != LayerKind::Org {
            match default_name.filter(|_| single) {
                Some(n) => p.doc.name = Some(n.to_string()),
                None => {
                    return Err(ConfigError::one(
                        &file,
                        p.spans.line(""),
                        "name",
                        "missing: team and branch layers need a name",
                    ))
                }
            }
        }
    }
    if out.is_empty() {
        return Err(ConfigError::one(&file, 1, "", "no document found"));
    }
    Ok(out)
}

fn yaml_error(file: &Arc<str>, e: &serde_yaml_ng::Error) -> ConfigError {
    let line = e
        .location()
        .map_or(0, |l| u32::try_from(l.line()).unwrap_or(0));
    let msg = e.to_string();
    // serde_yaml_ng prefixes the field path ("services.orders: unknown field ...") and appends
    // the position; split both so the diagnostic reads file:line: field: reason.
    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    let (field, reason) = match msg.split_once(": ") {
        Some((f, r)) if !f.contains(' ') => (f.to_string(), r.to_string()),
        _ => (String::new(), msg),
    };
    ConfigError::Invalid {
        diagnostics: vec![Diagnostic {
            file: file.clone(),
            line,
            field,
            reason,
        }],
    }
}

/// Read a config file, at most one byte past [`MAX_BYTES`]: a larger file is kept only far
/// enough for [`parse_text`] to refuse it by its size, never read whole.
fn read(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let failed = |source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(failed)?;
    if bytes.len() > MAX_BYTES {
        // cut anywhere, maybe inside a character: only the length matters from here on
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    String::from_utf8(bytes).map_err(|e| {
        failed(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.utf8_error(),
        ))
    })
}

/// The layer files of `dir` (`teams/` or `branches/`), sorted, and a warning for each entry
/// that is not read. Hidden entries (editors' temporary files) are skipped without a word.
fn layer_files(
    root: &Path,
    dir: &Path,
    kind: LayerKind,
) -> Result<(Vec<PathBuf>, Vec<Diagnostic>), ConfigError> {
    if !dir.is_dir() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    for p in entries(dir)? {
        if p.is_dir() {
            let example = match kind {
                LayerKind::Team => "a team is a file in teams/".to_string(),
                _ => {
                    let sub = p.file_name().and_then(|n| n.to_str()).unwrap_or("sub");
                    format!("a branch named {sub}/x is a file with `name: {sub}/x`")
                }
            };
            warnings.push(not_read(
                root,
                &p,
                format!("subdirectories are not searched ({example})"),
            ));
        } else if has_layer_extension(&p) {
            files.push(p);
        } else {
            warnings.push(not_read(
                root,
                &p,
                "layer files end in .yaml, .yml or .json".into(),
            ));
        }
    }
    Ok((files, warnings))
}

/// The non-hidden entries of `dir`, sorted.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn has_layer_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e))
}

fn not_read(root: &Path, p: &Path, why: String) -> Diagnostic {
    Diagnostic {
        file: Arc::from(relative(root, p)),
        line: 0,
        field: String::new(),
        reason: format!("not read: {why}"),
    }
}

/// Layer files at the top of a config directory besides the org file: read by nobody.
fn stray_top_files(root: &Path, org: &Path) -> Result<Vec<Diagnostic>, ConfigError> {
    let org_name = relative(root, org);
    Ok(entries(root)?
        .into_iter()
        .filter(|p| p.as_path() != org && p.is_file() && has_layer_extension(p))
        .map(|p| {
            let is_org = p.file_stem().and_then(|s| s.to_str()) == Some("org");
            let why = if is_org {
                format!("{org_name} is the org layer")
            } else {
                "team and branch layers belong in teams/ and branches/".into()
            };
            not_read(root, &p, why)
        })
        .collect())
}

fn relative(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// One config file as read, before parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceText {
    /// Path relative to the config root (or the file path for a single-file config).
    pub rel: String,
    /// The file's text.
    pub text: String,
    /// Kind implied by the file's place (`None` for a single multi-document file).
    pub kind: Option<LayerKind>,
    /// Name implied by the file's stem (teams and branches in a directory).
    pub stem: Option<String>,
}

/// The config files read from a path, and what was found there but not read.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The files read, org first, then teams, then branches.
    pub files: Vec<SourceText>,
    /// One warning per file or directory of the layout that was not read (line 0).
    pub warnings: Vec<Diagnostic>,
}

/// Read every config file under `path` (a directory in the standard layout, or one file).
pub fn read_sources(path: &Path) -> Result<Vec<SourceText>, ConfigError> {
    read_config(path).map(|s| s.files)
}

/// Like [`read_sources`], also warning about every entry of the layout that is not read: a
/// layer file at the top of the directory, a file without a layer extension or a
/// subdirectory under `teams/` or `branches/`.
pub fn read_config(path: &Path) -> Result<Sources, ConfigError> {
    if path.is_file() {
        return Ok(Sources {
            files: vec![SourceText {
                rel: path.display().to_string(),
                text: read(path)?,
                kind: None,
                stem: None,
            }],
            warnings: Vec::new(),
        });
    }
    let org = EXTENSIONS
        .iter()
        .map(|e| path.join(format!("org.{e}")))
        .find(|p| p.is_file());
    let Some(org) = org else {
        return Err(ConfigError::Read {
            path: path.join("org.yaml").display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no org.yaml in the config directory",
            ),
        });
    };
    let mut warnings = stray_top_files(path, &org)?;
    let mut files = vec![SourceText {
        rel: relative(path, &org),
        text: read(&org)?,
        kind: Some(LayerKind::Org),
        stem: None,
    }];
    for (sub, kind) in [("teams", LayerKind::Team), ("branches", LayerKind::Branch)] {
        let (found, w) = layer_files(path, &path.join(sub), kind)?;
        warnings.extend(w);
        for f in found {
            files.push(SourceText {
                rel: relative(path, &f),
                text: read(&f)?,
                kind: Some(kind),
                stem: f.file_stem().and_then(|s| s.to_str()).map(str::to_string),
            });
        }
    }
    Ok(Sources { files, warnings })
}

/// Parse sources read by [`read_sources`]; every file's errors are reported together.
pub fn parse_sources(sources: &[SourceText]) -> Result<Vec<ParsedDoc>, ConfigError> {
    let mut docs = Vec::new();
    let mut diagnostics = Vec::new();
    for s in sources {
        match parse_text(&s.rel, &s.text, s.kind, s.stem.as_deref()) {
            Ok(d) => docs.extend(d),
            Err(ConfigError::Invalid { diagnostics: d }) => diagnostics.extend(d),
            Err(e) => return Err(e),
        }
    }
    if !diagnostics.is_empty() {
        return Err(ConfigError::Invalid { diagnostics });
    }
    Ok(docs)
}

/// Load every document under `path`: a directory in the standard layout, or a single file.
pub fn load_path(path: &Path) -> Result<Vec<ParsedDoc>, ConfigError> {
    parse_sources(&read_sources(path)?)
}
