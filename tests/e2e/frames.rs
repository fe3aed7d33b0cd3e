//! Frame-aware WebSocket routes (`websocket = {...}`), driven by a real, independent
//! client (Python `websockets`) against the real binary and a real WebSocket server:
//! message limits close with the right codes on both sides, and the access log says
//! what the tunnel carried.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::client::upgrade_head;
use crate::support::python::{parse_metrics, run_script, spawn_script, sum};
use crate::support::{Airlock, Backend, single_route};

/// Run tests/python/ws_client.py against `airlock` and read what it saw. The client
/// finishes by itself: every mode ends with a close, and airlock's close handshake is
/// bounded.
async fn python_client(airlock: &Airlock, mode: &str, arg: &str) -> Value {
    let url = format!("ws://{}/", airlock.addr());
    run_script("ws_client.py", &[url, mode.into(), arg.into()]).await
}

/// airlock with one frame-aware route (`websocket = {ws}`) to `backend`.
fn frame_aware(backend: &Backend, ws: &str, extra_route: &str) -> Airlock {
    let route = format!("websocket = {{ {ws} }}\n{extra_route}");
    Airlock::start(&single_route(&[backend.addr], &route, ""))
}

async fn tunnel_close(airlock: &Airlock) -> Value {
    airlock
        .wait_for_log("tunnel close", |v| v["event"] == "tunnel_close")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_within_the_limits_pass_and_are_counted() {
    let backend = Backend::start("a").await;
    let airlock = frame_aware(
        &backend,
        r#"max_message = "1KiB", message_rate = "100/s""#,
        "",
    );
    let seen = python_client(&airlock, "echo", "5").await;
    assert_eq!(seen["greeting"], "path:/");
    assert_eq!(seen["echoes"], 5);
    assert_eq!(seen["close_code"], 1000);

    let log = tunnel_close(&airlock).await;
    assert_eq!(log["messages_from_client"], 5, "{log}");
    assert_eq!(
        log["messages_from_upstream"], 6,
        "the greeting and 5 echoes: {log}"
    );
    assert_eq!(
        log["largest_message_from_client"],
        "message 0".len(),
        "{log}"
    );
    assert_eq!(log["peer_close.by"], "client", "{log}");
    assert_eq!(log["peer_close.code"], 1000, "{log}");
    assert_eq!(log["peer_close.reason"], "done", "{log}");
    assert_eq!(log["reason"], "closed", "{log}");

    let response = crate::support::client::get(airlock.admin(), "/metrics").await;
    let metrics = parse_metrics(std::str::from_utf8(&response.body).unwrap());
    let messages = |direction| {
        sum(
            &metrics,
            "airlock_websocket_messages_total",
            &[("route", "main"), ("direction", direction)],
        )
    };
    assert_eq!(messages("from_client"), 5.0);
    assert_eq!(messages("from_upstream"), 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_closes_1009_to_the_client_and_1001_upstream() {
    let backend = Backend::start("a").await;
    let airlock = frame_aware(&backend, r#"max_message = "64KiB""#, "");
    let seen = python_client(&airlock, "oversize", "100000").await;
    assert_eq!(seen["close_code"], 1009, "{seen}");
    assert_eq!(seen["close_reason"], "message too big", "{seen}");
    assert_eq!(
        seen["echoes"], 1,
        "only the small message came back: {seen}"
    );

    let log = tunnel_close(&airlock).await;
    assert_eq!(log["reason"], "message_too_big", "{log}");
    assert_eq!(log["closed_by"], "client", "{log}");
    assert_eq!(log["close_code"], 1009, "{log}");
    assert_eq!(log["messages_from_client"], 1, "{log}");
    // The upstream never saw the big message: it was told the client is going away.
    assert_eq!(*backend.close_codes.lock().unwrap(), [1001]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_flood_closes_1008() {
    let backend = Backend::start("a").await;
    let airlock = frame_aware(&backend, r#"message_rate = "10/s", burst = 5"#, "");
    let seen = python_client(&airlock, "flood", "200").await;
    assert_eq!(seen["close_code"], 1008, "{seen}");
    assert!(
        seen["echoes"].as_u64().unwrap() < 20,
        "most of the flood was relayed: {seen}"
    );
    let log = tunnel_close(&airlock).await;
    assert_eq!(log["reason"], "message_rate", "{log}");
    assert_eq!(log["closed_by"], "client", "{log}");
    assert_eq!(*backend.close_codes.lock().unwrap(), [1001]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_closes_1001_on_both_sides() {
    let backend = Backend::start("a").await;
    let airlock = frame_aware(
        &backend,
        r#"max_message = "1MiB""#,
        "idle_timeout = \"500ms\"",
    );
    let seen = python_client(&airlock, "idle", "").await;
    assert_eq!(seen["close_code"], 1001, "{seen}");
    assert_eq!(seen["close_reason"], "going away", "{seen}");
    let log = tunnel_close(&airlock).await;
    assert_eq!(log["reason"], "idle_timeout", "{log}");
    assert_eq!(log["close_code"], 1001, "{log}");
    assert_eq!(*backend.close_codes.lock().unwrap(), [1001]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmasked_client_frame_closes_1002() {
    let backend = Backend::start("a").await;
    let airlock = frame_aware(&backend, r#"max_message = "1MiB""#, "");
    let request =
        b"GET / HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (mut stream, head) = upgrade_head(airlock.addr(), request).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // A text frame without a mask: RFC 6455 §5.1 forbids it from a client.
    stream.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    // The greeting frame, then the close frame with 1002.
    let close = got
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2..4] == 1002u16.to_be_bytes())
        .expect("a close frame with 1002");
    assert_eq!(got[close + 1] as usize, 2 + "protocol error".len());
    let log = tunnel_close(&airlock).await;
    assert_eq!(log["reason"], "protocol_error", "{log}");
    assert_eq!(*backend.close_codes.lock().unwrap(), [1001]);
}

/// A real WebSocket echo server (Python `websockets`, permessage-deflate on), killed on
/// drop.
struct PythonServer {
    child: std::process::Child,
    port: u16,
}

impl PythonServer {
    fn start() -> Self {
        use std::io::BufRead as _;
        let mut child = spawn_script("ws_conformance.py", &["server"]);
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server's port");
        Self { child, port }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every case of tests/python/ws_conformance.py against `url`: its verdicts.
async fn conformance(url: String) -> Value {
    run_script("ws_conformance.py", &["client".into(), url]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_aware_route_changes_no_conformance_verdict() {
    let server = PythonServer::start();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", server.port).parse().unwrap();
    let direct = conformance(format!("ws://{upstream}/")).await;
    let cases = direct.as_object().unwrap();
    assert_eq!(cases.len(), 26, "{direct}");
    assert!(
        cases
            .iter()
            .all(|(k, v)| *v == Value::Bool(true) || k.starts_with("close")),
        "the server itself fails a case: {direct}"
    );

    let route = "websocket = { max_message = \"2MiB\", message_rate = \"1000/s\" }";
    let airlock = Airlock::start(&single_route(&[upstream], route, ""));
    let through = conformance(format!("ws://{}/", airlock.addr())).await;
    assert_eq!(through, direct, "airlock changed a verdict");
    // Compressed frames (RSV1) passed: the deflate cases ran through the checked route.
    let refused = airlock.logs_where(|v| {
        v["event"] == "tunnel_close" && v["reason"].as_str().is_some_and(|r| r != "closed")
    });
    assert!(refused.is_empty(), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed() {
    let backend = Backend::start("a").await;
    let ws = r#"ping_interval = "300ms", pong_timeout = "300ms""#;
    let airlock = frame_aware(&backend, ws, "");
    let request =
        b"GET / HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    // A client that reads nothing more and answers nothing.
    let (_silent, head) = upgrade_head(airlock.addr(), request).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let log = tunnel_close(&airlock).await;
    assert_eq!(log["reason"], "pong_timeout", "{log}");
    assert_eq!(log["closed_by"], "client", "{log}");
    let lived = log["duration_ms"].as_f64().unwrap();
    assert!((550.0..3000.0).contains(&lived), "closed after {lived} ms");
    assert_eq!(*backend.close_codes.lock().unwrap(), [1001]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_pings_prove_the_client_alive_but_do_not_keep_an_idle_tunnel() {
    let backend = Backend::start("a").await;
    let ws = r#"ping_interval = "100ms", pong_timeout = "500ms""#;
    let airlock = frame_aware(&backend, ws, "idle_timeout = \"1500ms\"");
    // The websockets library answers every ping by itself.
    let seen = python_client(&airlock, "idle", "").await;
    assert_eq!(seen["close_code"], 1001, "{seen}");
    let seconds = seen["seconds"].as_f64().unwrap();
    assert!(
        seconds >= 1.4,
        "closed after {seconds} s, before the idle timeout"
    );
    let log = tunnel_close(&airlock).await;
    assert_eq!(log["reason"], "idle_timeout", "{log}");
}
