//! A configuration turned into a [`Snapshot`]: pools, plugins, routes and listeners.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_config::LoadedConfig;

use super::{DrainSettings, Listener, Snapshot};
use crate::http::forwarded::TrustedProxies;
use crate::limit::Limit;
use crate::metrics::{PluginMetrics, RouteMetrics};
use crate::route::{HostMatch, PathMatch, Route, Router};
use crate::tls::{TlsError, server::ServerTls};
use crate::upstream::{Pool, tls::UpstreamTls};

/// Why a configuration could not be turned into a snapshot (files it names are missing
/// or unusable, a plugin does not load).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Plugin(#[from] airlock_plugins::PluginError),
    #[error("listener `{listener}`: {source}")]
    ListenerTls {
        listener: String,
        #[source]
        source: TlsError,
    },
    #[error("limit `{limit}`: its store URL is not usable: {message}")]
    LimitStore { limit: String, message: String },
    #[error("[telemetry]: {0}")]
    Telemetry(String),
    #[error("upstream `{upstream}`: {source}")]
    UpstreamTls {
        upstream: String,
        #[source]
        source: TlsError,
    },
}

/// What a reload kept of the previous snapshot: how many pools, limits and plugins.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kept {
    pub pools: usize,
    pub limits: usize,
    pub plugins: usize,
}

