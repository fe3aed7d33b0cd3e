//! Proxy errors, classified by where they came from, and the one place that maps them to
//! what the client sees.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// Who caused an error. Decides the status code and whether the log calls it our fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The request itself was unacceptable (no route, bad header).
    Client,
    /// The upstream could not be reached or misbehaved.
    Upstream,
    /// A plugin rejected the request or failed.
    Plugin,
    /// An admission limit refused the request.
    Limit,
    /// Something inside airlock failed.
    Internal,
}

impl ErrorSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Plugin => "plugin",
            Self::Limit => "limit",
            Self::Internal => "internal",
        }
    }
}

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches host {host:?} and path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("the WebSocket upgrade over HTTP/2 is not valid: {detail}")]
    BadExtendedConnect { detail: &'static str },
    #[error(
        "upstream server {server} accepted the WebSocket upgrade with a wrong Sec-WebSocket-Accept"
    )]
    BadUpstreamAccept { server: String },
    #[error("connecting to upstream server {server} failed")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with upstream server {server} failed")]
    UpstreamTls {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to upstream server {server} timed out after {timeout:?}")]
    ConnectTimeout { server: String, timeout: Duration },
    #[error("header {name} is not valid UTF-8; plugins on this route need UTF-8 header values")]
    BadHeaderEncoding { name: String },
    #[error("plugin `{plugin}` rejected the request with status {}", rejection.status)]
    PluginRejected {
        plugin: Arc<str>,
        rejection: airlock_plugins::Rejection,
    },
    #[error("plugin `{plugin}` failed")]
    PluginFailed {
        plugin: Arc<str>,
        #[source]
        source: airlock_plugins::CallError,
    },
    #[error("the plugin chain asked for an invalid change: {detail}")]
    PluginOutput { detail: String },
    #[error("limit `{limit}` refused the request: {reason}")]
    Limited {
        limit: Arc<str>,
        reason: &'static str,
        /// Set for a rate (429 with `Retry-After`); a count refuses with 503.
        retry_after: Option<Duration>,
    },
    #[error("the process has `max_connections` ({max}) client connections open")]
    OverCapacity { max: u32 },
    #[error("a plugin chose upstream `{name}`, which is not defined")]
    UnknownUpstream { name: String },
    #[error(
        "upstream `{pool}` has no server to try: every one is drained, or its names have not resolved"
    )]
    NoServer { pool: String },
    #[error(
        "upstream `{pool}`: every server it may try is at `max_conns`; waited {waited:?} (queue_timeout)"
    )]
    QueueTimeout { pool: String, waited: Duration },
    #[error("upstream server {server} failed before sending a response")]
    UpstreamRequest {
        server: String,
        #[source]
        source: hyper::Error,
    },
    #[error("upstream server {server} failed before sending a response")]
    UpstreamIo {
        server: String,
        #[source]
        source: std::io::Error,
    },
}

impl ProxyError {
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            Self::NoRoute { .. }
            | Self::BadHeaderEncoding { .. }
            | Self::BadExtendedConnect { .. } => ErrorSource::Client,
            Self::BadUpstreamAccept { .. } => ErrorSource::Upstream,
            Self::PluginRejected { .. } | Self::PluginFailed { .. } | Self::PluginOutput { .. } => {
                ErrorSource::Plugin
            }
            Self::Limited { .. } | Self::OverCapacity { .. } => ErrorSource::Limit,
            Self::UnknownUpstream { .. } => ErrorSource::Internal,
            Self::Connect { .. }
            | Self::UpstreamTls { .. }
            | Self::ConnectTimeout { .. }
            | Self::NoServer { .. }
            | Self::QueueTimeout { .. }
            | Self::UpstreamRequest { .. }
            | Self::UpstreamIo { .. } => ErrorSource::Upstream,
        }
    }

    /// A short name for what went wrong, for metrics (`airlock_request_errors_total`'s
    /// `cause` label).
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::BadExtendedConnect { .. } => "bad_extended_connect",
            Self::BadHeaderEncoding { .. } => "bad_header_encoding",
            Self::BadUpstreamAccept { .. } => "bad_upstream_accept",
            Self::Connect { .. } => "connect",
            Self::UpstreamTls { .. } => "upstream_tls",
            Self::ConnectTimeout { .. } => "connect_timeout",
            Self::PluginRejected { .. } => "plugin_rejected",
            Self::PluginFailed { .. } => "plugin_failed",
            Self::PluginOutput { .. } => "plugin_output",
            Self::Limited {
                retry_after: Some(_),
                ..
            } => "limit_rate",
            Self::Limited { .. } => "limit_capacity",
            Self::OverCapacity { .. } => "max_connections",
            Self::UnknownUpstream { .. } => "unknown_upstream",
            Self::NoServer { .. } => "no_server",
            Self::QueueTimeout { .. } => "queue_timeout",
            Self::UpstreamRequest { .. } | Self::UpstreamIo { .. } => "upstream_failed",
        }
    }

    /// The status the client gets for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute { .. } => StatusCode::NOT_FOUND,
            Self::BadHeaderEncoding { .. } | Self::BadExtendedConnect { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::BadUpstreamAccept { .. } => StatusCode::BAD_GATEWAY,
            Self::PluginRejected { rejection, .. } => {
                StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::FORBIDDEN)
            }
            Self::PluginFailed { .. } | Self::PluginOutput { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Limited {
                retry_after: Some(_),
                ..
            } => StatusCode::TOO_MANY_REQUESTS,
            Self::Limited { .. } | Self::OverCapacity { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnknownUpstream { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Connect { .. }
            | Self::UpstreamTls { .. }
            | Self::UpstreamRequest { .. }
            | Self::UpstreamIo { .. } => StatusCode::BAD_GATEWAY,
            Self::ConnectTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::NoServer { .. } | Self::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The limit that refused the request, if any.
    pub fn limit(&self) -> Option<Arc<str>> {
        match self {
            Self::Limited { limit, .. } => Some(limit.clone()),
            Self::OverCapacity { .. } => Some("max_connections".into()),
            _ => None,
        }
    }

    /// The plugin this error concerns, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            Self::PluginRejected { plugin, .. } | Self::PluginFailed { plugin, .. } => Some(plugin),
            _ => None,
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
