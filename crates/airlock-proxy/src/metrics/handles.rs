//! Handles resolved once per route and per plugin when a snapshot is built, so that the
//! per-request and per-call paths record with an atomic add and no label lookup. A handle
//! shares its counter with the family: two snapshots naming the same route count into the
//! same series.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use super::families::kind;
use super::global;
use super::labels::*;

/// Status codes whose counters a route keeps at hand once used, so that counting them
/// costs no label lookup (a lookup hashes the labels and takes the family's lock: about
/// 500 instructions, 1% of a handshake). Others are looked up.
const COMMON_CODES: [u16; 23] = [
    101, 200, 201, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 413, 429, 431,
    500, 502, 503, 504,
];
const CLOSED_BY: [&str; 3] = ["client", "upstream", "proxy"];
const CLOSE_REASONS: [&str; 11] = [
    "closed",
    "error",
    "idle_timeout",
    "half_close_timeout",
    "max_lifetime",
    "shutdown",
    "drain",
    "message_too_big",
    "message_rate",
    "protocol_error",
    "pong_timeout",
];

/// Counters of one family for label values known only when counting, each made (and its
/// series shown) on first use.
#[derive(Debug)]
struct LazyCounters<const N: usize>([OnceLock<Counter>; N]);

impl<const N: usize> Default for LazyCounters<N> {
    fn default() -> Self {
        Self(std::array::from_fn(|_| OnceLock::new()))
    }
}

impl<const N: usize> LazyCounters<N> {
    /// Count one in slot `index` (made by `make` the first time), or, with no slot, in
    /// the counter `make` finds.
    fn inc(&self, index: Option<usize>, make: impl FnOnce() -> Counter) {
        match index.and_then(|i| self.0.get(i)) {
            Some(slot) => slot.get_or_init(make).inc(),
            None => make().inc(),
        };
    }
}

/// One route's request and tunnel figures.
#[derive(Debug)]
pub struct RouteMetrics {
    name: Arc<str>,
    /// `airlock_requests_total` for the common codes: http ones, then upgrade ones.
    requests: LazyCounters<{ 2 * COMMON_CODES.len() }>,
    /// `airlock_tunnel_closes_total` by who closed and why.
    closes: LazyCounters<{ CLOSED_BY.len() * CLOSE_REASONS.len() }>,
    http_duration: Histogram,
    upgrade_duration: Histogram,
    tunnels_open: Gauge,
    tunnel_duration: Histogram,
    bytes_from_client: Counter,
    bytes_from_upstream: Counter,
    /// `airlock_websocket_messages_total` from the client and from the upstream, made on
    /// a frame-aware route's first tunnel close.
    messages: OnceLock<[Counter; 2]>,
}

impl RouteMetrics {
    pub fn new(route: &Arc<str>) -> Self {
        let m = global();
        let duration = |upgrade| {
            m.request_duration
                .get_or_create(&RouteKind {
                    route: route.into(),
                    kind: kind(upgrade),
                })
                .clone()
        };
        let bytes = |direction| {
            m.tunnel_bytes
                .get_or_create(&DirectionLabels {
                    route: route.into(),
                    direction,
                })
                .clone()
        };
        let label = RouteLabel {
            route: route.into(),
        };
        Self {
            name: route.clone(),
            requests: LazyCounters::default(),
            closes: LazyCounters::default(),
            http_duration: duration(false),
            upgrade_duration: duration(true),
            tunnels_open: m.tunnels_open.get_or_create(&label).clone(),
            tunnel_duration: m.tunnel_duration.get_or_create(&label).clone(),
            bytes_from_client: bytes("from_client"),
            bytes_from_upstream: bytes("from_upstream"),
            messages: OnceLock::new(),
        }
    }

