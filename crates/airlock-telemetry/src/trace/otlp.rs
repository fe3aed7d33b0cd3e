//! Spans as an OTLP `ExportTraceServiceRequest` in protobuf.
//!
//! The parts that never change (the resource, the instrumentation scope) are built once
//! with the OpenTelemetry project's generated types (`opentelemetry-proto`). The spans
//! are written straight from airlock's records, in one pass: building the generated
//! structs for every span (a `String` per attribute key and value) and letting prost size
//! the nested messages cost about 29,000 instructions per traced WebSocket handshake (its
//! three spans), more than half of what the handshake itself costs; this costs about
//! 7,000 (`docs/benchmarks.md#tracing`). The tests decode the
//! result with the generated types, and the e2e tests with the Python package.

use std::fmt::Write as _;

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use prost::encoding::{WireType, encoded_len_varint};

use super::span::{Attributes, Kind, SpanRecord, Value};

/// The semantic conventions airlock's attribute names follow.
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";

/// Encodes batches for one resource.
pub struct Encoder {
    /// The encoded `Resource` and `InstrumentationScope` messages.
    resource: Vec<u8>,
    scope: Vec<u8>,
    /// The spans of the batch being encoded, and of one span: kept between batches so
    /// that a warm exporter does not grow a buffer per batch.
    spans: Vec<u8>,
    scratch: Vec<u8>,
    text: String,
}

