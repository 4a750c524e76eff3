//! The proxy side: follow a prefix of etcd into a control plane. The first load lists the whole
//! prefix at one revision and waits for the planner's publish marker (so a proxy is never ready
//! on half of a first publish); the control plane is ready only once that load is applied. Then
//! a watch from the next revision applies each batch of events as one incremental change
//! (layer upserts and removals, validated like files: a corrupt or invalid value is rejected and
//! counted once, and the layer's last good version keeps serving). A broken watch is resumed
//! from the last revision seen; a compacted one lists again and applies the difference.
//!
//! A heartbeat (one small read every [`FollowOptions::heartbeat`]) tells whether the store still
//! answers: the proxy is in sync while its watch is open and the store answers, and
//! [`SyncStatus::staleness`] counts from the last moment it was.

use super::client::{Client, Event};
use super::layout::{decode, Layout};
use super::{Endpoint, EtcdError};
use crate::control::{Change, ChangeSource, ControlPlane};
use crate::watch::build_tolerant;
use microstax_config::{parse_text, Config, ConfigError, LayerKind, SourceText};
use prometheus::{Gauge, IntCounter, IntGauge, Opts, Registry};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How a proxy follows etcd.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// Bound of each request to etcd.
    pub timeout: Duration,
    /// Interval of the liveness read that keeps the staleness current.
    pub heartbeat: Duration,
    /// Longest wait between two attempts to reach etcd again (attempts start at 20 ms and
    /// double up to it).
    pub max_retry: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            timeout: Duration::from_secs(2),
            heartbeat: Duration::from_millis(500),
            max_retry: Duration::from_secs(1),
        }
    }
}

/// Interval of the marker read while no planner has published yet.
const MARKER_POLL: Duration = Duration::from_millis(50);

/// Where a follower stands, for `/readyz` and the metrics.
pub struct SyncStatus {
    endpoint: String,
    start: Instant,
    synced: AtomicBool,
    watching: AtomicBool,
    connected: AtomicBool,
    /// Milliseconds from `start` to the last moment the table was known current.
    last_sync_ms: AtomicU64,
    revision: AtomicI64,
    staleness_gauge: Gauge,
    revision_gauge: IntGauge,
    connected_gauge: IntGauge,
    relists: IntCounter,
}

impl SyncStatus {
    fn new(endpoint: String, registry: &Registry) -> Result<SyncStatus, prometheus::Error> {
        let staleness_gauge = Gauge::with_opts(Opts::new(
            "microstax_source_staleness_seconds",
            "Seconds since the proxy last knew its table matched the shared store",
        ))?;
        let revision_gauge = IntGauge::with_opts(Opts::new(
            "microstax_source_revision",
            "The store revision the proxy's table is built from",
        ))?;
        let connected_gauge = IntGauge::with_opts(Opts::new(
            "microstax_source_connected",
            "1 while the shared store answers, else 0",
        ))?;
        let relists = IntCounter::with_opts(Opts::new(
            "microstax_source_relists_total",
            "Full reloads from the store (the first load, and every compacted watch)",
        ))?;
        registry.register(Box::new(staleness_gauge.clone()))?;
        registry.register(Box::new(revision_gauge.clone()))?;
        registry.register(Box::new(connected_gauge.clone()))?;
        registry.register(Box::new(relists.clone()))?;
        Ok(SyncStatus {
            endpoint,
            start: Instant::now(),
            synced: AtomicBool::new(false),
            watching: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            last_sync_ms: AtomicU64::new(0),
            revision: AtomicI64::new(0),
            staleness_gauge,
            revision_gauge,
            connected_gauge,
            relists,
        })
    }

    /// Whether the first complete load is applied.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether the store answered the last request.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// The revision the table is built from.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Time since the table was last known to match the store (zero before the first load).
    pub fn staleness(&self) -> Duration {
        if !self.is_synced() {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_sync_ms.load(Ordering::Acquire));
        self.start.elapsed().saturating_sub(last)
    }

    /// The detail shown in `/readyz`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "etcd",
            "endpoint": self.endpoint,
            "synced": self.is_synced(),
            "connected": self.is_connected(),
            "watching": self.watching.load(Ordering::Acquire),
            "revision": self.revision(),
            "staleness_seconds": self.staleness().as_secs_f64(),
        })
    }

    /// Bring the staleness gauge up to the moment: called before every metrics scrape, so the
    /// gauge agrees with `/readyz` even while a heartbeat read hangs on a frozen store (it was
    /// set only when such a read failed, and read 0 until then).
    pub fn refresh_staleness(&self) {
        self.staleness_gauge.set(self.staleness().as_secs_f64());
    }

    fn mark_current(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_sync_ms.store(now, Ordering::Release);
        self.staleness_gauge.set(0.0);
    }

    fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
        self.connected_gauge.set(i64::from(up));
    }

    fn set_revision(&self, rev: i64) {
        self.revision.store(rev, Ordering::Release);
        self.revision_gauge.set(rev);
    }
}

