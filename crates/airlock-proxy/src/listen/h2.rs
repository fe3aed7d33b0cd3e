//! HTTP/2 with hyper's server, extended CONNECT (RFC 8441) enabled: many requests, and
//! WebSockets, share one connection.

use std::sync::Arc;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::service::service;
use crate::conn::ConnCtx;
use crate::stream::Stream;

/// Serve an HTTP/2 connection. Its tunnels run on the connection's streams, so the
/// connection is served until every stream ends.
pub async fn serve(stream: Stream, conn: Arc<ConnCtx>) {
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
