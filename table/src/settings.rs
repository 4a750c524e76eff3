//! Org-wide proxy settings as the data plane reads them: where the branch context comes from,
//! the default service, the debug header, which branches may label metrics and the bound of
//! the cold-start hold queue.

/// A compiled host pattern: the host must be `prefix` + branch + `suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Text before `{branch}` (lower case).
    pub prefix: String,
    /// Text after `{branch}` (lower case).
    pub suffix: String,
}

impl HostPattern {
    /// Parse a pattern holding exactly one `{branch}`.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let lower = s.to_ascii_lowercase();
        let (prefix, suffix) = lower
            .split_once("{branch}")
            .ok_or_else(|| format!("`{s}` has no {{branch}} placeholder"))?;
        if suffix.contains("{branch}") {
            return Err(format!("`{s}` has more than one {{branch}} placeholder"));
        }
        if prefix.is_empty() && suffix.is_empty() {
            return Err("a pattern of only {branch} would match every host".into());
        }
        Ok(HostPattern {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }
}

/// How the proxy finds the branch context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextSettings {
    /// Header name, lower case.
    pub header: String,
    /// Baggage member key.
    pub baggage_key: String,
    /// Cookie name.
    pub cookie: String,
    /// Host patterns, tried in order.
    pub host_patterns: Vec<HostPattern>,
    /// Unknown branch: 404 when true, baseline when false.
    pub strict: bool,
}

/// Org-wide proxy settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Context sources.
    pub context: ContextSettings,
    /// Service used when no Host or path prefix matches.
    pub default_service: Option<String>,
    /// Whether responses carry `x-microstax-route`.
    pub debug_header: bool,
    /// Branches whose names may appear as metric labels.
    pub label_branches: Vec<String>,
    /// Address template of planned branch-local instances (see the schema).
    pub instance_address: Option<String>,
    /// Most requests held per upstream while it starts (from zero, or is not ready yet); past
    /// it a request is answered 503 at once, so a cold start cannot pile up unbounded work.
    pub hold_max_requests: u32,
}
