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
//! validation, a plugin that does not load or refuses its config, a listener change) is
//! refused with the same located errors as `airlock check`, and the running one stays.
//!
//! Not yet: adding, removing or moving listeners (their sockets are bound once, at
//! start); such a reload is refused and says so.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::snapshot::{self, BuildError, Kept, Snapshot};

/// Reloads the configuration of a running proxy; one at a time.
#[derive(Debug)]
pub struct Reloader {
    snapshot: snapshot::Shared,
    /// The file the proxy was started from; `None` (the demo) cannot reload.
    path: Option<PathBuf>,
    /// The listeners bound at start, by name, with their configured addresses.
    listeners: Vec<(String, SocketAddr)>,
    /// 1 for the configuration the proxy started with, then one more per reload.
    generation: AtomicU64,
    one_at_a_time: tokio::sync::Mutex<()>,
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
    #[error(
        "error: {path}: listeners cannot change on a reload ({change}); restart airlock to change them"
    )]
    Listeners { path: String, change: String },
}

/// A reload that took effect.
#[derive(Debug, Clone, Copy)]
pub struct Reloaded {
    pub generation: u64,
    pub kept: Kept,
}

impl Reloader {
    pub(crate) fn new(snapshot: snapshot::Shared, path: Option<PathBuf>) -> Self {
        let listeners = snapshot
            .load()
            .listeners()
            .iter()
            .map(|l| (l.name.to_string(), l.bind))
            .collect();
        Self {
            snapshot,
            path,
            listeners,
            generation: AtomicU64::new(1),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
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
        let listeners = self.listeners.clone();
        // Compiling plugins takes CPU for a while: off the threads that serve traffic.
        let built = {
            let previous = previous.clone();
            tokio::task::spawn_blocking(move || build(&path, &previous, &listeners))
        };
        let (next, kept) = match built.await {
            Ok(result) => result?,
            Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
        };
        bring_up(&next, &previous).await;
        self.snapshot.store(Arc::new(next));
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Reloaded { generation, kept })
    }
}

/// Load, validate and build the file's configuration, keeping what did not change.
fn build(
    path: &std::path::Path,
    previous: &Snapshot,
    listeners: &[(String, SocketAddr)],
) -> Result<(Snapshot, Kept), ReloadError> {
    let loaded = airlock_config::load_file(path).map_err(|e| ReloadError::Config(e.to_string()))?;
    let wanted: Vec<(String, SocketAddr)> = loaded
        .config
        .listeners
        .iter()
        .map(|l| (l.name.get_ref().clone(), l.bind.get_ref().0))
        .collect();
    if let Some(change) = listener_change(listeners, &wanted) {
        return Err(ReloadError::Listeners {
            path: path.display().to_string(),
            change,
        });
    }
    Snapshot::build_after(&loaded, previous).map_err(|source| ReloadError::Build {
        path: path.display().to_string(),
        source,
    })
}

/// How the listeners of `wanted` differ from those bound, if they do.
fn listener_change(
    bound: &[(String, SocketAddr)],
    wanted: &[(String, SocketAddr)],
) -> Option<String> {
    let mut changes = Vec::new();
    for (name, addr) in wanted {
        match bound.iter().find(|(n, _)| n == name) {
            None => changes.push(format!("`{name}` added")),
            Some((_, old)) if old != addr => {
                changes.push(format!("`{name}` moved from {old} to {addr}"))
            }
            Some(_) => {}
        }
    }
    for (name, _) in bound {
        if !wanted.iter().any(|(n, _)| n == name) {
            changes.push(format!("`{name}` removed"));
        }
    }
    (!changes.is_empty()).then(|| changes.join(", "))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn listener_changes_are_named() {
        let bound = vec![("a".to_string(), addr(1)), ("b".to_string(), addr(2))];
        assert_eq!(listener_change(&bound, &bound), None);
        let wanted = vec![("a".to_string(), addr(3)), ("c".to_string(), addr(4))];
        assert_eq!(
            listener_change(&bound, &wanted).unwrap(),
            "`a` moved from 127.0.0.1:1 to 127.0.0.1:3, `c` added, `b` removed"
        );
    }
}
