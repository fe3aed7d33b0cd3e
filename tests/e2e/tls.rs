//! TLS termination, SNI, ALPN and HTTP/2, WebSockets over HTTP/2 (RFC 8441), mutual TLS,
//! the HTTPS redirect, HSTS, TLS to upstreams and certificate reload, with certificates
//! made for each test.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::tls::{Ca, Leaf, alpn, connect, peer_cert};
use crate::support::{Airlock, Backend, TempDir, WAIT, assert_config_refused, plugin_wasm};

/// A CA, certificates for `a.test` and `b.test`, and a directory holding their files.
struct Certs {
    dir: TempDir,
    ca: Ca,
    a: Leaf,
    b: Leaf,
}

impl Certs {
    fn new() -> Self {
        let dir = TempDir::new();
        let ca = Ca::new("airlock test CA");
        let a = ca.leaf("a.test", &["a.test", "*.a.test"]);
        let b = ca.leaf("b.test", &["b.test"]);
        a.write(dir.path(), "a");
        b.write(dir.path(), "b");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca, a, b }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// One TLS listener "secure" with both certificates (a first) plus `tls_extra` in its
    /// `[listener.tls]`, and `rest` (routes, upstreams) after it.
    fn config(&self, tls_extra: &str, rest: &str) -> String {
        format!(
            "shutdown_grace = \"5s\"\n\n[[listener]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\nhandshake_timeout = \"1s\"\n[listener.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}]\n{tls_extra}\n\n{rest}",
            self.path("a.pem"),
            self.path("a-key.pem"),
            self.path("b.pem"),
            self.path("b-key.pem"),
        )
    }
}

/// A route for every path to `backend`, with `route_extra` in the route table.
fn route_to(backend: SocketAddr, route_extra: &str) -> String {
    format!(
        "[[route]]\nname = \"main\"\nupstream = \"pool\"\n{route_extra}\n\n[upstream.pool]\nservers = [\"{backend}\"]\n"
    )
}

/// A test-guest plugin that reports what it saw in the response header `x-saw`.
fn echo_plugin() -> String {
    format!(
        "[plugin.echo]\nwasm = \"{}\"\nconfig = {{ echo_request_header = \"x-saw\" }}\n",
        plugin_wasm("test_guest.wasm")
    )
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    fn header_json(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(self.headers[name].to_str().unwrap()).unwrap()
    }
}

/// GET `path` over an established TLS stream with HTTP/1.1 or, if ALPN chose it, HTTP/2.
async fn get_over<S>(stream: S, h2: bool, path: &str) -> Reply
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let io = TokioIo::new(stream);
    let (status, headers, body) = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("https://a.test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("response in time")
            .unwrap();
        let (parts, body) = res.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", "a.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("response in time")
            .unwrap();
        let (parts, body) = res.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    };
    Reply {
        status: status.as_u16(),
        headers,
        body,
    }
}

async fn https_get(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    path: &str,
) -> Reply {
    let tls = connect(addr, "a.test", config)
        .await
        .expect("TLS handshake");
    let h2 = alpn(&tls).as_deref() == Some("h2");
    get_over(tls, h2, path).await
}

async fn wss_open(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    sni: &str,
    path: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
    String,
) {
    let tls = connect(addr, sni, config).await.expect("TLS handshake");
    let (mut ws, response) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("wss://{sni}{path}"), tls),
    )
    .await
    .expect("WebSocket handshake in time")
    .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    let greeting = ws_next(&mut ws).await.into_text().unwrap().to_string();
    (ws, greeting)
}

async fn ws_next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("message in time")
        .expect("stream open")
        .expect("message")
}

