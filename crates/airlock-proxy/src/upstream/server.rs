//! One server of a pool and its live state: in-flight and tunnel counts, passive and
//! active health, an operator's drain, idle keep-alive connections, TLS; connecting to it
//! with a timeout.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::health::{ActiveHealth, PassiveHealth};
use super::keepalive::IdleConnections;
use super::queue::Queue;
use super::tls::UpstreamTls;
use crate::drain::Spread;
use crate::error::ProxyError;
use crate::http::body::ProxyBody;
use crate::stream::Stream;

/// One server of a pool, with its live state shared by every request that uses it.
#[derive(Debug, Clone)]
pub struct Server {
    /// The socket address, as text (`"10.0.0.5:9001"`, `"[::1]:9001"`): what logs, the
    /// admin API, hash rings and sticky cookies name it by.
    pub addr: Arc<str>,
    pub weight: u32,
    state: Arc<ServerState>,
}

#[derive(Debug)]
struct ServerState {
    socket: SocketAddr,
    /// The `host:port` this server was resolved from, when it was given by name.
    name: Option<Arc<str>>,
    /// Live tunnels plus in-flight requests (least_conn reads it).
    active: AtomicUsize,
    /// Live tunnels alone (a part of `active`).
    tunnels: AtomicUsize,
    health: PassiveHealth,
    probes: ActiveHealth,
    /// Out of rotation for new connections by an operator (`POST .../drain`).
    drained: AtomicBool,
    /// Closes this server's tunnels gradually when an operator drains it.
    tunnel_drain: Arc<Spread>,
    /// No longer one of its pool's servers (its name stopped resolving to it); it lives
    /// on while its tunnels do, unprobed.
    retired: AtomicBool,
    idle: IdleConnections,
    /// `max_conns`, shared by the pool's servers, when set.
    queue: Option<Arc<Queue>>,
    /// TLS to this server, and the name its certificate must have.
    /// (`None` for the name only if the address has no usable host; `Plan::build` refuses
    /// such a configuration, and connecting fails rather than falling back to plain text.)
    tls: Option<(Arc<UpstreamTls>, Option<ServerName<'static>>)>,
}

impl Server {
    /// A server at `socket`; `name` is the `host:port` it was resolved from, if any.
    pub(super) fn with_settings(
        socket: SocketAddr,
        name: Option<&Arc<str>>,
        weight: u32,
        cfg: &airlock_config::Upstream,
        tls: Option<&Arc<UpstreamTls>>,
        queue: Option<&Arc<Queue>>,
    ) -> Self {
        let addr: Arc<str> = socket.to_string().into();
        // TLS verifies the name the server was configured by, not its address.
        let tls = tls.map(|tls| (tls.clone(), tls.name_for(name.unwrap_or(&addr))));
        Self {
            addr,
            weight,
            state: Arc::new(ServerState {
                socket,
                name: name.cloned(),
                active: AtomicUsize::new(0),
                tunnels: AtomicUsize::new(0),
                health: PassiveHealth::new(cfg.max_fails, cfg.fail_timeout.get()),
                probes: ActiveHealth::new(cfg.health_check.as_ref().map(|c| c.get_ref())),
                drained: AtomicBool::new(false),
                tunnel_drain: Arc::default(),
                retired: AtomicBool::new(false),
                idle: IdleConnections::new(cfg.keepalive, cfg.keepalive_timeout.get()),
                queue: queue.cloned(),
                tls,
            }),
        }
    }

    #[cfg(test)]
    pub(crate) fn new(addr: &str, weight: u32) -> Self {
        let cfg: airlock_config::Upstream =
            toml::from_str("servers = []").expect("minimal upstream");
        Self::with_settings(
            addr.parse().expect("a socket address"),
            None,
            weight,
            &cfg,
            None,
            None,
        )
    }

    pub fn socket(&self) -> SocketAddr {
        self.state.socket
    }

    /// The `host:port` this server was resolved from, when it was given by name (the
    /// `Host` a health probe sends by default).
    pub fn name(&self) -> Option<&str> {
        self.state.name.as_deref()
    }

