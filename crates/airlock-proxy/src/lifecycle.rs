//! A proxy's life: a configuration becomes a [`Plan`] (everything built, nothing bound),
//! then [`Bound`] (every socket bound), then [`Running`] (serving until shutdown, then
//! draining).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_config::LoadedConfig;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::drain::Drain;
use crate::handoff::{self, HandoffError, Inherited, Offered};
use crate::limit::Connections;
use crate::reload::{ReloadError, Reloaded, Reloader};
use crate::snapshot::{self, BuildError, Snapshot};
use crate::tls::server::ServerTls;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot bind listener `{listener}` to {addr}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    #[error("cannot listen for a successor at {path}")]
    Successors {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A configuration turned into runtime objects, not yet bound to any socket.
pub struct Plan {
    snapshot: Snapshot,
    admin: Option<SocketAddr>,
    shutdown_grace: Duration,
    /// The file a reload reads again.
    config_path: Option<PathBuf>,
}

impl Plan {
    /// Build everything the configuration describes, without touching the network.
    pub fn build(loaded: &LoadedConfig) -> Result<Self, StartError> {
        Ok(Self {
            snapshot: Snapshot::build(loaded)?,
            admin: loaded.config.admin.as_ref().map(|a| a.bind.get_ref().0),
            shutdown_grace: loaded.config.shutdown_grace.get(),
            config_path: None,
        })
    }

    /// Reload from `path` when asked (SIGHUP, `POST /reload`); without it a reload is
    /// refused.
    pub fn reloadable_from(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Bind every listener and the admin endpoint. Nothing is served until `start`.
    pub async fn bind(self) -> Result<Bound, StartError> {
        self.bind_inheriting(None).await
    }

    /// Like [`Plan::bind`], for `--handoff PATH`: take the listening sockets over from the
    /// airlock serving `path`, if one does (see `handoff.rs`; it stops accepting once this
    /// one is bound and ready), and listen at `path` for this one's successor (the
    /// listener to give [`Running::hand_over`]).
    pub async fn bind_taking_over(
        self,
        path: &Path,
    ) -> Result<(Bound, Option<UnixListener>), StartError> {
        let taken = {
            let at = path.to_path_buf();
            off_runtime(move || handoff::take_over(&at)).await?
        };
        let Some(mut inherited) = taken else {
            // Nobody serves the path: one that cannot be used fails the start before
            // anything is bound.
            let successors = listen_for_successor(path)?;
            return Ok((self.bind().await?, Some(successors)));
        };
        let bound = self.bind_inheriting(Some(&mut inherited)).await?;
        let pid = inherited.pid();
        off_runtime(move || inherited.commit()).await?;
        tracing::info!(
            predecessor = pid,
            "took over the listening sockets; the predecessor stops accepting and drains"
        );
        // The predecessor's path is this process's now. Past the commit nothing may stop
        // the start: without the path, this process serves and the next upgrade restarts.
        let successors = listen_for_successor(path)
            .inspect_err(|e| {
                tracing::error!(
                    "{}; serving without a handoff for the next one",
                    crate::error::chain(e)
                )
            })
            .ok();
        Ok((bound, successors))
    }

    /// Like [`Plan::bind`], but use the sockets `inherited` from a predecessor where they
    /// are the ones this configuration names; bind the rest.
    async fn bind_inheriting(
        self,
        mut inherited: Option<&mut Inherited>,
    ) -> Result<Bound, StartError> {
        let mut listeners = Vec::new();
        for listener in self.snapshot.listeners() {
            let taken = inherited
                .as_deref_mut()
                .and_then(|i| i.take_listener(&listener.name, listener.bind));
            let socket = match taken {
                Some(socket) => adopt(&listener.name, listener.bind, socket)?,
                None => bind(&listener.name, listener.bind).await?,
            };
            listeners.push((listener.name.clone(), socket));
        }
        let admin = match self.admin {
            Some(addr) => match inherited.as_deref_mut().and_then(|i| i.take_admin(addr)) {
                Some(socket) => Some(adopt("admin", addr, socket)?),
                None => Some(bind("admin", addr).await?),
            },
            None => None,
        };
        if let Some(inherited) = inherited {
            for left in &inherited.listeners {
                tracing::info!(
                    listener = left.name,
                    addr = %left.addr,
                    "a listener of the predecessor that this configuration does not have; it stops with the predecessor"
                );
            }
        }
        // Servers given by name get their addresses before the first request.
        for pool in self.snapshot.pools_by_name() {
            pool.resolve_names().await;
        }
        // Limits shared through a store connect before the first request, too.
        for limit in self.snapshot.limits_by_name() {
            limit.warm_up().await;
        }
        Ok(Bound {
            listeners,
            admin,
            snapshot: snapshot::Shared::new(self.snapshot),
            shutdown_grace: self.shutdown_grace,
            config_path: self.config_path,
            admin_bind: self.admin,
        })
    }
}

async fn bind(listener: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            listener: listener.to_string(),
            addr,
            source,
        })
}

