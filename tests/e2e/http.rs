//! Plain HTTP on the same routes: bodies, keep-alive, hop-by-hop headers, forwarding
//! headers, rewriting.

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{WebSocketStream, connect_async};

use crate::support::client::{Conn, get, get_with, request, status_of, upgrade_head};
use crate::support::{Airlock, Backend, config, single_route, with_listener_option};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_and_websockets_share_a_route() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let r = get(airlock.addr(), "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/socket.io/?EIO=4&transport=polling");
    let (mut ws, _) = connect_async(format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket",
        airlock.addr()
    ))
    .await
    .unwrap();
    let greeting = ws.next().await.unwrap().unwrap();
    assert_eq!(
        greeting.to_text().unwrap(),
        "path:/socket.io/?EIO=4&transport=websocket"
    );
    let r = get(airlock.addr(), "/api").await;
    assert_eq!(r.status, 200);
    airlock
        .wait_for_log("the last request's line", |v| v["url.path"] == "/api")
        .await;
    let logs = airlock.logs_where(|v| v["event"] == "request");
    assert!(
        logs.iter()
            .any(|v| v["upgrade"] == true && v["http.response.status_code"] == 101)
    );
    assert!(
        logs.iter()
            .any(|v| v["upgrade"] == false && v["http.response.status_code"] == 200)
    );
    assert!(logs.iter().all(|v| v["route"] == "main"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways_with_content_length_and_chunked() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let mut conn = Conn::open(airlock.addr()).await;

    let body = Bytes::from(vec![7u8; 200_000]);
    let r = conn.send(request("POST", "/echo", &[], body.clone())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);

    // A chunked request body of unknown length, sent in pieces.
    let stream = tokio::net::TcpStream::connect(airlock.addr())
        .await
        .unwrap();
    let (mut sender, c) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(c);
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..50)
        .map(|i| Ok(Frame::data(Bytes::from(format!("chunk {i};")))))
        .collect();
    let req = http::Request::post("/echo")
        .header("host", "t")
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.unwrap().to_bytes();
    let want: String = (0..50).map(|i| format!("chunk {i};")).collect();
    assert_eq!(got, want.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_keep_alive_and_upstream_connection_reuse() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let mut conn = Conn::open(airlock.addr()).await;
    for i in 0..5 {
        let r = conn.get(&format!("/n/{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["uri"], format!("/n/{i}"));
    }
    let head = conn
        .send(request("HEAD", "/n/head", &[], Bytes::new()))
        .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(
        head.header("content-length").is_some_and(|l| l != "0"),
        "{:?}",
        head.headers
    );
    // Six requests over one client connection went over one pooled upstream connection.
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded_but_end_to_end_ones_are() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let r = get_with(
        airlock.addr(),
        "/h",
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("cookie", "a=b"),
            ("origin", "https://app.example.com"),
            ("authorization", "Bearer t"),
        ],
    )
    .await;
    let seen = &r.json()["headers"];
    for hop in [
        "x-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
        "connection",
    ] {
        assert!(seen.get(hop).is_none(), "{hop} was forwarded: {seen}");
    }
    assert_eq!(seen["cookie"], "a=b");
    assert_eq!(seen["origin"], "https://app.example.com");
    assert_eq!(seen["authorization"], "Bearer t");
    assert_eq!(seen["host"], "test.local");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let r = get_with(
        airlock.addr(),
        "/",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
        ],
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "test.local");
    assert_eq!(h["x-forwarded-port"], airlock.addr().port().to_string());
    assert!(h.get("forwarded").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_from_a_trusted_peer_are_appended_to() {
    let backend = Backend::start("a").await;
    let cfg = with_listener_option(
        &single_route(&[backend.addr], "", ""),
        "trusted_proxies = [\"127.0.0.0/8\"]",
    );
    let airlock = Airlock::start(&cfg);
    let r = get_with(
        airlock.addr(),
        "/",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "203.0.113.7");
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_and_strips_prefixes() {
    let api = Backend::start("api").await;
    let chat = Backend::start("chat").await;
    let site = Backend::start("site").await;
    let airlock = Airlock::start(&config(&format!(
        r#"
[[route]]
name = "api"
host = "*.example.com"
path_prefix = "/api/"
strip_prefix = "/api"
upstream = "api"

[[route]]
name = "chat"
host = "chat.example.com"
path_exact = "/ws"
upstream = "chat"

[[route]]
name = "rooms"
path_regex = "^/rooms/[0-9]+$"
upstream = "chat"

[[route]]
name = "site"
host = "www.example.com"
upstream = "site"

[upstream.api]
servers = ["{}"]
[upstream.chat]
servers = ["{}"]
[upstream.site]
servers = ["{}"]
"#,
        api.addr, chat.addr, site.addr
    )));
    let at = |host: &'static str, path: &'static str| {
        let addr = airlock.addr();
        async move {
            let mut c = Conn::open(addr).await;
            let req = http::Request::get(path)
                .header("host", host)
                .body(Default::default())
                .unwrap();
            c.send(req).await
        }
    };
    let r = at("a.example.com", "/api/v1/users?limit=2").await;
    assert_eq!(r.json()["backend"], "api");
    assert_eq!(r.json()["uri"], "/v1/users?limit=2");
    assert_eq!(
        at("chat.example.com", "/ws").await.json()["backend"],
        "chat"
    );
    assert_eq!(
        at("CHAT.example.com:8080", "/ws").await.json()["backend"],
        "chat"
    );
    assert_eq!(
        at("anything.test", "/rooms/42").await.json()["backend"],
        "chat"
    );
    assert_eq!(
        at("www.example.com", "/index.html").await.json()["backend"],
        "site"
    );
    // The exact host has a route for every path, so it wins over the wildcard's /api/.
    assert_eq!(
        at("www.example.com", "/api/x").await.json()["uri"],
        "/api/x"
    );
    assert_eq!(at("chat.example.com", "/ws/more").await.status, 404);
    assert_eq!(at("example.com", "/api/x").await.status, 404);
    assert_eq!(at("anything.test", "/rooms/abc").await.status, 404);
}

/// A request in absolute form (`GET http://host/path`) reaches the upstream in origin
/// form, plain or upgrade; one in origin form reaches it unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_requests_reach_the_upstream_in_origin_form() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let mut c = Conn::open(airlock.addr()).await;
    for target in ["http://app.example.com/polling?x=1", "/polling?x=1"] {
        let req = http::Request::get(target)
            .header("host", "app.example.com")
            .body(Default::default())
            .unwrap();
        let r = c.send(req).await;
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(r.json()["uri"], "/polling?x=1", "{target}");
    }

    let (stream, head) = upgrade_head(
        airlock.addr(),
        b"GET http://app.example.com/socket.io/?EIO=4 HTTP/1.1\r\nHost: app.example.com\r\n\
          Upgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 101, "{head}");
    // The backend's first WebSocket message names the path it saw.
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
    let greeting = tokio::time::timeout(crate::support::WAIT, ws.next())
        .await
        .expect("the greeting in time")
        .unwrap()
        .unwrap();
    assert_eq!(greeting.to_text().unwrap(), "path:/socket.io/?EIO=4");
}
