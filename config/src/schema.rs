//! The serde-facing file schema. These types mirror what a person writes in `org.yaml`,
//! `teams/*.yaml` and `branches/*.yaml`; they are converted into the validated [`crate::Config`]
//! and never reach the request path. Unknown fields are rejected so a typo is an error, not a
//! silently ignored setting.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use microstax_table::LayerKind;

/// One document of any kind; `kind` decides which fields are allowed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// `org`, `team` or `branch`; in a config directory it defaults from the file's place.
    pub kind: Option<LayerKind>,
    /// Layer name; in a config directory it defaults to the file stem.
    pub name: Option<String>,
    /// Team and branch layers: `baseline`, a team, or another branch.
    pub parent: Option<String>,
    /// Org only: how the proxy finds the branch context of a request.
    pub context: Option<ContextDoc>,
    /// Org only: routing settings of the proxy.
    pub routing: Option<RoutingDoc>,
    /// Org only: default route policy of every service.
    pub defaults: Option<PolicyDoc>,
    /// Org: the service catalog. Team and branch: per-service overrides.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceDoc>,
    /// Branch only: a source branch to diff against a base in a repository.
    pub source: Option<SourceDoc>,
    /// Environment lifecycle: org defaults (TTL, grace, the cold-start queue); a team or branch
    /// may set its own `ttl_s`.
    pub lifecycle: Option<LifecycleDoc>,
    /// Org only: how branch copies of the catalog's stores are made, by store name.
    #[serde(default)]
    pub stores: BTreeMap<String, StoreSettingsDoc>,
    /// Org: what branch environments cost (the cheapest-plan solver prices alternatives with
    /// it). A team may override any price for its branches.
    pub prices: Option<PricesDoc>,
    /// Team only: limits across all of the team's live branches (and the team layer itself).
    pub budget: Option<BudgetDoc>,
}

/// Prices, per hour, in one currency unit of the operator's choosing (the plan prints them with
/// up to six decimals). Unset prices keep the built-in defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PricesDoc {
    /// One CPU core for an hour (default 0.04).
    pub cpu_core_hour: Option<f64>,
    /// One GiB of memory for an hour (default 0.005).
    pub gib_hour: Option<f64>,
    /// Per store alternative, per hour.
    pub stores: Option<StorePricesDoc>,
    /// A per-branch topic on the shared broker, per hour (default 0.0001).
    pub per_branch_topic: Option<f64>,
    /// The expected share of the time a branch is in use, in (0, 1] (default 0.25): what a
    /// service scaled to zero costs against one kept warm.
    pub active_fraction: Option<f64>,
}

/// What each way of isolating a store costs per hour.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorePricesDoc {
    /// A forked instance of the store (default: its resources at the CPU and memory prices,
    /// 250m/512Mi, a cache 100m/256Mi).
    pub forked_instance: Option<f64>,
    /// A per-branch database copied from a template on the shared server (default 0.002).
    pub database_from_template: Option<f64>,
    /// A per-branch schema on the shared server (default 0.0005).
    pub per_branch_schema: Option<f64>,
    /// Sharing the parent's store (default 0).
    pub share: Option<f64>,
}

/// A team's limits across all of its live branches.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BudgetDoc {
    /// At most this many branch-local instances (services, replicas and forked stores).
    pub max_instances: Option<u64>,
    /// At most this cost per hour, at the team's prices.
    pub max_cost_per_hour: Option<f64>,
}

/// Lifecycle of branch environments.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LifecycleDoc {
    /// A branch with no request for this long is expired (seconds; 0 or absent: never). An
    /// API-created branch is deleted; a file-backed one keeps its file and gives back its
    /// instances and stores until it is used again. A parent with live children is never expired.
    pub ttl_s: Option<u64>,
    /// Org only: how long ahead an expiry is announced (log, metric, `expires_at`), seconds.
    pub expiry_notice_s: Option<u64>,
    /// Org only: how long an instance or store stays after nothing needs it, milliseconds.
    pub grace_ms: Option<u64>,
    /// Org only: requests held per instance while it starts from zero.
    pub hold_max_requests: Option<u32>,
}

