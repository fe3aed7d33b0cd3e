//! A real upstream server: plain HTTP answers describing the request it saw, a streaming
//! `/echo`, WebSocket echo on upgrade, and a raw byte protocol for half-close tests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

pub type CloseCodes = Arc<Mutex<Vec<u16>>>;

pub struct Backend {
    pub addr: SocketAddr,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// The code of every close frame a WebSocket client sent it, in order.
    pub close_codes: CloseCodes,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, None).await
    }

    /// A backend that speaks TLS with `tls` (for upstream TLS tests).
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_with(name, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let name_owned: Arc<str> = name.into();
        let counter = connections.clone();
        let close_codes = CloseCodes::default();
        let closes = close_codes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let name = name_owned.clone();
                let tls = tls.clone();
                let closes = closes.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve(stream, name, closes).await,
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                serve(stream, name, closes).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            close_codes,
            task,
        }
    }
}

async fn serve<S>(stream: S, name: Arc<str>, closes: CloseCodes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = service_fn(move |req| {
        let name = name.clone();
        let closes = closes.clone();
        async move { Ok::<_, Infallible>(answer(req, &name, closes).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

async fn answer(mut req: Request<Incoming>, name: &str, closes: CloseCodes) -> Response<Body> {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    if req.uri().path() == "/refuse-upgrade" && upgrade.is_some() {
        let mut r = full(StatusCode::FORBIDDEN, "no upgrades here\n");
        r.headers_mut().insert("x-backend", name.parse().unwrap());
        return r;
    }
    match upgrade.as_deref() {
        Some("websocket") => return websocket(req, closes),
        Some("raw-echo") => return raw_echo(req),
        Some("server-fin") => return server_fin(req),
        _ => {}
    }
    if req.uri().path() == "/echo" {
        // Stream the request body straight back.
        let body = req.into_body().boxed();
        let mut r = Response::new(body);
        r.headers_mut().insert("x-backend", name.parse().unwrap());
        return r;
    }
    let mut info = describe(&req);
    let body = req
        .body_mut()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    info["backend"] = name.into();
    info["body_len"] = body.len().into();
    let mut r = full(StatusCode::OK, info.to_string());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    r
}

/// The method, URI and headers of `req` as JSON (repeated headers joined with ", ").
fn describe<B>(req: &Request<B>) -> serde_json::Value {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.headers() {
        let v = String::from_utf8_lossy(v.as_bytes());
        headers
            .entry(k.to_string())
            .and_modify(|all| *all = format!("{all}, {v}"))
            .or_insert_with(|| v.into_owned());
    }
    serde_json::json!({
        "method": req.method().to_string(),
        "uri": req.uri().to_string(),
        "headers": headers,
    })
}

fn switching(protocol: &str) -> Response<Body> {
    let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    r.headers_mut()
        .insert(header::CONNECTION, "upgrade".parse().unwrap());
    r.headers_mut()
        .insert(header::UPGRADE, protocol.parse().unwrap());
    r
}

fn websocket(mut req: Request<Incoming>, closes: CloseCodes) -> Response<Body> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .cloned()
        .unwrap_or_else(|| "missing".parse().unwrap());
    let protocol = req.headers().get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
    let path = req.uri().to_string();
    // The first message tells the client which path the backend saw; on `/headers` it
    // describes the whole request instead.
    let greeting = if req.uri().path() == "/headers" {
        format!("request:{}", describe(&req))
    } else {
        format!("path:{path}")
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let _ = ws.send(Message::text(greeting)).await;
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                closes.lock().unwrap().push(code);
                // Read on: that sends the close frame the library queued in answer,
                // and ends the stream.
                continue;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = switching("websocket");
    r.headers_mut().insert(
        header::SEC_WEBSOCKET_ACCEPT,
        derive_accept_key(key.as_bytes()).parse().unwrap(),
    );
    if let Some(p) = protocol {
        r.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    r.headers_mut()
        .insert("x-backend-says", "hello".parse().unwrap());
    // Its own, which a listener with `hsts` replaces.
    r.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=1".parse().unwrap(),
    );
    r
}

/// After the upgrade: read everything until the client half-closes, then answer with how
/// many bytes arrived, and close.
fn raw_echo(mut req: Request<Incoming>) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut received = Vec::new();
        if io.read_to_end(&mut received).await.is_ok() {
            let _ = io
                .write_all(format!("received {} bytes", received.len()).as_bytes())
                .await;
            let _ = io.shutdown().await;
        }
    });
    switching("raw-echo")
}

/// After the upgrade: finish sending at once, then read (and discard) until the client ends.
fn server_fin(mut req: Request<Incoming>) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let _ = io.shutdown().await;
        let mut sink = Vec::new();
        let _ = io.read_to_end(&mut sink).await;
    });
    switching("server-fin")
}
