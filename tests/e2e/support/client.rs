//! Client helpers: raw HTTP/1.1 over a socket (for malformed input) and hyper requests.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::WAIT;

/// Send raw bytes and read until the server closes or `WAIT` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_all(&mut stream).await
}

pub async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Send a raw upgrade request and read the response head byte by byte, leaving what
/// follows it on the stream.
pub async fn upgrade_head(addr: SocketAddr, request: &[u8]) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(WAIT, stream.read_exact(&mut byte)).await {
            Ok(Ok(_)) => head.push(byte[0]),
            _ => break,
        }
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// The status code in a raw HTTP/1.1 response.
pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"))
}

pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct Conn(SendRequest<Full<Bytes>>);

impl Conn {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Self(sender)
    }

    pub async fn send(&mut self, req: http::Request<Full<Bytes>>) -> Response {
        tokio::time::timeout(WAIT, self.0.ready())
            .await
            .expect("connection ready in time")
            .unwrap();
        let resp = tokio::time::timeout(WAIT, self.0.send_request(req))
            .await
            .expect("response in time")
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(WAIT, body.collect())
            .await
            .expect("body in time")
            .unwrap()
            .to_bytes();
        Response {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Response {
        self.send(request("GET", path, &[], Bytes::new())).await
    }
}

pub fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test.local");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    Conn::open(addr).await.get(path).await
}

pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    Conn::open(addr)
        .await
        .send(request("GET", path, headers, Bytes::new()))
        .await
}

/// Finish a WebSocket the way a well-behaved client does: send Close, then read until the
/// server's Close and the end of the stream, then close the socket.
pub async fn close_ws<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt as _;
    ws.close(None).await.unwrap();
    let _ = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

/// A WebSocket handshake to `path` with `headers` (each replacing the client's own, `host`
/// included): the status, and the backend's first message after a `101` or the body of
/// any other answer.
pub async fn ws_handshake(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, response)) => {
            let first = ws.next().await.unwrap().unwrap();
            (
                response.status().as_u16(),
                first.into_text().unwrap().to_string(),
            )
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (response.status().as_u16(), body)
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// A WebSocket client connection, as `connect_async` makes it.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket through `addr` to `path`, past the backend's greeting.
pub async fn open_ws(addr: SocketAddr, path: &str) -> Ws {
    use futures_util::StreamExt as _;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .unwrap();
    ws.next().await.unwrap().unwrap();
    ws
}
