//! Write airlock handshake plugins in ordinary Rust.
//!
//! A plugin implements [`Plugin`] and exports it with [`export!`]; build it with
//! `cargo build --release --target wasm32-wasip2`. It is built for
//! `airlock:plugin@0.3.0`: it reads the request through [`Request`], and each value it
//! reads is copied into its memory then, so it pays only for what it reads.
//!
//! Its logic can be unit-tested natively with plain `cargo test`: a [`Handshake`] spells a
//! request out field by field, and `Request::from(&handshake)` reads from it. Nothing
//! else here needs a Wasm runtime (only the host functions [`log`] and [`now_unix_ms`]
//! do).
//!
//! ```ignore
//! use airlock_plugin_sdk::{export, reject, allow, Plugin, Request, Verdict};
//!
//! struct RequireOrigin;
//!
//! impl Plugin for RequireOrigin {
//!     fn configure(_config: String) -> Result<(), String> {
//!         Ok(())
//!     }
//!     fn on_handshake(request: Request) -> Verdict {
//!         match request.header("origin") {
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

use std::borrow::Cow;

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

    /// Decide about one handshake.
    fn on_handshake(request: Request<'_>) -> Verdict;
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

            fn on_handshake(request: &$crate::bindings::airlock::plugin::types::Request) -> $crate::Verdict {
                <$plugin as $crate::Plugin>::on_handshake($crate::Request::from_host(request))
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
pub use bindings::airlock::plugin::types::{Mutations, Rejection, TlsInfo, Verdict};

use bindings::airlock::plugin::types::Request as HostRequest;

/// The request a plugin decides about, as changed by the plugins before it in the chain.
///
/// In airlock, each method asks the host and copies the answer into the plugin's memory:
/// call it once and keep the value rather than calling it again. In native tests it reads
/// a [`Handshake`] (`Request::from(&handshake)`).
#[derive(Clone, Copy)]
pub struct Request<'a>(Source<'a>);

#[derive(Clone, Copy)]
enum Source<'a> {
    Host(&'a HostRequest),
    Record(&'a Handshake),
}

impl<'a> From<&'a Handshake> for Request<'a> {
    fn from(handshake: &'a Handshake) -> Self {
        Self(Source::Record(handshake))
    }
}

impl<'a> Request<'a> {
    /// The request airlock passed to `on-handshake`; [`export!`] calls this.
    #[doc(hidden)]
    pub fn from_host(request: &'a HostRequest) -> Self {
        Self(Source::Host(request))
    }

    /// Ask the host, or read the test record.
    fn pick<T>(
        &self,
        host: impl FnOnce(&HostRequest) -> T,
        record: impl FnOnce(&'a Handshake) -> T,
    ) -> T {
        match self.0 {
            Source::Host(r) => host(r),
            Source::Record(h) => record(h),
        }
    }

    /// One value: the host's copy, or borrowed from the test record.
    fn text(
        &self,
        host: impl FnOnce(&HostRequest) -> String,
        record: impl FnOnce(&'a Handshake) -> &'a str,
    ) -> Cow<'a, str> {
        self.pick(|r| host(r).into(), |h| record(h).into())
    }

    /// One optional value, likewise.
    fn maybe(
        &self,
        host: impl FnOnce(&HostRequest) -> Option<String>,
        record: impl FnOnce(&'a Handshake) -> Option<&'a str>,
    ) -> Option<Cow<'a, str>> {
        self.pick(
            |r| host(r).map(Cow::Owned),
            |h| record(h).map(Cow::Borrowed),
        )
    }

    /// A list of values, likewise.
    fn list(
        &self,
        host: impl FnOnce(&HostRequest) -> Vec<String>,
        record: impl FnOnce(&'a Handshake) -> Vec<&'a str>,
    ) -> Vec<Cow<'a, str>> {
        self.pick(
            |r| host(r).into_iter().map(Cow::Owned).collect(),
            |h| record(h).into_iter().map(Cow::Borrowed).collect(),
        )
    }

    /// A unique id for this request, also in airlock's logs and traces.
    pub fn id(&self) -> Cow<'a, str> {
        self.text(HostRequest::id, |h| &h.id)
    }

    /// The request method, like `GET`.
    pub fn method(&self) -> Cow<'a, str> {
        self.text(HostRequest::method, |h| &h.method)
    }

    /// `http` or `https`, as the client connected.
    pub fn scheme(&self) -> Cow<'a, str> {
        self.text(HostRequest::scheme, |h| &h.scheme)
    }

    /// The host the client asked for, with port if it sent one.
    pub fn authority(&self) -> Cow<'a, str> {
        self.text(HostRequest::authority, |h| &h.authority)
    }

    /// The path, percent-encoded as received, without the query.
    pub fn path(&self) -> Cow<'a, str> {
        self.text(HostRequest::path, |h| &h.path)
    }

    /// The query string without the `?`, if there is one.
    pub fn query(&self) -> Option<Cow<'a, str>> {
        self.maybe(HostRequest::query, |h| h.query.as_deref())
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<Cow<'a, str>> {
        self.maybe(|r| r.header(name), |h| record_values(h, name).next())
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_all(&self, name: &str) -> Vec<Cow<'a, str>> {
        self.list(|r| r.header_all(name), |h| record_values(h, name).collect())
    }

    /// All request headers as (lowercase name, value), in order. Prefer [`Self::header`]:
    /// this copies every header into the plugin's memory.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.pick(HostRequest::headers, |h| h.headers.clone())
    }

    /// The client's IP address (see `client-addr` in the WIT for proxies in front).
    pub fn client_addr(&self) -> Cow<'a, str> {
        self.text(HostRequest::client_addr, |h| &h.client_addr)
    }

    /// The TLS session, or `None` on a plain-text listener.
    pub fn tls(&self) -> Option<TlsInfo> {
        self.pick(HostRequest::tls, |h| h.tls.clone())
    }

    /// The name of the route that matched.
    pub fn route(&self) -> Cow<'a, str> {
        self.text(HostRequest::route, |h| &h.route)
    }

    /// The protocol the client asks to upgrade to, lowercase, or `None` for plain HTTP.
    pub fn upgrade(&self) -> Option<Cow<'a, str>> {
        self.maybe(HostRequest::upgrade, |h| h.upgrade.as_deref())
    }

    /// The WebSocket subprotocols the client offered, in order.
    pub fn subprotocols(&self) -> Vec<Cow<'a, str>> {
        self.list(HostRequest::subprotocols, |h| {
            h.subprotocols.iter().map(String::as_str).collect()
        })
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(&self.query()?, name)
    }

    /// The value of cookie `name` from the request's `Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<String> {
        cookie(&self.header_all("cookie"), name).map(str::to_string)
    }

    /// The request's cookies without cookie `name`, as one `Cookie` header value; `None`
    /// when no other cookie remains (remove the header then).
    pub fn cookies_without(&self, name: &str) -> Option<String> {
        cookies_without(&self.header_all("cookie"), name)
    }
}

