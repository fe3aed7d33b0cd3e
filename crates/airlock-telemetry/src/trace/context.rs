//! Trace and span ids, and the W3C Trace Context headers that carry them
//! (`traceparent`, `tracestate`; <https://www.w3.org/TR/trace-context/>).

use std::num::{NonZeroU64, NonZeroU128};

/// A trace's id: 16 random bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// A span's id: 8 random bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    pub fn random() -> Self {
        Self(rand::random::<NonZeroU128>().get().to_be_bytes())
    }

    /// The lower 8 bytes as a number: what ratio sampling compares, so that every
    /// service sampling at the same ratio keeps the same traces.
    pub fn low_u64(self) -> u64 {
        u64::from_be_bytes(self.0[8..].try_into().expect("8 bytes"))
    }
}

impl SpanId {
    pub fn random() -> Self {
        Self(rand::random::<NonZeroU64>().get().to_be_bytes())
    }

    /// Two ids from one draw (a request's server and client spans).
    pub fn random_pair() -> (Self, Self) {
        loop {
            let bits = rand::random::<u128>();
            let (high, low) = ((bits >> 64) as u64, bits as u64);
            if high != 0 && low != 0 {
                return (Self(high.to_be_bytes()), Self(low.to_be_bytes()));
            }
        }
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(hex(&self.0, &mut [0; 32]))
    }
}

impl std::fmt::Display for SpanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(hex(&self.0, &mut [0; 16]))
    }
}

/// A trace context received from a client: whose trace to continue, under which span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    /// The `tracestate` that came with it, passed on unchanged.
    pub tracestate: Option<String>,
}

/// Parse a `traceparent` value. `None` for anything malformed, as the specification
/// asks: the request then starts a new trace. A higher version is read as version 00
/// when its first four fields are well formed.
pub fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, bool)> {
    // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55.
    if value.len() < 55 {
        return None;
    }
    let version = unhex::<1>(&value[0..2])?[0];
    if version == 0xff
        || (version == 0 && value.len() != 55)
        || (value.len() > 55 && value[55] != b'-')
    {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = unhex::<16>(&value[3..35])?;
    let span_id = unhex::<8>(&value[36..52])?;
    let flags = unhex::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((TraceId(trace_id), SpanId(span_id), flags & 1 == 1))
}

/// The `traceparent` value for a span of `trace_id`.
pub fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> [u8; 55] {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    hex_into(&trace_id.0, &mut out[3..35]);
    hex_into(&span_id.0, &mut out[36..52]);
    if sampled {
        out[54] = b'1';
    }
    out
}

/// Lower-case hex digits of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

/// Lower-case hex digits of `bytes`, written into `buf` (twice as long).
fn hex<'a>(bytes: &[u8], buf: &'a mut [u8]) -> &'a str {
    hex_into(bytes, buf);
    std::str::from_utf8(&buf[..2 * bytes.len()]).expect("hex digits are ASCII")
}

/// Lower-case hex only: the specification forbids upper case.
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_parses_and_formats_back() {
        let (trace, span, sampled) = parse_traceparent(EXAMPLE).unwrap();
        assert_eq!(trace.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.to_string(), "00f067aa0ba902b7");
        assert!(sampled);
        assert_eq!(&traceparent(trace, span, true)[..], EXAMPLE);
        assert_eq!(&traceparent(trace, span, false)[53..], b"00");
    }

    #[test]
    fn paired_ids_differ() {
        for _ in 0..1000 {
            let (a, b) = SpanId::random_pair();
            assert!(a != b && a.0 != [0; 8] && b.0 != [0; 8]);
        }
    }

    #[test]
    fn malformed_values_start_a_new_trace() {
        let bad: &[&[u8]] = &[
            b"",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bx-01",
        ];
        for value in bad {
            assert_eq!(
                parse_traceparent(value),
                None,
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_zero() {
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-more";
        let (_, _, sampled) = parse_traceparent(later).unwrap();
        assert!(!sampled);
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00x")
                .is_none()
        );
    }

    #[test]
    fn random_ids_are_never_zero_and_differ() {
        let a = TraceId::random();
        assert_ne!(a.0, [0; 16]);
        assert_ne!(a, TraceId::random());
        assert_ne!(SpanId::random().0, [0; 8]);
    }
}
