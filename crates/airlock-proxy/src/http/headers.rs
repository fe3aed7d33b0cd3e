//! Hop-by-hop header rules (RFC 9110 §7.6.1) and upgrade detection (RFC 9110 §7.8).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const HOP_BY_HOP_COUNT: usize = 6;

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1), plus the
/// obsolete ones proxies still see in the wild.
const HOP_BY_HOP_NAMES: [&str; HOP_BY_HOP_COUNT] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// The same names as `HeaderName`s, for the header map. A `static`, not a `const`: each
/// use of a `const` array builds it anew, and dropping its custom names is not free.
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = {
    const fn name(i: usize) -> HeaderName {
        HeaderName::from_static(HOP_BY_HOP_NAMES[i])
    }
    [name(0), name(1), name(2), name(3), name(4), name(5)]
};

/// The comma-separated tokens of `Connection` values (any number of lines), trimmed.
/// As bytes: a token is ASCII, and `str::trim` would decode every character.
fn connection_tokens<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> impl Iterator<Item = &'a [u8]> {
    values
        .into_iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Whether `Connection` lists `token` (case-insensitive, comma-separated, any number of
/// `Connection` lines).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    let values = headers.get_all(header::CONNECTION).into_iter();
    connection_tokens(values.map(HeaderValue::as_bytes))
        .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
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
    let values = headers.get_all(header::CONNECTION).into_iter();
    for token in connection_tokens(values.map(HeaderValue::as_bytes)) {
        if !is_standard_token(token)
            && let Ok(name) = HeaderName::from_bytes(token)
        {
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

/// Whether a `Connection` token is `close` or names a header of the standard hop-by-hop
/// set (which is removed anyway).
fn is_standard_token(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"close") || is_hop_by_hop(token)
}

/// By the `str` names: `HeaderName::as_str` is a lookup of its own, each time.
fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP_NAMES
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// The header lines of an upstream's `101` as an HTTP/1.1 client gets them, taken from
/// the parsed head without building a header map: each valid header but the hop-by-hop
/// ones (and those `Connection` names, and `also_drop`) with its name in lower case, then
/// `connection: upgrade` and the upstream's `Upgrade`. This is what [`remove_hop_by_hop`]
/// with the upstream's protocol, then [`encode_head`], make of the same headers, for about
/// half the work. `None` if a value is not a valid header value.
pub fn switch_lines(headers: &[httparse::Header<'_>], also_drop: Option<&str>) -> Option<Vec<u8>> {
    let named = || {
        let values = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value);
        connection_tokens(values).filter(|token| !is_standard_token(token))
    };
    let mut lines = Vec::with_capacity(
        headers
            .iter()
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum::<usize>()
            + 32,
    );
    let any_named = named().next().is_some();
    let mut protocol = None;
    for h in headers {
        if !h
            .value
            .iter()
            .all(|&b| b == b'\t' || (b' '..0x7f).contains(&b) || b >= 0x80)
        {
            return None;
        }
        if protocol.is_none() && h.name.eq_ignore_ascii_case("upgrade") {
            protocol = Some(h.value);
        }
        if is_hop_by_hop(h.name.as_bytes())
            || also_drop.is_some_and(|d| h.name.eq_ignore_ascii_case(d))
            || (any_named && named().any(|token| token.eq_ignore_ascii_case(h.name.as_bytes())))
        {
            continue;
        }
        lines.extend(h.name.bytes().map(|b| b.to_ascii_lowercase()));
        lines.extend_from_slice(b": ");
        lines.extend_from_slice(h.value);
        lines.extend_from_slice(b"\r\n");
    }
    if let Some(protocol) = protocol {
        lines.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
        lines.extend_from_slice(protocol);
        lines.extend_from_slice(b"\r\n");
    }
    Some(lines)
}

/// A message head as HTTP/1.1 puts it on the wire: the start line (the pieces of
/// `start_line` joined), then each header with its name in lower case, as hyper writes
/// them, after `lines` (header lines already encoded), then an empty line.
pub fn encode_head(start_line: &[&[u8]], lines: &[u8], headers: &HeaderMap) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + lines.len() + headers.len() * 48);
    for part in start_line {
        head.extend_from_slice(part);
    }
    head.extend_from_slice(b"\r\n");
    head.extend_from_slice(lines);
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
    fn the_hop_by_hop_names_are_the_standard_set() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name.as_str().as_bytes()), "{name}");
        }
        assert!(is_hop_by_hop(b"Keep-Alive"));
        assert!(!is_hop_by_hop(b"sec-websocket-accept"));
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