async fn ws_echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(ws_next(ws).await, Message::text(text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_echo_through_tls_with_a_verifying_client() {
    let certs = Certs::new();
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&certs.config("", &route_to(backend.addr, "")));
    let (mut ws, greeting) = wss_open(
        airlock.addr(),
        certs.ca.client(&["http/1.1"]),
        "a.test",
        "/headers",
    )
    .await;
    let seen: serde_json::Value =
        serde_json::from_str(greeting.strip_prefix("request:").unwrap()).unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
    for len in [1, 200, 70_000] {
        let text = "x".repeat(len);
        ws_echo(&mut ws, &text).await;
    }
    crate::support::client::close_ws(ws).await;
    let closed = airlock
        .wait_for_log("tunnel close", |v| v["event"] == "tunnel_close")
        .await;
    assert_eq!(closed["reason"], "closed", "{closed}");
    let request = airlock
        .wait_for_log("access log", |v| v["event"] == "request")
        .await;
    assert!(
        request["tls.version"] == "TLSv1.3",
        "access log names the TLS version: {request}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_matching_certificate_and_unknown_names_get_the_first() {
    let certs = Certs::new();
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&certs.config("", &route_to(backend.addr, "")));
    let client = certs.ca.client(&["http/1.1"]);
    for (sni, want) in [
        ("a.test", &certs.a.der),
        ("x.a.test", &certs.a.der),
        ("b.test", &certs.b.der),
    ] {
        let tls = connect(airlock.addr(), sni, client.clone()).await.unwrap();
        assert_eq!(&peer_cert(&tls), want, "certificate for {sni}");
    }
    // An unknown name gets the default (first) certificate, which a verifying client then
    // refuses for that name.
    let err = connect(airlock.addr(), "unknown.test", client)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    let no_verify = {
        // Accept anything, to look at which certificate came.
        #[derive(Debug)]
        struct Any;
        impl rustls::client::danger::ServerCertVerifier for Any {
            fn verify_server_cert(
                &self,
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &[rustls::pki_types::CertificateDer<'_>],
                _: &rustls::pki_types::ServerName<'_>,
                _: &[u8],
                _: rustls::pki_types::UnixTime,
            ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            fn verify_tls12_signature(
                &self,
                _: &[u8],
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
            {
                Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
            }
            fn verify_tls13_signature(
                &self,
                _: &[u8],
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
            {
                Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
            }
            fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
                rustls::crypto::ring::default_provider()
                    .signature_verification_algorithms
                    .supported_schemes()
            }
        }
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(Any))
            .with_no_client_auth(),
        )
    };
    let tls = connect(airlock.addr(), "unknown.test", no_verify)
        .await
        .unwrap();
    assert_eq!(peer_cert(&tls), certs.a.der, "default certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_serves_plain_requests_and_hsts_is_on_every_response() {
    let certs = Certs::new();
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&certs.config(
        "hsts = \"max-age=63072000; includeSubDomains\"",
        &route_to(backend.addr, ""),
    ));
    for (offer, want) in [
        (vec!["h2", "http/1.1"], "h2"),
        (vec!["http/1.1"], "http/1.1"),
    ] {
        let tls = connect(airlock.addr(), "a.test", certs.ca.client(&offer))
            .await
            .unwrap();
        assert_eq!(alpn(&tls).as_deref(), Some(want));
        let reply = get_over(tls, want == "h2", "/hello?x=1").await;
        assert_eq!(reply.status, 200, "{want}");
        assert_eq!(
            reply.headers["strict-transport-security"],
            "max-age=63072000; includeSubDomains"
        );
        let seen = reply.json();
        assert_eq!(seen["uri"], "/hello?x=1", "{seen}");
        assert_eq!(seen["headers"]["host"], "a.test", "{seen}");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "https", "{seen}");
    }
    // A WebSocket's `101` carries it in place of the upstream's own.
    let tls = connect(airlock.addr(), "a.test", certs.ca.client(&["http/1.1"]))
        .await
        .unwrap();
    let (ws, response) = tokio_tungstenite::client_async("wss://a.test/ws", tls)
        .await
        .expect("WebSocket handshake");
    let sts: Vec<_> = response
        .headers()
        .get_all("strict-transport-security")
        .iter()
        .collect();
    assert_eq!(sts, ["max-age=63072000; includeSubDomains"]);
    crate::support::client::close_ws(ws).await;
    // Errors carry it too.
    drop(airlock);
    let airlock = Airlock::start(&certs.config(
        "hsts = \"max-age=60\"",
        &route_to(backend.addr, "path_prefix = \"/only\""),
    ));
    let reply = https_get(airlock.addr(), certs.ca.client(&["h2"]), "/elsewhere").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["strict-transport-security"], "max-age=60");
}

/// A WebSocket on one HTTP/2 stream (RFC 8441), with hand-made frames.
struct H2Ws {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    buf: Vec<u8>,
}

