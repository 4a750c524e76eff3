//! The access log: one JSON line per request (or per sampled request), to stderr or a file.
//! Lines are formatted on the worker that served the request and handed to one writer thread
//! over a bounded channel (`try_send`: never a lock or a wait on the request path); when the
//! writer falls behind, lines are dropped and counted. Replies the proxy makes itself with
//! `502`, `503` or `504` are always logged, with their reason, whatever the sampling.

use crate::context::{BranchName, ContextSource};
use crate::metrics::KindLabel;
use crate::router::Snapshot;
use microstax_table::{LayerId, ServiceId};
use std::cell::Cell;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// Lines waiting for the writer; past this, lines are dropped (and counted).
pub const CHANNEL_CAPACITY: usize = 8192;

/// Which requests are logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    /// None (proxy-made 5xx still go to the process log).
    Off,
    /// Every request.
    All,
    /// One request in `n` (per worker), and every proxy-made 5xx.
    Sampled(u32),
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogSink {
    /// Standard error.
    Stderr,
    /// A file, appended to (created if missing).
    File(PathBuf),
}

/// A listener's access log.
#[derive(Debug)]
pub struct AccessLog {
    mode: LogMode,
    tx: Option<SyncSender<String>>,
    dropped: AtomicU64,
}

impl Default for AccessLog {
    fn default() -> Self {
        AccessLog::off()
    }
}

impl AccessLog {
    /// No access log.
    pub fn off() -> AccessLog {
        AccessLog {
            mode: LogMode::Off,
            tx: None,
            dropped: AtomicU64::new(0),
        }
    }

