//! The fast upstream: a hyper server (HTTP/1.1 and h2c by prior knowledge) on one loopback
//! listener per role (`baseline`, `b1`, `b2`, ...). Every listener answers any path with a fixed
//! body: 2 bytes (`ok`), or 16 KiB for paths under `/large`. Each response names the listener
//! that answered in `x-upstream`, so the harness can check that a proxy routed a branch header
//! to the right upstream.
//!
//! It prints `role=addr ...` as its first stdout line, then serves until its stdin closes (the
//! harness holds the other end, so the upstream cannot outlive the harness) or it is killed.

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::io::{Read as _, Write as _};
use tokio::net::TcpListener;

/// Size of the large body.
pub const LARGE_BODY: usize = 16 * 1024;
static LARGE: [u8; LARGE_BODY] = [b'x'; LARGE_BODY];

/// Arguments of the hidden `upstream` subcommand.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Listener roles, e.g. `baseline,b1,b2`.
    #[arg(long, value_delimiter = ',', default_value = "baseline,b1,b2")]
    pub roles: Vec<String>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
}

/// Serve until stdin closes.
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .context("building the upstream runtime")?;
    rt.block_on(serve(args.roles))
}

async fn serve(roles: Vec<String>) -> anyhow::Result<()> {
    let mut line = Vec::new();
    for role in roles {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding an upstream listener")?;
        line.push(format!("{role}={}", listener.local_addr()?));
        let tag = HeaderValue::from_str(&role).context("role is not a header value")?;
        tokio::spawn(accept_loop(listener, tag));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", line.join(" "))?;
    out.flush()?;
    drop(out);
    // Returns on EOF (the harness closed our stdin or exited) or on a read error.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::stdin().read_to_end(&mut sink)
    })
    .await;
    Ok(())
}

async fn accept_loop(listener: TcpListener, tag: HeaderValue) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // e.g. out of file descriptors: back off instead of spinning
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let tag = tag.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, tag.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    tag: HeaderValue,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.uri().path().starts_with("/large") {
        Bytes::from_static(&LARGE)
    } else {
        Bytes::from_static(b"ok")
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert("x-upstream", tag);
    Ok(resp)
}
