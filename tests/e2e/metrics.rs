//! `GET /metrics` through the real binary, read by a real parser (Python
//! `prometheus_client`'s OpenMetrics parser): every counter moves by exactly the number
//! of requests, handshakes, rejections, plugin calls and tunnels made, and the scrape-time
//! gauges say what is open now.

use std::net::SocketAddr;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::support::client::{get, get_with, raw, status_of, upgrade_head};
use crate::support::python::{Sample, parse_metrics, sum};
use crate::support::{Airlock, Backend, config, plugin_wasm, refused_addr};

const ORIGIN: &str = "https://app.example.com";

async fn scrape(airlock: &Airlock) -> Vec<Sample> {
    let response = get(airlock.admin(), "/metrics").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    parse_metrics(std::str::from_utf8(&response.body).unwrap())
}

/// A WebSocket handshake with `origin`; its status.
async fn handshake(addr: SocketAddr, path: &str, origin: &str) -> u16 {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: {origin}\r\n\r\n"
    );
    status_of(&upgrade_head(addr, request.as_bytes()).await.1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_happened_and_parse_as_openmetrics() {
    let backend = Backend::start("a").await;
    let dead = refused_addr();
    let route = |name: &str, prefix: &str, pool: &str, extra: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\nhost = \"test.local\"\npath_prefix = \"{prefix}\"\nupstream = \"{pool}\"\n{extra}\n"
        )
    };
    let config = config(&format!(
        "{}{}{}{}\
         [upstream.pool]\nservers = [\"{}\"]\n\n\
         [upstream.dead]\nservers = [\"{dead}\"]\nmax_fails = 0\n\n\
         [plugin.origin]\nwasm = \"{}\"\nconfig = {{ allow = [\"{ORIGIN}\"] }}\n\n\
         [plugin.tag]\nwasm = \"{}\"\nconfig = {{ attributes = [[\"seen\", \"yes\"]] }}\n\n\
         [plugin.boom]\nwasm = \"{}\"\nconfig = {{ mode = \"trap\" }}\n\n\
         [limit.l]\nrate = \"2/h\"\n",
        route("chat", "/", "pool", "plugins = [\"origin\", \"tag\"]"),
        route("trap", "/trap", "pool", "plugins = [\"boom\"]"),
        route("limited", "/limited", "pool", "limits = [\"l\"]"),
        route("dead", "/dead", "dead", ""),
        backend.addr,
        plugin_wasm("origin_allowlist.wasm"),
        plugin_wasm("test_guest.wasm"),
        plugin_wasm("test_guest.wasm"),
    ));
    let airlock = Airlock::start(&config);
    let addr = airlock.addr();
    let before = scrape(&airlock).await;
    assert_eq!(sum(&before, "airlock_requests_total", &[]), 0.0);
    assert_eq!(
        sum(
            &before,
            "airlock_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // The test client sends `Host: test.local`.
    let headers = [("origin", ORIGIN)];
    // 5 plain requests through both plugins.
    for _ in 0..5 {
        assert_eq!(get_with(addr, "/", &headers).await.status, 200);
    }
    // 3 WebSockets, each with a message each way, closed by the client.
    for _ in 0..3 {
        let request = http::Request::builder()
            .uri(format!("ws://{addr}/ws"))
            .header("host", "test.local")
            .header("origin", ORIGIN)
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.status(), 101);
        // The backend greets each WebSocket with the path it saw, then echoes.
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("path:/ws"));
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
        crate::support::client::close_ws(ws).await;
    }
    // 2 handshakes from an origin the first plugin refuses.
    for _ in 0..2 {
        assert_eq!(handshake(addr, "/ws", "https://evil.example").await, 403);
    }
    // 2 requests to a plugin that traps.
    for _ in 0..2 {
        assert_eq!(get_with(addr, "/trap", &headers).await.status, 503);
    }
    // 3 requests on a 2/h limit.
    let limited: Vec<u16> = futures_util::future::join_all(
        (0..3).map(|_| async { get_with(addr, "/limited", &headers).await.status }),
    )
    .await;
    assert_eq!(
        limited.iter().filter(|s| **s == 429).count(),
        1,
        "{limited:?}"
    );
    // 1 request to a dead upstream, 1 for no route, 1 malformed.
    assert_eq!(get_with(addr, "/dead", &headers).await.status, 502);
    let other_host = b"GET / HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n";
    assert_eq!(status_of(&raw(addr, other_host).await), 404);
    let malformed =
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello";
    assert_eq!(status_of(&raw(addr, malformed).await), 400);

    // A tunnel counts its close in the metrics before it logs it.
    wait_for_tunnel_closes(&airlock, 3).await;
    let m = scrape(&airlock).await;
    let requests = |labels: &[(&str, &str)]| sum(&m, "airlock_requests_total", labels);
    assert_eq!(
        requests(&[("route", "chat"), ("kind", "http"), ("code", "200")]),
        5.0
    );
    assert_eq!(
        requests(&[("route", "chat"), ("kind", "upgrade"), ("code", "101")]),
        3.0
    );
    assert_eq!(
        requests(&[("route", "chat"), ("kind", "upgrade"), ("code", "403")]),
        2.0
    );
    assert_eq!(requests(&[("route", "trap"), ("code", "503")]), 2.0);
    assert_eq!(requests(&[("route", "limited"), ("code", "200")]), 2.0);
    assert_eq!(requests(&[("route", "limited"), ("code", "429")]), 1.0);
    assert_eq!(requests(&[("route", "dead"), ("code", "502")]), 1.0);
    assert_eq!(requests(&[("route", ""), ("code", "404")]), 1.0);
    assert_eq!(requests(&[("route", ""), ("code", "400")]), 1.0);
    assert_eq!(requests(&[]), 5.0 + 3.0 + 2.0 + 2.0 + 3.0 + 1.0 + 1.0 + 1.0);
    // The duration histogram saw each request once.
    let durations =
        |labels: &[(&str, &str)]| sum(&m, "airlock_request_duration_seconds_count", labels);
    assert_eq!(durations(&[("route", "chat"), ("kind", "http")]), 5.0);
    assert_eq!(durations(&[("route", "chat"), ("kind", "upgrade")]), 5.0);

    let errors = |labels: &[(&str, &str)]| sum(&m, "airlock_request_errors_total", labels);
    assert_eq!(
        errors(&[
            ("route", "chat"),
            ("source", "plugin"),
            ("cause", "plugin_rejected")
        ]),
        2.0
    );
    assert_eq!(
        errors(&[
            ("route", "trap"),
            ("source", "plugin"),
            ("cause", "plugin_failed")
        ]),
        2.0
    );
    assert_eq!(
        errors(&[
            ("route", "limited"),
            ("source", "limit"),
            ("cause", "limit_rate")
        ]),
        1.0
    );
    assert_eq!(
        errors(&[
            ("route", "dead"),
            ("source", "upstream"),
            ("cause", "connect")
        ]),
        1.0
    );
    assert_eq!(
        errors(&[("route", ""), ("source", "client"), ("cause", "no_route")]),
        1.0
    );
    assert_eq!(
        errors(&[("route", ""), ("source", "client"), ("cause", "malformed")]),
        1.0
    );
    assert_eq!(errors(&[]), 8.0);

    // Plugins: origin ran on every chat request (8 allowed, 2 rejected), tag on the 8 it
    // let through, boom failed twice, as a trap.
    let calls = |labels: &[(&str, &str)]| sum(&m, "airlock_plugin_calls_total", labels);
    assert_eq!(calls(&[("plugin", "origin"), ("result", "allow")]), 8.0);
    assert_eq!(calls(&[("plugin", "origin"), ("result", "reject")]), 2.0);
    assert_eq!(calls(&[("plugin", "tag"), ("result", "allow")]), 8.0);
    assert_eq!(calls(&[("plugin", "tag"), ("result", "reject")]), 0.0);
    assert_eq!(calls(&[("plugin", "boom"), ("result", "error")]), 2.0);
    assert_eq!(
        sum(
            &m,
            "airlock_plugin_errors_total",
            &[("plugin", "boom"), ("cause", "trap")]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &m,
            "airlock_plugin_call_duration_seconds_count",
            &[("plugin", "origin")]
        ),
        10.0
    );
    assert!(
        sum(
            &m,
            "airlock_plugin_call_duration_seconds_sum",
            &[("plugin", "origin")]
        ) > 0.0
    );

    // Limits and the upstream.
    assert_eq!(
        sum(
            &m,
            "airlock_limit_refusals_total",
            &[("limit", "l"), ("reason", "rate")]
        ),
        1.0
    );
    assert_eq!(
        sum(&m, "airlock_limit_tracked_keys", &[("limit", "l")]),
        1.0
    );
    let dead = dead.to_string();
    assert_eq!(
        sum(
            &m,
            "airlock_upstream_failures_total",
            &[("pool", "dead"), ("server", &dead)]
        ),
        1.0
    );
    let live = backend.addr.to_string();
    let server = [("pool", "pool"), ("server", live.as_str())];
    assert_eq!(sum(&m, "airlock_upstream_server_up", &server), 1.0);
    assert_eq!(sum(&m, "airlock_upstream_server_drained", &server), 0.0);
    assert_eq!(sum(&m, "airlock_upstream_server_tunnels", &server), 0.0);

    // Tunnels: all three ended by a close handshake (the server closes TCP first, as
    // RFC 6455 has it), the counts by who closed them those of the access log, and their
    // bytes those the access log counted.
    assert_eq!(sum(&m, "airlock_tunnels_open", &[("route", "chat")]), 0.0);
    assert_eq!(
        sum(
            &m,
            "airlock_tunnel_closes_total",
            &[("route", "chat"), ("reason", "closed")]
        ),
        3.0
    );
    for side in ["client", "upstream"] {
        let logged = airlock
            .logs_where(|v| v["event"] == "tunnel_close" && v["closed_by"] == side)
            .len();
        let counted = sum(
            &m,
            "airlock_tunnel_closes_total",
            &[("route", "chat"), ("closed_by", side)],
        );
        assert_eq!(counted, logged as f64, "closed by {side}");
    }
    assert_eq!(
        sum(
            &m,
            "airlock_tunnel_duration_seconds_count",
            &[("route", "chat")]
        ),
        3.0
    );
    let logged = |field: &str| -> f64 {
        airlock
            .logs_where(|v| v["event"] == "tunnel_close")
            .iter()
            .map(|v| v[field].as_f64().unwrap())
            .sum()
    };
    let bytes = |direction| {
        sum(
            &m,
            "airlock_tunnel_bytes_total",
            &[("route", "chat"), ("direction", direction)],
        )
    };
    assert_eq!(bytes("from_client"), logged("bytes_from_client"));
    assert_eq!(bytes("from_upstream"), logged("bytes_from_upstream"));
    assert!(bytes("from_client") > 0.0);

    // Connections: every one the tests opened was accepted on the listener.
    let accepted = sum(
        &m,
        "airlock_connections_accepted_total",
        &[("listener", "public")],
    );
    assert!(accepted >= 18.0, "accepted {accepted}");

    // Another scrape after two more requests: the counter moved by exactly two.
    for _ in 0..2 {
        assert_eq!(get_with(addr, "/", &headers).await.status, 200);
    }
    let after = scrape(&airlock).await;
    let ok = |s: &[Sample]| {
        sum(
            s,
            "airlock_requests_total",
            &[("route", "chat"), ("code", "200")],
        )
    };
    assert_eq!(ok(&after) - ok(&m), 2.0);
}

