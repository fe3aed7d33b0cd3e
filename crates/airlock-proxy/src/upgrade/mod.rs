//! Upgrades (RFC 9110 §7.8): send the upgrade request to a server on a fresh connection;
//! relay a `101` back to the client and hand both sockets to the tunnel, or relay any
//! other answer as it is.
//!
//! The pieces: `client` (who serves the client's side and starts the tunnel), `h2`
//! (a WebSocket over HTTP/2, RFC 8441, as an HTTP/1.1 upgrade and back), `upstream` (the
//! upstream's side: the request head out, the `101` in, without a general HTTP client),
//! `switched` (the accepted upgrade, run as a tunnel). Not here: the byte relay
//! (`crate::tunnel`), which knows nothing about HTTP.

mod client;
pub mod h2;
mod switched;
mod upstream;

pub use client::{ClientSide, Switch};
pub use switched::Tunnel;

use std::sync::Arc;

use http::header::{HeaderValue, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tracing::Instrument;

use crate::conn::ConnCtx;
use crate::error::ProxyError;
use crate::http::body::ProxyBody;
use crate::http::headers;
use crate::limit::Admission;
use crate::observe::access_log::RequestLog;
use crate::route::Route;
use crate::tunnel::Framing;
use crate::upstream::Members;
use crate::upstream::balance::Hint;
use switched::{UpstreamEnd, abandoned, endpoint};
use upstream::{Answer, HeadForm, SwitchHead};

/// Where an upgrade goes.
pub struct Upgrade<'a> {
    pub route: Arc<Route>,
    pub pool: &'a Members,
    /// What the pool's balancer reads (hash, sticky cookie).
    pub hint: &'a Hint,
    /// Set when the client asked over HTTP/2 (RFC 8441): the key sent upstream, whose
    /// accept value the `101` must carry; the client then gets `200`, not `101`.
    pub h2_websocket_key: Option<HeaderValue>,
    /// The limits' slots: held by the tunnel, or by the body of any other answer.
    pub admission: Admission,
}

pub async fn forward(
    mut req: Request<ProxyBody>,
    upgrade: Upgrade<'_>,
    client: ClientSide<'_>,
    conn: &Arc<ConnCtx>,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Upgrade {
        route,
        pool,
        hint,
        h2_websocket_key,
        admission,
    } = upgrade;
    let websocket = h2_websocket_key.is_some()
        || req
            .headers()
            .get(UPGRADE)
            .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if let Some(trace) = &mut log.trace {
        trace.begin_upstream(req.headers_mut());
    }
    let started = Instant::now();
    let trace = &mut log.trace;
    let connected = pool
        .connect(route.connect_timeout, hint, |server, error| {
            if let Some(trace) = trace {
                trace.connect_failed(&server.addr, error);
            }
        })
        .await;
    let (server, guard, stream) = connected?;
    log.connect_time = Some(started.elapsed());
    log.server = Some(server.addr.clone());

    let upstream_error = |source| ProxyError::UpstreamRequest {
        server: server.addr.to_string(),
        source,
    };
    let started = Instant::now();
    // A request without a body (every WebSocket handshake) takes the direct path; hyper
    // sends the rare upgrade request that has one, and reads every answer but a 101.
    let sent = if hyper::body::Body::is_end_stream(req.body()) {
        // A client airlock answers itself gets the upstream's header lines as they are,
        // filtered; `handle` then sets Strict-Transport-Security, so the upstream's goes.
        let form = match client {
            ClientSide::Direct { .. } => HeadForm::Lines {
                drop_hsts: conn.listener.hsts.is_some(),
            },
            ClientSide::Hyper(_) => HeadForm::Map,
        };
        match upstream::exchange(stream, &req, form).await {
            Ok(Answer::Switched(head, endpoint)) => Ok((head, UpstreamEnd::Ready(endpoint))),
            Ok(Answer::Other(replay)) => Err(hyper_exchange(replay, req).await),
            Err(source) => {
                let err = ProxyError::UpstreamIo {
                    server: server.addr.to_string(),
                    source,
                };
                server.record_failure(&pool.name, &err);
                return Err(err);
            }
        }
    } else {
        Err(hyper_exchange(stream, req).await)
    };
    let (head, upstream_end) = match sent {
        Ok(switched) => switched,
        Err(answer) => {
            let mut response = match answer {
                Ok(response) => response,
                Err(source) => {
                    let err = upstream_error(source);
                    server.record_failure(&pool.name, &err);
                    return Err(err);
                }
            };
            if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                log.header_time = Some(started.elapsed());
                let (mut parts, body) = response.into_parts();
                headers::remove_hop_by_hop(&mut parts.headers, None);
                return Ok(Response::from_parts(
                    parts,
                    ProxyBody::upstream(body, (guard, admission)),
                ));
            }
            let upgrade = hyper::upgrade::on(&mut response);
            let parts = response.into_parts().0;
            (SwitchHead::Map(parts), UpstreamEnd::Pending(upgrade))
        }
    };
    log.header_time = Some(started.elapsed());

    // What the tunnel knows of its bytes; `permessage-deflate` lets frames set RSV1.
    let framing = match (&route.frame_rules, websocket) {
        (_, false) => Framing::Bytes,
        (None, true) => Framing::Track,
        (Some(rules), true) => {
            let deflate = match &head {
                SwitchHead::Map(parts) => parts
                    .headers
                    .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
                    .iter()
                    .any(|v| contains_ignore_case(v.as_bytes(), b"permessage-deflate")),
                SwitchHead::Lines(lines) => contains_ignore_case(lines, b"permessage-deflate"),
            };
            Framing::Enforce {
                rules: rules.clone(),
                rsv_allowed: if deflate { 0b100 } else { 0 },
            }
        }
    };
    let (parts, lines) = match head {
        SwitchHead::Map(mut parts) => {
            // An HTTP/1.1 client gets the upgrade pair back; over HTTP/2 there is none.
            let protocol = match h2_websocket_key {
                None => parts.headers.get(UPGRADE).cloned(),
                Some(_) => None,
            };
            headers::remove_hop_by_hop(&mut parts.headers, protocol);
            if let Some(key) = &h2_websocket_key {
                h2::into_stream_response(&mut parts, key, &server.addr)?;
            }
            (parts, Vec::new())
        }
        SwitchHead::Lines(lines) => {
            let (mut parts, ()) = Response::new(()).into_parts();
            parts.status = StatusCode::SWITCHING_PROTOCOLS;
            (parts, lines)
        }
    };

    let tunnel = Tunnel {
        upstream: upstream_end,
        route,
        server,
        guard: guard.into_tunnel(),
        admission,
        conn: conn.clone(),
        framing,
        trace: log.trace.as_ref().and_then(|t| t.for_tunnel()),
    };
    match client {
        ClientSide::Direct { switch, .. } => *switch = Some(Switch { tunnel, lines }),
        ClientSide::Hyper(client) => {
            let tunnel = async move {
                match client.await {
                    Ok(client) => tunnel.run(endpoint(client)).await,
                    Err(e) => abandoned(&tunnel.route, &e),
                }
            };
            conn.drain.spawn(tunnel.in_current_span());
        }
    }
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

/// Send `req` and read the answer with hyper's client over `io`. The connection runs in
/// its own task, which streams the answer's body or completes an upgrade.
async fn hyper_exchange(
    io: impl crate::stream::Io,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, hyper::Error> {
    let (mut sender, connection) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(connection.with_upgrades());
    sender.send_request(req).await
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}
