//! Accept client connections and serve each: the TLS handshake on a TLS listener, then
//! HTTP/1.1 (a first request that is an upgrade directly, see `direct_upgrade`; the rest
//! with hyper's server: keep-alive, bodies, the header size limit (431), the handshake
//! timeout (408)) or, when ALPN chose `h2`, hyper's HTTP/2 server with extended CONNECT
//! (RFC 8441) enabled.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::OptionFuture;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::body::ProxyBody;
use crate::direct_upgrade;
use crate::handler::{ConnCtx, ListenerCtx, handle};
use crate::stream::{Prefixed, Stream};
use crate::tls::server::{ServerTls, SessionFacts};
use crate::upgrade::ClientSide;
use http::{Request, Response};
use hyper::body::Incoming;

static NEXT_CONN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Accept connections until shutdown begins; each runs in its own tracked task.
pub async fn accept_loop(listener: TcpListener, ctx: Arc<ListenerCtx>, drain: crate::drain::Drain) {
    let bound = listener.local_addr().expect("bound listener");
    loop {
        let accepted = tokio::select! {
            _ = drain.stopping.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(listener = &*ctx.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // A connection's local address is the listener's unless that is a wildcard
        // (0.0.0.0, ::); only then does it take a system call to learn.
        let local = if bound.ip().is_unspecified() {
            stream.local_addr().unwrap_or(bound)
        } else {
            bound
        };
        let id = NEXT_CONN_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let span = tracing::info_span!(
            "conn",
            conn.id = id,
            listener = &*ctx.name,
            client.addr = %peer,
            server.addr = %local,
        );
        let accepted = Accepted {
            listener: ctx.clone(),
            peer,
            local,
            drain: drain.clone(),
        };
        // The handshake's state (TLS, HTTP/1.1 and HTTP/2 in one state machine, about
        // 5 KiB) is boxed and freed when the connection becomes a tunnel, which then runs
        // in this task: one task per WebSocket, not two, and an idle tunnel's task holds
        // only the tunnel's future. (An `async` block here would also keep room for the
        // values the tunnel's future was made from.)
        let connection = Box::pin(accepted.serve(stream))
            .then(OptionFuture::from)
            .map(drop);
        drain.spawn(connection.instrument(span));
    }
    tracing::debug!(listener = &*ctx.name, "stopped accepting");
}

/// A connection accepted, before TLS.
struct Accepted {
    listener: Arc<ListenerCtx>,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    drain: crate::drain::Drain,
}

impl Accepted {
    /// Serve the connection; see [`direct_upgrade::serve`] for what is returned.
    async fn serve(self, tcp: TcpStream) -> Option<impl Future<Output = ()> + Send + use<>> {
        let (stream, tls, h2) = match &self.listener.tls {
            None if self.listener.h2c => {
                let (stream, h2) = self.sniff_h2c(tcp).await?;
                (stream, None, h2)
            }
            None => (Stream::Tcp(tcp), None, false),
            Some(tls) => {
                let (stream, facts) = self.tls_handshake(tls, tcp).await?;
                let h2 = facts.is_h2();
                (stream, Some(facts), h2)
            }
        };
        let conn = Arc::new(ConnCtx {
            listener: self.listener,
            peer: self.peer,
            local: self.local,
            drain: self.drain,
            tls,
        });
        if h2 {
            serve_h2(stream, conn).await;
            None
        } else {
            direct_upgrade::serve(stream, conn).await
        }
    }

    /// `h2c`: read until the bytes so far either are the HTTP/2 connection preface or
    /// cannot become it, within the handshake timeout; the stream then replays them to
    /// whichever protocol serves it. `None` when the client went away or stayed silent.
    async fn sniff_h2c(&self, mut tcp: TcpStream) -> Option<(Stream, bool)> {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut first = bytes::BytesMut::with_capacity(PREFACE.len());
        let read = async {
            while first.len() < PREFACE.len() && PREFACE.starts_with(&first) {
                if tcp.read_buf(&mut first).await? == 0 {
                    break;
                }
            }
            Ok::<_, std::io::Error>(())
        };
        let read = tokio::time::timeout(self.listener.handshake_timeout, read);
        tokio::select! {
            result = read => match result {
                Ok(Ok(())) if !first.is_empty() => {}
                Ok(Ok(())) | Err(_) => return None,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "client connection failed before its first bytes");
                    return None;
                }
            },
            _ = self.drain.force.cancelled() => return None,
        }
        let h2 = first.starts_with(PREFACE);
        Some((Stream::boxed(Prefixed::new(first.freeze(), tcp)), h2))
    }

    /// The TLS handshake, within the listener's handshake timeout. Failures are the
    /// client's (wrong version, no shared cipher, no client certificate, garbage): logged,
    /// and the connection closed.
    async fn tls_handshake(
        &self,
        tls: &ServerTls,
        tcp: TcpStream,
    ) -> Option<(Stream, SessionFacts)> {
        let handshake =
            tokio::time::timeout(self.listener.handshake_timeout, tls.acceptor.accept(tcp));
        let result = tokio::select! {
            result = handshake => result,
            _ = self.drain.force.cancelled() => return None,
        };
        match result {
            Ok(Ok(stream)) => {
                let facts = SessionFacts::of(stream.get_ref().1);
                Some((Stream::boxed(stream), facts))
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::info!(timeout = ?self.listener.handshake_timeout, "TLS handshake timed out");
                None
            }
        }
    }
}

