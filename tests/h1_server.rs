//! The client-facing HTTP/1.1 listener, over raw sockets written byte-exactly: what any correct
//! HTTP/1.1 proxy must do (RFC 9112), not one server library's error text. Keep-alive,
//! pipelining, a request trickled a byte at a time, `Connection: close`, HEAD framing,
//! length-framed and chunked request bodies, `Expect: 100-continue`, malformed requests and
//! framing (400 or a close), Transfer-Encoding with Content-Length, an oversized head (431),
//! HTTP/1.0, `Date` and the upstream's body framing, clients that vanish mid-head or
//! mid-request, and absolute-form targets. Responses are read by [`Client::response`], which
//! parses exactly one response off the connection so that whatever follows it must parse too.
// Test code: a failed expect is the failure report we want (see .clippy.toml).
#![allow(clippy::expect_used)]

mod common;

use common::*;
use microstax_proxy::ServerOptions;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every wait on the proxy is bounded by this.
const DEADLINE: Duration = Duration::from_secs(10);
/// Most bytes a response head, chunk line or body may take before the reader gives up.
const MAX_READ: usize = 4 << 20;

/// One service `api` on `up`, also the default service.
fn cfg(up: &Upstream) -> microstax_config::Config {
    cfg_at(up.addr)
}

/// One service `api` at `addr`, also the default service.
fn cfg_at(addr: std::net::SocketAddr) -> microstax_config::Config {
    config(&[(
        "org.yaml",
        &format!(
            "kind: org\nrouting: {{default_service: api}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{}\"]\n",
            addr
        ),
    )])
}

/// Which server answers the client: the proxy's own HTTP/1.1 loop (up to 127 header fields),
/// or hyper's (a listener allowing 128 fields or more is hyper's throughout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Own,
    Hyper,
}

/// Every case runs against both servers.
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn own_server() {
                super::$name(super::Server::Own).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hyper_server() {
                super::$name(super::Server::Hyper).await
            }
        }
    )*};
}

/// The echo upstream `base` behind a proxy started with `opts`, served by `server`.
async fn setup_with(server: Server, mut opts: ServerOptions) -> (Upstream, ProxyUnderTest) {
    if server == Server::Hyper {
        opts.max_headers = 128;
    }
    let up = Upstream::start("base").await;
    let proxy = ProxyUnderTest::start_with(&cfg(&up), opts).await;
    (up, proxy)
}

async fn setup(server: Server) -> (Upstream, ProxyUnderTest) {
    setup_with(
        server,
        ServerOptions {
            drain_timeout: Duration::from_secs(2),
            ..ServerOptions::default()
        },
    )
    .await
}

/// A keep-alive HTTP/1.1 GET of `path` for host `api`.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: api\r\n\r\n")
}

/// How a response's body was delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// No body by definition (HEAD, 1xx, 204, 304).
    None,
    Length(usize),
    Chunked,
    /// Read until the server closed the connection.
    Close,
}

/// One response as read off the wire.
struct Resp {
    /// The status line as sent.
    line: String,
    status: u16,
    /// Header fields in order, names lower-cased, values trimmed.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    framing: Framing,
}

impl Resp {
    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The echo upstream's JSON description of the request it saw.
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {:?} {}",
                self.line,
                self.headers,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The path the echo upstream saw.
    fn path(&self) -> String {
        self.json()["path"].as_str().unwrap_or("").to_string()
    }
}

