//! One snapshot of the running configuration: every listener's settings and routes, every
//! upstream pool, every loaded plugin, as one immutable value.
//!
//! A connection takes the current snapshot when it is accepted ([`Shared::load`]) and
//! keeps it until it ends, tunnel included: nothing it uses can change under it. Swapping
//! in a new snapshot (a reload) changes only what later connections see. A keep-alive
//! connection's later requests use the snapshot the connection took.
//!
//! Not here: sockets. Binding and accepting are `crate::listen`; this area only holds
//! what they and the request phases read.

mod build;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;

pub use build::{BuildError, Kept};

use crate::http::forwarded::TrustedProxies;
use crate::limit::Limit;
use crate::route::Router;
use crate::tls::server::ServerTls;
use crate::upstream::Pool;

/// The running configuration, as one value.
#[derive(Debug)]
pub struct Snapshot {
    /// In file order.
    listeners: Vec<Arc<Listener>>,
    /// Every pool by name (routes hold their own; plugins may choose any).
    pools: HashMap<String, Arc<Pool>>,
    /// Every `[limit.NAME]` by name (routes hold their own).
    limits: HashMap<String, Arc<Limit>>,
    /// Every `[plugin.NAME]` by name (routes hold their chains), for a reload to keep.
    plugins: HashMap<String, Arc<airlock_plugins::Plugin>>,
    /// `max_connections`: client connections open at once in the process.
    pub max_connections: Option<u32>,
    /// `watch_config`: reload when the configuration file changes.
    pub watch_config: bool,
    /// `drain_spread` and `drain_close_code`.
    pub drain: DrainSettings,
    /// `[telemetry]`: the tracer, when traces are exported.
    pub telemetry: Option<Arc<airlock_telemetry::trace::Tracer>>,
}

/// How a drain closes open tunnels.
#[derive(Debug, Clone, Copy)]
pub struct DrainSettings {
    /// Over how long, at a steady rate.
    pub spread: Duration,
    /// The close code WebSocket tunnels get.
    pub close_code: u16,
}

impl Snapshot {
    /// Build every runtime object the configuration describes, without touching the
    /// network: pools, plugins (compiled and configured), routes, listener settings and
    /// their TLS certificates.
    pub fn build(loaded: &airlock_config::LoadedConfig) -> Result<Self, BuildError> {
        Ok(build::build(loaded, None)?.0)
    }

    /// [`Snapshot::build`] for a reload: pools, limits and plugins of `previous` whose
    /// configuration did not change are kept (the same objects, with their state: server
    /// health and counts, idle connections, limit counts, warm plugin instances).
    pub fn build_after(
        loaded: &airlock_config::LoadedConfig,
        previous: &Snapshot,
    ) -> Result<(Self, Kept), BuildError> {
        build::build(loaded, Some(previous))
    }

    pub fn listeners(&self) -> &[Arc<Listener>] {
        &self.listeners
    }

    /// The listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<Listener>> {
        self.listeners.iter().find(|l| &*l.name == name)
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Every limit, sorted by name.
    pub fn limits_by_name(&self) -> Vec<&Arc<Limit>> {
        let mut limits: Vec<(&String, &Arc<Limit>)> = self.limits.iter().collect();
        limits.sort_by_key(|(name, _)| *name);
        limits.into_iter().map(|(_, l)| l).collect()
    }

    /// What it holds, for the admin endpoint's `GET /config`.
    pub fn summary(&self) -> serde_json::Value {
        let mut plugins: Vec<&String> = self.plugins.keys().collect();
        plugins.sort();
        serde_json::json!({
            "listeners": self.listeners.iter().map(|l| serde_json::json!({
                "name": &*l.name,
                "bind": l.bind.to_string(),
                "tls": l.tls.is_some(),
                "routes": l.router.routes().iter().map(|r| &*r.name).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "upstreams": self.pools_by_name().iter().map(|p| &*p.name).collect::<Vec<_>>(),
            "plugins": plugins,
            "limits": self.limits_by_name().iter().map(|l| &*l.name).collect::<Vec<_>>(),
            "max_connections": self.max_connections,
            "watch_config": self.watch_config,
            "drain_spread": humantime::format_duration(self.drain.spread).to_string(),
            "drain_close_code": self.drain.close_code,
            "tracing": self.telemetry.is_some(),
        })
    }

    /// Every pool, sorted by name.
    pub fn pools_by_name(&self) -> Vec<&Arc<Pool>> {
        let mut pools: Vec<(&String, &Arc<Pool>)> = self.pools.iter().collect();
        pools.sort_by_key(|(name, _)| *name);
        pools.into_iter().map(|(_, p)| p).collect()
    }
}

/// What one `[[listener]]` is, within a snapshot: its settings and the routes it serves.
#[derive(Debug)]
pub struct Listener {
    pub name: Arc<str>,
    pub bind: SocketAddr,
    pub router: Router,
    pub trusted: TrustedProxies,
    pub max_header_bytes: usize,
    pub handshake_timeout: Duration,
    /// TLS settings; `None` on a plain-text listener.
    pub tls: Option<Arc<ServerTls>>,
    /// `Strict-Transport-Security` added to every response.
    pub hsts: Option<HeaderValue>,
    /// `redirect_https`: every request is answered with 308 to this HTTPS port.
    pub redirect_https: Option<u16>,
    /// `h2c`: a plain-text connection that starts with the HTTP/2 preface gets HTTP/2.
    pub h2c: bool,
}

impl Shared {
    /// Make `snapshot` the current one; later connections take it.
    pub fn store(&self, snapshot: Arc<Snapshot>) {
        self.0.store(snapshot);
    }
}

/// The current snapshot, shared by the accept loops and the admin endpoint, and swapped
/// as a whole.
#[derive(Debug, Clone)]
pub struct Shared(Arc<ArcSwap<Snapshot>>);

impl Shared {
    pub fn new(snapshot: Snapshot) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    /// The current snapshot, to keep for as long as it is used.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }
}
