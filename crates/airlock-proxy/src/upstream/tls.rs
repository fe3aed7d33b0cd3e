//! TLS to upstream servers (`wss://` and `https://` backends): verification against the
//! system's roots or a CA file, the name to check, an optional client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::tls::{TlsError, load_certs, provider};

/// How one pool talks TLS to its servers.
pub struct UpstreamTls {
    connector: tokio_rustls::TlsConnector,
    /// `server_name` from the config; otherwise each server's own host.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    pub fn build(
        pool: &str,
        cfg: &airlock_config::UpstreamTls,
        loaded: &airlock_config::LoadedConfig,
    ) -> Result<Self, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(Path::new(pool), e.to_string()))?;
        let builder = if cfg.insecure_skip_verify {
            tracing::warn!(
                upstream = pool,
                "insecure_skip_verify = true: upstream certificates are NOT verified; anyone on the path can read and change this traffic"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate))
        } else {
            builder.with_root_certificates(roots(pool, cfg, loaded)?)
        };
        let mut config = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => {
                let (cert, key) = (
                    loaded.resolve(cert.get_ref()),
                    loaded.resolve(key.get_ref()),
                );
                // Checks that the two belong together, with an error that names the files.
                crate::tls::load_certified_key(&cert, &key)?;
                builder
                    .with_client_auth_cert(load_certs(&cert)?, crate::tls::load_key(&key)?)
                    .map_err(|e| TlsError::new(&key, format!("cannot use this client key: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        // Upgrades always go to the upstream as HTTP/1.1, and so do plain requests.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = cfg
            .server_name
            .as_ref()
            .map(|n| {
                ServerName::try_from(n.get_ref().clone()).map_err(|e| {
                    TlsError::new(Path::new(pool), format!("invalid server_name: {e}"))
                })
            })
            .transpose()?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The name to send and verify for a server at `addr` ("host:port").
    pub fn name_for(&self, addr: &str) -> Option<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Some(name.clone());
        }
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).ok()
    }

    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector.connect(name, tcp).await
    }
}

fn roots(
    pool: &str,
    cfg: &airlock_config::UpstreamTls,
    loaded: &airlock_config::LoadedConfig,
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &cfg.ca {
        let path = loaded.resolve(ca.get_ref());
        for cert in load_certs(&path)? {
            roots
                .add(cert)
                .map_err(|e| TlsError::new(&path, format!("not a usable CA certificate: {e}")))?;
        }
        return Ok(roots);
    }
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        let why = native
            .errors
            .first()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "none found".into());
        return Err(TlsError {
            path: format!("upstream `{pool}`"),
            message: format!(
                "cannot load the system's root certificates ({why}); set `ca` in its `tls` table"
            ),
        });
    }
    Ok(roots)
}

/// `insecure_skip_verify`: any certificate passes; signatures are still checked so the
/// handshake itself is sound.
#[derive(Debug)]
struct AcceptAnyCertificate;

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
