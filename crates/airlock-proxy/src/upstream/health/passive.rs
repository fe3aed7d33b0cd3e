//! Passive health, as nginx's `max_fails`/`fail_timeout`: a server that fails `max_fails`
//! times within `fail_timeout` is left out of rotation for `fail_timeout`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct PassiveHealth {
    max_fails: u32,
    fail_timeout: Duration,
    /// Milliseconds since `epoch` until which the server is out; read on every pick.
    down_until_ms: AtomicU64,
    /// Failures in the current window; touched only when something fails.
    window: Mutex<Window>,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Window {
    started_ms: u64,
    fails: u32,
}

impl PassiveHealth {
    pub fn new(max_fails: u32, fail_timeout: Duration) -> Self {
        Self {
            max_fails,
            fail_timeout,
            down_until_ms: AtomicU64::new(0),
            window: Mutex::new(Window::default()),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn is_available(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    /// Record a failure; returns true when this failure took the server out of rotation.
    pub fn record_failure(&self) -> bool {
        if self.max_fails == 0 {
            return false;
        }
        let now = self.now_ms();
        let window_ms = self.fail_timeout.as_millis() as u64;
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_sub(w.started_ms) >= window_ms || w.fails == 0 {
            *w = Window {
                started_ms: now,
                fails: 0,
            };
        }
        w.fails += 1;
        if w.fails >= self.max_fails {
            w.fails = 0;
            self.down_until_ms
                .store(now + window_ms.max(1), Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn record_success(&self) {
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn out_after_max_fails_and_back_after_fail_timeout() {
        let h = PassiveHealth::new(2, Duration::from_secs(10));
        assert!(!h.record_failure());
        assert!(h.is_available());
        assert!(h.record_failure());
        assert!(!h.is_available());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(h.is_available());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_add_up() {
        let h = PassiveHealth::new(2, Duration::from_secs(10));
        assert!(!h.record_failure());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!h.record_failure());
        assert!(h.is_available());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_max_fails_disables_health() {
        let h = PassiveHealth::new(0, Duration::from_secs(10));
        for _ in 0..5 {
            assert!(!h.record_failure());
        }
        assert!(h.is_available());
    }
}
