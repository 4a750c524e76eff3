//! Upstream TLS (`policy.upstream_tls`) over real sockets, with certificates made by the test
//! (rcgen): an HTTPS upstream (tokio-rustls on 127.0.0.1:0) reached over HTTP/1.1 (ALPN
//! `http/1.1`) and HTTP/2 (ALPN `h2`, also for gRPC-shaped requests under `protocol: auto`),
//! SNI from `server_name` or the endpoint's host, the setting inherited by a branch; an upstream
//! whose certificate another CA signed is a 502 (gRPC UNAVAILABLE) with the reason, counted; and
//! the config errors of a bad `ca_file`, at their file and line.
#![allow(clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    Ca {
        cert: p.self_signed(&key).expect("ca"),
        key,
    }
}

/// An HTTPS upstream answering JSON with its name, the ALPN it negotiated, the request's HTTP
/// version and the SNI it was sent; stopped when dropped.
struct HttpsUpstream {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn https_upstream(name: &'static str, ca: &Ca, names: &[&str]) -> HttpsUpstream {
    let key = KeyPair::generate().expect("key");
    let p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("params");
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("sign");
    let chain = vec![cert.der().clone()];
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("cert");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut rx => break,
                acc = listener.accept() => {
                    let Ok((tcp, _)) = acc else { continue };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let (_, conn) = tls.get_ref();
                        let alpn = conn
                            .alpn_protocol()
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .unwrap_or_default();
                        let sni = conn.server_name().unwrap_or("").to_string();
                        let h2 = alpn == "h2";
                        let svc = service_fn(move |req| answer(name, alpn.clone(), sni.clone(), req));
                        let io = TokioIo::new(tls);
                        if h2 {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, svc)
                                .await;
                        } else {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, svc)
                                .await;
                        }
                    });
                }
            }
        }
    });
    HttpsUpstream { addr, _stop: tx }
}

async fn answer(
    name: &'static str,
    alpn: String,
    sni: String,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let json = serde_json::json!({
        "upstream": name,
        "alpn": alpn,
        "sni": sni,
        "version": format!("{:?}", req.version()),
    });
    Ok(Response::new(Full::new(Bytes::from(json.to_string()))))
}

fn write_ca(dir: &tempfile::TempDir, ca: &Ca) -> PathBuf {
    let p = dir.path().join("ca.pem");
    std::fs::write(&p, ca.cert.pem()).expect("write ca");
    p
}

/// `web` over HTTP/1.1 with a configured server name, `api` over HTTP/2 with the endpoint's
/// host (an IP address) as the name, `rpc` under `protocol: auto`; branch `dev` moves `web` to
/// another HTTPS upstream and inherits the TLS setting.
fn tls_config(ca: &str, web: SocketAddr, api: SocketAddr) -> String {
    format!(
        "kind: org\nservices:\n  web:\n    hosts: [web]\n    endpoints: [\"{web}\"]\n    policy:\n      protocol: http1\n      upstream_tls: {{ca_file: \"{ca}\", server_name: upstream.test}}\n  api:\n    hosts: [api]\n    endpoints: [\"{api}\"]\n    policy:\n      protocol: http2\n      upstream_tls: {{ca_file: \"{ca}\"}}\n  rpc:\n    hosts: [rpc]\n    endpoints: [\"{api}\"]\n    policy:\n      upstream_tls: {{ca_file: \"{ca}\"}}\n"
    )
}

