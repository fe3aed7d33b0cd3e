//! Live reload: read the configuration file again, build a new snapshot beside the
//! running one, and swap it in. Triggered by SIGHUP (the binary), `POST /reload` on the
//! admin endpoint, and `airlock reload`, which calls that.
//!
//! What a reload changes: what *new* connections see. Every open connection and tunnel
//! keeps the snapshot it was accepted under until it ends; nothing is closed. Pools,
//! limits and plugins whose configuration did not change are carried over as the same
//! objects (server health and counts, idle upstream connections, limit counts, compiled
//! plugins and their warm instances); the rest are built new and brought up (names
//! resolved, shared stores connected, probes started) before the swap, so the first
//! request after it finds them ready. A configuration that fails anywhere (syntax,
//! validation, a plugin that does not load or refuses its config, an address that cannot
//! be bound) is refused with the same located errors as `airlock check`, and the running
//! one stays.
//!
//! Listeners: one whose name and address stay keeps its socket (it never stops
//! accepting); an added one is bound before the swap and serves after it; a removed one
//! stops accepting at the swap (its connections carry on); a moved one is both. The
//! admin endpoint cannot move on a reload.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::handoff::{self, Described};
use crate::snapshot::{self, BuildError, Kept, Snapshot};
use crate::{drain::Drain, limit::Connections, listen};

/// How often `watch_config` looks at the file.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Reloads the configuration of a running proxy, one reload at a time, and runs its
/// listeners' accept loops.
#[derive(Debug)]
pub struct Reloader {
    snapshot: snapshot::Shared,
    /// The file the proxy was started from; `None` cannot reload.
    path: Option<PathBuf>,
    /// The admin endpoint's configured address (it cannot move).
    admin: Option<SocketAddr>,
    /// The listeners accepting now.
    serving: Mutex<Vec<Serving>>,
    drain: Drain,
    connections: Arc<Connections>,
    /// 1 for the configuration the proxy started with, then one more per reload.
    generation: AtomicU64,
    one_at_a_time: tokio::sync::Mutex<()>,
}

/// A listener accepting now: its configured address, and what stops its accept loop.
#[derive(Debug)]
struct Serving {
    name: String,
    addr: SocketAddr,
    stop: CancellationToken,
    /// The accept loop; it closes the socket when it ends.
    task: tokio::task::JoinHandle<()>,
    /// The socket, while the accept loop holds it (for a handoff to a successor).
    socket: Weak<TcpListener>,
}

/// Why a reload was refused. The running configuration is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this instance was started without a configuration file; there is nothing to reload")]
    NoFile,
    /// The file's errors, located, as `airlock check` prints them.
    #[error("{0}")]
    Config(String),
    #[error("error: {path}: {source}")]
    Build {
        path: String,
        #[source]
        source: BuildError,
    },
    #[error("error: {path}: cannot bind listener `{listener}` to {addr}: {source}")]
    Bind {
        path: String,
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "error: {path}: the admin endpoint cannot change on a reload (from {from} to {to}); restart airlock to move it"
    )]
    Admin {
        path: String,
        from: String,
        to: String,
    },
}

/// A reload that took effect.
#[derive(Debug, Clone, Copy)]
pub struct Reloaded {
    pub generation: u64,
    pub kept: Kept,
}

impl Reloader {
    pub(crate) fn new(
        snapshot: snapshot::Shared,
        path: Option<PathBuf>,
        admin: Option<SocketAddr>,
        drain: Drain,
        connections: Arc<Connections>,
    ) -> Self {
        Self {
            snapshot,
            path,
            admin,
            serving: Mutex::new(Vec::new()),
            drain,
            connections,
            generation: AtomicU64::new(1),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Accept connections on `listener`, the socket of the configured listener `name`
    /// (configured address `addr`), until shutdown or a reload that removes or moves it.
    pub(crate) fn serve(&self, name: &str, addr: SocketAddr, listener: TcpListener) {
        if let Ok(bound) = listener.local_addr() {
            tracing::info!(listener = name, addr = %bound, "listening");
        }
        let stop = self.drain.stopping.child_token();
        let listener = Arc::new(listener);
        let socket = Arc::downgrade(&listener);
        let task = tokio::spawn(listen::accept_loop(
            listener,
            name.into(),
            self.snapshot.clone(),
            self.drain.clone(),
            self.connections.clone(),
            stop.clone(),
        ));
        self.serving_now().push(Serving {
            name: name.to_string(),
            addr,
            stop,
            task,
            socket,
        });
    }

    /// The listeners accepting now, each with a copy of its socket's descriptor.
    pub(crate) fn sockets(&self) -> std::io::Result<Vec<Described<OwnedFd>>> {
        let mut sockets = Vec::new();
        for serving in self.serving_now().iter() {
            if let Some(socket) = handoff::descriptor(&serving.socket)? {
                sockets.push(Described {
                    name: serving.name.clone(),
                    addr: serving.addr,
                    socket,
                });
            }
        }
        Ok(sockets)
    }

    fn serving_now(&self) -> std::sync::MutexGuard<'_, Vec<Serving>> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// With `watch_config = true`, reload when the file changes: it is checked every
    /// [`WATCH_EVERY`], and reloaded once it has held still for one more check (an
    /// editor or a deploy tool may write it in several steps). A change that is refused
    /// is logged like any refused reload; the next change is tried again.
    pub(crate) async fn watch(self: Arc<Self>, stopping: CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        // One stat a second: too small to hand to the blocking pool.
        let stamp = || {
            let meta = std::fs::metadata(&path).ok()?;
            Some((meta.modified().ok(), meta.len()))
        };
        let mut seen = stamp();
        let mut settled = true;
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.cancelled() => return,
            }
            let now = stamp();
            if !self.snapshot.load().watch_config {
                (seen, settled) = (now, true);
                continue;
            }
            if now != seen {
                (seen, settled) = (now, false);
            } else if !settled {
                settled = true;
                tracing::info!(path = %path.display(), "the configuration file changed; reloading");
                // The outcome is logged by the reload itself.
                let _ = self.reload().await;
            }
        }
    }

