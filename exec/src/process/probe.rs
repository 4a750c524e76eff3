//! The readiness probe: `GET <path>` over HTTP/1.1 on the instance's loopback port; any status
//! below 500 means ready. Each attempt is bounded in time and in the bytes it reads.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The most of a response read to find its status line.
const MAX_HEAD: usize = 1024;

/// One probe: the status code, or why there was none.
pub(crate) async fn probe_once(
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<u16, String> {
    match tokio::time::timeout(limit, request(addr, path)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

async fn request(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let head =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: microstax-probe\r\nConnection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < MAX_HEAD {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    status(&buf).ok_or_else(|| "no HTTP status line".to_owned())
}

fn status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// Probe every `interval` until a status below 500 answers (Ok) or `deadline` passes (Err with
/// the last failure).
pub(crate) async fn until_ready(
    addr: SocketAddr,
    path: &str,
    interval: Duration,
    deadline: Instant,
) -> Result<(), String> {
    let limit = interval.clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut last = "not probed".to_owned();
    let mut probes: u32 = 0;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match probe_once(addr, path, limit.min(left)).await {
            Ok(code) if code < 500 => return Ok(()),
            Ok(code) => last = format!("probe answered {code}"),
            Err(e) => last = e,
        }
        // a start is noticed soon after it completes: probe every 5 ms at first, 5 ms slower
        // every 10 probes, up to `interval` (a refused connect costs microseconds)
        let pause = Duration::from_millis(5 * u64::from(1 + probes / 10)).min(interval);
        probes = probes.saturating_add(1);
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::status;

    #[test]
    fn reads_the_status_line() {
        assert_eq!(status(b"HTTP/1.1 404 Not Found\r\n"), Some(404));
        assert_eq!(status(b"HTTP/1.0 200 OK\r\nx"), Some(200));
        assert_eq!(status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status(b""), None);
    }
}
