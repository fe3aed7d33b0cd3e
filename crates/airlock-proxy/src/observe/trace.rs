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

use std::borrow::Cow;
use std::sync::Arc;

use airlock_config::TrustTraceparent;
use airlock_telemetry::trace::{
    Attributes, Clock, Event, Kind, SpanId, SpanRecord, TraceId, Tracer, Value, context,
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
    /// Whether spans are recorded; the context is passed on either way.
    pub sampled: bool,
    clock: Clock,
    /// The client's address, as the listener trusts `X-Forwarded-For`.
    client: std::net::IpAddr,
    scheme: &'static str,
    protocol: &'static str,
    /// Finished child spans (plugin calls).
    children: Vec<SpanRecord>,
    upstream: Option<UpstreamSpan>,
}

/// The span of the request to the upstream, from the first connect.
struct UpstreamSpan {
    span_id: SpanId,
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
        Box::new(Self {
            sampled: tracer.sampled(trace_id, sampled_flag),
            tracer: tracer.clone(),
            trace_id,
            span_id: SpanId::random(),
            parent,
            tracestate,
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
    }

    /// A plugin call that just ended, `took` long.
    pub fn plugin_call(&mut self, plugin: &Arc<str>, took: std::time::Duration, step: &Step<'_>) {
        if !self.sampled {
            return;
        }
        let end = Instant::now();
        let mut attributes: Attributes = vec![
            ("airlock.plugin.name".into(), plugin.clone().into()),
            ("airlock.plugin.verdict".into(), step.verdict().into()),
        ];
        let mut error = None;
        if let Step::Failed { cause, message } = step {
            attributes.push(("error.type".into(), (*cause).into()));
            error = Some(message.to_string());
        }
        self.children.push(SpanRecord {
            trace_id: self.trace_id,
            span_id: SpanId::random(),
            parent: Some(self.span_id),
            tracestate: self.tracestate.clone(),
            name: format!("plugin {plugin}").into(),
            kind: Kind::Internal,
            start: self.clock.unix((end - took).into_std()),
            end: self.clock.unix(end.into_std()),
            attributes,
            events: Vec::new(),
            error,
        });
    }

    /// The request to the upstream starts (before the first connect): with `propagate`,
    /// its `traceparent` names the client span, and `tracestate` is the client's or none.
    pub fn begin_upstream(&mut self, headers: &mut HeaderMap) {
        let span_id = SpanId::random();
        if self.tracer.propagate() {
            let value = context::traceparent(self.trace_id, span_id, self.sampled);
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
        self.upstream = Some(UpstreamSpan {
            span_id,
            started: Instant::now(),
            events: Vec::new(),
            failed_attempts: 0,
        });
    }

    /// A connect to `server` that failed; the request goes on to the next server.
    pub fn connect_failed(&mut self, server: &str, error: &dyn std::fmt::Display) {
        let Some(upstream) = &mut self.upstream else {
            return;
        };
        upstream.failed_attempts += 1;
        if self.sampled {
            upstream.events.push(Event {
                name: "connect failed".into(),
                time: self.clock.unix_now(),
                attributes: vec![
                    ("server.address".into(), server.to_string().into()),
                    ("error.message".into(), error.to_string().into()),
                ],
            });
        }
    }

    /// The ids a tunnel's span needs, when the trace is sampled.
    pub fn for_tunnel(&self) -> Option<Box<TunnelTrace>> {
        self.sampled.then(|| {
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
    pub fn finish(mut self: Box<Self>, facts: &Facts<'_>) {
        if !self.sampled {
            return;
        }
        let now = Instant::now();
        let end = self.clock.unix(now.into_std());
        let mut spans = std::mem::take(&mut self.children);
        if let Some(upstream) = self.upstream.take() {
            spans.push(self.client_span(upstream, facts, end));
        }
        spans.push(self.server_span(facts, end));
        self.tracer.export(spans);
    }

    fn server_span(&self, facts: &Facts<'_>, end: u64) -> SpanRecord {
        let status = facts.status;
        let mut attributes: Attributes = vec![
            (
                "http.request.method".into(),
                Value::from(facts.method.to_string()),
            ),
            ("url.path".into(), facts.path.to_string().into()),
            ("url.scheme".into(), self.scheme.into()),
            ("network.protocol.version".into(), self.protocol.into()),
            ("client.address".into(), self.client.to_string().into()),
            (
                "network.peer.address".into(),
                facts.peer.ip().to_string().into(),
            ),
            ("network.peer.port".into(), facts.peer.port().into()),
            ("http.response.status_code".into(), status.as_u16().into()),
            (
                "airlock.request.id".into(),
                facts.request_id.to_string().into(),
            ),
        ];
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
        attributes.push(("airlock.upgrade".into(), facts.upgrade.into()));
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
        SpanRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            tracestate: self.tracestate.clone(),
            name: match facts.route {
                Some(route) => format!("{} {route}", facts.method).into(),
                None => Cow::Owned(facts.method.to_string()),
            },
            kind: Kind::Server,
            start: self.clock.unix(facts.started.into_std()),
            end,
            attributes,
            events: Vec::new(),
            // Server spans: only a 5xx is the server's error (semantic conventions).
            error: status
                .is_server_error()
                .then(|| facts.error.map(|e| e.2.clone()).unwrap_or_default()),
        }
    }

    fn client_span(&self, upstream: UpstreamSpan, facts: &Facts<'_>, end: u64) -> SpanRecord {
        let mut attributes: Attributes = vec![(
            "http.request.method".into(),
            Value::from(facts.method.to_string()),
        )];
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
        if upstream.failed_attempts > 0 {
            attributes.push((
                "http.request.resend_count".into(),
                i64::from(upstream.failed_attempts).into(),
            ));
        }
        SpanRecord {
            trace_id: self.trace_id,
            span_id: upstream.span_id,
            parent: Some(self.span_id),
            tracestate: self.tracestate.clone(),
            name: Cow::Owned(facts.method.to_string()),
            kind: Kind::Client,
            start: self.clock.unix(upstream.started.into_std()),
            end,
            attributes,
            events: upstream.events,
            error,
        }
    }
}

/// How a plugin call ended, as its span says it.
pub enum Step<'a> {
    Allowed,
    Rejected,
    Failed {
        cause: &'static str,
        message: &'a dyn std::fmt::Display,
    },
}

impl Step<'_> {
    fn verdict(&self) -> &'static str {
        match self {
            Self::Allowed => "allow",
            Self::Rejected => "reject",
            Self::Failed { .. } => "error",
        }
    }
}

/// What the access log knows of a request when it is answered.
pub struct Facts<'a> {
    pub started: Instant,
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
/// pointer's worth when the trace is not sampled). Its span is built when it closes.
pub struct TunnelTrace {
    tracer: Arc<Tracer>,
    trace_id: TraceId,
    /// The handshake's server span.
    parent: SpanId,
    tracestate: Option<Arc<str>>,
}

impl TunnelTrace {
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// Export the closed tunnel's span; its id, for the access log.
    pub fn closed(&self, server: &Arc<str>, outcome: &Outcome, websocket: bool) -> SpanId {
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
            name: if websocket {
                "websocket tunnel"
            } else {
                "tunnel"
            }
            .into(),
            kind: Kind::Internal,
            start: end.saturating_sub(duration),
            end,
            attributes,
            events: Vec::new(),
            error: matches!(outcome.reason, crate::tunnel::CloseReason::Error(_))
                .then(|| outcome.reason.to_string()),
        }]);
        span_id
    }
}
