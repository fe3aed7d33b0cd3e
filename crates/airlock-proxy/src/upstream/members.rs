//! A pool's servers at one moment, with the balancer and hint source built over them, and
//! the walk over servers that one request makes (healthy first, each at most once).
//!
//! A request takes its pool's members once ([`super::Pool::members`]) and uses them for
//! its whole life: the indices in its [`Hint`] and the sticky cookie it is given refer to
//! this list, even if DNS changes the pool's servers meanwhile.

use std::sync::Arc;
use std::time::Duration;

use super::balance::{Balancer, Hint, HintSource};
use super::server::Server;
use crate::error::ProxyError;
use crate::stream::Stream;

#[derive(Debug)]
pub struct Members {
    pub name: Arc<str>,
    pub(super) servers: Vec<Server>,
    balancer: Box<dyn Balancer>,
    /// What the balancer reads from a request (hash key, sticky cookie), if anything.
    pub hints: HintSource,
    connect_attempts: usize,
}

impl Members {
    pub(super) fn new(
        name: Arc<str>,
        servers: Vec<Server>,
        balancer: Box<dyn Balancer>,
        hints: HintSource,
        connect_attempts: u32,
    ) -> Self {
        Self {
            name,
            connect_attempts: (connect_attempts as usize).min(servers.len()).max(1),
            servers,
            balancer,
            hints,
        }
    }

    /// No servers (a pool's members before they are known).
    pub(super) fn empty(name: Arc<str>) -> Self {
        Self::new(
            name,
            Vec::new(),
            Box::new(super::balance::RoundRobin::new(&[])),
            HintSource::default(),
            1,
        )
    }

    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// The server with address `addr` (as the admin API shows it).
    pub fn server(&self, addr: &str) -> Option<&Server> {
        self.servers.iter().find(|s| &*s.addr == addr)
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
            members: self,
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

    /// The error when no server may be tried at all (every one drained, or a name that
    /// has not resolved yet).
    pub fn no_server(&self) -> ProxyError {
        ProxyError::NoServer {
            pool: self.name.to_string(),
        }
    }
}

/// Walks a pool's servers for one request: healthy ones first, each at most once.
pub struct Attempts<'a> {
    members: &'a Members,
    hint: &'a Hint,
    tried: Vec<bool>,
    left: usize,
}

impl Attempts<'_> {
    pub fn next_server(&mut self) -> Option<Server> {
        if self.left == 0 {
            return None;
        }
        let servers = &self.members.servers;
        let balancer = &self.members.balancer;
        let tried = &self.tried;
        let hint = self.hint;
        let pick = balancer
            .pick(servers, hint, &|i| !tried[i] && servers[i].is_available())
            // When every untried server is marked down, try them anyway: refusing all
            // traffic on stale health data would turn a blip into an outage. Servers an
            // operator drained stay out.
            .or_else(|| {
                let undrained = |i: usize| !tried[i] && !servers[i].is_drained();
                balancer.pick(servers, hint, &undrained)
            })?;
        self.tried[pick] = true;
        self.left -= 1;
        Some(servers[pick].clone())
    }
}
