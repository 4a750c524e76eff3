//! TLS termination (rustls, ring provider): TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`,
//! several certificates chosen by SNI (each certificate serves the names of its own subject
//! alternative names; the first is the default for clients that send no SNI or a name none
//! covers), optional client certificates (mTLS) verified against a CA, and reload without a
//! restart: the certificate and key files are polled (modification time, length and inode, so
//! an atomic rename is seen), and a set that does not load (a broken PEM, a key that does not
//! match) keeps the old certificates serving, is logged and counted. Handshakes read one
//! snapshot of the certificates; nothing here is on the request path.

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why TLS could not be set up or reloaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the settings (e.g. a key that does not match its certificate).
    #[error("tls settings")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not make a verifier.
    #[error("client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// No certificate was given.
    #[error("no certificate")]
    NoCertificate,
}

/// One certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// TLS settings of a listener.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Certificates; the first is the default.
    pub certs: Vec<CertFiles>,
    /// CA bundle (PEM) that client certificates are verified against; `None`: no mTLS.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients without a certificate (else they are let in, as
    /// untrusted).
    pub require_client_cert: bool,
    /// A verified client certificate makes the connection a trusted peer (its branch
    /// carriers are honoured on an `edge` listener).
    pub trust_client_certs: bool,
    /// How often the certificate and key files are checked for changes.
    pub reload_interval: Duration,
}

/// A loaded certificate and the DER of its leaf (for SNI matching).
#[derive(Debug)]
struct Loaded {
    leaf: CertificateDer<'static>,
    key: Arc<CertifiedKey>,
}

/// The certificates chosen by SNI, swapped whole on reload.
#[derive(Debug)]
struct Resolver {
    current: ArcSwap<Vec<Loaded>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        let by_name = hello.server_name().and_then(|sni| {
            let name = ServerName::try_from(sni).ok()?;
            set.iter().find(|l| {
                webpki::EndEntityCert::try_from(&l.leaf)
                    .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
            })
        });
        by_name.or_else(|| set.first()).map(|l| l.key.clone())
    }
}

/// A listener's TLS: the acceptor, the reloadable certificates and their counters.
pub struct TlsTerminator {
    acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<Resolver>,
    settings: TlsSettings,
    stamps: std::sync::Mutex<Vec<Stamp>>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    handshake_failures: AtomicU64,
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What a file looked like when last loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(p: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(p).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(p: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(p).map_err(|source| TlsError::Read {
        path: p.display().to_string(),
        source,
    })
}

fn load_pair(files: &CertFiles) -> Result<Loaded, TlsError> {
    let pem_err = |p: &Path, what: &str| TlsError::Pem {
        path: p.display().to_string(),
        what: what.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&files.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&files.cert, &format!("bad certificate PEM: {e}")))?;
    let leaf = certs
        .first()
        .cloned()
        .ok_or_else(|| pem_err(&files.cert, "no certificate"))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| pem_err(&files.key, &format!("bad private key PEM: {e}")))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
    let key = CertifiedKey::new(certs, signing);
    key.keys_match()?;
    Ok(Loaded {
        leaf,
        key: Arc::new(key),
    })
}

fn load_all(settings: &TlsSettings) -> Result<Vec<Loaded>, TlsError> {
    if settings.certs.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    settings.certs.iter().map(load_pair).collect()
}

impl TlsTerminator {
    /// Load `settings` (every certificate must load).
    pub fn new(settings: TlsSettings) -> Result<Arc<TlsTerminator>, TlsError> {
        let stamps = file_stamps(&settings);
        let resolver = Arc::new(Resolver {
            current: ArcSwap::from_pointee(load_all(&settings)?),
        });
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &settings.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                    let c = c.map_err(|e| TlsError::Pem {
                        path: ca.display().to_string(),
                        what: format!("bad CA PEM: {e}"),
                    })?;
                    roots.add(c)?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = if settings.require_client_cert {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(v.build()?)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(TlsTerminator {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            resolver,
            settings,
            stamps: std::sync::Mutex::new(stamps),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
        }))
    }

    /// The acceptor for handshakes.
    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Whether a verified client certificate makes its connection trusted.
    pub fn trusts_client_certs(&self) -> bool {
        self.settings.trust_client_certs
    }

    /// Reload the certificates if a file changed. A set that does not load keeps the old one
    /// (logged and counted); returns whether new certificates serve.
    pub fn reload_if_changed(&self) -> bool {
        let now = file_stamps(&self.settings);
        {
            let mut last = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *last == now {
                return false;
            }
            // a broken set is reported once per version of the files, not on every poll
            *last = now;
        }
        match load_all(&self.settings) {
            Ok(set) => {
                self.resolver.current.store(Arc::new(set));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("tls certificates reloaded");
                true
            }
            Err(e) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %error_chain(&e), "tls reload failed: the old certificates keep serving");
                false
            }
        }
    }

    /// Poll the files every `reload_interval` until the returned task is aborted.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.settings.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.reload_if_changed();
            }
        })
    }

    /// Certificate sets swapped in by reloads.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Reloads refused (the old certificates kept serving).
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// Handshakes that failed or timed out.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn handshake_failed(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }
}

fn file_stamps(s: &TlsSettings) -> Vec<Stamp> {
    s.certs
        .iter()
        .flat_map(|c| [&c.cert, &c.key])
        .map(|p| {
            stamp(p).unwrap_or(Stamp {
                modified: None,
                len: 0,
                ino: 0,
            })
        })
        .collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