    /// An access log in `mode` writing to `sink` from a thread of its own (which ends when
    /// the log is dropped).
    pub fn start(mode: LogMode, sink: LogSink) -> io::Result<AccessLog> {
        if mode == LogMode::Off {
            return Ok(AccessLog::off());
        }
        let out: Box<dyn Write + Send> = match sink {
            LogSink::Stderr => Box::new(io::stderr()),
            LogSink::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let (tx, rx) = sync_channel::<String>(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("microstax-access-log".into())
            .spawn(move || {
                let mut out = io::BufWriter::new(out);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(line.as_bytes());
                    // write what is queued, then flush once
                    while let Ok(line) = rx.try_recv() {
                        let _ = out.write_all(line.as_bytes());
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(AccessLog {
            mode,
            tx: Some(tx),
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether any line can be written.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether this request is one to log (a per-thread count: no shared counter).
    pub(crate) fn sample(&self) -> bool {
        match self.mode {
            LogMode::Off => false,
            LogMode::All => true,
            LogMode::Sampled(n) => SAMPLE.with(|c| {
                let v = c.get().wrapping_add(1);
                c.set(v);
                v % n.max(1) == 0
            }),
        }
    }

    fn send(&self, line: String) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = tx.try_send(line) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

thread_local! {
    static SAMPLE: Cell<u32> = const { Cell::new(0) };
}

/// What routing decided, attached to the response (as an extension) for the access log only
/// when it is on: the snapshot (a reference count) and ids, so no name is copied.
#[derive(Clone)]
pub(crate) struct Routed {
    pub(crate) snap: Arc<Snapshot>,
    pub(crate) branch: Option<(BranchName, ContextSource)>,
    pub(crate) service: Option<ServiceId>,
    pub(crate) layer: LayerId,
    pub(crate) kind: KindLabel,
    pub(crate) upstream: Option<Arc<str>>,
}

/// The reason of a reply the proxy made itself with a 5xx status (a response extension).
#[derive(Clone)]
pub(crate) struct LocalReason(pub(crate) String, pub(crate) http::StatusCode);

/// One request's facts as seen by the listener.
pub(crate) struct Entry<'a> {
    pub(crate) method: &'a http::Method,
    pub(crate) uri: &'a http::Uri,
    pub(crate) host: Option<&'a http::HeaderValue>,
    pub(crate) trace_id: Option<[u8; 32]>,
    pub(crate) duration: std::time::Duration,
}

impl Entry<'_> {
    /// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
    pub(crate) fn trace_id(h: &http::HeaderMap) -> Option<[u8; 32]> {
        let v = h.get("traceparent")?.as_bytes();
        let id = v.get(3..35)?;
        if v.get(2) != Some(&b'-') || !id.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(id);
        Some(out)
    }
}

impl AccessLog {
    /// Log `resp` to the request described by `e`, if sampled in (`sampled`) or made by the
    /// proxy with 502/503/504.
    pub(crate) fn log<B>(&self, e: &Entry<'_>, resp: &http::Response<B>, sampled: bool) {
        let status = resp.status().as_u16();
        let reason = resp
            .extensions()
            .get::<LocalReason>()
            .filter(|_| matches!(status, 502..=504));
        if !(sampled || reason.is_some()) {
            return;
        }
        let mut l = String::with_capacity(384);
        l.push_str("{\"time\":\"");
        push_time(&mut l, std::time::SystemTime::now());
        l.push_str("\",\"method\":");
        push_str(&mut l, e.method.as_str());
        l.push_str(",\"authority\":");
        let authority = e
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| e.host.and_then(|h| h.to_str().ok()));
        push_opt(&mut l, authority);
        l.push_str(",\"path\":");
        push_str(&mut l, e.uri.path());
        let _ = write!(
            l,
            ",\"status\":{status},\"duration_ms\":{:.3}",
            e.duration.as_secs_f64() * 1000.0
        );
        l.push_str(",\"bytes\":");
        match resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            Some(n) => {
                let _ = write!(l, "{n}");
            }
            None => l.push_str("null"),
        }
        push_routed(&mut l, resp.extensions().get::<Routed>());
        l.push_str(",\"retries\":0,\"trace_id\":");
        push_opt(
            &mut l,
            e.trace_id
                .as_ref()
                .and_then(|t| std::str::from_utf8(t).ok()),
        );
        if let Some(r) = reason {
            l.push_str(",\"reason\":");
            push_str(&mut l, &r.0);
        }
        l.push_str("}\n");
        self.send(l);
    }
}

fn push_routed(l: &mut String, r: Option<&Routed>) {
    let Some(r) = r else {
        l.push_str(",\"branch\":null,\"branch_source\":null,\"service\":null,\"layer\":null,\"route\":\"none\",\"upstream\":null");
        return;
    };
    let t = &r.snap.table;
    l.push_str(",\"branch\":");
    push_opt(l, r.branch.as_ref().map(|(b, _)| b.as_str()));
    l.push_str(",\"branch_source\":");
    push_opt(l, r.branch.as_ref().map(|(_, s)| s.as_str()));
    l.push_str(",\"service\":");
    push_opt(l, r.service.map(|s| t.service_name(s)));
    l.push_str(",\"layer\":");
    push_opt(l, t.layer(r.layer).map(|x| &*x.label));
    l.push_str(",\"route\":");
    push_str(l, r.kind.as_str());
    l.push_str(",\"upstream\":");
    push_opt(l, r.upstream.as_deref());
}

fn push_opt(l: &mut String, v: Option<&str>) {
    match v {
        Some(v) => push_str(l, v),
        None => l.push_str("null"),
    }
}

/// A JSON string.
fn push_str(l: &mut String, v: &str) {
    l.push('"');
    for c in v.chars() {
        match c {
            '"' => l.push_str("\\\""),
            '\\' => l.push_str("\\\\"),
            '\n' => l.push_str("\\n"),
            '\r' => l.push_str("\\r"),
            '\t' => l.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(l, "\\u{:04x}", c as u32);
            }
            c => l.push(c),
        }
    }
    l.push('"');
}

/// RFC 3339 UTC with milliseconds.
fn push_time(l: &mut String, t: std::time::SystemTime) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil(days as i64);
    let _ = write!(
        l,
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's `civil_from_days`).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_escapes() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(20_423), (2025, 12, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        let mut s = String::new();
        push_str(&mut s, "a\"b\\c\n\u{1}");
        assert_eq!(s, r#""a\"b\\c\n\u0001""#);
        let mut h = http::HeaderMap::new();
        h.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        assert_eq!(
            Entry::trace_id(&h).map(|t| String::from_utf8(t.to_vec()).unwrap()),
            Some("4bf92f3577b34da6a3ce929d0e0e4736".into())
        );
    }

    #[test]
    fn sampling_counts_per_thread() {
        let log = AccessLog {
            mode: LogMode::Sampled(4),
            tx: None,
            dropped: AtomicU64::new(0),
        };
        let n = (0..100).filter(|_| log.sample()).count();
        assert_eq!(n, 25);
    }
}