    /// True when both handles are the same server (the same live state).
    pub fn same(&self, other: &Server) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::Relaxed)
    }

    /// Count a tunnel or request against this server until the guard is dropped.
    pub fn track(&self) -> ActiveGuard {
        self.state.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            state: self.state.clone(),
            tunnel: false,
        }
    }

    /// Count a tunnel or request against this server if it is below its `max_conns`.
    pub(super) fn try_track(&self) -> Option<ActiveGuard> {
        match &self.state.queue {
            None => Some(self.track()),
            Some(queue) => queue.take(&self.state.active).then(|| ActiveGuard {
                state: self.state.clone(),
                tunnel: false,
            }),
        }
    }

    /// Below its `max_conns` (always, without one).
    pub(super) fn has_room(&self) -> bool {
        self.state
            .queue
            .as_ref()
            .is_none_or(|q| q.has_room(&self.state.active))
    }

    /// May get new connections: passive and active health agree, and not drained.
    pub fn is_available(&self) -> bool {
        self.state.health.is_available() && self.state.probes.is_up() && !self.is_drained()
    }

    pub fn is_drained(&self) -> bool {
        self.state.drained.load(Ordering::Relaxed)
    }

    /// Take the server out of rotation for new connections (`true`) or return it. Its
    /// open tunnels and requests are not touched.
    pub fn set_drained(&self, drained: bool) {
        self.state.drained.store(drained, Ordering::Relaxed);
        if !drained {
            self.state.tunnel_drain.stop();
        }
    }

    /// Close this server's open tunnels over `spread`, WebSocket tunnels with close frames
    /// carrying `code` (after `set_drained(true)`, so that their clients reconnect
    /// elsewhere). Returning the server to rotation stops it.
    pub fn drain_tunnels(&self, spread: Duration, code: u16) {
        let tunnels = self.state.tunnels.load(Ordering::Relaxed);
        self.state.tunnel_drain.begin(tunnels, spread, code);
    }

    /// The schedule on which an operator's drain closes this server's tunnels.
    pub fn tunnel_drain(&self) -> &Arc<Spread> {
        &self.state.tunnel_drain
    }

    /// The pool no longer has this server; its probe stops.
    pub(super) fn retire(&self) {
        self.state.retired.store(true, Ordering::Relaxed);
    }

    pub(super) fn is_retired(&self) -> bool {
        self.state.retired.load(Ordering::Relaxed)
    }

    pub(super) fn record_probe(
        &self,
        result: Result<u16, String>,
    ) -> Option<super::health::Change> {
        self.state.probes.record(result)
    }

    /// A handle that does not keep the server alive (for its probe task).
    pub(super) fn downgrade(&self) -> WeakServer {
        WeakServer {
            addr: self.addr.clone(),
            weight: self.weight,
            state: Arc::downgrade(&self.state),
        }
    }

    /// Live state for the admin API.
    pub fn status(&self) -> serde_json::Value {
        let active = self.active();
        let tunnels = self.state.tunnels.load(Ordering::Relaxed);
        serde_json::json!({
            "addr": &*self.addr,
            "name": self.name(),
            "weight": self.weight,
            "available": self.is_available(),
            "drained": self.is_drained(),
            "in_flight": active.saturating_sub(tunnels),
            "tunnels": tunnels,
            "active": active,
            "health": {
                "passive": if self.state.health.is_available() { "up" } else { "down" },
                "active": self.state.probes.status(),
            },
        })
    }

    /// The server's state as `/metrics` shows it.
    pub fn metric_state(&self) -> crate::metrics::ServerState {
        let tunnels = self.state.tunnels.load(Ordering::Relaxed);
        crate::metrics::ServerState {
            up: self.is_available(),
            drained: self.is_drained(),
            in_flight: self.active().saturating_sub(tunnels),
            tunnels,
        }
    }

    /// Open a connection to this server (TCP, then TLS when the pool has it) within
    /// `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<Stream, ProxyError> {
        match tokio::time::timeout(timeout, self.connect_now()).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::ConnectTimeout {
                server: self.addr.to_string(),
                timeout,
            }),
        }
    }

    async fn connect_now(&self) -> Result<Stream, ProxyError> {
        let tcp = TcpStream::connect(self.state.socket)
            .await
            .map_err(|source| ProxyError::Connect {
                server: self.addr.to_string(),
                source,
            })?;
        // Small WebSocket frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let Some((tls, name)) = &self.state.tls else {
            return Ok(Stream::Tcp(tcp));
        };
        let tls_error = |source| ProxyError::UpstreamTls {
            server: self.addr.to_string(),
            source,
        };
        let name = name.clone().ok_or_else(|| {
            tls_error(std::io::Error::other(
                "no server name to verify; set `server_name`",
            ))
        })?;
        let tls = tls.connect(name, tcp).await.map_err(tls_error)?;
        Ok(Stream::boxed(tls))
    }

    pub fn idle_connection(&self) -> Option<SendRequest<ProxyBody>> {
        self.state.idle.take()
    }

    pub fn keep_idle(&self, sender: SendRequest<ProxyBody>) {
        self.state.idle.put(sender)
    }

    pub fn record_success(&self) {
        self.state.health.record_success();
    }

    pub fn record_failure(&self, pool: &str, err: &ProxyError) {
        let marked_down = self.state.health.record_failure();
        crate::metrics::global().upstream_failed(pool, &self.addr);
        tracing::warn!(
            upstream = pool,
            server = &*self.addr,
            error = %crate::error::chain(err),
            marked_down,
            "upstream server failed"
        );
    }
}

/// A server whose pool may be gone; see [`Server::downgrade`].
#[derive(Debug)]
pub struct WeakServer {
    addr: Arc<str>,
    weight: u32,
    state: Weak<ServerState>,
}

impl WeakServer {
    pub fn upgrade(&self) -> Option<Server> {
        Some(Server {
            addr: self.addr.clone(),
            weight: self.weight,
            state: self.state.upgrade()?,
        })
    }
}

/// Counts one tunnel or request against a server while alive.
#[derive(Debug)]
pub struct ActiveGuard {
    state: Arc<ServerState>,
    tunnel: bool,
}

impl ActiveGuard {
    /// The request became a tunnel: count it among the server's tunnels too.
    pub fn into_tunnel(mut self) -> Self {
        if !self.tunnel {
            self.state.tunnels.fetch_add(1, Ordering::Relaxed);
            self.tunnel = true;
        }
        self
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
        if self.tunnel {
            self.state.tunnels.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(queue) = &self.state.queue {
            queue.free();
        }
    }
}
