//! The planner side: publish the control plane's layers to etcd while this planner leads.
//!
//! Election: a planner grants itself a lease and creates the election key attached to it in a
//! transaction that succeeds only if the key is absent; it leads while it keeps the lease alive
//! (renewed every third of its TTL). A standby retries every quarter TTL, so it takes over at
//! most a quarter TTL after the leader's lease expires (a leader that stops cleanly revokes its
//! lease: the standby takes over at its next attempt).
//!
//! Publishing: on taking the lead, the planner lists the prefix and writes the difference to its
//! config; then, after every table its control plane publishes, the layers that changed.
//! Every transaction is guarded by the election key's create revision (only the current leader
//! writes) and by the publish marker's revision (nobody wrote since this leader's last write),
//! and rewrites the marker. A transaction holds at most [`PublishOptions::max_txn_ops`]
//! operations (etcd refuses more than its `--max-txn-ops`, 128 by default): a larger change is
//! written in several, the marker last, and followers apply each layer on its own.
//!
//! Plans: after the layers (followers do not wait for them), the same guarded transactions
//! write each team's and branch's plan (the JSON the admin `/plan` serves) under
//! `PREFIX/plans/LABEL`, and delete it with its layer; plans are computed on a blocking thread. After a
//! change only the plans it can alter are computed again: those of the changed layers, of their
//! descendants (every one when the org changes), and of the other layers of a budgeted team one
//! of whose layers changed; a plan is written only when its JSON differs from what was written.

use super::client::{Client, Compare, Op};
use super::layout::{encode, Layout};
use super::{Endpoint, EtcdError};
use crate::control::{ControlPlane, TableSink};
use microstax_config::{Config, LayerKind, ParsedDoc, RoutingTable};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How a planner publishes.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// This planner's name in the election key and the marker.
    pub id: String,
    /// TTL of the leader's lease: a standby takes over within about this long after the leader
    /// dies.
    pub lease_ttl: Duration,
    /// Bound of each request to etcd.
    pub timeout: Duration,
    /// Most operations in one transaction (etcd's `--max-txn-ops`).
    pub max_txn_ops: usize,
    /// Most value bytes in one transaction (below etcd's `--max-request-bytes`, 1.5 MiB by
    /// default).
    pub max_txn_bytes: usize,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            id: format!("planner-{}", std::process::id()),
            lease_ttl: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            max_txn_ops: 128,
            max_txn_bytes: 1 << 20,
        }
    }
}

/// A sink that passes tables on and counts them, so the publisher hears of every change.
pub struct NotifySink {
    inner: Arc<dyn TableSink>,
    published: watch::Sender<u64>,
}

impl NotifySink {
    /// Wrap `inner`; the receiver sees the count of tables published.
    pub fn new(inner: Arc<dyn TableSink>) -> (Arc<NotifySink>, watch::Receiver<u64>) {
        let (tx, rx) = watch::channel(0);
        (
            Arc::new(NotifySink {
                inner,
                published: tx,
            }),
            rx,
        )
    }
}

impl TableSink for NotifySink {
    fn publish(&self, table: Arc<RoutingTable>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.inner.publish(table).await;
            self.published.send_modify(|n| *n += 1);
        })
    }
}

