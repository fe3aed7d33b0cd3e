//! The demo's built-in upstream: a page, a JSON echo of request headers, and a WebSocket
//! chat room where every message goes to everyone connected (so a lone user sees an echo).

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

const PAGE: &str = include_str!("page.html");

/// The chat room the demo's servers share (as real backends would share one through a
/// message bus), so two browsers placed on different servers still talk.
pub fn room() -> broadcast::Sender<String> {
    broadcast::channel::<String>(256).0
}

/// Serve as the chat server called `name` (shown by `/api/whoami`).
pub async fn serve(listener: TcpListener, name: &'static str, room: broadcast::Sender<String>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let room = room.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let room = room.clone();
                async move { Ok::<_, Infallible>(answer(req, name, room)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn answer(
    mut req: Request<Incoming>,
    name: &str,
    room: broadcast::Sender<String>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/" => respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_string()),
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
        "/api/whoami" => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            let body = serde_json::json!({
                "server": name,
                "path": req.uri().to_string(),
                "headers": headers,
            });
            respond(StatusCode::OK, "application/json", format!("{body:#}\n"))
        }
        "/chat" => {
            let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
                return respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "expected a WebSocket upgrade\n".into(),
                );
            };
            let accept = derive_accept_key(key.as_bytes());
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    chat(ws, room).await;
                }
            });
            let mut response = Response::new(Full::default());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = response.headers_mut();
            h.insert(header::CONNECTION, "upgrade".parse().expect("static"));
            h.insert(header::UPGRADE, "websocket".parse().expect("static"));
            h.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                accept.parse().expect("base64 is a valid header value"),
            );
            response
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type.parse().expect("static"));
    response
}

async fn chat<S>(ws: WebSocketStream<S>, room: broadcast::Sender<String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let mut heard = room.subscribe();
    loop {
        tokio::select! {
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let _ = room.send(text.to_string());
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            said = heard.recv() => match said {
                Ok(text) => {
                    if tx.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
}
