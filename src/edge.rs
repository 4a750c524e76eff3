//! Edge flags of `microstax run`: the listener's trust policy (who may select a branch) and
//! the branch-token keys, the access log, and the `microstax token` command that mints a
//! token.

use anyhow::{Context as _, Result};
use microstax_proxy::{
    AccessLog, CertFiles, Cidr, LogMode, LogSink, TlsSettings, TlsTerminator, TokenKeys,
    TrustMetrics, TrustMode, TrustPolicy,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default token audience (`--token-audience`).
pub(crate) const DEFAULT_AUDIENCE: &str = "microstax";

#[derive(clap::Args, Clone)]
pub(crate) struct TrustArgs {
    /// Who may select a branch: `trust-all` (a sidecar behind a trusted mesh) or `edge`
    /// (carriers only from --trusted-cidr peers; others need a signed token).
    #[arg(long, default_value = "trust-all")]
    trust: String,
    /// A peer block whose carriers an edge listener honours (repeatable), e.g. 10.0.0.0/8.
    #[arg(long = "trusted-cidr")]
    trusted_cidrs: Vec<String>,
    /// Branch-token keys, one per line: the first mints, all are accepted (rotation).
    #[arg(long)]
    token_key_file: Option<PathBuf>,
    /// The audience branch tokens must name.
    #[arg(long, default_value = DEFAULT_AUDIENCE)]
    token_audience: String,
    /// Mark the preview cookie Secure (clients reach the proxy over HTTPS).
    #[arg(long)]
    secure_cookie: bool,
}

impl TrustArgs {
    /// The trust policy these flags describe, counting on `registry`.
    pub(crate) fn policy(&self, registry: &prometheus::Registry) -> Result<TrustPolicy> {
        let mode: TrustMode = self.trust.parse()?;
        let trusted = self
            .trusted_cidrs
            .iter()
            .map(|c| c.parse::<Cidr>())
            .collect::<Result<Vec<_>, _>>()?;
        let keys = self.token_key_file.as_deref().map(read_keys).transpose()?;
        if mode == TrustMode::Edge && keys.is_none() {
            tracing::warn!("edge trust without --token-key-file: branch tokens are refused");
        }
        let policy = TrustPolicy {
            mode,
            trusted,
            keys,
            audience: self.token_audience.as_str().into(),
            secure_cookie: self.secure_cookie,
            metrics: TrustMetrics::new(registry).context("registering trust metrics")?,
            reloaded: Default::default(),
        };
        policy.validate()?;
        Ok(policy)
    }
}

impl TrustArgs {
    /// SIGHUP: read the token key file again and swap its keys in; a file that does not load
    /// keeps the keys in use (logged).
    pub(crate) fn reload_keys(&self, policy: &TrustPolicy) {
        let Some(path) = &self.token_key_file else {
            return;
        };
        match read_keys(path) {
            Ok(keys) => {
                policy.reload_keys(keys);
                tracing::info!(path = %path.display(), "SIGHUP: token keys reloaded");
            }
            Err(e) => tracing::warn!("SIGHUP: token keys kept: {e:#}"),
        }
    }
}

pub(crate) fn read_keys(path: &Path) -> Result<TokenKeys> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token keys {}", path.display()))?;
    TokenKeys::from_file_text(&text).with_context(|| format!("token keys {}", path.display()))
}

#[derive(clap::Args, Clone)]
pub(crate) struct TlsArgs {
    /// Terminate TLS with this certificate chain and key, `CERT.pem:KEY.pem` (repeatable:
    /// chosen by SNI, the first is the default). Files are reloaded when they change.
    #[arg(long = "tls-cert")]
    tls_certs: Vec<String>,
    /// Verify client certificates against this CA bundle (mTLS).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: refuse clients without a certificate.
    #[arg(long)]
    tls_require_client_cert: bool,
    /// A verified client certificate makes its connection trusted for branch selection.
    #[arg(long)]
    tls_trust_client_certs: bool,
    /// How often certificate files are checked for changes, in ms.
    #[arg(long, default_value_t = 1000)]
    tls_reload_ms: u64,
}

impl TlsArgs {
    /// The TLS terminator these flags describe (`None` without --tls-cert).
    pub(crate) fn terminator(&self) -> Result<Option<std::sync::Arc<TlsTerminator>>> {
        if self.tls_certs.is_empty() {
            anyhow::ensure!(
                self.tls_client_ca.is_none(),
                "--tls-client-ca needs --tls-cert"
            );
            return Ok(None);
        }
        let certs = self
            .tls_certs
            .iter()
            .map(|c| {
                let (cert, key) = c
                    .split_once(':')
                    .with_context(|| format!("--tls-cert `{c}`: expected CERT.pem:KEY.pem"))?;
                Ok(CertFiles {
                    cert: cert.into(),
                    key: key.into(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let settings = TlsSettings {
            certs,
            client_ca: self.tls_client_ca.clone(),
            require_client_cert: self.tls_require_client_cert,
            trust_client_certs: self.tls_trust_client_certs,
            reload_interval: Duration::from_millis(self.tls_reload_ms.max(10)),
        };
        Ok(Some(
            TlsTerminator::new(settings).context("setting up TLS")?,
        ))
    }
}

/// The access log `--access-log MODE [--access-log-file F]` asks for.
pub(crate) fn access_log(mode: &str, file: Option<&Path>) -> Result<AccessLog> {
    let mode = match mode {
        "off" => LogMode::Off,
        "all" => LogMode::All,
        m => match m
            .strip_prefix("sample:")
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(n) if n > 0 => LogMode::Sampled(n),
            _ => anyhow::bail!("invalid --access-log `{m}` (off, all or sample:N)"),
        },
    };
    let sink = file.map_or(LogSink::Stderr, |f| LogSink::File(f.to_path_buf()));
    AccessLog::start(mode, sink).context("opening the access log")
}

/// `microstax token`: print a token for `branch` valid for `ttl`.
pub(crate) fn mint(branch: &str, ttl: &str, key_file: &Path, audience: &str) -> Result<()> {
    let ttl = parse_ttl(ttl)?;
    let keys = read_keys(key_file)?;
    let expires = microstax_proxy::token::unix_now().saturating_add(ttl.as_secs());
    let token = keys.mint(branch, audience, expires).with_context(|| {
        format!("`{branch}` is not a valid branch name, or the audience is too long")
    })?;
    println!("{token}");
    Ok(())
}

/// `90`, `90s`, `15m`, `8h`, `2d`.
pub(crate) fn parse_ttl(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .with_context(|| format!("invalid TTL `{s}` (expected e.g. 30m, 8h, 2d)"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("invalid TTL unit in `{s}` (s, m, h or d)"),
    };
    anyhow::ensure!(n > 0, "the TTL must be positive");
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("8h").unwrap(), Duration::from_secs(8 * 3600));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("8x").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
