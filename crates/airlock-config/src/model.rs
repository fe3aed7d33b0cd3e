//! The schema: one struct per TOML table, with the TOML a user writes on every field.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
pub use toml::Spanned;

use crate::balance::{Balance, HashKey, StickyCookie};
use crate::health::HealthCheck;
use crate::limit::Limit;
use crate::units::{ByteSize, Duration};

/// `shutdown_grace` when unset: how long open tunnels may run after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `drain_close_code` when unset: 1001, going away (RFC 6455 §7.4.1).
pub const DEFAULT_DRAIN_CLOSE_CODE: u16 = 1001;
/// `max_header_bytes` when unset.
pub const DEFAULT_MAX_HEADER_BYTES: ByteSize = ByteSize(32 * 1024);
/// `handshake_timeout` when unset.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// `connect_timeout` when unset.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `idle_timeout` when unset.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// `half_close_timeout` when unset (as HAProxy's `timeout client-fin`).
pub const DEFAULT_HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
/// `max_fails` when unset (as nginx).
pub const DEFAULT_MAX_FAILS: u32 = 1;
/// `fail_timeout` when unset (as nginx).
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// `connect_attempts` when unset.
pub const DEFAULT_CONNECT_ATTEMPTS: u32 = 3;
/// `keepalive` when unset: idle upstream connections kept per server.
pub const DEFAULT_KEEPALIVE: usize = 32;
/// `keepalive_timeout` when unset.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a server given by name is resolved again.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// `timeout` of a plugin call when unset.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration(std::time::Duration::from_millis(5));
/// `max_memory` of a Rust (or unrecognised) plugin instance when unset; JavaScript and
/// Python plugins get more (`airlock_plugins::Language::default_max_memory`).
pub const DEFAULT_PLUGIN_MAX_MEMORY: ByteSize = ByteSize(16 << 20);

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How long open tunnels may keep running after SIGTERM/SIGINT before they are closed.
    /// `shutdown_grace = "30s"`
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
    /// Over how long open tunnels are closed when a drain starts (SIGTERM, or a server
    /// drained through the admin API), at a steady rate, so that clients reconnect
    /// gradually. At most `shutdown_grace`; half of it when unset. `drain_spread = "10s"`
    #[serde(default)]
    pub drain_spread: Option<Spanned<Duration>>,
    /// The close code WebSocket clients and upstreams get when a drain closes their
    /// tunnel: `1001` (going away) or `1012` (service restart), or an application code
    /// 4000-4999. `drain_close_code = 1012`
    #[serde(default = "default_drain_close_code")]
    pub drain_close_code: Spanned<u16>,
    /// Threads that run connections; defaults to the number of CPUs.
    /// `worker_threads = 2`
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// The admin HTTP endpoint (`/healthz`, `/readyz`). Off when absent.
    /// `[admin]`
    #[serde(default)]
    pub admin: Option<Admin>,
    /// `[[listener]]` tables: where airlock accepts connections.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
    /// `[[route]]` tables: which requests go where, matched by host and path.
    #[serde(default, rename = "route")]
    pub routes: Vec<Route>,
    /// `[upstream.NAME]` tables: pools of backend servers.
    #[serde(default, rename = "upstream")]
    pub upstreams: BTreeMap<String, Upstream>,
    /// `[plugin.NAME]` tables: WebAssembly handshake plugins.
    #[serde(default, rename = "plugin")]
    pub plugins: BTreeMap<String, Plugin>,
    /// `[limit.NAME]` tables: admission limits routes name in `limits = [...]`.
    #[serde(default, rename = "limit")]
    pub limits: BTreeMap<String, Spanned<Limit>>,
    /// `max_connections = 10000`: client connections open at once in the whole process;
    /// requests on connections beyond it get 503. Unlimited when absent.
    #[serde(default)]
    pub max_connections: Option<Spanned<u32>>,
    /// Where compiled plugins are kept between runs, relative to the config file; `""`
    /// turns the cache off. Unset: `$XDG_CACHE_HOME/airlock` or `~/.cache/airlock`.
    /// `plugin_cache_dir = "/var/cache/airlock"`
    #[serde(default)]
    pub plugin_cache_dir: Option<String>,
    /// Reload when the configuration file changes (checked every second), as
    /// `airlock reload` would. `watch_config = true`
    #[serde(default)]
    pub watch_config: bool,
    /// `[telemetry]`: OpenTelemetry traces over OTLP. Off when absent.
    #[serde(default)]
    pub telemetry: Option<crate::Telemetry>,
}

fn default_shutdown_grace() -> Duration {
    DEFAULT_SHUTDOWN_GRACE
}

