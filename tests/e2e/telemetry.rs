//! OpenTelemetry traces through the real binary, received by a real OTLP/HTTP receiver
//! that decodes with the OpenTelemetry project's own protobuf definitions
//! (`tests/python/otlp_receiver.py`): one WebSocket is one trace, context goes in and out,
//! and a collector that is down, hangs or fails costs no handshake.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::support::client::{get, get_with, status_of, upgrade_head};
use crate::support::otlp::Receiver;
use crate::support::python::{parse_metrics, sum};
use crate::support::{Airlock, Backend, config, plugin_wasm, refused_addr};

const ORIGIN: &str = "https://app.example.com";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const SECRET: &str = "k-3f9a-never-logged";

// OTLP span kinds.
const INTERNAL: u64 = 1;
const SERVER: u64 = 2;
const CLIENT: u64 = 3;

/// A config with `[telemetry]` (`telemetry` lines added) and one route `chat` through
/// the origin allowlist and a tagging plugin to `backend`.
fn traced(backend: SocketAddr, listener_option: &str, telemetry: &str) -> String {
    let config = config(&format!(
        "[[route]]\nname = \"chat\"\npath_prefix = \"/\"\nupstream = \"pool\"\n\
         plugins = [\"origin\", \"tag\"]\n\n\
         [upstream.pool]\nservers = [\"{backend}\"]\n\n\
         [plugin.origin]\nwasm = \"{}\"\nconfig = {{ allow = [\"{ORIGIN}\"] }}\n\n\
         [plugin.tag]\nwasm = \"{}\"\nconfig = {{ attributes = [[\"user\", \"alice\"]] }}\n\n\
         [telemetry]\n{telemetry}\n",
        plugin_wasm("origin_allowlist.wasm"),
        plugin_wasm("test_guest.wasm"),
    ));
    crate::support::with_listener_option(&config, listener_option)
}

