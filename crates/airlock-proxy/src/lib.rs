//! airlock's data plane: listeners, routing, HTTP/1.1 forwarding, upgrades and the byte
//! tunnel, upstream pools with balancing and passive health, the admin endpoint and
//! graceful shutdown.
//!
//! Not here: parsing configuration (`airlock-config`), logging setup
//! (`airlock-telemetry`), the command line (`airlock`).
//!
//! Use: [`Plan::build`] checks a configuration without touching the network,
//! [`Plan::bind`] binds every socket, [`Bound::start`] starts serving and returns a
//! [`Running`] handle for shutdown.

#![forbid(unsafe_code)]

mod access_log;
mod admin;
mod body;
mod direct_upgrade;
mod drain;
mod error;
mod forwarded;
mod h2_websocket;
mod handler;
mod headers;
mod http_forward;
mod plugin_phase;
pub mod route;
mod serve;
pub mod stream;
pub mod tls;
pub mod tunnel;
mod upgrade;
pub mod upstream;
mod upstream_upgrade;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use airlock_config::LoadedConfig;
use tokio::net::TcpListener;

pub use error::{ErrorSource, ProxyError};

use drain::Drain;
use forwarded::TrustedProxies;
use handler::ListenerCtx;
use route::{HostMatch, PathMatch, Route, Router};
use upstream::Pool;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Plugin(#[from] airlock_plugins::PluginError),
    #[error("listener `{listener}`: {source}")]
    ListenerTls {
        listener: String,
        #[source]
        source: tls::TlsError,
    },
    #[error("upstream `{upstream}`: {source}")]
    UpstreamTls {
        upstream: String,
        #[source]
        source: tls::TlsError,
    },
    #[error("cannot bind listener `{listener}` to {addr}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A configuration turned into runtime objects, not yet bound to any socket.
pub struct Plan {
    listeners: Vec<(ListenerCtx, SocketAddr)>,
    pools: Arc<[Arc<Pool>]>,
    admin: Option<SocketAddr>,
    shutdown_grace: Duration,
}

impl Plan {
    /// Build everything the configuration describes, without touching the network.
    pub fn build(loaded: &LoadedConfig) -> Result<Self, StartError> {
        let config = &loaded.config;
        let plugins = airlock_plugins::load_all(loaded)?;
        let mut pools = HashMap::new();
        for (name, up) in &config.upstreams {
            let tls = up
                .tls
                .as_ref()
                .map(|t| tls::client::UpstreamTls::build(name, t.get_ref(), loaded))
                .transpose()
                .map_err(|source| StartError::UpstreamTls {
                    upstream: name.clone(),
                    source,
                })?;
            if let Some(tls) = &tls
                && let Some(server) = up
                    .servers
                    .get_ref()
                    .iter()
                    .find(|s| tls.name_for(&s.get_ref().addr).is_none())
            {
                return Err(StartError::UpstreamTls {
                    upstream: name.clone(),
                    source: tls::TlsError {
                        path: format!("server {}", server.get_ref().addr),
                        message: "its host is not a name TLS can verify; set `server_name`".into(),
                    },
                });
            }
            pools.insert(
                name.clone(),
                Arc::new(Pool::from_config(name, up, tls.map(Arc::new))),
            );
        }
        let pools = Arc::new(pools);
        let routes: Vec<(Option<Vec<String>>, Arc<Route>)> = config
            .routes
            .iter()
            .map(|r| {
                let only = r
                    .listeners
                    .as_ref()
                    .map(|l| l.iter().map(|n| n.get_ref().clone()).collect());
                (only, Arc::new(build_route(r, &pools, &plugins)))
            })
            .collect();
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let name = l.name.get_ref();
            let mine: Vec<Arc<Route>> = routes
                .iter()
                .filter(|(only, _)| only.as_ref().is_none_or(|o| o.contains(name)))
                .map(|(_, r)| r.clone())
                .collect();
            let listener_tls = l.tls.as_ref().map(|t| t.get_ref());
            let tls = listener_tls
                .map(|t| tls::server::ServerTls::build(name, t, loaded))
                .transpose()
                .map_err(|source| StartError::ListenerTls {
                    listener: name.clone(),
                    source,
                })?;
            if let Some(tls) = &tls {
                warn_uncovered_hosts(name, tls, &mine);
            }
            let ctx = ListenerCtx {
                name: name.as_str().into(),
                router: Router::new(mine),
                pools: pools.clone(),
                trusted: TrustedProxies::new(l.trusted_proxies.iter().map(|c| c.0).collect()),
                max_header_bytes: usize::try_from(l.max_header_bytes.0).unwrap_or(usize::MAX),
                handshake_timeout: l.handshake_timeout.get(),
                tls: tls.map(Arc::new),
                hsts: listener_tls
                    .and_then(|t| t.hsts.as_ref())
                    .and_then(|h| http::HeaderValue::from_str(h.get_ref()).ok()),
                redirect_https: l.redirect_https.as_ref().map(|p| *p.get_ref()),
                h2c: l.h2c.as_ref().is_some_and(|h| *h.get_ref()),
            };
            listeners.push((ctx, l.bind.get_ref().0));
        }
        let mut pools: Vec<(&String, &Arc<Pool>)> = pools.iter().collect();
        pools.sort_by_key(|(name, _)| *name);
        Ok(Self {
            listeners,
            pools: pools.into_iter().map(|(_, p)| p.clone()).collect(),
            admin: config.admin.as_ref().map(|a| a.bind.get_ref().0),
            shutdown_grace: config.shutdown_grace.get(),
        })
    }

    /// Bind every listener and the admin endpoint. Nothing is served until `start`.
    pub async fn bind(self) -> Result<Bound, StartError> {
        let mut listeners = Vec::new();
        for (ctx, addr) in self.listeners {
            let socket = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    listener: ctx.name.to_string(),
                    addr,
                    source,
                })?;
            listeners.push((Arc::new(ctx), socket));
        }
        let admin = match self.admin {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            listener: "admin".into(),
                            addr,
                            source,
                        })?,
                )
            }
            None => None,
        };
        Ok(Bound {
            listeners,
            admin,
            pools: self.pools,
            shutdown_grace: self.shutdown_grace,
        })
    }
}