pub(super) fn build(
    loaded: &LoadedConfig,
    previous: Option<&Snapshot>,
) -> Result<(Snapshot, Kept), BuildError> {
    let config = &loaded.config;
    let mut kept = Kept::default();
    let plugins = match previous {
        Some(previous) => airlock_plugins::load_all_reusing(loaded, &previous.plugins)?,
        None => airlock_plugins::load_all(loaded)?,
    };
    if let Some(previous) = previous {
        kept.plugins = plugins
            .iter()
            .filter(|(name, p)| {
                previous
                    .plugins
                    .get(*name)
                    .is_some_and(|old| Arc::ptr_eq(old, p))
            })
            .count();
    }
    let mut pools = HashMap::new();
    for (name, up) in &config.upstreams {
        let pool = match previous.and_then(|p| p.pools.get(name)) {
            Some(old) if old.has_config(up) => {
                kept.pools += 1;
                old.clone()
            }
            _ => Arc::new(build_pool(name, up, loaded)?),
        };
        pools.insert(name.clone(), pool);
    }
    let mut limits = HashMap::new();
    for (name, l) in &config.limits {
        let limit = match previous.and_then(|p| p.limits.get(name)) {
            Some(old) if old.has_config(l.get_ref()) => {
                kept.limits += 1;
                old.clone()
            }
            _ => Arc::new(Limit::from_config(name, l.get_ref()).map_err(|e| {
                BuildError::LimitStore {
                    limit: name.clone(),
                    message: e.to_string(),
                }
            })?),
        };
        limits.insert(name.clone(), limit);
    }
    let routes: Vec<(Option<Vec<String>>, Arc<Route>)> = config
        .routes
        .iter()
        .map(|r| {
            let only = r
                .listeners
                .as_ref()
                .map(|l| l.iter().map(|n| n.get_ref().clone()).collect());
            (only, Arc::new(build_route(r, &pools, &plugins, &limits)))
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
        listeners.push(Arc::new(build_listener(l, mine, loaded)?));
    }
    // An unchanged [telemetry] keeps its exporter (and the spans it has queued).
    let telemetry = match (
        &config.telemetry,
        previous.and_then(|p| p.telemetry.as_ref()),
    ) {
        (None, _) => None,
        (Some(t), Some(old)) if old.has_config(t) => Some(old.clone()),
        (Some(t), _) => Some(Arc::new(
            airlock_telemetry::trace::Tracer::new(t).map_err(BuildError::Telemetry)?,
        )),
    };
    let snapshot = Snapshot {
        telemetry,
        listeners,
        pools,
        limits,
        plugins,
        max_connections: config.max_connections.as_ref().map(|m| *m.get_ref()),
        watch_config: config.watch_config,
        drain: DrainSettings {
            spread: config.drain_spread(),
            close_code: *config.drain_close_code.get_ref(),
        },
    };
    Ok((snapshot, kept))
}

fn build_pool(
    name: &str,
    up: &airlock_config::Upstream,
    loaded: &LoadedConfig,
) -> Result<Pool, BuildError> {
    let tls_error = |source| BuildError::UpstreamTls {
        upstream: name.to_string(),
        source,
    };
    let tls = up
        .tls
        .as_ref()
        .map(|t| UpstreamTls::build(name, t.get_ref(), loaded))
        .transpose()
        .map_err(tls_error)?;
    if let Some(tls) = &tls
        && let Some(server) = up
            .servers
            .get_ref()
            .iter()
            .find(|s| tls.name_for(&s.get_ref().addr).is_none())
    {
        return Err(tls_error(TlsError {
            path: format!("server {}", server.get_ref().addr),
            message: "its host is not a name TLS can verify; set `server_name`".into(),
        }));
    }
    Ok(Pool::from_config(name, up, tls.map(Arc::new)))
}

fn build_listener(
    l: &airlock_config::Listener,
    routes: Vec<Arc<Route>>,
    loaded: &LoadedConfig,
) -> Result<Listener, BuildError> {
    let name = l.name.get_ref();
    let listener_tls = l.tls.as_ref().map(|t| t.get_ref());
    let tls = listener_tls
        .map(|t| ServerTls::build(name, t, loaded))
        .transpose()
        .map_err(|source| BuildError::ListenerTls {
            listener: name.clone(),
            source,
        })?;
    if let Some(tls) = &tls {
        warn_uncovered_hosts(name, tls, &routes);
    }
    Ok(Listener {
        name: name.as_str().into(),
        bind: l.bind.get_ref().0,
        router: Router::new(routes),
        trusted: TrustedProxies::new(l.trusted_proxies.iter().map(|c| c.0).collect()),
        max_header_bytes: usize::try_from(l.max_header_bytes.0).unwrap_or(usize::MAX),
        handshake_timeout: l.handshake_timeout.get(),
        tls: tls.map(Arc::new),
        hsts: listener_tls
            .and_then(|t| t.hsts.as_ref())
            .and_then(|h| http::HeaderValue::from_str(h.get_ref()).ok()),
        redirect_https: l.redirect_https.as_ref().map(|p| *p.get_ref()),
        h2c: l.h2c.as_ref().is_some_and(|h| *h.get_ref()),
    })
}

/// Warn about route hosts on a TLS listener that no certificate covers: clients would
/// refuse the connection before any route sees it.
fn warn_uncovered_hosts(listener: &str, tls: &ServerTls, routes: &[Arc<Route>]) {
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
    limits: &HashMap<String, Arc<Limit>>,
) -> Route {
    let named = |after_plugins: bool| {
        r.limits
            .iter()
            .map(|l| limits[l.get_ref()].clone())
            .filter(|l| l.after_plugins() == after_plugins)
            .collect()
    };
    let path = if let Some(p) = &r.path_exact {
        PathMatch::Exact(p.get_ref().clone())
    } else if let Some(p) = &r.path_prefix {
        PathMatch::Prefix(p.get_ref().clone())
    } else if let Some(p) = &r.path_regex {
        PathMatch::Regex(regex::Regex::new(p.get_ref()).expect("validated by airlock-config"))
    } else {
        PathMatch::Prefix("/".into())
    };
    let name: Arc<str> = r.name.get_ref().as_str().into();
    let chain = airlock_plugins::Chain::new(
        r.plugins
            .iter()
            .map(|p| plugins[p.get_ref()].clone())
            .collect(),
    );
    Route {
        metrics: Arc::new(RouteMetrics::new(&name)),
        plugin_metrics: chain.names().map(PluginMetrics::new).collect(),
        name,
        host: HostMatch::parse(r.host.as_ref().map(|h| h.get_ref().as_str())),
        path,
        pool: pools[r.upstream.get_ref()].clone(),
        chain,
        limits: named(false),
        limits_after_plugins: named(true),
        strip_prefix: r.strip_prefix.as_ref().map(|s| s.get_ref().clone()),
        connect_timeout: r.connect_timeout.get(),
        idle_timeout: r.idle_timeout.get(),
        max_lifetime: r.max_lifetime.map(|d| d.get()),
        half_close_timeout: r.half_close_timeout.get(),
        frame_rules: r
            .websocket
            .as_ref()
            .map(|ws| Arc::new(crate::tunnel::FrameRules::from_config(ws.get_ref()))),
    }
}
