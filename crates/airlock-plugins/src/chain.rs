//! A route's plugins, run in order. Each sees the request as changed by the ones before
//! it; the first rejection ends the chain; a failing plugin follows its `on_error`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::CallError;
use crate::{Handshake, Mutations, OnError, Plugin, Rejection, Verdict};

/// The plugins of one route, in order.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    plugins: Vec<Arc<Plugin>>,
}

/// How a chain ended.
#[derive(Debug)]
pub enum ChainOutcome<'a> {
    /// Every plugin allowed (or failed with `on_error = "allow"`).
    Allowed(Box<Allowed<'a>>),
    /// A plugin rejected the request.
    Rejected {
        plugin: Arc<str>,
        rejection: Rejection,
    },
    /// A plugin failed and its `on_error` is `deny`.
    Failed { plugin: Arc<str>, error: CallError },
}

/// How one plugin call went, as [`Chain::run_observed`] reports it.
#[derive(Debug, Clone, Copy)]
pub enum Step<'e> {
    Allowed,
    Rejected,
    /// The call failed, or the changes it asked for were refused.
    Failed(&'e CallError),
}

/// The request as the chain left it, and what it asked for beyond the request.
#[derive(Debug)]
pub struct Allowed<'a> {
    /// The request with every plugin's changes applied.
    pub request: Handshake<'a>,
    pub path_changed: bool,
    pub query_changed: bool,
    pub headers_changed: bool,
    pub upstream: Option<String>,
    pub affinity_key: Option<String>,
    /// What limits keyed `"plugin"` count by (the last plugin that set it).
    pub limit_key: Option<String>,
    pub subprotocol: Option<String>,
    pub response_headers: Vec<(String, String)>,
    pub attributes: Vec<(String, String)>,
    /// Plugins that failed but whose `on_error = "allow"` let the request through.
    pub failed_open: Vec<(Arc<str>, CallError)>,
}

impl Chain {
    pub fn new(plugins: Vec<Arc<Plugin>>) -> Self {
        Self { plugins }
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The plugins' names, in the order they run.
    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.plugins.iter().map(|p| &p.name)
    }

    /// Run every plugin on `request`.
    pub fn run<'a>(&self, request: Handshake<'a>) -> ChainOutcome<'a> {
        self.run_observed(request, |_, _, _| {})
    }

    /// Run every plugin on `request`, telling `observe` how each call went: the plugin's
    /// position in the chain, the call's wall time, and its result.
    pub fn run_observed<'a>(
        &self,
        request: Handshake<'a>,
        mut observe: impl FnMut(usize, Duration, Step<'_>),
    ) -> ChainOutcome<'a> {
        let mut allowed = Allowed::new(request);
        for (index, plugin) in self.plugins.iter().enumerate() {
            let started = Instant::now();
            let verdict = plugin.call(&allowed.request).and_then(check_verdict);
            let took = started.elapsed();
            // A rejection, or the changes applied; a bad set of changes fails the call.
            let result = match verdict {
                Ok(Verdict::Allow(mutations)) => allowed.apply(mutations).map(|()| None),
                Ok(Verdict::Reject(rejection)) => Ok(Some(rejection)),
                Err(error) => Err(error),
            };
            let step = match &result {
                Ok(None) => Step::Allowed,
                Ok(Some(_)) => Step::Rejected,
                Err(error) => Step::Failed(error),
            };
            observe(index, took, step);
            match result {
                Ok(None) => {}
                Ok(Some(rejection)) => {
                    return ChainOutcome::Rejected {
                        plugin: plugin.name.clone(),
                        rejection,
                    };
                }
                Err(error) => match plugin.on_error {
                    OnError::Deny => {
                        return ChainOutcome::Failed {
                            plugin: plugin.name.clone(),
                            error,
                        };
                    }
                    OnError::Allow => allowed.failed_open.push((plugin.name.clone(), error)),
                },
            }
        }
        ChainOutcome::Allowed(Box::new(allowed))
    }
}