async fn call(addr: SocketAddr, host: &str, extra: &[(&str, &str)]) -> Reply {
    get(
        &h1_client(),
        addr,
        "/x",
        &[&[("host", host)], extra].concat(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_over_http1_and_http2_verified_against_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca("upstream ca");
    let ca_file = write_ca(&dir, &ca);
    let web = https_upstream("web", &ca, &["upstream.test"]).await;
    let dev = https_upstream("dev", &ca, &["upstream.test"]).await;
    let api = https_upstream("api", &ca, &["127.0.0.1"]).await;
    let org = tls_config(&ca_file.display().to_string(), web.addr, api.addr);
    let br = format!(
        "parent: baseline\nservices:\n  web: {{endpoints: [\"{}\"]}}\n",
        dev.addr
    );
    let p = ProxyUnderTest::start(&config(&[("org.yaml", &org), ("branches/dev.yaml", &br)])).await;

    let r = call(p.addr, "web", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["upstream"], "web");
    assert_eq!(j["alpn"], "http/1.1");
    assert_eq!(j["version"], "HTTP/1.1");
    assert_eq!(j["sni"], "upstream.test");

    // the branch's own endpoint is reached with the TLS setting merged from the baseline
    let r = call(p.addr, "web", &[("x-microstax-branch", "dev")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upstream"], "dev");
    assert_eq!(r.json()["alpn"], "http/1.1");

    let r = call(p.addr, "api", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["alpn"], "h2");
    assert_eq!(j["version"], "HTTP/2.0");
    // an IP address is verified against the certificate but never sent as SNI
    assert_eq!(j["sni"], "");

    // a gRPC-shaped request under `protocol: auto` goes over HTTP/2, so ALPN offers h2
    let r = call(p.addr, "rpc", &[("content-type", "application/grpc")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["alpn"], "h2");
    let r = call(p.addr, "rpc", &[]).await;
    assert_eq!(r.json()["alpn"], "http/1.1");

    // the connections are pooled: more requests, no new handshakes needed to answer them
    for _ in 0..5 {
        assert_eq!(call(p.addr, "api", &[]).await.status, 200);
        assert_eq!(call(p.addr, "web", &[]).await.status, 200);
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cert_from_another_ca_is_a_502_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trusted = ca("trusted ca");
    let other = ca("other ca");
    let ca_file = write_ca(&dir, &trusted);
    let bad = https_upstream("bad", &other, &["upstream.test", "127.0.0.1"]).await;
    let org = tls_config(&ca_file.display().to_string(), bad.addr, bad.addr);
    let p = ProxyUnderTest::start(&config(&[("org.yaml", &org)])).await;

    for host in ["web", "api"] {
        let r = call(p.addr, host, &[]).await;
        assert_eq!(r.status, 502, "{host}: {}", r.text());
        let text = r.text();
        assert!(
            text.contains("tls") && text.contains("UnknownIssuer"),
            "{host}: {text}"
        );
    }
    // to a gRPC call: trailers-only UNAVAILABLE
    let r = call(p.addr, "rpc", &[("content-type", "application/grpc")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("14"),
        "{:?}",
        r.headers
    );
    // counted as connect errors of the TLS upstream
    let up = p
        .router
        .registry()
        .get(&bad.addr.to_string())
        .expect("upstream state");
    let errors = up.connect_errors.load(std::sync::atomic::Ordering::Relaxed);
    assert!(errors >= 3, "{errors} connect errors counted");
    p.shutdown().await;
}

fn build_error(ca_file: &str) -> String {
    let org = format!(
        "kind: org\nservices:\n  web:\n    hosts: [web]\n    endpoints: [\"127.0.0.1:1\"]\n    policy:\n      upstream_tls:\n        ca_file: \"{ca_file}\"\n"
    );
    let docs = microstax_config::parse_text(
        "org.yaml",
        &org,
        Some(microstax_config::LayerKind::Org),
        None,
    )
    .expect("parse");
    match microstax_config::Config::build(docs) {
        Ok(_) => panic!("a bad ca_file {ca_file} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_missing_or_certless_ca_file_is_a_config_error_at_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.pem");
    let e = build_error(&missing.display().to_string());
    assert!(
        e.contains("org.yaml:8") && e.contains("ca_file") && e.contains("cannot read"),
        "{e}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let e = build_error(&empty.display().to_string());
    assert!(
        e.contains("org.yaml:8") && e.contains("holds no PEM certificate"),
        "{e}"
    );
}

#[test]
fn a_bad_server_name_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca("ca");
    let ca_file = write_ca(&dir, &ca);
    let org = format!(
        "kind: org\nservices:\n  web:\n    hosts: [web]\n    endpoints: [\"127.0.0.1:1\"]\n    policy:\n      upstream_tls: {{ca_file: \"{}\", server_name: \"bad name\"}}\n",
        ca_file.display()
    );
    let docs = microstax_config::parse_text(
        "org.yaml",
        &org,
        Some(microstax_config::LayerKind::Org),
        None,
    )
    .expect("parse");
    let e = match microstax_config::Config::build(docs) {
        Ok(_) => panic!("a bad server name was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("server_name") && e.contains("not a DNS name"),
        "{e}"
    );
}
