//! The first request on an HTTP/1.1 connection, read without hyper's server when it is an
//! upgrade.
//!
//! Most WebSocket clients open a connection for one handshake. Serving it with hyper's
//! server (a connection dispatcher, a service future, an upgrade channel) measured about
//! a quarter of airlock's user-space instructions per handshake. So the first request
//! head is read here: when it is complete, well-formed and an upgrade request without a
//! body, it is proxied from here, the `101` is written directly and the connection goes
//! to the tunnel. Anything else (another kind of request, a malformed or oversized head)
//! is served by hyper with the bytes already read replayed, so its answers (400, 431,
//! keep-alive, bodies) are exactly hyper's. An upgrade that does not get a `101`
//! (a plugin's rejection, a dead upstream, an upstream's refusal) is also answered by
//! hyper, which then serves whatever else the client sends on the connection.

use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::conn::ConnCtx;
use crate::http::body::ProxyBody;
use crate::stream::{Prefixed, Stream};
use crate::tunnel::Endpoint;
use crate::upgrade::{ClientSide, Switch};

/// hyper's default limit on the number of request headers; a head with more goes to
/// hyper, which refuses it.
const MAX_HEADERS: usize = 100;
const READ_CHUNK: usize = 4096;
/// `X-Forwarded-For`, `-Proto`, `-Host`, `-Port` and `X-Real-IP`.
const FORWARDING_HEADERS: usize = 5;

/// What became of a connection's first request.
pub enum First<T> {
    /// It was an upgrade the upstream accepted; the `101` is written. The tunnel's future,
    /// for the caller to run.
    Tunnel(T),
    /// hyper serves the connection: `stream` replays what was read, and `answered` is
    /// the answer to the first request when it was already proxied from here.
    Hyper {
        stream: Stream,
        answered: Option<Response<ProxyBody>>,
    },
    /// No complete head within the handshake timeout; `read` is what came.
    TimedOut { stream: Stream, read: Bytes },
    /// The client went away, or shutdown began before it sent anything.
    Closed,
}

/// How long a connection that has not sent its first request yet is waited for once
/// shutdown begins.
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Read a connection's first request head; proxy it from here if it is an upgrade, and
/// say what the caller should do next.
pub async fn first_request(
    mut stream: Stream,
    conn: Arc<ConnCtx>,
) -> First<impl Future<Output = ()> + Send + use<>> {
    let listener = &conn.listener;
    let mut buf = BytesMut::new();
    let head = {
        let read = read_head(&mut stream, &mut buf, listener.max_header_bytes);
        let mut read = std::pin::pin!(tokio::time::timeout(listener.handshake_timeout, read));
        tokio::select! {
            head = &mut read => head,
            // A connection accepted just before shutdown (or a handoff) was opened to
            // send a request, which may be on its way: it gets a moment to come. One
            // that says nothing is closed, as hyper closes an idle connection.
            _ = conn.drain.stopping.cancelled() => {
                match tokio::time::timeout(FIRST_REQUEST_GRACE, &mut read).await {
                    Ok(head) => head,
                    Err(_) => return First::Closed,
                }
            }
        }
    };
    let found = match head {
        Ok(Ok(Head::Upgrade(found))) => found,
        Ok(Ok(Head::Other)) => {
            let stream = Stream::boxed(Prefixed::new(buf.freeze(), stream));
            return First::Hyper {
                stream,
                answered: None,
            };
        }
        Ok(Ok(Head::Closed)) => return First::Closed,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "client connection failed before a request head");
            return First::Closed;
        }
        Err(_) => {
            return First::TimedOut {
                stream,
                read: buf.freeze(),
            };
        }
    };
    let raw = buf.split_to(found.len).freeze();
    // What the client sent after the head: usually nothing, at most its first frames.
    let after_head = buf.freeze();
    let Some((request, upgrade)) = found.request(&raw) else {
        return First::Hyper {
            stream: replaying(raw, after_head, stream),
            answered: None,
        };
    };

    let mut switch = None;
    // Pinned where it is made: `select!` would move the request's future (kilobytes)
    // into its own state, and copy it again on the way.
    let response = {
        let handling = std::pin::pin!(crate::request::handle(
            request,
            ClientSide::Direct {
                switch: &mut switch,
                upgrade,
            },
            conn.clone(),
        ));
        tokio::select! {
            response = handling => response,
            _ = conn.drain.force.cancelled() => return First::Closed,
        }
    };
    let (Some(Switch { tunnel, lines }), StatusCode::SWITCHING_PROTOCOLS) =
        (switch, response.status())
    else {
        // hyper reads the head again and sends this answer in its place.
        return First::Hyper {
            stream: replaying(raw, after_head, stream),
            answered: Some(response),
        };
    };
    let write = async {
        stream
            .write_all(&encode_response_head(&lines, &response))
            .await?;
        stream.flush().await
    };
    if let Err(e) = write.await {
        tracing::info!(error = %e, "upgrade abandoned: the 101 could not be written to the client");
        return First::Closed;
    }
    let client = Endpoint {
        stream,
        already_read: after_head,
    };
    First::Tunnel(tunnel.run(client))
}

/// `stream`, giving back `head` and `after_head` to the first reads.
fn replaying(head: Bytes, after_head: Bytes, stream: Stream) -> Stream {
    let first = if after_head.is_empty() {
        head
    } else {
        [head, after_head].concat().into()
    };
    Stream::boxed(Prefixed::new(first, stream))
}

