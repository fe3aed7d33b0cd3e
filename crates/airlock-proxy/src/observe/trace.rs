//! A request's trace: the spans its phases finish, sent to the `[telemetry]` collector
//! when the request is answered, and the context its upstream request and tunnel carry.
//!
//! ```text
//! GET chat                 server span: arrival → answer (the 101 for an upgrade)
//! ├─ plugin auth           one per plugin call: verdict, error cause
//! ├─ plugin tenant
//! ├─ GET                   client span: connect (failed attempts as events) → answer
//! └─ websocket tunnel      the 101 → close: bytes, messages, who closed and why
//! ```
//!
//! Each span is written as OTLP the moment it ends, into the request's buffer, which goes
//! to the exporter when the request is answered. Nothing is held for an open tunnel but
//! its ids (see [`TunnelTrace`]): its span is written and exported when it closes.
//! Without `[telemetry]` a request has no trace and none of this runs.

use std::sync::Arc;

use airlock_config::TrustTraceparent;
use airlock_plugins::chain::Step;
use airlock_telemetry::trace::{
    Clock, Head, Kind, SpanId, Spans, TraceId, Tracer, Value, context, unix_now,
};
use http::HeaderMap;
use http::header::HeaderValue;
use tokio::time::Instant;

use crate::conn::ConnCtx;
use crate::http::forwarded;
use crate::tunnel::Outcome;

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
static TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The trace of one request.
pub struct RequestTrace {
    tracer: Arc<Tracer>,
    pub trace_id: TraceId,
    /// The server span's id.
    pub span_id: SpanId,
    /// The client's span, when its trace is continued.
    parent: Option<SpanId>,
    tracestate: Option<Arc<str>>,
    /// The client span's id (drawn with the server span's); its `traceparent` names it
    /// whether or not the trace is sampled.
    upstream_span: SpanId,
    /// What a sampled trace records; `None` when it is not sampled (its context is
    /// passed on all the same).
    recording: Option<Box<Recording>>,
}

/// The spans of a sampled request, as its phases finish them.
struct Recording {
    clock: Clock,
    /// The client's address, as the listener trusts `X-Forwarded-For`.
    client: std::net::IpAddr,
    scheme: &'static str,
    protocol: &'static str,
    /// The spans ended so far (plugin calls), written.
    spans: Spans,
    upstream: Option<UpstreamTiming>,
}

/// The client span's start and its failed connects.
struct UpstreamTiming {
    started: Instant,
    failed: Vec<FailedConnect>,
}

struct FailedConnect {
    /// Unix nanoseconds.
    time: u64,
    server: String,
    error: String,
}

/// What a request's spans take, written: its server and client spans (about 700 bytes)
/// and a plugin span or two (150 each) without growing. (2 KiB costs the allocator four
/// times as much.)
const REQUEST_SPANS_BYTES: usize = 1024;

