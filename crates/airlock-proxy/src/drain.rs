//! Shutdown coordination: stop accepting, let in-flight work finish, force-close what is
//! left when the grace period ends.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug)]
pub struct Drain {
    /// Cancelled when shutdown begins: listeners stop, idle keep-alive connections close.
    pub stopping: CancellationToken,
    /// Cancelled when the grace period is over: open tunnels are closed.
    pub force: CancellationToken,
    /// Every connection and tunnel task.
    pub tasks: TaskTracker,
    ready: Arc<AtomicBool>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            stopping: CancellationToken::new(),
            force: CancellationToken::new(),
            tasks: TaskTracker::new(),
            ready: Arc::new(AtomicBool::new(false)),
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

    /// Run a connection or tunnel task, tracked for shutdown. Boxed: Tokio copies a task's
    /// future whole each time the task changes state, and these futures (TLS, HTTP/1.1
    /// and HTTP/2 in one state machine; a tunnel) are kilobytes.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(Box::pin(task));
    }
}
