//! A small etcd v3 client over the JSON gRPC gateway that etcd (3.4 and later) serves on its
//! client port: `/v3/kv/range`, `/v3/kv/txn`, `/v3/kv/compaction`, `/v3/watch` and
//! `/v3/lease/*`, all `POST` with JSON bodies in which keys and values are base64 and 64-bit
//! integers are strings. Every unary call is bounded by [`Client::timeout`]; a watch is a
//! response body that streams one JSON object per message.

use super::EtcdError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::time::Duration;

/// One key and value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a delete event).
    pub value: Vec<u8>,
    /// Revision of the last change to this key.
    pub mod_revision: i64,
    /// Revision at which this key was created (0 when absent).
    pub create_revision: i64,
}

/// One watch event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// A delete (else a put).
    pub delete: bool,
    /// The key and, for a put, its new value.
    pub kv: KeyValue,
}

/// One message of a watch stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchMessage {
    /// The store's revision when the message was sent.
    pub revision: i64,
    /// Events, in revision order.
    pub events: Vec<Event>,
    /// Set when the requested start revision was compacted: the watch is cancelled and the
    /// reader must list again.
    pub compacted: Option<i64>,
    /// The watch was cancelled by the server.
    pub canceled: bool,
}

/// One operation of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Put `key` = `value` (attached to `lease` when not 0).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Lease id, 0 for none.
        lease: i64,
    },
    /// Delete `key`.
    Delete(String),
}

/// A comparison guarding a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// `key`'s create revision equals this (0: the key is absent).
    CreateRevision(String, i64),
    /// `key`'s mod revision equals this (0: the key is absent).
    ModRevision(String, i64),
}

/// What a transaction did.
#[derive(Debug, Clone)]
pub struct TxnOutcome {
    /// Whether every comparison held (the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
    /// Keys read by the failure branch's ranges.
    pub read: Vec<KeyValue>,
}

/// An etcd client for one endpoint.
#[derive(Clone)]
pub struct Client {
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    base: String,
    /// Bound of every unary call: a stopped server (SIGSTOP) accepts connections and never
    /// answers, and must not hang the caller.
    pub timeout: Duration,
}

/// The key just past every key starting with `prefix` (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn bytes_of(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default()
}

fn kv_of(v: &Value) -> KeyValue {
    KeyValue {
        key: bytes_of(&v["key"]),
        value: bytes_of(&v["value"]),
        mod_revision: int(&v["mod_revision"]),
        create_revision: int(&v["create_revision"]),
    }
}

fn kvs_of(v: &Value) -> Vec<KeyValue> {
    v["kvs"]
        .as_array()
        .map(|a| a.iter().map(kv_of).collect())
        .unwrap_or_default()
}

impl Client {
    /// A client of the etcd at `host_port` (`HOST:PORT`).
    pub fn new(host_port: &str, timeout: Duration) -> Client {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Client {
            http,
            base: format!("http://{host_port}"),
            timeout,
        }
    }

