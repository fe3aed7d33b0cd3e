//! The access log: one line per request or handshake, one per tunnel close, at info level
//! under the `airlock::access` target. Query strings are never logged (they carry tokens).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use airlock_telemetry::trace::{SpanId, TraceId};

use crate::conn::ConnCtx;
use crate::observe::trace::{Facts, RequestTrace};
use crate::tunnel::Outcome;

pub const TARGET: &str = "airlock::access";

/// Facts about one request, filled in as its phases run.
pub struct RequestLog {
    started: Instant,
    pub request_id: crate::observe::RequestId,
    pub method: http::Method,
    pub path: String,
    pub client: SocketAddr,
    pub route: Option<std::sync::Arc<str>>,
    pub upstream: Option<std::sync::Arc<str>>,
    pub server: Option<std::sync::Arc<str>>,
    pub upgrade: bool,
    pub connect_time: Option<Duration>,
    pub header_time: Option<Duration>,
    /// For a failure: its source (`client`, `upstream`, ...), its cause's name (metrics)
    /// and the whole error chain (the log).
    pub error: Option<(&'static str, &'static str, String)>,
    /// The plugin that rejected or failed the request.
    pub plugin: Option<std::sync::Arc<str>>,
    pub plugin_time: Option<Duration>,
    /// The limit that refused the request (`[limit.NAME]`, or `max_connections`).
    pub limit: Option<std::sync::Arc<str>>,
    /// The route's metrics, once a route took the request.
    pub metrics: Option<std::sync::Arc<crate::metrics::RouteMetrics>>,
    /// Key-value pairs plugins attached.
    pub attributes: Vec<(String, String)>,
    /// The TLS version, on a TLS listener.
    pub tls_version: Option<&'static str>,
    /// The verified client certificate's subject (mutual TLS).
    pub client_subject: Option<String>,
    /// Its trace, with `[telemetry]`.
    pub trace: Option<Box<RequestTrace>>,
}

impl RequestLog {
    pub fn new(req: &http::Request<crate::http::body::ProxyBody>, conn: &ConnCtx) -> Self {
        let tls = conn.tls.as_ref();
        let started = Instant::now();
        Self {
            started,
            request_id: crate::observe::RequestId::next(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            client: conn.peer,
            route: None,
            upstream: None,
            server: None,
            upgrade: false,
            connect_time: None,
            header_time: None,
            error: None,
            plugin: None,
            plugin_time: None,
            limit: None,
            metrics: None,
            attributes: Vec::new(),
            tls_version: tls.map(|t| t.version),
            client_subject: tls
                .and_then(|t| t.client_cert.as_ref())
                .map(|c| c.subject.clone()),
            trace: conn
                .snapshot
                .telemetry
                .as_ref()
                .map(|tracer| RequestTrace::start(tracer, req, conn, started)),
        }
    }

    /// The request's access-log line, and its metrics.
    pub fn emit(&mut self, status: http::StatusCode) {
        let answered = Instant::now();
        self.count(status.as_u16());
        // An unsampled trace is in no collector: its ids are not worth a look-up.
        let trace = self.trace.take();
        let ids = trace
            .as_ref()
            .filter(|t| t.sampled())
            .map(|t| (t.trace_id, t.span_id));
        self.write_line(status, ids);
        if let Some(mut trace) = trace {
            trace.finish(self.facts(status, answered));
        }
    }

    fn write_line(&self, status: http::StatusCode, ids: Option<(TraceId, SpanId)>) {
        // Formatting the line costs more than checking whether anyone wants it.
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return;
        }
        let attributes = (!self.attributes.is_empty()).then(|| {
            self.attributes
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        });
        tracing::info!(
            target: TARGET,
            event = "request",
            request.id = %self.request_id,
            http.request.method = %self.method,
            url.path = %self.path,
            client.address = %self.client.ip(),
            route = self.route.as_deref(),
            upstream = self.upstream.as_deref(),
            upstream.server = self.server.as_deref(),
            upgrade = self.upgrade,
            http.response.status_code = status.as_u16(),
            connect_ms = self.connect_time.map(millis),
            upstream_header_ms = self.header_time.map(millis),
            duration_ms = millis(self.started.elapsed()),
            error.source = self.error.as_ref().map(|e| e.0),
            error.message = self.error.as_ref().map(|e| e.2.as_str()),
            limit = self.limit.as_deref(),
            plugin = self.plugin.as_deref(),
            plugins_us = self.plugin_time.map(|d| d.as_nanos() as f64 / 1000.0),
            plugin.attributes = attributes,
            tls.version = self.tls_version,
            tls.client.subject = self.client_subject.as_deref(),
            trace_id = ids.map(|i| tracing::field::display(i.0)),
            span_id = ids.map(|i| tracing::field::display(i.1)),
        );
    }

