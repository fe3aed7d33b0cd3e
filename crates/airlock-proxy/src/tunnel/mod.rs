//! A bidirectional byte relay between two connected sockets: what an HTTP upgrade turns a
//! connection into (RFC 9110 §7.8). It knows nothing about HTTP.
//!
//! An idle tunnel holds no data buffers of its own: each direction reads into a stack
//! buffer and writes straight through. Only when the destination cannot take all of
//! it are the leftover bytes copied to the heap, and that copy is freed as soon as it is
//! written. Half-close is propagated: when one side finishes sending, the other side's
//! write half is shut down and the opposite direction keeps flowing.
//!
//! A WebSocket tunnel also follows frame boundaries in both directions, from frame
//! headers alone ([`frames`]), so that a drain can close it properly: a close frame
//! goes to each side between two of that side's frames, the proxy waits (at most
//! [`CLOSE_HANDSHAKE_TIMEOUT`]) for each side's own close frame, and then closes TCP.

mod dormant;
mod frames;
mod relay;
mod websocket;

pub use websocket::Rules as FrameRules;

use std::fmt;
use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::stream::Stream;

/// When a tunnel gives up on its own.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Close after this long with no bytes in either direction.
    pub idle_timeout: Duration,
    /// Close after this long whatever happens.
    pub max_lifetime: Option<Duration>,
    /// Once one side has finished sending, close after this long with no bytes moving
    /// (a peer that ignores the half-close must not hold the tunnel for `idle_timeout`).
    pub half_close_timeout: Duration,
}

/// Which end of the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    /// The proxy itself ended the tunnel (a timeout or shutdown).
    Proxy,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Proxy => "proxy",
        }
    }
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished sending; `closed_by` finished first.
    Closed,
    /// A socket error on the side in `closed_by`.
    Error(io::ErrorKind),
    IdleTimeout,
    /// One side had finished and the other went quiet for `half_close_timeout`.
    HalfCloseTimeout,
    MaxLifetime,
    /// The proxy is shutting down and the grace period ran out.
    Shutdown,
    /// A drain closed it (shutdown began, or its server was drained): with a close
    /// handshake on WebSocket tunnels, a plain close on others.
    Drain,
    /// On a frame-aware route, the side in `closed_by` broke a rule; the proxy closed
    /// the tunnel with this code (1002 protocol error, 1008 message rate, 1009 too big).
    Violation(u16),
    /// On a frame-aware route with `ping_interval`, the client left airlock's ping
    /// unanswered for `pong_timeout`.
    PongTimeout,
}

impl CloseReason {
    /// The reason without detail, for metrics: `closed`, `error`, `idle_timeout`,
    /// `half_close_timeout`, `max_lifetime` or `shutdown`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Error(_) => "error",
            Self::IdleTimeout => "idle_timeout",
            Self::HalfCloseTimeout => "half_close_timeout",
            Self::MaxLifetime => "max_lifetime",
            Self::Shutdown => "shutdown",
            Self::Drain => "drain",
            Self::Violation(1008) => "message_rate",
            Self::Violation(1009) => "message_too_big",
            Self::Violation(_) => "protocol_error",
            Self::PongTimeout => "pong_timeout",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("closed"),
            Self::Error(kind) => write!(f, "error: {kind}"),
            Self::IdleTimeout => f.write_str("idle_timeout"),
            Self::HalfCloseTimeout => f.write_str("half_close_timeout"),
            Self::MaxLifetime => f.write_str("max_lifetime"),
            Self::Shutdown => f.write_str("shutdown"),
            Self::Drain => f.write_str("drain"),
            Self::Violation(_) | Self::PongTimeout => f.write_str(self.name()),
        }
    }
}

/// What happened over a tunnel's life.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
    pub closed_by: Side,
    pub reason: CloseReason,
    /// The close code the proxy sent (to the side at fault, if any), if it closed the
    /// tunnel with close frames.
    pub close_code: Option<u16>,
    pub duration: Duration,
    /// What a frame-aware tunnel carried.
    pub frames: Option<FrameStats>,
}

/// Messages a frame-aware tunnel relayed, and the first close frame a side sent.
#[derive(Debug, Clone)]
pub struct FrameStats {
    pub messages_from_client: u64,
    pub messages_from_upstream: u64,
    /// The largest message each way, in payload bytes.
    pub largest_from_client: u64,
    pub largest_from_upstream: u64,
    pub peer_close: Option<PeerCloseFrame>,
}

/// A close frame a side sent: its code (1005 for none) and reason.
#[derive(Debug, Clone)]
pub struct PeerCloseFrame {
    pub side: Side,
    pub code: u16,
    pub reason: String,
}

/// What the relay knows of the bytes it moves.
#[derive(Debug, Clone)]
pub enum Framing {
    /// Any bytes (an upgrade to another protocol).
    Bytes,
    /// WebSocket frames: their boundaries are followed, so the proxy can close properly.
    Track,
    /// WebSocket frames on a frame-aware route: every header checked against the route's
    /// rules. `rsv_allowed`: the RSV bits negotiated extensions may set.
    Enforce {
        rules: std::sync::Arc<FrameRules>,
        rsv_allowed: u8,
    },
}

/// How long a drain waits for both sides of a WebSocket tunnel to answer its close
/// frames before it closes TCP.
pub const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy may ask of a running tunnel.
pub struct Signals<D> {
    /// Resolves when a drain closes the tunnel, with the close code for a WebSocket.
    /// (Unboxed: the relay puts it in one allocation with its other wait.)
    pub drain: D,
    /// Cancelled when the grace period is over: the tunnel closes at once.
    pub force: CancellationToken,
}

/// Bytes already read from one side before the tunnel started (for example what followed
/// the HTTP request head in the same packet); they are sent on before anything else.
pub struct Endpoint {
    pub stream: Stream,
    pub already_read: Bytes,
}

/// Relay bytes between `client` and `upstream` until both finish, one fails, a limit is
/// reached or a signal ends it. (The relay is the future itself, not an `async fn`
/// around it: that would keep a copy of every argument for the tunnel's whole life.)
pub fn relay(
    client: Endpoint,
    upstream: Endpoint,
    limits: Limits,
    framing: Framing,
    signals: Signals<impl Future<Output = u16> + Send + 'static>,
) -> impl Future<Output = Outcome> + Send {
    relay::Relay::new(client, upstream, limits, framing, signals)
}

#[cfg(test)]
mod tests;
