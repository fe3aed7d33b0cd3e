//! One request, start to finish. `handle` reads top to bottom as the phases run:
//! route → (plugins) → prepare the upstream request → forward (upgrade or plain) → log.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::access_log::RequestLog;
use crate::body::ProxyBody;
use crate::drain::Drain;
use crate::error::{ProxyError, chain};
use crate::forwarded::{self, Hop, TrustedProxies};
use crate::route::{Route, Router, request_host};
use crate::{headers, http_forward, upgrade};

/// What every connection accepted on one listener shares.
#[derive(Debug)]
pub struct ListenerCtx {
    pub name: Arc<str>,
    pub router: Router,
    pub trusted: TrustedProxies,
    pub max_header_bytes: usize,
    pub handshake_timeout: std::time::Duration,
}

/// One accepted client connection.
#[derive(Debug)]
pub struct ConnCtx {
    pub listener: Arc<ListenerCtx>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub drain: Drain,
}

/// Proxy one request and log it. Errors become the status the client sees here.
pub async fn handle(req: Request<Incoming>, conn: Arc<ConnCtx>) -> Response<ProxyBody> {
    let mut log = RequestLog::new(&req, conn.peer);
    let response = match proxy(req, &conn, &mut log).await {
        Ok(response) => response,
        Err(err) => {
            log.error = Some((err.source_kind().as_str(), chain(&err)));
            error_response(err.status())
        }
    };
    log.emit(response.status());
    response
}

async fn proxy(
    mut req: Request<Incoming>,
    conn: &Arc<ConnCtx>,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let route = find_route(&req, &conn.listener.router)?;
    log.route = Some(route.name.clone());
    log.upstream = Some(route.pool.name.clone());

    // The plugin chain runs here once plugins land; it may reject, rewrite or re-route.

    let upgrade = headers::upgrade_request(req.headers());
    log.upgrade = upgrade.is_some();
    prepare_upstream_request(&mut req, &route, conn, upgrade);

    if log.upgrade {
        upgrade::forward(req, route, conn, log).await
    } else {
        http_forward::forward(req, &route, log).await
    }
}

/// Phase: route. `404` when nothing matches.
fn find_route(req: &Request<Incoming>, router: &Router) -> Result<Arc<Route>, ProxyError> {
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
    req: &mut Request<Incoming>,
    route: &Route,
    conn: &ConnCtx,
    upgrade: Option<HeaderValue>,
) {
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }

    let path = route.rewrite_path(req.uri().path());
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    if let Ok(pq) = PathAndQuery::try_from(path_and_query) {
        *req.uri_mut() = pq.into();
    }

    let headers = req.headers_mut();
    headers::remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers::set_upgrade(headers, protocol);
    }
    let host = headers.get(header::HOST).cloned();
    let hop = Hop {
        peer: conn.peer.ip(),
        proto: "http",
        host: host.as_ref(),
        port: conn.local.port(),
    };
    forwarded::apply(headers, &hop, &conn.listener.trusted);
    *req.version_mut() = Version::HTTP_11;
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