fn check_verdict(verdict: Verdict) -> Result<Verdict, CallError> {
    if let Verdict::Reject(r) = &verdict
        && !(400..=599).contains(&r.status)
    {
        return Err(CallError::InvalidVerdict(format!(
            "rejection status {} is not between 400 and 599",
            r.status
        )));
    }
    Ok(verdict)
}

impl<'a> Allowed<'a> {
    fn new(request: Handshake<'a>) -> Self {
        Self {
            request,
            path_changed: false,
            query_changed: false,
            headers_changed: false,
            upstream: None,
            affinity_key: None,
            limit_key: None,
            subprotocol: None,
            response_headers: Vec::new(),
            attributes: Vec::new(),
            failed_open: Vec::new(),
        }
    }

    /// Apply one plugin's mutations so the next plugin sees them. Checked first, so a
    /// bad set of mutations changes nothing.
    pub fn apply(&mut self, m: Mutations) -> Result<(), CallError> {
        if let Some(path) = &m.path
            && !path.starts_with('/')
        {
            return Err(CallError::InvalidVerdict(format!(
                "path {path:?} does not start with \"/\""
            )));
        }
        if let Some(sub) = &m.subprotocol
            && !self
                .request
                .subprotocols
                .iter()
                .any(|offered| offered == sub)
        {
            return Err(CallError::InvalidVerdict(format!(
                "subprotocol {sub:?} was not offered by the client"
            )));
        }
        let bad_header = m
            .set_headers
            .iter()
            .chain(&m.response_headers)
            .find(|(name, value)| {
                !valid_header_name(name)
                    || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
            });
        if let Some((name, _)) = bad_header {
            return Err(CallError::InvalidVerdict(format!(
                "header {name:?} has an invalid name or value"
            )));
        }

        if let Some(path) = m.path {
            self.request.path = path.into();
            self.path_changed = true;
        }
        if let Some(query) = m.query {
            self.request.query = (!query.is_empty()).then_some(query.into());
            self.query_changed = true;
        }
        let offer_changed = m
            .remove_headers
            .iter()
            .chain(m.set_headers.iter().map(|(n, _)| n))
            .any(|n| n.eq_ignore_ascii_case("sec-websocket-protocol"));
        let headers = &mut self.request.headers;
        for name in &m.remove_headers {
            let before = headers.len();
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            self.headers_changed |= headers.len() != before;
        }
        for (name, value) in m.set_headers {
            let name = name.to_ascii_lowercase();
            headers.retain(|(n, _)| *n != name);
            headers.push((name.into(), value.into()));
            self.headers_changed = true;
        }
        if offer_changed {
            self.request.subprotocols = offered_subprotocols(
                self.request
                    .headers
                    .iter()
                    .filter(|(n, _)| n == "sec-websocket-protocol")
                    .map(|(_, v)| &**v),
            )
            .into_iter()
            .map(|s| Cow::Owned(s.to_string()))
            .collect();
        }
        if let Some(sub) = m.subprotocol {
            self.request.subprotocols = vec![sub.clone().into()];
            self.subprotocol = Some(sub);
        }
        if m.upstream.is_some() {
            self.upstream = m.upstream;
        }
        if m.affinity_key.is_some() {
            self.affinity_key = m.affinity_key;
        }
        if m.limit_key.is_some() {
            self.limit_key = m.limit_key;
        }
        self.response_headers.extend(m.response_headers);
        self.attributes.extend(m.attributes);
        Ok(())
    }
}

