//! `max_connections`: the client connections open in the whole process.
//!
//! Counted from accept to close, on every listener, across reloads. A connection accepted
//! beyond the limit is still served, briefly: each request on it is answered `503` with
//! `Connection: close` (a clear answer, where refusing the TCP connection would look
//! like a network failure), and it counts while it is open (until its first answer, or the
//! listener's `handshake_timeout` when it sends nothing), so the count is the number of
//! sockets the process holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The open client connections.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicUsize,
}

impl Connections {
    /// Count one more connection; `over` says whether it is beyond `max`.
    pub fn open(self: &Arc<Self>, max: Option<u32>) -> ConnectionSlot {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        ConnectionSlot {
            over: max.is_some_and(|max| before >= max as usize),
            connections: self.clone(),
        }
    }

    /// Connections open now.
    pub fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One open connection's place in the count, given back when it is dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    /// Accepted beyond `max_connections`: its requests get 503.
    pub over: bool,
    connections: Arc<Connections>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.connections.open.fetch_sub(1, Ordering::Relaxed);
    }
}
