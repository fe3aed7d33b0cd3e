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
//! Nothing is held for an open tunnel but its ids (see [`TunnelTrace`]): its span is
//! built and exported when it closes. Without `[telemetry]` a request has no trace and
//! none of this runs.

use std::sync::Arc;

use airlock_config::TrustTraceparent;
use airlock_plugins::chain::Step;
use airlock_telemetry::trace::{
    Attributes, Clock, Event, Kind, SpanId, SpanName, SpanRecord, TraceId, Tracer, Value, context,
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
    /// The client span's id, once the upstream request has begun; its `traceparent`
    /// names it whether or not the trace is sampled.
    upstream_span: Option<SpanId>,
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
    /// Finished child spans (plugin calls).
    children: Vec<SpanRecord>,
    upstream: Option<UpstreamTiming>,
}

/// The client span's start and its failed connects.
struct UpstreamTiming {
    started: Instant,
    events: Vec<Event>,
    failed_attempts: u32,
}

impl RequestTrace {
    /// The trace a request arriving on `conn` belongs to: the client's, when the listener
    /// trusts its `traceparent`, else a new one.
    pub fn start<B>(tracer: &Arc<Tracer>, req: &http::Request<B>, conn: &ConnCtx) -> Box<Self> {
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
                clock: Clock::now(),
                client: forwarded::client_ip(headers, conn.peer.ip(), &conn.listener.trusted),
                scheme: conn.scheme(),
                protocol: match req.version() {
                    http::Version::HTTP_2 => "2",
                    http::Version::HTTP_10 => "1.0",
                    _ => "1.1",
                },
                children: Vec::new(),
                upstream: None,
            })
        });
        Box::new(Self {
            tracer: tracer.clone(),
            trace_id,
            span_id: SpanId::random(),
            parent,
            tracestate,
            upstream_span: None,
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
        let mut attributes: Attributes = vec![
            ("airlock.plugin.name".into(), plugin.clone().into()),
            ("airlock.plugin.verdict".into(), verdict.into()),
        ];
        let mut error = None;
        if let Step::Failed(failure) = step {
            attributes.push(("error.type".into(), failure.cause().into()));
            error = Some(failure.to_string());
        }
        let clock = recording.clock;
        recording.children.push(SpanRecord {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent: Some(self.span_id),
            tracestate: self.tracestate.clone(),
            name: SpanName::Pair("plugin", plugin.clone()),
            kind: Kind::Internal,
            start: clock.unix((end - took).into_std()),
            end: clock.unix(end.into_std()),
            attributes,
            events: Vec::new(),
            error,
        });
    }

    /// The request to the upstream starts (before the first connect): with `propagate`,
    /// its `traceparent` names the client span, and `tracestate` is the client's or none.
    pub fn begin_upstream(&mut self, headers: &mut HeaderMap) {
        let span_id = SpanId::random();
        self.upstream_span = Some(span_id);
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
                events: Vec::new(),
                failed_attempts: 0,
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
        upstream.failed_attempts += 1;
        upstream.events.push(Event {
            name: "connect failed".into(),
            time,
            attributes: vec![
                ("server.address".into(), server.to_string().into()),
                ("error.message".into(), error.to_string().into()),
            ],
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
        let mut spans = std::mem::take(&mut recording.children);
        spans.reserve(2);
        if let (Some(timing), Some(span_id)) = (recording.upstream.take(), self.upstream_span) {
            spans.push(self.client_span(&recording, timing, span_id, &facts, end));
        }
        spans.push(self.server_span(&recording, facts, end));
        self.tracer.export(spans);
    }

    fn server_span(&self, recording: &Recording, facts: Facts<'_>, end: u64) -> SpanRecord {
        let status = facts.status;
        let mut attributes: Attributes = Vec::with_capacity(20);
        attributes.extend([
            ("http.request.method".into(), method(facts.method)),
            ("url.path".into(), facts.path.into()),
            ("url.scheme".into(), recording.scheme.into()),
            ("network.protocol.version".into(), recording.protocol.into()),
            ("client.address".into(), recording.client.into()),
            ("network.peer.address".into(), facts.peer.ip().into()),
            ("network.peer.port".into(), facts.peer.port().into()),
            ("http.response.status_code".into(), status.as_u16().into()),
            (
                "airlock.request.id".into(),
                Value::Hex(facts.request_id.get()),
            ),
            ("airlock.upgrade".into(), facts.upgrade.into()),
        ]);
        let optional = [
            ("airlock.route", facts.route),
            ("airlock.upstream", facts.upstream),
            ("airlock.upstream.server", facts.server),
            ("airlock.plugin", facts.plugin),
            ("airlock.limit", facts.limit),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                attributes.push((key.into(), value.clone().into()));
            }
        }
        if let Some((source, cause, _)) = facts.error {
            attributes.push(("error.type".into(), (*cause).into()));
            attributes.push(("airlock.error.source".into(), (*source).into()));
        }
        // What plugins attached for the access log; keys and tokens they chose not to
        // show (affinity and limit keys) are never among them.
        for (key, value) in facts.plugin_attributes {
            attributes.push((
                format!("airlock.plugin.attribute.{key}").into(),
                value.clone().into(),
            ));
        }
        let name = match (facts.route, method_name(facts.method)) {
            (Some(route), Some(method)) => SpanName::Pair(method, route.clone()),
            (None, Some(method)) => SpanName::Static(method),
            (route, None) => SpanName::Owned(match route {
                Some(route) => format!("{} {route}", facts.method),
                None => facts.method.to_string(),
            }),
        };
        SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            tracestate: self.tracestate.clone(),
            name,
            kind: Kind::Server,
            start: recording.clock.unix(facts.started.into_std()),
            end,
            attributes,
            events: Vec::new(),
            // Server spans: only a 5xx is the server's error (semantic conventions).
            error: status
                .is_server_error()
                .then(|| facts.error.map(|e| e.2.clone()).unwrap_or_default()),
        }
    }

    fn client_span(
        &self,
        recording: &Recording,
        timing: UpstreamTiming,
        span_id: SpanId,
        facts: &Facts<'_>,
        end: u64,
    ) -> SpanRecord {
        let mut attributes: Attributes = Vec::with_capacity(6);
        attributes.push(("http.request.method".into(), method(facts.method)));
        let mut error = None;
        if let Some(server) = facts.server {
            let (host, port) = server.rsplit_once(':').unwrap_or((server, ""));
            attributes.push(("server.address".into(), host.to_string().into()));
            if let Ok(port) = port.parse::<u16>() {
                attributes.push(("server.port".into(), port.into()));
            }
        }
        match facts.error {
            // The upstream failed: no answer to report.
            Some((source @ "upstream", cause, message)) => {
                attributes.push(("error.type".into(), (*cause).into()));
                attributes.push(("airlock.error.source".into(), (*source).into()));
                error = Some(message.clone());
            }
            _ => {
                attributes.push((
                    "http.response.status_code".into(),
                    facts.status.as_u16().into(),
                ));
                if facts.status.as_u16() >= 400 {
                    error = Some(String::new());
                }
            }
        }
        if timing.failed_attempts > 0 {
            attributes.push((
                "http.request.resend_count".into(),
                i64::from(timing.failed_attempts).into(),
            ));
        }
        SpanRecord {
            trace_id: self.trace_id,
            span_id,
            parent: Some(self.span_id),
            tracestate: self.tracestate.clone(),
            name: match method_name(facts.method) {
                Some(method) => SpanName::Static(method),
                None => SpanName::Owned(facts.method.to_string()),
            },
            kind: Kind::Client,
            start: recording.clock.unix(timing.started.into_std()),
            end,
            attributes,
            events: timing.events,
            error,
        }
    }
}