impl H2Ws {
    async fn open(
        client: &mut h2::client::SendRequest<Bytes>,
        path: &str,
    ) -> (Self, http::response::Parts) {
        let mut req = http::Request::builder()
            .method("CONNECT")
            .uri(format!("https://a.test{path}"))
            .header("sec-websocket-version", "13")
            .header("origin", "https://a.test")
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(h2::ext::Protocol::from("websocket"));
        let mut client = client.clone().ready().await.unwrap();
        let (response, send) = client.send_request(req, false).unwrap();
        let response = tokio::time::timeout(WAIT, response)
            .await
            .expect("response in time")
            .unwrap();
        let (parts, recv) = response.into_parts();
        (
            Self {
                send,
                recv,
                buf: Vec::new(),
            },
            parts,
        )
    }

    fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        let mask = [0x12, 0x34, 0x56, 0x78];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.send.send_data(frame.into(), false).unwrap();
    }

    /// The next whole (unfragmented, unmasked) frame: (opcode, payload).
    async fn next_frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buf.len() >= 2 {
                let (len, header) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= header + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return (opcode, payload);
                }
            }
            let data = tokio::time::timeout(WAIT, self.recv.data())
                .await
                .expect("data in time")
                .expect("stream open")
                .unwrap();
            let _ = self.recv.flow_control().release_capacity(data.len());
            self.buf.extend_from_slice(data.chunk());
        }
    }

    async fn echo(&mut self, payload: &[u8]) {
        self.send_frame(0x2, payload);
        let (opcode, back) = self.next_frame().await;
        assert_eq!(opcode, 0x2);
        assert!(
            back == payload,
            "echo of {} bytes came back different",
            payload.len()
        );
    }
}

/// An HTTP/2 connection (ALPN h2) on which the server has enabled extended CONNECT.
async fn h2_client(addr: SocketAddr, certs: &Certs) -> h2::client::SendRequest<Bytes> {
    let tls = connect(addr, "a.test", certs.ca.client(&["h2"]))
        .await
        .unwrap();
    assert_eq!(alpn(&tls).as_deref(), Some("h2"));
    h2_ready(tls).await
}