impl RequestTrace {
    /// The trace a request arriving on `conn` belongs to: the client's, when the listener
    /// trusts its `traceparent`, else a new one. It `started` a moment ago.
    pub fn start<B>(
        tracer: &Arc<Tracer>,
        req: &http::Request<B>,
        conn: &ConnCtx,
        started: Instant,
    ) -> Box<Self> {
        let headers = req.headers();
        let trusted = match tracer.trust() {
            TrustTraceparent::All => true,
            TrustTraceparent::None => false,
            TrustTraceparent::Trusted => conn.listener.trusted.contains(conn.peer.ip()),
        };
        let parent = trusted
            .then(|| headers.get(&TRACEPARENT))
            .flatten()
            .and_then(|v| context::parse_traceparent(v.as_bytes()));
        let (trace_id, parent, sampled_flag, tracestate) = match parent {
            Some((trace_id, span_id, sampled)) => {
                let state = headers
                    .get(&TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .map(Arc::from);
                (trace_id, Some(span_id), Some(sampled), state)
            }
            None => (TraceId::random(), None, None, None),
        };
        let recording = tracer.sampled(trace_id, sampled_flag).then(|| {
            Box::new(Recording {
                clock: Clock::at(started.into_std()),
                client: forwarded::client_ip(headers, conn.peer.ip(), &conn.listener.trusted),
                scheme: conn.scheme(),
                protocol: match req.version() {
                    http::Version::HTTP_2 => "2",
                    http::Version::HTTP_10 => "1.0",
                    _ => "1.1",
                },
                spans: Spans::with_capacity(REQUEST_SPANS_BYTES),
                upstream: None,
            })
        });
        let (span_id, upstream_span) = SpanId::random_pair();
        Box::new(Self {
            tracer: tracer.clone(),
            trace_id,
            span_id,
            parent,
            tracestate,
            upstream_span,
            recording,
        })
    }

    /// Whether spans are recorded (the context is passed on either way).
    pub fn sampled(&self) -> bool {
        self.recording.is_some()
    }

    /// A plugin call that just ended, `took` long.
    pub fn plugin_call(&mut self, plugin: &Arc<str>, took: std::time::Duration, step: &Step<'_>) {
        let Some(recording) = &mut self.recording else {
            return;
        };
        let end = Instant::now();
        let verdict = match step {
            Step::Allowed => "allow",
            Step::Rejected => "reject",
            Step::Failed(_) => "error",
        };
        let clock = recording.clock;
        let mut span = recording.spans.span(&Head {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent: Some(self.span_id),
            tracestate: self.tracestate.as_deref(),
            name: ("plugin", Some(plugin)),
            kind: Kind::Internal,
            start: clock.unix((end - took).into_std()),
            end: clock.unix(end.into_std()),
        });
        span.attr("airlock.plugin.name", plugin)
            .attr("airlock.plugin.verdict", verdict);
        if let Step::Failed(failure) = step {
            span.attr("error.type", failure.cause());
            span.error(&failure.to_string());
        }
    }

    /// The request to the upstream starts (before the first connect): with `propagate`,
    /// its `traceparent` names the client span, and `tracestate` is the client's or none.
    pub fn begin_upstream(&mut self, headers: &mut HeaderMap) {
        let span_id = self.upstream_span;
        if self.tracer.propagate() {
            let value = context::traceparent(self.trace_id, span_id, self.sampled());
            headers.insert(
                TRACEPARENT.clone(),
                HeaderValue::from_bytes(&value).expect("traceparent is visible ASCII"),
            );
            match self.tracestate.as_deref().map(HeaderValue::from_str) {
                Some(Ok(state)) => {
                    headers.insert(TRACESTATE.clone(), state);
                }
                _ => {
                    headers.remove(&TRACESTATE);
                }
            }
        }
        if let Some(recording) = &mut self.recording {
            recording.upstream = Some(UpstreamTiming {
                started: Instant::now(),
                failed: Vec::new(),
            });
        }
    }

    /// A connect to `server` that failed; the request goes on to the next server.
    pub fn connect_failed(&mut self, server: &str, error: &dyn std::fmt::Display) {
        let Some(recording) = &mut self.recording else {
            return;
        };
        let time = recording.clock.unix_now();
        let Some(upstream) = &mut recording.upstream else {
            return;
        };
        upstream.failed.push(FailedConnect {
            time,
            server: server.to_string(),
            error: error.to_string(),
        });
    }

    /// The ids a tunnel's span needs, when the trace is sampled.
    pub fn for_tunnel(&self) -> Option<Box<TunnelTrace>> {
        self.sampled().then(|| {
            Box::new(TunnelTrace {
                tracer: self.tracer.clone(),
                trace_id: self.trace_id,
                parent: self.span_id,
                tracestate: self.tracestate.clone(),
            })
        })
    }

    /// Finish the server span (and the client span, if the upstream was asked) and send
    /// them all to the exporter.
    pub fn finish(&mut self, facts: Facts<'_>) {
        let Some(mut recording) = self.recording.take() else {
            return;
        };
        let end = recording.clock.unix(facts.answered.into_std());
        if let Some(timing) = recording.upstream.take() {
            self.client_span(&mut recording, timing, self.upstream_span, &facts, end);
        }
        self.server_span(&mut recording, &facts, end);
        self.tracer.export(recording.spans);
    }

    fn server_span(&self, recording: &mut Recording, facts: &Facts<'_>, end: u64) {
        let status = facts.status;
        let method = facts.method.as_str();
        let name = (method, facts.route.map(|route| &**route));
        let start = recording.clock.unix(facts.started.into_std());
        let mut span = recording.spans.span(&Head {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            tracestate: self.tracestate.as_deref(),
            name,
            kind: Kind::Server,
            start,
            end,
        });
        span.attr("http.request.method", method)
            .attr("url.path", facts.path)
            .attr("url.scheme", recording.scheme)
            .attr("network.protocol.version", recording.protocol)
            .attr("client.address", recording.client)
            .attr("network.peer.address", facts.peer.ip())
            .attr("network.peer.port", facts.peer.port())
            .attr("http.response.status_code", status.as_u16())
            .attr("airlock.request.id", Value::Hex(facts.request_id.get()))
            .attr("airlock.upgrade", facts.upgrade);
        let optional = [
            ("airlock.route", facts.route),
            ("airlock.upstream", facts.upstream),
            ("airlock.upstream.server", facts.server),
            ("airlock.plugin", facts.plugin),
            ("airlock.limit", facts.limit),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                span.attr(key, value);
            }
        }
        if let Some((source, cause, _)) = facts.error {
            span.attr("error.type", *cause)
                .attr("airlock.error.source", *source);
        }
        // What plugins attached for the access log; keys and tokens they chose not to
        // show (affinity and limit keys) are never among them.
        for (key, value) in facts.plugin_attributes {
            span.attr_prefixed("airlock.plugin.attribute.", key, value.into());
        }
        // Server spans: only a 5xx is the server's error (semantic conventions).
        if status.is_server_error() {
            span.error(facts.error.map_or("", |e| &e.2));
        }
    }

