//! Spans as an OTLP `ExportTraceServiceRequest` in protobuf.
//!
//! Each span is written as protobuf the moment it finishes, on the request's thread,
//! straight from what the request knows ([`Spans::span`]): no record of it is built,
//! queued and dropped, which cost more than writing it (`docs/benchmarks.md#tracing`).
//! The exporter's thread only puts the finished spans of a batch between the parts that
//! never change (the resource and the instrumentation scope, built once with the
//! OpenTelemetry project's generated types, `opentelemetry-proto`). The tests decode the
//! result with the generated types, and the e2e tests with the Python package.

use std::net::IpAddr;

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use prost::encoding::encoded_len_varint;

use super::context::{SpanId, TraceId};
use super::span::{Kind, Value};

/// The semantic conventions airlock's attribute names follow.
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";

/// Finished spans, each written as a `ScopeSpans.spans` field, ready to be exported.
#[derive(Debug, Default)]
pub struct Spans {
    buf: Vec<u8>,
    count: usize,
}

/// What every span has, known when it is begun.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    /// The `tracestate` of the trace this span continues.
    pub tracestate: Option<&'a str>,
    /// The name, in two parts joined by a space when there is a second (`GET chat`): a
    /// name costs no formatting.
    pub name: (&'a str, Option<&'a str>),
    pub kind: Kind,
    /// Unix time, nanoseconds.
    pub start: u64,
    pub end: u64,
}

impl Spans {
    /// Room for about `bytes` of spans (a span with a dozen attributes takes 500).
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    /// How many spans.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Their size, encoded.
    pub fn size(&self) -> usize {
        self.buf.len()
    }

    /// Begin a span. Its attributes, events and status are added through the writer; it
    /// is complete when the writer is dropped.
    pub fn span(&mut self, head: &Head<'_>) -> SpanWriter<'_> {
        let out = &mut self.buf;
        out.reserve(256);
        // ScopeSpans.spans = 2, its length (two bytes, written when it ends), and
        // Span { trace_id = 1, span_id = 2, trace_state = 3, parent_span_id = 4,
        //        name = 5, kind = 6, start_time_unix_nano = 7, end_time_unix_nano = 8 }:
        // the fixed-size parts are put together first, and copied in one piece.
        let body = out.len() + 1;
        let mut ids = [0u8; 3 + 18 + 10];
        ids[0] = tag(2, LEN);
        ids[3..5].copy_from_slice(&[tag(1, LEN), 16]);
        ids[5..21].copy_from_slice(&head.trace_id.0);
        ids[21..23].copy_from_slice(&[tag(2, LEN), 8]);
        ids[23..31].copy_from_slice(&head.span_id.0);
        out.extend_from_slice(&ids);
        if let Some(state) = head.tracestate {
            string(out, tag(3, LEN), state.as_bytes());
        }
        if let Some(parent) = head.parent {
            let mut field = [tag(4, LEN), 8, 0, 0, 0, 0, 0, 0, 0, 0];
            field[2..].copy_from_slice(&parent.0);
            out.extend_from_slice(&field);
        }
        match head.name {
            (name, None) => string(out, tag(5, LEN), name.as_bytes()),
            (first, Some(second)) => {
                out.push(tag(5, LEN));
                varint(out, (first.len() + 1 + second.len()) as u64);
                out.extend_from_slice(first.as_bytes());
                out.push(b' ');
                out.extend_from_slice(second.as_bytes());
            }
        }
        let kind = match head.kind {
            Kind::Internal => 1,
            Kind::Server => 2,
            Kind::Client => 3,
        };
        let mut times = [0u8; 2 + 9 + 9];
        times[..3].copy_from_slice(&[tag(6, VARINT), kind, tag(7, I64)]);
        times[3..11].copy_from_slice(&head.start.to_le_bytes());
        times[11] = tag(8, I64);
        times[12..].copy_from_slice(&head.end.to_le_bytes());
        out.extend_from_slice(&times);
        SpanWriter { spans: self, body }
    }
}

/// Adds to a span being written; the span is complete when this is dropped.
pub struct SpanWriter<'a> {
    spans: &'a mut Spans,
    /// Where the span's length goes.
    body: usize,
}