/// Listen at `path` for a successor, replacing a socket file left there by a predecessor.
/// Whoever can connect gets the listening sockets, so the socket is the owner's alone
/// (mode 0600).
fn listen_for_successor(path: &Path) -> Result<UnixListener, StartError> {
    use std::os::unix::fs::PermissionsExt as _;
    let listen = || {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(listener)
    };
    listen().map_err(|source| StartError::Successors {
        path: path.display().to_string(),
        source,
    })
}

/// Run `work`, which blocks, off the threads that serve traffic.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done,
        Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
    }
}

/// A socket taken over from a predecessor, for the runtime.
fn adopt(
    listener: &str,
    addr: SocketAddr,
    socket: std::net::TcpListener,
) -> Result<TcpListener, StartError> {
    TcpListener::from_std(socket).map_err(|source| StartError::Bind {
        listener: listener.to_string(),
        addr,
        source,
    })
}

/// Sockets bound and ready to serve.
pub struct Bound {
    listeners: Vec<(Arc<str>, TcpListener)>,
    admin: Option<TcpListener>,
    snapshot: snapshot::Shared,
    shutdown_grace: Duration,
    config_path: Option<PathBuf>,
    /// The admin endpoint's configured address.
    admin_bind: Option<SocketAddr>,
}

impl Bound {
    /// Each listener's name and the address it actually bound (port 0 resolved).
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(name, l)| Some((name.to_string(), l.local_addr().ok()?)))
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Start serving on the current Tokio runtime.
    pub fn start(self) -> Running {
        let drain = Drain::default();
        let connections = Arc::new(Connections::default());
        let reloader = Arc::new(Reloader::new(
            self.snapshot.clone(),
            self.config_path,
            self.admin_bind,
            drain.clone(),
            connections.clone(),
        ));
        let admin_stop = CancellationToken::new();
        let mut admin_socket = None;
        if let Some(admin) = self.admin {
            if let Ok(addr) = admin.local_addr() {
                tracing::info!(addr = %addr, "admin listening");
            }
            let admin = Arc::new(admin);
            admin_socket = self.admin_bind.map(|addr| (addr, Arc::downgrade(&admin)));
            tokio::spawn(admin::serve(
                admin,
                admin_stop.clone(),
                drain.clone(),
                self.snapshot.clone(),
                connections.clone(),
                reloader.clone(),
            ));
        }
        tokio::spawn(watch_certificates(self.snapshot.clone(), drain.clone()));
        for pool in self.snapshot.load().pools_by_name() {
            pool.start();
        }
        tokio::spawn(reloader.clone().watch(drain.stopping.clone()));
        let current = self.snapshot.load();
        for (name, listener) in self.listeners {
            let configured = current
                .listener(&name)
                .expect("a bound listener is configured");
            reloader.serve(&name, configured.bind, listener);
        }
        drain.set_ready();
        Running {
            drain,
            shutdown_grace: self.shutdown_grace,
            snapshot: self.snapshot,
            reloader,
            admin: admin_socket,
            admin_stop,
        }
    }
}

/// How often certificate and key files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(2);

