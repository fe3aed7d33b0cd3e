//! Phase: the route's plugin chain. Builds the handshake record plugins see, runs the
//! chain, and applies its decision to the request before it is forwarded.

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;

use airlock_plugins::chain::{Allowed, Step};
use airlock_plugins::{ChainOutcome, Handshake, TlsInfo};
use http::Request;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use tokio::time::Instant;

use crate::conn::ConnCtx;
use crate::error::ProxyError;
use crate::http::forwarded;
use crate::metrics::CallResult;
use crate::observe::RequestId;
use crate::observe::access_log::RequestLog;
use crate::route::Route;
use crate::upstream::Pool;

/// What the chain decided beyond the request itself.
#[derive(Default)]
pub struct Decision {
    /// A pool chosen by a plugin instead of the route's.
    pub pool: Option<Arc<Pool>>,
    /// Whether a plugin set the path (then `strip_prefix` does not apply).
    pub path_rewritten: bool,
    /// Headers to add to the response to the client.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    /// Which server to keep this request with, for balancers that use it. Not logged: it
    /// is often a session id.
    pub affinity_key: Option<String>,
    /// Who the request is for limits keyed `"plugin"`. Not logged: it is an identity.
    pub limit_key: Option<String>,
    /// Whether a plugin replaced the request's headers (then whether and to what it asks
    /// to upgrade must be read from them again).
    pub headers_replaced: bool,
}

/// Run the route's chain on `req`, whose `upgrade` protocol the caller has read. A
/// rejection or a failed plugin becomes an error whose response the client gets;
/// otherwise the request is changed in place.
pub fn run<B>(
    req: &mut Request<B>,
    upgrade: Option<&HeaderValue>,
    route: &Route,
    conn: &ConnCtx,
    log: &mut RequestLog,
) -> Result<Decision, ProxyError> {
    if route.chain.is_empty() {
        return Ok(Decision::default());
    }
    let started = Instant::now();
    let handshake = handshake(req, upgrade, route, conn, log.request_id)?;
    let trace = &mut log.trace;
    let outcome = route.chain.run_observed(handshake, |index, took, step| {
        let result = match step {
            Step::Allowed => CallResult::Allow,
            Step::Rejected => CallResult::Reject,
            Step::Failed(error) => CallResult::Error(error.cause()),
        };
        let metrics = &route.plugin_metrics[index];
        metrics.call(took, result);
        if let Some(trace) = trace {
            trace.plugin_call(metrics.name(), took, &step);
        }
    });
    log.plugin_time = Some(started.elapsed());
    let changes = match outcome {
        ChainOutcome::Rejected { plugin, rejection } => {
            return Err(ProxyError::PluginRejected { plugin, rejection });
        }
        ChainOutcome::Failed { plugin, error } => {
            return Err(ProxyError::PluginFailed {
                plugin,
                source: error,
            });
        }
        // What the chain changed, owned, so that the request it borrowed from can change.
        ChainOutcome::Allowed(allowed) => Changes::new(*allowed, conn, log)?,
    };
    Ok(changes.apply(req))
}

/// The request as plugins see it, borrowing its strings from `req`. Header values must
/// be UTF-8 (400 otherwise).
fn handshake<'r, B>(
    req: &'r Request<B>,
    upgrade: Option<&HeaderValue>,
    route: &'r Route,
    conn: &'r ConnCtx,
    id: RequestId,
) -> Result<Handshake<'r>, ProxyError> {
    let mut headers = Vec::with_capacity(req.headers().len());
    for (name, value) in req.headers() {
        let value =
            std::str::from_utf8(value.as_bytes()).map_err(|_| ProxyError::BadHeaderEncoding {
                name: name.to_string(),
            })?;
        headers.push((name.as_str().into(), value.into()));
    }
    let upgrade = upgrade
        .and_then(|v| v.to_str().ok())
        .map(|v| Cow::Owned(v.to_ascii_lowercase()));
    let subprotocols = airlock_plugins::chain::offered_subprotocols(
        req.headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    // The handler has already copied an absolute-form URI's authority into `Host`.
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let client = forwarded::client_ip(req.headers(), conn.peer.ip(), &conn.listener.trusted);
    Ok(Handshake {
        id: id.to_hex().into(),
        method: req.method().as_str().into(),
        scheme: conn.scheme().into(),
        authority: authority.into(),
        path: req.uri().path().into(),
        query: req.uri().query().map(Cow::Borrowed),
        headers,
        client_addr: forwarded::ip_text(client).into(),
        tls: conn.tls.as_ref().map(|t| TlsInfo {
            sni: t.sni.as_deref().map(Cow::Borrowed),
            alpn: t.alpn.as_deref().map(Cow::Borrowed),
            version: t.version.into(),
            client_cert_subject: t.client_cert.as_ref().map(|c| c.subject.as_str().into()),
            client_cert_sans: t
                .client_cert
                .iter()
                .flat_map(|c| &c.sans)
                .map(|s| s.as_str().into())
                .collect(),
        }),
        route: (*route.name).into(),
        upgrade,
        subprotocols: subprotocols.into_iter().map(Cow::Borrowed).collect(),
    })
}

