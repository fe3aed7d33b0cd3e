//! Admission limits: `[limit.NAME]` tables (a handshake rate and a count of open tunnels
//! and requests, per key) and the process-wide `max_connections`.
//!
//! A route's limits run before its plugins, so a flood is refused before it costs plugin
//! time; only those keyed `"plugin"` run after them, on the key the plugins set. A request passes all of them or none: a refusal releases the slots the limits
//! before it took. What passes holds an [`Admission`], kept by the response body (plain
//! HTTP) or the tunnel (an upgrade) and released when that ends, whatever ends it.
//!
//! The pieces: `rate` (GCRA: the rule and its exact semantics), `table` (per-key state,
//! bounded, with eviction), `shared` (a rate kept in Redis for several instances),
//! `connections` (the process's open connections). Concurrent counts are always this
//! instance's own: a count in a shared store would have to be given back by an
//! instance that may have died holding it.

mod connections;
mod rate;
mod shared;
mod table;

pub use connections::{ConnectionSlot, Connections};

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName};

use rate::Gcra;
use shared::SharedRate;
use table::{Ask, Key, Table};

/// One `[limit.NAME]`, with its state. Routes naming it share it.
#[derive(Debug)]
pub struct Limit {
    pub name: Arc<str>,
    rate: Option<Gcra>,
    concurrent: Option<u32>,
    key: KeyRule,
    table: Table,
    /// `store = "redis://..."`: the rate is checked there.
    shared: Option<SharedRate>,
    on_store_error: airlock_config::OnStoreError,
    /// What it was built from: a reload keeps the limit, and its counts, when this is the
    /// same.
    config: airlock_config::Limit,
}

#[derive(Debug)]
enum KeyRule {
    ClientIp,
    Header(HeaderName),
    Route,
    Plugin,
}

/// What a request's keys are made from.
pub struct KeyParts<'a> {
    /// The client's address (the trusted-forwarding one).
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
    pub route: &'a str,
    /// The key the route's plugins set, once they ran.
    pub plugin: Option<&'a str>,
}

impl Limit {
    /// The limit; an unusable store URL is the error.
    pub fn from_config(
        name: &str,
        config: &airlock_config::Limit,
    ) -> Result<Self, redis::RedisError> {
        let rate = config.rate.as_ref().map(|r| {
            let r = r.get_ref();
            Gcra::new(r.count, r.per, config.burst().unwrap_or(1))
        });
        let key = match config.key.get_ref() {
            airlock_config::LimitKey::ClientIp => KeyRule::ClientIp,
            airlock_config::LimitKey::Route => KeyRule::Route,
            airlock_config::LimitKey::Plugin => KeyRule::Plugin,
            airlock_config::LimitKey::Header(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => KeyRule::Header(h),
                Err(_) => unreachable!("header names are checked by airlock-config"),
            },
        };
        let shared = match config.store.get_ref() {
            airlock_config::Store::Local => None,
            airlock_config::Store::Redis(url) => {
                let timeout = config
                    .store_timeout
                    .as_ref()
                    .map_or(airlock_config::DEFAULT_STORE_TIMEOUT, |t| *t.get_ref());
                Some(SharedRate::new(name, url, timeout.get())?)
            }
        };
        Ok(Self {
            name: name.into(),
            rate,
            concurrent: config.concurrent.as_ref().map(|c| *c.get_ref()),
            key,
            table: Table::new(*config.max_keys.get_ref()),
            shared,
            on_store_error: config
                .on_store_error
                .as_ref()
                .map(|o| *o.get_ref())
                .unwrap_or_default(),
            config: config.clone(),
        })
    }

    /// Whether it was built from `config`.
    pub fn has_config(&self, config: &airlock_config::Limit) -> bool {
        &self.config == config
    }

    fn key(&self, parts: &KeyParts<'_>) -> Key {
        match &self.key {
            KeyRule::ClientIp => Key::Ip(parts.client_ip),
            // A request without the header is counted by its address, so leaving the
            // header out is no way around the limit.
            KeyRule::Header(name) => match parts.headers.get(name) {
                Some(value) => Key::bytes(value.as_bytes()),
                None => Key::Ip(parts.client_ip),
            },
            KeyRule::Route => Key::bytes(parts.route.as_bytes()),
            KeyRule::Plugin => match parts.plugin {
                Some(key) => Key::bytes(key.as_bytes()),
                None => Key::Ip(parts.client_ip),
            },
        }
    }

    /// Connect to its shared store, if it has one (see [`SharedRate::warm_up`]).
    pub async fn warm_up(&self) {
        if let Some(shared) = &self.shared {
            shared.warm_up().await;
        }
    }

    /// Whether it is checked after the plugins (its key is theirs).
    pub fn after_plugins(&self) -> bool {
        matches!(self.key, KeyRule::Plugin)
    }

    /// How many keys it tracks now.
    pub fn tracked_keys(&self) -> usize {
        self.table.len()
    }

