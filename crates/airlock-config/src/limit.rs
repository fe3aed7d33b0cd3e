//! `[limit.NAME]` tables: admission limits that routes name in `limits = [...]`.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::model::Spanned;
use crate::units::Duration;

/// `max_keys` when unset: distinct keys one limit tracks at once.
pub const DEFAULT_LIMIT_MAX_KEYS: usize = 100_000;
/// `store_timeout` when unset: how long a Redis check may take before `on_store_error`.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration(std::time::Duration::from_millis(5));

/// `[limit.per_ip]` with `rate = "10/s"`, `burst = 20`, `concurrent = 5`, `key = "client_ip"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// `rate = "10/s"` (or `/min`, `/h`): handshakes and requests admitted per key, on
    /// average.
    #[serde(default)]
    pub rate: Option<Spanned<Rate>>,
    /// `burst = 20`: how many may arrive at once from a key that has been quiet; default
    /// the rate's count (`"10/s"` → 10). Needs `rate`.
    #[serde(default)]
    pub burst: Option<Spanned<u32>>,
    /// `concurrent = 5`: open tunnels plus requests in flight per key.
    #[serde(default)]
    pub concurrent: Option<Spanned<u32>>,
    /// What is counted separately: `"client_ip"` (default), `"header:X-Api-Key"`,
    /// `"plugin"` (the key a plugin set), `"route"` (one count per route that names it).
    #[serde(default = "default_key")]
    pub key: Spanned<LimitKey>,
    /// `max_keys = 100000`: distinct keys tracked at once; idle keys are forgotten first.
    #[serde(default = "default_max_keys")]
    pub max_keys: Spanned<usize>,
    /// `store = "local"` (default): counted in this process. A Redis URL shares the rate
    /// across instances.
    #[serde(default = "default_store")]
    pub store: Spanned<Store>,
    /// `on_store_error = "allow"` or `"deny"`: what a shared store's failure means.
    #[serde(default)]
    pub on_store_error: Option<Spanned<OnStoreError>>,
    /// `store_timeout = "5ms"`: how long a shared store may take to answer.
    #[serde(default)]
    pub store_timeout: Option<Spanned<Duration>>,
}

fn default_key() -> Spanned<LimitKey> {
    Spanned::new(0..0, LimitKey::default())
}
fn default_store() -> Spanned<Store> {
    Spanned::new(0..0, Store::default())
}
fn default_max_keys() -> Spanned<usize> {
    Spanned::new(0..0, DEFAULT_LIMIT_MAX_KEYS)
}

impl Limit {
    /// The burst in effect: `burst`, or the rate's count.
    pub fn burst(&self) -> Option<u32> {
        let rate = self.rate.as_ref()?.get_ref();
        Some(self.burst.as_ref().map_or(rate.count, |b| *b.get_ref()))
    }
}

/// A rate: `count` per `per`, written `"10/s"`, `"600/min"`, `"1000/h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: std::time::Duration,
}

impl Rate {
    fn parse(s: &str) -> Option<Self> {
        let (count, unit) = s.trim().split_once('/')?;
        let count: u32 = count.trim().parse().ok()?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            _ => return None,
        };
        Some(Self {
            count,
            per: std::time::Duration::from_secs(per),
        })
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Rate::parse(&s).ok_or_else(|| {
            de::Error::custom(format!(
                r#"invalid rate "{s}"; write a count per second, minute or hour, like "10/s", "600/min" or "1000/h""#
            ))
        })
    }
}

/// What a limit counts separately.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LimitKey {
    /// The client's address (the nearest untrusted one when the peer is a trusted proxy).
    #[default]
    ClientIp,
    /// A request header's value, lowercase name; requests without it are keyed by their
    /// client address.
    Header(String),
    /// One count per route that names the limit.
    Route,
    /// The key a plugin of the route set (`limit-key`); a request without one is keyed
    /// by its client address. Checked after the plugins.
    Plugin,
}

impl LimitKey {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "client_ip" => Some(Self::ClientIp),
            "route" => Some(Self::Route),
            "plugin" => Some(Self::Plugin),
            _ => {
                let name = s.strip_prefix("header:")?;
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                (!name.is_empty() && name.bytes().all(token))
                    .then(|| Self::Header(name.to_ascii_lowercase()))
            }
        }
    }
}

impl<'de> Deserialize<'de> for LimitKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LimitKey::parse(&s).ok_or_else(|| {
            de::Error::custom(format!(
                r#"invalid limit key "{s}"; write "client_ip", "header:NAME" (like "header:X-Api-Key"), "plugin" or "route""#
            ))
        })
    }
}

/// Where a limit's counts live.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Store {
    /// In this process.
    #[default]
    Local,
    /// `redis://host:port` (or `rediss://`, `redis://host:port/db`): shared by every
    /// instance that names the same server and limit.
    Redis(String),
}

impl<'de> Deserialize<'de> for Store {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Store;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""local" or a Redis URL like "redis://127.0.0.1:6379""#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Store, E> {
                if s == "local" {
                    Ok(Store::Local)
                } else if s.starts_with("redis://") || s.starts_with("rediss://") {
                    Ok(Store::Redis(s.to_string()))
                } else {
                    Err(E::custom(format!(
                        r#"invalid store "{s}"; write "local" or a Redis URL like "redis://127.0.0.1:6379""#
                    )))
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// What a handshake gets when a shared store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Check against this instance's own count instead (the rate then holds per instance).
    #[default]
    Allow,
    /// Refuse with 503.
    Deny,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let r = Rate::parse("10/s").unwrap();
        assert_eq!((r.count, r.per.as_secs()), (10, 1));
        let r = Rate::parse("600/min").unwrap();
        assert_eq!((r.count, r.per.as_secs()), (600, 60));
        assert_eq!(Rate::parse("5 / h").unwrap().per.as_secs(), 3600);
        assert!(Rate::parse("10").is_none());
        assert!(Rate::parse("10/day").is_none());
        assert!(Rate::parse("-1/s").is_none());
    }

    #[test]
    fn keys() {
        assert_eq!(LimitKey::parse("client_ip"), Some(LimitKey::ClientIp));
        assert_eq!(
            LimitKey::parse("header:X-Api-Key"),
            Some(LimitKey::Header("x-api-key".into()))
        );
        assert_eq!(LimitKey::parse("header:"), None);
        assert_eq!(LimitKey::parse("header:a b"), None);
        assert_eq!(LimitKey::parse("ip"), None);
    }
}
