//! WebSockets over HTTP/2 (RFC 8441): an extended CONNECT with `:protocol = websocket`
//! becomes the HTTP/1.1 upgrade request the rest of the proxy (routes, plugins, upstreams)
//! already handles, and the upstream's `101` becomes the `200` the HTTP/2 client expects.

use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};

use crate::error::ProxyError;
use crate::http::websocket_key::{accept_for, new_key};

/// Whether `req` is an RFC 8441 extended CONNECT (any `:protocol`).
pub fn is_extended_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_some()
}

/// Turn an extended CONNECT into `GET` with `Upgrade: websocket` and a fresh
/// `Sec-WebSocket-Key` (the upstream hop is ours, so the key is too). Returns the key, to
/// check the upstream's `Sec-WebSocket-Accept` against.
pub fn into_upgrade_request<B>(req: &mut Request<B>) -> Result<HeaderValue, ProxyError> {
    let protocol = req
        .extensions_mut()
        .remove::<hyper::ext::Protocol>()
        .ok_or(ProxyError::BadExtendedConnect {
            detail: "no :protocol",
        })?;
    if !protocol.as_str().eq_ignore_ascii_case("websocket") {
        return Err(ProxyError::BadExtendedConnect {
            detail: "only :protocol = websocket is supported",
        });
    }
    let headers = req.headers_mut();
    match headers.get(header::SEC_WEBSOCKET_VERSION) {
        None => {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        Some(v) if v == "13" => {}
        Some(_) => {
            return Err(ProxyError::BadExtendedConnect {
                detail: "sec-websocket-version must be 13",
            });
        }
    }
    let key = new_key();
    headers.insert(header::SEC_WEBSOCKET_KEY, key.clone());
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    *req.method_mut() = Method::GET;
    Ok(key)
}

/// Check the upstream's `101` against the key we sent, and make it the `200` that opens
/// the stream (RFC 8441 §5): no `Upgrade`, `Connection` or `Sec-WebSocket-Accept`.
pub fn into_stream_response(
    parts: &mut http::response::Parts,
    key: &HeaderValue,
    server: &str,
) -> Result<(), ProxyError> {
    if parts.headers.get(header::SEC_WEBSOCKET_ACCEPT) != Some(&accept_for(key)) {
        return Err(ProxyError::BadUpstreamAccept {
            server: server.to_string(),
        });
    }
    parts.status = StatusCode::OK;
    parts.headers.remove(header::SEC_WEBSOCKET_ACCEPT);
    parts.headers.remove(header::UPGRADE);
    parts.headers.remove(header::CONNECTION);
    Ok(())
}