enum Head {
    /// What looks like an upgrade request without a body; the buffer starts with it.
    Upgrade(Found),
    /// Anything else.
    Other,
    /// The client closed the connection before sending a complete head.
    Closed,
}

/// Read until `buf` holds a complete request head, or can be told not to be one this
/// path serves.
async fn read_head(stream: &mut Stream, buf: &mut BytesMut, limit: usize) -> std::io::Result<Head> {
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(READ_CHUNK);
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(Head::Closed);
        }
        match locate(buf) {
            Located::Partial if buf.len() < limit => {}
            Located::Partial | Located::Other => return Ok(Head::Other),
            Located::Upgrade(found) if found.len > limit => return Ok(Head::Other),
            Located::Upgrade(found) => return Ok(Head::Upgrade(found)),
        }
    }
}

enum Located {
    Upgrade(Found),
    Partial,
    Other,
}

/// Where the parts of an upgrade request's head are, as offsets into the buffer: the
/// request is then built from slices of it without copying a value.
struct Found {
    len: usize,
    method: Method,
    target: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

fn locate(buf: &[u8]) -> Located {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Located::Partial,
        Err(_) => return Located::Other,
    };
    if request.version != Some(1) {
        return Located::Other;
    }
    // Only an upgrade without a body: a body needs hyper's decoding.
    let mut upgrade = false;
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("transfer-encoding")
        {
            return Located::Other;
        }
        upgrade |= h.name.eq_ignore_ascii_case("upgrade");
    }
    let (Some(method), Some(target), true) = (request.method, request.path, upgrade) else {
        return Located::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Located::Other;
    };
    let start = buf.as_ptr() as usize;
    let range = |part: &[u8]| {
        let from = part.as_ptr() as usize - start;
        from..from + part.len()
    };
    Located::Upgrade(Found {
        len,
        method,
        target: range(target.as_bytes()),
        headers: request
            .headers
            .iter()
            .map(|h| (range(h.name.as_bytes()), range(h.value)))
            .collect(),
    })
}

impl Found {
    /// The request and the protocol it asks for, if every part is valid and it really
    /// asks for an upgrade (`Connection` must name `upgrade`).
    fn request(self, raw: &Bytes) -> Option<(Request<ProxyBody>, HeaderValue)> {
        // Room for the forwarding headers added before the request goes upstream, so the
        // map is not grown (and every entry rehashed) on the way.
        let mut headers = HeaderMap::with_capacity(self.headers.len() + FORWARDING_HEADERS);
        for (name, value) in self.headers {
            let name = HeaderName::from_bytes(&raw[name]).ok()?;
            let value = HeaderValue::from_maybe_shared(raw.slice(value)).ok()?;
            headers.append(name, value);
        }
        let upgrade = crate::http::headers::upgrade_request(&headers)?;
        let uri = Uri::from_maybe_shared(raw.slice(self.target)).ok()?;
        let mut request = Request::new(ProxyBody::empty());
        *request.method_mut() = self.method;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some((request, upgrade))
    }
}

/// The status line and headers of a `101` (the upstream's lines, then the response's
/// own headers), as hyper writes them.
fn encode_response_head(lines: &[u8], response: &Response<ProxyBody>) -> Vec<u8> {
    let status_line: [&[u8]; 1] = [b"HTTP/1.1 101 Switching Protocols"];
    crate::http::headers::encode_head(&status_line, lines, response.headers())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    fn request(wire: &[u8]) -> Option<(Request<ProxyBody>, usize)> {
        let Located::Upgrade(found) = locate(wire) else {
            return None;
        };
        let len = found.len;
        let raw = Bytes::copy_from_slice(&wire[..len]);
        found.request(&raw).map(|(r, _)| (r, len))
    }

    #[test]
    fn a_websocket_handshake_is_read_with_what_follows_left() {
        let wire = b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Custom: a\r\nX-Custom: b\r\n\r\n\x81\x82";
        let (req, len) = request(wire).expect("an upgrade");
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), "/chat");
        assert_eq!(req.uri().query(), Some("room=1"));
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers().get_all("x-custom").iter().count(), 2);
        assert_eq!(req.headers().len(), 6);
        assert_eq!(&wire[len..], b"\x81\x82");
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        assert!(matches!(
            locate(b"GET /chat HTTP/1.1\r\nHost: a\r\n"),
            Located::Partial
        ));
        for other in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nUpgrade: x\r\nConnection: upgrade\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nUpgrade: x\r\nConnection: upgrade\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert!(matches!(locate(other), Located::Other), "{other:?}");
        }
        // `Upgrade` without `Connection: upgrade` is not an upgrade request.
        assert!(request(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").is_none());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: y\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\nUpgrade: a\r\nConnection: upgrade\r\n{many}\r\n");
        assert!(matches!(locate(head.as_bytes()), Located::Other));
    }

    #[test]
    fn the_101_head_carries_the_response_headers() {
        let mut response = Response::new(ProxyBody::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        assert_eq!(
            encode_response_head(b"x-up: 1\r\n", &response),
            b"HTTP/1.1 101 Switching Protocols\r\nx-up: 1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
        );
    }
}
