//! Plain HTTP forwarding: reuse an idle keep-alive connection to the chosen server or open
//! one (failing over to the next server when connecting fails), stream the request body up
//! and the response body down.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::http::body::ProxyBody;
use crate::http::headers;
use crate::observe::access_log::RequestLog;
use crate::route::Route;
use crate::upstream::balance::Hint;
use crate::upstream::{Members, Server};

pub async fn forward(
    req: Request<ProxyBody>,
    route: &Route,
    pool: &Members,
    hint: &Hint,
    log: &mut RequestLog,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut req = req;
    if let Some(trace) = &mut log.trace {
        trace.begin_upstream(req.headers_mut());
    }
    let mut attempts = pool.attempts(hint);
    let mut last_error = None;
    while let Some((server, guard)) = attempts.next_server().await {
        log.server = Some(server.addr.clone());

        // An idle connection the upstream closed meanwhile hands the request back unsent;
        // then the next idle one, or a fresh connection, gets it.
        while let Some(sender) = server.idle_connection() {
            match send(sender, req, &server, log).await {
                Sent::Response(response) => return Ok(respond(response, guard)),
                Sent::Unsent(back) => req = back,
                Sent::Failed(err) => return Err(err),
            }
        }

        let started = Instant::now();
        let sender = match connect(&server, route.connect_timeout).await {
            Ok(sender) => sender,
            Err(err) => {
                server.record_failure(&pool.name, &err);
                if let Some(trace) = &mut log.trace {
                    trace.connect_failed(&server.addr, &err);
                }
                last_error = Some(err);
                continue;
            }
        };
        log.connect_time = Some(started.elapsed());
        server.record_success();
        return match send(sender, req, &server, log).await {
            Sent::Response(response) => Ok(respond(response, guard)),
            Sent::Unsent(_) => Err(ProxyError::Connect {
                server: server.addr.to_string(),
                source: std::io::Error::other(
                    "the new connection closed before the request was sent",
                ),
            }),
            Sent::Failed(err) => {
                server.record_failure(&pool.name, &err);
                Err(err)
            }
        };
    }
    Err(last_error.unwrap_or_else(|| attempts.exhausted()))
}

enum Sent {
    Response(Response<Incoming>),
    Unsent(Request<ProxyBody>),
    Failed(ProxyError),
}

async fn send(
    mut sender: SendRequest<ProxyBody>,
    req: Request<ProxyBody>,
    server: &Server,
    log: &mut RequestLog,
) -> Sent {
    let started = Instant::now();
    match sender.try_send_request(req).await {
        Ok(response) => {
            log.header_time = Some(started.elapsed());
            // Give the connection back once this response has been read to the end.
            let server = server.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    server.keep_idle(sender);
                }
            });
            Sent::Response(response)
        }
        Err(mut e) => match e.take_message() {
            Some(req) => Sent::Unsent(req),
            None => Sent::Failed(ProxyError::UpstreamRequest {
                server: server.addr.to_string(),
                source: e.into_error(),
            }),
        },
    }
}

async fn connect(
    server: &Server,
    timeout: std::time::Duration,
) -> Result<SendRequest<ProxyBody>, ProxyError> {
    let stream = server.connect(timeout).await?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::UpstreamRequest {
            server: server.addr.to_string(),
            source,
        })?;
    let addr: Arc<str> = server.addr.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(server = &*addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

fn respond(
    response: Response<Incoming>,
    guard: crate::upstream::ActiveGuard,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, None);
    Response::from_parts(parts, ProxyBody::upstream(body, guard))
}
