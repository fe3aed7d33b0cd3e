//! Shutdown coordination: stop accepting, let in-flight work finish, force-close what is
//! left when the grace period ends. Every connection and tunnel task starts here, so this
//! is also where a timer is kept due while any is open (see [`keep_a_timer_due`]).

mod spread;

pub use spread::Spread;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug)]
pub struct Drain {
    /// Cancelled when shutdown begins: listeners stop, idle keep-alive connections close.
    pub stopping: CancellationToken,
    /// Cancelled when the grace period is over: open tunnels are closed.
    pub force: CancellationToken,
    /// Closes open tunnels gradually once shutdown begins.
    pub spread: Arc<Spread>,
    /// Tunnels open in the process.
    tunnels: Arc<AtomicUsize>,
    /// Every connection and tunnel task.
    pub tasks: TaskTracker,
    ready: Arc<AtomicBool>,
    /// Whether a task keeps a timer due; see [`keep_a_timer_due`].
    timer_floor: Arc<AtomicBool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            stopping: CancellationToken::new(),
            force: CancellationToken::new(),
            spread: Arc::default(),
            tunnels: Arc::default(),
            tasks: TaskTracker::new(),
            ready: Arc::new(AtomicBool::new(false)),
            timer_floor: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Drain {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.stopping.is_cancelled()
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Stop accepting and report not ready; close open tunnels over `spread`, WebSocket
    /// tunnels with close frames carrying `code`.
    pub fn begin(&self, spread: Duration, code: u16) {
        self.stopping.cancel();
        self.tasks.close();
        self.spread
            .begin(self.tunnels.load(Ordering::Relaxed), spread, code);
    }

    /// Count a tunnel as open until the guard is dropped.
    pub fn tunnel_opened(&self) -> OpenTunnel {
        self.tunnels.fetch_add(1, Ordering::Relaxed);
        OpenTunnel(self.tunnels.clone())
    }

    /// Run a connection or tunnel task, tracked for shutdown. Boxed: Tokio copies a task's
    /// future whole each time the task changes state, and these futures (a tunnel's, or
    /// a connection's that holds one) are about a kilobyte.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if !self.timer_floor.load(Ordering::Relaxed)
            && !self.timer_floor.swap(true, Ordering::Relaxed)
        {
            tokio::spawn(keep_a_timer_due(
                self.tasks.clone(),
                self.timer_floor.clone(),
            ));
        }
        self.tasks.spawn(Box::pin(task));
    }
}

/// An open tunnel, counted for the drain's spread.
pub struct OpenTunnel(Arc<AtomicUsize>);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How far ahead the runtime's timer driver has a wake-up due while connections are
/// open; see [`keep_a_timer_due`].
const TIMER_FLOOR: Duration = Duration::from_secs(1);

/// While any connection or tunnel is open, keep a timer due within [`TIMER_FLOOR`], so
/// that setting a longer one is only an insert into Tokio's timer wheel.
///
/// Tokio's timer driver wakes the runtime through an eventfd whenever a timer is set to
/// fire before the driver's next planned wake-up. With only hour-long idle timers
/// pending, that was every connection's head-read, connect and half-close timer: 0.9
/// `write(2)` per WebSocket handshake, and as many extra trips through `epoll_wait`.
/// With a wake-up always due within a second, timers of a second or more never cause
/// one. The price is one wake-up a second while connections are open; the task ends at
/// the first tick that finds none (`running` cleared), and the next connection starts
/// it again. A connection that races with its end only pays the old cost.
async fn keep_a_timer_due(tasks: TaskTracker, running: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(TIMER_FLOOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await; // the first tick is at once
    loop {
        tick.tick().await;
        if tasks.is_empty() {
            running.store(false, Ordering::Relaxed);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_timer_is_kept_due_while_connections_are_open_and_not_after() {
        let drain = Drain::default();
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        drain.spawn(async move {
            let _ = closed.await;
        });
        assert!(drain.timer_floor.load(Ordering::Relaxed));
        tokio::time::sleep(TIMER_FLOOR * 5).await;
        assert!(
            drain.timer_floor.load(Ordering::Relaxed),
            "stopped with a connection open"
        );

        close.send(()).unwrap();
        tokio::time::sleep(TIMER_FLOOR * 3).await;
        assert!(
            !drain.timer_floor.load(Ordering::Relaxed),
            "still running with no connection open"
        );

        // The next connection starts it again.
        drain.spawn(async {});
        assert!(drain.timer_floor.load(Ordering::Relaxed));
    }
}