fn default_drain_close_code() -> Spanned<u16> {
    Spanned::new(0..0, DEFAULT_DRAIN_CLOSE_CODE)
}

impl Config {
    /// `drain_spread`, or its default: half of `shutdown_grace`.
    pub fn drain_spread(&self) -> std::time::Duration {
        self.drain_spread
            .as_ref()
            .map_or(self.shutdown_grace.get() / 2, |d| d.get_ref().get())
    }
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `bind = "127.0.0.1:9900"`; port 0 picks a free port (logged at start).
    pub bind: Spanned<BindAddr>,
}

/// `[[listener]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `name = "public"`; unique among listeners.
    pub name: Spanned<String>,
    /// `bind = "0.0.0.0:8080"`; port 0 picks a free port (logged at start).
    pub bind: Spanned<BindAddr>,
    /// Peers whose `X-Forwarded-*` headers are believed and appended to.
    /// `trusted_proxies = ["10.0.0.0/8", "192.168.1.7"]`
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Largest request head accepted; larger heads get 431.
    /// `max_header_bytes = "32KiB"`
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Time allowed for a complete request head; a partial head gets 408 after it.
    /// `handshake_timeout = "10s"`
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// TLS on this listener (`[listener.tls]`): `wss://` and `https://`. Plain TCP when
    /// absent.
    #[serde(default)]
    pub tls: Option<Spanned<ListenerTls>>,
    /// `redirect_https = 8443`: answer every request with `308` to
    /// `https://HOST:8443/same/uri` instead of routing it.
    #[serde(default)]
    pub redirect_https: Option<Spanned<u16>>,
    /// `h2c = true`: on a plain-text listener, also serve HTTP/2 to clients that start
    /// with its connection preface (prior knowledge, RFC 9113 §3.3).
    #[serde(default)]
    pub h2c: Option<Spanned<bool>>,
}

/// `[listener.tls]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// `certificates = [{ cert = "a.pem", key = "a-key.pem" }]`: PEM files, relative to the
    /// config file. SNI picks the first whose names match; the first is the default.
    pub certificates: Spanned<Vec<CertificateFiles>>,
    /// `min_version = "1.2"` or `"1.3"`.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// `alpn = ["h2", "http/1.1"]`: protocols offered, in order of preference.
    #[serde(default)]
    pub alpn: Option<Spanned<Vec<Spanned<String>>>>,
    /// `hsts = "max-age=63072000"`: sent as `Strict-Transport-Security` on every response.
    #[serde(default)]
    pub hsts: Option<Spanned<String>>,
    /// `client_ca = "clients-ca.pem"`: CA certificates that sign client certificates
    /// (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<Spanned<String>>,
    /// `client_auth = "required"` or `"optional"`; needs `client_ca`. Default `"required"`.
    #[serde(default)]
    pub client_auth: Option<Spanned<ClientAuth>>,
}

/// `ALPN` protocols a TLS listener offers when `alpn` is unset.
pub const DEFAULT_ALPN: [&str; 2] = ["h2", "http/1.1"];

/// One certificate chain and its private key: `{ cert = "a.pem", key = "a-key.pem" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM: the server certificate first, then intermediates.
    pub cert: Spanned<String>,
    /// PEM: the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: Spanned<String>,
}

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// Whether a client certificate is demanded (mutual TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Clients without a certificate are let in; one that sends a certificate must send a
    /// valid one.
    Optional,
    /// The TLS handshake fails without a valid client certificate.
    #[default]
    Required,
}

fn default_max_header_bytes() -> ByteSize {
    DEFAULT_MAX_HEADER_BYTES
}
fn default_handshake_timeout() -> Duration {
    DEFAULT_HANDSHAKE_TIMEOUT
}

