//! HTTP/1.1 with hyper's server: keep-alive, bodies, upgrades after other requests, the
//! header size limit (431), the handshake timeout (408), and the errors for heads it
//! cannot take.

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;

use super::service::service;
use crate::conn::ConnCtx;
use crate::http::body::ProxyBody;
use crate::observe::access_log;
use crate::stream::Stream;

/// Serve an HTTP/1.1 connection until it closes. `answered`: the answer to the first
/// request, already proxied (see `direct`).
pub async fn serve(stream: Stream, conn: Arc<ConnCtx>, answered: Option<Response<ProxyBody>>) {
    let listener = &conn.listener;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(listener.handshake_timeout)
        .max_header_size(listener.max_header_bytes);
    // Shutdown began while the first request was read: serve that one, then close (a
    // graceful shutdown now would close the connection before hyper has read it).
    let last = conn.drain.stopping.is_cancelled();
    builder.keep_alive(!last);
    let mut connection = builder
        .serve_connection(TokioIo::new(stream), service(conn.clone(), answered))
        .with_upgrades();

    let result = tokio::select! {
        result = &mut connection => result,
        _ = conn.drain.force.cancelled(), if last => return,
        _ = conn.drain.stopping.cancelled(), if !last => {
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
        access_log::rejected_head(
            conn.peer,
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &err,
        );
    } else if err.is_parse() {
        access_log::rejected_head(conn.peer, http::StatusCode::BAD_REQUEST, &err);
    } else {
        tracing::debug!(error = %err, "client connection ended with an error");
    }
}

/// The handshake timeout passed. A client that sent part of a request head gets a 408; one
/// that sent nothing (an idle keep-alive connection, a browser's pre-connect) is closed
/// quietly, as HAProxy does.
pub async fn reply_request_timeout(mut stream: Stream, read_so_far: &[u8], conn: &ConnCtx) {
    if read_so_far.is_empty() {
        return;
    }
    let reply = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 20\r\n\r\n408 Request Timeout\n";
    let write = async {
        stream.write_all(reply).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
    access_log::rejected_head(
        conn.peer,
        http::StatusCode::REQUEST_TIMEOUT,
        &"no complete request head in time",
    );
}