    /// The limit and its keys now, for the admin endpoint.
    pub fn status(&self) -> serde_json::Value {
        let key = match &self.key {
            KeyRule::ClientIp => "client_ip".to_string(),
            KeyRule::Header(h) => format!("header:{h}"),
            KeyRule::Route => "route".to_string(),
            KeyRule::Plugin => "plugin".to_string(),
        };
        serde_json::json!({
            "name": &*self.name,
            "key": key,
            "rate_per_second": self.rate.map(|r| r.per_second()),
            "burst": self.rate.map(|r| r.burst()),
            "concurrent": self.concurrent,
            "store": if self.shared.is_some() { "redis" } else { "local" },
            "tracked_keys": self.tracked_keys(),
            "max_keys": self.table.capacity(),
        })
    }
}

/// Why a request was refused, and by which limit.
#[derive(Debug)]
pub struct Refusal {
    pub limit: Arc<str>,
    pub kind: Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over the rate (429): a request from the key would pass after `retry_after`.
    Rate { retry_after: Duration },
    /// The key has `concurrent` tunnels and requests open (503).
    Concurrent,
    /// The limit tracks `max_keys` keys, each with a tunnel open (503).
    Full,
    /// The shared store did not answer, and `on_store_error = "deny"` (503).
    StoreFailed,
}

impl Refused {
    /// Why, for the log.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Rate { .. } => "over its rate for this key",
            Self::Concurrent => "this key has `concurrent` tunnels and requests open",
            Self::Full => "it tracks `max_keys` keys, each with a tunnel open",
            Self::StoreFailed => {
                "its shared store did not answer in time, and on_store_error = \"deny\""
            }
        }
    }

    /// The reason's name, for metrics: `rate`, `concurrent`, `full` or `store`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rate { .. } => "rate",
            Self::Concurrent => "concurrent",
            Self::Full => "full",
            Self::StoreFailed => "store",
        }
    }

    /// When a retry would pass: for a rate only.
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            Self::Rate { retry_after } => Some(retry_after),
            _ => None,
        }
    }
}

/// The open slots one request holds; each is given back when this is dropped.
#[derive(Debug, Default)]
pub struct Admission {
    slots: Vec<Slot>,
}

impl Admission {
    /// Hold `other`'s slots too.
    pub fn join(&mut self, other: Admission) {
        self.slots.extend(other.slots);
    }

    /// Whether it holds nothing (no `concurrent` limit on the route).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[derive(Debug)]
struct Slot {
    limit: Arc<Limit>,
    key: Key,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.table.release(&self.key, rate::now());
    }
}

/// Check `limits` in order; all pass or the first refusal is returned (and slots taken
/// by the limits before it are given back).
pub async fn admit(limits: &[Arc<Limit>], parts: &KeyParts<'_>) -> Result<Admission, Refusal> {
    let mut admission = Admission::default();
    if limits.is_empty() {
        return Ok(admission);
    }
    for limit in limits {
        let key = limit.key(parts);
        let refuse = |kind| Refusal {
            limit: limit.name.clone(),
            kind,
        };
        let Some(shared) = &limit.shared else {
            limit
                .take(&key, limit.rate.as_ref())
                .map_err(|r| refuse(r.into()))?;
            admission.hold(limit, key);
            continue;
        };
        // The count here first (it is cheap and local); a refused rate gives it back.
        limit.take(&key, None).map_err(|r| refuse(r.into()))?;
        admission.hold(limit, key.clone());
        let rate = limit
            .rate
            .as_ref()
            .expect("a shared limit has a rate (validated)");
        match shared.check(&key, rate).await {
            shared::Answer::Admitted => {}
            shared::Answer::Wait(retry_after) => return Err(refuse(Refused::Rate { retry_after })),
            shared::Answer::Failed => match limit.on_store_error {
                airlock_config::OnStoreError::Allow => {
                    limit
                        .table
                        .admit(
                            &key,
                            &Ask {
                                rate: Some(rate),
                                concurrent: None,
                                now: rate::now(),
                            },
                        )
                        .map_err(|r| refuse(r.into()))?;
                }
                airlock_config::OnStoreError::Deny => return Err(refuse(Refused::StoreFailed)),
            },
        }
    }
    Ok(admission)
}

impl Limit {
    /// Take the count (when the limit has one) and `rate` (when given) in the table.
    fn take(&self, key: &Key, rate: Option<&Gcra>) -> Result<(), table::Refused> {
        if rate.is_none() && self.concurrent.is_none() {
            return Ok(());
        }
        let ask = Ask {
            rate,
            concurrent: self.concurrent,
            now: rate::now(),
        };
        self.table.admit(key, &ask)
    }
}

impl Admission {
    /// Keep the slot `limit` gave `key`, when it counts.
    fn hold(&mut self, limit: &Arc<Limit>, key: Key) {
        if limit.concurrent.is_some() {
            self.slots.push(Slot {
                limit: limit.clone(),
                key,
            });
        }
    }
}

impl From<table::Refused> for Refused {
    fn from(refused: table::Refused) -> Self {
        match refused {
            table::Refused::Rate(retry_after) => Self::Rate { retry_after },
            table::Refused::Concurrent => Self::Concurrent,
            table::Refused::Full => Self::Full,
        }
    }
}
