//! One accepted client connection: what every request on it shares while it is open.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::drain::Drain;
use crate::limit::ConnectionSlot;
use crate::snapshot::{Listener, Snapshot};
use crate::tls::server::SessionFacts;

/// One accepted client connection. It holds the snapshot it was accepted under (and the
/// listener's settings from it) until it ends: a reload does not change its routes,
/// pools or plugins, tunnels included.
#[derive(Debug)]
pub struct ConnCtx {
    pub snapshot: Arc<Snapshot>,
    pub listener: Arc<Listener>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub drain: Drain,
    /// The TLS session, on a TLS listener.
    pub tls: Option<SessionFacts>,
    /// Its place in `max_connections`.
    pub counted: ConnectionSlot,
}

impl ConnCtx {
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}