impl SpanWriter<'_> {
    /// An attribute (Span.attributes = 9).
    #[inline(always)]
    pub fn attr<'v>(&mut self, key: &str, value: impl Into<Value<'v>>) -> &mut Self {
        key_value(&mut self.spans.buf, tag(9, LEN), "", key, value.into());
        self
    }

    /// An attribute whose key is `prefix` followed by `key`.
    pub fn attr_prefixed(&mut self, prefix: &str, key: &str, value: Value<'_>) -> &mut Self {
        key_value(&mut self.spans.buf, tag(9, LEN), prefix, key, value);
        self
    }

    /// Something that happened at `time` (Unix nanoseconds) during the span.
    pub fn event(&mut self, name: &str, time: u64, attributes: &[(&str, Value<'_>)]) {
        let out = &mut self.spans.buf;
        // Span.events = 11: Event { time_unix_nano = 1, name = 2, attributes = 3 }
        out.push(tag(11, LEN));
        let body = open_len(out);
        out.push(tag(1, I64));
        out.extend_from_slice(&time.to_le_bytes());
        string(out, tag(2, LEN), name.as_bytes());
        for (key, value) in attributes {
            key_value(out, tag(3, LEN), "", key, *value);
        }
        close_len(out, body);
    }

    /// Mark the span failed, with `message` (empty: none). Once per span at most.
    pub fn error(&mut self, message: &str) {
        let out = &mut self.spans.buf;
        // Span.status = 15: Status { message = 2, code = 3 (2: error) }
        let len = if message.is_empty() {
            0
        } else {
            1 + encoded_len_varint(message.len() as u64) + message.len()
        } + 2;
        out.push(tag(15, LEN));
        varint(out, len as u64);
        if !message.is_empty() {
            string(out, tag(2, LEN), message.as_bytes());
        }
        out.extend_from_slice(&[tag(3, VARINT), 2]);
    }
}

impl Drop for SpanWriter<'_> {
    fn drop(&mut self) {
        let out = &mut self.spans.buf;
        // flags = 16, fixed32: W3C "sampled" (only sampled spans are written).
        out.extend_from_slice(&[0x85, 0x01, 1, 0, 0, 0]);
        close_len(out, self.body);
        self.spans.count += 1;
    }
}

/// Encodes batches for one resource.
pub struct Encoder {
    /// The encoded `Resource` and `InstrumentationScope` messages.
    resource: Vec<u8>,
    scope: Vec<u8>,
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
        }
    }

    /// The request body for one batch: these spans, copied once.
    pub fn encode(&self, batch: &[Spans]) -> Vec<u8> {
        let field_len = |len: usize| 1 + encoded_len_varint(len as u64) + len;
        // ExportTraceServiceRequest { resource_spans = 1: ResourceSpans { resource = 1,
        // scope_spans = 2: ScopeSpans { scope = 1, spans = 2 (each), schema_url = 3 },
        // schema_url = 3 } }
        let spans_len: usize = batch.iter().map(Spans::size).sum();
        let scope_spans_len = field_len(self.scope.len()) + spans_len + field_len(SCHEMA_URL.len());
        let resource_spans_len = field_len(self.resource.len())
            + field_len(scope_spans_len)
            + field_len(SCHEMA_URL.len());
        let mut request = Vec::with_capacity(field_len(resource_spans_len));
        request.push(tag(1, LEN));
        varint(&mut request, resource_spans_len as u64);
        string(&mut request, tag(1, LEN), &self.resource);
        request.push(tag(2, LEN));
        varint(&mut request, scope_spans_len as u64);
        string(&mut request, tag(1, LEN), &self.scope);
        for spans in batch {
            request.extend_from_slice(&spans.buf);
        }
        string(&mut request, tag(3, LEN), SCHEMA_URL.as_bytes());
        string(&mut request, tag(3, LEN), SCHEMA_URL.as_bytes());
        request
    }
}

/// Wire types.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;

/// A field's key, for the field numbers below 16 that fit a byte.
#[inline(always)]
const fn tag(field: u8, wire_type: u8) -> u8 {
    assert!(field < 16);
    field << 3 | wire_type
}

