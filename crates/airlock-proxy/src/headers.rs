//! Hop-by-hop header rules (RFC 9110 §7.6.1) and upgrade detection (RFC 9110 §7.8).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const HOP_BY_HOP_COUNT: usize = 6;

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1), plus the
/// obsolete ones proxies still see in the wild. A `static`, not a `const`: each use of a
/// `const` array builds it anew, and dropping its custom names is not free.
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `Connection` lists `token` (case-insensitive, comma-separated, any number of
/// `Connection` lines).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The protocol an HTTP/1.1 request asks to upgrade to: `Upgrade` is present and
/// `Connection` names `upgrade`. Any protocol token counts, not only `websocket`.
pub fn upgrade_request(headers: &HeaderMap) -> Option<HeaderValue> {
    let value = headers.get(header::UPGRADE)?;
    connection_has(headers, "upgrade").then(|| value.clone())
}

/// Remove every hop-by-hop header, including those the `Connection` header names. With
/// `upgrade`, put back the pair an upgrade needs: `Connection: upgrade` and `Upgrade`
/// with that protocol (each replacing what was there, rather than being removed first).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    // One pass over the names finds which of the standard set are present (usually
    // `Connection` and `Upgrade` only): each removal hashes its name, each comparison
    // here is cheap.
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    // Only the names `Connection` adds to the standard set are collected: usually none
    // (`upgrade`, `keep-alive`, `close`), and then nothing is allocated.
    let mut named: Vec<HeaderName> = Vec::new();
    let tokens = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for token in tokens {
        let standard = token.eq_ignore_ascii_case("close")
            || HOP_BY_HOP
                .iter()
                .any(|h| token.eq_ignore_ascii_case(h.as_str()));
        if !standard && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
            named.push(name);
        }
    }
    for name in &named {
        headers.remove(name);
    }
    let replaced = |name: &HeaderName| {
        upgrade.is_some() && (name == header::CONNECTION || name == header::UPGRADE)
    };
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        if !replaced(name) {
            headers.remove(name);
        }
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// A message head as HTTP/1.1 puts it on the wire: the start line (the pieces of
/// `start_line` joined), then each header with its name in lower case, as hyper writes
/// them, then an empty line.
pub fn encode_head(start_line: &[&[u8]], headers: &HeaderMap) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + headers.len() * 48);
    for part in start_line {
        head.extend_from_slice(part);
    }
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn detects_upgrade_only_with_both_headers() {
        let h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_request(&h).unwrap(), "websocket");
        let h = map(&[
            ("connection", "keep-alive"),
            ("connection", "upgrade"),
            ("upgrade", "h2c"),
        ]);
        assert_eq!(upgrade_request(&h).unwrap(), "h2c");
        assert!(upgrade_request(&map(&[("upgrade", "websocket")])).is_none());
        assert!(upgrade_request(&map(&[("connection", "upgrade")])).is_none());
        assert!(upgrade_request(&map(&[("connection", "upgraded"), ("upgrade", "x")])).is_none());
    }

    #[test]
    fn removes_standard_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "close, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
            ("cookie", "a=b"),
        ]);
        let mut upgrade = h.clone();
        remove_hop_by_hop(&mut h, None);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["sec-websocket-key", "cookie"]);

        remove_hop_by_hop(&mut upgrade, Some(HeaderValue::from_static("websocket")));
        assert_eq!(upgrade.len(), 4);
        assert_eq!(upgrade["connection"], "upgrade");
        assert_eq!(upgrade["upgrade"], "websocket");
        assert_eq!(upgrade["sec-websocket-key"], "abc");
        assert_eq!(upgrade["cookie"], "a=b");
    }
}
