//! The demo's collector: an OTLP/HTTP endpoint inside `airlock demo` that receives the
//! demo's own traces (airlock exports them as it would to any collector) and prints each
//! batch as a tree, so that a newcomer sees a trace without installing one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

/// Accept exports on `listener` until the demo ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                if let Ok(body) = req.into_body().collect().await
                    && let Ok(export) = ExportTraceServiceRequest::decode(body.to_bytes())
                {
                    eprint!("{}", render(&export));
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Each trace in the export as a tree of one line per span.
fn render(export: &ExportTraceServiceRequest) -> String {
    let mut traces: BTreeMap<Vec<u8>, Vec<&Span>> = BTreeMap::new();
    for span in export
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
    {
        traces.entry(span.trace_id.clone()).or_default().push(span);
    }
    let mut out = String::new();
    for (trace_id, mut spans) in traces {
        spans.sort_by_key(|s| s.start_time_unix_nano);
        let _ = writeln!(out, "trace {}", hex(&trace_id));
        let ids: Vec<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
        let roots = spans
            .iter()
            .filter(|s| !ids.contains(&s.parent_span_id.as_slice()));
        for root in roots {
            let _ = writeln!(out, "  {}", line(root));
            let children: Vec<&&Span> = spans
                .iter()
                .filter(|s| s.parent_span_id == root.span_id)
                .collect();
            for (i, child) in children.iter().enumerate() {
                let branch = if i + 1 == children.len() {
                    "└─"
                } else {
                    "├─"
                };
                let _ = writeln!(out, "  {branch} {}", line(child));
            }
        }
    }
    out
}

/// `name  duration  the attributes worth a glance`.
fn line(span: &Span) -> String {
    let took = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano);
    let took = if took >= 1_000_000_000 {
        format!("{:.1} s", took as f64 / 1e9)
    } else if took >= 1_000_000 {
        format!("{:.1} ms", took as f64 / 1e6)
    } else {
        format!("{} µs", took / 1000)
    };
    let shown = [
        "http.response.status_code",
        "airlock.upstream.server",
        "airlock.plugin.verdict",
        "error.type",
        "airlock.tunnel.bytes_from_client",
        "airlock.tunnel.bytes_from_upstream",
        "airlock.websocket.messages_from_client",
        "airlock.websocket.messages_from_upstream",
        "airlock.tunnel.closed_by",
        "airlock.tunnel.close_reason",
    ];
    let mut text = format!("{:<18} {took:>9}", span.name);
    for key in shown {
        if let Some(value) = attribute(&span.attributes, key) {
            let short = key.rsplit('.').next().unwrap_or(key);
            let _ = write!(text, "  {short}={value}");
        }
    }
    text
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(match value {
        AnyValue {
            value: Some(any_value::Value::StringValue(s)),
        } => s.clone(),
        AnyValue {
            value: Some(any_value::Value::IntValue(n)),
        } => n.to_string(),
        AnyValue {
            value: Some(any_value::Value::BoolValue(b)),
        } => b.to_string(),
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