/// How branch copies of one store are made.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreSettingsDoc {
    /// `postgres` or `command` (default: `postgres` for postgres stores, else `command`).
    pub plugin: Option<String>,
    /// The baseline's connection string (for postgres, a libpq URL).
    pub url: Option<String>,
    /// `schema`, `database` or `database-from-template` (postgres; default `schema`).
    pub mode: Option<String>,
    /// The env variable of each using service that receives the branch's connection string
    /// (default `DATABASE_URL`).
    pub env: Option<String>,
    /// Whether a branch may get a per-branch schema: `always` (default where the kind has
    /// schemas), `additive` (only when each of the branch's migrations is `additive`) or
    /// `never`. Needs no plugin settings of its own.
    pub per_branch_schema: Option<String>,
    /// Command plugin: the create command (program, then arguments); its last line of output
    /// is the connection string. Placeholders `{store}`, `{branch}`, `{kind}`, `{name}`,
    /// `{baseline}`.
    #[serde(default)]
    pub create: Vec<String>,
    /// Command plugin: the delete command, with the same placeholders.
    #[serde(default)]
    pub delete: Vec<String>,
}

/// How to run a service on this machine (the process executor).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct RunDoc {
    /// Program to start (looked up on PATH when it has no `/`).
    pub command: String,
    /// Its arguments. Placeholders: `{port}`, `{instance}`, `{service}`, `{branch}`,
    /// `{env.NAME}`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment (placeholders as in `args`), on top of the service's `env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// HTTP path answered once the instance is ready (default `/`).
    pub probe: Option<String>,
    /// Longest start, from spawn to a ready probe, in milliseconds (default 10000).
    pub start_timeout_ms: Option<u64>,
}

/// Where the branch context comes from. Precedence is fixed: header, baggage, cookie, host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextDoc {
    /// Request header naming the branch (default `x-microstax-branch`).
    pub header: Option<String>,
    /// W3C baggage member key (default `microstax-branch`).
    pub baggage_key: Option<String>,
    /// Cookie name (default `microstax-branch`).
    pub cookie: Option<String>,
    /// Host patterns with one `{branch}` placeholder, e.g. `{branch}.preview.example.com`.
    #[serde(default)]
    pub host_patterns: Vec<String>,
    /// When true, a request naming an unknown branch gets 404 instead of the baseline.
    pub strict: Option<bool>,
}

/// Proxy routing settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingDoc {
    /// Service used when neither Host nor path prefix matches (default: none, answer 404).
    pub default_service: Option<String>,
    /// Add the `x-microstax-route` debug header to responses (default false).
    pub debug_header: Option<bool>,
    /// Branches allowed as metric label values; all others are counted without their name.
    #[serde(default)]
    pub label_branches: Vec<String>,
    /// Address of a branch-local instance the planner forks without a declared endpoint, e.g.
    /// `{service}-{instance}.branches.svc:8080` (placeholders `{service}`, `{branch}`, and
    /// `{instance}`, the first 12 hex digits of the instance's content address, which makes
    /// branches with an identical spec share one instance).
    pub instance_address: Option<String>,
}

/// The route policy of a service: timeouts, header rules, readiness and upstream protocol.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// TCP connect timeout to the upstream, in milliseconds.
    pub connect_timeout_ms: Option<u64>,
    /// Time allowed for the upstream's response headers, in milliseconds.
    pub request_timeout_ms: Option<u64>,
    /// Headers set on (or removed from) the request forwarded upstream.
    pub request_headers: Option<HeaderRulesDoc>,
    /// What to do while a branch-local upstream is not ready: `hold`, `fallback` or `fail`.
    pub readiness: Option<ReadinessDoc>,
    /// Protocol spoken to the upstream: `auto` (default: gRPC requests over HTTP/2 with prior
    /// knowledge, the rest over HTTP/1.1), `http1` or `http2` (prior knowledge, multiplexed).
    pub protocol: Option<String>,
    /// Most connections open to one upstream endpoint (default 256).
    pub max_connections: Option<u32>,
    /// Most requests waiting for a connection to one upstream endpoint (default 1024); past it
    /// the proxy answers 503 at once.
    pub max_pending_requests: Option<u32>,
    /// TLS to the upstream (replaced whole along the lineage); absent: plain TCP.
    pub upstream_tls: Option<UpstreamTlsDoc>,
}

