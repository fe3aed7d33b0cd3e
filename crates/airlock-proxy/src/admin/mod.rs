//! The admin endpoint: `GET /healthz` (the process runs), `GET /readyz` (listeners are
//! bound and the proxy is not draining) and `GET /upstreams` (every pool's servers with
//! their live connection counts and health, as JSON).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::drain::Drain;
use crate::snapshot::{self, Snapshot};

pub async fn serve(listener: TcpListener, drain: Drain, snapshot: snapshot::Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let drain = drain.clone();
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = answer(&req, &drain, &snapshot.load());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer<B>(req: &Request<B>, drain: &Drain, snapshot: &Snapshot) -> Response<Full<Bytes>> {
    if matches!(req.method(), &Method::GET | &Method::HEAD) && req.uri().path() == "/upstreams" {
        let pools = snapshot.pools_by_name();
        let body = serde_json::json!({ "upstreams": pools.iter().map(|p| p.status()).collect::<Vec<_>>() });
        let mut response = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return response;
    }
    let (status, text) = match (req.method(), req.uri().path()) {
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
            "not found; try /healthz, /readyz or /upstreams\n",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