/// Reload a listener's certificates when its files change (a renewal by certbot or
/// cert-manager), so that no signal is needed. The listeners are those of the current
/// snapshot: a reload's new TLS settings are watched from then on.
async fn watch_certificates(snapshot: snapshot::Shared, drain: Drain) {
    let mut tick = tokio::time::interval(CERT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = drain.stopping.cancelled() => return,
        }
        for listener in tls_listeners(&snapshot) {
            // File reads block; they are few and small.
            tokio::task::block_in_place(|| listener.reload_if_changed());
        }
    }
}

fn tls_listeners(snapshot: &snapshot::Shared) -> Vec<Arc<ServerTls>> {
    snapshot
        .load()
        .listeners()
        .iter()
        .filter_map(|l| l.tls.clone())
        .collect()
}

/// A serving proxy.
pub struct Running {
    drain: Drain,
    pub shutdown_grace: Duration,
    snapshot: snapshot::Shared,
    reloader: Arc<Reloader>,
    /// The admin endpoint's configured address and socket, for a handoff.
    admin: Option<(SocketAddr, std::sync::Weak<TcpListener>)>,
    /// Stops the admin endpoint (after a handoff, the successor answers it).
    admin_stop: CancellationToken,
}

impl Running {
    /// Hand the listening sockets to the first successor that connects on `listener` and
    /// gets ready; a successor that fails is logged, and the next one waited for. Returns
    /// the successor's pid, with this process's admin endpoint stopped: begin the shutdown
    /// next.
    pub async fn hand_over(&self, listener: &UnixListener) -> u32 {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a successor's connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.hand_over_on(stream).await {
                Ok(pid) => {
                    self.admin_stop.cancel();
                    return pid;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a successor did not take over; still serving")
                }
            }
        }
    }

    async fn hand_over_on(&self, stream: tokio::net::UnixStream) -> Result<u32, HandoffError> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        let admin = match &self.admin {
            Some((addr, socket)) => handoff::descriptor(socket)?.map(|fd| (*addr, fd)),
            None => None,
        };
        let offered = Offered {
            listeners: self.reloader.sockets()?,
            admin,
        };
        // The exchange blocks on the successor's answers.
        off_runtime(move || handoff::hand_over(stream, offered)).await
    }

    /// Load every TLS listener's certificates again (SIGHUP). New handshakes use them;
    /// open connections and tunnels are untouched. A listener whose new files are unusable
    /// keeps its current certificates, and the log says why.
    pub fn reload_certificates(&self) {
        for listener in tls_listeners(&self.snapshot) {
            listener.reload_and_log("reload requested");
        }
    }

    /// Reload the configuration file (SIGHUP); see [`Reloader`]. The outcome is logged.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.reloader.reload().await
    }

    /// Stop accepting, report not-ready, close idle connections, let in-flight requests
    /// finish, and close open tunnels over `drain_spread` (WebSocket tunnels with close
    /// frames).
    pub fn begin_shutdown(&self) {
        let settings = self.snapshot.load().drain;
        self.drain.begin(settings.spread, settings.close_code);
    }

    /// Close every tunnel and connection that is still open.
    pub fn force_close(&self) {
        self.drain.force.cancel();
    }

    /// Resolves when every connection and tunnel has ended (after `begin_shutdown`).
    pub async fn drained(&self) {
        self.drain.tasks.wait().await;
    }

    /// Export the spans still queued (the last tunnels' among them), waiting at most
    /// `[telemetry] export_timeout`.
    pub async fn flush_traces(&self) {
        let Some(tracer) = self.snapshot.load().telemetry.clone() else {
            return;
        };
        let timeout = tracer.export_timeout();
        let flushed = tokio::task::spawn_blocking(move || tracer.flush()).await;
        if !matches!(flushed, Ok(true)) {
            tracing::warn!(
                ?timeout,
                "spans not exported before exit: the collector did not take them in time"
            );
        }
    }

    /// Connections and tunnels still open.
    pub fn open_tasks(&self) -> usize {
        self.drain.tasks.len()
    }
}
