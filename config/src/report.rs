//! The report validation fills: every problem found, returned together so one `check` shows
//! every mistake, in file order.

use crate::error::{ConfigError, Diagnostic};
use crate::load::ParsedDoc;
use std::sync::Arc;

/// Collects diagnostics while validating.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub(crate) fn push(
        &mut self,
        file: &Arc<str>,
        line: u32,
        field: &str,
        reason: impl Into<String>,
    ) {
        self.diagnostics.push(Diagnostic {
            file: file.clone(),
            line,
            field: field.to_string(),
            reason: reason.into(),
        });
    }

    /// The diagnostics in file order: files as first reported, lines ascending within a file
    /// (checks run service by service in name order, which is not the order a person reads).
    /// A problem with `field` of `doc`, reported at the line that sets it (or its nearest
    /// ancestor's): the common case of validation.
    pub(crate) fn at(&mut self, doc: &ParsedDoc, field: &str, reason: impl Into<String>) {
        self.push(&doc.file, doc.spans.line(field), field, reason);
    }

    pub(crate) fn finish(mut self) -> Result<(), ConfigError> {
        if self.diagnostics.is_empty() {
            return Ok(());
        }
        let mut files: Vec<Arc<str>> = Vec::new();
        for d in &self.diagnostics {
            if !files.contains(&d.file) {
                files.push(d.file.clone());
            }
        }
        self.diagnostics
            .sort_by_key(|d| (files.iter().position(|f| *f == d.file), d.line));
        Err(ConfigError::Invalid {
            diagnostics: self.diagnostics,
        })
    }
}
