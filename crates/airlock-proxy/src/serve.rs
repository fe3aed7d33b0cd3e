//! Serve one client connection with hyper's HTTP/1.1 server: keep-alive, upgrades, the
//! header size limit (431) and the handshake timeout (408).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::handler::{ConnCtx, ListenerCtx, handle};

static NEXT_CONN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Accept connections until shutdown begins; each runs in its own tracked task.
pub async fn accept_loop(listener: TcpListener, ctx: Arc<ListenerCtx>, drain: crate::drain::Drain) {
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
        let local = stream
            .local_addr()
            .unwrap_or_else(|_| listener.local_addr().expect("bound listener"));
        let id = NEXT_CONN_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let span = tracing::info_span!(
            "conn",
            conn.id = id,
            listener = &*ctx.name,
            client.addr = %peer,
            server.addr = %local,
        );
        let conn = Arc::new(ConnCtx {
            listener: ctx.clone(),
            peer,
            local,
            drain: drain.clone(),
        });
        drain.tasks.spawn(serve(stream, conn).instrument(span));
    }
    tracing::debug!(listener = &*ctx.name, "stopped accepting");
}

async fn serve(stream: TcpStream, conn: Arc<ConnCtx>) {
    let listener = &conn.listener;
    let service_conn = conn.clone();
    let service = service_fn(move |req| {
        let conn = service_conn.clone();
        async move { Ok::<_, Infallible>(handle(req, conn).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(listener.handshake_timeout)
        .max_header_size(listener.max_header_bytes);
    let mut connection = builder
        .serve_connection(TokioIo::new(stream), service)
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
        reply_request_timeout(connection.into_parts().map(|p| (p.io, p.read_buf)), &conn).await;
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

/// The handshake timeout passed. A client that sent part of a request head gets a 408; one
/// that sent nothing (an idle keep-alive connection, a browser's pre-connect) is closed
/// quietly, as HAProxy does.
async fn reply_request_timeout(parts: Option<(TokioIo<TcpStream>, bytes::Bytes)>, conn: &ConnCtx) {
    let Some((io, read_buf)) = parts else { return };
    if read_buf.is_empty() {
        return;
    }
    let mut stream = io.into_inner();
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
