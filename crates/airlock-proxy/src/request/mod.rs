//! The phases of one request, in the order they run. [`handle`] is the only entry: the
//! HTTP/1.1 server (hyper), airlock's direct read of a first upgrade request, and the
//! HTTP/2 server all call it, so a phase added here applies to all three.
//!
//! ```text
//! normalise  an RFC 8441 extended CONNECT becomes an HTTP/1.1 upgrade request
//! route      host + path → the route (404 when none)            request::find_route
//! limits     the route's limits: 429 / 503, or slots held to the end   crate::limit
//! plugins    the route's chain: reject, or change the request   request::plugins
//! limits     those keyed "plugin", on the key the plugins set
//! pick       the pool (the route's, or a plugin's choice)
//! prepare    the request the upstream gets                      request::upstream_request
//! affinity   what the pool's balancer reads: hash key, sticky cookie   upstream::balance
//! forward    connect (failing over), then
//!              an upgrade:  101 → tunnel (started by the client side)   crate::upgrade
//!              otherwise:   plain HTTP, streamed both ways              crate::forward
//! stick      a sticky pool's Set-Cookie for a client it (re)placed
//! respond    errors mapped to statuses, listener headers        request::respond
//! log        one access-log line, and the request's metrics    crate::observe
//! ```
//!
//! Every phase may fail with a [`ProxyError`]; the request then skips to `respond`,
//! which maps the error to what the client sees. The tunnel runs after `handle` returns
//! (it needs the `101` written first) and logs its own line when it closes.

mod plugins;
mod respond;
mod upstream_request;

use std::sync::Arc;

use http::{Request, Response};

use crate::conn::ConnCtx;
use crate::error::ProxyError;
use crate::http::body::ProxyBody;
use crate::http::{forwarded, headers};
use crate::limit::{self, Admission, KeyParts};
use crate::metrics;
use crate::observe::access_log::RequestLog;
use crate::route::{Route, Router, request_host};
use crate::upgrade::{self, ClientSide};
use crate::upstream::Pool;

