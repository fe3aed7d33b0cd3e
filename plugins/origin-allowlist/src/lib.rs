//! Admit only requests whose `Origin` is on an allowlist; everything else gets 403.
//!
//! ```toml
//! [plugin.origin]
//! wasm = "origin_allowlist.wasm"
//! config = { allow = ["https://app.example.com", "https://*.example.org"], allow_missing = false }
//! ```
//!
//! `https://*.example.org` admits any subdomain of example.org (not example.org itself,
//! and not `https://example.org.evil.net`). Scheme and port must match; default ports
//! are implied (`https://a.com` and `https://a.com:443` are the same origin).

use std::sync::OnceLock;

use airlock_plugin_sdk::{
    MutationsExt as _, Plugin, Request, Verdict, allow_with, export, no_changes, reject,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    allow: Vec<String>,
    /// Admit requests that carry no `Origin` header (non-browser clients).
    #[serde(default)]
    allow_missing: bool,
}

/// A parsed allowlist entry, in lower case.
#[derive(Debug, PartialEq)]
struct Pattern {
    scheme: String,
    /// The host, or for wildcards the suffix including the leading dot (`.example.org`).
    host: String,
    wildcard: bool,
    port: u16,
}

#[derive(Debug)]
pub struct Policy {
    patterns: Vec<Pattern>,
    allow_missing: bool,
}

/// An origin split into scheme, host and port (the scheme's default port filled in), as
/// slices of `origin` in the case it was written: compare them ignoring ASCII case. An
/// IPv6 host keeps its brackets (`[::1]`).
///
/// Nothing is allocated: this runs on every handshake, and in a Wasm guest each
/// allocation is a call into its allocator.
fn parse_origin(origin: &str) -> Option<(&str, &str, u16)> {
    let colon = origin.find(':')?;
    let (scheme, rest) = (&origin[..colon], origin[colon..].strip_prefix("://")?);
    if rest.is_empty() || rest.bytes().any(|b| matches!(b, b'/' | b'?' | b'#' | b'@')) {
        return None;
    }
    // The host ends at the last `:`, unless that `:` is inside an IPv6 literal's brackets.
    let host_end = match rest.rfind(':') {
        Some(i) if !rest.starts_with('[') || rest[..i].ends_with(']') => i,
        _ => rest.len(),
    };
    let (host, port) = rest.split_at(host_end);
    let port = match port.strip_prefix(':') {
        Some(digits) => digits.parse().ok()?,
        None => default_port(scheme)?,
    };
    if host.is_empty() || host.starts_with('[') != host.ends_with(']') {
        return None;
    }
    Some((scheme, host, port))
}

fn default_port(scheme: &str) -> Option<u16> {
    let is = |name: &str| scheme.eq_ignore_ascii_case(name);
    if is("https") || is("wss") {
        Some(443)
    } else if is("http") || is("ws") {
        Some(80)
    } else {
        None
    }
}

impl Policy {
    pub fn from_json(json: &str) -> Result<Self, String> {
        let config: Config =
            serde_json::from_str(json).map_err(|e| format!("invalid config: {e}"))?;
        if config.allow.is_empty() && !config.allow_missing {
            return Err("`allow` is empty: every request would be rejected".into());
        }
        let patterns = config
            .allow
            .iter()
            .map(|entry| {
                let (scheme, host, port) = parse_origin(entry).ok_or_else(|| {
                    format!("invalid origin {entry:?} in `allow`; write scheme://host[:port], like \"https://app.example.com\" or \"https://*.example.com\"")
                })?;
                let (scheme, host) = (scheme.to_ascii_lowercase(), host.to_ascii_lowercase());
                match host.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 && !suffix[1..].contains('*') => {
                        Ok(Pattern { scheme, host: suffix.to_string(), wildcard: true, port })
                    }
                    Some(_) => Err(format!("invalid wildcard in {entry:?}: only a leading \"*.\" is allowed")),
                    None if host.contains('*') => Err(format!("invalid wildcard in {entry:?}: only a leading \"*.\" is allowed")),
                    None => Ok(Pattern { scheme, host, wildcard: false, port }),
                }
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            patterns,
            allow_missing: config.allow_missing,
        })
    }

    pub fn admits(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return self.allow_missing;
        };
        let Some((scheme, host, port)) = parse_origin(origin) else {
            return false;
        };
        self.patterns.iter().any(|p| {
            p.scheme.eq_ignore_ascii_case(scheme)
                && p.port == port
                && if p.wildcard {
                    // Bytes: the suffix's start need not be a character boundary.
                    let host = host.as_bytes();
                    host.len() > p.host.len()
                        && host[host.len() - p.host.len()..].eq_ignore_ascii_case(p.host.as_bytes())
                } else {
                    p.host.eq_ignore_ascii_case(host)
                }
        })
    }

    pub fn decide(&self, request: Request<'_>) -> Verdict {
        let origin = request.header("origin");
        let origin = origin.as_deref();
        if self.admits(origin) {
            allow_with(no_changes().attribute("origin", origin.unwrap_or("")))
        } else {
            reject(
                403,
                format!("origin {} is not allowed\n", origin.unwrap_or("(none)")),
            )
        }
    }
}

