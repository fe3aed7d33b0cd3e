//! A pool's servers at one moment, with the balancer and hint source built over them, and
//! the walk over servers that one request makes (healthy first, each at most once).
//!
//! A request takes its pool's members once ([`super::Pool::members`]) and uses them for
//! its whole life: the indices in its [`Hint`] and the sticky cookie it is given refer to
//! this list, even if DNS changes the pool's servers meanwhile.

use std::sync::Arc;
use std::time::Duration;

use super::balance::{Balancer, Hint, HintSource};
use super::queue::Queue;
use super::server::{ActiveGuard, Server};
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
    /// `max_conns`, when set: a request may wait for a server with room.
    queue: Option<Arc<Queue>>,
}

impl Members {
    pub(super) fn new(
        name: Arc<str>,
        servers: Vec<Server>,
        balancer: Box<dyn Balancer>,
        hints: HintSource,
        connect_attempts: u32,
        queue: Option<Arc<Queue>>,
    ) -> Self {
        Self {
            name,
            connect_attempts: (connect_attempts as usize).min(servers.len()).max(1),
            servers,
            balancer,
            hints,
            queue,
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
            None,
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
            waited: None,
        }
    }

    /// Connect to a server, failing over to the next one on connect errors. The guard
    /// counts the request against the server.
    /// `failed` hears of each server that could not be reached before the next is tried.
    pub async fn connect(
        &self,
        timeout: Duration,
        hint: &Hint,
        mut failed: impl FnMut(&Server, &ProxyError),
    ) -> Result<(Server, ActiveGuard, Stream), ProxyError> {
        let mut attempts = self.attempts(hint);
        let mut last_error = None;
        while let Some((server, guard)) = attempts.next_server().await {
            match server.connect(timeout).await {
                Ok(stream) => {
                    server.record_success();
                    return Ok((server, guard, stream));
                }
                Err(e) => {
                    server.record_failure(&self.name, &e);
                    failed(&server, &e);
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| attempts.exhausted()))
    }
}

/// Walks a pool's servers for one request: healthy ones first, each at most once.
pub struct Attempts<'a> {
    members: &'a Members,
    hint: &'a Hint,
    tried: Vec<bool>,
    left: usize,
    /// How long it waited in the queue, when every server was at `max_conns`.
    waited: Option<Duration>,
}

/// What one look at the servers found.
enum Look {
    Picked(usize, ActiveGuard),
    /// Servers it may try, each at `max_conns`.
    Full,
    /// No server it may try.
    Nothing,
}

impl Attempts<'_> {
    /// The next server to try, with a slot on it taken; `None` when there is none (then
    /// [`Attempts::exhausted`] says why).
    pub async fn next_server(&mut self) -> Option<(Server, ActiveGuard)> {
        if self.left == 0 {
            return None;
        }
        let queue = self.members.queue.clone();
        let mut deadline = None;
        let picked = loop {
            // Listen before looking, so that a slot freed after the look wakes the wait.
            let freed = queue.as_ref().map(|q| q.freed());
            let mut freed = std::pin::pin!(freed);
            if let Some(freed) = freed.as_mut().as_pin_mut() {
                freed.enable();
            }
            match self.look() {
                Look::Picked(index, guard) => break (index, guard),
                Look::Nothing => return None,
                Look::Full => {
                    let Some(queue) = &queue else { return None };
                    let started = *deadline.get_or_insert_with(tokio::time::Instant::now);
                    let until = started + queue.timeout;
                    let woken = tokio::time::timeout_at(until, freed.as_pin_mut()?).await;
                    if woken.is_err() {
                        self.waited = Some(started.elapsed());
                        return None;
                    }
                }
            }
        };
        let (index, guard) = picked;
        self.tried[index] = true;
        self.left -= 1;
        Some((self.members.servers[index].clone(), guard))
    }

    fn look(&self) -> Look {
        let servers = &self.members.servers;
        let balancer = &self.members.balancer;
        let tried = &self.tried;
        let hint = self.hint;
        let untried = |i: usize| !tried[i] && servers[i].has_room();
        let pick = balancer
            .pick(servers, hint, &|i| untried(i) && servers[i].is_available())
            // When every untried server is marked down, try them anyway: refusing all
            // traffic on stale health data would turn a blip into an outage. Servers an
            // operator drained stay out.
            .or_else(|| balancer.pick(servers, hint, &|i| untried(i) && !servers[i].is_drained()));
        match pick {
            Some(index) => match servers[index].try_track() {
                Some(guard) => Look::Picked(index, guard),
                // Another request took the last slot between the look and the take.
                None => Look::Full,
            },
            None if (0..servers.len()).any(|i| !tried[i] && !servers[i].is_drained()) => {
                if self.members.queue.is_some() {
                    Look::Full
                } else {
                    Look::Nothing
                }
            }
            None => Look::Nothing,
        }
    }

    /// Why no server is left: the queue timed out, or none may be tried at all (every
    /// one drained, or a name that has not resolved yet).
    pub fn exhausted(&self) -> ProxyError {
        let pool = self.members.name.to_string();
        match self.waited {
            Some(waited) => ProxyError::QueueTimeout { pool, waited },
            None => ProxyError::NoServer { pool },
        }
    }
}
