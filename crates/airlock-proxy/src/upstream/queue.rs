//! `max_conns` and `queue_timeout`: how many tunnels and requests one server may have,
//! and how long a request waits for room when every server is full.
//!
//! A server at its `max_conns` is passed over by the balancer as if it were down (with
//! `ip_hash`, `consistent_hash` or `sticky_cookie`, the request goes where the pool sends a
//! client whose server is unavailable). When no server the request may still try has
//! room, it waits, woken each time any server of the pool gives a slot back, for at most
//! `queue_timeout`; then it is answered 503. A slot is taken atomically when a server is
//! picked, so two requests never both take the last one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// A pool's `max_conns`, and the signal its servers send when a slot frees.
#[derive(Debug)]
pub struct Queue {
    pub max_conns: usize,
    pub timeout: Duration,
    freed: Notify,
}

impl Queue {
    pub fn from_config(cfg: &airlock_config::Upstream) -> Option<Self> {
        let max = cfg.max_conns.as_ref()?;
        Some(Self {
            max_conns: *max.get_ref() as usize,
            timeout: cfg
                .queue_timeout
                .as_ref()
                .map_or(Duration::ZERO, |t| t.get_ref().get()),
            freed: Notify::new(),
        })
    }

    /// Take a slot on a server whose count is `active`, if it has room.
    pub fn take(&self, active: &AtomicUsize) -> bool {
        active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_conns).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn has_room(&self, active: &AtomicUsize) -> bool {
        active.load(Ordering::Relaxed) < self.max_conns
    }

    /// A slot was given back.
    pub fn free(&self) {
        self.freed.notify_waiters();
    }

    /// Resolves when a slot is given back after this was called and then enabled.
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }
}
