//! Config errors. Every problem in a file becomes a [`Diagnostic`] naming the file, line, field
//! and reason; validation collects all of them so one `check` run shows every mistake.

use std::fmt;
use std::sync::Arc;

/// One problem in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file (or API source, e.g. `api:PUT /branches/x`) the problem is in.
    pub file: Arc<str>,
    /// 1-based line; 0 when the problem is not tied to a line (e.g. a missing file).
    pub line: u32,
    /// The field path, e.g. `services.orders.endpoints.0`.
    pub field: String,
    /// Why the value is not accepted, in lower case without a trailing period.
    pub reason: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // line 0: not tied to a line (a missing or unread file)
        match (self.line, self.field.is_empty()) {
            (0, true) => write!(f, "{}: {}", self.file, self.reason),
            (0, false) => write!(f, "{}: {}: {}", self.file, self.field, self.reason),
            (line, true) => write!(f, "{}:{line}: {}", self.file, self.reason),
            (line, false) => write!(f, "{}:{line}: {}: {}", self.file, self.field, self.reason),
        }
    }
}

/// Why a config could not be loaded or validated.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path that failed.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The input was read but is not a valid config.
    #[error("{}", Diagnostics(.diagnostics))]
    Invalid {
        /// Every problem found, in file order.
        diagnostics: Vec<Diagnostic>,
    },
}

impl ConfigError {
    /// The diagnostics of an invalid config (empty for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { diagnostics } => diagnostics,
            ConfigError::Read { .. } => &[],
        }
    }

    pub(crate) fn one(file: &Arc<str>, line: u32, field: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            diagnostics: vec![Diagnostic {
                file: file.clone(),
                line,
                field: field.to_string(),
                reason: reason.into(),
            }],
        }
    }
}

struct Diagnostics<'a>(&'a [Diagnostic]);

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
