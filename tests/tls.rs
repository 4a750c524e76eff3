//! TLS termination over real sockets, with certificates made by the test (rcgen; no private key
//! is committed): SNI picks among several certificates, ALPN `h2` and `http/1.1` both serve,
//! TLS 1.2 and 1.3 both work, a certificate replaced by an atomic rename is picked up under
//! load while a broken PEM keeps the old one (and is counted), and mTLS: a verified client
//! certificate is trusted for branch selection on an edge listener, a client without one is
//! not, and one from another CA is refused.
#![allow(clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use microstax_proxy::{
    CertFiles, ServerOptions, TlsSettings, TlsTerminator, TrustMode, TrustPolicy,
};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(10);

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

/// A leaf for `names` signed by `ca`: (cert PEM, key PEM, cert DER).
fn leaf(ca: &Ca, names: &[&str], client: bool) -> (String, String, CertificateDer<'static>) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("params");
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = p.signed_by(&key, &ca.cert, &ca.key).expect("sign");
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

/// Write `text` to `path` by an atomic rename, as cert-manager and editors do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write tmp");
    std::fs::rename(&tmp, path).expect("rename");
}

struct Setup {
    _dir: tempfile::TempDir,
    ca: Ca,
    a: (PathBuf, PathBuf, CertificateDer<'static>),
    b_der: CertificateDer<'static>,
    ca_pem: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca("test ca");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let (ac, ak, ad) = leaf(&ca, &["a.test"], false);
    let (bc, bk, bd) = leaf(&ca, &["b.test"], false);
    let a = (write("a.pem", &ac), write("a.key", &ak), ad);
    write("b.pem", &bc);
    write("b.key", &bk);
    let ca_pem = write("ca.pem", &ca.cert.pem());
    Setup {
        ca,
        a,
        b_der: bd,
        ca_pem,
        _dir: dir,
    }
}

fn settings(s: &Setup, mtls: bool) -> TlsSettings {
    let dir = s.ca_pem.parent().expect("dir");
    TlsSettings {
        certs: vec![
            CertFiles {
                cert: s.a.0.clone(),
                key: s.a.1.clone(),
            },
            CertFiles {
                cert: dir.join("b.pem"),
                key: dir.join("b.key"),
            },
        ],
        client_ca: mtls.then(|| s.ca_pem.clone()),
        require_client_cert: false,
        trust_client_certs: mtls,
        reload_interval: Duration::from_millis(20),
    }
}

fn client_config(
    s: &Setup,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: Option<(String, String)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(s.ca.cert.der().clone()).expect("root");
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots);
    let mut c = match client_cert {
        Some((cert, key)) => {
            use rustls::pki_types::pem::PemObject;
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("certs");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            b.with_client_auth_cert(certs, key).expect("client auth")
        }
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}

/// A TLS connection to `addr` for `sni`: the stream, the server's leaf, ALPN and version.
async fn connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).expect("name");
    tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

fn leaf_of(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().expect("certs")[0].clone()
}

