//! The upstream half of an HTTP/1.1 upgrade without a general HTTP client: write the
//! request head, read the response head, and on `101 Switching Protocols` hand the socket
//! (and any bytes read past the head) straight to the tunnel.
//!
//! hyper's client costs a spawned connection task, a request channel and an upgrade
//! channel per handshake; this path measured about a fifth of airlock's user-space
//! instructions per WebSocket handshake. Anything that is not a well-formed `101` —
//! another status, a head too large for the fast path, a malformed head, a connection
//! closed early — is handed to hyper with the bytes already read replayed, so answers
//! with bodies, interim responses and errors are handled exactly as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::http::body::ProxyBody;
use crate::stream::{Prefixed, Stream};
use crate::tunnel::Endpoint;

/// Response heads larger than this (or with more headers than [`MAX_HEADERS`]) are left
/// to hyper, whose limits then apply.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// What the upstream answered.
pub enum Answer {
    /// `101`: the response head, and the upstream end of the tunnel.
    Switched(SwitchHead, Endpoint),
    /// Anything else. The request has been written; `stream` replays what was read.
    Other(Replay),
}

/// The form a `101`'s headers are wanted in.
#[derive(Clone, Copy)]
pub enum HeadForm {
    /// A header map, as hyper's server writes it (HTTP/2 clients, and upgrades that are
    /// not a connection's first request), untouched.
    Map,
    /// Header lines for an HTTP/1.1 client that airlock answers itself, hop-by-hop
    /// headers already removed (see [`crate::http::headers::switch_lines`]), and the upstream's
    /// `Strict-Transport-Security` too with `drop_hsts` (the listener sets its own).
    Lines { drop_hsts: bool },
}

/// The headers of a `101`, in the form asked for.
pub enum SwitchHead {
    Map(http::response::Parts),
    Lines(Vec<u8>),
}

/// Send the head of `req` (which must have no body) and read the answer's head.
pub async fn exchange(
    stream: Stream,
    req: &Request<ProxyBody>,
    form: HeadForm,
) -> io::Result<Answer> {
    let mut stream = stream;
    stream.write_all(&encode_head(req)).await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            break;
        }
        match parse_switch(&buf, form) {
            Parsed::Switched(head, head_len) => {
                let already_read = buf.split_off(head_len).freeze();
                return Ok(Answer::Switched(
                    head,
                    Endpoint {
                        stream,
                        already_read,
                    },
                ));
            }
            Parsed::Partial if buf.len() < MAX_HEAD => {}
            Parsed::Partial | Parsed::Other => break,
        }
    }
    Ok(Answer::Other(Replay {
        stream: Prefixed::new(buf.freeze(), stream),
        resent: false,
        answered: false,
        reader: None,
    }))
}

/// The request line and headers, as hyper would write them.
fn encode_head(req: &Request<ProxyBody>) -> Vec<u8> {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let method = req.method().as_str().as_bytes();
    let start_line: [&[u8]; 4] = [method, b" ", target.as_bytes(), b" HTTP/1.1"];
    crate::http::headers::encode_head(&start_line, b"", req.headers())
}

enum Parsed {
    /// A complete, valid `101` head of this many bytes.
    Switched(SwitchHead, usize),
    /// Not complete yet.
    Partial,
    /// Complete but not a `101`, or not something this path handles.
    Other,
}

fn parse_switch(buf: &[u8], form: HeadForm) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if response.code != Some(101) || response.version != Some(1) {
        return Parsed::Other;
    }
    if let HeadForm::Lines { drop_hsts } = form {
        let drop = drop_hsts.then_some(http::header::STRICT_TRANSPORT_SECURITY.as_str());
        return match crate::http::headers::switch_lines(response.headers, drop) {
            Some(lines) => Parsed::Switched(SwitchHead::Lines(lines), head_len),
            None => Parsed::Other,
        };
    }
    let (mut parts, ()) = Response::new(()).into_parts();
    parts.status = StatusCode::SWITCHING_PROTOCOLS;
    parts.version = Version::HTTP_11;
    for header in response.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(header.name.as_bytes()),
            HeaderValue::from_bytes(header.value),
        ) else {
            return Parsed::Other;
        };
        parts.headers.append(name, value);
    }
    Parsed::Switched(SwitchHead::Map(parts), head_len)
}

/// The upstream connection after the request head was written: reads give back the bytes
/// already read first. Until the first byte is read back, writes are accepted and
/// dropped: they are hyper "sending" the request again before it reads the answer. Nothing
/// is read before that write (hyper takes an answer before its request for a protocol
/// error). Writes after that (a tunnel, if hyper completes an upgrade) go through.
pub struct Replay {
    stream: Prefixed<Stream>,
    resent: bool,
    answered: bool,
    reader: Option<Waker>,
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.resent {
            this.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        this.answered = true;
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.answered {
            return Pin::new(&mut this.stream).poll_write(cx, buf);
        }
        this.resent = true;
        if let Some(reader) = this.reader.take() {
            reader.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_101_head_is_parsed_and_what_follows_is_left() {
        let wire = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi";
        let Parsed::Switched(SwitchHead::Map(parts), n) = parse_switch(wire, HeadForm::Map) else {
            panic!("not parsed as a 101");
        };
        assert_eq!(parts.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            parts.headers["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(parts.headers.len(), 3);
        assert_eq!(&wire[n..], b"\x81\x02hi");
    }

    #[test]
    fn a_101_for_an_http1_client_becomes_its_header_lines() {
        let wire = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nStrict-Transport-Security: max-age=1\r\n\r\n\x81";
        let form = HeadForm::Lines { drop_hsts: true };
        let Parsed::Switched(SwitchHead::Lines(lines), n) = parse_switch(wire, form) else {
            panic!("not parsed as a 101");
        };
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
        );
        assert_eq!(&wire[n..], b"\x81");
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        assert!(matches!(
            parse_switch(b"HTTP/1.1 101 Switching", HeadForm::Map),
            Parsed::Partial
        ));
        for other in [
            &b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.0 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 101 OK\r\nbad header\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        ] {
            for form in [HeadForm::Map, HeadForm::Lines { drop_hsts: false }] {
                assert!(
                    matches!(parse_switch(other, form), Parsed::Other),
                    "{other:?}"
                );
            }
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: y\r\n"))
            .collect();
        let head = format!("HTTP/1.1 101 Switching Protocols\r\n{many}\r\n");
        assert!(matches!(
            parse_switch(head.as_bytes(), HeadForm::Map),
            Parsed::Other
        ));
    }
}