/// Every request goes to `handle`, except that the first one gets `answered` when that
/// is set (the answer to a request already proxied, see `direct_upgrade`).
fn service(
    conn: Arc<ConnCtx>,
    answered: Option<Response<ProxyBody>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
> + Clone {
    let answered = answered.map(|a| Arc::new(Mutex::new(Some(a))));
    service_fn(move |mut req: Request<Incoming>| {
        let conn = conn.clone();
        let answer = answered.as_ref().and_then(|a| a.lock().ok()?.take());
        async move {
            Ok::<_, Infallible>(match answer {
                Some(answer) => answer,
                None => {
                    let client = ClientSide::Hyper(hyper::upgrade::on(&mut req));
                    handle(req.map(ProxyBody::client), client, conn).await
                }
            })
        }
    })
}

/// HTTP/1.1 with hyper's server: keep-alive, bodies, upgrades after other requests, and
/// the errors for heads it cannot take. `answered`: see [`service`].
pub(crate) async fn serve_hyper(
    stream: Stream,
    conn: Arc<ConnCtx>,
    answered: Option<Response<ProxyBody>>,
) {
    let listener = &conn.listener;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(listener.handshake_timeout)
        .max_header_size(listener.max_header_bytes);
    let mut connection = builder
        .serve_connection(TokioIo::new(stream), service(conn.clone(), answered))
        .with_upgrades();

    let result = tokio::select! {
        result = &mut connection => result,
        _ = conn.drain.stopping.cancelled() => {
            // Finish the request in flight, if any, then close; idle connections close now.
            std::pin::Pin::new(&mut connection).graceful_shutdown();
            tokio::select! {
                result = &mut connection => result,
                _ = conn.drain.force.cancelled() => return,
            }
        }
    };
    let Err(err) = result else { return };
    if err.is_timeout() {
        if let Some(parts) = connection.into_parts() {
            reply_request_timeout(parts.io.into_inner(), &parts.read_buf, &conn).await;
        }
    } else if err.is_parse_too_large() {
        crate::access_log::rejected_head(
            conn.peer,
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &err,
        );
    } else if err.is_parse() {
        crate::access_log::rejected_head(conn.peer, http::StatusCode::BAD_REQUEST, &err);
    } else {
        tracing::debug!(error = %err, "client connection ended with an error");
    }
}

/// HTTP/2: many requests, and WebSockets (RFC 8441), share one connection. Its tunnels
/// run on the connection's streams, so the connection is served until every stream ends.
async fn serve_h2(stream: Stream, conn: Arc<ConnCtx>) {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(u32::try_from(conn.listener.max_header_bytes).unwrap_or(u32::MAX));
    let mut connection =
        builder.serve_connection(TokioIo::new(stream), service(conn.clone(), None));
    let result = tokio::select! {
        result = &mut connection => result,
        _ = conn.drain.stopping.cancelled() => {
            // GOAWAY: no new streams; open ones (tunnels included) may finish.
            std::pin::Pin::new(&mut connection).graceful_shutdown();
            tokio::select! {
                result = &mut connection => result,
                _ = conn.drain.force.cancelled() => return,
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "HTTP/2 client connection ended with an error");
    }
}

/// The handshake timeout passed. A client that sent part of a request head gets a 408; one
/// that sent nothing (an idle keep-alive connection, a browser's pre-connect) is closed
/// quietly, as HAProxy does.
pub(crate) async fn reply_request_timeout(mut stream: Stream, read_so_far: &[u8], conn: &ConnCtx) {
    if read_so_far.is_empty() {
        return;
    }
    let reply = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 20\r\n\r\n408 Request Timeout\n";
    let write = async {
        stream.write_all(reply).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    crate::access_log::rejected_head(
        conn.peer,
        http::StatusCode::REQUEST_TIMEOUT,
        &"no complete request head in time",
    );
}