/// GET / over an established TLS stream (HTTP/2 when ALPN chose it); the status and the
/// `x-forwarded-proto` and branch the echo upstream saw.
async fn get_over(
    s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut b = http::Request::get("/");
    if h2 {
        b = http::Request::get("https://api/");
    } else {
        b = b.header("host", "api");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).expect("req");
    let resp = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("h2 response")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("h1 response")
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

async fn proxy(
    tls: Arc<TlsTerminator>,
    trust: TrustPolicy,
) -> (ProxyUnderTest, Upstream, Upstream) {
    let base = Upstream::start("base").await;
    let dev = Upstream::start("dev").await;
    let org = format!(
        "kind: org\nrouting: {{default_service: api}}\nservices:\n  api:\n    hosts: [api]\n    endpoints: [\"{}\"]\n",
        base.addr
    );
    let br = format!(
        "parent: baseline\nservices:\n  api: {{endpoints: [\"{}\"]}}\n",
        dev.addr
    );
    let cfg = config(&[("org.yaml", &org), ("branches/dev.yaml", &br)]);
    let opts = ServerOptions {
        tls: Some(tls),
        trust: Arc::new(trust),
        ..ServerOptions::default()
    };
    (ProxyUnderTest::start_with(&cfg, opts).await, base, dev)
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_and_versions() {
    let s = setup();
    let tls = TlsTerminator::new(settings(&s, false)).expect("tls");
    let (p, _b, _d) = proxy(tls, TrustPolicy::default()).await;
    // SNI chooses the certificate; no match falls back to the first
    let a = connect(
        p.addr,
        "a.test",
        client_config(&s, &[b"http/1.1"], BOTH, None),
    )
    .await
    .expect("a");
    assert_eq!(leaf_of(&a), s.a.2);
    let b = connect(
        p.addr,
        "b.test",
        client_config(&s, &[b"http/1.1"], BOTH, None),
    )
    .await
    .expect("b");
    assert_eq!(leaf_of(&b), s.b_der);
    // ALPN: h2 and http/1.1 both serve, and the upstream hears https
    let (status, j) = get_over(b, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(j["headers"]["x-forwarded-proto"][0], "https");
    let h2 = connect(
        p.addr,
        "a.test",
        client_config(&s, &[b"h2", b"http/1.1"], BOTH, None),
    )
    .await
    .expect("h2");
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(get_over(h2, &[]).await.0, 200);
    assert_eq!(get_over(a, &[]).await.0, 200);
    // TLS 1.2 alone and TLS 1.3 alone
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let c = connect(
            p.addr,
            "a.test",
            client_config(&s, &[b"http/1.1"], &[v], None),
        )
        .await
        .expect("version");
        assert_eq!(c.get_ref().1.protocol_version(), Some(v.version));
    }
    // a client that does not trust our CA fails the handshake; the proxy keeps serving
    let other = ca("other");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(other.cert.der().clone()).expect("root");
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    assert!(connect(p.addr, "a.test", Arc::new(cfg)).await.is_err());
    let again = connect(
        p.addr,
        "a.test",
        client_config(&s, &[b"http/1.1"], BOTH, None),
    )
    .await
    .expect("again");
    assert_eq!(get_over(again, &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_rename_and_a_broken_pem_keeps_the_old_one() {
    let s = setup();
    let tls = TlsTerminator::new(settings(&s, false)).expect("tls");
    let reloader = tls.spawn_reloader();
    let (p, _b, _d) = proxy(tls.clone(), TrustPolicy::default()).await;
    // load while the files change: every request on every new connection succeeds
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, cfg, addr) = (
            stop.clone(),
            client_config(&s, &[b"http/1.1"], BOTH, None),
            p.addr,
        );
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 2000 {
                let c = connect(addr, "a.test", cfg.clone())
                    .await
                    .expect("handshake under reload");
                assert_eq!(get_over(c, &[]).await.0, 200);
                n += 1;
            }
            n
        })
    };
    // a broken PEM: counted, the old certificate still serves
    replace(
        &s.a.0,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    wait_for(DEADLINE, "the broken PEM counted", || {
        let n = tls.reload_failures();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let c = connect(
        p.addr,
        "a.test",
        client_config(&s, &[b"http/1.1"], BOTH, None),
    )
    .await
    .expect("old cert");
    assert_eq!(leaf_of(&c), s.a.2);
    // a new certificate by atomic rename: served from then on
    let (nc, nk, nd) = leaf(&s.ca, &["a.test"], false);
    replace(&s.a.1, &nk);
    replace(&s.a.0, &nc);
    let cfg = client_config(&s, &[b"http/1.1"], BOTH, None);
    wait_for(DEADLINE, "the new certificate served", || {
        let (cfg, nd) = (cfg.clone(), nd.clone());
        async move {
            let c = connect(p.addr, "a.test", cfg).await.ok()?;
            (leaf_of(&c) == nd).then_some(())
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = load.await.expect("load task");
    assert!(served > 0);
    assert!(tls.reloads() >= 1);
    reloader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_client_certificate_is_trusted_for_branch_selection() {
    let s = setup();
    let tls = TlsTerminator::new(settings(&s, true)).expect("tls");
    let trust = TrustPolicy {
        mode: TrustMode::Edge,
        ..TrustPolicy::default()
    };
    let (p, _b, _d) = proxy(tls.clone(), trust).await;
    let (cc, ck, _) = leaf(&s.ca, &["client.test"], true);
    let with_cert = connect(
        p.addr,
        "a.test",
        client_config(&s, &[b"http/1.1"], BOTH, Some((cc, ck))),
    )
    .await
    .expect("mtls");
    let (status, j) = get_over(with_cert, &[("x-microstax-branch", "dev")]).await;
    assert_eq!(status, 200);
    assert_eq!(j["upstream"], "dev", "a verified client was not trusted");
    // without a certificate: let in, but untrusted (baseline, carrier stripped)
    let anon = connect(
        p.addr,
        "a.test",
        client_config(&s, &[b"http/1.1"], BOTH, None),
    )
    .await
    .expect("anon");
    let (status, j) = get_over(anon, &[("x-microstax-branch", "dev")]).await;
    assert_eq!(status, 200);
    assert_eq!(j["upstream"], "base");
    // a certificate from another CA: the handshake fails
    let other = ca("other");
    let (oc, ok, _) = leaf(&other, &["client.test"], true);
    let bad = connect(
        p.addr,
        "a.test",
        client_config(&s, &[b"http/1.1"], BOTH, Some((oc, ok))),
    )
    .await;
    let refused = match bad {
        Err(_) => true,
        // TLS 1.3: the client learns of the refusal on its first read
        Ok(stream) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = stream;
            let _ = stream
                .write_all(b"GET / HTTP/1.1\r\nhost: api\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            !matches!(
                tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await,
                Ok(Ok(n)) if n > 0
            )
        }
    };
    assert!(refused, "a certificate of another CA was accepted");
    wait_for(DEADLINE, "the failed handshake counted", || {
        let n = tls.handshake_failures();
        async move { (n >= 1).then_some(()) }
    })
    .await;
}
