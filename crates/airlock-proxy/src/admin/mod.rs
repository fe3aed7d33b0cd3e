//! The admin endpoint: `GET /healthz` (the process runs), `GET /readyz` (listeners are
//! bound and the proxy is not draining), `GET /upstreams` (every pool's servers with
//! their live counts and health, as JSON), `GET /metrics` (Prometheus, OpenMetrics
//! text), `GET /limits` (open connections against
//! `max_connections`, and each limit's tracked keys, as JSON), and `POST /upstreams/NAME/servers/ADDR/drain`
//! (or `/undrain`) to take a server out of rotation for new connections and back (a drain
//! also closes its tunnels over `drain_spread`, unless `?tunnels=keep`), and
//! `POST /reload` to read the configuration file again (`GET /config` says which
//! generation runs and what it holds).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use std::sync::Arc;

use crate::drain::Drain;
use crate::limit::Connections;
use crate::reload::{ReloadError, Reloader};
use crate::snapshot::{self, Snapshot};

/// Serve the admin endpoint until `stop` (a handoff to a successor; on shutdown it goes on
/// answering, `/readyz` with 503, until the process exits).
pub async fn serve(
    listener: Arc<TcpListener>,
    stop: tokio_util::sync::CancellationToken,
    drain: Drain,
    snapshot: snapshot::Shared,
    connections: Arc<Connections>,
    reloader: Arc<Reloader>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let drain = drain.clone();
        let snapshot = snapshot.clone();
        let connections = connections.clone();
        let reloader = reloader.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let wants_reload = (req.uri().path() == "/reload").then(|| reloader.clone());
                let response = match wants_reload {
                    None if req.uri().path() == "/config" && req.method() == Method::GET => {
                        Ok(config(&snapshot, &reloader))
                    }
                    None => Ok(answer(&req, &drain, &snapshot.load(), &connections)),
                    Some(_) if req.method() != Method::POST => Ok(use_post()),
                    Some(reloader) => Err(reloader),
                };
                async move {
                    Ok::<_, Infallible>(match response {
                        Ok(response) => response,
                        Err(reloader) => reload(&reloader).await,
                    })
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer<B>(
    req: &Request<B>,
    drain: &Drain,
    snapshot: &Snapshot,
    connections: &Connections,
) -> Response<Full<Bytes>> {
    let get = matches!(req.method(), &Method::GET | &Method::HEAD);
    if get && req.uri().path() == "/upstreams" {
        let pools = snapshot.pools_by_name();
        let body = serde_json::json!({ "upstreams": pools.iter().map(|p| p.status()).collect::<Vec<_>>() });
        return json(StatusCode::OK, &body);
    }
    if get && req.uri().path() == "/metrics" {
        return metrics(snapshot, connections);
    }
    if get && req.uri().path() == "/limits" {
        let body = serde_json::json!({
            "connections": { "open": connections.count(), "max": snapshot.max_connections },
            "limits": snapshot.limits_by_name().iter().map(|l| l.status()).collect::<Vec<_>>(),
        });
        return json(StatusCode::OK, &body);
    }
    if let Some(rest) = req.uri().path().strip_prefix("/upstreams/") {
        return server_action(req.method(), rest, req.uri().query(), snapshot);
    }
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") if drain.is_ready() => {
            (StatusCode::OK, "ready\n")
        }
        (&Method::GET | &Method::HEAD, "/readyz") if drain.stopping.is_cancelled() => {
            (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
        }
        _ => (
            StatusCode::NOT_FOUND,
            "not found; try /healthz, /readyz, /metrics, /config, /upstreams, /limits or POST /reload\n",
        ),
    };
    text(status, body)
}

/// `POST /reload`: read the configuration file again. 200 with the new generation, or
/// 422 with the errors (as `airlock check` prints them) and the running configuration
/// unchanged; 409 when the proxy has no file to read.
async fn reload(reloader: &Reloader) -> Response<Full<Bytes>> {
    match reloader.reload().await {
        Ok(done) => json(
            StatusCode::OK,
            &serde_json::json!({
                "generation": done.generation,
                "kept": {
                    "pools": done.kept.pools,
                    "limits": done.kept.limits,
                    "plugins": done.kept.plugins,
                },
            }),
        ),
        Err(ReloadError::NoFile) => {
            text(StatusCode::CONFLICT, &format!("{}\n", ReloadError::NoFile))
        }
        Err(error) => text(StatusCode::UNPROCESSABLE_ENTITY, &format!("{error}\n")),
    }
}

/// `GET /config`: the running configuration's generation and what it holds.
fn config(snapshot: &snapshot::Shared, reloader: &Reloader) -> Response<Full<Bytes>> {
    let mut body = snapshot.load().summary();
    body["generation"] = reloader.generation().into();
    body["path"] = reloader.path().map(|p| p.display().to_string()).into();
    json(StatusCode::OK, &body)
}

fn use_post() -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
    response
        .headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
    response
}

/// `GET /metrics`: every metric, with the scrape-time figures read from the snapshot.
fn metrics(snapshot: &Snapshot, connections: &Connections) -> Response<Full<Bytes>> {
    let text = crate::metrics::encode(|m| {
        m.clear_state();
        for pool in snapshot.pools_by_name() {
            for server in pool.members().servers() {
                m.set_server(&pool.name, &server.addr, server.metric_state());
            }
        }
        for limit in snapshot.limits_by_name() {
            m.set_limit_keys(&limit.name, limit.tracked_keys());
        }
        m.set_connections_open(connections.count());
        m.set_trace_stats(airlock_telemetry::trace::stats());
    });
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

/// `POST /upstreams/NAME/servers/ADDR/drain` or `.../undrain`: the server's new status.
/// A drain also closes the server's tunnels over `drain_spread`, unless `?tunnels=keep`.
fn server_action(
    method: &Method,
    rest: &str,
    query: Option<&str>,
    snapshot: &Snapshot,
) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [pool, "servers", addr, action @ ("drain" | "undrain")] = parts[..] else {
        return text(
            StatusCode::NOT_FOUND,
            "not found; try POST /upstreams/NAME/servers/ADDR/drain or /undrain\n",
        );
    };
    if method != Method::POST {
        return use_post();
    }
    let Some(pool) = snapshot
        .pools_by_name()
        .into_iter()
        .find(|p| &*p.name == pool)
    else {
        return text(StatusCode::NOT_FOUND, &format!("no upstream `{pool}`\n"));
    };
    let members = pool.members();
    let Some(server) = members.server(addr) else {
        return text(
            StatusCode::NOT_FOUND,
            &format!("upstream `{}` has no server {addr}\n", pool.name),
        );
    };
    let drained = action == "drain";
    server.set_drained(drained);
    // Its tunnels close too, gradually, unless the operator keeps them.
    let close_tunnels = drained && query != Some("tunnels=keep");
    if close_tunnels {
        server.drain_tunnels(snapshot.drain.spread, snapshot.drain.close_code);
    }
    tracing::info!(
        upstream = &*pool.name,
        server = addr,
        drained,
        close_tunnels,
        "upstream server {} by the admin API",
        if drained {
            "drained"
        } else {
            "returned to rotation"
        }
    );
    json(StatusCode::OK, &server.status())
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}