/// Proxy one request and log it. Errors become the status the client sees here.
pub async fn handle(
    req: Request<ProxyBody>,
    client: ClientSide<'_>,
    conn: Arc<ConnCtx>,
) -> Response<ProxyBody> {
    let mut log = RequestLog::new(&req, &conn);
    let http1 = req.version() < http::Version::HTTP_2;
    let mut response = if let Some(port) = conn.listener.redirect_https {
        respond::redirect_https(&req, port)
    } else {
        match proxy(req, client, &conn, &mut log).await {
            Ok(response) => response,
            Err(err) => respond::for_error(err, &mut log),
        }
    };
    respond::finish(&mut response, &conn);
    if conn.counted.over && http1 {
        // Beyond max_connections: one answer, then the socket is given back.
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    log.emit(response.status());
    response
}

/// The phases from `normalise` to `forward`.
async fn proxy(
    mut req: Request<ProxyBody>,
    client: ClientSide<'_>,
    conn: &Arc<ConnCtx>,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    // Phase: normalise. From here on, a WebSocket over HTTP/2 looks like an HTTP/1.1
    // upgrade; its key is kept to check the upstream's accept value.
    let h2_websocket_key = if upgrade::h2::is_extended_connect(&req) {
        Some(upgrade::h2::into_upgrade_request(&mut req)?)
    } else {
        None
    };
    // What the request asks to upgrade to: known already when airlock read the head itself.
    let mut upgrade = match &client {
        ClientSide::Direct { upgrade, .. } => Some(upgrade.clone()),
        ClientSide::Hyper(_) => headers::upgrade_request(req.headers()),
    };
    log.upgrade = upgrade.is_some();
    if conn.counted.over {
        return Err(ProxyError::OverCapacity {
            max: conn.snapshot.max_connections.unwrap_or_default(),
        });
    }
    let route = find_route(&req, &conn.listener.router)?;
    log.route = Some(route.name.clone());
    log.metrics = Some(route.metrics.clone());
    let mut admission = check_limits(&req, &route.limits, &route, conn, None).await?;
    upstream_request::ensure_host_header(&mut req);

    let decision = plugins::run(&mut req, upgrade.as_ref(), &route, conn, log)?;
    if decision.headers_replaced {
        upgrade = headers::upgrade_request(req.headers());
    }
    let limit_key = decision.limit_key.as_deref();
    let after = &route.limits_after_plugins;
    admission.join(check_limits(&req, after, &route, conn, limit_key).await?);
    let target = pick_upstream(&route, &decision);
    log.upstream = Some(target.pool.name.clone());

    log.upgrade = upgrade.is_some();
    let client_ip =
        upstream_request::prepare(&mut req, &route, conn, upgrade, decision.path_rewritten);

    // Phase: affinity. After prepare, so a stripped sticky cookie stays stripped. The
    // pool's servers are taken once here and kept for the request (and its tunnel).
    let members = target.pool.members();
    let hint = members
        .hints
        .read(&mut req, client_ip, decision.affinity_key.as_deref());
    let mut response = if log.upgrade {
        let upgrade = upgrade::Upgrade {
            route,
            pool: &members,
            hint: &hint,
            h2_websocket_key,
            admission,
        };
        upgrade::forward(req, upgrade, client, conn, log).await?
    } else {
        let response = crate::forward::forward(req, &route, &members, &hint, log).await?;
        if admission.is_empty() {
            response
        } else {
            response.map(|body| body.hold(admission))
        }
    };
    for (name, value) in decision.response_headers {
        response.headers_mut().append(name, value);
    }
    // Phase: stick. On the 101 of an upgrade too: a browser keeps it for its next request.
    if let Some(server) = &log.server
        && let Some(cookie) = members.set_cookie(&hint, server, conn.tls.is_some())
    {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// Phase: route. Runs first, on the request as the client sent it (host without port,
/// path before any rewrite). `404` when nothing matches.
fn find_route(req: &Request<ProxyBody>, router: &Router) -> Result<Arc<Route>, ProxyError> {
    let host = request_host(req.uri(), req.headers());
    let path = req.uri().path();
    router
        .find(&host, path)
        .cloned()
        .ok_or_else(|| ProxyError::NoRoute {
            host,
            path: path.to_string(),
        })
}

/// Phase: limits. Before the plugins, so that a flood is refused before it costs plugin
/// time; those keyed "plugin" after them, with `plugin_key`. The slots taken are held
/// until the response body or the tunnel ends.
async fn check_limits(
    req: &Request<ProxyBody>,
    limits: &[Arc<limit::Limit>],
    route: &Route,
    conn: &ConnCtx,
    plugin_key: Option<&str>,
) -> Result<Admission, ProxyError> {
    if limits.is_empty() {
        return Ok(Admission::default());
    }
    let parts = KeyParts {
        client_ip: forwarded::client_ip(req.headers(), conn.peer.ip(), &conn.listener.trusted),
        headers: req.headers(),
        route: &route.name,
        plugin: plugin_key,
    };
    let admitted = limit::admit(limits, &parts).await;
    admitted.map_err(|refusal| {
        metrics::global().limit_refused(&refusal.limit, refusal.kind.name());
        ProxyError::Limited {
            limit: refusal.limit,
            reason: refusal.kind.reason(),
            retry_after: refusal.kind.retry_after(),
        }
    })
}

/// Where a request goes: a pool. The server within it is the balancer's choice, made
/// when connecting (`crate::upstream::Members::attempts`), so that failover can pick again.
struct Target {
    pool: Arc<Pool>,
}

/// Phase: pick the upstream. Runs after the plugins: a plugin's choice of pool wins over
/// the route's.
fn pick_upstream(route: &Route, decision: &plugins::Decision) -> Target {
    Target {
        pool: decision.pool.clone().unwrap_or_else(|| route.pool.clone()),
    }
}
