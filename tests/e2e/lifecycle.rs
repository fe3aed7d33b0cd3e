//! Readiness, graceful shutdown and the grace period.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::client::{Ws, close_ws, get, open_ws};
use crate::support::{Airlock, Backend, single_route};

/// airlock with the given `shutdown_grace` and `drain_spread`, and one WebSocket open
/// through it. (The drain closes a lone tunnel half-way through the spread.)
async fn with_open_tunnel(grace: &str, spread: &str) -> (Backend, Airlock, Ws) {
    let backend = Backend::start("a").await;
    let cfg = single_route(&[backend.addr], "", "").replace(
        "shutdown_grace = \"5s\"",
        &format!("shutdown_grace = \"{grace}\"\ndrain_spread = \"{spread}\""),
    );
    let airlock = Airlock::start(&cfg);
    let ws = open_ws(airlock.addr(), "/").await;
    (backend, airlock, ws)
}

fn message_starts(v: &Value, prefix: &str) -> bool {
    v["message"].as_str().is_some_and(|m| m.starts_with(prefix))
}

fn closed_by_end(end: &Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> bool {
    matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_health_and_readiness() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    assert_eq!(get(airlock.admin(), "/healthz").await.status, 200);
    assert_eq!(get(airlock.admin(), "/readyz").await.status, 200);
    let upstreams = get(airlock.admin(), "/upstreams").await.json();
    assert_eq!(upstreams["upstreams"][0]["name"], "pool");
    assert_eq!(
        upstreams["upstreams"][0]["servers"][0]["addr"],
        backend.addr.to_string()
    );
    assert_eq!(get(airlock.admin(), "/nope").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_open_tunnels_until_they_close_then_exits() {
    // The drain would close the tunnel after 2.5 s; the client finishes before.
    let (_backend, mut airlock, mut ws) = with_open_tunnel("5s", "5s").await;
    airlock.signal("TERM");
    airlock
        .wait_for_log("shutdown", |v| message_starts(v, "shutting down"))
        .await;
    // Draining: not ready, no new connections, but the open tunnel still works.
    assert_eq!(get(airlock.admin(), "/readyz").await.status, 503);
    assert!(
        TcpStream::connect(airlock.addr()).await.is_err(),
        "still accepting after SIGTERM"
    );
    for i in 0..3 {
        ws.send(Message::text(format!("during drain {i}")))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("during drain {i}"))
        );
    }
    assert!(airlock.is_running());
    close_ws(ws).await;
    let status = airlock.wait_exit(Duration::from_secs(4)).await;
    assert!(status.success(), "{status}");
    let closed = airlock
        .wait_for_log("tunnel close", |v| v["event"] == "tunnel_close")
        .await;
    assert_eq!(closed["reason"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_still_open_when_the_grace_period_ends_are_closed() {
    // The drain sends its close frame at 150 ms, but the client never reads it, so never
    // answers: the close handshake is still waiting when the grace ends.
    let (_backend, mut airlock, mut ws) = with_open_tunnel("300ms", "300ms").await;
    airlock.signal("TERM");
    let status = airlock.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}");
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("tunnel closed");
    assert!(closed_by_end(&end), "{end:?}");
    let closed = airlock
        .wait_for_log("tunnel close", |v| v["event"] == "tunnel_close")
        .await;
    assert_eq!(closed["reason"], "shutdown");
    assert_eq!(closed["closed_by"], "proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let (_backend, mut airlock, _ws) = with_open_tunnel("1h", "1h").await;
    airlock.signal("TERM");
    airlock
        .wait_for_log("shutdown", |v| message_starts(v, "shutting down"))
        .await;
    airlock.signal("INT");
    airlock.wait_exit(Duration::from_secs(5)).await;
    airlock
        .wait_for_log("second signal", |v| message_starts(v, "second signal"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_accepted_before_shutdown_gets_its_first_request_answered() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // The open tunnel keeps the process draining for a few seconds.
    let (_backend, airlock, _ws) = with_open_tunnel("10s", "8s").await;
    let mut late = TcpStream::connect(airlock.addr()).await.unwrap();
    let mut silent = TcpStream::connect(airlock.addr()).await.unwrap();
    // Both accepted, and waiting for a first request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    airlock.signal("TERM");
    airlock
        .wait_for_log("the shutdown", |v| {
            v["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("shutting down")
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    late.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), late.read_to_end(&mut answer))
        .await
        .expect("the connection is closed after its answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    // One that says nothing is closed after the grace (1 s), without an answer.
    let mut nothing = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut nothing))
        .await
        .expect("the silent connection is closed")
        .unwrap();
    assert!(nothing.is_empty());
}