fn one<'a>(spans: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_through_two_plugins_is_one_trace_from_client_to_upstream() {
    let receiver = Receiver::start("ok");
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&traced(
        backend.addr,
        "trusted_proxies = [\"127.0.0.1/32\"]",
        &format!(
            "otlp_endpoint = \"{}\"\nservice_name = \"edge-test\"\n\
             resource = {{ \"deployment.environment.name\" = \"e2e\" }}\n\
             headers = {{ \"x-api-key\" = \"{SECRET}\" }}\n",
            receiver.endpoint()
        ),
    ));

    let mut request = format!("ws://{}/headers", airlock.addr())
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("origin", ORIGIN.parse().unwrap());
    headers.insert(
        "traceparent",
        format!("00-{TRACE}-{PARENT}-01").parse().unwrap(),
    );
    headers.insert("tracestate", "vendor=abc".parse().unwrap());
    let (mut ws, _) = connect_async(request).await.unwrap();
    // The backend's first message describes the upgrade request it received.
    let greeting = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let seen: Value = serde_json::from_str(greeting.strip_prefix("request:").unwrap()).unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap(),
        "hello"
    );
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);

    let spans = receiver
        .wait_for("the handshake's four spans and the tunnel's", |spans| {
            spans.len() >= 5
        })
        .await;
    assert_eq!(spans.len(), 5, "{spans:#?}");
    for span in &spans {
        assert_eq!(span["trace_id"], TRACE, "one trace, the client's: {span:#}");
        assert_eq!(span["trace_state"], "vendor=abc", "{span:#}");
        assert!(span["end"].as_u64() >= span["start"].as_u64(), "{span:#}");
    }
    let server = one(&spans, "the server span", |s| s["kind"] == SERVER);
    let server_id = server["span_id"].as_str().unwrap();
    assert_eq!(server["parent_span_id"], PARENT);
    assert_eq!(server["name"], "GET chat");
    let attrs = &server["attributes"];
    assert_eq!(attrs["http.request.method"], "GET");
    assert_eq!(attrs["url.path"], "/headers");
    assert_eq!(attrs["http.response.status_code"], 101);
    assert_eq!(attrs["airlock.route"], "chat");
    assert_eq!(attrs["airlock.upstream"], "pool");
    assert_eq!(attrs["airlock.upstream.server"], backend.addr.to_string());
    assert_eq!(attrs["client.address"], "127.0.0.1");
    assert_eq!(attrs["airlock.upgrade"], true);
    assert_eq!(attrs["airlock.plugin.attribute.user"], "alice");
    assert_eq!(server["status"]["code"], 0, "a 101 is no error");

    for (plugin, name) in [("origin", "plugin origin"), ("tag", "plugin tag")] {
        let span = one(&spans, name, |s| s["name"] == name);
        assert_eq!(span["kind"], INTERNAL);
        assert_eq!(span["parent_span_id"], server_id);
        assert_eq!(span["attributes"]["airlock.plugin.name"], plugin);
        assert_eq!(span["attributes"]["airlock.plugin.verdict"], "allow");
    }

    let client = one(&spans, "the client span", |s| s["kind"] == CLIENT);
    assert_eq!(client["parent_span_id"], server_id);
    assert_eq!(client["attributes"]["http.response.status_code"], 101);
    assert_eq!(
        client["attributes"]["server.port"],
        u64::from(backend.addr.port())
    );
    // The upstream continues the trace under the client span.
    assert_eq!(
        seen["headers"]["traceparent"],
        format!("00-{TRACE}-{}-01", client["span_id"].as_str().unwrap())
    );
    assert_eq!(seen["headers"]["tracestate"], "vendor=abc");

    let tunnel = one(&spans, "the tunnel span", |s| {
        s["name"] == "websocket tunnel"
    });
    assert_eq!(tunnel["parent_span_id"], server_id);
    let ta = &tunnel["attributes"];
    assert_eq!(ta["airlock.tunnel.close_reason"], "closed");
    assert!(tunnel["start"].as_u64() >= server["end"].as_u64().map(|e| e - 1_000_000));

    // The access log names the same ids and bytes.
    let request_line = airlock
        .wait_for_log("the request", |v| v["event"] == "request")
        .await;
    assert_eq!(request_line["trace_id"], TRACE);
    assert_eq!(request_line["span_id"], server_id);
    assert_eq!(request_line["request.id"], attrs["airlock.request.id"]);
    let close = airlock
        .wait_for_log("the tunnel close", |v| v["event"] == "tunnel_close")
        .await;
    assert_eq!(close["trace_id"], TRACE);
    assert_eq!(close["closed_by"], ta["airlock.tunnel.closed_by"]);
    assert_eq!(close["span_id"], tunnel["span_id"]);
    assert_eq!(
        close["bytes_from_client"],
        ta["airlock.tunnel.bytes_from_client"]
    );
    assert_eq!(
        close["bytes_from_upstream"],
        ta["airlock.tunnel.bytes_from_upstream"]
    );
    assert!(ta["airlock.tunnel.bytes_from_client"].as_u64().unwrap() > 5);

    // The export itself: OTLP/HTTP protobuf, the configured header and resource.
    let export = &receiver.exports()[0];
    assert_eq!(export["path"], "/v1/traces");
    assert_eq!(export["content_type"], "application/x-protobuf");
    assert_eq!(export["headers"]["x-api-key"], SECRET);
    assert_eq!(export["resource"]["service.name"], "edge-test");
    assert_eq!(export["resource"]["deployment.environment.name"], "e2e");
    assert!(
        !airlock.dump_logs().contains(SECRET),
        "the exporter's header reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_starts_a_new_trace_and_sampling_is_passed_on() {
    let receiver = Receiver::start("ok");
    let backend = Backend::start("a").await;
    let sent = format!("00-{TRACE}-{PARENT}-01");
    let headers = [("origin", ORIGIN), ("traceparent", sent.as_str())];

    // Default trust ("trusted") and no trusted_proxies: the client's context is ignored.
    let airlock = Airlock::start(&traced(
        backend.addr,
        "",
        &format!("otlp_endpoint = \"{}\"\n", receiver.endpoint()),
    ));
    let seen = get_with(airlock.addr(), "/", &headers).await.json();
    let upstream_saw = seen["headers"]["traceparent"].as_str().unwrap().to_string();
    assert!(!upstream_saw.contains(TRACE), "{upstream_saw}");
    let spans = receiver
        .wait_for("one request's spans", |s| s.len() >= 4)
        .await;
    let server = one(&spans, "the server span", |s| s["kind"] == SERVER);
    assert_eq!(server["parent_span_id"], "", "a new trace has no parent");
    assert_eq!(upstream_saw[3..35], *server["trace_id"].as_str().unwrap());
    assert!(upstream_saw.ends_with("-01"));
    drop(airlock);

    // sample_ratio 0 with trust "all": a new trace is not sampled, but the upstream
    // still gets its context (flag 00); a client's sampled trace is followed.
    let receiver = Receiver::start("ok");
    let airlock = Airlock::start(&traced(
        backend.addr,
        "",
        &format!(
            "otlp_endpoint = \"{}\"\nsample_ratio = 0.0\ntrust_traceparent = \"all\"\n",
            receiver.endpoint()
        ),
    ));
    let seen = get_with(airlock.addr(), "/", &[("origin", ORIGIN)])
        .await
        .json();
    let unsampled = seen["headers"]["traceparent"].as_str().unwrap().to_string();
    assert!(unsampled.ends_with("-00"), "{unsampled}");
    let seen = get_with(airlock.addr(), "/", &headers).await.json();
    let followed = seen["headers"]["traceparent"].as_str().unwrap();
    assert!(followed.starts_with(&format!("00-{TRACE}-")) && followed.ends_with("-01"));
    let spans = receiver
        .wait_for("the sampled request's spans", |s| s.len() >= 4)
        .await;
    // Give a wrongly sampled first request's spans time to arrive too (batches go out
    // within a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans_now = receiver.spans();
    assert_eq!(spans_now.len(), spans.len(), "{spans_now:#?}");
    assert!(
        spans_now.iter().all(|s| s["trace_id"] == TRACE),
        "{spans_now:#?}"
    );
    let log = airlock.logs_where(|v| v["event"] == "request");
    assert_eq!(log.len(), 2);
    assert!(
        log[0]["trace_id"].is_null(),
        "an unsampled trace is in no collector"
    );
    assert_eq!(log[1]["trace_id"], TRACE);
    drop(airlock);

    // propagate = false: the upstream gets the client's headers as they were.
    let airlock = Airlock::start(&traced(
        backend.addr,
        "",
        &format!(
            "otlp_endpoint = \"{}\"\npropagate = false\n",
            receiver.endpoint()
        ),
    ));
    let seen = get_with(airlock.addr(), "/", &headers).await.json();
    assert_eq!(seen["headers"]["traceparent"], sent.as_str());
}