    /// A request of this route answered after `took`.
    pub fn request(&self, upgrade: bool, code: u16, took: Duration) {
        let slot = COMMON_CODES
            .iter()
            .position(|c| *c == code)
            .map(|i| i + usize::from(upgrade) * COMMON_CODES.len());
        self.requests.inc(slot, || {
            global()
                .requests
                .get_or_create(&RequestLabels {
                    route: (&self.name).into(),
                    kind: kind(upgrade),
                    code: Code(code),
                })
                .clone()
        });
        let histogram = if upgrade {
            &self.upgrade_duration
        } else {
            &self.http_duration
        };
        histogram.observe(took.as_secs_f64());
    }

    /// A tunnel of this route opened; the guard counts it until dropped.
    pub fn tunnel_opened(&self) -> TunnelOpen {
        self.tunnels_open.inc();
        TunnelOpen(self.tunnels_open.clone())
    }

    /// A tunnel of this route closed.
    pub fn tunnel_closed(&self, close: TunnelClose) {
        self.tunnel_duration.observe(close.lived.as_secs_f64());
        self.bytes_from_client.inc_by(close.from_client);
        self.bytes_from_upstream.inc_by(close.from_upstream);
        if let Some(counts) = close.messages {
            let counters = self.messages.get_or_init(|| {
                ["from_client", "from_upstream"].map(|direction| {
                    global()
                        .websocket_messages
                        .get_or_create(&DirectionLabels {
                            route: (&self.name).into(),
                            direction,
                        })
                        .clone()
                })
            });
            counters[0].inc_by(counts.0);
            counters[1].inc_by(counts.1);
        }
        let by = CLOSED_BY.iter().position(|b| *b == close.closed_by);
        let reason = CLOSE_REASONS.iter().position(|r| *r == close.reason);
        let slot = by.zip(reason).map(|(b, r)| b * CLOSE_REASONS.len() + r);
        self.closes.inc(slot, || {
            global()
                .tunnel_closes
                .get_or_create(&CloseLabels {
                    route: (&self.name).into(),
                    closed_by: close.closed_by,
                    reason: close.reason,
                })
                .clone()
        });
    }
}

/// What a closed tunnel did.
pub struct TunnelClose {
    pub lived: Duration,
    pub from_client: u64,
    pub from_upstream: u64,
    pub closed_by: &'static str,
    pub reason: &'static str,
    /// WebSocket messages from the client and from the upstream, on a frame-aware route.
    pub messages: Option<(u64, u64)>,
}

/// An open tunnel in its route's `airlock_tunnels_open`; dropping it (however the tunnel
/// ends, a panic included) takes it out.
#[derive(Debug)]
pub struct TunnelOpen(Gauge);

impl Drop for TunnelOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One plugin's call figures.
#[derive(Debug, Clone)]
pub struct PluginMetrics {
    name: Arc<str>,
    allow: Counter,
    reject: Counter,
    error: Counter,
    duration: Histogram,
}

/// How one plugin call ended, for its metrics.
#[derive(Debug, Clone, Copy)]
pub enum CallResult {
    Allow,
    Reject,
    /// Failed, with the cause's name.
    Error(&'static str),
}

impl PluginMetrics {
    /// The plugin's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn new(plugin: &Arc<str>) -> Self {
        let m = global();
        let calls = |result| {
            m.plugin_calls
                .get_or_create(&PluginResult {
                    plugin: plugin.into(),
                    result,
                })
                .clone()
        };
        Self {
            name: plugin.clone(),
            allow: calls("allow"),
            reject: calls("reject"),
            error: calls("error"),
            duration: m
                .plugin_duration
                .get_or_create(&PluginLabel {
                    plugin: plugin.into(),
                })
                .clone(),
        }
    }

    pub fn call(&self, took: Duration, result: CallResult) {
        self.duration.observe(took.as_secs_f64());
        match result {
            CallResult::Allow => self.allow.inc(),
            CallResult::Reject => self.reject.inc(),
            CallResult::Error(cause) => {
                global()
                    .plugin_errors
                    .get_or_create(&PluginCause {
                        plugin: (&self.name).into(),
                        cause,
                    })
                    .inc();
                self.error.inc()
            }
        };
    }
}
