//! Every metric family airlock exposes, registered once, with the methods that record into
//! them. docs/operations.md lists them for users; keep the two in step.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::labels::*;

/// Seconds from a client's request to airlock's answer (the `101` for an upgrade).
const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// A tunnel's life, in seconds: reconnect loops at the bottom, trading days at the top.
const TUNNEL_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 86400.0,
];
/// One plugin call, in seconds: a warm call is a few microseconds; the default deadline
/// is 10ms.
const PLUGIN_BUCKETS: &[f64] = &[
    2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
];

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS.iter().copied())
}
fn tunnel_histogram() -> Histogram {
    Histogram::new(TUNNEL_BUCKETS.iter().copied())
}
fn plugin_histogram() -> Histogram {
    Histogram::new(PLUGIN_BUCKETS.iter().copied())
}

pub struct Metrics {
    pub(super) registry: Registry,
    pub(super) requests: Family<RequestLabels, Counter>,
    pub(super) request_duration: Histograms<RouteKind>,
    pub(super) request_errors: Family<ErrorLabels, Counter>,
    pub(super) tunnels_open: Family<RouteLabel, Gauge>,
    pub(super) tunnel_duration: Histograms<RouteLabel>,
    pub(super) tunnel_bytes: Family<DirectionLabels, Counter>,
    pub(super) websocket_messages: Family<DirectionLabels, Counter>,
    pub(super) tunnel_closes: Family<CloseLabels, Counter>,
    pub(super) plugin_calls: Family<PluginResult, Counter>,
    pub(super) plugin_errors: Family<PluginCause, Counter>,
    pub(super) plugin_duration: Histograms<PluginLabel>,
    limit_refusals: Family<LimitReason, Counter>,
    limit_keys: Family<LimitLabel, Gauge>,
    upstream_failures: Family<ServerLabels, Counter>,
    server_up: Family<ServerLabels, Gauge>,
    server_in_flight: Family<ServerLabels, Gauge>,
    server_tunnels: Family<ServerLabels, Gauge>,
    server_drained: Family<ServerLabels, Gauge>,
    connections_accepted: Family<ListenerLabel, Counter>,
    connections_open: Gauge,
    reloads: Family<ReloadResult, Counter>,
    generation: Gauge,
    spans_exported: Counter,
    spans_dropped: Family<DropReason, Counter>,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let mut registry = Registry::with_prefix("airlock");
        registry.register(
            "build",
            "airlock's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let metrics = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_histogram),
            request_errors: Family::default(),
            tunnels_open: Family::default(),
            tunnel_duration: Family::new_with_constructor(tunnel_histogram),
            tunnel_bytes: Family::default(),
            websocket_messages: Family::default(),
            tunnel_closes: Family::default(),
            plugin_calls: Family::default(),
            plugin_errors: Family::default(),
            plugin_duration: Family::new_with_constructor(plugin_histogram),
            limit_refusals: Family::default(),
            limit_keys: Family::default(),
            upstream_failures: Family::default(),
            server_up: Family::default(),
            server_in_flight: Family::default(),
            server_tunnels: Family::default(),
            server_drained: Family::default(),
            connections_accepted: Family::default(),
            connections_open: Gauge::default(),
            reloads: Family::default(),
            generation: Gauge::default(),
            spans_exported: Counter::default(),
            spans_dropped: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Requests and upgrade handshakes answered, by route (empty: none matched), kind (http, upgrade) and status code",
            metrics.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from a request's arrival to airlock's answer (for an upgrade, the 101)",
            Unit::Seconds,
            metrics.request_duration.clone(),
        );
        r.register(
            "request_errors",
            "Requests airlock answered itself, by route, source (client, upstream, plugin, limit, internal) and cause",
            metrics.request_errors.clone(),
        );
        r.register(
            "tunnels_open",
            "Tunnels open now, by route",
            metrics.tunnels_open.clone(),
        );
        r.register_with_unit(
            "tunnel_duration",
            "How long tunnels lived, counted when they close",
            Unit::Seconds,
            metrics.tunnel_duration.clone(),
        );
        r.register_with_unit(
            "tunnel",
            "Bytes relayed by tunnels, by direction, counted when each tunnel closes",
            Unit::Bytes,
            metrics.tunnel_bytes.clone(),
        );
        r.register(
            "websocket_messages",
            "WebSocket messages relayed on frame-aware routes, by direction, counted when \
             each tunnel closes",
            metrics.websocket_messages.clone(),
        );
        r.register(
            "tunnel_closes",
            "Tunnels closed, by who closed them (client, upstream, proxy) and why",
            metrics.tunnel_closes.clone(),
        );
        r.register(
            "plugin_calls",
            "Plugin calls, by plugin and result (allow, reject, error)",
            metrics.plugin_calls.clone(),
        );
        r.register(
            "plugin_errors",
            "Failed plugin calls, by cause (timeout, memory, trap, busy, instantiate, invalid_output)",
            metrics.plugin_errors.clone(),
        );
        r.register_with_unit(
            "plugin_call_duration",
            "Wall time of one plugin call",
            Unit::Seconds,
            metrics.plugin_duration.clone(),
        );
        r.register(
            "limit_refusals",
            "Requests a limit refused, by limit and reason (rate, concurrent, full, store)",
            metrics.limit_refusals.clone(),
        );
        r.register(
            "limit_tracked_keys",
            "Keys a limit tracks now (at most its max_keys)",
            metrics.limit_keys.clone(),
        );
        r.register(
            "upstream_failures",
            "Failures of an upstream server, as passive health counts them: connect refused or timed out, TLS failed, or the connection failed before a response",
            metrics.upstream_failures.clone(),
        );
        r.register(
            "upstream_server_up",
            "1 while a server is considered healthy (passive and active checks), else 0",
            metrics.server_up.clone(),
        );
        r.register(
            "upstream_server_in_flight",
            "Plain requests in flight to a server now",
            metrics.server_in_flight.clone(),
        );
        r.register(
            "upstream_server_tunnels",
            "Tunnels open to a server now",
            metrics.server_tunnels.clone(),
        );
        r.register(
            "upstream_server_drained",
            "1 while a server is drained through the admin API, else 0",
            metrics.server_drained.clone(),
        );
        r.register(
            "connections_accepted",
            "Client connections accepted, by listener",
            metrics.connections_accepted.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open now, on every listener",
            metrics.connections_open.clone(),
        );
        r.register(
            "config_reloads",
            "Reloads of the configuration, by result (ok, refused)",
            metrics.reloads.clone(),
        );
        r.register(
            "config_generation",
            "The running configuration's generation: 1 at start, one more per reload",
            metrics.generation.clone(),
        );
        r.register(
            "trace_spans_exported",
            "Spans the [telemetry] collector accepted",
            metrics.spans_exported.clone(),
        );
        r.register(
            "trace_spans_dropped",
            "Spans dropped by reason: queue_full (the export queue was full), export_failed (the collector refused, did not answer in time or could not be reached)",
            metrics.spans_dropped.clone(),
        );
        metrics.generation.set(1);
        Self {
            registry,
            ..metrics
        }
    }

    /// A request answered before any route took it (no route matched, or its head was
    /// refused); a route's requests are counted by [`super::RouteMetrics`].
    pub fn unrouted_request(&self, upgrade: bool, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route_name(None),
                kind: kind(upgrade),
                code: Code(code),
            })
            .inc();
    }

    /// A request airlock answered itself, and why.
    pub fn request_error(
        &self,
        route: Option<&Arc<str>>,
        source: &'static str,
        cause: &'static str,
    ) {
        self.request_errors
            .get_or_create(&ErrorLabels {
                route: route_name(route),
                source,
                cause,
            })
            .inc();
    }

    /// A request refused by `limit`.
    pub fn limit_refused(&self, limit: &Arc<str>, reason: &'static str) {
        self.limit_refusals
            .get_or_create(&LimitReason {
                limit: limit.into(),
                reason,
            })
            .inc();
    }

    /// `server` of `pool` failed (rare: the label is built here).
    pub fn upstream_failed(&self, pool: &str, server: &Arc<str>) {
        self.upstream_failures
            .get_or_create(&ServerLabels {
                pool: Name(pool.into()),
                server: server.into(),
            })
            .inc();
    }

    /// The counter of client connections accepted on `listener`, for its accept loop.
    pub fn accepted(&self, listener: &Arc<str>) -> Counter {
        self.connections_accepted
            .get_or_create(&ListenerLabel {
                listener: listener.into(),
            })
            .clone()
    }

    /// A request's time to its answer, when no route took it (the route's own histogram
    /// is in [`super::RouteMetrics`]).
    pub fn unrouted_duration(&self, upgrade: bool, took: Duration) {
        self.request_duration
            .get_or_create(&RouteKind {
                route: route_name(None),
                kind: kind(upgrade),
            })
            .observe(took.as_secs_f64());
    }

    /// A reload: whether it took effect, and the generation running after it.
    pub fn reloaded(&self, ok: bool, generation: u64) {
        let result = if ok { "ok" } else { "refused" };
        self.reloads.get_or_create(&ReloadResult { result }).inc();
        self.generation.set(generation as i64);
    }

    // Scrape-time figures: cleared and set again by each scrape, so that a server or limit
    // that is gone disappears.

    /// Forget the scrape-time figures of the last scrape.
    pub fn clear_state(&self) {
        self.limit_keys.clear();
        self.server_up.clear();
        self.server_in_flight.clear();
        self.server_tunnels.clear();
        self.server_drained.clear();
    }

    pub fn set_limit_keys(&self, limit: &Arc<str>, keys: usize) {
        self.limit_keys
            .get_or_create(&LimitLabel {
                limit: limit.into(),
            })
            .set(keys as i64);
    }

    pub fn set_server(&self, pool: &Arc<str>, server: &Arc<str>, state: ServerState) {
        let labels = ServerLabels {
            pool: pool.into(),
            server: server.into(),
        };
        self.server_up
            .get_or_create(&labels)
            .set(i64::from(state.up));
        self.server_in_flight
            .get_or_create(&labels)
            .set(state.in_flight as i64);
        self.server_tunnels
            .get_or_create(&labels)
            .set(state.tunnels as i64);
        self.server_drained
            .get_or_create(&labels)
            .set(i64::from(state.drained));
    }

    /// The exporter's counts (kept by `airlock-telemetry`, which knows nothing of this
    /// registry), copied in at each scrape.
    pub fn set_trace_stats(&self, stats: airlock_telemetry::trace::Stats) {
        self.spans_exported
            .inner()
            .store(stats.exported, Ordering::Relaxed);
        for (reason, n) in [
            ("queue_full", stats.dropped_queue_full),
            ("export_failed", stats.dropped_export_failed),
        ] {
            self.spans_dropped
                .get_or_create(&DropReason { reason })
                .inner()
                .store(n, Ordering::Relaxed);
        }
    }

    pub fn set_connections_open(&self, open: usize) {
        self.connections_open.set(open as i64);
    }
}

/// One upstream server as a scrape sees it.
pub struct ServerState {
    pub up: bool,
    pub drained: bool,
    pub in_flight: usize,
    pub tunnels: usize,
}

/// The route label of a request no route took: empty.
fn route_name(route: Option<&Arc<str>>) -> Name {
    static NONE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "".into());
    Name(route.unwrap_or(&NONE).clone())
}

pub(super) fn kind(upgrade: bool) -> &'static str {
    if upgrade { "upgrade" } else { "http" }
}
