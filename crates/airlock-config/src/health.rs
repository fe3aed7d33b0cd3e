//! `health_check = { ... }` of an upstream: active probes of every server.

use serde::Deserialize;

use crate::units::Duration;

/// `interval` when unset.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// `timeout` when unset.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// `rise` when unset: passing probes that bring a server back.
pub const DEFAULT_HEALTH_RISE: u32 = 2;
/// `fall` when unset: failing probes that take a server out.
pub const DEFAULT_HEALTH_FALL: u32 = 3;

/// `health_check = { path = "/healthz", interval = "5s", timeout = "1s", rise = 2, fall = 3 }`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `kind = "http"` (a GET whose status must pass) or `"websocket"` (a WebSocket
    /// handshake that must be answered `101`, then closed with a close frame).
    #[serde(default)]
    pub kind: ProbeKind,
    /// `path = "/healthz"`: the request target, query included.
    #[serde(default = "default_path")]
    pub path: String,
    /// `host = "backend.internal"`: the `Host` header; default the server's address.
    #[serde(default)]
    pub host: Option<String>,
    /// `interval = "5s"`: time between probes of one server (±10%, and the first one at a
    /// random point of the first interval, so instances do not probe in lockstep).
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// `timeout = "1s"`: a probe not answered within this fails.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// `rise = 2`: consecutive passing probes that bring a server back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// `fall = 3`: consecutive failing probes that take a server out.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// `expect_status = 200`: the status an `http` probe must get; default any 2xx or 3xx.
    #[serde(default)]
    pub expect_status: Option<u16>,
}

/// What a probe does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    #[default]
    Http,
    Websocket,
}

fn default_path() -> String {
    "/".into()
}
fn default_interval() -> Duration {
    DEFAULT_HEALTH_INTERVAL
}
fn default_timeout() -> Duration {
    DEFAULT_HEALTH_TIMEOUT
}
fn default_rise() -> u32 {
    DEFAULT_HEALTH_RISE
}
fn default_fall() -> u32 {
    DEFAULT_HEALTH_FALL
}
