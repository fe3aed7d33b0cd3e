//! One `[upstream.NAME]` pool: its servers, the balancer that orders them, and the walk
//! over servers that one request makes (healthy first, each at most once).

use std::sync::Arc;
use std::time::Duration;

use super::balance::{self, Balancer, Hint, HintSource};
use super::health::probe;
use super::server::Server;
use super::tls::UpstreamTls;
use crate::error::ProxyError;
use crate::stream::Stream;

/// One `[upstream.NAME]` pool.
#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    servers: Vec<Server>,
    balancer: Box<dyn Balancer>,
    /// What the balancer reads from a request (hash key, sticky cookie), if anything.
    pub hints: HintSource,
    balance: airlock_config::Balance,
    connect_attempts: usize,
    health_check: Option<Arc<airlock_config::HealthCheck>>,
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
        let fallback = cfg
            .sticky_fallback
            .as_ref()
            .map(|f| *f.get_ref())
            .unwrap_or_default();
        Self {
            name: name.into(),
            balancer: balance::build(cfg.balance, fallback, &servers),
            hints: HintSource::new(cfg, &servers),
            balance: cfg.balance,
            health_check: cfg
                .health_check
                .as_ref()
                .map(|c| Arc::new(c.get_ref().clone())),
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

    /// Start probing every server, when the pool has a `health_check`. The probe tasks
    /// end by themselves once the pool is dropped.
    pub fn start_health_checks(&self) {
        let Some(check) = &self.health_check else {
            return;
        };
        for server in &self.servers {
            tokio::spawn(probe::run(
                server.downgrade(),
                self.name.clone(),
                check.clone(),
            ));
        }
    }

    /// The server with address `addr`, for the admin API.
    pub fn server(&self, addr: &str) -> Option<&Server> {
        self.servers.iter().find(|s| &*s.addr == addr)
    }

    /// Live state for the admin endpoint.
    pub fn status(&self) -> serde_json::Value {
        let servers: Vec<_> = self.servers.iter().map(Server::status).collect();
        serde_json::json!({
            "name": &*self.name,
            "balance": self.balance.name(),
            "servers": servers,
        })
    }

    /// The `Set-Cookie` a sticky pool adds to a response from `server` (the address of
    /// one of its servers), when the request's cookie did not already name it.
    pub fn set_cookie(
        &self,
        hint: &Hint,
        server: &Arc<str>,
        secure: bool,
    ) -> Option<http::HeaderValue> {
        // Most pools are not sticky: answer before looking for the server.
        if !self.hints.sets_cookies() {
            return None;
        }
        let index = self
            .servers
            .iter()
            .position(|s| Arc::ptr_eq(&s.addr, server))?;
        self.hints.set_cookie(hint, index, secure)
    }

    /// The servers to try for one request, in balancer order, at most `connect_attempts`.
    pub fn attempts<'a>(&'a self, hint: &'a Hint) -> Attempts<'a> {
        Attempts {
            pool: self,
            hint,
            tried: vec![false; self.servers.len()],
            left: self.connect_attempts,
        }
    }

    /// Connect to a server, failing over to the next one on connect errors.
    pub async fn connect(
        &self,
        timeout: Duration,
        hint: &Hint,
    ) -> Result<(Server, Stream), ProxyError> {
        let mut attempts = self.attempts(hint);
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
        Err(last_error.unwrap_or_else(|| self.no_server()))
    }

    /// The error when no server may be tried at all (every one drained).
    pub fn no_server(&self) -> ProxyError {
        ProxyError::NoServer {
            pool: self.name.to_string(),
        }
    }
}

/// Walks a pool's servers for one request: healthy ones first, each at most once.
pub struct Attempts<'a> {
    pool: &'a Pool,
    hint: &'a Hint,
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
        let hint = self.hint;
        let pick = self
            .pool
            .balancer
            .pick(servers, hint, &|i| !tried[i] && servers[i].is_available())
            // When every untried server is marked down, try them anyway: refusing all
            // traffic on stale health data would turn a blip into an outage. Servers an
            // operator drained stay out.
            .or_else(|| {
                let undrained = |i: usize| !tried[i] && !servers[i].is_drained();
                self.pool.balancer.pick(servers, hint, &undrained)
            })?;
        self.tried[pick] = true;
        self.left -= 1;
        Some(servers[pick].clone())
    }
}
