//! How a pool picks a server: `balance`, and the settings of the balancers that keep a
//! client on one server (`hash_key`, `sticky_fallback`, `cookie`).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer};

/// `sticky_cookie`'s cookie name when unset.
pub const DEFAULT_STICKY_COOKIE: &str = "airlock_server";

/// How a pool picks a server. `balance = "round_robin"`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each server in turn, in proportion to its weight.
    #[default]
    RoundRobin,
    /// The server with the fewest live tunnels and in-flight requests per unit of weight.
    LeastConn,
    /// Two servers drawn at random (by weight); the one with less in flight per unit of
    /// weight wins ("power of two choices").
    RandomTwo,
    /// A consistent hash of the client's address (the trusted-forwarding one).
    IpHash,
    /// A consistent hash of `hash_key`.
    ConsistentHash,
    /// A cookie naming the server; clients without a valid one are placed by
    /// `sticky_fallback`.
    StickyCookie,
}

impl Balance {
    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::RandomTwo => "random_two",
            Balance::IpHash => "ip_hash",
            Balance::ConsistentHash => "consistent_hash",
            Balance::StickyCookie => "sticky_cookie",
        }
    }
}

/// What a hash balancer hashes: `"client_ip"`, `"header:X-User"`, `"cookie:session"`,
/// `"query:room"` or `"affinity"` (the key a plugin set). A request that lacks the
/// source (no such header, cookie or parameter; no key from a plugin) is hashed by its
/// client address instead.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    #[default]
    ClientIp,
    /// A request header, by name (lowercase).
    Header(String),
    Cookie(String),
    Query(String),
    /// The affinity key a plugin set (`affinity-key` in the WIT `allow` result).
    Affinity,
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Header(h) => write!(f, "header:{h}"),
            HashKey::Cookie(c) => write!(f, "cookie:{c}"),
            HashKey::Query(q) => write!(f, "query:{q}"),
            HashKey::Affinity => f.write_str("affinity"),
        }
    }
}

impl std::str::FromStr for HashKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let named = |kind: &str, name: &str, valid: fn(u8) -> bool| {
            if name.is_empty() || !name.bytes().all(valid) {
                Err(format!(
                    "`{kind}:` needs a {kind} name, like \"{kind}:{}\"",
                    example(kind)
                ))
            } else {
                Ok(name.to_string())
            }
        };
        match s.split_once(':') {
            None if s == "client_ip" => Ok(HashKey::ClientIp),
            None if s == "affinity" => Ok(HashKey::Affinity),
            Some(("header", name)) => {
                let name = named("header", name, is_token_byte)?;
                Ok(HashKey::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) => named("cookie", name, is_token_byte).map(HashKey::Cookie),
            Some(("query", name)) => named("query", name, |b| {
                b.is_ascii_graphic() && !b"&=#".contains(&b)
            })
            .map(HashKey::Query),
            _ => Err(format!(
                r#"unknown hash source "{s}"; expected "client_ip", "header:NAME", "cookie:NAME", "query:NAME" or "affinity""#
            )),
        }
    }
}

fn example(kind: &str) -> &'static str {
    match kind {
        "header" => "X-User",
        "cookie" => "session",
        _ => "room",
    }
}

/// A byte of an HTTP token (RFC 9110 §5.6.2), which header and cookie names are.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl<'de> Deserialize<'de> for HashKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// `cookie = { ... }` of a `sticky_cookie` pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyCookie {
    /// `name = "airlock_server"`
    #[serde(default = "default_cookie_name")]
    pub name: String,
    /// `same_site = "lax"` (default), `"strict"` or `"none"` (which browsers accept only
    /// with `Secure`, that is on a TLS listener).
    #[serde(default)]
    pub same_site: SameSite,
    /// `secret = "..."`: the key that signs server ids. Several airlock instances in front
    /// of one pool need the same secret to honour each other's cookies; without one, each
    /// process draws a random key at start. Never logged.
    #[serde(default)]
    pub secret: Option<String>,
    /// `strip = true`: remove the cookie from the request the upstream sees.
    #[serde(default)]
    pub strip: bool,
}

impl Default for StickyCookie {
    fn default() -> Self {
        Self {
            name: default_cookie_name(),
            same_site: SameSite::default(),
            secret: None,
            strip: false,
        }
    }
}

fn default_cookie_name() -> String {
    DEFAULT_STICKY_COOKIE.to_string()
}

/// The cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn attribute(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_parse() {
        assert_eq!("client_ip".parse(), Ok(HashKey::ClientIp));
        assert_eq!("affinity".parse(), Ok(HashKey::Affinity));
        assert_eq!(
            "header:X-User".parse(),
            Ok(HashKey::Header("x-user".into()))
        );
        assert_eq!("cookie:sid".parse(), Ok(HashKey::Cookie("sid".into())));
        assert_eq!("query:room".parse(), Ok(HashKey::Query("room".into())));
        assert!("header:".parse::<HashKey>().is_err());
        assert!("header:a b".parse::<HashKey>().is_err());
        assert!("path".parse::<HashKey>().is_err());
    }
}
