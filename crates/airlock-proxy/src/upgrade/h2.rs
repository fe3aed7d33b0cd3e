//! WebSockets over HTTP/2 (RFC 8441): an extended CONNECT with `:protocol = websocket`
//! becomes the HTTP/1.1 upgrade request the rest of the proxy (routes, plugins, upstreams)
//! already handles, and the upstream's `101` becomes the `200` the HTTP/2 client expects.

use std::hash::{BuildHasher, Hasher};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use sha1::{Digest, Sha1};

use crate::error::ProxyError;

/// RFC 6455 §1.3.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

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

fn new_key() -> HeaderValue {
    // RandomState is seeded randomly per process and per instance; mixing in a counter
    // keeps keys distinct. The key only has to be unpredictable enough to defeat caches
    // (RFC 6455 §10.3), not secret.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let state = std::hash::RandomState::new();
    let mut bytes = [0u8; 16];
    for (i, half) in bytes.chunks_mut(8).enumerate() {
        let mut h = state.build_hasher();
        h.write_u64(n);
        h.write_usize(i);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    HeaderValue::from_str(&STANDARD.encode(bytes)).expect("base64 is a valid header value")
}

fn accept_for(key: &HeaderValue) -> HeaderValue {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID);
    HeaderValue::from_str(&STANDARD.encode(sha.finalize())).expect("base64 is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc_6455_example() {
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept_for(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn keys_are_16_bytes_and_differ() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert_eq!(STANDARD.decode(a.as_bytes()).unwrap().len(), 16);
    }
}
