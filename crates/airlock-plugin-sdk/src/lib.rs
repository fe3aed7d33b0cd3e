//! Write airlock handshake plugins in ordinary Rust.
//!
//! A plugin implements [`Plugin`] and exports it with [`export!`]; build it with
//! `cargo build --release --target wasm32-wasip2`. Its logic can be unit-tested natively
//! with plain `cargo test`: the types are ordinary Rust structs and the helpers here
//! need no Wasm runtime (only the host functions [`log`] and [`now_unix_ms`] do).
//!
//! ```ignore
//! use airlock_plugin_sdk::{export, header, reject, allow, Handshake, Plugin, Verdict};
//!
//! struct RequireOrigin;
//!
//! impl Plugin for RequireOrigin {
//!     fn configure(_config: String) -> Result<(), String> {
//!         Ok(())
//!     }
//!     fn on_handshake(request: Handshake) -> Verdict {
//!         match header(&request, "origin") {
//!             Some(_) => allow(),
//!             None => reject(403, "an Origin header is required"),
//!         }
//!     }
//! }
//!
//! export!(RequireOrigin);
//! ```
//!
//! Not here: anything about how airlock runs plugins (see `docs/plugins.md`).

// `deny`, not `forbid`: the generated bindings (and only they) are allowed unsafe code,
// which wit-bindgen needs for the canonical ABI.
#![deny(unsafe_code)]

/// The bindings generated from `wit/airlock-plugin.wit`.
#[allow(unsafe_code, clippy::all, missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "handshake-plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "export_guest",
        default_bindings_module: "airlock_plugin_sdk::bindings",
    });
}

/// A handshake plugin. Implement it and export the type with [`export!`].
pub trait Plugin {
    /// Called once per instance, before any handshake, with the plugin's `config` table
    /// as JSON. An `Err` refuses the configuration: airlock reports it and does not start.
    fn configure(config: String) -> Result<(), String>;

    /// The request headers this plugin reads, by lowercase name; `None` (the default)
    /// for all. Called once, after the first `configure`. Naming the few headers a
    /// plugin looks at makes each call cheaper, since every header passed is copied into
    /// the plugin's memory; the plugin's changes still apply to all headers.
    fn wanted_headers() -> Option<Vec<String>> {
        None
    }

    /// Decide about one handshake.
    fn on_handshake(request: Handshake) -> Verdict;
}

/// Export a [`Plugin`] implementation as the component's entry points.
///
/// Besides the exports, this routes panic messages to airlock's log: plugins have no
/// stdout or stderr (airlock gives them none), so a panic is logged, then traps.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        struct __AirlockExport;

        impl $crate::bindings::Guest for __AirlockExport {
            fn configure(config: String) -> Result<(), String> {
                $crate::route_panics_to_log();
                <$plugin as $crate::Plugin>::configure(config)
            }

            fn wanted_headers() -> Option<Vec<String>> {
                <$plugin as $crate::Plugin>::wanted_headers()
            }

            fn on_handshake(request: $crate::Handshake) -> $crate::Verdict {
                <$plugin as $crate::Plugin>::on_handshake(request)
            }
        }

        $crate::bindings::export_guest!(__AirlockExport with_types_in $crate::bindings);
    };
}

/// Send panic messages to airlock's log instead of stderr (which plugins do not have).
/// [`export!`] calls this; call it yourself only if you export by other means.
pub fn route_panics_to_log() {
    std::panic::set_hook(Box::new(|info| {
        #[cfg(target_arch = "wasm32")]
        log(Level::Error, &format!("panicked: {info}"));
        #[cfg(not(target_arch = "wasm32"))]
        eprintln!("panicked: {info}");
    }));
}
pub use bindings::airlock::plugin::host::{Level, log, now_unix_ms};
pub use bindings::airlock::plugin::types::{Handshake, Mutations, Rejection, TlsInfo, Verdict};

/// The first value of header `name` (any case).
pub fn header<'a>(request: &'a Handshake, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of header `name` (any case), in order.
pub fn headers<'a>(request: &'a Handshake, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    request
        .headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The first value of query parameter `name`, percent-decoded (`+` is a space).
