//! TLS to upstreams (`policy.upstream_tls`): the rustls client of one upstream, built once when a
//! table first names it (never per request), and the stream type the HTTP/1.1 and HTTP/2
//! clients run over, plain TCP or TLS. ALPN offers `http/1.1` to HTTP/1.1 connections and `h2`
//! to HTTP/2 ones (so gRPC over TLS works); TLS 1.2 and 1.3 only; the certificate is verified
//! against the configured CA bundle, for the configured server name or the endpoint's host.

use microstax_table::UpstreamTls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The TLS client of one upstream.
#[derive(Clone)]
pub struct TlsClient {
    h1: TlsConnector,
    h2: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.name)
            .finish()
    }
}

impl TlsClient {
    /// The client for `authority` (`host:port`) under `tls`; the error says why none can be
    /// built (then every connection to the upstream fails with it).
    pub fn new(tls: &UpstreamTls, authority: &str) -> Result<TlsClient, String> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&tls.ca_pem) {
            let c = c.map_err(|e| format!("bad CA bundle {}: {e}", tls.ca_file))?;
            roots
                .add(c)
                .map_err(|e| format!("bad CA certificate in {}: {e}", tls.ca_file))?;
        }
        if roots.is_empty() {
            return Err(format!("CA bundle {} holds no certificate", tls.ca_file));
        }
        let host = match &tls.server_name {
            Some(n) => n.to_string(),
            None => host_of(authority).to_string(),
        };
        let name = ServerName::try_from(host.clone())
            .map_err(|e| format!("`{host}` is not a valid TLS server name: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("tls client: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let with_alpn = |alpn: &[u8]| {
            let mut c = config.clone();
            c.alpn_protocols = vec![alpn.to_vec()];
            TlsConnector::from(Arc::new(c))
        };
        Ok(TlsClient {
            h1: with_alpn(b"http/1.1"),
            h2: with_alpn(b"h2"),
            name,
        })
    }

    /// Run the handshake on `tcp`, offering `h2` (HTTP/2) or `http/1.1` in ALPN.
    pub async fn handshake(&self, tcp: TcpStream, h2: bool) -> io::Result<TlsStream<TcpStream>> {
        let connector = if h2 { &self.h2 } else { &self.h1 };
        connector.connect(self.name.clone(), tcp).await
    }
}

/// The host of `host:port` (`[v6]:port` gives the bare v6 address).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, _)) => h,
        None => authority,
    }
}

/// A connection to an upstream: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum UpstreamIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_the_port() {
        assert_eq!(host_of("api.example.com:443"), "api.example.com");
        assert_eq!(host_of("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8443"), "::1");
    }

    #[test]
    fn an_empty_bundle_is_refused_with_its_file() {
        let tls = UpstreamTls {
            ca_file: "/nowhere/ca.pem".into(),
            ca_pem: Arc::from(Vec::new()),
            server_name: None,
        };
        let e = TlsClient::new(&tls, "127.0.0.1:1").err();
        assert_eq!(
            e.as_deref(),
            Some("CA bundle /nowhere/ca.pem holds no certificate")
        );
    }
}