/// 1,000 WebSocket handshakes (each a tunnel opened and closed) against a collector in
/// `mode`: every one succeeds, every span is dropped and counted, shutdown stays quick.
async fn handshakes_survive(mode: &str) {
    let receiver = (mode != "down").then(|| Receiver::start(mode));
    let endpoint = match &receiver {
        Some(r) => r.endpoint(),
        None => format!("http://{}", refused_addr()),
    };
    let backend = Backend::start("a").await;
    let mut airlock = Airlock::start(&traced(
        backend.addr,
        "",
        &format!("otlp_endpoint = \"{endpoint}\"\nmax_queue = 64\nexport_timeout = \"1s\"\n"),
    ));
    let addr = airlock.addr();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: {ORIGIN}\r\n\r\n"
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..100 {
                    let (stream, head) = upgrade_head(addr, request.as_bytes()).await;
                    ok += u32::from(status_of(&head) == 101);
                    drop(stream);
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += task.await.unwrap();
    }
    assert_eq!(ok, 1000, "collector {mode}: handshakes failed");
    eprintln!(
        "collector {mode}: 1000 handshakes in {:?}",
        started.elapsed()
    );

    // Each handshake makes 5 spans: server, two plugins, client, and its tunnel's.
    let total = 5000.0;
    let mut dropped = 0.0;
    for _ in 0..150 {
        let samples = parse_metrics(
            std::str::from_utf8(&get(airlock.admin(), "/metrics").await.body).unwrap(),
        );
        assert_eq!(
            sum(&samples, "airlock_trace_spans_exported_total", &[]),
            0.0
        );
        dropped = sum(&samples, "airlock_trace_spans_dropped_total", &[]);
        if dropped == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        dropped, total,
        "collector {mode}: every span dropped and counted"
    );
    let warned = airlock.logs_where(|v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("spans dropped"))
    });
    assert!(
        !warned.is_empty() && warned.len() <= 2,
        "collector {mode}: warnings {warned:#?}"
    );

    // Shutdown waits for the exporter at most export_timeout (1 s), well within the grace.
    let stopping = Instant::now();
    airlock.signal("TERM");
    assert!(airlock.wait_exit(Duration::from_secs(4)).await.success());
    eprintln!(
        "collector {mode}: exited {:?} after SIGTERM",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_no_handshake() {
    handshakes_survive("down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_collector_costs_no_handshake() {
    handshakes_survive("fail").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_collector_costs_no_handshake_nor_a_slow_exit() {
    handshakes_survive("hang").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_new_traces_to_the_new_collector_and_an_open_tunnel_finishes_in_its_own() {
    let (first, second) = (Receiver::start("ok"), Receiver::start("ok"));
    let backend = Backend::start("a").await;
    let at = |receiver: &Receiver| {
        traced(
            backend.addr,
            "",
            &format!("otlp_endpoint = \"{}\"\n", receiver.endpoint()),
        )
    };
    let airlock = Airlock::start(&at(&first));
    let mut request = format!("ws://{}/ws", airlock.addr())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", ORIGIN.parse().unwrap());
    let (mut ws, _) = connect_async(request).await.unwrap();
    ws.next().await.unwrap().unwrap();
    let handshake = first
        .wait_for("the handshake's spans", |s| s.len() >= 4)
        .await;
    let trace_id = handshake[0]["trace_id"].clone();

    std::fs::write(airlock.config_path(), at(&second)).unwrap();
    airlock.signal("HUP");
    airlock
        .wait_for_log("the reload", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("configuration reloaded"))
        })
        .await;
    assert_eq!(
        get_with(airlock.addr(), "/", &[("origin", ORIGIN)])
            .await
            .status,
        200
    );
    second
        .wait_for("the new request's spans", |s| s.len() >= 4)
        .await;

    // The tunnel opened before the reload keeps its configuration, exporter included.
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);
    let spans = first
        .wait_for("the tunnel's span", |s| {
            s.iter().any(|s| s["name"] == "websocket tunnel")
        })
        .await;
    let tunnel = one(&spans, "the tunnel", |s| s["name"] == "websocket tunnel");
    assert_eq!(tunnel["trace_id"], trace_id);
    assert!(
        second
            .spans()
            .iter()
            .all(|s| s["name"] != "websocket tunnel")
    );
}
