//! WebSocket upgrades and the tunnel behind them.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::support::client::close_ws;
use crate::support::client::{read_all, status_of, upgrade_head};
use crate::support::{Airlock, Backend, WAIT, single_route};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn open(addr: std::net::SocketAddr, path: &str) -> (Ws, String) {
    let (mut ws, _) = tokio::time::timeout(WAIT, connect_async(format!("ws://{addr}{path}")))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let Message::Text(first) = next(&mut ws).await else {
        panic!("expected the backend's greeting")
    };
    (ws, first.to_string())
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("message in time")
        .expect("stream open")
        .expect("message")
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_text_and_binary_byte_exact_from_0_bytes_to_1_mib() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let (mut ws, greeting) = open(airlock.addr(), "/chat?room=1").await;
    assert_eq!(greeting, "path:/chat?room=1");
    for len in [0, 1, 125, 126, 127, 65_535, 65_536, 300_000, 1 << 20] {
        let data = pattern(len);
        ws.send(Message::binary(data.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::binary(data), "binary {len}");
        let text: String = (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text(text), "text {len}");
    }
    close_ws(ws).await;
    let closed = airlock
        .wait_for_log("tunnel close", |v| v["event"] == "tunnel_close")
        .await;
    assert!(closed["bytes_from_client"].as_u64().unwrap() > 2 * (1 << 20));
    assert!(closed["bytes_from_upstream"].as_u64().unwrap() > 2 * (1 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_fragmented_messages_and_pings() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let (mut ws, _) = open(airlock.addr(), "/").await;

    // A text message in three frames; the backend reassembles and echoes it whole.
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"frag"),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"men"),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"ted"),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await, Message::text("fragmented"));

    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(Bytes::from_static(b"are you there"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_the_101_with_upstream_headers_and_the_negotiated_subprotocol() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let request = format!(
        "GET /chat HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat.v2\r\n\
         Origin: https://app.example.com\r\nCookie: session=abc\r\n\r\n"
    );
    let mut stream = TcpStream::connect(airlock.addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    assert!(head.contains("sec-websocket-protocol: chat.v2"), "{head}");
    assert!(head.contains("x-backend-says: hello"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_101_answers_to_an_upgrade_are_relayed_as_they_are() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let err = connect_async(format!("ws://{}/refuse-upgrade", airlock.addr()))
        .await
        .unwrap_err();
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("expected an HTTP error, got {err}")
    };
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["x-backend"], "a");
    assert_eq!(response.body().as_deref(), Some(&b"no upgrades here\n"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_tunnels_each_echo_their_own_messages() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let addr = airlock.addr();
    let clients: Vec<_> = (0..100)
        .map(|c| {
            tokio::spawn(async move {
                let (mut ws, _) = open(addr, &format!("/client/{c}")).await;
                for m in 0..10 {
                    let text = format!("client {c} message {m}");
                    ws.send(Message::text(text.clone())).await.unwrap();
                    assert_eq!(next(&mut ws).await, Message::text(text));
                }
                close_ws(ws).await;
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while airlock.logs_where(|v| v["event"] == "tunnel_close").len() < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every tunnel logged its close"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_upgrade_protocol_works_and_half_close_is_propagated() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let mut stream = TcpStream::connect(airlock.addr()).await.unwrap();
    stream
        .write_all(
            b"GET /raw HTTP/1.1\r\nHost: t\r\nUpgrade: raw-echo\r\nConnection: upgrade\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(status_of(&read_head(&mut stream).await), 101);
    // Our half-close must reach the backend, which only then answers; then the whole
    // answer arrives, ended by a FIN (a reset would be an error here).
    let answer = send_last(&mut stream, b"hello, half-closed world").await;
    assert_eq!(answer, "received 24 bytes");
    let closed = airlock
        .wait_for_log("tunnel close", |v| v["event"] == "tunnel_close")
        .await;
    assert_eq!(closed["reason"], "closed");
    assert_eq!(closed["closed_by"], "client");
    assert_eq!(closed["bytes_from_client"], 24);
    assert_eq!(closed["bytes_from_upstream"], 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_are_closed_after_idle_timeout_but_busy_ones_are_not() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(
        &[backend.addr],
        "idle_timeout = \"400ms\"",
        "",
    ));
    let (mut ws, _) = open(airlock.addr(), "/").await;
    // Keep it busy for longer than the idle timeout: it must stay open.
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text(format!("{i}")));
    }
    // Then go quiet: the proxy closes the tunnel.
    let end = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("closed in time");
    assert!(
        matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
        "{end:?}"
    );
    let closed = airlock
        .wait_for_log("tunnel close", |v| v["event"] == "tunnel_close")
        .await;
    assert_eq!(closed["reason"], "idle_timeout");
    assert_eq!(closed["closed_by"], "proxy");
    let lived = closed["duration_ms"].as_f64().unwrap();
    assert!(
        lived >= 1200.0,
        "closed after {lived} ms, before the client went quiet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_applies_to_upgrades() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "strip_prefix = \"/ws\"", ""));
    let (_ws, greeting) = open(airlock.addr(), "/ws/chat?x=1").await;
    assert_eq!(greeting, "path:/chat?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_tunnel_whose_other_side_goes_quiet_is_closed_after_half_close_timeout() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(
        &[backend.addr],
        "half_close_timeout = \"300ms\"",
        "",
    ));
    let mut stream = TcpStream::connect(airlock.addr()).await.unwrap();
    stream
        .write_all(
            b"GET /fin HTTP/1.1\r\nHost: t\r\nUpgrade: server-fin\r\nConnection: upgrade\r\n\r\n",
        )
        .await
        .unwrap();
    // The upstream finishes sending at once; we see the 101 and then the end of the stream,
    // but keep our side open and say nothing.
    let response = read_all(&mut stream).await;
    assert_eq!(status_of(&response), 101);
    let closed = airlock
        .wait_for_log("tunnel close", |v| v["event"] == "tunnel_close")
        .await;
    assert_eq!(closed["reason"], "half_close_timeout");
    assert_eq!(closed["closed_by"], "proxy");
}

/// An upstream that answers every upgrade request with `reply`, written in pieces 20 ms
/// apart, then echoes whatever arrives (or, with `close`, closes the connection). Each
/// request head it got is sent on the channel.
async fn scripted_upstream(
    reply: Vec<Vec<u8>>,
    close: bool,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (reply, heads) = (reply.clone(), heads.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                for piece in reply {
                    if stream.write_all(&piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if close {
                    return;
                }
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, rx)
}

const RAW_UPGRADE: &[u8] =
    b"GET /raw?q=1 HTTP/1.1\r\nHost: t\r\nUpgrade: raw-echo\r\nConnection: upgrade\r\nX-Extra: 1\r\n\r\n";

async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf
}

/// Read a response head byte by byte, leaving what follows it unread.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.extend(read_exactly(stream, 1).await);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Send `bytes`, half-close, and read until the other side ends cleanly with a FIN.
async fn send_last(stream: &mut TcpStream, bytes: &[u8]) -> String {
    stream.write_all(bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the tunnel ends")
        .expect("the tunnel ends cleanly");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_in_pieces_with_bytes_right_behind_it_loses_nothing() {
    let (upstream, mut heads) = scripted_upstream(
        vec![
            b"HTTP/1.1 101 Switching Protocols\r\nUpg".to_vec(),
            b"rade: raw-echo\r\nConnection: Upgrade\r\nX-Up: 1\r\n\r\nearly bytes|".to_vec(),
        ],
        false,
    )
    .await;
    let airlock = Airlock::start(&single_route(&[upstream], "", ""));
    let (mut stream, head) = upgrade_head(airlock.addr(), RAW_UPGRADE).await;
    assert_eq!(status_of(&head), 101, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("x-up: 1") && head.contains("upgrade: raw-echo"),
        "{head}"
    );

    // What the upstream got: the request line and the client's headers, with the
    // forwarding headers added.
    let sent = heads.recv().await.unwrap();
    assert!(sent.starts_with("GET /raw?q=1 HTTP/1.1\r\n"), "{sent}");
    for line in [
        "host: t\r\n",
        "upgrade: raw-echo\r\n",
        "connection: upgrade\r\n",
        "x-extra: 1\r\n",
        "x-forwarded-for: 127.0.0.1\r\n",
    ] {
        assert!(sent.contains(line), "{line:?} missing from {sent}");
    }

    assert_eq!(read_exactly(&mut stream, 12).await, b"early bytes|");
    stream.write_all(b"ping").await.unwrap();
    assert_eq!(read_exactly(&mut stream, 4).await, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_reaches_the_client_without_its_hop_by_hop_headers() {
    let (upstream, _heads) = scripted_upstream(
        vec![
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw-echo\r\nConnection: Upgrade, X-Hop\r\n\
              X-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
              X-End: Kept As Sent\r\n\r\n"
                .to_vec(),
        ],
        false,
    )
    .await;
    let airlock = Airlock::start(&single_route(&[upstream], "", ""));
    let (mut stream, head) = upgrade_head(airlock.addr(), RAW_UPGRADE).await;
    assert_eq!(status_of(&head), 101, "{head}");
    let lines: Vec<String> = head
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.to_ascii_lowercase())
        .collect();
    let mut names: Vec<&str> = lines.iter().filter_map(|l| l.split(':').next()).collect();
    names.sort_unstable();
    assert_eq!(names, ["connection", "upgrade", "x-end"], "{head}");
    assert!(head.contains(": Kept As Sent\r\n"), "{head}");
    assert!(lines.contains(&"connection: upgrade".to_string()), "{head}");
    assert!(lines.contains(&"upgrade: raw-echo".to_string()), "{head}");
    stream.write_all(b"ping").await.unwrap();
    assert_eq!(read_exactly(&mut stream, 4).await, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_with_more_headers_than_the_fast_path_takes_still_opens_the_tunnel() {
    // 64 is the fast path's limit, 100 hyper's.
    let many: String = (0..90).map(|i| format!("X-H{i}: v{i}\r\n")).collect();
    let (upstream, _heads) = scripted_upstream(vec![
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw-echo\r\nConnection: Upgrade\r\n{many}\r\n")
            .into_bytes(),
    ], false)
    .await;
    let airlock = Airlock::start(&single_route(&[upstream], "", ""));
    let (mut stream, head) = upgrade_head(airlock.addr(), RAW_UPGRADE).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(head.to_ascii_lowercase().contains("x-h89: v89"), "{head}");
    stream.write_all(b"ping").await.unwrap();
    assert_eq!(read_exactly(&mut stream, 4).await, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_other_than_101_are_relayed_or_refused_with_502() {
    let chunked = vec![
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nX-Why: policy\r\n\r\n".to_vec(),
        b"5\r\nno, t\r\n".to_vec(),
        b"6\r\nhanks\n\r\n0\r\n\r\n".to_vec(),
    ];
    let (upstream, _heads) = scripted_upstream(chunked, false).await;
    let airlock = Airlock::start(&single_route(&[upstream], "", ""));
    let (mut stream, head) = upgrade_head(airlock.addr(), RAW_UPGRADE).await;
    assert_eq!(status_of(&head), 403, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-why: policy"),
        "{head}"
    );
    // Relayed chunked: the same bytes, in chunks of airlock's choosing.
    let body = read_all(&mut stream).await;
    assert!(
        body.contains("no, t") && body.contains("hanks\n") && body.ends_with("0\r\n\r\n"),
        "{body:?}"
    );

    for (reply, what) in [
        (vec![], "closed without an answer"),
        (vec![b"SSH-2.0-OpenSSH_9.2\r\n\r\n".to_vec()], "not HTTP"),
        (vec![b"HTTP/1.1 101 Switching".to_vec()], "a head cut short"),
    ] {
        let (upstream, _heads) = scripted_upstream(reply, true).await;
        let airlock = Airlock::start(&single_route(&[upstream], "", ""));
        let (_stream, head) = upgrade_head(airlock.addr(), RAW_UPGRADE).await;
        assert_eq!(status_of(&head), 502, "{what}: {head}");
        let failed = airlock
            .wait_for_log("the failure", |v| v["http.response.status_code"] == 502)
            .await;
        assert_eq!(failed["error.source"], "upstream", "{what}: {failed}");
    }
}

/// Read one response with a `content-length` body from `stream`: its head and its body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let head = read_head(stream).await;
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    let body = read_exactly(stream, length).await;
    (head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_head_in_pieces_with_bytes_right_behind_it_loses_nothing() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let mut stream = TcpStream::connect(airlock.addr()).await.unwrap();
    // The head arrives in three pieces, the last with the first tunnel bytes behind it.
    for piece in [
        &b"GET /raw HTTP/1.1\r\nHo"[..],
        b"st: t\r\nUpgrade: raw-echo\r\nConnection: upg",
        b"rade\r\n\r\nearly bytes|",
    ] {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let head = read_head(&mut stream).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: raw-echo"),
        "{head}"
    );
    // "early bytes|" and "and more": every byte reached the backend.
    assert_eq!(
        send_last(&mut stream, b"and more").await,
        "received 20 bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_leaves_the_connection_serving_requests() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(&[backend.addr], "", ""));
    let mut stream = TcpStream::connect(airlock.addr()).await.unwrap();
    stream
        .write_all(b"GET /refuse-upgrade HTTP/1.1\r\nHost: t\r\nUpgrade: raw-echo\r\nConnection: upgrade\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert_eq!(status_of(&head), 403, "{head}");
    assert!(head.contains("x-backend: a"), "{head}");
    assert_eq!(body, "no upgrades here\n");
    // The refusal did not end the connection: the next request on it is answered.
    stream
        .write_all(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut stream).await;
    assert_eq!(status_of(&head), 200, "{head}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["uri"], "/after");
    // A new connection that starts with a pipelined pair: an upgrade the upstream
    // refuses, and a request right behind it.
    let mut stream = TcpStream::connect(airlock.addr()).await.unwrap();
    stream
        .write_all(b"GET /refuse-upgrade HTTP/1.1\r\nHost: t\r\nUpgrade: raw-echo\r\nConnection: upgrade\r\n\r\nGET /pipelined HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_response(&mut stream).await.0), 403);
    let (head, body) = read_response(&mut stream).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert!(body.contains("/pipelined"), "{body}");
}