pub fn query_param(request: &Handshake, name: &str) -> Option<String> {
    raw_pairs(request.query.as_deref()?)
        .find(|(k, _)| percent_decode(k) == name)
        .map(|(_, v)| percent_decode(v).into_owned())
}

/// Every `key=value` pair of a query string, percent-decoded, in order.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    raw_pairs(query).map(|(k, v)| {
        (
            percent_decode(k).into_owned(),
            percent_decode(v).into_owned(),
        )
    })
}

/// Rebuild a query string without parameter `name` (other pairs kept byte for byte).
pub fn query_without(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|p| !p.is_empty() && percent_decode(p.split('=').next().unwrap_or("")) != name)
        .collect::<Vec<_>>()
        .join("&")
}

/// The `key=value` pairs of a query string, as written. The split is by byte position:
/// `str::split` with a `char` goes through a searcher whose setup costs more than these
/// short strings do to scan, and plugins run this on every handshake.
fn raw_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    let position = |s: &str, byte: u8| s.bytes().position(|b| b == byte);
    let mut rest = Some(query);
    std::iter::from_fn(move || {
        loop {
            let left = rest?;
            let (pair, after) = match position(left, b'&') {
                Some(i) => (&left[..i], Some(&left[i + 1..])),
                None => (left, None),
            };
            rest = after;
            if !pair.is_empty() {
                return Some(match position(pair, b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, ""),
                });
            }
        }
    })
}

/// `s` with `%XX` escapes and `+` decoded; borrowed when there is nothing to decode.
fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return s.into();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The value of cookie `name` from the request's `Cookie` headers.
pub fn cookie<'a>(request: &'a Handshake, name: &str) -> Option<&'a str> {
    headers(request, "cookie")
        .flat_map(|h| h.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// The request's cookies without cookie `name`, as one `Cookie` header value; `None` when
/// no other cookie remains (remove the header then).
pub fn cookies_without(request: &Handshake, name: &str) -> Option<String> {
    let kept: Vec<&str> = headers(request, "cookie")
        .flat_map(|h| h.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split('=').next() != Some(name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Mutations that change nothing; start here and set what you need.
pub fn no_changes() -> Mutations {
    Mutations {
        path: None,
        query: None,
        set_headers: Vec::new(),
        remove_headers: Vec::new(),
        upstream: None,
        affinity_key: None,
        subprotocol: None,
        response_headers: Vec::new(),
        attributes: Vec::new(),
    }
}

/// Let the request through unchanged.
pub fn allow() -> Verdict {
    Verdict::Allow(no_changes())
}

/// Let the request through with `changes`.
pub fn allow_with(changes: Mutations) -> Verdict {
    Verdict::Allow(changes)
}

/// Refuse the request with `status` (400–599) and a plain-text body.
pub fn reject(status: u16, body: impl Into<String>) -> Verdict {
    Verdict::Reject(Rejection {
        status,
        body: body.into(),
        headers: Vec::new(),
    })
}

/// Refuse the request with `status`, a body and response headers.
pub fn reject_with(
    status: u16,
    body: impl Into<String>,
    headers: Vec<(String, String)>,
) -> Verdict {
    Verdict::Reject(Rejection {
        status,
        body: body.into(),
        headers,
    })
}

/// Builder-style changes on [`Mutations`].
pub trait MutationsExt: Sized {
    fn set_header(self, name: &str, value: impl Into<String>) -> Self;
    fn remove_header(self, name: &str) -> Self;
    fn path(self, path: impl Into<String>) -> Self;
    fn query(self, query: impl Into<String>) -> Self;
    fn upstream(self, pool: impl Into<String>) -> Self;
    fn affinity_key(self, key: impl Into<String>) -> Self;
    fn subprotocol(self, protocol: impl Into<String>) -> Self;
    fn response_header(self, name: &str, value: impl Into<String>) -> Self;
    fn attribute(self, key: &str, value: impl Into<String>) -> Self;
}

impl MutationsExt for Mutations {
    fn set_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_headers
            .push((name.to_ascii_lowercase(), value.into()));
        self
    }
    fn remove_header(mut self, name: &str) -> Self {
        self.remove_headers.push(name.to_ascii_lowercase());
        self
    }
    fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }
    fn query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }
    fn upstream(mut self, pool: impl Into<String>) -> Self {
        self.upstream = Some(pool.into());
        self
    }
    fn affinity_key(mut self, key: impl Into<String>) -> Self {
        self.affinity_key = Some(key.into());
        self
    }
    fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocol = Some(protocol.into());
        self
    }
    fn response_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.response_headers
            .push((name.to_ascii_lowercase(), value.into()));
        self
    }
    fn attribute(mut self, key: &str, value: impl Into<String>) -> Self {
        self.attributes.push((key.to_string(), value.into()));
        self
    }
}