/// A running publisher.
pub struct Publisher {
    client: Client,
    lease: Arc<AtomicI64>,
    leader: IntGauge,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    /// Campaign for `endpoint`'s prefix and publish `control`'s layers while leading; `changes`
    /// comes from the [`NotifySink`] the control plane publishes through.
    pub fn start(
        endpoint: &Endpoint,
        control: Arc<ControlPlane>,
        changes: watch::Receiver<u64>,
        registry: &Registry,
        options: PublishOptions,
    ) -> Result<Publisher, prometheus::Error> {
        let leader = IntGauge::with_opts(Opts::new(
            "microstax_etcd_leader",
            "1 while this planner is the one publishing to etcd, else 0",
        ))?;
        let writes = IntCounterVec::new(
            Opts::new(
                "microstax_etcd_publish_total",
                "Transactions written to etcd by result (ok, conflict, error)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        let client = Client::new(&endpoint.host_port, options.timeout);
        let lease = Arc::new(AtomicI64::new(0));
        let campaign = Campaign {
            client: client.clone(),
            layout: Layout::new(&endpoint.prefix),
            control,
            changes,
            options,
            lease: lease.clone(),
            leader: leader.clone(),
            writes,
        };
        let task = tokio::spawn(campaign.run());
        Ok(Publisher {
            client,
            lease,
            leader,
            task,
        })
    }

    /// Whether this planner leads now.
    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Stop publishing and give the lead up at once (revoke the lease), so a standby takes over
    /// at its next attempt rather than after the TTL.
    pub async fn resign(self) {
        self.task.abort();
        self.leader.set(0);
        let id = self.lease.swap(0, Ordering::AcqRel);
        if id != 0 {
            if let Err(e) = self.client.lease_revoke(id).await {
                tracing::warn!("could not revoke the etcd lease (it expires by itself): {e}");
            }
        }
    }
}

/// What was last written for one layer.
struct Entry {
    /// The etcd key.
    key: String,
    /// The document (by pointer, to skip unchanged layers cheaply: an unchanged layer keeps its
    /// `Arc` from one config to the next).
    doc: Arc<ParsedDoc>,
    /// Its encoding as written.
    value: Vec<u8>,
    /// The diff pass that last saw the layer in the config.
    seen: u64,
}

/// What was last written, by layer label (`baseline`, `team/NAME`, `branch/NAME`): unique per
/// layer and already allocated by the config, so a diff of 10k unchanged layers allocates
/// nothing and hashes short strings only.
#[derive(Default)]
struct Published {
    layers: FxHashMap<Arc<str>, Entry>,
    plans: FxHashMap<Arc<str>, PlanEntry>,
    pass: u64,
}

impl Published {
    fn clear(&mut self) {
        self.layers.clear();
        self.plans.clear();
    }
}

/// What was last written for one team's or branch's plan, by layer label.
struct PlanEntry {
    /// Its JSON as written.
    value: Vec<u8>,
    /// The budgeted team it counts against: its plan depends on that team's other layers.
    budget: Option<Arc<str>>,
}

/// A plan to compute: the layer's label, its name, and its budgeted team.
type PlanJob = (Arc<str>, String, Option<Arc<str>>);

/// The plans of `cfg` that `changed` (layer labels written or deleted) can alter, or every
/// plan when `changed` is None.
fn plans_to_compute(
    cfg: &Config,
    published: &Published,
    changed: Option<&FxHashSet<Arc<str>>>,
) -> Vec<PlanJob> {
    let in_lineage = |l: &microstax_config::Layer, set: &FxHashSet<Arc<str>>| {
        let mut cur = Some(l);
        while let Some(x) = cur {
            if set.contains(&x.label) {
                return true;
            }
            cur = x.parent.and_then(|p| cfg.layer(p)).map(|a| &**a);
        }
        false
    };
    let mut jobs = Vec::new();
    let mut rest = Vec::new();
    let mut teams: FxHashSet<Arc<str>> = FxHashSet::default();
    if let Some(set) = changed {
        // a layer that left or changed its budgeted team changes the team's other plans
        teams.extend(
            set.iter()
                .filter_map(|label| published.plans.get(label)?.budget.clone()),
        );
    }
    for l in cfg.layers().filter(|l| l.kind != LayerKind::Org) {
        let budget = cfg
            .layer_id(&l.name)
            .and_then(|i| cfg.budget(i))
            .map(|b| b.label);
        let job = (l.label.clone(), l.name.clone(), budget);
        match changed {
            Some(set) if !in_lineage(l, set) => {
                if job.2.is_some() {
                    rest.push(job);
                }
            }
            _ => {
                teams.extend(job.2.clone());
                jobs.push(job);
            }
        }
    }
    jobs.extend(
        rest.into_iter()
            .filter(|j| j.2.as_ref().is_some_and(|t| teams.contains(t))),
    );
    jobs
}

/// Each job's plan as JSON, as the admin `/plan` answers (an error as `{"layer", "error"}`).
fn compute_plans(cfg: &Config, jobs: Vec<PlanJob>) -> Vec<(PlanJob, Vec<u8>)> {
    let planner = crate::planner::Planner::new(cfg);
    jobs.into_iter()
        .map(|job| {
            let plan = planner
                .as_ref()
                .map_err(ToString::to_string)
                .and_then(|p| p.plan(cfg, &job.1, None).map_err(|e| e.to_string()));
            let v = match plan {
                Ok(p) => p.to_json(),
                Err(e) => serde_json::json!({ "layer": &*job.0, "error": e }),
            };
            let bytes = serde_json::to_vec(&v).unwrap_or_default();
            (job, bytes)
        })
        .collect()
}

struct Campaign {
    client: Client,
    layout: Layout,
    control: Arc<ControlPlane>,
    changes: watch::Receiver<u64>,
    options: PublishOptions,
    lease: Arc<AtomicI64>,
    leader: IntGauge,
    writes: IntCounterVec,
}

/// Why leading stopped.
enum Stop {
    /// The lease was lost or another planner leads.
    Lost,
}

impl Campaign {
    async fn run(mut self) {
        let retry = (self.options.lease_ttl / 4).max(Duration::from_millis(100));
        loop {
            match self.campaign().await {
                Ok(Some(created)) => {
                    tracing::info!(id = self.options.id, "leading: publishing to etcd");
                    self.leader.set(1);
                    let (lost_tx, lost_rx) = watch::channel(false);
                    let keepalive = tokio::spawn(keep_alive(
                        self.client.clone(),
                        self.lease.load(Ordering::Acquire),
                        self.options.lease_ttl,
                        lost_tx,
                    ));
                    let Stop::Lost = self.lead(created, lost_rx).await;
                    keepalive.abort();
                    self.leader.set(0);
                    self.lease.store(0, Ordering::Release);
                    tracing::warn!(id = self.options.id, "no longer leading: standing by");
                }
                Ok(None) => {}
                Err(e) => tracing::debug!("etcd campaign failed, retrying: {e}"),
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// One attempt: the election key's create revision when won.
    async fn campaign(&self) -> Result<Option<i64>, EtcdError> {
        let lease = self.client.lease_grant(self.options.lease_ttl).await?;
        let key = self.layout.leader();
        let won = self
            .client
            .txn(
                &[Compare::CreateRevision(key.clone(), 0)],
                &[Op::Put {
                    key: key.clone(),
                    value: self.options.id.as_bytes().to_vec(),
                    lease,
                }],
                &[],
            )
            .await;
        match won {
            Ok(t) if t.succeeded => {
                self.lease.store(lease, Ordering::Release);
                Ok(Some(t.revision))
            }
            other => {
                let _ = self.client.lease_revoke(lease).await;
                other.map(|_| None)
            }
        }
    }

    /// Publish while leading (election key created at `created`).
    async fn lead(&mut self, created: i64, mut lost: watch::Receiver<bool>) -> Stop {
        let mut published = Published::default();
        let mut marker: Option<i64> = None;
        // layers whose plans a failed commit may have left unwritten: planned again next pass
        let mut replan: FxHashSet<Arc<str>> = FxHashSet::default();
        loop {
            // the config is stored after the sink returns: taking the state lock waits for a
            // publish in flight to finish
            let _ = self.control.table().await;
            let cfg = self.control.config();
            let result = match marker {
                None => self.full_sync(created, &cfg, &mut published).await,
                Some(m) => {
                    let ops = diff(&self.layout, &cfg, &mut published);
                    replan.extend(ops.iter().filter_map(Write::layer_label));
                    // the layers first: followers do not wait for the plans
                    match self.commit(created, m, ops, &mut published).await {
                        Ok(m) if replan.is_empty() => Ok(m),
                        Ok(m) => {
                            marker = Some(m);
                            let ops = self.plan_changes(&cfg, &replan, &mut published).await;
                            self.commit(created, m, ops, &mut published).await
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            match result {
                Ok(m) => {
                    marker = Some(m);
                    replan.clear();
                }
                Err(Failure::Conflict) => {
                    self.writes.with_label_values(&["conflict"]).inc();
                    match self.client.get(&self.layout.leader()).await {
                        Ok((_, Some(kv))) if kv.create_revision == created => {
                            // someone wrote under us yet we lead: write everything again
                            marker = None;
                            published.clear();
                            replan.clear();
                        }
                        _ => return Stop::Lost,
                    }
                }
                Err(Failure::Etcd(e)) => {
                    self.writes.with_label_values(&["error"]).inc();
                    tracing::warn!("publishing to etcd failed, retrying: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = lost.wait_for(|l| *l) => return Stop::Lost,
                    }
                    continue;
                }
            }
            tokio::select! {
                r = self.changes.changed() => if r.is_err() { return Stop::Lost },
                _ = lost.wait_for(|l| *l) => return Stop::Lost,
            }
        }
    }

    /// Write the difference between the prefix and `cfg`; returns the marker's revision.
    async fn full_sync(
        &self,
        created: i64,
        cfg: &Arc<Config>,
        published: &mut Published,
    ) -> Result<i64, Failure> {
        let (_, kvs) = self
            .client
            .range_prefix(&self.layout.layers())
            .await
            .map_err(Failure::Etcd)?;
        let (_, meta) = self
            .client
            .get(&self.layout.meta())
            .await
            .map_err(Failure::Etcd)?;
        let mut existing: BTreeMap<String, Vec<u8>> = kvs
            .into_iter()
            .filter_map(|kv| Some((String::from_utf8(kv.key).ok()?, kv.value)))
            .collect();
        published.clear();
        let mut ops = Vec::new();
        for l in cfg.layers() {
            let key = self.layout.layer_key(l.kind, &l.name);
            let value = encode(&l.doc);
            if existing.remove(&key).as_deref() != Some(value.as_slice()) {
                ops.push(Write::Put(l.label.clone(), key, value, l.doc.clone()));
            } else {
                published.layers.insert(
                    l.label.clone(),
                    Entry {
                        key,
                        doc: l.doc.clone(),
                        value,
                        seen: published.pass,
                    },
                );
            }
        }
        ops.extend(existing.into_keys().map(|k| Write::Delete(None, k)));
        let marker = meta.map_or(0, |kv| kv.mod_revision);
        // the layers first: followers do not wait for the plans
        let marker = self.commit(created, marker, ops, published).await?;
        let (_, plan_kvs) = self
            .client
            .range_prefix(&self.layout.plans())
            .await
            .map_err(Failure::Etcd)?;
        let mut existing: BTreeMap<String, Vec<u8>> = plan_kvs
            .into_iter()
            .filter_map(|kv| Some((String::from_utf8(kv.key).ok()?, kv.value)))
            .collect();
        let jobs = plans_to_compute(cfg, published, None);
        let mut ops = self
            .plan_writes(cfg, jobs, published, Some(&mut existing))
            .await;
        ops.extend(existing.into_keys().map(|k| Write::DeletePlan(None, k)));
        self.commit(created, marker, ops, published).await
    }

    /// The plan writes after the layers `changed` were written or deleted: the plans they can
    /// alter, and the deletion of the plans of layers that are gone.
    async fn plan_changes(
        &self,
        cfg: &Arc<Config>,
        changed: &FxHashSet<Arc<str>>,
        published: &mut Published,
    ) -> Vec<Write> {
        let jobs = plans_to_compute(cfg, published, Some(changed));
        // a changed layer that has no job is gone (or is the org): so is its plan
        let planned: FxHashSet<&Arc<str>> = jobs.iter().map(|j| &j.0).collect();
        let mut ops: Vec<Write> = changed
            .iter()
            .filter(|l| !planned.contains(l) && published.plans.contains_key(*l))
            .map(|l| Write::DeletePlan(Some(l.clone()), self.layout.plan_key(l)))
            .collect();
        ops.extend(self.plan_writes(cfg, jobs, published, None).await);
        ops
    }

    /// The plan writes of `jobs`: computed off the runtime's threads, written when they differ
    /// from what was written (`existing`: what the prefix holds, at a full sync; entries
    /// matched are taken out of it).
    async fn plan_writes(
        &self,
        cfg: &Arc<Config>,
        jobs: Vec<PlanJob>,
        published: &mut Published,
        mut existing: Option<&mut BTreeMap<String, Vec<u8>>>,
    ) -> Vec<Write> {
        if jobs.is_empty() {
            return Vec::new();
        }
        let c = cfg.clone();
        let computed = match tokio::task::spawn_blocking(move || compute_plans(&c, jobs)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("computing the plans to publish failed: {e}");
                return Vec::new();
            }
        };
        let mut ops = Vec::new();
        for ((label, _, budget), value) in computed {
            let key = self.layout.plan_key(&label);
            let same = match existing.as_deref_mut() {
                Some(ex) => ex.remove(&key).as_deref() == Some(value.as_slice()),
                None => published
                    .plans
                    .get(&label)
                    .is_some_and(|e| e.value == value),
            };
            if same {
                published.plans.insert(label, PlanEntry { value, budget });
            } else {
                ops.push(Write::PutPlan(label, key, value, budget));
            }
        }
        ops
    }

    /// Write `ops` in as few guarded transactions as the bounds allow, the marker in the last.
    async fn commit(
        &self,
        created: i64,
        mut marker: i64,
        ops: Vec<Write>,
        published: &mut Published,
    ) -> Result<i64, Failure> {
        let start = Instant::now();
        let n = ops.len();
        let mut chunks = chunk(
            ops,
            self.options.max_txn_ops.max(2) - 1,
            self.options.max_txn_bytes,
        );
        if chunks.is_empty() {
            if marker != 0 {
                return Ok(marker);
            }
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        for (i, writes) in chunks.into_iter().enumerate() {
            let mut txn: Vec<Op> = writes.iter().map(Write::op).collect();
            if i == last {
                let meta = serde_json::json!({"planner": self.options.id});
                txn.push(Op::Put {
                    key: self.layout.meta(),
                    value: meta.to_string().into_bytes(),
                    lease: 0,
                });
            }
            let guard = [
                Compare::CreateRevision(self.layout.leader(), created),
                Compare::ModRevision(self.layout.meta(), marker),
            ];
            let t = self
                .client
                .txn(&guard, &txn, &[])
                .await
                .map_err(Failure::Etcd)?;
            if !t.succeeded {
                return Err(Failure::Conflict);
            }
            self.writes.with_label_values(&["ok"]).inc();
            if i == last {
                marker = t.revision;
            }
            let pass = published.pass;
            for w in writes {
                match w {
                    Write::Put(label, key, value, doc) => {
                        let seen = pass;
                        published.layers.insert(
                            label,
                            Entry {
                                key,
                                doc,
                                value,
                                seen,
                            },
                        );
                    }
                    Write::Delete(Some(label), _) => {
                        published.layers.remove(&label);
                    }
                    Write::Delete(None, _) | Write::DeletePlan(None, _) => {}
                    Write::PutPlan(label, _, value, budget) => {
                        published.plans.insert(label, PlanEntry { value, budget });
                    }
                    Write::DeletePlan(Some(label), _) => {
                        published.plans.remove(&label);
                    }
                }
            }
        }
        tracing::debug!(writes = n, elapsed = ?start.elapsed(), "published to etcd");
        Ok(marker)
    }
}

enum Failure {
    /// A guard did not hold.
    Conflict,
    /// The store did not answer or refused.
    Etcd(EtcdError),
}

/// One layer write: the layer's label (None for a key no layer of ours holds), the key, and
/// for a put the value and the document.
/// A plan write: the layer's label (None for a key no layer of ours holds), the key, and for a
/// put the JSON and the layer's budgeted team.
enum Write {
    Put(Arc<str>, String, Vec<u8>, Arc<ParsedDoc>),
    Delete(Option<Arc<str>>, String),
    PutPlan(Arc<str>, String, Vec<u8>, Option<Arc<str>>),
    DeletePlan(Option<Arc<str>>, String),
}

impl Write {
    fn op(&self) -> Op {
        match self {
            Write::Put(_, k, v, _) | Write::PutPlan(_, k, v, _) => Op::Put {
                key: k.clone(),
                value: v.clone(),
                lease: 0,
            },
            Write::Delete(_, k) | Write::DeletePlan(_, k) => Op::Delete(k.clone()),
        }
    }

    fn size(&self) -> usize {
        match self {
            Write::Put(_, k, v, _) | Write::PutPlan(_, k, v, _) => k.len() + v.len(),
            Write::Delete(_, k) | Write::DeletePlan(_, k) => k.len(),
        }
    }

    /// The label of the layer this writes or deletes (not of a plan).
    fn layer_label(&self) -> Option<Arc<str>> {
        match self {
            Write::Put(l, ..) | Write::Delete(Some(l), _) => Some(l.clone()),
            _ => None,
        }
    }
}

fn chunk(ops: Vec<Write>, max_ops: usize, max_bytes: usize) -> Vec<Vec<Write>> {
    let mut out: Vec<Vec<Write>> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = op.size();
        match out.last_mut() {
            Some(c) if c.len() < max_ops && bytes + size <= max_bytes => {
                bytes += size;
                c.push(op);
            }
            _ => {
                bytes = size;
                out.push(vec![op]);
            }
        }
    }
    out
}

/// The writes that turn `published` into `cfg`: layers whose document changed (compared by
/// pointer first: an unchanged layer keeps its `Arc`), and the ones that are gone.
fn diff(layout: &Layout, cfg: &microstax_config::Config, published: &mut Published) -> Vec<Write> {
    published.pass += 1;
    let pass = published.pass;
    let mut ops = Vec::new();
    for l in cfg.layers() {
        match published.layers.get_mut(&*l.label) {
            Some(e) if Arc::ptr_eq(&e.doc, &l.doc) => e.seen = pass,
            Some(e) => {
                e.seen = pass;
                let v = encode(&l.doc);
                if v == e.value {
                    e.doc = l.doc.clone();
                } else {
                    ops.push(Write::Put(l.label.clone(), e.key.clone(), v, l.doc.clone()));
                }
            }
            None => ops.push(Write::Put(
                l.label.clone(),
                layout.layer_key(l.kind, &l.name),
                encode(&l.doc),
                l.doc.clone(),
            )),
        }
    }
    ops.extend(
        published
            .layers
            .iter()
            .filter(|(_, e)| e.seen != pass)
            .map(|(label, e)| Write::Delete(Some(label.clone()), e.key.clone())),
    );
    ops
}

/// Renew `lease` every third of `ttl`; report the lead lost when etcd says the lease is gone or
/// when no renewal succeeded for a whole TTL (it has expired by then).
async fn keep_alive(client: Client, lease: i64, ttl: Duration, lost: watch::Sender<bool>) {
    let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok = Instant::now();
    loop {
        tick.tick().await;
        match client.lease_keepalive(lease).await {
            Ok(left) if left > 0 => last_ok = Instant::now(),
            Ok(_) => break,
            Err(_) if last_ok.elapsed() >= ttl => break,
            Err(_) => {}
        }
    }
    let _ = lost.send(true);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;
    use microstax_config::parse_text;

    fn config() -> Config {
        let org =
            "kind: org\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"127.0.0.1:1\"]\n";
        let mut docs = parse_text("org.yaml", org, Some(LayerKind::Org), None).expect("org");
        docs.extend(
            parse_text(
                "teams/t.yaml",
                "parent: baseline\nbudget: {max_instances: 3}\n",
                Some(LayerKind::Team),
                Some("t"),
            )
            .expect("team"),
        );
        for (name, parent) in [("a", "t"), ("b", "t"), ("c", "baseline")] {
            let text = format!("parent: {parent}\n");
            let file = format!("branches/{name}.yaml");
            docs.extend(
                parse_text(&file, &text, Some(LayerKind::Branch), Some(name)).expect("branch"),
            );
        }
        Config::build(docs).expect("valid")
    }

    fn planned(cfg: &Config, published: &Published, changed: &[&str]) -> Vec<String> {
        let set: FxHashSet<Arc<str>> = changed.iter().map(|l| Arc::from(*l)).collect();
        let mut v: Vec<String> = plans_to_compute(cfg, published, Some(&set))
            .into_iter()
            .map(|j| j.0.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn only_the_plans_a_change_can_alter_are_computed() {
        let cfg = config();
        let published = Published::default();
        let all = plans_to_compute(&cfg, &published, None);
        assert_eq!(all.len(), 4, "the team and its three branches");
        assert_eq!(planned(&cfg, &published, &[]), Vec::<String>::new());
        assert_eq!(planned(&cfg, &published, &["branch/c"]), ["branch/c"]);
        // a budgeted team's plans depend on each other
        assert_eq!(
            planned(&cfg, &published, &["branch/a"]),
            ["branch/a", "branch/b", "team/t"]
        );
        assert_eq!(
            planned(&cfg, &published, &["team/t"]),
            ["branch/a", "branch/b", "team/t"]
        );
        assert_eq!(planned(&cfg, &published, &["baseline"]).len(), 4);
        // a budgeted branch that is gone changes its team's other plans
        let mut published = Published::default();
        published.plans.insert(
            Arc::from("branch/gone"),
            PlanEntry {
                value: Vec::new(),
                budget: Some(Arc::from("team/t")),
            },
        );
        assert_eq!(
            planned(&cfg, &published, &["branch/gone"]),
            ["branch/a", "branch/b", "team/t"]
        );
        let computed = compute_plans(&cfg, all);
        assert!(computed.iter().all(|(j, v)| {
            let p: serde_json::Value = serde_json::from_slice(v).expect("json");
            p["layer"] == *j.0
        }));
    }

    #[test]
    fn writes_are_chunked_by_count_and_bytes() {
        let doc = |k: &str| Write::Delete(None, k.to_string());
        let c = chunk((0..5).map(|i| doc(&format!("k{i}"))).collect(), 2, 1 << 20);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        let c = chunk(vec![doc("aaaa"), doc("bbbb"), doc("c")], 10, 8);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    }
}