/// The subprotocols offered in `Sec-WebSocket-Protocol` header values, in order.
pub fn offered_subprotocols<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    values
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Handshake<'static> {
        Handshake {
            id: "1".into(),
            method: "GET".into(),
            scheme: "http".into(),
            authority: "chat.example.com".into(),
            path: "/ws".into(),
            query: Some("token=abc&room=1".into()),
            headers: vec![
                ("origin".into(), "https://app.example.com".into()),
                ("x-drop".into(), "1".into()),
                ("X-Drop".into(), "2".into()),
            ],
            client_addr: "203.0.113.9".into(),
            tls: None,
            route: "chat".into(),
            upgrade: Some("websocket".into()),
            subprotocols: vec!["chat.v1".into(), "chat.v2".into()],
        }
    }

    fn none() -> Mutations {
        Mutations {
            path: None,
            query: None,
            set_headers: vec![],
            remove_headers: vec![],
            upstream: None,
            affinity_key: None,
            limit_key: None,
            subprotocol: None,
            response_headers: vec![],
            attributes: vec![],
        }
    }

    #[test]
    fn empty_mutations_change_nothing() {
        let mut a = Allowed::new(request());
        a.apply(none()).unwrap();
        assert!(!a.path_changed && !a.query_changed && !a.headers_changed);
        assert_eq!(a.request.headers.len(), 3);
    }

    #[test]
    fn mutations_apply_in_order_and_accumulate() {
        let mut a = Allowed::new(request());
        a.apply(Mutations {
            path: Some("/chat".into()),
            query: Some("room=1".into()),
            remove_headers: vec!["X-DROP".into()],
            set_headers: vec![("X-User".into(), "alice".into())],
            upstream: Some("canary".into()),
            response_headers: vec![("x-a".into(), "1".into())],
            attributes: vec![("user".into(), "alice".into())],
            subprotocol: Some("chat.v2".into()),
            limit_key: Some("tenant-a".into()),
            ..none()
        })
        .unwrap();
        a.apply(Mutations {
            set_headers: vec![("x-user".into(), "bob".into())],
            query: Some(String::new()),
            response_headers: vec![("x-b".into(), "2".into())],
            affinity_key: Some("sid-1".into()),
            limit_key: Some("user-bob".into()),
            ..none()
        })
        .unwrap();
        assert_eq!(a.request.path, "/chat");
        assert_eq!(a.request.query, None);
        assert_eq!(
            a.request.headers,
            [
                ("origin".into(), "https://app.example.com".into()),
                ("x-user".into(), "bob".into())
            ]
        );
        assert_eq!(a.request.subprotocols, ["chat.v2"]);
        assert_eq!(a.upstream.as_deref(), Some("canary"));
        assert_eq!(a.affinity_key.as_deref(), Some("sid-1"));
        assert_eq!(
            a.limit_key.as_deref(),
            Some("user-bob"),
            "the last one set wins"
        );
        assert_eq!(a.response_headers.len(), 2);
        assert_eq!(a.attributes, [("user".to_string(), "alice".to_string())]);
    }

    #[test]
    fn later_plugins_see_the_offer_a_header_change_left() {
        let mut a = Allowed::new(request());
        a.apply(Mutations {
            set_headers: vec![("Sec-WebSocket-Protocol".into(), "mqtt, chat.v1".into())],
            ..none()
        })
        .unwrap();
        assert_eq!(a.request.subprotocols, ["mqtt", "chat.v1"]);
        a.apply(Mutations {
            remove_headers: vec!["sec-websocket-protocol".into()],
            ..none()
        })
        .unwrap();
        assert!(a.request.subprotocols.is_empty());
    }

    #[test]
    fn invalid_mutations_are_refused_whole() {
        let mut a = Allowed::new(request());
        let bad = [
            Mutations {
                path: Some("chat".into()),
                ..none()
            },
            Mutations {
                subprotocol: Some("chat.v9".into()),
                ..none()
            },
            Mutations {
                set_headers: vec![("x ok".into(), "1".into())],
                ..none()
            },
            Mutations {
                path: Some("/ok".into()),
                response_headers: vec![("x".into(), "a\r\nb".into())],
                ..none()
            },
        ];
        for m in bad {
            assert!(matches!(a.apply(m), Err(CallError::InvalidVerdict(_))));
        }
        assert_eq!(a.request.path, "/ws");
        assert!(!a.path_changed);
    }

    #[test]
    fn rejection_status_must_be_an_error() {
        let r = |status| {
            Verdict::Reject(Rejection {
                status,
                body: String::new(),
                headers: vec![],
            })
        };
        assert!(check_verdict(r(403)).is_ok());
        assert!(check_verdict(r(200)).is_err());
        assert!(check_verdict(r(302)).is_err());
    }
}