/// TLS to a service's upstreams.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsDoc {
    /// PEM bundle of the CAs an upstream certificate must chain to (absolute, or relative to
    /// the proxy's working directory; the system's bundle, e.g.
    /// `/etc/ssl/certs/ca-certificates.crt`, gives the platform roots).
    pub ca_file: String,
    /// Name sent in SNI and verified against the certificate (default: the endpoint's host).
    pub server_name: Option<String>,
}

/// Header rules applied to the upstream request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesDoc {
    /// Headers to set, replacing any value the client sent.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Readiness policy of a branch-local upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReadinessDoc {
    /// `hold`, `fallback` or `fail`.
    pub policy: String,
    /// For `hold`: how long a request may wait for the upstream, in milliseconds.
    pub hold_ms: Option<u64>,
}

/// A service in the org catalog, or a service override in a team or branch layer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDoc {
    /// Org only: Host names that select this service (port and case ignored).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Org only: path prefixes that select this service at an ingress, e.g. `/orders/`.
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    /// Upstream endpoints, `host:port` or `http://host:port`.
    pub endpoints: Option<Vec<String>>,
    /// Branch only: a developer's endpoint (e.g. a laptop via a tunnel); routes like endpoints.
    pub local: Option<String>,
    /// Route policy (merged field by field along the lineage).
    pub policy: Option<PolicyDoc>,
    /// Org only: services this one calls.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Org only: data stores the service owns or uses.
    #[serde(default)]
    pub stores: Vec<StoreDoc>,
    /// Org only: message topics produced and consumed.
    pub topics: Option<TopicsDoc>,
    /// Resource requests of one instance.
    pub resources: Option<ResourcesDoc>,
    /// The image (or build) the service runs from.
    pub image: Option<String>,
    /// How to run it on this machine (the process executor); replaced whole along the lineage.
    pub run: Option<RunDoc>,
    /// Scale to zero: stop a branch-local instance after this many seconds without a request
    /// (absent: keep it running). The next request waits while it starts again.
    pub idle_after_s: Option<u64>,
    /// Org only: the longest a request may wait for the service to start (milliseconds); a
    /// branch-local instance whose cold start is longer is kept warm instead of scaled to zero.
    pub latency_objective_ms: Option<u64>,
    /// Org only: the service's expected cold start, in milliseconds (default 2000).
    pub cold_start_ms: Option<u64>,
    /// Org only: the reliability floor: a branch-local instance runs at least this many
    /// replicas (default 1).
    pub min_replicas: Option<u32>,
    /// Environment and config values; merged key by key along the lineage.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Org only: source globs that belong to the service (shared libraries map to every user).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Branch only: schema migrations this layer applies to the service's stores.
    #[serde(default)]
    pub migrations: Vec<MigrationDoc>,
    /// Branch only: message contracts changed by this layer, topic -> contract version.
    #[serde(default)]
    pub contracts: BTreeMap<String, String>,
    /// The version of the API the service serves to its callers (semver, e.g. `2.3.0`); set
    /// in the org layer, changed by a team or branch layer.
    pub api: Option<String>,
    /// What the service needs of the services it calls: callee -> semver requirement (e.g.
    /// `payments: "^2"`); each key must be one of its `depends_on`. Merged key by key along
    /// the lineage.
    #[serde(default)]
    pub requires: BTreeMap<String, String>,
}

/// A data store used by a service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreDoc {
    /// Store name, e.g. `orders-db`.
    pub name: String,
    /// Store kind: `postgres`, `mysql`, `redis`, `kafka`, ... (decides how it is isolated).
    pub kind: String,
}

/// Topics a service produces and consumes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TopicsDoc {
    /// Topics this service writes.
    #[serde(default)]
    pub produces: Vec<String>,
    /// Topics this service reads.
    #[serde(default)]
    pub consumes: Vec<String>,
}

/// Resource requests of one instance.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct ResourcesDoc {
    /// CPU in millicores.
    #[serde(default)]
    pub cpu_m: u32,
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mi: u32,
}

/// A schema migration declared by a branch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct MigrationDoc {
    /// The store migrated; must be one the service uses.
    pub store: String,
    /// A name or version of the migration.
    pub name: String,
    /// Whether the migration only adds (columns, tables, indexes), so it may run in a
    /// per-branch schema where the store allows that for additive migrations only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub additive: bool,
}

/// A source branch to diff for a branch layer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SourceDoc {
    /// The git branch with the changes.
    pub branch: String,
    /// The base ref to diff against (default `main`).
    pub base: Option<String>,
}
