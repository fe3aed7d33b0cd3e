//! The answers airlock writes itself: errors mapped to the status the client sees (a
//! plugin's rejection as the plugin wrote it), `redirect_https`, and what every response
//! of a listener carries (`Strict-Transport-Security`).

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::conn::ConnCtx;
use crate::error::{ProxyError, chain};
use crate::http::body::ProxyBody;
use crate::observe::access_log::RequestLog;
use crate::route::request_host;

/// The response for an error, with the cause recorded in the log. A plugin's rejection as
/// the plugin wrote it; otherwise the status with a short text (details go to the log,
/// not the client).
pub fn for_error(err: ProxyError, log: &mut RequestLog) -> Response<ProxyBody> {
    log.error = Some((err.source_kind().as_str(), err.cause(), chain(&err)));
    log.plugin = err.plugin().map(Into::into);
    log.limit = err.limit();
    if let ProxyError::PluginFailed { .. } = &err {
        tracing::warn!(request = %log.request_id, error = %chain(&err), "plugin failed; request denied (on_error = \"deny\")");
    }
    if let ProxyError::Limited {
        retry_after: Some(wait),
        ..
    } = &err
    {
        let mut response = error_response(err.status());
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, retry_after(*wait));
        return response;
    }
    let ProxyError::PluginRejected { rejection, .. } = err else {
        return error_response(err.status());
    };
    let mut response = Response::new(ProxyBody::local(rejection.body));
    *response.status_mut() =
        StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::FORBIDDEN);
    let headers = response.headers_mut();
    for (name, value) in rejection.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

/// `Retry-After` in whole seconds (RFC 9110 §10.2.3), rounded up: a client that waits
/// that long is admitted.
fn retry_after(wait: std::time::Duration) -> HeaderValue {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

/// What every response on the listener gets, whoever wrote it.
pub fn finish(response: &mut Response<ProxyBody>, conn: &ConnCtx) {
    if let Some(hsts) = &conn.listener.hsts {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
}

/// `redirect_https`: 308 to the same host and URI on the HTTPS port (RFC 9110 §15.4.9
/// keeps the method and body, unlike 301).
pub fn redirect_https(req: &Request<ProxyBody>, port: u16) -> Response<ProxyBody> {
    let host = request_host(req.uri(), req.headers());
    if host.is_empty() {
        return error_response(StatusCode::BAD_REQUEST);
    }
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let Ok(location) = HeaderValue::from_str(&location) else {
        return error_response(StatusCode::BAD_REQUEST);
    };
    let mut response = error_response(StatusCode::PERMANENT_REDIRECT);
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// A small plain-text answer.
fn error_response(status: StatusCode) -> Response<ProxyBody> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(ProxyBody::local(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
