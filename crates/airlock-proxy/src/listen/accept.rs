//! The accept loop, and what happens to a connection before its first request: the TLS
//! handshake (or the `h2c` preface sniff), then the protocol that serves it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::OptionFuture;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::direct::{self, First};
use super::{h1, h2};
use crate::conn::ConnCtx;
use crate::drain::Drain;
use crate::limit::{ConnectionSlot, Connections};
use crate::snapshot::{self, Listener};
use crate::stream::{Prefixed, Stream};
use crate::tls::server::{ServerTls, SessionFacts};

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Accept connections on the listener called `name` until `stop` (shutdown, or a reload
/// that removes or moves the listener); each runs in its own tracked task, with the
/// snapshot current when it was accepted. Stopping closes the listening socket (this loop
/// holds its one strong reference); the connections it accepted carry on.
pub async fn accept_loop(
    listener: Arc<TcpListener>,
    name: Arc<str>,
    snapshot: snapshot::Shared,
    drain: Drain,
    connections: Arc<Connections>,
    stop: CancellationToken,
) {
    let bound = listener.local_addr().expect("bound listener");
    let accepted_count = crate::metrics::global().accepted(&name);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(listener = &*name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let current = snapshot.load();
        let Some(settings) = current.listener(&name).cloned() else {
            // The snapshot no longer has this listener: it is being stopped.
            break;
        };
        let _ = stream.set_nodelay(true);
        // A connection's local address is the listener's unless that is a wildcard
        // (0.0.0.0, ::); only then does it take a system call to learn.
        let local = if bound.ip().is_unspecified() {
            stream.local_addr().unwrap_or(bound)
        } else {
            bound
        };
        let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "conn",
            conn.id = id,
            listener = &*name,
            client.addr = %peer,
            server.addr = %local,
        );
        accepted_count.inc();
        let counted = connections.open(current.max_connections);
        let accepted = Accepted {
            counted,
            snapshot: current,
            listener: settings,
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
    tracing::debug!(listener = &*name, "stopped accepting");
}

/// A connection accepted, before TLS.
struct Accepted {
    counted: ConnectionSlot,
    snapshot: Arc<snapshot::Snapshot>,
    listener: Arc<Listener>,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    drain: Drain,
}

impl Accepted {
    /// Serve the connection. A connection whose first request became a tunnel returns the
    /// tunnel's future rather than running it, so the caller can run it in the same task
    /// once the (much larger) state of this future has been freed.
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
            snapshot: self.snapshot,
            listener: self.listener,
            peer: self.peer,
            local: self.local,
            drain: self.drain,
            tls,
            counted: self.counted,
        });
        if h2 {
            h2::serve(stream, conn).await;
            return None;
        }
        match direct::first_request(stream, conn.clone()).await {
            First::Tunnel(tunnel) => Some(tunnel),
            First::Hyper { stream, answered } => {
                h1::serve(stream, conn, answered).await;
                None
            }
            First::TimedOut { stream, read } => {
                h1::reply_request_timeout(stream, &read, &conn).await;
                None
            }
            First::Closed => None,
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