/// The chain's decision, taken out of the request record it changed.
struct Changes {
    uri: Option<PathAndQuery>,
    headers: Option<HeaderMap>,
    subprotocol: Option<HeaderValue>,
    decision: Decision,
}

impl Changes {
    fn new(allowed: Allowed<'_>, conn: &ConnCtx, log: &mut RequestLog) -> Result<Self, ProxyError> {
        for (plugin, error) in &allowed.failed_open {
            tracing::warn!(plugin = &**plugin, request = %log.request_id, error = %error, "plugin failed; request allowed by on_error = \"allow\"");
        }
        let invalid = |what: String| ProxyError::PluginOutput { detail: what };
        let request = &allowed.request;
        let uri =
            if allowed.path_changed || allowed.query_changed {
                let pq = match &request.query {
                    Some(q) => format!("{}?{q}", request.path),
                    None => request.path.to_string(),
                };
                Some(PathAndQuery::from_str(&pq).map_err(|_| {
                    invalid(format!("the path and query {pq:?} are not a valid URI"))
                })?)
            } else {
                None
            };
        let headers = if allowed.headers_changed {
            let mut map = HeaderMap::with_capacity(request.headers.len());
            for (name, value) in &request.headers {
                let (name, value) = header_pair(name, value)?;
                map.append(name, value);
            }
            Some(map)
        } else {
            None
        };
        let subprotocol = match &allowed.subprotocol {
            Some(sub) => Some(
                HeaderValue::from_str(sub).map_err(|_| invalid(format!("subprotocol {sub:?}")))?,
            ),
            None => None,
        };
        let pool = match &allowed.upstream {
            Some(name) => Some(
                conn.snapshot
                    .pool(name.as_str())
                    .cloned()
                    .ok_or_else(|| ProxyError::UnknownUpstream { name: name.clone() })?,
            ),
            None => None,
        };
        let response_headers = allowed
            .response_headers
            .iter()
            .map(|(name, value)| header_pair(name, value))
            .collect::<Result<Vec<_>, _>>()?;
        log.attributes = allowed.attributes;
        Ok(Self {
            uri,
            headers,
            subprotocol,
            decision: Decision {
                pool,
                path_rewritten: allowed.path_changed,
                response_headers,
                affinity_key: allowed.affinity_key,
                limit_key: allowed.limit_key,
                headers_replaced: allowed.headers_changed,
            },
        })
    }

    fn apply<B>(self, req: &mut Request<B>) -> Decision {
        if let Some(pq) = self.uri {
            *req.uri_mut() = pq.into();
        }
        if let Some(headers) = self.headers {
            *req.headers_mut() = headers;
        }
        if let Some(value) = self.subprotocol {
            req.headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
        self.decision
    }
}

/// A header from a plugin as typed values. The chain already refused names and values
/// that cannot be headers; this guards the conversion all the same.
fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), ProxyError> {
    let invalid = || ProxyError::PluginOutput {
        detail: format!("header {name:?} has an invalid name or value"),
    };
    Ok((
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?,
        HeaderValue::from_str(value).map_err(|_| invalid())?,
    ))
}
