//! The admin endpoint: `GET /healthz` (the process runs) and `GET /readyz` (listeners are
//! bound and the proxy is not draining).

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::drain::Drain;

pub async fn serve(listener: TcpListener, drain: Drain) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let drain = drain.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let drain = drain.clone();
                async move { Ok::<_, Infallible>(answer(&req, &drain)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer<B>(req: &Request<B>, drain: &Drain) -> Response<Full<Bytes>> {
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
            "not found; try /healthz or /readyz\n",
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
