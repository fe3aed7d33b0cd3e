//! Upstream pools: servers, the balancer that picks among them, passive health, connect
//! with a timeout and failover to the next server, and idle keep-alive connections.

pub mod balance;
mod health;
mod keepalive;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;

use crate::error::ProxyError;
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
}

impl Server {
    fn with_settings(addr: String, weight: u32, cfg: &airlock_config::Upstream) -> Self {
        Self {
            addr: addr.into(),
            weight,
            state: Arc::new(ServerState {
                active: AtomicUsize::new(0),
                health: PassiveHealth::new(cfg.max_fails, cfg.fail_timeout.get()),
                idle: IdleConnections::new(cfg.keepalive, cfg.keepalive_timeout.get()),
            }),
        }
    }

    #[cfg(test)]
    pub(crate) fn new(addr: String, weight: u32) -> Self {
        let cfg: airlock_config::Upstream =
            toml::from_str("servers = []").expect("minimal upstream");
        Self::with_settings(addr, weight, &cfg)
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

    /// Open a TCP connection to this server within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<TcpStream, ProxyError> {
        match tokio::time::timeout(timeout, TcpStream::connect(&*self.addr)).await {
            Ok(Ok(stream)) => {
                // Small WebSocket frames must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(source)) => Err(ProxyError::Connect {
                server: self.addr.to_string(),
                source,
            }),
            Err(_) => Err(ProxyError::ConnectTimeout {
                server: self.addr.to_string(),
                timeout,
            }),
        }
    }

    pub fn idle_connection(&self) -> Option<SendRequest<Incoming>> {
        self.state.idle.take()
    }

    pub fn keep_idle(&self, sender: SendRequest<Incoming>) {
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
    pub fn from_config(name: &str, cfg: &airlock_config::Upstream) -> Self {
        let servers: Vec<Server> = cfg
            .servers
            .get_ref()
            .iter()
            .map(|s| Server::with_settings(s.get_ref().addr.clone(), s.get_ref().weight, cfg))
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
        Arc::new(Self::from_config("test", &cfg))
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
    ) -> Result<(Server, TcpStream), ProxyError> {
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