/// `KeyValue { key = 1, value = 2: AnyValue }` under the field key `field`.
///
/// Written a few bytes at a time from fixed-size arrays, which compile to stores: with a
/// byte pushed at a time, this cost twice as much (the attributes are most of a span).
/// Inlined into each call, where the key and the kind of value are mostly constants.
#[inline(always)]
fn key_value(out: &mut Vec<u8>, field: u8, prefix: &str, key: &str, value: Value<'_>) {
    let mut text = [0u8; 45];
    // AnyValue { string_value = 1, bool_value = 2, int_value = 3, double_value = 4 }
    let scalar = match value {
        Value::Str(s) => Scalar::Text(s.as_bytes()),
        Value::Ip(ip) => Scalar::Text(write_ip(&mut text, ip)),
        Value::Hex(n) => Scalar::Text(write_hex(&mut text, n)),
        Value::Bool(b) => Scalar::Varint(tag(2, VARINT), u64::from(b)),
        Value::Int(n) => Scalar::Varint(tag(3, VARINT), n as u64),
        Value::Float(f) => Scalar::Fixed64(f.to_bits()),
    };
    let any_len = match scalar {
        Scalar::Text(s) => 1 + encoded_len_varint(s.len() as u64) + s.len(),
        Scalar::Varint(_, v) => 1 + encoded_len_varint(v),
        Scalar::Fixed64(_) => 1 + 8,
    };
    let key_len = prefix.len() + key.len();
    let kv_len = 1
        + encoded_len_varint(key_len as u64)
        + key_len
        + 1
        + encoded_len_varint(any_len as u64)
        + any_len;
    out.reserve(kv_len + 10);
    if kv_len < 128 {
        out.extend_from_slice(&[field, kv_len as u8, tag(1, LEN), key_len as u8]);
    } else {
        out.push(field);
        varint(out, kv_len as u64);
        out.push(tag(1, LEN));
        varint(out, key_len as u64);
    }
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(key.as_bytes());
    match scalar {
        Scalar::Text(s) if any_len < 128 => {
            out.extend_from_slice(&[tag(2, LEN), any_len as u8, tag(1, LEN), s.len() as u8]);
            out.extend_from_slice(s);
        }
        Scalar::Text(s) => {
            out.push(tag(2, LEN));
            varint(out, any_len as u64);
            string(out, tag(1, LEN), s);
        }
        Scalar::Varint(key, v) => {
            out.extend_from_slice(&[tag(2, LEN), any_len as u8, key]);
            varint(out, v);
        }
        Scalar::Fixed64(v) => {
            out.extend_from_slice(&[tag(2, LEN), any_len as u8, tag(4, I64)]);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

enum Scalar<'a> {
    Text(&'a [u8]),
    Varint(u8, u64),
    Fixed64(u64),
}

/// An address as text, IPv4 without the formatting machinery (most are).
fn write_ip(text: &mut [u8; 45], ip: IpAddr) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                n += 1;
            }
            &text[..n]
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            // An IPv6 address is at most 45 characters (with an IPv4 tail).
            let _ = write!(cursor, "{v6}");
            let n = cursor.position() as usize;
            &text[..n]
        }
    }
}

/// `n` in lower-case hex.
fn write_hex(text: &mut [u8; 45], n: u64) -> &[u8] {
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    for (i, digit) in text[..digits].iter_mut().rev().enumerate() {
        *digit = b"0123456789abcdef"[(n >> (4 * i) & 0xf) as usize];
    }
    &text[..digits]
}