impl Encoder {
    pub fn new(service_name: &str, extra: &[(String, String)]) -> Self {
        let string = |s: &str| AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        };
        let key_value = |key: &str, value: &str| KeyValue {
            key: key.into(),
            value: Some(string(value)),
            ..Default::default()
        };
        let mut attributes = vec![
            key_value("service.name", service_name),
            key_value("telemetry.sdk.name", "airlock"),
            key_value("telemetry.sdk.language", "rust"),
            key_value("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        ];
        for (key, value) in extra {
            attributes.retain(|kv| &kv.key != key);
            attributes.push(key_value(key, value));
        }
        let resource = Resource {
            attributes,
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "airlock".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        Self {
            resource: resource.encode_to_vec(),
            scope: scope.encode_to_vec(),
            spans: Vec::new(),
            scratch: Vec::with_capacity(1024),
            text: String::new(),
        }
    }

    /// The request body for one batch.
    pub fn encode(&mut self, spans: &[SpanRecord]) -> Vec<u8> {
        // ScopeSpans { scope = 1, spans = 2 (each), schema_url = 3 }
        let scope_spans = &mut self.spans;
        scope_spans.clear();
        message(scope_spans, 1, &self.scope);
        for record in spans {
            self.scratch.clear();
            span(&mut self.scratch, &mut self.text, record);
            message(scope_spans, 2, &self.scratch);
        }
        string(scope_spans, 3, SCHEMA_URL);
        let scope_spans = &self.spans;
        // ResourceSpans { resource = 1, scope_spans = 2, schema_url = 3 } inside
        // ExportTraceServiceRequest { resource_spans = 1 }: the headers are written
        // around the spans, which are copied once.
        let field_len = |len: usize| 1 + encoded_len_varint(len as u64) + len;
        let resource_spans_len = field_len(self.resource.len())
            + field_len(scope_spans.len())
            + field_len(SCHEMA_URL.len());
        let mut request = Vec::with_capacity(field_len(resource_spans_len));
        encode_key(1, WireType::LengthDelimited, &mut request);
        encode_varint(resource_spans_len as u64, &mut request);
        message(&mut request, 1, &self.resource);
        message(&mut request, 2, scope_spans);
        string(&mut request, 3, SCHEMA_URL);
        request
    }
}

/// One `Span` message's fields (opentelemetry/proto/trace/v1/trace.proto).
fn span(out: &mut Vec<u8>, text: &mut String, record: &SpanRecord) {
    bytes(out, 1, &record.trace_id.0);
    bytes(out, 2, &record.span_id.0);
    if let Some(state) = &record.tracestate {
        string(out, 3, state);
    }
    if let Some(parent) = record.parent {
        bytes(out, 4, &parent.0);
    }
    match record.name.parts() {
        (name, None) => string(out, 5, name),
        (first, Some(second)) => {
            encode_key(5, WireType::LengthDelimited, out);
            encode_varint((first.len() + 1 + second.len()) as u64, out);
            out.extend_from_slice(first.as_bytes());
            out.push(b' ');
            out.extend_from_slice(second.as_bytes());
        }
    }
    let kind = match record.kind {
        Kind::Internal => 1,
        Kind::Server => 2,
        Kind::Client => 3,
    };
    encode_key(6, WireType::Varint, out);
    encode_varint(kind, out);
    fixed64(out, 7, record.start);
    fixed64(out, 8, record.end);
    attributes(out, text, 9, &record.attributes);
    for event in &record.events {
        // Event { time_unix_nano = 1, name = 2, attributes = 3 }
        let mut body = Vec::with_capacity(128);
        fixed64(&mut body, 1, event.time);
        string(&mut body, 2, &event.name);
        attributes(&mut body, text, 3, &event.attributes);
        message(out, 11, &body);
    }
    if let Some(error) = &record.error {
        // Status { message = 2, code = 3 (2: error) }
        let len = string_len(2, error) + 2;
        encode_key(15, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
        string(out, 2, error);
        encode_key(3, WireType::Varint, out);
        encode_varint(2, out);
    }
    // flags = 16, fixed32: W3C "sampled" (only sampled spans are exported).
    encode_key(16, WireType::ThirtyTwoBit, out);
    out.extend_from_slice(&1u32.to_le_bytes());
}

/// Repeated `KeyValue { key = 1, value = 2: AnyValue }` under `tag`.
fn attributes(out: &mut Vec<u8>, text: &mut String, tag: u32, attributes: &Attributes) {
    for (key, value) in attributes {
        // AnyValue { string_value = 1, bool_value = 2, int_value = 3, double_value = 4 }
        let any: (u32, Scalar<'_>) = match value {
            Value::Str(s) => (1, Scalar::Text(s)),
            Value::Shared(s) => (1, Scalar::Text(s)),
            Value::Ip(ip) => {
                write_ip(text, *ip);
                (1, Scalar::Text(text.as_str()))
            }
            Value::Hex(n) => {
                text.clear();
                let _ = write!(text, "{n:x}");
                (1, Scalar::Text(text.as_str()))
            }
            Value::Bool(b) => (2, Scalar::Varint(u64::from(*b))),
            Value::Int(n) => (3, Scalar::Varint(*n as u64)),
            Value::Float(f) => (4, Scalar::Fixed64(f.to_bits())),
        };
        let any_len = match any.1 {
            Scalar::Text(s) => string_len(any.0, s),
            Scalar::Varint(v) => 1 + encoded_len_varint(v),
            Scalar::Fixed64(_) => 1 + 8,
        };
        let key_value_len = string_len(1, key) + 1 + encoded_len_varint(any_len as u64) + any_len;
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(key_value_len as u64, out);
        string(out, 1, key);
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint(any_len as u64, out);
        match any.1 {
            Scalar::Text(s) => string(out, any.0, s),
            Scalar::Varint(v) => {
                encode_key(any.0, WireType::Varint, out);
                encode_varint(v, out);
            }
            Scalar::Fixed64(v) => {
                encode_key(any.0, WireType::SixtyFourBit, out);
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// An address as text, IPv4 without the formatting machinery (most are).
fn write_ip(text: &mut String, ip: std::net::IpAddr) {
    text.clear();
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                if octet >= 100 {
                    text.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    text.push(char::from(b'0' + octet / 10 % 10));
                }
                text.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(text, "{v6}");
        }
    }
}

enum Scalar<'a> {
    Text(&'a str),
    Varint(u64),
    Fixed64(u64),
}

/// A field's key. prost's own `encode_key` and `encode_varint` write through `BufMut`;
/// these write into the `Vec` directly.
fn encode_key(tag: u32, wire_type: WireType, out: &mut Vec<u8>) {
    encode_varint(u64::from(tag << 3 | wire_type as u32), out);
}

fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn message(out: &mut Vec<u8>, tag: u32, body: &[u8]) {
    bytes(out, tag, body);
}

fn bytes(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

fn string(out: &mut Vec<u8>, tag: u32, value: &str) {
    bytes(out, tag, value.as_bytes());
}

fn fixed64(out: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::SixtyFourBit, out);
    out.extend_from_slice(&value.to_le_bytes());
}

/// The encoded length of a string field with a one-byte key (tags below 16).
fn string_len(tag: u32, value: &str) -> usize {
    debug_assert!(tag < 16);
    1 + encoded_len_varint(value.len() as u64) + value.len()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

    use super::*;
    use crate::trace::{Event, SpanId, SpanName, TraceId};

    fn value(kv: &KeyValue) -> any_value::Value {
        kv.value.clone().unwrap().value.unwrap()
    }

    #[test]
    fn addresses_are_written_as_the_standard_library_writes_them() {
        let mut text = String::new();
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.255",
            "255.9.99.100",
            "::1",
            "2001:db8::7",
        ] {
            write_ip(&mut text, ip.parse().unwrap());
            assert_eq!(text, ip);
        }
    }

    #[test]
    fn what_is_written_decodes_with_the_opentelemetry_types() {
        let mut encoder = Encoder::new("edge", &[("region".into(), "eu".into())]);
        let record = SpanRecord {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([8; 8]),
            parent: Some(SpanId([9; 8])),
            tracestate: Some(Arc::from("vendor=abc")),
            name: SpanName::Pair("GET", Arc::from("chat")),
            kind: Kind::Server,
            start: 1_700_000_000_000_000_000,
            end: 1_700_000_000_002_000_000,
            attributes: vec![
                ("http.request.method".into(), "GET".into()),
                ("airlock.route".into(), Value::Shared(Arc::from("chat"))),
                ("client.address".into(), Value::Ip([10, 0, 0, 1].into())),
                ("http.response.status_code".into(), 101u16.into()),
                ("negative".into(), Value::Int(-3)),
                ("id".into(), Value::Hex(0xab1)),
                ("airlock.upgrade".into(), true.into()),
                ("ratio".into(), 0.25.into()),
                ("long".into(), "x".repeat(300).into()),
            ],
            events: vec![Event {
                name: "connect failed".into(),
                time: 1_700_000_000_001_000_000,
                attributes: vec![("server.address".into(), "10.0.0.6:80".into())],
            }],
            error: Some("upstream refused".into()),
        };
        let mut unset = record.clone();
        unset.parent = None;
        unset.tracestate = None;
        unset.error = None;
        unset.events.clear();
        let body = encoder.encode(&[record, unset]);
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let rs = &request.resource_spans[0];
        let resource = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(resource[0].key, "service.name");
        assert_eq!(
            value(&resource[0]),
            any_value::Value::StringValue("edge".into())
        );
        assert_eq!(resource.last().unwrap().key, "region");
        assert_eq!(rs.schema_url, SCHEMA_URL);
        let scope = &rs.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "airlock");
        let [span, unset]: &[_; 2] = scope.spans.as_slice().try_into().unwrap();
        assert_eq!(span.trace_id, vec![7; 16]);
        assert_eq!(span.span_id, vec![8; 8]);
        assert_eq!(span.parent_span_id, vec![9; 8]);
        assert_eq!(span.trace_state, "vendor=abc");
        assert_eq!(span.name, "GET chat");
        assert_eq!(span.kind, SpanKind::Server as i32);
        assert_eq!(span.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_700_000_000_002_000_000);
        assert_eq!(span.flags, 1);
        let attrs: Vec<(String, any_value::Value)> = span
            .attributes
            .iter()
            .map(|kv| (kv.key.clone(), value(kv)))
            .collect();
        use any_value::Value as V;
        assert_eq!(
            attrs,
            vec![
                ("http.request.method".into(), V::StringValue("GET".into())),
                ("airlock.route".into(), V::StringValue("chat".into())),
                ("client.address".into(), V::StringValue("10.0.0.1".into())),
                ("http.response.status_code".into(), V::IntValue(101)),
                ("negative".into(), V::IntValue(-3)),
                ("id".into(), V::StringValue("ab1".into())),
                ("airlock.upgrade".into(), V::BoolValue(true)),
                ("ratio".into(), V::DoubleValue(0.25)),
                ("long".into(), V::StringValue("x".repeat(300))),
            ]
        );
        assert_eq!(span.events[0].name, "connect failed");
        assert_eq!(span.events[0].time_unix_nano, 1_700_000_000_001_000_000);
        assert_eq!(span.events[0].attributes[0].key, "server.address");
        let status = span.status.as_ref().unwrap();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "upstream refused");
        assert!(unset.parent_span_id.is_empty() && unset.trace_state.is_empty());
        assert!(unset.status.is_none() && unset.events.is_empty());
    }
}