    /// What the trace's spans say.
    fn facts(&self, status: http::StatusCode, answered: Instant) -> Facts<'_> {
        Facts {
            started: self.started,
            answered,
            status,
            method: &self.method,
            path: &self.path,
            peer: self.client,
            request_id: self.request_id,
            route: self.route.as_ref(),
            upstream: self.upstream.as_ref(),
            server: self.server.as_ref(),
            plugin: self.plugin.as_ref(),
            limit: self.limit.as_ref(),
            upgrade: self.upgrade,
            error: self.error.as_ref(),
            plugin_attributes: &self.attributes,
        }
    }
}

impl RequestLog {
    fn count(&self, code: u16) {
        let took = self.started.elapsed();
        match &self.metrics {
            Some(route) => route.request(self.upgrade, code, took),
            None => {
                let metrics = crate::metrics::global();
                metrics.unrouted_request(self.upgrade, code);
                metrics.unrouted_duration(self.upgrade, took);
            }
        }
        if let Some((source, cause, _)) = &self.error {
            crate::metrics::global().request_error(self.route.as_ref(), source, cause);
        }
    }
}

/// Milliseconds to the microsecond: `0.188`, not `0.18761799999999998`.
fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Facts about a tunnel, logged when it closes, with its span's ids when it has one.
pub fn tunnel_closed(
    route: &str,
    server: &str,
    client: SocketAddr,
    outcome: &Outcome,
    trace: Option<(TraceId, SpanId)>,
) {
    let frames = outcome.frames.as_ref();
    let peer_close = frames.and_then(|f| f.peer_close.as_ref());
    tracing::info!(
        target: TARGET,
        event = "tunnel_close",
        route,
        upstream.server = server,
        client.address = %client.ip(),
        duration_ms = millis(outcome.duration),
        bytes_from_client = outcome.client_to_upstream,
        bytes_from_upstream = outcome.upstream_to_client,
        closed_by = outcome.closed_by.as_str(),
        reason = %outcome.reason,
        close_code = outcome.close_code,
        messages_from_client = frames.map(|f| f.messages_from_client),
        messages_from_upstream = frames.map(|f| f.messages_from_upstream),
        largest_message_from_client = frames.map(|f| f.largest_from_client),
        largest_message_from_upstream = frames.map(|f| f.largest_from_upstream),
        peer_close.by = peer_close.map(|c| c.side.as_str()),
        peer_close.code = peer_close.map(|c| c.code),
        peer_close.reason = peer_close.map(|c| c.reason.as_str()),
        trace_id = trace.map(|t| tracing::field::display(t.0)),
        span_id = trace.map(|t| tracing::field::display(t.1)),
    );
}

/// A request that never reached a handler: its head was malformed, too large or too slow.
pub fn rejected_head(client: SocketAddr, status: http::StatusCode, reason: &dyn std::fmt::Display) {
    let metrics = crate::metrics::global();
    metrics.unrouted_request(false, status.as_u16());
    let cause = match status {
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "head_too_large",
        http::StatusCode::REQUEST_TIMEOUT => "head_timeout",
        _ => "malformed",
    };
    metrics.request_error(None, "client", cause);
    tracing::info!(
        target: TARGET,
        event = "request",
        client.address = %client.ip(),
        http.response.status_code = status.as_u16(),
        error.source = "client",
        error.message = %reason,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_are_logged_to_the_microsecond() {
        assert_eq!(
            millis(Duration::from_nanos(187_618_000)).to_string(),
            "187.618"
        );
        assert_eq!(millis(Duration::from_nanos(187_618)).to_string(), "0.187");
        assert_eq!(millis(Duration::from_secs(2)).to_string(), "2000");
    }
}