#[inline(always)]
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field's length and bytes, after its key `key`.
#[inline]
fn string(out: &mut Vec<u8>, key: u8, value: &[u8]) {
    out.push(key);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Make room for the length of a message whose size is not known yet: two bytes, which
/// hold lengths from 128 to 16,383 (most spans).
fn open_len(out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(&[0, 0]);
    out.len() - 2
}

/// Write the length of the message whose two bytes for it are at `at` (see
/// [`open_len`]), moving the message when its length needs other than two.
fn close_len(out: &mut Vec<u8>, at: usize) {
    let len = out.len() - at - 2;
    if (128..16384).contains(&len) {
        out[at] = (len as u8 & 0x7f) | 0x80;
        out[at + 1] = (len >> 7) as u8;
    } else {
        let mut bytes = Vec::with_capacity(10);
        varint(&mut bytes, len as u64);
        out.splice(at..at + 2, bytes);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

    use super::*;

    fn value(kv: &KeyValue) -> any_value::Value {
        kv.value.clone().unwrap().value.unwrap()
    }

    #[test]
    fn addresses_and_ids_are_written_as_the_standard_library_writes_them() {
        let mut text = [0u8; 45];
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "127.0.0.1",
            "192.168.100.255",
            "255.9.99.100",
            "::1",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(write_ip(&mut text, ip), ip.to_string().as_bytes());
        }
        for n in [0, 1, 0xf, 0x10, 0xab1, u64::MAX, 1 << 60] {
            assert_eq!(write_hex(&mut text, n), format!("{n:x}").as_bytes());
        }
    }

    fn head(span_id: u8) -> Head<'static> {
        Head {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([span_id; 8]),
            parent: None,
            tracestate: None,
            name: ("tunnel", None),
            kind: Kind::Internal,
            start: 1,
            end: 2,
        }
    }

    #[test]
    fn what_is_written_decodes_with_the_opentelemetry_types() {
        let encoder = Encoder::new("edge", &[("region".into(), "eu".into())]);
        let mut first = Spans::with_capacity(0);
        {
            let mut span = first.span(&Head {
                parent: Some(SpanId([9; 8])),
                tracestate: Some("vendor=abc"),
                name: ("GET", Some("chat")),
                kind: Kind::Server,
                start: 1_700_000_000_000_000_000,
                end: 1_700_000_000_002_000_000,
                ..head(8)
            });
            span.attr("http.request.method", "GET")
                .attr("client.address", Value::Ip([10, 0, 0, 1].into()))
                .attr("http.response.status_code", 101u16)
                .attr("negative", Value::Int(-3))
                .attr("id", Value::Hex(0xab1))
                .attr("airlock.upgrade", true)
                .attr("ratio", 0.25)
                .attr("long", "x".repeat(300).as_str())
                .attr_prefixed("airlock.plugin.attribute.", "tenant", "acme".into());
            span.event(
                "connect failed",
                1_700_000_000_001_000_000,
                &[("server.address", "10.0.0.6:80".into())],
            );
            span.error("upstream refused");
        }
        first.span(&head(10));
        let mut second = Spans::default();
        second.span(&head(11)).error("");
        assert_eq!((first.len(), second.len()), (2, 1));

        let body = encoder.encode(&[first, second]);
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
        assert_eq!(scope.schema_url, SCHEMA_URL);
        assert_eq!(scope.scope.as_ref().unwrap().name, "airlock");
        let [span, plain, failed]: &[_; 3] = scope.spans.as_slice().try_into().unwrap();
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
                ("client.address".into(), V::StringValue("10.0.0.1".into())),
                ("http.response.status_code".into(), V::IntValue(101)),
                ("negative".into(), V::IntValue(-3)),
                ("id".into(), V::StringValue("ab1".into())),
                ("airlock.upgrade".into(), V::BoolValue(true)),
                ("ratio".into(), V::DoubleValue(0.25)),
                ("long".into(), V::StringValue("x".repeat(300))),
                (
                    "airlock.plugin.attribute.tenant".into(),
                    V::StringValue("acme".into())
                ),
            ]
        );
        assert_eq!(span.events[0].name, "connect failed");
        assert_eq!(span.events[0].time_unix_nano, 1_700_000_000_001_000_000);
        assert_eq!(span.events[0].attributes[0].key, "server.address");
        let status = span.status.as_ref().unwrap();
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "upstream refused");
        // A span under 128 bytes: its length takes one byte.
        assert_eq!(plain.span_id, vec![10; 8]);
        assert!(plain.parent_span_id.is_empty() && plain.trace_state.is_empty());
        assert!(plain.status.is_none() && plain.events.is_empty());
        assert_eq!((plain.name.as_str(), plain.flags), ("tunnel", 1));
        let status = failed.status.as_ref().unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (StatusCode::Error as i32, "")
        );
    }

    #[test]
    fn a_span_longer_than_16_kib_is_written_whole() {
        let mut spans = Spans::default();
        let long = "y".repeat(20_000);
        spans.span(&head(1)).attr("long", long.as_str());
        let body = Encoder::new("edge", &[]).encode(&[spans]);
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            value(&span.attributes[0]),
            any_value::Value::StringValue(long)
        );
        assert_eq!(span.flags, 1);
    }
}