/// The value of cookie `name` in `Cookie` header values (`request.header_all("cookie")`).
pub fn cookie<'v>(values: &'v [impl AsRef<str>], name: &str) -> Option<&'v str> {
    values
        .iter()
        .flat_map(|h| h.as_ref().split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// `Cookie` header values without cookie `name`, as one value; `None` when no other
/// cookie remains (remove the header then).
pub fn cookies_without(values: &[impl AsRef<str>], name: &str) -> Option<String> {
    let kept: Vec<&str> = values
        .iter()
        .flat_map(|h| h.as_ref().split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split('=').next() != Some(name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// A request spelled out field by field, for native unit tests of plugin logic; see
/// [`test_request`]. The fields mean what the `request` methods of the same names return.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    pub id: String,
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
    /// (lowercase name, value), in order.
    pub headers: Vec<(String, String)>,
    pub client_addr: String,
    pub tls: Option<TlsInfo>,
    pub route: String,
    pub upgrade: Option<String>,
    pub subprotocols: Vec<String>,
}

fn record_values<'a>(h: &'a Handshake, name: &str) -> impl Iterator<Item = &'a str> {
    h.headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The first value of parameter `name` in `query`, percent-decoded (`+` is a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    let [value] = query_params(query, [name]);
    value
}

/// The first value of each of `names` in `query`, percent-decoded, found in one pass:
/// cheaper than a [`query_param`] for each when a plugin reads several.
pub fn query_params<const N: usize>(query: &str, names: [&str; N]) -> [Option<String>; N] {
    let mut values = [const { None }; N];
    let mut missing = N;
    for (key, value) in raw_pairs(query) {
        if missing == 0 {
            break;
        }
        let key = percent_decode(key);
        for (name, slot) in names.iter().zip(&mut values) {
            if slot.is_none() && key == *name {
                *slot = Some(percent_decode(value).into_owned());
                missing -= 1;
            }
        }
    }
    values
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
fn percent_decode(s: &str) -> Cow<'_, str> {
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

/// Mutations that change nothing; start here and set what you need.
pub fn no_changes() -> Mutations {
    Mutations {
        path: None,
        query: None,
        set_headers: Vec::new(),
        remove_headers: Vec::new(),
        upstream: None,
        affinity_key: None,
        limit_key: None,
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
    /// Who the request is for limits keyed `"plugin"` (a user or tenant id).
    fn limit_key(self, key: impl Into<String>) -> Self;
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
    fn limit_key(mut self, key: impl Into<String>) -> Self {
        self.limit_key = Some(key.into());
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
        let h = test_request("/", &[("Origin", "https://a"), ("X-A", "1"), ("x-a", "2")]);
        let r = Request::from(&h);
        assert_eq!(r.header("origin").as_deref(), Some("https://a"));
        assert_eq!(r.header_all("X-a"), ["1", "2"]);
        assert_eq!(r.header("missing"), None);
        assert_eq!(r.headers().len(), 3);
    }

    #[test]
    fn query_parameters_are_decoded() {
        let h = test_request("/ws?EIO=4&transport=websocket&name=a%20b+c&bad=%zz", &[]);
        let r = Request::from(&h);
        assert_eq!(r.query_param("EIO").as_deref(), Some("4"));
        assert_eq!(r.query_param("name").as_deref(), Some("a b c"));
        assert_eq!(r.query_param("bad").as_deref(), Some("%zz"));
        assert_eq!(r.query_param("sid"), None);
        let h = test_request("/ws?&&flag&k=&=v&k=second&é=ü&", &[]);
        let r = Request::from(&h);
        assert_eq!(r.query_param("flag").as_deref(), Some(""));
        assert_eq!(r.query_param("k").as_deref(), Some(""));
        assert_eq!(r.query_param("").as_deref(), Some("v"));
        assert_eq!(r.query_param("é").as_deref(), Some("ü"));
        assert_eq!(
            Request::from(&test_request("/ws", &[])).query_param("k"),
            None
        );
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
        let h = test_request(
            "/",
            &[("cookie", "a=1; session=\"xyz\""), ("cookie", "b=2")],
        );
        let r = Request::from(&h);
        assert_eq!(r.cookie("session").as_deref(), Some("xyz"));
        assert_eq!(r.cookie("b").as_deref(), Some("2"));
        assert_eq!(r.cookie("c"), None);
        assert_eq!(r.cookies_without("session").as_deref(), Some("a=1; b=2"));
        let only = test_request("/", &[("cookie", "session=x")]);
        assert_eq!(Request::from(&only).cookies_without("session"), None);
    }

    #[test]
    fn a_test_request_reads_back_what_it_was_built_from() {
        let h = test_request(
            "/chat?room=1",
            &[
                ("Upgrade", "WebSocket"),
                ("Sec-WebSocket-Protocol", "a, ,b"),
            ],
        );
        let r = Request::from(&h);
        assert_eq!(
            (&*r.method(), &*r.path(), r.query().as_deref(), &*r.route()),
            ("GET", "/chat", Some("room=1"), "test")
        );
        assert_eq!(r.upgrade().as_deref(), Some("websocket"));
        assert_eq!(r.subprotocols(), ["a", "b"]);
        assert_eq!((&*r.client_addr(), &*r.scheme()), ("127.0.0.1", "http"));
        assert!(r.tls().is_none());
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
