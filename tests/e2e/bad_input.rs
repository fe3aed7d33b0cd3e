//! Malformed, oversized, slow and unroutable requests get a clear status, and the proxy
//! keeps serving everyone else.

use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::support::client::{get, raw, read_all, status_of};
use crate::support::{Airlock, Backend, config, single_route, with_listener_option};

async fn still_serving(airlock: &Airlock) {
    assert_eq!(get(airlock.addr(), "/healthy").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    ] {
        let response = raw(airlock.addr(), garbage).await;
        assert_eq!(
            status_of(&response),
            400,
            "{:?} -> {response:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    still_serving(&airlock).await;
    airlock
        .wait_for_log("400 access line", |v| {
            v["http.response.status_code"] == 400 && v["error.source"] == "client"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let backend = Backend::start("a").await;
    let cfg = with_listener_option(
        &single_route(&[backend.addr], "", ""),
        "max_header_bytes = \"8KiB\"",
    );
    let airlock = Airlock::start(&cfg);
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Fill: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(4000)
    );
    assert_eq!(status_of(&raw(airlock.addr(), ok.as_bytes()).await), 200);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Fill: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(status_of(&raw(airlock.addr(), big.as_bytes()).await), 431);
    let many: String = (0..400).map(|i| format!("X-H{i}: value\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(status_of(&raw(airlock.addr(), many.as_bytes()).await), 431);
    still_serving(&airlock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_get_408_and_silent_idle_connections_are_closed() {
    let backend = Backend::start("a").await;
    let cfg = with_listener_option(
        &single_route(&[backend.addr], "", ""),
        "handshake_timeout = \"300ms\"",
    );
    let airlock = Airlock::start(&cfg);
    let mut slow = TcpStream::connect(airlock.addr()).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(airlock.addr()).await.unwrap();
    // Meanwhile other clients are served.
    still_serving(&airlock).await;
    let response = read_all(&mut slow).await;
    assert_eq!(status_of(&response), 408, "{response:?}");
    // A connection that never sent a byte is closed without a response.
    assert_eq!(read_all(&mut silent).await, "");
    airlock
        .wait_for_log("408 access line", |v| v["http.response.status_code"] == 408)
        .await;
    still_serving(&airlock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_requests_get_404() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&config(&format!(
        "[[route]]\nname = \"only\"\nhost = \"only.example.com\"\nupstream = \"pool\"\n\n[upstream.pool]\nservers = [\"{}\"]\n",
        backend.addr
    )));
    let response = raw(
        airlock.addr(),
        b"GET /x HTTP/1.1\r\nHost: other.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 404);
    let response = raw(
        airlock.addr(),
        b"GET /x HTTP/1.1\r\nHost: only.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 200);
    let line = airlock
        .wait_for_log("404 access line", |v| v["http.response.status_code"] == 404)
        .await;
    assert_eq!(line["error.source"], "client");
    // No backend connection was made for the unrouted request.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