/// An HTTP/2 client on `io`, once the server's SETTINGS enabled extended CONNECT.
async fn h2_ready<S>(io: S) -> h2::client::SendRequest<Bytes>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (client, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let client = client.ready().await.unwrap();
    // SETTINGS arrive shortly after the handshake.
    for _ in 0..200 {
        if client.is_extended_connect_protocol_enabled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        client.is_extended_connect_protocol_enabled(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL"
    );
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_http2_share_one_connection_and_close_independently() {
    let certs = Certs::new();
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&certs.config(
        "",
        &format!(
            "{}\n{}",
            route_to(backend.addr, "plugins = [\"echo\"]"),
            echo_plugin()
        ),
    ));
    let mut client = h2_client(airlock.addr(), &certs).await;

    let mut sockets = Vec::new();
    for i in 0..3 {
        let (mut ws, parts) = H2Ws::open(&mut client, &format!("/room/{i}")).await;
        assert_eq!(parts.status, 200, "stream {i}");
        assert!(parts.headers.get("sec-websocket-accept").is_none());
        // The plugin saw an ordinary WebSocket upgrade.
        let saw: serde_json::Value =
            serde_json::from_str(parts.headers["x-saw"].to_str().unwrap()).unwrap();
        assert_eq!(saw["upgrade"], "websocket", "{saw}");
        assert_eq!(saw["method"], "GET", "{saw}");
        assert_eq!(saw["scheme"], "https", "{saw}");
        assert_eq!(saw["tls"]["alpn"], "h2", "{saw}");
        let (opcode, greeting) = ws.next_frame().await;
        assert_eq!(opcode, 0x1);
        assert_eq!(
            String::from_utf8(greeting).unwrap(),
            format!("path:/room/{i}")
        );
        sockets.push(ws);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.echo(format!("hello {i}").as_bytes()).await;
    }
    // More than the 64 KiB initial flow-control window, both ways.
    let big: Vec<u8> = (0..300_000).map(|i| (i % 251) as u8).collect();
    sockets[1].echo(&big).await;

    // Closing one stream leaves the others running.
    let mut first = sockets.remove(0);
    first.send.send_reset(h2::Reason::CANCEL);
    let closed = airlock
        .wait_for_log("tunnel close", |v| v["event"] == "tunnel_close")
        .await;
    assert_eq!(closed["closed_by"], "client", "{closed}");
    for ws in &mut sockets {
        ws.echo(b"still here").await;
    }
    // A new stream on the same connection still opens.
    let (mut again, parts) = H2Ws::open(&mut client, "/room/again").await;
    assert_eq!(parts.status, 200);
    again.next_frame().await;
    again.echo(b"again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_listener_serves_http2_by_prior_knowledge_and_http1_alike() {
    let backend = Backend::start("a").await;
    let config = format!(
        "[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\nh2c = true\nhandshake_timeout = \"1s\"\n\n{}",
        route_to(backend.addr, "")
    );
    let airlock = Airlock::start(&config);
    let addr = airlock.addr();

    // Plain requests: HTTP/2 with prior knowledge, then HTTP/1.1, on the same listener.
    for h2 in [true, false] {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let reply = get_over(tcp, h2, "/hello?x=1").await;
        assert_eq!(reply.status, 200, "h2: {h2}");
        let seen = reply.json();
        assert_eq!(seen["uri"], "/hello?x=1", "{seen}");
        assert_eq!(seen["headers"]["x-forwarded-proto"], "http", "{seen}");
    }

    // WebSockets over h2c (RFC 8441), two on one connection.
    let mut client = h2_ready(TcpStream::connect(addr).await.unwrap()).await;
    let mut sockets = Vec::new();
    for i in 0..2 {
        let (mut ws, parts) = H2Ws::open(&mut client, &format!("/room/{i}")).await;
        assert_eq!(parts.status, 200, "stream {i}");
        ws.next_frame().await;
        sockets.push(ws);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.echo(format!("hello {i}").as_bytes()).await;
    }

    // An HTTP/1.1 WebSocket on the same listener still tunnels (the bytes read to tell the
    // protocols apart are replayed).
    let (mut ws, _) = tokio_tungstenite::client_async(
        "ws://a.test/room/h1",
        TcpStream::connect(addr).await.unwrap(),
    )
    .await
    .unwrap();
    ws_next(&mut ws).await;
    ws_echo(&mut ws, "over http/1.1").await;

    // A client that sends only part of the preface and stalls is closed after the
    // handshake timeout, and others are unaffected.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(b"PRI * HTTP/2").await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, stalled.read_to_end(&mut rest))
        .await
        .expect("closed after the handshake timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "{rest:?}");
    let reply = get_over(TcpStream::connect(addr).await.unwrap(), true, "/after").await;
    assert_eq!(reply.status, 200);
}

#[test]
fn h2c_on_a_tls_listener_is_refused() {
    let certs = Certs::new();
    let config = certs.config("", "[[route]]\nname = \"main\"\nupstream = \"pool\"\n\n[upstream.pool]\nservers = [\"127.0.0.1:1\"]\n");
    let config = config.replace(
        "handshake_timeout = \"1s\"\n",
        "handshake_timeout = \"1s\"\nh2c = true\n",
    );
    let path = certs.dir.path().join("airlock.toml");
    std::fs::write(&path, config).unwrap();
    assert_config_refused(&path, "has both [listener.tls] and `h2c`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_connect_for_another_protocol_is_refused() {
    let certs = Certs::new();
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&certs.config("", &route_to(backend.addr, "")));
    let mut client = h2_client(airlock.addr(), &certs).await;
    let mut req = http::Request::builder()
        .method("CONNECT")
        .uri("https://a.test/x")
        .body(())
        .unwrap();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from("bytestream"));
    let (response, _send) = client.send_request(req, false).unwrap();
    let response = tokio::time::timeout(WAIT, response).await.unwrap().unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// airlock with client certificates `client_auth` (signed by the returned CA) and the
/// echo plugin on its route.
fn mutual_tls(certs: &Certs, backend: &Backend, client_auth: &str) -> (Airlock, Ca) {
    let client_ca = Ca::new("client CA");
    std::fs::write(certs.dir.path().join("clients.pem"), client_ca.pem()).unwrap();
    let tls_extra = format!(
        "client_ca = \"{}\"\nclient_auth = \"{client_auth}\"",
        certs.path("clients.pem")
    );
    let rest = format!(
        "{}\n{}",
        route_to(backend.addr, "plugins = [\"echo\"]"),
        echo_plugin()
    );
    (Airlock::start(&certs.config(&tls_extra, &rest)), client_ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_required_refuses_clients_without_a_certificate() {
    let certs = Certs::new();
    let backend = Backend::start("a").await;
    let (airlock, client_ca) = mutual_tls(&certs, &backend, "required");

    // Without a certificate: the handshake is refused, no request gets through.
    let refused = match connect(airlock.addr(), "a.test", certs.ca.client(&["http/1.1"])).await {
        Err(_) => true,
        Ok(mut tls) => {
            // TLS 1.3 clients learn of the refusal on their first read.
            let _ = tls
                .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let read = tokio::time::timeout(WAIT, tls.read_to_end(&mut buf))
                .await
                .unwrap();
            read.is_err() || buf.is_empty()
        }
    };
    assert!(refused, "a client without a certificate got a response");
    airlock
        .wait_for_log("handshake failure", |v| {
            v["message"] == "TLS handshake failed"
        })
        .await;

    // A certificate from another CA is refused too.
    let stranger = Ca::new("stranger").leaf("mallory", &["mallory.test"]);
    let client = certs.ca.client_with_cert(&["http/1.1"], &stranger);
    if let Ok(tls) = connect(airlock.addr(), "a.test", client).await {
        let mut tls = tls;
        let _ = tls
            .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, tls.read_to_end(&mut buf))
            .await
            .unwrap();
        assert!(
            read.is_err() || buf.is_empty(),
            "an unknown CA's client got a response"
        );
    }

    // With one: plugins and the access log see who it is.
    let leaf = client_ca.leaf("client-1", &["client-1.test"]);
    let reply = https_get(
        airlock.addr(),
        certs.ca.client_with_cert(&["h2", "http/1.1"], &leaf),
        "/",
    )
    .await;
    assert_eq!(reply.status, 200);
    let saw = reply.header_json("x-saw");
    let subject = saw["tls"]["client_cert_subject"].as_str().unwrap();
    assert!(subject.contains("CN=client-1"), "{saw}");
    assert_eq!(
        saw["tls"]["client_cert_sans"],
        serde_json::json!(["dns:client-1.test"])
    );
    assert_eq!(saw["tls"]["sni"], "a.test");
    let line = airlock
        .wait_for_log("access log with subject", |v| {
            v["event"] == "request" && v["tls.client.subject"].is_string()
        })
        .await;
    assert!(
        line["tls.client.subject"]
            .as_str()
            .unwrap()
            .contains("CN=client-1"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_optional_lets_anonymous_clients_in() {
    let certs = Certs::new();
    let backend = Backend::start("a").await;
    let (airlock, client_ca) = mutual_tls(&certs, &backend, "optional");

    let anonymous = https_get(airlock.addr(), certs.ca.client(&["http/1.1"]), "/").await;
    assert_eq!(anonymous.status, 200);
    let saw = anonymous.header_json("x-saw");
    assert!(saw["tls"]["client_cert_subject"].is_null(), "{saw}");
    assert_eq!(saw["tls"]["client_cert_sans"], serde_json::json!([]));

    let leaf = client_ca.leaf("client-2", &["client-2.test"]);
    let known = https_get(
        airlock.addr(),
        certs.ca.client_with_cert(&["http/1.1"], &leaf),
        "/",
    )
    .await;
    let saw = known.header_json("x-saw");
    assert!(
        saw["tls"]["client_cert_subject"]
            .as_str()
            .unwrap()
            .contains("CN=client-2"),
        "{saw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_listener_redirects_to_https_with_308_and_the_same_uri() {
    let config = "[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\nredirect_https = 8443\n\n[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:0\"\nredirect_https = 443\n\n[[route]]\nname = \"main\"\nupstream = \"pool\"\n\n[upstream.pool]\nservers = [\"127.0.0.1:1\"]\n";
    let airlock = Airlock::start(config);
    let reply =
        crate::support::client::get_with(airlock.listener("plain"), "/chat/room?id=7&x=%20", &[])
            .await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.header("location"),
        Some("https://test.local:8443/chat/room?id=7&x=%20")
    );
    let reply = crate::support::client::get(airlock.listener("other"), "/").await;
    assert_eq!(reply.header("location"), Some("https://test.local/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_the_server_certificate_and_name() {
    let certs = Certs::new();
    let internal = Ca::new("internal CA");
    std::fs::write(certs.dir.path().join("internal.pem"), internal.pem()).unwrap();
    let backend = Backend::start_tls(
        "tls-backend",
        internal.leaf("backend", &["backend.internal"]).server(),
    )
    .await;
    let ca = certs.path("internal.pem");
    let wrong_ca = certs.path("ca.pem");
    let addr = backend.addr;
    let rest = format!(
        "[[route]]\nname = \"good\"\npath_prefix = \"/good\"\nupstream = \"good\"\n\n\
         [[route]]\nname = \"wrong-ca\"\npath_prefix = \"/wrong-ca\"\nupstream = \"wrong_ca\"\n\n\
         [[route]]\nname = \"wrong-name\"\npath_prefix = \"/wrong-name\"\nupstream = \"wrong_name\"\n\n\
         [upstream.good]\nservers = [\"{addr}\"]\ntls = {{ ca = \"{ca}\", server_name = \"backend.internal\" }}\n\n\
         [upstream.wrong_ca]\nservers = [\"{addr}\"]\ntls = {{ ca = \"{wrong_ca}\", server_name = \"backend.internal\" }}\n\n\
         [upstream.wrong_name]\nservers = [\"{addr}\"]\ntls = {{ ca = \"{ca}\", server_name = \"other.internal\" }}\n"
    );
    let airlock = Airlock::start(&certs.config("", &rest));
    let client = certs.ca.client(&["http/1.1"]);

    let good = https_get(airlock.addr(), client.clone(), "/good/x").await;
    assert_eq!(good.status, 200);
    assert_eq!(good.json()["backend"], "tls-backend");
    // The same connection is reused for the next request.
    let again = https_get(airlock.addr(), client.clone(), "/good/y").await;
    assert_eq!(again.status, 200);
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "keep-alive to a TLS upstream"
    );
    // A WebSocket through TLS on both sides.
    let (mut ws, greeting) = wss_open(airlock.addr(), client.clone(), "a.test", "/good/ws").await;
    assert_eq!(greeting, "path:/good/ws");
    ws_echo(&mut ws, "both sides encrypted").await;

    for path in ["/wrong-ca", "/wrong-name"] {
        let reply = https_get(airlock.addr(), client.clone(), path).await;
        assert_eq!(reply.status, 502, "{path}");
    }
    let line = airlock
        .wait_for_log("upstream TLS error", |v| {
            v["event"] == "request" && v["http.response.status_code"] == 502
        })
        .await;
    assert!(
        line["error.message"]
            .as_str()
            .unwrap()
            .contains("TLS handshake with upstream"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_and_on_file_change_without_touching_open_tunnels() {
    let certs = Certs::new();
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&certs.config("", &route_to(backend.addr, "")));
    // A fresh client each time: a resumed TLS session would report the old certificate.
    let client = || certs.ca.client(&["http/1.1"]);
    let (mut ws, _) = wss_open(airlock.addr(), client(), "a.test", "/").await;
    let reloads = |why: &'static str| {
        move |v: &serde_json::Value| v["message"] == "certificates reloaded" && v["why"] == why
    };

    // A renewed certificate, loaded on SIGHUP.
    let renewed = certs.ca.leaf("a.test renewed", &["a.test"]);
    renewed.write(certs.dir.path(), "a");
    airlock.signal("HUP");
    airlock
        .wait_for_log("reload", reloads("reload requested"))
        .await;
    let tls = connect(airlock.addr(), "a.test", client()).await.unwrap();
    assert_eq!(
        peer_cert(&tls),
        renewed.der,
        "new handshakes get the new certificate"
    );
    ws_echo(&mut ws, "the tunnel opened before the reload still works").await;

    // A broken file: the previous certificate stays, and the log says why.
    std::fs::write(certs.dir.path().join("a-key.pem"), "not a key").unwrap();
    airlock.signal("HUP");
    let refused = airlock
        .wait_for_log("failed reload", |v| {
            v["message"] == "certificates not reloaded; the previous ones stay in use"
        })
        .await;
    assert!(
        refused["error"].as_str().unwrap().contains("a-key.pem"),
        "{refused}"
    );
    let tls = connect(airlock.addr(), "a.test", client()).await.unwrap();
    assert_eq!(peer_cert(&tls), renewed.der);

    // Files replaced without a signal are noticed too (the poll may already have seen the
    // earlier writes, so wait for a reload that serves the newest certificate).
    let third = certs.ca.leaf("a.test third", &["a.test"]);
    third.write(certs.dir.path(), "a");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let tls = connect(airlock.addr(), "a.test", client()).await.unwrap();
        if peer_cert(&tls) == third.der {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "changed files were not reloaded; logs:\n{}",
            airlock.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!airlock.logs_where(reloads("files changed")).is_empty());
    ws_echo(&mut ws, "still open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_a_truncated_client_hello_cost_only_their_own_connections() {
    let certs = Certs::new();
    let backend = Backend::start("a").await;
    let mut airlock = Airlock::start(&certs.config("", &route_to(backend.addr, "")));
    let addr = airlock.addr();

    // Plain HTTP on the TLS port.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut buf))
        .await
        .expect("closed in time");
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));

    // The start of a real ClientHello, then silence: closed after handshake_timeout.
    let mut truncated = TcpStream::connect(addr).await.unwrap();
    truncated
        .write_all(&[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ])
        .await
        .unwrap();
    // Meanwhile other clients are served.
    let reply = https_get(addr, certs.ca.client(&["h2"]), "/").await;
    assert_eq!(reply.status, 200);
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, truncated.read_to_end(&mut rest))
        .await
        .expect("a stalled handshake is closed");
    airlock
        .wait_for_log("handshake timeout", |v| {
            v["message"] == "TLS handshake timed out"
        })
        .await;

    // Random bytes.
    let mut garbage = TcpStream::connect(addr).await.unwrap();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let _ = garbage.write_all(&noise).await;
    let _ = tokio::time::timeout(WAIT, garbage.read_to_end(&mut Vec::new()))
        .await
        .expect("closed");

    assert!(airlock.is_running());
    let (mut ws, _) = wss_open(addr, certs.ca.client(&["http/1.1"]), "a.test", "/").await;
    ws_echo(&mut ws, "fine").await;
}

#[test]
fn unusable_certificate_files_are_refused_with_the_file_named() {
    let certs = Certs::new();
    let other = certs.ca.leaf("other", &["other.test"]);
    other.write(certs.dir.path(), "other");
    let write = |name: &str, cert: &str, key: &str| {
        let config = format!(
            "[[listener]]\nname = \"secure\"\nbind = \"127.0.0.1:0\"\n[listener.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\n[[route]]\nname = \"main\"\nupstream = \"pool\"\n\n[upstream.pool]\nservers = [\"127.0.0.1:9\"]\n",
            certs.path(cert),
            certs.path(key)
        );
        certs.dir.write(name, &config)
    };
    assert_config_refused(
        &write("mismatch.toml", "a.pem", "other-key.pem"),
        "does not belong to the certificate",
    );
    assert_config_refused(
        &write("missing.toml", "nope.pem", "a-key.pem"),
        "nope.pem: cannot read the certificate file",
    );
    assert_config_refused(
        &write("not-a-cert.toml", "a-key.pem", "a-key.pem"),
        "no certificate in the file",
    );
    assert_config_refused(
        &write("not-a-key.toml", "a.pem", "a.pem"),
        "no usable private key",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_set_on_a_tls_listener_is_secure_over_http1_and_http2() {
    let certs = Certs::new();
    let backend = Backend::start("a").await;
    let rest = route_to(backend.addr, "").replace(
        "[upstream.pool]\n",
        "[upstream.pool]\nbalance = \"sticky_cookie\"\ncookie = { name = \"srv\" }\n",
    );
    let airlock = Airlock::start(&certs.config("", &rest));
    for alpn in ["http/1.1", "h2"] {
        let reply = https_get(airlock.addr(), certs.ca.client(&[alpn]), "/").await;
        assert_eq!(reply.status, 200, "{alpn}");
        let set = reply.headers["set-cookie"].to_str().unwrap();
        assert!(set.starts_with("srv="), "{alpn}: {set}");
        assert!(
            set.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure"),
            "{alpn}: {set}"
        );
    }
}
