//! One request, start to finish. `handle` reads top to bottom as the phases run:
//! route → plugins → prepare the upstream request → forward (upgrade or plain) → log.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};

use crate::access_log::RequestLog;
use crate::body::ProxyBody;
use crate::drain::Drain;
use crate::error::{ProxyError, chain};
use crate::forwarded::{self, Hop, TrustedProxies};
use crate::route::{Route, Router, request_host};
use crate::tls::server::SessionFacts;
use crate::upgrade::ClientSide;
use crate::upstream::Pool;
use crate::{h2_websocket, headers, http_forward, plugin_phase, upgrade};

/// What every connection accepted on one listener shares.
#[derive(Debug)]
pub struct ListenerCtx {
    pub name: Arc<str>,
    pub router: Router,
    /// Every pool by name, for plugins that choose one.
    pub pools: Arc<std::collections::HashMap<String, Arc<Pool>>>,
    pub trusted: TrustedProxies,
    pub max_header_bytes: usize,
    pub handshake_timeout: std::time::Duration,
    /// TLS settings; `None` on a plain-text listener.
    pub tls: Option<Arc<crate::tls::server::ServerTls>>,
    /// `Strict-Transport-Security` added to every response.
    pub hsts: Option<HeaderValue>,
    /// `redirect_https`: every request is answered with 308 to this HTTPS port.
    pub redirect_https: Option<u16>,
    /// `h2c`: a plain-text connection that starts with the HTTP/2 preface gets HTTP/2.
    pub h2c: bool,
}

/// One accepted client connection.
#[derive(Debug)]
pub struct ConnCtx {
    pub listener: Arc<ListenerCtx>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub drain: Drain,
    /// The TLS session, on a TLS listener.
    pub tls: Option<SessionFacts>,
}

impl ConnCtx {
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

/// Proxy one request and log it. Errors become the status the client sees here.
pub async fn handle(
    req: Request<ProxyBody>,
    client: ClientSide<'_>,
    conn: Arc<ConnCtx>,
) -> Response<ProxyBody> {
    let mut log = RequestLog::new(&req, &conn);
    let mut response = if let Some(port) = conn.listener.redirect_https {
        redirect_https(&req, port)
    } else {
        match proxy(req, client, &conn, &mut log).await {
            Ok(response) => response,
            Err(err) => {
                log.error = Some((err.source_kind().as_str(), chain(&err)));
                log.plugin = err.plugin().map(Into::into);
                if let ProxyError::PluginFailed { .. } = &err {
                    tracing::warn!(request = %log.request_id, error = %chain(&err), "plugin failed; request denied (on_error = \"deny\")");
                }
                error_response_for(err)
            }
        }
    };
    if let Some(hsts) = &conn.listener.hsts {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    log.emit(response.status());
    response
}

async fn proxy(
    mut req: Request<ProxyBody>,
    client: ClientSide<'_>,
    conn: &Arc<ConnCtx>,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    // RFC 8441: from here on, a WebSocket over HTTP/2 looks like an HTTP/1.1 upgrade.
    let h2_websocket_key = if h2_websocket::is_extended_connect(&req) {
        Some(h2_websocket::into_upgrade_request(&mut req)?)
    } else {
        None
    };
    let route = find_route(&req, &conn.listener.router)?;
    log.route = Some(route.name.clone());
    ensure_host_header(&mut req);

    // What the request asks to upgrade to: known already when airlock read the head itself.
    let mut upgrade = match &client {
        ClientSide::Direct { upgrade, .. } => Some(upgrade.clone()),
        ClientSide::Hyper(_) => headers::upgrade_request(req.headers()),
    };
    let decision = plugin_phase::run(&mut req, upgrade.as_ref(), &route, conn, log)?;
    if decision.headers_replaced {
        upgrade = headers::upgrade_request(req.headers());
    }
    let pool = decision.pool.unwrap_or_else(|| route.pool.clone());
    log.upstream = Some(pool.name.clone());

    log.upgrade = upgrade.is_some();
    prepare_upstream_request(&mut req, &route, conn, upgrade, decision.path_rewritten);

    let affinity_key = decision.affinity_key.as_deref();
    let mut response = if log.upgrade {
        let upgrade = upgrade::Upgrade {
            route,
            pool: &pool,
            affinity_key,
            h2_websocket_key,
        };
        upgrade::forward(req, upgrade, client, conn, log).await?
    } else {
        http_forward::forward(req, &route, &pool, affinity_key, log).await?
    };
    for (name, value) in decision.response_headers {
        response.headers_mut().append(name, value);
    }
    Ok(response)
}

/// HTTP/1.1 requires `Host`; take it from an absolute-form URI when the client left it out.
fn ensure_host_header(req: &mut Request<ProxyBody>) {
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
}

/// Phase: route. `404` when nothing matches.
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

/// Phase: turn the client's request into the one the upstream gets: origin-form URI with
/// the route's rewrite, hop-by-hop headers removed (except the upgrade pair on an upgrade),
/// forwarding headers set, HTTP/1.1.
fn prepare_upstream_request(
    req: &mut Request<ProxyBody>,
    route: &Route,
    conn: &ConnCtx,
    upgrade: Option<HeaderValue>,
    path_rewritten: bool,
) {
    // A path set by a plugin is final; otherwise the route's strip_prefix applies.
    let path = if path_rewritten {
        req.uri().path().into()
    } else {
        route.rewrite_path(req.uri().path())
    };
    // Usually the URI is already what the upstream gets: origin-form, path unchanged.
    let uri = req.uri();
    if uri.scheme().is_some() || uri.authority().is_some() || path != uri.path() {
        let path_and_query = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        if let Ok(pq) = PathAndQuery::try_from(path_and_query) {
            *req.uri_mut() = pq.into();
        }
    }

    let headers = req.headers_mut();
    headers::remove_hop_by_hop(headers, upgrade);
    let host = headers.get(header::HOST).cloned();
    let hop = Hop {
        peer: conn.peer.ip(),
        proto: conn.scheme(),
        host: host.as_ref(),
        port: conn.local.port(),
    };
    forwarded::apply(headers, &hop, &conn.listener.trusted);
    *req.version_mut() = Version::HTTP_11;
}

/// `redirect_https`: 308 to the same host and URI on the HTTPS port (RFC 9110 §15.4.9
/// keeps the method and body, unlike 301).
fn redirect_https(req: &Request<ProxyBody>, port: u16) -> Response<ProxyBody> {
    let host = request_host(req.uri(), req.headers());
    if host.is_empty() {
        return error_response(StatusCode::BAD_REQUEST);
    }
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return error_response(StatusCode::BAD_REQUEST);
    };
    let mut response = error_response(StatusCode::PERMANENT_REDIRECT);
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// The response for an error: a plugin's rejection as the plugin wrote it, otherwise the
/// status with a short text.
fn error_response_for(err: ProxyError) -> Response<ProxyBody> {
    let ProxyError::PluginRejected { rejection, .. } = err else {
        return error_response(err.status());
    };
    let mut response = Response::new(ProxyBody::local(rejection.body));
    *response.status_mut() =
        StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::FORBIDDEN);
    let headers = response.headers_mut();
    for (name, value) in rejection.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

/// A small plain-text answer for errors; details go to the log, not the client.
pub fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(ProxyBody::local(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