/// `[[route]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `name = "chat"`; unique among routes; appears in logs.
    pub name: Spanned<String>,
    /// Only on these listeners; all listeners when absent. `listeners = ["public"]`
    #[serde(default)]
    pub listeners: Option<Vec<Spanned<String>>>,
    /// `host = "chat.example.com"` or `host = "*.example.com"`; any host when absent.
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    /// `path_prefix = "/ws"`: paths that start with these characters.
    #[serde(default)]
    pub path_prefix: Option<Spanned<String>>,
    /// `path_exact = "/ws"`: only this path.
    #[serde(default)]
    pub path_exact: Option<Spanned<String>>,
    /// `path_regex = "^/rooms/[0-9]+$"`: paths the regex matches.
    #[serde(default)]
    pub path_regex: Option<Spanned<String>>,
    /// `upstream = "chat"`: the `[upstream.NAME]` pool requests go to.
    pub upstream: Spanned<String>,
    /// `plugins = ["origin", "auth"]`: handshake plugins, run in this order.
    #[serde(default)]
    pub plugins: Vec<Spanned<String>>,
    /// `limits = ["per_ip"]`: `[limit.NAME]` tables every request on the route must pass.
    #[serde(default)]
    pub limits: Vec<Spanned<String>>,
    /// `strip_prefix = "/ws"`: removed from the start of the path before forwarding.
    #[serde(default)]
    pub strip_prefix: Option<Spanned<String>>,
    /// `connect_timeout = "5s"`: time allowed to connect to one upstream server.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// `idle_timeout = "1h"`: a tunnel with no bytes either way for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// `max_lifetime = "24h"`: a tunnel is closed after this long whatever it does.
    #[serde(default)]
    pub max_lifetime: Option<Duration>,
    /// `half_close_timeout = "30s"`: once one side of a tunnel has finished sending, the
    /// tunnel is closed when no bytes move for this long.
    #[serde(default = "default_half_close_timeout")]
    pub half_close_timeout: Duration,
    /// `websocket = { max_message = "1MiB", message_rate = "100/s" }`: frame-aware
    /// WebSocket tunnels; see [`crate::WebSocket`]. Blind byte tunnels when absent.
    #[serde(default)]
    pub websocket: Option<Spanned<crate::WebSocket>>,
}

fn default_half_close_timeout() -> Duration {
    DEFAULT_HALF_CLOSE_TIMEOUT
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}
fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}

/// `[upstream.NAME]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `servers = ["127.0.0.1:9001", { addr = "backend:9002", weight = 2 }]`
    pub servers: Spanned<Vec<Spanned<Server>>>,
    /// `balance = "round_robin"`, `"least_conn"`, `"random_two"`, `"ip_hash"`,
    /// `"consistent_hash"` or `"sticky_cookie"`.
    #[serde(default)]
    pub balance: Balance,
    /// What `consistent_hash` hashes: `hash_key = "cookie:session"`; see [`HashKey`].
    #[serde(default)]
    pub hash_key: Option<Spanned<HashKey>>,
    /// How `sticky_cookie` picks a server for a client without a valid cookie.
    /// `sticky_fallback = "round_robin"`
    #[serde(default)]
    pub sticky_fallback: Option<Spanned<Balance>>,
    /// The cookie `sticky_cookie` sets: `cookie = { name = "airlock_server" }`.
    #[serde(default)]
    pub cookie: Option<Spanned<StickyCookie>>,
    /// Active health checks: `health_check = { path = "/healthz" }`. Off when absent.
    #[serde(default)]
    pub health_check: Option<Spanned<HealthCheck>>,
    /// Connect failures within `fail_timeout` that take a server out of rotation.
    /// `max_fails = 1`; 0 disables passive health.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// Window for counting failures, and how long a failed server stays out.
    /// `fail_timeout = "10s"`
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: Duration,
    /// Servers tried for one request when connecting fails. `connect_attempts = 3`
    #[serde(default = "default_connect_attempts")]
    pub connect_attempts: u32,
    /// Idle keep-alive connections kept per server for plain HTTP. `keepalive = 32`
    #[serde(default = "default_keepalive")]
    pub keepalive: usize,
    /// How long an idle keep-alive connection is kept. `keepalive_timeout = "60s"`
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: Duration,
    /// `max_conns = 100`: tunnels plus requests in flight one server may have at once;
    /// a server at the limit is passed over. Unlimited when absent.
    #[serde(default)]
    pub max_conns: Option<Spanned<u32>>,
    /// `queue_timeout = "2s"`: with `max_conns`, how long a request waits for a server
    /// with room when every one is full; then 503. Default `"0s"`: no wait.
    #[serde(default)]
    pub queue_timeout: Option<Spanned<Duration>>,
    /// How often servers given by name are resolved again; every address a name
    /// resolves to is a server. `resolve_interval = "30s"`
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval: Spanned<Duration>,
    /// TLS to the servers: `tls = true` (verified against the system's roots) or
    /// `tls = { ca = "internal-ca.pem", server_name = "backend.internal" }`.
    #[serde(default, deserialize_with = "upstream_tls")]
    pub tls: Option<Spanned<UpstreamTls>>,
}