    /// The file a reload reads.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The generation of the running configuration.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Read the file again and swap in what it describes, or refuse it.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.one_at_a_time.lock().await;
        let result = self.reload_now().await;
        let metrics = crate::metrics::global();
        match &result {
            Ok(done) => {
                metrics.reloaded(true, done.generation);
                tracing::info!(
                    generation = done.generation,
                    pools_kept = done.kept.pools,
                    limits_kept = done.kept.limits,
                    plugins_kept = done.kept.plugins,
                    "configuration reloaded; new connections use it, open ones keep theirs"
                );
            }
            Err(error) => {
                metrics.reloaded(false, self.generation());
                tracing::warn!(
                    generation = self.generation(),
                    error = %error,
                    "reload refused; the running configuration stays"
                );
            }
        }
        result
    }

    async fn reload_now(&self) -> Result<Reloaded, ReloadError> {
        let path = self.path.clone().ok_or(ReloadError::NoFile)?;
        let previous = self.snapshot.load();
        let admin = self.admin;
        // Compiling plugins takes CPU for a while: off the threads that serve traffic.
        let built = {
            let (previous, path) = (previous.clone(), path.clone());
            tokio::task::spawn_blocking(move || build(&path, &previous, admin))
        };
        let (next, kept) = match built.await {
            Ok(result) => result?,
            Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
        };
        let wanted: Vec<(String, SocketAddr)> = next
            .listeners()
            .iter()
            .map(|l| (l.name.to_string(), l.bind))
            .collect();
        let added = self.bind_added(&wanted, &path).await?;
        bring_up(&next, &previous).await;
        // Listeners that go stop accepting (their sockets closed by the time the reload
        // returns); the swap; then the new ones serve it.
        let going: Vec<Serving> = {
            let mut serving = self.serving_now();
            let (stay, go) = std::mem::take(&mut *serving)
                .into_iter()
                .partition(|s| wanted.iter().any(|(n, a)| *n == s.name && *a == s.addr));
            *serving = stay;
            go
        };
        for listener in going {
            listener.stop.cancel();
            let _ = listener.task.await;
            tracing::info!(listener = listener.name, addr = %listener.addr, "stopped listening");
        }
        self.snapshot.store(Arc::new(next));
        for (name, addr, listener) in added {
            self.serve(&name, addr, listener);
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Reloaded { generation, kept })
    }

    /// Bind the listeners of `wanted` that are not serving yet (new, or moved).
    async fn bind_added(
        &self,
        wanted: &[(String, SocketAddr)],
        path: &Path,
    ) -> Result<Vec<(String, SocketAddr, TcpListener)>, ReloadError> {
        let serving: Vec<(String, SocketAddr)> = self
            .serving_now()
            .iter()
            .map(|s| (s.name.clone(), s.addr))
            .collect();
        let mut added = Vec::new();
        for (name, addr) in wanted.iter().filter(|w| !serving.contains(w)) {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ReloadError::Bind {
                    path: path.display().to_string(),
                    listener: name.clone(),
                    addr: *addr,
                    source,
                })?;
            added.push((name.clone(), *addr, listener));
        }
        Ok(added)
    }
}

/// Load, validate and build the file's configuration, keeping what did not change.
fn build(
    path: &Path,
    previous: &Snapshot,
    admin: Option<SocketAddr>,
) -> Result<(Snapshot, Kept), ReloadError> {
    let loaded = airlock_config::load_file(path).map_err(|e| ReloadError::Config(e.to_string()))?;
    let wanted_admin = loaded.config.admin.as_ref().map(|a| a.bind.get_ref().0);
    if wanted_admin != admin {
        let show = |a: Option<SocketAddr>| a.map_or_else(|| "none".to_string(), |a| a.to_string());
        return Err(ReloadError::Admin {
            path: path.display().to_string(),
            from: show(admin),
            to: show(wanted_admin),
        });
    }
    Snapshot::build_after(&loaded, previous).map_err(|source| ReloadError::Build {
        path: path.display().to_string(),
        source,
    })
}

/// Bring up what the new snapshot did not take over from the previous one: pools resolve
/// their names and start probing, shared limits connect to their stores.
async fn bring_up(next: &Snapshot, previous: &Snapshot) {
    for pool in next.pools_by_name() {
        if !previous
            .pool(&pool.name)
            .is_some_and(|old| Arc::ptr_eq(old, pool))
        {
            pool.resolve_names().await;
            pool.start();
        }
    }
    let old_limits = previous.limits_by_name();
    for limit in next.limits_by_name() {
        if !old_limits.iter().any(|old| Arc::ptr_eq(old, limit)) {
            limit.warm_up().await;
        }
    }
}
