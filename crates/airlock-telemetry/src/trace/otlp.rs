//! Spans as an OTLP `ExportTraceServiceRequest`, in protobuf, with the OpenTelemetry
//! project's own generated types.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message as _;

use super::span::{Attributes, Kind, SpanRecord, Value};

/// The resource every span of this process belongs to.
pub fn resource(service_name: &str, extra: &[(String, String)]) -> Resource {
    let mut attributes = vec![
        key_value("service.name", AnyValue::string(service_name)),
        key_value("telemetry.sdk.name", AnyValue::string("airlock")),
        key_value("telemetry.sdk.language", AnyValue::string("rust")),
        key_value(
            "telemetry.sdk.version",
            AnyValue::string(env!("CARGO_PKG_VERSION")),
        ),
    ];
    for (key, value) in extra {
        attributes.retain(|kv| &kv.key != key);
        attributes.push(key_value(key, AnyValue::string(value)));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// The request body for one batch.
pub fn encode(resource: &Resource, spans: &[SpanRecord]) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "airlock".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: spans.iter().map(span).collect(),
                schema_url: SCHEMA_URL.into(),
            }],
            schema_url: SCHEMA_URL.into(),
        }],
    }
    .encode_to_vec()
}

/// The semantic conventions airlock's attribute names follow.
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";

fn span(record: &SpanRecord) -> Span {
    Span {
        trace_id: record.trace_id.0.to_vec(),
        span_id: record.span_id.0.to_vec(),
        trace_state: record.tracestate.as_deref().unwrap_or_default().into(),
        parent_span_id: record.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        // W3C trace flags "sampled": only sampled spans are exported.
        flags: 1,
        name: record.name.to_string(),
        kind: match record.kind {
            Kind::Internal => span::SpanKind::Internal,
            Kind::Server => span::SpanKind::Server,
            Kind::Client => span::SpanKind::Client,
        } as i32,
        start_time_unix_nano: record.start,
        end_time_unix_nano: record.end,
        attributes: attributes(&record.attributes),
        events: record
            .events
            .iter()
            .map(|e| span::Event {
                time_unix_nano: e.time,
                name: e.name.to_string(),
                attributes: attributes(&e.attributes),
                dropped_attributes_count: 0,
            })
            .collect(),
        status: Some(match &record.error {
            Some(message) => Status {
                message: message.clone(),
                code: status::StatusCode::Error as i32,
            },
            None => Status::default(),
        }),
        ..Default::default()
    }
}

fn attributes(attributes: &Attributes) -> Vec<KeyValue> {
    attributes
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Value::Str(s) => any_value::Value::StringValue(s.to_string()),
                Value::Shared(s) => any_value::Value::StringValue(s.to_string()),
                Value::Int(n) => any_value::Value::IntValue(*n),
                Value::Bool(b) => any_value::Value::BoolValue(*b),
                Value::Float(f) => any_value::Value::DoubleValue(*f),
            };
            key_value(key, AnyValue { value: Some(value) })
        })
        .collect()
}

fn key_value(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(value),
        ..Default::default()
    }
}

trait StringValue {
    fn string(s: &str) -> Self;
}

impl StringValue for AnyValue {
    fn string(s: &str) -> Self {
        AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        }
    }
}
