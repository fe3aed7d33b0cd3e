//! TLS on a listener: SNI certificate choice, ALPN, session resumption, optional client
//! certificates, and reloading certificates without a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use airlock_config::{ClientAuth, ListenerTls, LoadedConfig, TlsVersion};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

use super::{CertFacts, FileStamp, TlsError, load_certified_key, load_certs, provider};

/// TLS 1.2 sessions kept for resumption by session id (TLS 1.3 and 1.2 clients that
/// support them get stateless tickets instead). About 25 MiB at most; nginx's
/// `ssl_session_cache shared:SSL:10m` holds about 40,000.
const SESSION_CACHE: usize = 20_000;

/// A TLS listener's settings, shared by every connection it accepts.
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    listener: Arc<str>,
    resolver: Arc<SniResolver>,
    /// (certificate, key) files, resolved against the config file's directory.
    files: Vec<(PathBuf, PathBuf)>,
    stamps: Mutex<Vec<FileStamp>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("listener", &self.listener)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn build(
        listener: &str,
        cfg: &ListenerTls,
        loaded: &LoadedConfig,
    ) -> Result<Self, TlsError> {
        let files: Vec<(PathBuf, PathBuf)> = cfg
            .certificates
            .get_ref()
            .iter()
            .map(|c| {
                (
                    loaded.resolve(c.cert.get_ref()),
                    loaded.resolve(c.key.get_ref()),
                )
            })
            .collect();
        let stamps = stamps(&files);
        let certs = CertSet::load(&files)?;
        for (facts, path) in certs
            .entries
            .iter()
            .map(|(f, _)| f)
            .zip(files.iter().map(|f| &f.0))
        {
            super::warn_if_not_current(facts, path);
        }
        let resolver = Arc::new(SniResolver {
            certs: RwLock::new(Arc::new(certs)),
        });

        let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::new(&files[0].0, e.to_string()))?;
        let builder = match &cfg.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let path = loaded.resolve(ca.get_ref());
                let mut roots = RootCertStore::empty();
                for cert in load_certs(&path)? {
                    roots.add(cert).map_err(|e| {
                        TlsError::new(&path, format!("not a usable CA certificate: {e}"))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = match cfg.client_auth.as_ref().map(|a| *a.get_ref()) {
                    Some(ClientAuth::Optional) => verifier.allow_unauthenticated(),
                    Some(ClientAuth::Required) | None => verifier,
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::new(&path, format!("cannot verify clients: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = match &cfg.alpn {
            Some(alpn) => alpn
                .get_ref()
                .iter()
                .map(|p| p.get_ref().as_bytes().to_vec())
                .collect(),
            None => airlock_config::DEFAULT_ALPN
                .iter()
                .map(|p| p.as_bytes().to_vec())
                .collect(),
        };
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError::new(&files[0].0, format!("cannot make session tickets: {e}")))?;

        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            listener: listener.into(),
            resolver,
            files,
            stamps: Mutex::new(stamps),
        })
    }

    /// Whether some certificate covers `host` (for the warning about route hosts).
    pub fn covers(&self, host: &str) -> bool {
        self.resolver
            .current()
            .entries
            .iter()
            .any(|(facts, _)| facts.covers(host))
    }

    /// Load every certificate again. New handshakes use them; open connections keep what
    /// they negotiated. When a file is unusable, the old certificates stay and the error
    /// says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = stamps(&self.files);
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        let certs = CertSet::load(&self.files)?;
        for (facts, path) in certs
            .entries
            .iter()
            .map(|(f, _)| f)
            .zip(self.files.iter().map(|f| &f.0))
        {
            super::warn_if_not_current(facts, path);
        }
        *self
            .resolver
            .certs
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(certs);
        Ok(())
    }

    /// Reload when a certificate or key file changed since the last load, and log the
    /// result. Returns whether anything changed.
    pub fn reload_if_changed(&self) -> bool {
        let changed = self
            .stamps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(FileStamp::changed);
        if changed {
            self.reload_and_log("files changed");
        }
        changed
    }

    pub fn reload_and_log(&self, why: &str) {
        match self.reload() {
            Ok(()) => tracing::info!(listener = &*self.listener, why, "certificates reloaded"),
            Err(e) => tracing::error!(
                listener = &*self.listener,
                why,
                error = %e,
                "certificates not reloaded; the previous ones stay in use"
            ),
        }
    }
}

fn stamps(files: &[(PathBuf, PathBuf)]) -> Vec<FileStamp> {
    files
        .iter()
        .flat_map(|(c, k)| [FileStamp::of(c.clone()), FileStamp::of(k.clone())])
        .collect()
}

/// The certificates of one listener, in configuration order.
struct CertSet {
    entries: Vec<(CertFacts, Arc<CertifiedKey>)>,
}

impl CertSet {
    fn load(files: &[(PathBuf, PathBuf)]) -> Result<Self, TlsError> {
        let entries = files
            .iter()
            .map(|(cert, key)| load_certified_key(cert, key).map(|c| (c.leaf, c.key)))
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    /// The first certificate that covers the requested name, else the first one.
    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        server_name
            .and_then(|name| self.entries.iter().find(|(facts, _)| facts.covers(name)))
            .unwrap_or(&self.entries[0])
            .1
            .clone()
    }
}

#[derive(Debug)]
struct SniResolver {
    certs: RwLock<Arc<CertSet>>,
}

impl std::fmt::Debug for CertSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(facts, _)| &facts.subject))
            .finish()
    }
}

impl SniResolver {
    fn current(&self) -> Arc<CertSet> {
        self.certs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().pick(hello.server_name()))
    }
}

/// What a request's handler knows about the TLS session it came on.
#[derive(Debug, Clone)]
pub struct SessionFacts {
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub version: &'static str,
    /// The verified client certificate (mutual TLS).
    pub client_cert: Option<CertFacts>,
}

impl SessionFacts {
    pub fn of(conn: &ServerConnection) -> Self {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        Self {
            sni: conn.server_name().map(str::to_string),
            alpn: conn
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            version,
            client_cert: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| CertFacts::parse(leaf).ok()),
        }
    }

    pub fn is_h2(&self) -> bool {
        self.alpn.as_deref() == Some("h2")
    }
}
