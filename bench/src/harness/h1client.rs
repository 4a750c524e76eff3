//! A minimal HTTP/1.1 keep-alive client for counted loads: a fixed number of requests spread
//! over a few connections, one request in flight per connection, each answer read whole
//! (`Content-Length` or chunked) and checked (status 200 and the `x-upstream` that should have
//! answered). It sends the same bytes to every system, and a bounded count rather than a
//! duration, which `wrk` cannot. One thread per connection; every read and the whole run have
//! deadlines.

use anyhow::{bail, Context as _};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest a single answer may take (under valgrind a proxy is tens of times slower).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Open keep-alive connections.
pub struct Clients {
    conns: Vec<Conn>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Clients {
    /// Open `n` connections to `addr`, each within `timeout`.
    pub fn connect(addr: SocketAddr, n: usize, timeout: Duration) -> anyhow::Result<Clients> {
        let conns = (0..n.max(1))
            .map(|_| {
                let stream = TcpStream::connect_timeout(&addr, timeout)
                    .with_context(|| format!("connecting to {addr}"))?;
                stream.set_nodelay(true)?;
                stream.set_write_timeout(Some(READ_TIMEOUT))?;
                Ok(Conn {
                    stream,
                    buf: Vec::with_capacity(4096),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Clients { conns })
    }

    /// Send `total` requests (`request`, verbatim) spread evenly over the connections, all
    /// answered 200 by upstream `want` before `deadline`; the first failure ends the run.
    pub fn run(
        &mut self,
        total: u64,
        request: &[u8],
        want: &str,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        let n = self.conns.len() as u64;
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .conns
                .iter_mut()
                .enumerate()
                .map(|(i, c)| {
                    let count = total / n + u64::from((i as u64) < total % n);
                    s.spawn(move || c.run(count, request, want, deadline))
                })
                .collect();
            for (i, h) in handles.into_iter().enumerate() {
                match h.join() {
                    Ok(r) => r.with_context(|| format!("connection {i}"))?,
                    Err(_) => bail!("client thread {i} panicked"),
                }
            }
            Ok(())
        })
    }
}

impl Conn {
    fn run(
        &mut self,
        count: u64,
        request: &[u8],
        want: &str,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        for i in 0..count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("out of time after {i} of {count} requests");
            }
            self.stream.set_read_timeout(Some(left.min(READ_TIMEOUT)))?;
            self.stream.write_all(request)?;
            let head = self.answer().with_context(|| format!("request {i}"))?;
            if head.status != 200 {
                bail!("request {i} was answered {}", head.status);
            }
            if head.upstream.as_deref() != Some(want) {
                bail!(
                    "request {i} reached upstream {:?}, expected `{want}`",
                    head.upstream
                );
            }
        }
        Ok(())
    }

    /// Read one whole answer; bytes after it stay in the buffer.
    fn answer(&mut self) -> anyhow::Result<Head> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some((len, head)) = parse_response(&self.buf)? {
                self.buf.drain(..len);
                return Ok(head);
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                bail!("the connection closed before a whole answer");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// What the client checks of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// The `x-upstream` header: which upstream listener answered.
    pub upstream: Option<String>,
}

/// If `buf` starts with a whole response, its length in bytes and its head.
pub fn parse_response(buf: &[u8]) -> anyhow::Result<Option<(usize, Head)>> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            bail!("response head over {MAX_HEAD} bytes");
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("bad status line `{status_line}`"))?;
    let (mut length, mut chunked, mut upstream) = (None, false, None);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            bail!("bad header line `{line}`");
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().context("bad content-length")?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().ends_with("chunked");
        } else if k.eq_ignore_ascii_case("x-upstream") {
            upstream = Some(v.to_string());
        }
    }
    let body_start = end + 4;
    let body = &buf[body_start..];
    let body_len = if chunked {
        match chunked_len(body)? {
            Some(n) => n,
            None => return Ok(None),
        }
    } else {
        // 204 and 304 have no body; every other answer here says its length
        let n = match (status, length) {
            (204 | 304, _) => 0,
            (_, Some(n)) => n,
            (_, None) => bail!("answer {status} has neither content-length nor chunked body"),
        };
        if body.len() < n {
            return Ok(None);
        }
        n
    };
    Ok(Some((body_start + body_len, Head { status, upstream })))
}

