//! `websocket = { ... }` on a route: frame-aware WebSocket tunnels.

use serde::Deserialize;
use toml::Spanned;

use crate::limit::Rate;
use crate::units::{ByteSize, Duration};

/// `websocket = { max_message = "1MiB", max_frame = "64KiB", message_rate = "100/s",
/// burst = 200 }`: the route's WebSocket tunnels parse frame headers both ways, enforce
/// the limits set here, close with a close frame to both sides (idle timeout and max
/// lifetime too, with 1001), and log message counts. Payloads are never unmasked or
/// inflated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocket {
    /// Largest message (the payloads of all its frames), either way; larger closes 1009.
    #[serde(default)]
    pub max_message: Option<Spanned<ByteSize>>,
    /// Largest frame payload, either way; larger closes 1009. Default: `max_message`.
    #[serde(default)]
    pub max_frame: Option<Spanned<ByteSize>>,
    /// Messages a client may send, on average (`"100/s"`); faster closes 1008.
    #[serde(default)]
    pub message_rate: Option<Spanned<Rate>>,
    /// Messages a quiet client may send at once; default the rate's count. Needs
    /// `message_rate`.
    #[serde(default)]
    pub burst: Option<Spanned<u32>>,
    /// airlock pings the client this long after its last ping was answered
    /// (`"30s"`), so that a dead peer (a laptop closed behind a NAT) is found.
    #[serde(default)]
    pub ping_interval: Option<Spanned<Duration>>,
    /// How long a ping may go unanswered before the tunnel is closed (1001 to the
    /// upstream). Needs `ping_interval`; default 10s.
    #[serde(default)]
    pub pong_timeout: Option<Spanned<Duration>>,
}

/// `pong_timeout` when unset.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(10);
