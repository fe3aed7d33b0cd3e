//! A finished span as airlock records it: plain data, built by the request's phases and
//! turned into OTLP only on the exporter's thread.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::context::{SpanId, TraceId};

/// What a span stands for, as OpenTelemetry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal,
    Server,
    Client,
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Cow<'static, str>),
    Shared(Arc<str>),
    /// An address, written out only when exported.
    Ip(std::net::IpAddr),
    /// A number shown in lower-case hex (a request id), written out only when exported.
    Hex(u64),
    Int(i64),
    Bool(bool),
    Float(f64),
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Self::Str(Cow::Borrowed(s))
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Str(Cow::Owned(s))
    }
}
impl From<Arc<str>> for Value {
    fn from(s: Arc<str>) -> Self {
        Self::Shared(s)
    }
}
impl From<std::net::IpAddr> for Value {
    fn from(ip: std::net::IpAddr) -> Self {
        Self::Ip(ip)
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Self::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<u16> for Value {
    fn from(n: u16) -> Self {
        Self::Int(n.into())
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Self::Float(f)
    }
}

pub type Attributes = Vec<(Cow<'static, str>, Value)>;

/// A span's name, kept in parts so that making one costs no formatting on the request's
/// thread: `Pair("GET", route)` is exported as `GET chat`.
#[derive(Debug, Clone, PartialEq)]
pub enum SpanName {
    Static(&'static str),
    Pair(&'static str, Arc<str>),
    Owned(String),
}

impl SpanName {
    /// The name's length and its parts (the second after a space).
    pub fn parts(&self) -> (&str, Option<&str>) {
        match self {
            Self::Static(s) => (s, None),
            Self::Pair(a, b) => (a, Some(b)),
            Self::Owned(s) => (s, None),
        }
    }
}

impl std::fmt::Display for SpanName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.parts() {
            (a, None) => f.write_str(a),
            (a, Some(b)) => write!(f, "{a} {b}"),
        }
    }
}

/// Something that happened at one moment of a span.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: Cow<'static, str>,
    /// Unix time, nanoseconds.
    pub time: u64,
    pub attributes: Attributes,
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    /// The `tracestate` of the trace this span continues.
    pub tracestate: Option<Arc<str>>,
    pub name: SpanName,
    pub kind: Kind,
    /// Unix time, nanoseconds.
    pub start: u64,
    pub end: u64,
    pub attributes: Attributes,
    pub events: Vec<Event>,
    /// `Some` sets the span's status to error, with this message.
    pub error: Option<String>,
}

/// Wall-clock times for monotonic instants: a request's start read once from both
/// clocks, so that its spans' times are consistent and cost no system call each.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    unix_nanos: u64,
    at: Instant,
}

impl Clock {
    pub fn now() -> Self {
        let unix_nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            unix_nanos,
            at: Instant::now(),
        }
    }

    /// `instant` as Unix nanoseconds.
    pub fn unix(&self, instant: Instant) -> u64 {
        match instant.checked_duration_since(self.at) {
            Some(after) => self.unix_nanos + after.as_nanos() as u64,
            None => self
                .unix_nanos
                .saturating_sub(self.at.duration_since(instant).as_nanos() as u64),
        }
    }

    /// Unix nanoseconds now.
    pub fn unix_now(&self) -> u64 {
        self.unix(Instant::now())
    }
}
