//! The hyper service both HTTP/1.1 and HTTP/2 connections use: every request goes
//! through the request phases (`crate::request::handle`).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;

use crate::conn::ConnCtx;
use crate::http::body::ProxyBody;
use crate::upgrade::ClientSide;

/// Every request goes to `handle`, except that the first one gets `answered` when that
/// is set (the answer to a request already proxied, see `direct`).
pub fn service(
    conn: Arc<ConnCtx>,
    answered: Option<Response<ProxyBody>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
> + Clone {
    let answered = answered.map(|a| Arc::new(Mutex::new(Some(a))));
    service_fn(move |mut req: Request<Incoming>| {
        let conn = conn.clone();
        let answer = answered.as_ref().and_then(|a| a.lock().ok()?.take());
        async move {
            Ok::<_, Infallible>(match answer {
                Some(answer) => answer,
                None => {
                    let client = ClientSide::Hyper(hyper::upgrade::on(&mut req));
                    crate::request::handle(req.map(ProxyBody::client), client, conn).await
                }
            })
        }
    })
}
