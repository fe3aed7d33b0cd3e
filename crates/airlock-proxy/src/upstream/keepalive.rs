//! Idle keep-alive connections to one upstream server, reused for plain HTTP requests.

use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

#[derive(Debug)]
pub struct IdleConnections {
    max_idle: usize,
    timeout: Duration,
    idle: Mutex<Vec<(SendRequest<crate::http::body::ProxyBody>, Instant)>>,
}

impl IdleConnections {
    pub fn new(max_idle: usize, timeout: Duration) -> Self {
        Self {
            max_idle,
            timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The most recently used live connection, if any. Stale ones are dropped on the way.
    pub fn take(&self) -> Option<SendRequest<crate::http::body::ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if sender.is_ready() && since.elapsed() < self.timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Keep a connection that finished its response, unless the pool is full.
    pub fn put(&self, sender: SendRequest<crate::http::body::ProxyBody>) {
        if self.max_idle == 0 || !sender.is_ready() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        idle.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < self.timeout);
        if idle.len() < self.max_idle {
            idle.push((sender, now));
        }
    }
}