/// Warn about route hosts on a TLS listener that no certificate covers: clients would
/// refuse the connection before any route sees it.
fn warn_uncovered_hosts(listener: &str, tls: &tls::server::ServerTls, routes: &[Arc<Route>]) {
    for route in routes {
        if let Some(host) = route.host.example_name()
            && !tls.covers(&host)
        {
            tracing::warn!(
                listener,
                route = &*route.name,
                host,
                "no certificate on this TLS listener covers the route's host; clients will refuse the default certificate"
            );
        }
    }
}

fn build_route(
    r: &airlock_config::Route,
    pools: &HashMap<String, Arc<Pool>>,
    plugins: &HashMap<String, Arc<airlock_plugins::Plugin>>,
) -> Route {
    let path = if let Some(p) = &r.path_exact {
        PathMatch::Exact(p.get_ref().clone())
    } else if let Some(p) = &r.path_prefix {
        PathMatch::Prefix(p.get_ref().clone())
    } else if let Some(p) = &r.path_regex {
        PathMatch::Regex(regex::Regex::new(p.get_ref()).expect("validated by airlock-config"))
    } else {
        PathMatch::Prefix("/".into())
    };
    Route {
        name: r.name.get_ref().as_str().into(),
        host: HostMatch::parse(r.host.as_ref().map(|h| h.get_ref().as_str())),
        path,
        pool: pools[r.upstream.get_ref()].clone(),
        chain: airlock_plugins::Chain::new(
            r.plugins
                .iter()
                .map(|p| plugins[p.get_ref()].clone())
                .collect(),
        ),
        strip_prefix: r.strip_prefix.as_ref().map(|s| s.get_ref().clone()),
        connect_timeout: r.connect_timeout.get(),
        idle_timeout: r.idle_timeout.get(),
        max_lifetime: r.max_lifetime.map(|d| d.get()),
        half_close_timeout: r.half_close_timeout.get(),
    }
}

/// Sockets bound and ready to serve.
pub struct Bound {
    listeners: Vec<(Arc<ListenerCtx>, TcpListener)>,
    admin: Option<TcpListener>,
    pools: Arc<[Arc<Pool>]>,
    shutdown_grace: Duration,
}

impl Bound {
    /// Each listener's name and the address it actually bound (port 0 resolved).
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(ctx, l)| Some((ctx.name.to_string(), l.local_addr().ok()?)))
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Start serving on the current Tokio runtime.
    pub fn start(self) -> Running {
        let drain = Drain::default();
        for (name, addr) in self.listener_addrs() {
            tracing::info!(listener = name, addr = %addr, "listening");
        }
        if let Some(admin) = self.admin {
            if let Ok(addr) = admin.local_addr() {
                tracing::info!(addr = %addr, "admin listening");
            }
            tokio::spawn(admin::serve(admin, drain.clone(), self.pools.clone()));
        }
        let tls: Arc<[Arc<tls::server::ServerTls>]> = self
            .listeners
            .iter()
            .filter_map(|(ctx, _)| ctx.tls.clone())
            .collect();
        if !tls.is_empty() {
            tokio::spawn(watch_certificates(tls.clone(), drain.clone()));
        }
        for (ctx, listener) in self.listeners {
            tokio::spawn(serve::accept_loop(listener, ctx, drain.clone()));
        }
        drain.set_ready();
        Running {
            drain,
            shutdown_grace: self.shutdown_grace,
            tls,
        }
    }
}

/// How often certificate and key files are checked for changes.
const CERT_POLL: Duration = Duration::from_secs(2);

/// Reload a listener's certificates when its files change (a renewal by certbot or
/// cert-manager), so that no signal is needed.
async fn watch_certificates(tls: Arc<[Arc<tls::server::ServerTls>]>, drain: Drain) {
    let mut tick = tokio::time::interval(CERT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = drain.stopping.cancelled() => return,
        }
        for listener in tls.iter() {
            // File reads block; they are few and small.
            tokio::task::block_in_place(|| listener.reload_if_changed());
        }
    }
}

/// A serving proxy.
pub struct Running {
    drain: Drain,
    pub shutdown_grace: Duration,
    tls: Arc<[Arc<tls::server::ServerTls>]>,
}

impl Running {
    /// Load every TLS listener's certificates again (SIGHUP). New handshakes use them;
    /// open connections and tunnels are untouched. A listener whose new files are unusable
    /// keeps its current certificates, and the log says why.
    pub fn reload_certificates(&self) {
        for listener in self.tls.iter() {
            listener.reload_and_log("reload requested");
        }
    }

    /// Stop accepting, report not-ready, close idle connections, let in-flight requests
    /// and open tunnels continue.
    pub fn begin_shutdown(&self) {
        self.drain.stopping.cancel();
        self.drain.tasks.close();
    }

    /// Close every tunnel and connection that is still open.
    pub fn force_close(&self) {
        self.drain.force.cancel();
    }

    /// Resolves when every connection and tunnel has ended (after `begin_shutdown`).
    pub async fn drained(&self) {
        self.drain.tasks.wait().await;
    }

    /// Connections and tunnels still open.
    pub fn open_tasks(&self) -> usize {
        self.drain.tasks.len()
    }
}
