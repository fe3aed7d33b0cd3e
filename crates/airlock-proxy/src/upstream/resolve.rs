//! Servers given by name (`"backend.internal:9001"`): every address the name resolves to
//! is a server of the pool, and the name is resolved again every `resolve_interval`. A
//! failed resolution (an error, no answer within [`RESOLVE_TIMEOUT`], or no addresses)
//! keeps the last good set and is logged once, when the name starts failing; a name that
//! has never resolved is retried sooner (1s, doubling up to the interval).
//!
//! The resolver is the system's (`getaddrinfo`, through `tokio::net::lookup_host` on the
//! blocking pool), not a DNS client of our own such as hickory-resolver. It gives the
//! same answers as every other program on the host: `/etc/hosts`, `nsswitch.conf`, search
//! domains, and the host's caching resolver (systemd-resolved, nscd, a sidecar), which is
//! where TTLs are honoured. It costs no dependency, and it runs once per name per
//! interval, off the request path. What it cannot do is report TTLs, so an address may be
//! used for up to `resolve_interval` after its record expires; set the interval to the
//! records' TTL when that matters.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long one resolution may take before it counts as failed.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A `servers` entry as configured.
#[derive(Debug)]
pub(super) struct Entry {
    target: Target,
    pub weight: u32,
}

#[derive(Debug)]
enum Target {
    /// An address: one server, never resolved.
    Addr(SocketAddr),
    /// `host:port`: as many servers as the name has addresses, as last resolved.
    Name {
        name: Arc<str>,
        resolved: Mutex<NameState>,
    },
}

/// One server a pool's entries stand for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Address {
    pub socket: SocketAddr,
    /// The name it was resolved from, if any.
    pub name: Option<Arc<str>>,
    pub weight: u32,
}

impl Entry {
    pub fn new(addr: &str, weight: u32) -> Self {
        let target = match addr.parse() {
            Ok(socket) => Target::Addr(socket),
            Err(_) => Target::Name {
                name: addr.into(),
                resolved: Mutex::default(),
            },
        };
        Self { target, weight }
    }

    /// The name and its resolution state, for an entry given by name.
    pub fn name(&self) -> Option<(&Arc<str>, &Mutex<NameState>)> {
        match &self.target {
            Target::Name { name, resolved } => Some((name, resolved)),
            Target::Addr(_) => None,
        }
    }

    /// The servers this entry stands for now.
    pub fn addresses(&self) -> Vec<Address> {
        let (sockets, name) = match &self.target {
            Target::Addr(socket) => (vec![*socket], None),
            Target::Name { name, resolved } => (
                resolved.lock().expect("name state lock").addrs.clone(),
                Some(name),
            ),
        };
        sockets
            .into_iter()
            .map(|socket| Address {
                socket,
                name: name.cloned(),
                weight: self.weight,
            })
            .collect()
    }

    /// Resolve the name once (nothing for an address).
    pub async fn resolve(&self, pool: &str) {
        if let Some((name, resolved)) = self.name() {
            let result = lookup(name).await;
            resolved
                .lock()
                .expect("name state lock")
                .record(pool, name, result);
        }
    }
}

/// What one name resolved to, and whether it resolves now.
#[derive(Debug, Default)]
pub(super) struct NameState {
    /// The last good set (sorted, no duplicates); empty until the name first resolves.
    pub addrs: Vec<SocketAddr>,
    /// Why the last resolution failed, while it fails.
    pub error: Option<String>,
    pub resolved_at: Option<SystemTime>,
}

impl NameState {
    /// Record one resolution of `name`, logging a change between failing and resolving.
    pub fn record(&mut self, pool: &str, name: &str, result: Result<Vec<SocketAddr>, String>) {
        match result {
            Ok(addrs) => {
                if let Some(error) = self.error.take() {
                    tracing::info!(
                        upstream = pool,
                        name,
                        addresses = ?addrs,
                        previous_error = error,
                        "upstream server name resolves again"
                    );
                }
                self.addrs = addrs;
                self.resolved_at = Some(SystemTime::now());
            }
            Err(error) => {
                if self.error.is_none() {
                    tracing::warn!(
                        upstream = pool,
                        name,
                        error,
                        kept = ?self.addrs,
                        "cannot resolve upstream server name; keeping its last addresses"
                    );
                }
                self.error = Some(error);
            }
        }
    }

    pub fn status(&self, name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "addresses": self.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "error": self.error,
            "resolved_at": self.resolved_at.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        })
    }
}

/// Resolve `name` (`host:port`) with the system's resolver.
pub(super) async fn lookup(name: &str) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name)).await {
        Err(_) => Err(format!("no answer within {}s", RESOLVE_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(addrs)) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                Err("the name has no addresses".to_string())
            } else {
                Ok(addrs)
            }
        }
    }
}

/// The wait before the next resolution: `interval`, or while some name has never resolved,
/// `retry` (1s, doubling up to `interval`), which this updates.
pub(super) fn next_delay(unresolved: bool, retry: &mut Duration, interval: Duration) -> Duration {
    if unresolved {
        let delay = (*retry).min(interval);
        *retry = (*retry * 2).min(interval);
        delay
    } else {
        *retry = Duration::from_secs(1);
        interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_never_resolved_is_retried_sooner_up_to_the_interval() {
        let interval = Duration::from_secs(5);
        let mut retry = Duration::from_secs(1);
        let waits: Vec<u64> = (0..5)
            .map(|_| next_delay(true, &mut retry, interval).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 5, 5]);
        assert_eq!(next_delay(false, &mut retry, interval), interval);
        assert_eq!(
            next_delay(true, &mut retry, interval),
            Duration::from_secs(1)
        );
    }
}