    /// The endpoint, for messages.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    async fn send(&self, path: &str, body: &Value) -> Result<hyper::Response<Incoming>, EtcdError> {
        let req = hyper::Request::post(format!("{}{path}", self.base))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| EtcdError::Request(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| EtcdError::Unreachable(format!("{}: {e}", self.base)))?;
        Ok(resp)
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let fut = async {
            let resp = self.send(path, &body).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| EtcdError::Unreachable(format!("{}: {e}", self.base)))?
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| EtcdError::Protocol(format!("{path}: {e}")))?;
            if !status.is_success() || v.get("error").is_some() {
                return Err(EtcdError::Server {
                    path: path.to_string(),
                    message: v["message"]
                        .as_str()
                        .or(v["error"].as_str())
                        .unwrap_or("")
                        .to_string(),
                });
            }
            // a streaming endpoint answers `{"result": ...}`
            Ok(match v.get("result") {
                Some(r) => r.clone(),
                None => v,
            })
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| {
            EtcdError::Unreachable(format!(
                "{}: no answer within {:?}",
                self.base, self.timeout
            ))
        })?
    }

    /// Every key starting with `prefix`, at one revision (returned with them).
    pub async fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({"key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix))}),
            )
            .await?;
        Ok((int(&v["header"]["revision"]), kvs_of(&v)))
    }

    /// Every key in `[from, to)`, at one revision (returned with them).
    pub async fn range(&self, from: &str, to: &str) -> Result<(i64, Vec<KeyValue>), EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                json!({"key": B64.encode(from), "range_end": B64.encode(to)}),
            )
            .await?;
        Ok((int(&v["header"]["revision"]), kvs_of(&v)))
    }

    /// One key (None when absent) and the store's revision.
    pub async fn get(&self, key: &str) -> Result<(i64, Option<KeyValue>), EtcdError> {
        let v = self
            .call("/v3/kv/range", json!({"key": B64.encode(key)}))
            .await?;
        Ok((int(&v["header"]["revision"]), kvs_of(&v).into_iter().next()))
    }

    /// Run `success` if every comparison holds, else read `on_failure` keys.
    pub async fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        on_failure: &[&str],
    ) -> Result<TxnOutcome, EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::CreateRevision(k, r) => json!({"key": B64.encode(k), "target": "CREATE", "result": "EQUAL", "create_revision": r.to_string()}),
                Compare::ModRevision(k, r) => json!({"key": B64.encode(k), "target": "MOD", "result": "EQUAL", "mod_revision": r.to_string()}),
            })
            .collect();
        let success: Vec<Value> = success
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => json!({"request_put": {"key": B64.encode(key), "value": B64.encode(value), "lease": lease.to_string()}}),
                Op::Delete(k) => json!({"request_delete_range": {"key": B64.encode(k)}}),
            })
            .collect();
        let failure: Vec<Value> = on_failure
            .iter()
            .map(|k| json!({"request_range": {"key": B64.encode(k)}}))
            .collect();
        let v = self
            .call(
                "/v3/kv/txn",
                json!({"compare": compare, "success": success, "failure": failure}),
            )
            .await?;
        let read = v["responses"]
            .as_array()
            .map(|a| {
                a.iter()
                    .flat_map(|r| kvs_of(&r["response_range"]))
                    .collect()
            })
            .unwrap_or_default();
        Ok(TxnOutcome {
            succeeded: v["succeeded"].as_bool().unwrap_or(false),
            revision: int(&v["header"]["revision"]),
            read,
        })
    }

    /// Grant a lease of `ttl` (whole seconds, at least 1); returns its id.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let secs = ttl.as_secs().max(1);
        let v = self
            .call("/v3/lease/grant", json!({"TTL": secs.to_string()}))
            .await?;
        match int(&v["ID"]) {
            0 => Err(EtcdError::Protocol("lease grant without an id".into())),
            id => Ok(id),
        }
    }

    /// Renew lease `id`; returns the remaining TTL in seconds (0: the lease is gone).
    pub async fn lease_keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", json!({"ID": id.to_string()}))
            .await?;
        Ok(int(&v["TTL"]))
    }

    /// Revoke lease `id` (its keys are deleted).
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({"ID": id.to_string()}))
            .await
            .map(|_| ())
    }

    /// Compact the history up to `revision`.
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/compaction",
            json!({"revision": revision.to_string(), "physical": true}),
        )
        .await
        .map(|_| ())
    }

    /// Watch every key starting with `prefix` from `start_revision` on.
    pub async fn watch(&self, prefix: &str, start_revision: i64) -> Result<Watch, EtcdError> {
        let body = json!({"create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
        }});
        let resp = tokio::time::timeout(self.timeout, self.send("/v3/watch", &body))
            .await
            .map_err(|_| {
                EtcdError::Unreachable(format!(
                    "{}: no answer within {:?}",
                    self.base, self.timeout
                ))
            })??;
        if !resp.status().is_success() {
            return Err(EtcdError::Server {
                path: "/v3/watch".into(),
                message: resp.status().to_string(),
            });
        }
        Ok(Watch {
            body: resp.into_body(),
            buf: BytesMut::new(),
        })
    }
}

/// An open watch stream.
pub struct Watch {
    body: Incoming,
    buf: BytesMut,
}

/// Largest watch message buffered (a message holds the events of one revision batch).
const MAX_MESSAGE: usize = 64 << 20;

impl Watch {
    /// The next message; an error when the stream ends or breaks.
    pub async fn next(&mut self) -> Result<WatchMessage, EtcdError> {
        loop {
            if let Some(v) = self.take_message()? {
                return Ok(message_of(&v));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                    if self.buf.len() > MAX_MESSAGE {
                        return Err(EtcdError::Protocol("watch message too large".into()));
                    }
                }
                Some(Err(e)) => return Err(EtcdError::Unreachable(format!("watch: {e}"))),
                None => return Err(EtcdError::Unreachable("watch stream ended".into())),
            }
        }
    }

    /// One complete JSON object from the front of the buffer, if there is one.
    fn take_message(&mut self) -> Result<Option<Value>, EtcdError> {
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                let used = it.byte_offset();
                self.buf.advance(used);
                Ok(Some(v))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            None => {
                self.buf.clear();
                Ok(None)
            }
            Some(Err(e)) => Err(EtcdError::Protocol(format!("watch: {e}"))),
        }
    }
}

fn message_of(v: &Value) -> WatchMessage {
    let r = v.get("result").unwrap_or(v);
    let events = r["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| Event {
                    delete: e["type"].as_str() == Some("DELETE"),
                    kv: kv_of(&e["kv"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let compacted = match int(&r["compact_revision"]) {
        0 => None,
        n => Some(n),
    };
    WatchMessage {
        revision: int(&r["header"]["revision"]),
        events,
        compacted,
        canceled: r["canceled"].as_bool().unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn a_watch_message_is_read_with_its_events_and_compaction() {
        let v: Value = serde_json::from_str(
            r#"{"result":{"header":{"revision":"7"},"events":[{"type":"DELETE","kv":{"key":"YQ==","mod_revision":"7"}},{"kv":{"key":"Yg==","value":"Yw==","mod_revision":"7"}}]}}"#,
        )
        .expect("json");
        let m = message_of(&v);
        assert_eq!(m.revision, 7);
        assert!(m.events[0].delete);
        assert_eq!(m.events[1].kv.value, b"c".to_vec());
        let c: Value = serde_json::from_str(
            r#"{"result":{"header":{},"canceled":true,"compact_revision":"4"}}"#,
        )
        .expect("json");
        assert_eq!(message_of(&c).compacted, Some(4));
    }
}
