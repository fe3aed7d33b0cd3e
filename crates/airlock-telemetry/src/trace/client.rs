//! The exporter's HTTP client: one connection to the collector, kept open between
//! batches and opened again after any failure. HTTPS verifies the collector against the
//! system's roots.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Where and how batches are posted.
pub struct Collector {
    https: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// `host:port`, to connect to.
    address: String,
    /// `host[:port]` as written, for `Host`.
    authority: HeaderValue,
    path: http::uri::PathAndQuery,
    headers: Vec<(HeaderName, HeaderValue)>,
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl Collector {
    /// The collector at `endpoint`, validated by `airlock-config`.
    pub fn new(endpoint: &str, headers: Vec<(HeaderName, HeaderValue)>) -> Result<Self, String> {
        let (https, authority, path) = airlock_config::split_endpoint(endpoint)?;
        let (host, has_port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (host, !port.is_empty()),
            _ => (authority, false),
        };
        let address = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{}", if https { 443 } else { 80 })
        };
        let https = if https {
            let name = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(name.to_string())
                .map_err(|e| format!("`{host}` is not a name TLS can verify: {e}"))?;
            Some((Arc::new(tls_config()?), name))
        } else {
            None
        };
        Ok(Self {
            https,
            address,
            authority: HeaderValue::from_str(authority).map_err(|e| e.to_string())?,
            path: path
                .parse()
                .map_err(|_| format!("`{path}` is not a URL path"))?,
            headers,
            connection: None,
        })
    }

    /// Post one batch; the collector's status, or why there is none.
    pub async fn post(&mut self, body: Vec<u8>) -> Result<http::StatusCode, String> {
        let mut sender = match self.connection.take() {
            Some(sender) if sender.is_ready() => sender,
            _ => self.connect().await?,
        };
        let mut request = http::Request::post(http::Uri::from(self.path.clone()))
            .header(HOST, self.authority.clone())
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        for (name, value) in &self.headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("the collector did not answer: {e}"))?;
        let status = response.status();
        // Read the answer to the end so that the connection can carry the next batch.
        if response.into_body().collect().await.is_ok() {
            self.connection = Some(sender);
        }
        Ok(status)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let tcp = TcpStream::connect(&self.address)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.address))?;
        let _ = tcp.set_nodelay(true);
        match &self.https {
            None => handshake(tcp).await,
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS with {} failed: {e}", self.address))?;
                handshake(tls).await
            }
        }
    }
}

async fn handshake<S>(io: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if roots.is_empty() {
        return Err(
            "no trusted root certificates found on this system for an https collector".into(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
