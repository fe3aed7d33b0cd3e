//! An upgrade both ends accepted: the tunnel waiting for its ends, run until it closes,
//! then logged, with its server's count released.

use std::sync::Arc;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use crate::conn::ConnCtx;
use crate::drain::Spread;
use crate::limit::Admission;
use crate::metrics::TunnelClose;
use crate::observe::access_log;
use crate::observe::trace::TunnelTrace;
use crate::route::Route;
use crate::stream::Stream;
use crate::tunnel::{self, Endpoint, Framing, Limits, Signals};
use crate::upstream::{ActiveGuard, Server};

/// The upstream end of a tunnel: ready, or once hyper's client completes the upgrade.
pub enum UpstreamEnd {
    Ready(Endpoint),
    Pending(OnUpgrade),
}

/// An upgrade the upstream accepted, waiting for the client's end.
pub struct Tunnel {
    pub(super) upstream: UpstreamEnd,
    pub(super) route: Arc<Route>,
    pub(super) server: Server,
    pub(super) guard: ActiveGuard,
    /// Slots of the route's limits, given back when the tunnel ends.
    pub(super) admission: Admission,
    pub(super) conn: Arc<ConnCtx>,
    /// What the tunnel knows of its bytes (WebSocket frames, checked or not).
    pub(super) framing: Framing,
    /// The handshake's trace, when it is sampled: the tunnel's span joins it at close.
    pub(super) trace: Option<Box<TunnelTrace>>,
}

impl Tunnel {
    /// Relay bytes between `client` and the upstream until the tunnel ends.
    pub async fn run(self, client: Endpoint) {
        let upstream = match self.upstream {
            UpstreamEnd::Ready(endpoint) => endpoint,
            UpstreamEnd::Pending(upgrade) => match upgrade.await {
                Ok(upgraded) => endpoint(upgraded),
                Err(e) => return abandoned(&self.route, &e),
            },
        };
        let route = &self.route;
        let limits = Limits {
            idle_timeout: route.idle_timeout,
            max_lifetime: route.max_lifetime,
            half_close_timeout: route.half_close_timeout,
        };
        let open = route.metrics.tunnel_opened();
        let counted = self.conn.drain.tunnel_opened();
        let signals = Signals {
            drain: drain_turn(
                self.conn.drain.spread.clone(),
                self.server.tunnel_drain().clone(),
            ),
            force: self.conn.drain.force.clone(),
        };
        // Only WebSocket tunnels follow frames (and are named so in their span).
        let websocket = !matches!(self.framing, Framing::Bytes);
        let outcome = tunnel::relay(client, upstream, limits, self.framing, signals).await;
        // Give back what the tunnel held before saying it closed: whoever reads the log
        // line then sees the server's count and the limits' slots released.
        drop(open);
        drop(counted);
        drop(self.guard);
        drop(self.admission);
        route.metrics.tunnel_closed(TunnelClose {
            lived: outcome.duration,
            from_client: outcome.client_to_upstream,
            from_upstream: outcome.upstream_to_client,
            closed_by: outcome.closed_by.as_str(),
            reason: outcome.reason.name(),
            messages: outcome
                .frames
                .as_ref()
                .map(|f| (f.messages_from_client, f.messages_from_upstream)),
        });
        let trace = self
            .trace
            .map(|trace| trace.closed(&self.server.addr, &outcome, websocket));
        access_log::tunnel_closed(
            &route.name,
            &self.server.addr,
            self.conn.peer,
            &outcome,
            trace,
        );
    }
}

/// The tunnel's turn to close in a drain of the whole process or of its server. Until a
/// drain begins it holds only a small wait (see [`Spread::began`]); the wait for a turn
/// is allocated then.
async fn drain_turn(process: Arc<Spread>, server: Arc<Spread>) -> u16 {
    Spread::began(&[&process, &server]).await;
    Box::pin(async move {
        tokio::select! {
            biased;
            code = process.turn() => code,
            code = server.turn() => code,
        }
    })
    .await
}

pub(super) fn abandoned(route: &Route, error: &dyn std::fmt::Display) {
    tracing::info!(
        route = &*route.name,
        error = %error,
        "upgrade abandoned before the tunnel started"
    );
}

/// The upgraded connection as a stream for the tunnel. An HTTP/1.1 connection gives back
/// its own socket (plain TCP stays unboxed); an HTTP/2 stream stays wrapped.
pub fn endpoint(upgraded: Upgraded) -> Endpoint {
    match upgraded.downcast::<TokioIo<Stream>>() {
        Ok(parts) => Endpoint {
            stream: parts.io.into_inner(),
            already_read: parts.read_buf,
        },
        Err(upgraded) => Endpoint {
            stream: Stream::boxed(TokioIo::new(upgraded)),
            already_read: bytes::Bytes::new(),
        },
    }
}
