//! HTTP/1.1 upgrade forwarding (RFC 9110 §7.8): send the upgrade request to a server on a
//! fresh connection; relay a `101` back to the client and hand both sockets to the tunnel,
//! or relay any other answer as it is.

use std::sync::Arc;

use http::header::UPGRADE;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

use crate::access_log::{self, RequestLog};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::handler::ConnCtx;
use crate::headers;
use crate::route::Route;
use crate::tunnel::{self, Endpoint, Limits};
use crate::upstream::{ActiveGuard, Pool, Server};

pub async fn forward(
    mut req: Request<Incoming>,
    route: Arc<Route>,
    pool: &Pool,
    affinity_key: Option<&str>,
    conn: &Arc<ConnCtx>,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut req);

    let started = Instant::now();
    let (server, stream) = pool.connect(route.connect_timeout, affinity_key).await?;
    log.connect_time = Some(started.elapsed());
    log.server = Some(server.addr.clone());
    let guard = server.track();

    let upstream_error = |source| ProxyError::UpstreamRequest {
        server: server.addr.to_string(),
        source,
    };
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(upstream_error)?;
    tokio::spawn(connection.with_upgrades());

    let started = Instant::now();
    let mut response = match sender.send_request(req).await {
        Ok(response) => response,
        Err(source) => {
            let err = upstream_error(source);
            server.record_failure(&pool.name, &err);
            return Err(err);
        }
    };
    log.header_time = Some(started.elapsed());

    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, Some(guard)),
        ));
    }

    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let protocol = response.headers().get(UPGRADE).cloned();
    let (mut parts, _empty) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = protocol {
        headers::set_upgrade(&mut parts.headers, protocol);
    }

    let tunnel = run_tunnel(
        client_upgrade,
        upstream_upgrade,
        route,
        server,
        guard,
        conn.clone(),
    );
    conn.drain.tasks.spawn(tunnel.in_current_span());
    Ok(Response::from_parts(parts, ProxyBody::empty()))
}

/// Wait for both sides to switch protocols, then relay bytes until the tunnel ends.
async fn run_tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    route: Arc<Route>,
    server: Server,
    guard: ActiveGuard,
    conn: Arc<ConnCtx>,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (client, upstream) => {
            let error = client
                .err()
                .or(upstream.err())
                .map(|e| e.to_string())
                .unwrap_or_default();
            tracing::info!(
                route = &*route.name,
                error,
                "upgrade abandoned before the tunnel started"
            );
            return;
        }
    };
    let (Some(client), Some(upstream)) = (endpoint(client), endpoint(upstream)) else {
        tracing::error!(
            route = &*route.name,
            "upgraded connection has an unexpected transport"
        );
        return;
    };
    let limits = Limits {
        idle_timeout: route.idle_timeout,
        max_lifetime: route.max_lifetime,
        half_close_timeout: route.half_close_timeout,
    };
    let outcome = tunnel::relay(client, upstream, limits, conn.drain.force.clone()).await;
    access_log::tunnel_closed(&route.name, &server.addr, conn.peer, &outcome);
    drop(guard);
}

fn endpoint(upgraded: Upgraded) -> Option<Endpoint> {
    let parts = upgraded.downcast::<TokioIo<TcpStream>>().ok()?;
    Some(Endpoint {
        stream: parts.io.into_inner(),
        already_read: parts.read_buf,
    })
}