/// A handshake for native unit tests of plugin logic: `GET` of `path_and_query` on
/// route `test`, with `headers`.
pub fn test_request(path_and_query: &str, headers: &[(&str, &str)]) -> Handshake {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_and_query.to_string(), None),
    };
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    let upgrade = headers
        .iter()
        .find(|(k, _)| k == "upgrade")
        .map(|(_, v)| v.to_ascii_lowercase());
    let subprotocols = headers
        .iter()
        .filter(|(k, _)| k == "sec-websocket-protocol")
        .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty())
        .collect();
    Handshake {
        id: "test".into(),
        method: "GET".into(),
        scheme: "http".into(),
        authority: "test.local".into(),
        path,
        query,
        headers,
        client_addr: "127.0.0.1".into(),
        tls: None,
        route: "test".into(),
        upgrade,
        subprotocols,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_case_insensitive_and_repeatable() {
        let r = test_request("/", &[("Origin", "https://a"), ("X-A", "1"), ("x-a", "2")]);
        assert_eq!(header(&r, "origin"), Some("https://a"));
        assert_eq!(headers(&r, "X-a").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(header(&r, "missing"), None);
    }

    #[test]
    fn query_parameters_are_decoded() {
        let r = test_request("/ws?EIO=4&transport=websocket&name=a%20b+c&bad=%zz", &[]);
        assert_eq!(query_param(&r, "EIO").as_deref(), Some("4"));
        assert_eq!(query_param(&r, "name").as_deref(), Some("a b c"));
        assert_eq!(query_param(&r, "bad").as_deref(), Some("%zz"));
        assert_eq!(query_param(&r, "sid"), None);
        let r = test_request("/ws?&&flag&k=&=v&k=second&é=ü&", &[]);
        assert_eq!(query_param(&r, "flag").as_deref(), Some(""));
        assert_eq!(query_param(&r, "k").as_deref(), Some(""));
        assert_eq!(query_param(&r, "").as_deref(), Some("v"));
        assert_eq!(query_param(&r, "é").as_deref(), Some("ü"));
        assert_eq!(
            query_pairs("a=1&&b&c=3=4").collect::<Vec<_>>(),
            [("a", "1"), ("b", ""), ("c", "3=4")].map(|(k, v)| (k.into(), v.into()))
        );
        assert_eq!(
            query_without("a=1&access_token=x&b=2", "access_token"),
            "a=1&b=2"
        );
    }

    #[test]
    fn cookies_are_found_across_headers() {
        let r = test_request(
            "/",
            &[("cookie", "a=1; session=\"xyz\""), ("cookie", "b=2")],
        );
        assert_eq!(cookie(&r, "session"), Some("xyz"));
        assert_eq!(cookie(&r, "b"), Some("2"));
        assert_eq!(cookie(&r, "c"), None);
        assert_eq!(cookies_without(&r, "session").as_deref(), Some("a=1; b=2"));
        let only = test_request("/", &[("cookie", "session=x")]);
        assert_eq!(cookies_without(&only, "session"), None);
    }

    #[test]
    fn builders_build() {
        let m = no_changes()
            .set_header("X-User", "alice")
            .upstream("canary")
            .attribute("user", "alice");
        assert_eq!(m.set_headers, [("x-user".to_string(), "alice".to_string())]);
        assert_eq!(m.upstream.as_deref(), Some("canary"));
        assert!(matches!(
            reject(403, "no"),
            Verdict::Reject(Rejection { status: 403, .. })
        ));
    }
}
