//! `X-Forwarded-*` and `X-Real-IP`: set from the real peer, believed only from trusted peers.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The peers whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// What the proxy knows about the hop it received the request on.
pub struct Hop<'a> {
    pub peer: IpAddr,
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
    pub port: u16,
}

/// The client's address: the peer, or when the peer is trusted, the nearest untrusted
/// address in `X-Forwarded-For`.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    nearest_untrusted(&prior_chain(headers), peer, trusted)
}

/// Walking `chain` back from the proxy, the first address that is not a trusted proxy.
fn nearest_untrusted(chain: &[String], peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    chain
        .iter()
        .rev()
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .find(|ip| !trusted.contains(*ip))
        .unwrap_or(peer)
}

fn prior_chain(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Rewrite the forwarding headers in place and return the client's address (see
/// [`client_ip`]).
pub fn apply(headers: &mut HeaderMap, hop: &Hop<'_>, trusted: &TrustedProxies) -> IpAddr {
    let peer = hop.peer.to_canonical();
    if !trusted.contains(peer) {
        // `insert` drops every earlier value of its name, so only the headers that are
        // not set again need removing.
        headers.remove(&FORWARDED);
        let peer_value = ip_value(peer);
        headers.insert(X_FORWARDED_FOR.clone(), peer_value.clone());
        headers.insert(X_REAL_IP.clone(), peer_value);
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(hop.proto),
        );
        match hop.host {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        headers.insert(X_FORWARDED_PORT.clone(), HeaderValue::from(hop.port));
        return peer;
    }

    // A trusted peer: keep what it says, append it to the chain, and find the client.
    let prior = prior_chain(headers);
    let client = nearest_untrusted(&prior, peer, trusted);
    let mut chain = prior.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&peer.to_string());
    if let Ok(v) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_REAL_IP.clone(), ip_value(client));
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(hop.proto),
        );
    }
    if let Some(host) = hop.host
        && !headers.contains_key(&X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    if !headers.contains_key(&X_FORWARDED_PORT) {
        headers.insert(X_FORWARDED_PORT.clone(), HeaderValue::from(hop.port));
    }
    client
}

/// An address as a header value; see [`ip_text`].
fn ip_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(ip_text(ip)))
        .expect("an IP address is a valid header value")
}

/// An address as text, as `Display` writes it. IPv4, by far the common case, is written
/// octet by octet with `itoa`: through `Display` it cost about ten times as much (1,300
/// instructions), on every request.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(digits.format(octet));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(peer: &str) -> Hop<'static> {
        static HOST: HeaderValue = HeaderValue::from_static("chat.example.com");
        Hop {
            peer: peer.parse().unwrap(),
            proto: "http",
            host: Some(&HOST),
            port: 8080,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, k: &str) -> &'a str {
        h.get(k).unwrap().to_str().unwrap()
    }

    #[test]
    fn untrusted_peer_replaces_everything() {
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let client = apply(&mut h, &hop("203.0.113.9"), &TrustedProxies::default());
        assert_eq!(client.to_string(), "203.0.113.9");
        assert_eq!(get(&h, "x-forwarded-for"), "203.0.113.9");
        assert_eq!(get(&h, "x-real-ip"), "203.0.113.9");
        assert_eq!(get(&h, "x-forwarded-proto"), "http");
        assert_eq!(get(&h, "x-forwarded-host"), "chat.example.com");
        assert_eq!(get(&h, "x-forwarded-port"), "8080");
        assert!(h.get("forwarded").is_none());
    }

    #[test]
    fn trusted_peer_is_appended_and_client_found() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let mut h = headers(&[
            ("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let client = apply(&mut h, &hop("10.0.0.2"), &trusted);
        assert_eq!(client.to_string(), "203.0.113.9");
        assert_eq!(
            get(&h, "x-forwarded-for"),
            "198.51.100.1, 203.0.113.9, 10.1.1.1, 10.0.0.2"
        );
        assert_eq!(get(&h, "x-real-ip"), "203.0.113.9");
        assert_eq!(get(&h, "x-forwarded-proto"), "https");
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let trusted = TrustedProxies::new(vec!["127.0.0.1/32".parse().unwrap()]);
        assert!(trusted.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!trusted.contains("::1".parse().unwrap()));
    }

    #[test]
    fn ip_values_match_display() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.2.30.100",
            "127.0.0.1",
            "192.168.9.99",
            "2001:db8::1",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
            assert_eq!(ip_value(ip), ip.to_string().as_str());
        }
    }
}
