//! Proxy errors, classified by where they came from, and the one place that maps them to
//! what the client sees.

use std::time::Duration;

use http::StatusCode;

/// Who caused an error. Decides the status code and whether the log calls it our fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The request itself was unacceptable (no route, bad header).
    Client,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// Something inside airlock failed.
    Internal,
}

impl ErrorSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
        }
    }
}

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("connecting to upstream server {server} failed")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to upstream server {server} timed out after {timeout:?}")]
    ConnectTimeout { server: String, timeout: Duration },
    #[error("upstream server {server} failed before sending a response")]
    UpstreamRequest {
        server: String,
        #[source]
        source: hyper::Error,
    },
}

impl ProxyError {
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            Self::NoRoute { .. } => ErrorSource::Client,
            Self::Connect { .. } | Self::ConnectTimeout { .. } | Self::UpstreamRequest { .. } => {
                ErrorSource::Upstream
            }
        }
    }

    /// Whether another server may be tried for the same request.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. })
    }

    /// The status the client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::Connect { .. } | Self::UpstreamRequest { .. } => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The server this error concerns, if any.
    pub fn server(&self) -> Option<&str> {
        match self {
            Self::NoRoute { .. } => None,
            Self::Connect { server, .. }
            | Self::ConnectTimeout { server, .. }
            | Self::UpstreamRequest { server, .. } => Some(server),
        }
    }
}

/// The full error chain on one line, for logs.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
