//! Kinds of layers and routes: small closed vocabularies used as bounded metric labels.

/// Which kind of layer a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum LayerKind {
    /// The shared baseline: the service catalog and the defaults.
    Org,
    /// A team layer: overrides shared by a team's branches.
    Team,
    /// A branch layer: one developer or feature branch.
    Branch,
}

impl LayerKind {
    /// The prefix used in layer names such as `branch/feature-a`.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::Org => "org",
            LayerKind::Team => "team",
            LayerKind::Branch => "branch",
        }
    }
}

/// Which kind of layer supplied a route (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// The org baseline.
    Baseline,
    /// A team layer.
    Team,
    /// A branch layer.
    Branch,
    /// A developer endpoint declared by a branch.
    Local,
}

impl RouteKind {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Baseline => "baseline",
            RouteKind::Team => "team",
            RouteKind::Branch => "branch",
            RouteKind::Local => "local",
        }
    }
}