/// The config a follower's control plane holds before its first load: an org with no services
/// (nothing routes, and `/readyz` says why).
pub fn placeholder_config() -> Result<Config, ConfigError> {
    let docs = parse_text(
        "etcd:(not loaded yet)",
        "kind: org\nservices: {}\n",
        Some(LayerKind::Org),
        None,
    )?;
    Config::build(docs)
}

/// A running follower: stops when dropped.
pub struct Following {
    /// Where it stands.
    pub status: Arc<SyncStatus>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Following {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Follow `endpoint` into `control` (built on [`placeholder_config`], not yet published):
/// `control` is published and ready once the first complete load is applied.
pub fn follow(
    endpoint: &Endpoint,
    control: Arc<ControlPlane>,
    registry: &Registry,
    options: FollowOptions,
) -> Result<Following, prometheus::Error> {
    let client = Client::new(&endpoint.host_port, options.timeout);
    let status = Arc::new(SyncStatus::new(
        format!("etcd://{}{}", endpoint.host_port, endpoint.prefix),
        registry,
    )?);
    let reconnect = Arc::new(Notify::new());
    let layout = Layout::new(&endpoint.prefix);
    let heartbeat = tokio::spawn(heartbeat(
        client.clone(),
        layout.meta(),
        status.clone(),
        reconnect.clone(),
        options.heartbeat,
    ));
    let follower = Follower {
        client,
        layout,
        control,
        status: status.clone(),
        applied: BTreeMap::new(),
        pending: BTreeMap::new(),
        reported: BTreeMap::new(),
        revision: 0,
        max_retry: options.max_retry,
    };
    let watch = tokio::spawn(follower.run(reconnect));
    Ok(Following {
        status,
        tasks: vec![heartbeat, watch],
    })
}

/// Read the publish marker every `every`: keeps `connected` and the staleness current, and asks
/// the watch to reconnect when the store answers again after failing (a watch that outlived a
/// network break may be dead without knowing it).
async fn heartbeat(
    client: Client,
    meta: String,
    status: Arc<SyncStatus>,
    reconnect: Arc<Notify>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = false;
    loop {
        tick.tick().await;
        let ok = client.get(&meta).await.is_ok();
        status.set_connected(ok);
        if ok && failed {
            reconnect.notify_one();
        }
        failed = !ok;
        if ok && status.watching.load(Ordering::Acquire) && status.is_synced() {
            status.mark_current();
        } else {
            status.refresh_staleness();
        }
    }
}

/// A key's new value, or None for a delete.
type Update = (String, Option<Vec<u8>>);

struct Follower {
    client: Client,
    layout: Layout,
    control: Arc<ControlPlane>,
    status: Arc<SyncStatus>,
    /// key -> value of every layer the control plane holds as published.
    applied: BTreeMap<String, Vec<u8>>,
    /// Updates the control plane refused (a branch whose parent is not there yet, a corrupt
    /// value): retried with every later batch until they apply or the key changes.
    pending: BTreeMap<String, Option<Vec<u8>>>,
    /// Refusals already logged and counted: key -> value, so each version is reported once.
    reported: BTreeMap<String, Option<Vec<u8>>>,
    revision: i64,
    max_retry: Duration,
}

impl Follower {
    async fn run(mut self, reconnect: Arc<Notify>) {
        self.first_load().await;
        loop {
            self.watch(&reconnect).await;
        }
    }

    /// List until a complete publish is there, apply it, publish the control plane.
    async fn first_load(&mut self) {
        let mut backoff = Backoff::new(self.max_retry);
        // each distinct reason is logged once, not at every attempt
        let mut said = String::new();
        loop {
            // the marker alone is a cheap read: poll it often, list the prefix once it is there
            let why = match self.client.get(&self.layout.meta()).await {
                Ok((_, None)) => {
                    self.status.set_connected(true);
                    backoff = Backoff::new(MARKER_POLL);
                    "waiting for a planner to publish to etcd".to_string()
                }
                Ok((_, Some(_))) => match self.relist(true).await {
                    Ok(true) => break,
                    Ok(false) => "waiting for a planner to publish to etcd".to_string(),
                    Err(e) => format!("first load from etcd failed, retrying: {e}"),
                },
                Err(e) => format!("first load from etcd failed, retrying: {e}"),
            };
            if why != said {
                tracing::warn!("{why}");
                said = why;
            }
            backoff.wait().await;
        }
        self.control.publish_initial().await;
        self.status.synced.store(true, Ordering::Release);
        self.status.mark_current();
        tracing::info!(revision = self.revision, "loaded from etcd");
    }

    /// List the prefix at one revision and apply what differs from `applied`. With
    /// `need_marker`, does nothing (Ok(false)) unless the planner's publish marker is there.
    async fn relist(&mut self, need_marker: bool) -> Result<bool, EtcdError> {
        // layers, leader and meta sort before `plans/`, which followers do not read
        let all = format!("{}/", self.layout.leader().trim_end_matches("/leader"));
        let (revision, kvs) = self.client.range(&all, &self.layout.plans()).await?;
        self.status.set_connected(true);
        let meta = self.layout.meta();
        if need_marker && !kvs.iter().any(|kv| kv.key == meta.as_bytes()) {
            return Ok(false);
        }
        let desired: BTreeMap<String, Vec<u8>> = kvs
            .into_iter()
            .filter_map(|kv| {
                let key = String::from_utf8(kv.key).ok()?;
                self.layout.parse_key(&key)?;
                Some((key, kv.value))
            })
            .collect();
        let mut updates: Vec<Update> = desired
            .iter()
            .filter(|(k, v)| self.applied.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        updates.extend(
            self.applied
                .keys()
                .filter(|k| !desired.contains_key(*k))
                .map(|k| (k.clone(), None)),
        );
        // what was pending is replaced by what the store holds now
        self.pending.clear();
        if need_marker && self.applied.is_empty() {
            self.load_all(&desired, updates).await;
        } else {
            self.apply(updates).await;
        }
        self.revision = revision;
        self.status.set_revision(revision);
        self.status.relists.inc();
        Ok(true)
    }

    /// The first load: every layer at once, built in one pass (applying 10k layers one by one
    /// costs a config copy each). Values that do not decode or validate are left out, refused
    /// and retried like any other; an org that does not validate falls back to `apply`, which
    /// refuses it.
    async fn load_all(&mut self, desired: &BTreeMap<String, Vec<u8>>, updates: Vec<Update>) {
        let mut sources = Vec::new();
        let mut refused: Vec<(String, ConfigError)> = Vec::new();
        for (key, value) in desired {
            let Some((kind, name)) = self.layout.parse_key(key) else {
                continue;
            };
            match decode(key, kind, name, value) {
                Ok(_) => sources.push(SourceText {
                    rel: format!("etcd:{key}"),
                    text: String::from_utf8_lossy(value).into_owned(),
                    kind: Some(kind),
                    stem: (kind != LayerKind::Org).then(|| name.to_string()),
                }),
                Err(e) => refused.push((key.clone(), e)),
            }
        }
        let (cfg, left_out) = match build_tolerant(&sources) {
            Ok(v) => v,
            Err(_) => return self.apply(updates).await,
        };
        for e in left_out {
            let files: BTreeSet<String> = e
                .diagnostics()
                .iter()
                .filter_map(|d| d.file.strip_prefix("etcd:").map(str::to_string))
                .collect();
            for key in files {
                let diagnostics = e.diagnostics().to_vec();
                refused.push((key, ConfigError::Invalid { diagnostics }));
            }
        }
        self.control.replace(cfg, ChangeSource::Etcd).await;
        let refused_keys: BTreeSet<&String> = refused.iter().map(|(k, _)| k).collect();
        self.applied = desired
            .iter()
            .filter(|(k, _)| !refused_keys.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (key, e) in refused {
            let value = desired.get(&key).cloned();
            self.refuse(key, value, &e);
        }
    }

    /// One watch from the next revision, until it breaks, is compacted, or a reconnect is asked.
    async fn watch(&mut self, reconnect: &Notify) {
        let mut backoff = Backoff::new(self.max_retry);
        let mut w = loop {
            match self
                .client
                .watch(&self.layout.layers(), self.revision + 1)
                .await
            {
                Ok(w) => break w,
                Err(e) => {
                    self.status.set_connected(false);
                    tracing::debug!("etcd watch not established, retrying: {e}");
                    backoff.wait().await;
                }
            }
        };
        self.status.watching.store(true, Ordering::Release);
        loop {
            let msg = tokio::select! {
                m = w.next() => m,
                () = reconnect.notified() => break,
            };
            match msg {
                Ok(m) if m.compacted.is_some() => {
                    self.status.watching.store(false, Ordering::Release);
                    tracing::warn!(
                        revision = self.revision,
                        compacted = m.compacted,
                        "etcd history compacted past our revision: listing again"
                    );
                    self.relist_until_done().await;
                    return;
                }
                Ok(m) if m.canceled => break,
                Ok(m) => {
                    self.status.set_connected(true);
                    if !m.events.is_empty() {
                        self.apply_events(m.events).await;
                    }
                    self.status.mark_current();
                }
                Err(e) => {
                    tracing::debug!("etcd watch broke, resuming from {}: {e}", self.revision);
                    break;
                }
            }
        }
        self.status.watching.store(false, Ordering::Release);
    }

    async fn relist_until_done(&mut self) {
        let mut backoff = Backoff::new(self.max_retry);
        loop {
            match self.relist(false).await {
                Ok(_) => return,
                Err(e) => {
                    self.status.set_connected(false);
                    tracing::warn!("listing etcd again failed, retrying: {e}");
                }
            }
            backoff.wait().await;
        }
    }

    async fn apply_events(&mut self, events: Vec<Event>) {
        let mut last: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for e in events {
            self.revision = self.revision.max(e.kv.mod_revision);
            let Ok(key) = String::from_utf8(e.kv.key) else {
                continue;
            };
            last.insert(key, (!e.delete).then_some(e.kv.value));
        }
        self.status.set_revision(self.revision);
        self.apply(last.into_iter().collect()).await;
    }

    /// Apply `updates` (and retry the pending ones) as one batch: each is accepted or refused
    /// on its own.
    async fn apply(&mut self, updates: Vec<Update>) {
        let mut batch: BTreeMap<String, Option<Vec<u8>>> = std::mem::take(&mut self.pending);
        batch.extend(updates);
        let mut keys = Vec::new();
        let mut changes = Vec::new();
        for (key, value) in batch {
            let Some((kind, name)) = self.layout.parse_key(&key) else {
                continue;
            };
            let change = match &value {
                Some(v) => match decode(&key, kind, name, v) {
                    Ok(doc) => Change::Upsert(Box::new(doc)),
                    Err(e) => {
                        self.refuse(key, value, &e);
                        continue;
                    }
                },
                None if kind == LayerKind::Org => {
                    tracing::warn!(
                        "the org layer was deleted from etcd: keeping the last good one"
                    );
                    continue;
                }
                None if !self.applied.contains_key(&key) => {
                    self.reported.remove(&key);
                    continue;
                }
                None => Change::Remove {
                    name: name.to_string(),
                    origin: Arc::from(format!("etcd:{key} (deleted)")),
                },
            };
            keys.push((key, value));
            changes.push(change);
        }
        if changes.is_empty() {
            return;
        }
        let outcome = self.control.apply_each(changes, ChangeSource::Etcd).await;
        for ((key, value), result) in keys.into_iter().zip(outcome.results) {
            match result {
                Ok(()) => {
                    self.reported.remove(&key);
                    match value {
                        Some(v) => self.applied.insert(key, v),
                        None => self.applied.remove(&key),
                    };
                }
                Err(e) => self.refuse(key, value, &e),
            }
        }
    }

    /// Keep `key`'s update pending (its last good version keeps serving) and report it once.
    fn refuse(&mut self, key: String, value: Option<Vec<u8>>, e: &ConfigError) {
        if self.reported.get(&key) != Some(&value) {
            self.control.reject(e, ChangeSource::Etcd);
            self.reported.insert(key.clone(), value.clone());
        }
        self.pending.insert(key, value);
    }
}

/// Waits between attempts: 20 ms, doubling up to a bound.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(20).min(max),
            max,
        }
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn the_placeholder_is_a_valid_config_with_no_service() {
        let c = placeholder_config().expect("valid");
        assert!(c.services().is_empty());
    }

    /// The scraped staleness gauge, as `/metrics` shows it.
    fn scraped(registry: &Registry) -> f64 {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == "microstax_source_staleness_seconds")
            .and_then(|f| f.get_metric().first().map(|m| m.get_gauge().get_value()))
            .expect("the gauge")
    }

    #[test]
    fn a_scrape_shows_the_staleness_readyz_shows_while_no_heartbeat_returns() {
        let registry = Registry::new();
        let status = SyncStatus::new("http://127.0.0.1:1".into(), &registry).expect("status");
        status.synced.store(true, Ordering::Release);
        status.mark_current();
        // the store then hangs: no heartbeat read returns, so nothing sets the gauge on a tick
        let deadline = Instant::now() + Duration::from_secs(10);
        while status.staleness().is_zero() {
            assert!(Instant::now() < deadline, "staleness never grew");
            std::thread::yield_now();
        }
        assert_eq!(scraped(&registry), 0.0);
        status.refresh_staleness();
        let shown = scraped(&registry);
        assert!(
            shown > 0.0 && shown <= status.staleness().as_secs_f64(),
            "{shown}"
        );
    }
}
