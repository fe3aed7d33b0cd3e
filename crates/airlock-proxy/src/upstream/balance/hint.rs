//! What a request brings to its pool's balancer: the hash of its key (for `ip_hash` and
//! `consistent_hash`) and the server its sticky cookie names. Read once per request, in
//! the request's pick phase, and only for pools whose balancer uses them; the other
//! balancers get an empty hint at no cost.

use std::net::IpAddr;

use airlock_config::{Balance, HashKey, Upstream};
use http::header::{COOKIE, HeaderValue};
use http::{HeaderMap, Request};

use super::sticky::StickyCookie;
use super::{Server, stable_hash};

/// What a request brings to the balancer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The hash of the request's key, for hash balancers.
    pub hash: Option<u64>,
    /// The server the request's sticky cookie names, when it names one of the pool's.
    pub sticky: Option<usize>,
}

/// How a pool reads hints from requests.
#[derive(Debug, Default, Clone)]
pub struct HintSource {
    /// What is hashed, when the pool (or its sticky fallback) hashes.
    key: Option<HashKey>,
    cookie: Option<StickyCookie>,
}

impl HintSource {
    pub fn new(cfg: &Upstream, servers: &[Server]) -> Self {
        let hashing = match cfg.balance {
            Balance::StickyCookie => cfg.sticky_fallback.as_ref().map(|f| *f.get_ref()),
            other => Some(other),
        };
        let key = match hashing {
            Some(Balance::IpHash) => Some(HashKey::ClientIp),
            Some(Balance::ConsistentHash) => Some(
                cfg.hash_key
                    .as_ref()
                    .map(|k| k.get_ref().clone())
                    .unwrap_or_default(),
            ),
            _ => None,
        };
        let cookie = (cfg.balance == Balance::StickyCookie).then(|| {
            let settings = cfg.cookie.as_ref().map(|c| c.get_ref().clone());
            StickyCookie::new(&settings.unwrap_or_default(), servers)
        });
        Self { key, cookie }
    }

    /// The same source over another list of servers (the sticky cookie's values change;
    /// its key does not).
    pub fn for_servers(&self, servers: &[Server]) -> Self {
        Self {
            key: self.key.clone(),
            cookie: self.cookie.as_ref().map(|c| c.for_servers(servers)),
        }
    }

    /// The hint for `req` from a client at `client_ip` (the trusted-forwarding address),
    /// with `affinity` the key a plugin set. Removes the sticky cookie from the request
    /// when the pool says `strip`.
    pub fn read<B>(&self, req: &mut Request<B>, client_ip: IpAddr, affinity: Option<&str>) -> Hint {
        let mut hint = Hint::default();
        if let Some(key) = &self.key {
            let found = match key {
                HashKey::ClientIp => None,
                HashKey::Affinity => affinity.map(|a| stable_hash(&[a.as_bytes()])),
                HashKey::Header(name) => req
                    .headers()
                    .get(name.as_str())
                    .map(|v| stable_hash(&[v.as_bytes()])),
                HashKey::Cookie(name) => {
                    cookie_value(req.headers(), name).map(|v| stable_hash(&[v.as_bytes()]))
                }
                HashKey::Query(name) => req
                    .uri()
                    .query()
                    .and_then(|q| query_value(q, name))
                    .map(|v| stable_hash(&[v.as_bytes()])),
            };
            hint.hash = Some(found.unwrap_or_else(|| ip_hash(client_ip)));
        }
        if let Some(cookie) = &self.cookie {
            hint.sticky =
                cookie_value(req.headers(), &cookie.name).and_then(|v| cookie.server_for(v));
            if cookie.strip {
                strip_cookie(req.headers_mut(), &cookie.name);
            }
        }
        hint
    }

    /// True for a `sticky_cookie` pool.
    pub fn sets_cookies(&self) -> bool {
        self.cookie.is_some()
    }

    /// The `Set-Cookie` for a response from server `chosen`, when the request's cookie
    /// did not already name it.
    pub fn set_cookie(&self, hint: &Hint, chosen: usize, secure: bool) -> Option<HeaderValue> {
        let cookie = self.cookie.as_ref()?;
        (hint.sticky != Some(chosen)).then(|| cookie.set_cookie(chosen, secure))
    }
}