static POLICY: OnceLock<Policy> = OnceLock::new();

struct OriginAllowlist;

impl Plugin for OriginAllowlist {
    fn configure(config: String) -> Result<(), String> {
        let policy = Policy::from_json(&config)?;
        POLICY
            .set(policy)
            .map_err(|_| "configured twice".to_string())
    }

    fn on_handshake(request: Request<'_>) -> Verdict {
        match POLICY.get() {
            Some(policy) => policy.decide(request),
            None => reject(503, "origin-allowlist is not configured\n"),
        }
    }
}

export!(OriginAllowlist);

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str]) -> Policy {
        Policy::from_json(&serde_json::json!({ "allow": allow }).to_string()).unwrap()
    }

    #[test]
    fn exact_origins_match_with_default_ports() {
        let p = policy(&["https://app.example.com"]);
        assert!(p.admits(Some("https://app.example.com")));
        assert!(p.admits(Some("HTTPS://App.Example.COM:443")));
        assert!(!p.admits(Some("http://app.example.com")));
        assert!(!p.admits(Some("https://app.example.com:8443")));
        assert!(!p.admits(Some("https://other.example.com")));
        assert!(!p.admits(None));
        assert!(!p.admits(Some("null")));
    }

    #[test]
    fn origins_are_split_without_changing_case() {
        assert_eq!(
            parse_origin("HTTPS://App.Example.COM"),
            Some(("HTTPS", "App.Example.COM", 443))
        );
        assert_eq!(parse_origin("ws://a.com:8080"), Some(("ws", "a.com", 8080)));
        assert_eq!(parse_origin("https://[::1]"), Some(("https", "[::1]", 443)));
        assert_eq!(
            parse_origin("http://[::1]:8080"),
            Some(("http", "[::1]", 8080))
        );
        for bad in [
            "null",
            "https://",
            "https://a.com/",
            "https://a.com?x",
            "https://u@a.com",
            "https://a.com:",
            "https://a.com:99999",
            "https://[::1",
            "ftp://a.com",
            "a:b://a.com:80",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn ipv6_origins_match() {
        let p = policy(&["http://[::1]:8080", "https://[::1]"]);
        assert!(p.admits(Some("http://[::1]:8080")));
        assert!(p.admits(Some("https://[::1]:443")));
        assert!(!p.admits(Some("https://[::2]")));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let p = policy(&["https://*.example.com"]);
        assert!(p.admits(Some("https://a.example.com")));
        assert!(p.admits(Some("https://a.b.example.com")));
        assert!(p.admits(Some("HTTPS://A.Example.COM")));
        assert!(!p.admits(Some("https://example.com")));
        assert!(!p.admits(Some("https://example.com.evil.net")));
        assert!(!p.admits(Some("https://evilexample.com")));
        assert!(!p.admits(Some("https://a.example.com.evil.net")));
    }

    #[test]
    fn missing_origins_follow_allow_missing() {
        let p = Policy::from_json(r#"{"allow": [], "allow_missing": true}"#).unwrap();
        assert!(p.admits(None));
        assert!(!p.admits(Some("https://a.example.com")));
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        for (json, needle) in [
            (r#"{"allow": ["app.example.com"]}"#, "invalid origin"),
            (
                r#"{"allow": ["https://a.*.example.com"]}"#,
                "invalid wildcard",
            ),
            (r#"{"allow": ["https://*"]}"#, "invalid wildcard"),
            (r#"{"allow": []}"#, "every request would be rejected"),
            (r#"{"alow": ["https://a.com"]}"#, "unknown field"),
        ] {
            let err = Policy::from_json(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
