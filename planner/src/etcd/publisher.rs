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

use super::client::{Client, Compare, Op};
use super::layout::{encode, Layout};
use super::{Endpoint, EtcdError};
use crate::control::{ControlPlane, TableSink};
use microstax_config::{ParsedDoc, RoutingTable};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rustc_hash::FxHashMap;
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
    pass: u64,
}

impl Published {
    fn clear(&mut self) {
        self.layers.clear();
    }
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
        loop {
            // the config is stored after the sink returns: taking the state lock waits for a
            // publish in flight to finish
            let _ = self.control.table().await;
            let cfg = self.control.config();
            let result = match marker {
                None => self.full_sync(created, &cfg, &mut published).await,
                Some(m) => {
                    let ops = diff(&self.layout, &cfg, &mut published);
                    self.commit(created, m, ops, &mut published).await
                }
            };
            match result {
                Ok(m) => marker = Some(m),
                Err(Failure::Conflict) => {
                    self.writes.with_label_values(&["conflict"]).inc();
                    match self.client.get(&self.layout.leader()).await {
                        Ok((_, Some(kv))) if kv.create_revision == created => {
                            // someone wrote under us yet we lead: write everything again
                            marker = None;
                            published.clear();
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
        cfg: &microstax_config::Config,
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
        self.commit(created, marker, ops, published).await
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
                    Write::Delete(None, _) => {}
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
enum Write {
    Put(Arc<str>, String, Vec<u8>, Arc<ParsedDoc>),
    Delete(Option<Arc<str>>, String),
}

impl Write {
    fn op(&self) -> Op {
        match self {
            Write::Put(_, k, v, _) => Op::Put {
                key: k.clone(),
                value: v.clone(),
                lease: 0,
            },
            Write::Delete(_, k) => Op::Delete(k.clone()),
        }
    }

    fn size(&self) -> usize {
        match self {
            Write::Put(_, k, v, _) => k.len() + v.len(),
            Write::Delete(_, k) => k.len(),
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
    use super::*;

    #[test]
    fn writes_are_chunked_by_count_and_bytes() {
        let doc = |k: &str| Write::Delete(None, k.to_string());
        let c = chunk((0..5).map(|i| doc(&format!("k{i}"))).collect(), 2, 1 << 20);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        let c = chunk(vec![doc("aaaa"), doc("bbbb"), doc("c")], 10, 8);
        assert_eq!(c.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    }
}