/// If `b` starts with a whole chunked body (chunks, last chunk, trailers), its length.
pub fn chunked_len(b: &[u8]) -> anyhow::Result<Option<usize>> {
    let mut pos = 0;
    loop {
        let Some(eol) = find(&b[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&b[pos..pos + eol]).context("bad chunk size line")?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(hex, 16).with_context(|| format!("bad chunk size `{hex}`"))?;
        pos += eol + 2;
        if size == 0 {
            // trailer lines, then an empty line
            loop {
                let Some(eol) = find(&b[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        if b.len() < pos + size + 2 {
            return Ok(None);
        }
        if &b[pos + size..pos + size + 2] != b"\r\n" {
            bail!("chunk of {size} bytes is not followed by CRLF");
        }
        pos += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_answer_with_content_length() -> anyhow::Result<()> {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nX-Upstream: b1\r\n\r\nokHTTP/1.1";
        let (len, head) = parse_response(r)?.context("whole")?;
        assert_eq!(len, r.len() - "HTTP/1.1".len());
        assert_eq!(head.status, 200);
        assert_eq!(head.upstream.as_deref(), Some("b1"));
        Ok(())
    }

    #[test]
    fn a_partial_answer_waits_for_more() -> anyhow::Result<()> {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-le")?, None);
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\no")?,
            None
        );
        Ok(())
    }

    #[test]
    fn a_chunked_answer_with_trailers() -> anyhow::Result<()> {
        let body = b"2;ext=1\r\nok\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n";
        assert_eq!(chunked_len(body)?, Some(body.len()));
        assert_eq!(chunked_len(&body[..body.len() - 1])?, None);
        let mut r = b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        r.extend_from_slice(body);
        let (len, head) = parse_response(&r)?.context("whole")?;
        assert_eq!((len, head.status, head.upstream), (r.len(), 502, None));
        Ok(())
    }

    #[test]
    fn malformed_answers_are_errors() {
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err(),
            "no length"
        );
        assert!(chunked_len(b"zz\r\n").is_err());
        assert!(chunked_len(b"2\r\nokXX").is_err());
    }

    #[test]
    fn counted_requests_over_real_connections() -> anyhow::Result<()> {
        // a loopback server answering every request on every connection, until each closes
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = std::thread::spawn(move || -> anyhow::Result<usize> {
            let mut served = 0;
            let mut workers = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = listener.accept()?;
                workers.push(std::thread::spawn(move || -> usize {
                    let (mut buf, mut n) = (Vec::new(), 0);
                    let mut chunk = [0u8; 1024];
                    while let Ok(k) = s.read(&mut chunk) {
                        if k == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..k]);
                        while let Some(end) = find(&buf, b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            n += 1;
                            let answer =
                                b"HTTP/1.1 200 OK\r\nx-upstream: b1\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(answer).is_err() {
                                return n;
                            }
                        }
                    }
                    n
                }));
            }
            for w in workers {
                served += w
                    .join()
                    .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
            }
            Ok(served)
        });
        let mut c = Clients::connect(addr, 3, Duration::from_secs(5))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let req = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n";
        c.run(100, req, "b1", deadline)?;
        assert!(c.run(1, req, "b2", deadline).is_err(), "wrong upstream");
        drop(c);
        let served = server
            .join()
            .map_err(|_| anyhow::anyhow!("server panicked"))??;
        // 100 counted requests, plus the one (or three) of the failed run
        assert!((101..=103).contains(&served), "served {served}");
        Ok(())
    }
}