/// Wait (bounded) until `n` tunnel-close lines are logged.
async fn wait_for_tunnel_closes(airlock: &Airlock, n: usize) {
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    while airlock.logs_where(|v| v["event"] == "tunnel_close").len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {n} tunnel closes logged:\n{}",
            airlock.dump_logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_show_in_the_gauges_while_they_are_open() {
    let backend = Backend::start("a").await;
    let config = crate::support::single_route(&[backend.addr], "", "");
    let airlock = Airlock::start(&config);
    let mut open = Vec::new();
    for _ in 0..4 {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", airlock.addr()))
            .await
            .unwrap();
        open.push(ws);
    }
    let server = backend.addr.to_string();
    let m = scrape(&airlock).await;
    assert_eq!(sum(&m, "airlock_tunnels_open", &[("route", "main")]), 4.0);
    assert_eq!(
        sum(
            &m,
            "airlock_upstream_server_tunnels",
            &[("pool", "pool"), ("server", &server)]
        ),
        4.0
    );
    assert_eq!(sum(&m, "airlock_connections_open", &[]), 4.0);
    for ws in open.drain(..) {
        crate::support::client::close_ws(ws).await;
    }
    wait_for_tunnel_closes(&airlock, 4).await;
    let m = scrape(&airlock).await;
    assert_eq!(sum(&m, "airlock_tunnels_open", &[("route", "main")]), 0.0);
}