/// A standard method's name, without an allocation.
fn method_name(method: &http::Method) -> Option<&'static str> {
    use http::Method as M;
    Some(match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::PATCH => "PATCH",
        M::CONNECT => "CONNECT",
        M::TRACE => "TRACE",
        _ => return None,
    })
}

fn method(method: &http::Method) -> Value {
    match method_name(method) {
        Some(name) => name.into(),
        None => method.to_string().into(),
    }
}

/// What the access log knows of a request when it is answered.
pub struct Facts<'a> {
    pub started: Instant,
    /// When the answer was ready (before the access-log line was written).
    pub answered: Instant,
    pub status: http::StatusCode,
    pub method: &'a http::Method,
    /// Moved into the span: the access log has written it already.
    pub path: String,
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
/// pointer's worth when the trace is not sampled). Its span is built when it closes.
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
        let clock = Clock::now();
        let end = clock.unix_now();
        let duration = u64::try_from(outcome.duration.as_nanos()).unwrap_or(u64::MAX);
        let mut attributes: Attributes = vec![
            ("airlock.upstream.server".into(), server.clone().into()),
            (
                "airlock.tunnel.bytes_from_client".into(),
                outcome.client_to_upstream.into(),
            ),
            (
                "airlock.tunnel.bytes_from_upstream".into(),
                outcome.upstream_to_client.into(),
            ),
            (
                "airlock.tunnel.closed_by".into(),
                outcome.closed_by.as_str().into(),
            ),
            (
                "airlock.tunnel.close_reason".into(),
                outcome.reason.name().into(),
            ),
        ];
        if let Some(code) = outcome.close_code {
            attributes.push(("airlock.tunnel.close_code".into(), code.into()));
        }
        if let Some(frames) = &outcome.frames {
            attributes.push((
                "airlock.websocket.messages_from_client".into(),
                frames.messages_from_client.into(),
            ));
            attributes.push((
                "airlock.websocket.messages_from_upstream".into(),
                frames.messages_from_upstream.into(),
            ));
            if let Some(close) = &frames.peer_close {
                attributes.push((
                    "airlock.websocket.peer_close.by".into(),
                    close.side.as_str().into(),
                ));
                attributes.push((
                    "airlock.websocket.peer_close.code".into(),
                    close.code.into(),
                ));
            }
        }
        let span_id = SpanId::random();
        self.tracer.export(vec![SpanRecord {
            trace_id: self.trace_id,
            span_id,
            parent: Some(self.parent),
            tracestate: self.tracestate.clone(),
            name: SpanName::Static(if websocket {
                "websocket tunnel"
            } else {
                "tunnel"
            }),
            kind: Kind::Internal,
            start: end.saturating_sub(duration),
            end,
            attributes,
            events: Vec::new(),
            error: matches!(outcome.reason, crate::tunnel::CloseReason::Error(_))
                .then(|| outcome.reason.to_string()),
        }]);
        (self.trace_id, span_id)
    }
}