/// `tls = { ... }` of an upstream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// `ca = "internal-ca.pem"`: trust these CA certificates instead of the system's.
    #[serde(default)]
    pub ca: Option<Spanned<String>>,
    /// `server_name = "backend.internal"`: sent as SNI and checked against the server's
    /// certificate. Default: the host part of each server's address.
    #[serde(default)]
    pub server_name: Option<Spanned<String>>,
    /// `client_cert = "proxy.pem"`: a certificate chain to present to the servers (with
    /// `client_key`).
    #[serde(default)]
    pub client_cert: Option<Spanned<String>>,
    /// `client_key = "proxy-key.pem"`
    #[serde(default)]
    pub client_key: Option<Spanned<String>>,
    /// `insecure_skip_verify = true`: accept any server certificate. For tests only; logged
    /// as a warning at start.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `tls = true`, `tls = false` or `tls = { ... }`.
fn upstream_tls<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Spanned<UpstreamTls>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<UpstreamTls>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(r#"`true`, `false` or a table like { ca = "ca.pem", server_name = "backend.internal" }"#)
        }
        fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
            Ok(on.then(UpstreamTls::default))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            UpstreamTls::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    struct Setting(Option<UpstreamTls>);
    impl<'de> Deserialize<'de> for Setting {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(V).map(Setting)
        }
    }
    let setting = Spanned::<Setting>::deserialize(d)?;
    let span = setting.span();
    Ok(setting.into_inner().0.map(|tls| Spanned::new(span, tls)))
}

fn default_max_fails() -> u32 {
    DEFAULT_MAX_FAILS
}
fn default_fail_timeout() -> Duration {
    DEFAULT_FAIL_TIMEOUT
}
fn default_connect_attempts() -> u32 {
    DEFAULT_CONNECT_ATTEMPTS
}
fn default_keepalive() -> usize {
    DEFAULT_KEEPALIVE
}
fn default_keepalive_timeout() -> Duration {
    DEFAULT_KEEPALIVE_TIMEOUT
}
fn default_resolve_interval() -> Spanned<Duration> {
    Spanned::new(0..0, DEFAULT_RESOLVE_INTERVAL)
}

/// One upstream server: `"host:port"` or `{ addr = "host:port", weight = 2 }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `"10.0.0.5:9001"`, or `"backend.internal:9001"`: every address the name resolves
    /// to, re-resolved each `resolve_interval`.
    pub addr: String,
    /// Relative share of traffic; at least 1. Default 1.
    pub weight: u32,
}

impl<'de> Deserialize<'de> for Server {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            addr: String,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Server;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a server "host:port" or a table { addr = "host:port", weight = N }"#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Server, E> {
                Ok(Server {
                    addr: s.to_string(),
                    weight: 1,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Server, A::Error> {
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Server {
                    addr: t.addr,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// What happens to a handshake when a plugin fails (traps, times out, runs out of memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Reject the handshake with 503.
    #[default]
    Deny,
    /// Let the handshake through as if the plugin had allowed it unchanged.
    Allow,
}

/// `[plugin.NAME]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// `wasm = "plugins/origin_allowlist.wasm"`, relative to the config file.
    pub wasm: Spanned<String>,
    /// `config = { allow = ["https://app.example.com"] }`: handed to the plugin as JSON.
    #[serde(default)]
    pub config: toml::Table,
    /// `timeout = "5ms"`: deadline for one call into the plugin.
    #[serde(default = "default_plugin_timeout")]
    pub timeout: Duration,
    /// `max_memory = "16MiB"`: linear memory one instance may grow to. Unset: a default
    /// for the language the component was written in (16 MiB for Rust, 48 MiB for
    /// JavaScript and Python), which airlock reads from the component when it loads it.
    #[serde(default)]
    pub max_memory: Option<ByteSize>,
    /// `on_error = "deny"` (503) or `"allow"`.
    #[serde(default)]
    pub on_error: OnError,
    /// `instances = 16`: warm instances kept for reuse.
    #[serde(default)]
    pub instances: Option<Spanned<usize>>,
}

fn default_plugin_timeout() -> Duration {
    DEFAULT_PLUGIN_TIMEOUT
}

/// A listening address: `"0.0.0.0:8080"`, `"[::]:8443"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddr(pub SocketAddr);

impl<'de> Deserialize<'de> for BindAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(BindAddr).map_err(|_| {
            de::Error::custom(format!(
                r#"invalid address "{s}"; write an IP address and port, like "0.0.0.0:8080", "127.0.0.1:0" or "[::]:8080""#
            ))
        })
    }
}

/// An IP network or single address: `"10.0.0.0/8"`, `"192.168.1.7"`, `"::1"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
            .map(Cidr)
            .map_err(|_| {
                de::Error::custom(format!(
                    r#"invalid network "{s}"; write an address or CIDR block, like "10.0.0.0/8" or "192.168.1.7""#
                ))
            })
    }
}
