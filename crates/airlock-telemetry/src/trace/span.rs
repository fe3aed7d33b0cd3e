//! What a span is made of, as the request's phases describe it: its kind, its
//! attributes' values, and the clock that turns their instants into Unix time. The spans
//! themselves are written as OTLP the moment they finish ([`super::otlp::Spans`]).

use std::time::{Duration, Instant, SystemTime};

/// What a span stands for, as OpenTelemetry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Internal,
    Server,
    Client,
}

/// An attribute's value, borrowed for as long as it takes to write it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    /// An address, written out as text.
    Ip(std::net::IpAddr),
    /// A number shown in lower-case hex (a request id).
    Hex(u64),
    Int(i64),
    Bool(bool),
    Float(f64),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Self::Str(s)
    }
}
impl<'a> From<&'a String> for Value<'a> {
    fn from(s: &'a String) -> Self {
        Self::Str(s)
    }
}
impl<'a> From<&'a std::sync::Arc<str>> for Value<'a> {
    fn from(s: &'a std::sync::Arc<str>) -> Self {
        Self::Str(s)
    }
}
impl From<std::net::IpAddr> for Value<'_> {
    fn from(ip: std::net::IpAddr) -> Self {
        Self::Ip(ip)
    }
}
impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}
impl From<u64> for Value<'_> {
    fn from(n: u64) -> Self {
        Self::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<u16> for Value<'_> {
    fn from(n: u16) -> Self {
        Self::Int(n.into())
    }
}
impl From<u32> for Value<'_> {
    fn from(n: u32) -> Self {
        Self::Int(n.into())
    }
}
impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}
impl From<f64> for Value<'_> {
    fn from(f: f64) -> Self {
        Self::Float(f)
    }
}

/// Wall-clock times for monotonic instants: a request's start read once from both
/// clocks, so that its spans' times are consistent and cost no system call each.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    unix_nanos: u64,
    at: Instant,
}

impl Clock {
    /// The clock of a request that started at `instant`, a moment ago (the wall clock is
    /// read now: the difference is the sub-microsecond gap between the two).
    pub fn at(instant: Instant) -> Self {
        Self {
            unix_nanos: unix_now(),
            at: instant,
        }
    }

    /// `instant` as Unix nanoseconds.
    pub fn unix(&self, instant: Instant) -> u64 {
        match instant.checked_duration_since(self.at) {
            Some(after) => self.unix_nanos.saturating_add(nanos(after)),
            None => self
                .unix_nanos
                .saturating_sub(nanos(self.at.duration_since(instant))),
        }
    }

    /// Unix nanoseconds now.
    pub fn unix_now(&self) -> u64 {
        self.unix(Instant::now())
    }
}

/// Unix nanoseconds now, from the wall clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, nanos)
}

/// A duration in nanoseconds, without `as_nanos`' 128-bit arithmetic (until 2554).
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}