/// A raw client connection with its read buffer: bytes read past one response stay for the
/// next.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Client { s, buf: Vec::new() }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.s.write_all(bytes.as_ref()).await.expect("write");
    }

    /// Read more bytes into the buffer; false once the server has closed (EOF or reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.s.read(&mut chunk).await.unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The buffered bytes up to and including the first `pat`, reading as needed.
    async fn until(&mut self, pat: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.windows(pat.len()).position(|w| w == pat) {
                return self.buf.drain(..i + pat.len()).collect();
            }
            assert!(self.buf.len() < MAX_READ, "no {pat:?} in {MAX_READ} bytes");
            assert!(
                self.fill().await,
                "closed before {:?}; unparsed: {:?}",
                String::from_utf8_lossy(pat),
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Exactly `n` bytes, reading as needed.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        assert!(n <= MAX_READ, "{n} bytes is more than a test reads");
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "closed with {} of {n} bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Read exactly one response (an interim 1xx counts as one) to a request with `method`,
    /// within [`DEADLINE`].
    async fn response(&mut self, method: &str) -> Resp {
        tokio::time::timeout(DEADLINE, self.read_response(method))
            .await
            .expect("no complete response within 10 s")
    }

    async fn read_response(&mut self, method: &str) -> Resp {
        let head = self.until(b"\r\n\r\n").await;
        let head = String::from_utf8(head).expect("response head is not UTF-8");
        let mut lines = head.strip_suffix("\r\n\r\n").unwrap_or(&head).split("\r\n");
        let line = lines.next().unwrap_or("").to_string();
        assert!(line.starts_with("HTTP/1."), "bad status line: {line:?}");
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {line:?}"));
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {l:?} in {head:?}"));
                (n.to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let mut resp = Resp {
            line,
            status,
            headers,
            body: Vec::new(),
            framing: Framing::None,
        };
        let chunked = resp.header("transfer-encoding").is_some_and(|te| {
            te.rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
        });
        let length = resp.header("content-length").map(|v| {
            v.parse::<usize>()
                .unwrap_or_else(|_| panic!("bad content-length {v:?}"))
        });
        if method == "HEAD" || matches!(status, 100..=199 | 204 | 304) {
            return resp;
        }
        if chunked {
            resp.framing = Framing::Chunked;
            loop {
                let size_line = self.until(b"\r\n").await;
                let size_line = String::from_utf8_lossy(&size_line);
                let size = size_line.trim_end().split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_line:?}"));
                if size == 0 {
                    // the trailer section, up to its empty line
                    while self.until(b"\r\n").await != b"\r\n" {}
                    break;
                }
                assert!(resp.body.len() + size <= MAX_READ, "body too large");
                let data = self.take(size).await;
                resp.body.extend_from_slice(&data);
                assert_eq!(self.take(2).await, b"\r\n", "chunk not ended by CRLF");
            }
        } else if let Some(n) = length {
            resp.framing = Framing::Length(n);
            resp.body = self.take(n).await;
        } else {
            resp.framing = Framing::Close;
            while self.fill().await {
                assert!(self.buf.len() <= MAX_READ, "body too large");
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    /// Everything the server still sends until it closes, within [`DEADLINE`].
    async fn rest(&mut self) -> Vec<u8> {
        tokio::time::timeout(DEADLINE, async {
            while self.fill().await {
                assert!(self.buf.len() <= MAX_READ, "too much after the response");
            }
        })
        .await
        .expect("the proxy did not close the connection within 10 s");
        std::mem::take(&mut self.buf)
    }

    /// The server closes the connection with nothing more sent.
    async fn assert_closed(&mut self) {
        let rest = self.rest().await;
        assert!(
            rest.is_empty(),
            "bytes after the last response: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}

async fn keep_alive_answers_three_requests_in_turn_on_one_connection(server: Server) {
    let (_up, p) = setup(server).await;
    let mut c = Client::connect(p.addr).await;
    for i in 0..3 {
        c.send(get(&format!("/k{i}"))).await;
        let r = c.response("GET").await;
        assert_eq!(r.status, 200, "{}", r.line);
        assert_eq!(r.path(), format!("/k{i}"));
        assert_eq!(r.json()["upstream"], "base");
    }
}

async fn pipelined_requests_in_one_write_are_answered_in_order(server: Server) {
    let (_up, p) = setup(server).await;
    let mut c = Client::connect(p.addr).await;
    c.send(format!("{}{}{}", get("/p0"), get("/p1"), get("/p2")))
        .await;
    for i in 0..3 {
        let r = c.response("GET").await;
        assert_eq!(r.status, 200, "{}", r.line);
        assert_eq!(r.path(), format!("/p{i}"), "answered out of order");
    }
}

async fn a_request_written_one_byte_at_a_time_is_answered(server: Server) {
    let (_up, p) = setup(server).await;
    let mut c = Client::connect(p.addr).await;
    let req = get("/trickle?a=1");
    for b in req.as_bytes() {
        c.send([*b]).await;
    }
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(r.path(), "/trickle");
}

async fn connection_close_from_the_client_closes_after_the_response(server: Server) {
    let (_up, p) = setup(server).await;
    let mut c = Client::connect(p.addr).await;
    c.send("GET /bye HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
        .await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(r.path(), "/bye");
    c.assert_closed().await;
}

async fn a_head_response_has_no_body_and_the_next_pipelined_request_parses(server: Server) {
    let (_up, p) = setup(server).await;
    let mut c = Client::connect(p.addr).await;
    c.send(format!(
        "HEAD /h HTTP/1.1\r\nhost: api\r\n\r\n{}",
        get("/after-head")
    ))
    .await;
    let head = c.response("HEAD").await;
    assert_eq!(head.status, 200, "{}", head.line);
    // any body bytes of the HEAD answer would now be read as the GET's status line
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(r.path(), "/after-head");
}

async fn length_and_chunked_request_bodies_then_a_get_on_one_connection(server: Server) {
    let (_up, p) = setup(server).await;
    let mut c = Client::connect(p.addr).await;
    c.send("POST /cl HTTP/1.1\r\nhost: api\r\ncontent-length: 5\r\n\r\nhello")
        .await;
    let r = c.response("POST").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(
        (r.path(), r.json()["method"].clone()),
        ("/cl".into(), "POST".into())
    );
    assert_eq!(r.json()["body_bytes"], 5);
    // chunked, with a chunk extension and a trailer section: 3 + 4 + 10 bytes
    c.send(concat!(
        "POST /ch HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n",
        "3\r\nabc\r\n4;ext=1\r\ndefg\r\na\r\n0123456789\r\n0\r\nx-trailer: t\r\n\r\n"
    ))
    .await;
    let r = c.response("POST").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(r.path(), "/ch");
    assert_eq!(r.json()["body_bytes"], 17);
    c.send(get("/g")).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(r.path(), "/g");
    assert_eq!(r.json()["body_bytes"], 0);
}

async fn expect_100_continue_is_answered_before_the_body_is_sent(server: Server) {
    let (_up, p) = setup(server).await;
    let mut c = Client::connect(p.addr).await;
    c.send("POST /x HTTP/1.1\r\nhost: api\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await;
    // nothing of the body is sent until the interim answer arrives
    let r = c.response("POST").await;
    assert_eq!(r.status, 100, "{} {:?}", r.line, r.headers);
    c.send("hello").await;
    let r = c.response("POST").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(r.path(), "/x");
    assert_eq!(r.json()["body_bytes"], 5);
}

async fn malformed_requests_get_400_or_a_close_and_the_proxy_keeps_serving(server: Server) {
    let (up, p) = setup(server).await;
    // (request, whether RFC 9112 requires a 400 rather than allowing a bare close)
    let malformed: [(&[u8], bool); 5] = [
        (b"GARBAGE\r\n\r\n", false),
        (
            b"GET / HTTP/1.1\r\nhost: api\r\nno colon here\r\n\r\n",
            false,
        ),
        // 6.3: an invalid Content-Length, or two that differ, is an unrecoverable error
        (
            b"POST / HTTP/1.1\r\nhost: api\r\ncontent-length: 5x\r\n\r\nhello",
            true,
        ),
        (
            b"POST / HTTP/1.1\r\nhost: api\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
            true,
        ),
        // 6.3: a request whose last transfer coding is not chunked has no knowable length
        (
            b"POST / HTTP/1.1\r\nhost: api\r\ntransfer-encoding: gzip\r\n\r\nhello",
            true,
        ),
    ];
    for (req, must_answer) in malformed {
        let what = String::from_utf8_lossy(req);
        let mut c = Client::connect(p.addr).await;
        c.send(req).await;
        // an error answer, if any, then the close: the framing cannot be trusted
        c.buf = c.rest().await;
        if c.buf.is_empty() {
            assert!(!must_answer, "{what:?} was closed without a 400");
            continue;
        }
        let r = c.response("GET").await;
        assert!(
            (400..500).contains(&r.status) && (r.status == 400 || !must_answer),
            "{what:?} got {}",
            r.line
        );
        c.assert_closed().await;
    }
    assert_eq!(
        up.conns.load(Ordering::SeqCst),
        0,
        "a malformed request reached the upstream"
    );
    let mut c = Client::connect(p.addr).await;
    c.send(get("/fresh")).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(r.path(), "/fresh");
}

async fn both_transfer_encoding_and_content_length_is_refused_or_read_chunked_then_closed(
    server: Server,
) {
    let (_up, p) = setup(server).await;
    let mut c = Client::connect(p.addr).await;
    // read by its Content-Length, the body would be "5\r\n" and the rest a second request
    c.send(concat!(
        "POST /te-cl HTTP/1.1\r\nhost: api\r\ncontent-length: 3\r\n",
        "transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    ))
    .await;
    let r = c.response("POST").await;
    // RFC 9112 6.1: rejected, or read by Transfer-Encoding alone; either way then closed
    if r.status != 400 {
        assert_eq!(r.status, 200, "{}", r.line);
        assert_eq!(r.json()["body_bytes"], 5, "not read as chunked");
    }
    c.assert_closed().await;
}

async fn a_head_over_max_header_bytes_gets_431_and_never_reaches_the_upstream(server: Server) {
    let (up, p) = setup_with(
        server,
        ServerOptions {
            max_header_bytes: 4096,
            drain_timeout: Duration::from_secs(2),
            ..ServerOptions::default()
        },
    )
    .await;
    let mut c = Client::connect(p.addr).await;
    c.send(format!(
        "GET /big-head HTTP/1.1\r\nhost: api\r\nx-big: {}\r\n\r\n",
        "a".repeat(8 * 1024)
    ))
    .await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 431, "{}", r.line);
    assert_eq!(
        up.conns.load(Ordering::SeqCst),
        0,
        "an oversized head reached the upstream"
    );
    // a head under the limit is served
    let mut c = Client::connect(p.addr).await;
    c.send(format!(
        "GET /small-head HTTP/1.1\r\nhost: api\r\nx-small: {}\r\n\r\n",
        "a".repeat(1024)
    ))
    .await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(r.path(), "/small-head");
}

async fn http_1_0_without_keep_alive_is_answered_unchunked_and_closed(server: Server) {
    let (_up, p) = setup(server).await;
    // a length-framed upstream answer, and one the upstream sends chunked
    for (path, len) in [("/old", None), ("/big?bytes=100000", Some(100_000))] {
        let mut c = Client::connect(p.addr).await;
        c.send(format!("GET {path} HTTP/1.0\r\nhost: api\r\n\r\n"))
            .await;
        let r = c.response("GET").await;
        assert_eq!(r.status, 200, "{}", r.line);
        // RFC 9112 6.1: no Transfer-Encoding to an HTTP/1.0 client
        assert_ne!(r.framing, Framing::Chunked, "{:?}", r.headers);
        assert!(r.header("transfer-encoding").is_none(), "{:?}", r.headers);
        match len {
            None => assert_eq!(r.path(), "/old"),
            Some(n) => assert_eq!(r.body, vec![b'x'; n]),
        }
        c.assert_closed().await;
    }
}

async fn responses_carry_date_and_relay_length_and_chunked_bodies(server: Server) {
    let (_up, p) = setup(server).await;
    let mut c = Client::connect(p.addr).await;
    // the echo upstream answers with a Content-Length
    c.send(get("/len")).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert!(
        r.header("date").is_some_and(|d| d.ends_with(" GMT")),
        "{:?}",
        r.headers
    );
    assert_eq!(r.framing, Framing::Length(r.body.len()), "{:?}", r.headers);
    assert_eq!(r.path(), "/len");
    // /big streams its body chunked: relayed chunked or with the right length
    c.send(get("/big?bytes=150000")).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert!(r.header("date").is_some(), "{:?}", r.headers);
    assert!(
        matches!(r.framing, Framing::Chunked | Framing::Length(150_000)),
        "{:?} {:?}",
        r.framing,
        r.headers
    );
    assert_eq!(r.body, vec![b'x'; 150_000]);
    // and the connection still serves
    c.send(get("/after-big")).await;
    let r = c.response("GET").await;
    assert_eq!(r.path(), "/after-big");
}

async fn clients_that_vanish_mid_head_or_mid_request_do_not_disturb_the_proxy(server: Server) {
    let (up, p) = setup(server).await;
    let active = || p.router.metrics().active_connections.get();
    // a request the upstream never answers, in flight when the client goes
    let mut c = Client::connect(p.addr).await;
    c.send(get("/hang")).await;
    wait_for(DEADLINE, "the request to reach the upstream", || {
        let n = up.conns.load(Ordering::SeqCst);
        async move { (n >= 1).then_some(()) }
    })
    .await;
    drop(c);
    // half a head, then gone
    let mut c = Client::connect(p.addr).await;
    c.send("GET /half HTTP/1.1\r\nhost: a").await;
    drop(c);
    // half a body, then gone
    let mut c = Client::connect(p.addr).await;
    c.send("POST /half-body HTTP/1.1\r\nhost: api\r\ncontent-length: 100\r\n\r\n0123456789")
        .await;
    drop(c);
    // the proxy lets go of all three connections
    wait_for(DEADLINE, "the vanished clients' connections to end", || {
        let n = active();
        async move { (n == 0).then_some(()) }
    })
    .await;
    let mut c = Client::connect(p.addr).await;
    c.send(get("/fresh")).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(r.path(), "/fresh");
}

async fn an_absolute_form_target_is_routed_like_origin_form(server: Server) {
    let (_up, p) = setup(server).await;
    let mut c = Client::connect(p.addr).await;
    c.send("GET http://api/abs?q=1 HTTP/1.1\r\nhost: api\r\n\r\n")
        .await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(r.json()["upstream"], "base");
    assert_eq!(r.path(), "/abs");
    assert_eq!(r.json()["headers"]["host"][0], "api");
    // and the connection goes on with origin form
    c.send(get("/origin")).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200, "{}", r.line);
    assert_eq!(r.path(), "/origin");
}

async fn a_head_trickled_within_each_read_but_not_in_all_is_cut(server: Server) {
    let opts = ServerOptions {
        header_read_timeout: Duration::from_millis(800),
        ..ServerOptions::default()
    };
    let (_up, p) = setup_with(server, opts).await;
    let mut c = Client::connect(p.addr).await;
    c.send("GET /slow HTTP/1.1\r\nhost: api\r\nx-slow: ").await;
    let start = std::time::Instant::now();
    // a byte every 200 ms: each comes well within the timeout, the head never ends
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut chunk = [0u8; 1024];
    let mut closed = false;
    for _ in 0..40 {
        tokio::select! {
            n = c.s.read(&mut chunk) => {
                // a close, or an answer (408/431) and then the close
                if n.unwrap_or(0) == 0 {
                    closed = true;
                    break;
                }
            }
            _ = tick.tick() => {
                if c.s.write_all(b"a").await.is_err() {
                    closed = true;
                    break;
                }
            }
        }
    }
    let took = start.elapsed();
    assert!(closed, "the trickled head kept its connection for {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "closed only after {took:?} (header-read timeout 800 ms)"
    );
}

async fn a_client_that_leaves_during_a_long_response_releases_its_upstream(server: Server) {
    // an upstream that sends a head and the first bytes of a long body, then holds it
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            seen.extend_from_slice(&chunk[..n]);
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\nabc")
            .await;
        // the proxy closes this connection once its client is gone
        while s.read(&mut chunk).await.unwrap_or(0) > 0 {}
        let _ = closed_tx.send(());
    });
    let opts = ServerOptions {
        max_headers: if server == Server::Hyper { 128 } else { 100 },
        ..ServerOptions::default()
    };
    let p = ProxyUnderTest::start_with(&cfg_at(addr), opts).await;
    let mut c = Client::connect(p.addr).await;
    c.send(get("/stream")).await;
    let head = tokio::time::timeout(DEADLINE, c.until(b"abc"))
        .await
        .expect("the first bytes of the body");
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    drop(c);
    // the response body idle timeout is 60 s: only noticing the client frees it sooner
    tokio::time::timeout(Duration::from_secs(5), closed_rx)
        .await
        .expect("the upstream connection was still held 5 s after its client left")
        .expect("the upstream task ended");
}

/// A client that half-closes is taken as gone, by both servers (hyper's `half_close` off, its
/// default; nginx alike): a half-close cannot be told from a client that left. What it had
/// pipelined may be answered or not, depending on when the end of its stream is read; the
/// connection ends, nothing is left half-written, and the proxy serves the next client.
async fn a_half_close_after_pipelined_requests_ends_the_connection(server: Server) {
    let (_up, p) = setup(server).await;
    let mut c = Client::connect(p.addr).await;
    c.send(format!("{}{}", get("/first"), get("/last"))).await;
    c.s.shutdown().await.expect("shutdown");
    let rest = c.rest().await;
    // whole responses, in order, if any
    let mut answers = Client {
        s: TcpStream::connect(p.addr).await.expect("connect"),
        buf: rest,
    };
    let mut paths = Vec::new();
    while answers.buf.starts_with(b"HTTP/1.1") {
        paths.push(answers.response("GET").await.path());
    }
    assert!(
        answers.buf.is_empty(),
        "a partial response: {:?}",
        answers.buf
    );
    assert!(
        paths == [] as [&str; 0] || paths == ["/first"] || paths == ["/first", "/last"],
        "{paths:?}"
    );
    let mut next = Client::connect(p.addr).await;
    next.send(get("/next")).await;
    assert_eq!(next.response("GET").await.path(), "/next");
}

both!(
    keep_alive_answers_three_requests_in_turn_on_one_connection,
    pipelined_requests_in_one_write_are_answered_in_order,
    a_request_written_one_byte_at_a_time_is_answered,
    connection_close_from_the_client_closes_after_the_response,
    a_head_response_has_no_body_and_the_next_pipelined_request_parses,
    length_and_chunked_request_bodies_then_a_get_on_one_connection,
    expect_100_continue_is_answered_before_the_body_is_sent,
    malformed_requests_get_400_or_a_close_and_the_proxy_keeps_serving,
    both_transfer_encoding_and_content_length_is_refused_or_read_chunked_then_closed,
    a_head_over_max_header_bytes_gets_431_and_never_reaches_the_upstream,
    http_1_0_without_keep_alive_is_answered_unchunked_and_closed,
    responses_carry_date_and_relay_length_and_chunked_bodies,
    clients_that_vanish_mid_head_or_mid_request_do_not_disturb_the_proxy,
    an_absolute_form_target_is_routed_like_origin_form,
    a_head_trickled_within_each_read_but_not_in_all_is_cut,
    a_client_that_leaves_during_a_long_response_releases_its_upstream,
    a_half_close_after_pipelined_requests_ends_the_connection,
);
