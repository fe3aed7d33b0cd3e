//! Upstream pools: servers, the balancer that picks among them, passive health, connect
//! with a timeout and failover to the next server, and idle keep-alive connections.

pub mod balance;
mod health;
mod keepalive;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;

use rustls::pki_types::ServerName;

use crate::error::ProxyError;
use crate::stream::Stream;
use crate::tls::client::UpstreamTls;
use balance::Balancer;
use health::PassiveHealth;
use keepalive::IdleConnections;

/// One `[upstream.NAME]` pool.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    servers: Vec<Server>,
    balancer: Box<dyn Balancer>,
    connect_attempts: usize,
}

/// One server of a pool, with its live state shared by every request that uses it.
#[derive(Debug, Clone)]
pub struct Server {
    pub addr: Arc<str>,
    pub weight: u32,
    state: Arc<ServerState>,
}

#[derive(Debug)]
struct ServerState {
    /// Live tunnels plus in-flight requests (least_conn reads it).
    active: AtomicUsize,
    health: PassiveHealth,
    idle: IdleConnections,
    /// TLS to this server, and the name its certificate must have.
    /// (`None` for the name only if the address has no usable host; `Plan::build` refuses
    /// such a configuration, and connecting fails rather than falling back to plain text.)
    tls: Option<(Arc<UpstreamTls>, Option<ServerName<'static>>)>,
}

impl Server {
    fn with_settings(
        addr: String,
        weight: u32,
        cfg: &airlock_config::Upstream,
        tls: Option<&Arc<UpstreamTls>>,
    ) -> Self {
        let tls = tls.map(|tls| (tls.clone(), tls.name_for(&addr)));
        Self {
            addr: addr.into(),
            weight,
            state: Arc::new(ServerState {
                active: AtomicUsize::new(0),
                health: PassiveHealth::new(cfg.max_fails, cfg.fail_timeout.get()),
                idle: IdleConnections::new(cfg.keepalive, cfg.keepalive_timeout.get()),
                tls,
            }),
        }
    }

    #[cfg(test)]
    pub(crate) fn new(addr: String, weight: u32) -> Self {
        let cfg: airlock_config::Upstream =
            toml::from_str("servers = []").expect("minimal upstream");
        Self::with_settings(addr, weight, &cfg, None)
    }

    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::Relaxed)
    }

    /// Count a tunnel or request against this server until the guard is dropped.
    pub fn track(&self) -> ActiveGuard {
        self.state.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.state.clone())
    }

    pub fn is_available(&self) -> bool {
        self.state.health.is_available()
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
        let tcp = TcpStream::connect(&*self.addr)
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

    pub fn idle_connection(&self) -> Option<SendRequest<crate::body::ProxyBody>> {
        self.state.idle.take()
    }

    pub fn keep_idle(&self, sender: SendRequest<crate::body::ProxyBody>) {
        self.state.idle.put(sender)
    }

    pub fn record_success(&self) {
        self.state.health.record_success();
    }

    pub fn record_failure(&self, pool: &str, err: &ProxyError) {
        let marked_down = self.state.health.record_failure();
        tracing::warn!(
            upstream = pool,
            server = &*self.addr,
            error = %crate::error::chain(err),
            marked_down,
            "upstream server failed"
        );
    }
}

/// Counts one tunnel or request against a server while alive.
#[derive(Debug)]
pub struct ActiveGuard(Arc<ServerState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn from_config(
        name: &str,
        cfg: &airlock_config::Upstream,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Self {
        let servers: Vec<Server> = cfg
            .servers
            .get_ref()
            .iter()
            .map(|s| {
                let s = s.get_ref();
                Server::with_settings(s.addr.clone(), s.weight, cfg, tls.as_ref())
            })
            .collect();
        Self {
            name: name.into(),
            balancer: balance::build(cfg.balance, &servers),
            connect_attempts: (cfg.connect_attempts as usize).min(servers.len()).max(1),
            servers,
        }
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Self> {
        let cfg: airlock_config::Upstream =
            toml::from_str(r#"servers = ["127.0.0.1:1"]"#).expect("minimal upstream");
        Arc::new(Self::from_config("test", &cfg, None))
    }

    /// Live state for the admin endpoint.
    pub fn status(&self) -> serde_json::Value {
        let servers: Vec<_> = self
            .servers
            .iter()
            .map(|s| {
                serde_json::json!({
                    "addr": &*s.addr,
                    "weight": s.weight,
                    "active": s.active(),
                    "available": s.is_available(),
                })
            })
            .collect();
        serde_json::json!({ "name": &*self.name, "servers": servers })
    }

    /// The servers to try for one request, in balancer order, at most `connect_attempts`.
    pub fn attempts<'a>(&'a self, affinity_key: Option<&'a str>) -> Attempts<'a> {
        Attempts {
            pool: self,
            affinity_key,
            tried: vec![false; self.servers.len()],
            left: self.connect_attempts,
        }
    }

    /// Connect to a server, failing over to the next one on connect errors.
    pub async fn connect(
        &self,
        timeout: Duration,
        affinity_key: Option<&str>,
    ) -> Result<(Server, Stream), ProxyError> {
        let mut attempts = self.attempts(affinity_key);
        let mut last_error = None;
        while let Some(server) = attempts.next_server() {
            match server.connect(timeout).await {
                Ok(stream) => {
                    server.record_success();
                    return Ok((server, stream));
                }
                Err(e) => {
                    server.record_failure(&self.name, &e);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("a pool always makes at least one attempt"))
    }
}

/// Walks a pool's servers for one request: healthy ones first, each at most once.
pub struct Attempts<'a> {
    pool: &'a Pool,
    affinity_key: Option<&'a str>,
    tried: Vec<bool>,
    left: usize,
}

impl Attempts<'_> {
    pub fn next_server(&mut self) -> Option<Server> {
        if self.left == 0 {
            return None;
        }
        let servers = &self.pool.servers;
        let tried = &self.tried;
        let key = self.affinity_key;
        let pick = self
            .pool
            .balancer
            .pick_for(servers, key, &|i| !tried[i] && servers[i].is_available())
            // When every untried server is marked down, try them anyway: refusing all
            // traffic on stale health data would turn a blip into an outage.
            .or_else(|| self.pool.balancer.pick_for(servers, key, &|i| !tried[i]))?;
        self.tried[pick] = true;
        self.left -= 1;
        Some(servers[pick].clone())
    }
}