fn ip_hash(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => stable_hash(&[&v4.octets()]),
        IpAddr::V6(v6) => stable_hash(&[&v6.octets()]),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4), as sent.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The value of parameter `name` in a query string, as sent (not percent-decoded).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// Remove cookie `name` from the `Cookie` headers, dropping a header left empty.
fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    headers.remove(COOKIE);
    for value in values {
        let Ok(text) = value.to_str() else {
            headers.append(COOKIE, value);
            continue;
        };
        let kept: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .filter(|pair| pair.split_once('=').is_none_or(|(n, _)| n != name))
            .collect();
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::try_from(kept.join("; "))
        {
            headers.append(COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::servers;
    use super::*;

    fn source(toml: &str) -> HintSource {
        let cfg: Upstream = toml::from_str(toml).unwrap();
        HintSource::new(&cfg, &servers(&[1, 1]))
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap()
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn round_robin_reads_nothing() {
        let s = source(r#"servers = ["10.0.0.1:1", "10.0.0.2:2"]"#);
        let mut req = request("/", &[("cookie", "airlock_server=x")]);
        assert_eq!(s.read(&mut req, IP, Some("k")), Hint::default());
    }

    #[test]
    fn each_source_is_hashed_and_absent_ones_fall_back_to_the_address() {
        let by_ip = ip_hash(IP);
        for (key, uri, headers) in [
            ("header:X-User", "/", vec![("x-user", "alice")]),
            (
                "cookie:session",
                "/",
                vec![("cookie", "a=1; session=alice; b=2")],
            ),
            ("query:room", "/chat?x=1&room=alice", vec![]),
        ] {
            let s = source(&format!(
                "servers = [\"a:1\"]\nbalance = \"consistent_hash\"\nhash_key = \"{key}\""
            ));
            let hint = s.read(&mut request(uri, &headers), IP, None);
            assert_eq!(hint.hash, Some(stable_hash(&[b"alice"])), "{key}");
            let absent = s.read(&mut request("/", &[]), IP, None);
            assert_eq!(absent.hash, Some(by_ip), "{key} absent");
        }
        let s =
            source("servers = [\"a:1\"]\nbalance = \"consistent_hash\"\nhash_key = \"affinity\"");
        let mut req = request("/", &[]);
        assert_eq!(
            s.read(&mut req, IP, Some("alice")).hash,
            Some(stable_hash(&[b"alice"]))
        );
        assert_eq!(s.read(&mut req, IP, None).hash, Some(by_ip));
        let s = source("servers = [\"a:1\"]\nbalance = \"ip_hash\"");
        assert_eq!(s.read(&mut req, IP, Some("alice")).hash, Some(by_ip));
    }

    #[test]
    fn sticky_cookie_is_read_and_set_only_when_it_changes() {
        let s = source(
            "servers = [\"a:1\", \"b:2\"]\nbalance = \"sticky_cookie\"\ncookie = { name = \"srv\", secret = \"0123456789abcdef\" }",
        );
        let mut fresh = request("/", &[]);
        let hint = s.read(&mut fresh, IP, None);
        assert_eq!(hint.sticky, None);
        let set = s
            .set_cookie(&hint, 1, false)
            .expect("a new client gets a cookie");
        let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
        let mut back = request("/", &[("cookie", &format!("theme=dark; {pair}"))]);
        let hint = s.read(&mut back, IP, None);
        assert_eq!(hint.sticky, Some(1));
        assert_eq!(
            s.set_cookie(&hint, 1, false),
            None,
            "same server: no new cookie"
        );
        assert!(
            s.set_cookie(&hint, 0, false).is_some(),
            "moved: a new cookie"
        );
        // Not stripped unless configured.
        assert!(back.headers()["cookie"].to_str().unwrap().contains("srv="));
        let mut forged = request("/", &[("cookie", "srv=0123")]);
        assert_eq!(s.read(&mut forged, IP, None).sticky, None);
    }

    #[test]
    fn strip_removes_only_the_sticky_cookie() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; srv=xyz; b=2"));
        h.append(COOKIE, HeaderValue::from_static("srv=xyz"));
        strip_cookie(&mut h, "srv");
        let left: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(left, ["a=1; b=2"]);
    }
}
