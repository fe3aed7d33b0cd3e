//! The WebSocket handshake's key and accept value (RFC 6455 §4.1, §4.2.2), for the
//! requests airlock itself makes: the upgrade an HTTP/2 WebSocket becomes, and the
//! WebSocket health probe.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::HeaderValue;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64. It only has to defeat caches
/// (RFC 6455 §10.3), not be secret.
pub fn new_key() -> HeaderValue {
    let bytes: [u8; 16] = rand::random();
    HeaderValue::from_str(&STANDARD.encode(bytes)).expect("base64 is a valid header value")
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
pub fn accept_for(key: &HeaderValue) -> HeaderValue {
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