    fn client_span(
        &self,
        recording: &mut Recording,
        timing: UpstreamTiming,
        span_id: SpanId,
        facts: &Facts<'_>,
        end: u64,
    ) {
        let method = facts.method.as_str();
        let start = recording.clock.unix(timing.started.into_std());
        let mut span = recording.spans.span(&Head {
            trace_id: self.trace_id,
            span_id,
            parent: Some(self.span_id),
            tracestate: self.tracestate.as_deref(),
            name: (method, None),
            kind: Kind::Client,
            start,
            end,
        });
        span.attr("http.request.method", method);
        if let Some(server) = facts.server {
            let (host, port) = server.rsplit_once(':').unwrap_or((server, ""));
            span.attr("server.address", host);
            if let Ok(port) = port.parse::<u16>() {
                span.attr("server.port", port);
            }
        }
        let failed = u32::try_from(timing.failed.len()).unwrap_or(u32::MAX);
        if failed > 0 {
            span.attr("http.request.resend_count", failed);
        }
        for connect in &timing.failed {
            span.event(
                "connect failed",
                connect.time,
                &[
                    ("server.address", connect.server.as_str().into()),
                    ("error.message", connect.error.as_str().into()),
                ],
            );
        }
        match facts.error {
            // The upstream failed: no answer to report.
            Some((source @ "upstream", cause, message)) => {
                span.attr("error.type", *cause)
                    .attr("airlock.error.source", *source);
                span.error(message);
            }
            _ => {
                span.attr("http.response.status_code", facts.status.as_u16());
                if facts.status.as_u16() >= 400 {
                    span.error("");
                }
            }
        }
    }
}

/// What the access log knows of a request when it is answered.
pub struct Facts<'a> {
    pub started: Instant,
    /// When the answer was ready (before the access-log line was written).
    pub answered: Instant,
    pub status: http::StatusCode,
    pub method: &'a http::Method,
    pub path: &'a str,
    pub peer: std::net::SocketAddr,
    pub request_id: crate::observe::RequestId,
    pub route: Option<&'a Arc<str>>,
    pub upstream: Option<&'a Arc<str>>,
    pub server: Option<&'a Arc<str>>,
    pub plugin: Option<&'a Arc<str>>,
    pub limit: Option<&'a Arc<str>>,
    pub upgrade: bool,
    pub error: Option<&'a (&'static str, &'static str, String)>,
    pub plugin_attributes: &'a [(String, String)],
}

/// What an open tunnel keeps for its span: the trace's ids (about 60 bytes, boxed; a
/// pointer's worth when the trace is not sampled). Its span is written when it closes.
pub struct TunnelTrace {
    tracer: Arc<Tracer>,
    trace_id: TraceId,
    /// The handshake's server span.
    parent: SpanId,
    tracestate: Option<Arc<str>>,
}

impl TunnelTrace {
    /// Export the closed tunnel's span; its trace's and its own id, for the access log.
    pub fn closed(
        &self,
        server: &Arc<str>,
        outcome: &Outcome,
        websocket: bool,
    ) -> (TraceId, SpanId) {
        let end = unix_now();
        let duration = u64::try_from(outcome.duration.as_nanos()).unwrap_or(u64::MAX);
        let span_id = SpanId::random();
        let mut spans = Spans::with_capacity(TUNNEL_SPAN_BYTES);
        let mut span = spans.span(&Head {
            trace_id: self.trace_id,
            span_id,
            parent: Some(self.parent),
            tracestate: self.tracestate.as_deref(),
            name: (
                if websocket {
                    "websocket tunnel"
                } else {
                    "tunnel"
                },
                None,
            ),
            kind: Kind::Internal,
            start: end.saturating_sub(duration),
            end,
        });
        span.attr("airlock.upstream.server", server)
            .attr(
                "airlock.tunnel.bytes_from_client",
                outcome.client_to_upstream,
            )
            .attr(
                "airlock.tunnel.bytes_from_upstream",
                outcome.upstream_to_client,
            )
            .attr("airlock.tunnel.closed_by", outcome.closed_by.as_str())
            .attr("airlock.tunnel.close_reason", outcome.reason.name());
        if let Some(code) = outcome.close_code {
            span.attr("airlock.tunnel.close_code", code);
        }
        if let Some(frames) = &outcome.frames {
            span.attr(
                "airlock.websocket.messages_from_client",
                frames.messages_from_client,
            )
            .attr(
                "airlock.websocket.messages_from_upstream",
                frames.messages_from_upstream,
            );
            if let Some(close) = &frames.peer_close {
                span.attr("airlock.websocket.peer_close.by", close.side.as_str())
                    .attr("airlock.websocket.peer_close.code", close.code);
            }
        }
        if let crate::tunnel::CloseReason::Error(_) = outcome.reason {
            span.error(&outcome.reason.to_string());
        }
        drop(span);
        self.tracer.export(spans);
        (self.trace_id, span_id)
    }
}

/// What a tunnel's span takes, written.
const TUNNEL_SPAN_BYTES: usize = 512;
