//! TLS with rustls and one crypto provider (ring) for the whole process: PEM loading,
//! certificate inspection, and the listener side (`server`: certificates by SNI, ALPN,
//! client certificates, reload). The upstream side is `crate::upstream::tls`.

pub mod server;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A TLS file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    pub path: String,
    pub message: String,
}

impl TlsError {
    pub(crate) fn new(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}

/// The crypto provider every TLS config in the process uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(path, format!("cannot read the {what}: {e}")))
}

/// Every certificate in a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, "certificate file")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(path, format!("not a valid PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(
            path,
            "no certificate in the file (expected -----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "private key file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        TlsError::new(
            path,
            format!("no usable private key (PKCS#8, RSA or EC PEM): {e}"),
        )
    })
}

/// A certificate chain and its key, checked to belong together, with what the proxy needs
/// to know about the leaf certificate.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub leaf: CertFacts,
}

pub fn load_certified_key(cert: &Path, key: &Path) -> Result<LoadedCert, TlsError> {
    let chain = load_certs(cert)?;
    let leaf = CertFacts::parse(&chain[0]).map_err(|m| TlsError::new(cert, m))?;
    let private = load_key(key)?;
    let certified = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::new(
            key,
            format!(
                "this private key does not belong to the certificate in {}",
                cert.display()
            ),
        ),
        other => TlsError::new(key, format!("cannot use this private key: {other}")),
    })?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        leaf,
    })
}

/// What a certificate says about itself.
#[derive(Debug, Clone)]
pub struct CertFacts {
    /// The subject, like `CN=client-1, O=Example`.
    pub subject: String,
    /// Subject alternative names as `dns:NAME`, `ip:ADDR`, `email:ADDR`, `uri:URI`.
    pub sans: Vec<String>,
    /// DNS names (lowercase, `*.` wildcards kept) the certificate is for: its DNS SANs, or
    /// its common name when it has none.
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_before: i64,
    pub not_after: i64,
}

impl CertFacts {
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("cannot parse the certificate: {e}"))?;
        let mut facts = Self {
            subject: cert.subject().to_string(),
            sans: Vec::new(),
            dns_names: Vec::new(),
            ips: Vec::new(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => {
                        facts.sans.push(format!("dns:{n}"));
                        facts.dns_names.push(n.to_ascii_lowercase());
                    }
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            facts.sans.push(format!("ip:{ip}"));
                            facts.ips.push(ip);
                        }
                    }
                    GeneralName::RFC822Name(n) => facts.sans.push(format!("email:{n}")),
                    GeneralName::URI(n) => facts.sans.push(format!("uri:{n}")),
                    _ => {}
                }
            }
        }
        if facts.dns_names.is_empty() && facts.ips.is_empty() {
            facts.dns_names = cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase)
                .collect();
        }
        Ok(facts)
    }

    /// Whether this certificate is valid for `host` (a DNS name or an IP address).
    pub fn covers(&self, host: &str) -> bool {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.ips.contains(&ip);
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.dns_names.iter().any(|name| name_matches(name, &host))
    }
}

/// RFC 6125 matching: exact, or `*.example.com` for exactly one more leftmost label.
fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Warn about a certificate that is out of its validity period: clients will refuse it, but
/// the proxy still starts (a renewed file can be loaded by a reload).
pub fn warn_if_not_current(facts: &CertFacts, path: &Path) {
    let now = now_unix();
    if facts.not_after < now {
        tracing::warn!(
            cert = %path.display(),
            subject = facts.subject,
            expired_days_ago = (now - facts.not_after) / 86_400,
            "certificate has expired; clients will refuse it"
        );
    } else if facts.not_before > now {
        tracing::warn!(
            cert = %path.display(),
            subject = facts.subject,
            "certificate is not valid yet; clients will refuse it"
        );
    }
}

/// A resolved path with the file's identity at load time, to notice when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStamp {
    path: PathBuf,
    stamp: Option<(std::time::SystemTime, u64)>,
}

impl FileStamp {
    pub fn of(path: PathBuf) -> Self {
        let stamp = std::fs::metadata(&path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        Self { path, stamp }
    }

    pub fn changed(&self) -> bool {
        Self::of(self.path.clone()) != *self
    }
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("a.example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(!name_matches("a.example.com", "b.example.com"));
    }
}
