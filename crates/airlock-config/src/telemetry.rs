//! `[telemetry]`: OpenTelemetry traces, exported over OTLP/HTTP.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::units::Duration;

/// `[telemetry]` with an `otlp_endpoint`: every sampled request, handshake and tunnel
/// becomes a trace sent to that collector. Tracing is off (and costs nothing) without
/// this table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// Where spans go: an OTLP/HTTP (protobuf) endpoint, `http://` or `https://`. A URL
    /// without a path gets `/v1/traces`, as collectors serve it on port 4318.
    /// `otlp_endpoint = "http://127.0.0.1:4318"`
    pub otlp_endpoint: Spanned<String>,
    /// The `service.name` resource attribute. `service_name = "airlock-eu1"`
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// More resource attributes. `resource = { "deployment.environment.name" = "prod" }`
    #[serde(default)]
    pub resource: BTreeMap<String, String>,
    /// Which requests are traced: `"parent_based"` follows a continued trace's sampled
    /// flag and samples new traces at `sample_ratio`; `"ratio"` ignores the flag.
    #[serde(default)]
    pub sampler: Sampler,
    /// The share of new traces sampled, 0.0 to 1.0. `sample_ratio = 0.01`
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: Spanned<f64>,
    /// Headers sent with every export (a hosted collector's key). Never logged.
    /// `headers = { "x-api-key" = "..." }`
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<Secret>>,
    /// Send `traceparent` (and `tracestate`) to upstreams, continuing the trace.
    #[serde(default = "default_true")]
    pub propagate: bool,
    /// Whose `traceparent` is continued: `"trusted"` (peers in the listener's
    /// `trusted_proxies`), `"all"` or `"none"`. Other clients' trace context starts a
    /// new trace.
    #[serde(default)]
    pub trust_traceparent: TrustTraceparent,
    /// Spans waiting for export, at most; more are dropped and counted.
    /// `max_queue = 4096`
    #[serde(default = "default_max_queue")]
    pub max_queue: Spanned<u32>,
    /// How long one export may take; also how long shutdown waits for the last one.
    /// `export_timeout = "5s"`
    #[serde(default = "default_export_timeout")]
    pub export_timeout: Spanned<Duration>,
}

/// `sampler = "parent_based" | "ratio"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampler {
    /// A continued trace keeps its sampled flag; new traces are sampled at the ratio.
    #[default]
    ParentBased,
    /// Every trace is sampled at the ratio, continued or not.
    Ratio,
}

/// `trust_traceparent = "trusted" | "all" | "none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrustTraceparent {
    /// Continue the trace of peers in the listener's `trusted_proxies`.
    #[default]
    Trusted,
    /// Continue every client's trace.
    All,
    /// Start a new trace for every request.
    None,
}

/// A value that must never be printed (exporter credentials).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `max_queue` when unset.
pub const DEFAULT_MAX_QUEUE: u32 = 2048;
/// `export_timeout` when unset.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

fn default_service_name() -> String {
    "airlock".into()
}
fn default_sample_ratio() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}
fn default_true() -> bool {
    true
}
fn default_max_queue() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_MAX_QUEUE)
}
fn default_export_timeout() -> Spanned<Duration> {
    Spanned::new(0..0, DEFAULT_EXPORT_TIMEOUT)
}

/// The endpoint's scheme, `host[:port]` and path (`/v1/traces` when it has none), or
/// why it is not a usable URL.
pub fn split_endpoint(url: &str) -> Result<(bool, &str, &str), String> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err("must start with http:// or https:// (OTLP over HTTP)".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("needs a host, and no user name or password (use `headers`)".into());
    }
    if path.contains(['?', '#']) {
        return Err("must not have a query or fragment".into());
    }
    let path = if path.is_empty() || path == "/" {
        "/v1/traces"
    } else {
        path
    };
    Ok((https, authority, path))
}
