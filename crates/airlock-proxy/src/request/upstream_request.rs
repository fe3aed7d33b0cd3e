//! Phase: turn the client's request into the one the upstream gets.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Version};

use crate::conn::ConnCtx;
use crate::http::body::ProxyBody;
use crate::http::forwarded::{self, Hop};
use crate::http::headers;
use crate::route::Route;

/// HTTP/1.1 requires `Host`; take it from an absolute-form URI when the client left it out.
pub fn ensure_host_header(req: &mut Request<ProxyBody>) {
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(header::HOST, host);
    }
}

/// Origin-form URI with the route's rewrite (unless a plugin set the path), hop-by-hop
/// headers removed (except the upgrade pair on an upgrade), forwarding headers set,
/// HTTP/1.1. Returns the client's address (the trusted-forwarding one).
pub fn prepare(
    req: &mut Request<ProxyBody>,
    route: &Route,
    conn: &ConnCtx,
    upgrade: Option<HeaderValue>,
    path_rewritten: bool,
) -> IpAddr {
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
    let client_ip = forwarded::apply(headers, &hop, &conn.listener.trusted);
    *req.version_mut() = Version::HTTP_11;
    client_ip
}
