//! `sticky_cookie`: a cookie names the client's server. The cookie's value is an HMAC
//! (SHA-256, keyed by the pool's `secret`) of the server's address, truncated to 96 bits
//! and hex-encoded: it reveals no address, and no one without the key can forge a value
//! that names a server. A request whose cookie names a server that may be used goes
//! there; any other (no cookie, a stale or forged one, its server down or gone) is placed
//! by the pool's `sticky_fallback` and answered with a new cookie.

use std::collections::HashMap;

use http::HeaderValue;
use ring::hmac;

use super::{Balancer, Hint, Server};

/// The balancer: the cookie's server when it may be used, else the fallback's choice.
#[derive(Debug)]
pub struct Sticky {
    pub fallback: Box<dyn Balancer>,
}

impl Balancer for Sticky {
    fn pick(
        &self,
        servers: &[Server],
        hint: &Hint,
        eligible: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        match hint.sticky {
            Some(i) if eligible(i) => Some(i),
            _ => self.fallback.pick(servers, hint, eligible),
        }
    }
}

/// The cookie of one `sticky_cookie` pool: its name, attributes and the value for each
/// server.
#[derive(Debug, Clone)]
pub struct StickyCookie {
    pub name: String,
    /// Signs server addresses. Kept for the pool's life, so that a change of servers (DNS)
    /// leaves the cookies of the servers that stay valid, even with a generated key.
    key: hmac::Key,
    /// Value per server index.
    values: Vec<String>,
    by_value: HashMap<String, usize>,
    same_site: &'static str,
    pub strip: bool,
}

impl StickyCookie {
    pub fn new(cfg: &airlock_config::StickyCookie, servers: &[Server]) -> Self {
        let key = match &cfg.secret {
            Some(secret) => hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            None => hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
                .expect("the system's random source works"),
        };
        Self {
            name: cfg.name.clone(),
            key,
            values: Vec::new(),
            by_value: HashMap::new(),
            same_site: cfg.same_site.attribute(),
            strip: cfg.strip,
        }
        .for_servers(servers)
    }

    /// The same cookie (name, key, attributes) over another list of servers.
    pub fn for_servers(&self, servers: &[Server]) -> Self {
        let values: Vec<String> = servers
            .iter()
            .map(|s| {
                let tag = hmac::sign(&self.key, s.addr.as_bytes());
                tag.as_ref()[..12]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            })
            .collect();
        let by_value = values
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, v)| (v, i))
            .collect();
        Self {
            name: self.name.clone(),
            key: self.key.clone(),
            values,
            by_value,
            same_site: self.same_site,
            strip: self.strip,
        }
    }

    /// The server a cookie value names, if it names one of this pool's.
    pub fn server_for(&self, value: &str) -> Option<usize> {
        self.by_value.get(value).copied()
    }

    /// The `Set-Cookie` value that sends a client to server `index`. `Secure` when the
    /// client came over TLS.
    pub fn set_cookie(&self, index: usize, secure: bool) -> HeaderValue {
        let secure = if secure { "; Secure" } else { "" };
        let value = format!(
            "{}={}; Path=/; HttpOnly; SameSite={}{secure}",
            self.name, self.values[index], self.same_site
        );
        HeaderValue::try_from(value).expect("cookie names and hex values are valid header text")
    }
}

#[cfg(test)]
mod tests {
    use super::super::{RoundRobin, servers};
    use super::*;

    fn cookie(secret: Option<&str>, s: &[Server]) -> StickyCookie {
        let cfg = airlock_config::StickyCookie {
            secret: secret.map(str::to_string),
            ..Default::default()
        };
        StickyCookie::new(&cfg, s)
    }

    #[test]
    fn values_name_servers_without_revealing_them() {
        let s = servers(&[1, 1, 1]);
        let c = cookie(Some("0123456789abcdef"), &s);
        for i in 0..3 {
            let header = c.set_cookie(i, false);
            let header = header.to_str().unwrap();
            let value = header
                .strip_prefix("airlock_server=")
                .and_then(|v| v.split(';').next())
                .unwrap();
            assert_eq!(value.len(), 24);
            assert!(!header.contains("127.0.0.1"), "{header}");
            assert_eq!(c.server_for(value), Some(i));
        }
        assert_eq!(c.server_for("000000000000000000000000"), None);
        // Another key gives other values: a cookie from a pool with another secret (or
        // one made up) names nothing.
        let other = cookie(Some("fedcba9876543210"), &s);
        assert_ne!(c.values, other.values);
        // The same key on another instance gives the same values.
        assert_eq!(c.values, cookie(Some("0123456789abcdef"), &s).values);
        assert_ne!(cookie(None, &s).values, cookie(None, &s).values);
    }

    #[test]
    fn attributes() {
        let s = servers(&[1]);
        let c = cookie(None, &s);
        let plain = c.set_cookie(0, false);
        assert!(
            plain
                .to_str()
                .unwrap()
                .ends_with("; Path=/; HttpOnly; SameSite=Lax")
        );
        let tls = c.set_cookie(0, true);
        assert!(tls.to_str().unwrap().ends_with("; SameSite=Lax; Secure"));
    }

    #[test]
    fn the_cookie_wins_while_its_server_may_be_used() {
        let s = servers(&[1, 1, 1]);
        let sticky = Sticky {
            fallback: Box::new(RoundRobin::new(&s)),
        };
        let hint = Hint {
            sticky: Some(2),
            ..Hint::default()
        };
        for _ in 0..5 {
            assert_eq!(sticky.pick(&s, &hint, &|_| true), Some(2));
        }
        // Down (or already tried): the fallback places the client elsewhere.
        let picks: Vec<_> = (0..4)
            .map(|_| sticky.pick(&s, &hint, &|i| i != 2).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        // No cookie: the fallback, round robin over all.
        let none = Hint::default();
        let picks: Vec<_> = (0..3)
            .map(|_| sticky.pick(&s, &none, &|_| true).unwrap())
            .collect();
        assert_eq!(picks, [2, 0, 1]);
    }
}
