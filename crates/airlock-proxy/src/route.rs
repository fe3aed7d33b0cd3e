//! Route matching: the most specific host that has a matching path wins; within a host,
//! `path_exact` beats the longest `path_prefix`, which beats `path_regex` (in file order).

use std::sync::Arc;

use regex::Regex;

use crate::upstream::Pool;

/// Everything the proxy needs to know about one `[[route]]`.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub host: HostMatch,
    pub path: PathMatch,
    pub pool: Arc<Pool>,
    /// The route's plugins, in order.
    pub chain: airlock_plugins::Chain,
    /// The metrics of each plugin of `chain`, in the same order.
    pub plugin_metrics: Vec<crate::metrics::PluginMetrics>,
    /// The route's request and tunnel metrics.
    pub metrics: Arc<crate::metrics::RouteMetrics>,
    /// `limits` checked before the plugins, in order.
    pub limits: Vec<Arc<crate::limit::Limit>>,
    /// `limits` keyed `"plugin"`, checked after them, in order.
    pub limits_after_plugins: Vec<Arc<crate::limit::Limit>>,
    pub strip_prefix: Option<String>,
    pub connect_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub max_lifetime: Option<std::time::Duration>,
    pub half_close_timeout: std::time::Duration,
    /// `websocket = {...}`: the rules of a frame-aware route.
    pub frame_rules: Option<Arc<crate::tunnel::FrameRules>>,
}

#[derive(Debug, Clone)]
pub enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    pub fn parse(host: Option<&str>) -> Self {
        match host {
            None => Self::Any,
            Some(h) => match h.strip_prefix('*') {
                Some(suffix) => Self::Suffix(suffix.to_ascii_lowercase()),
                None => Self::Exact(h.to_ascii_lowercase()),
            },
        }
    }

    /// A host name this matches, for checking certificates against: the name itself, or
    /// `www` under a wildcard. `None` for any host.
    pub fn example_name(&self) -> Option<String> {
        match self {
            Self::Any => None,
            Self::Exact(h) => Some(h.clone()),
            Self::Suffix(s) => Some(format!("www{s}")),
        }
    }

    /// How specifically this matches `host` (higher is more specific), or `None`.
    fn rank(&self, host: &str) -> Option<(u8, usize)> {
        match self {
            Self::Any => Some((0, 0)),
            Self::Suffix(s) => {
                (host.len() > s.len() && host.ends_with(s.as_str())).then_some((1, s.len()))
            }
            Self::Exact(h) => (h == host).then_some((2, 0)),
        }
    }
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl PathMatch {
    fn rank(&self, path: &str) -> Option<(u8, usize)> {
        match self {
            Self::Exact(p) => (p == path).then_some((2, 0)),
            Self::Prefix(p) => path.starts_with(p.as_str()).then_some((1, p.len())),
            Self::Regex(r) => r.is_match(path).then_some((0, 0)),
        }
    }
}

impl Route {
    /// The path to send upstream after `strip_prefix`. Stripping is literal; the result
    /// always starts with `/`.
    pub fn rewrite_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        let Some(rest) = self
            .strip_prefix
            .as_deref()
            .and_then(|p| path.strip_prefix(p))
        else {
            return path.into();
        };
        if rest.starts_with('/') {
            rest.into()
        } else {
            format!("/{rest}").into()
        }
    }
}

/// (host class, wildcard suffix length, path class, prefix length): larger is more specific.
type Specificity = (u8, usize, u8, usize);

/// The routes one listener serves, in file order.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(routes: Vec<Arc<Route>>) -> Self {
        Self { routes }
    }

    /// `host` must be lowercase and without a port.
    /// The routes, in file order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let mut best: Option<(Specificity, &Arc<Route>)> = None;
        for route in &self.routes {
            let (Some(h), Some(p)) = (route.host.rank(host), route.path.rank(path)) else {
                continue;
            };
            let rank = (h.0, h.1, p.0, p.1);
            // Strictly greater: on a tie the earlier route in the file wins.
            if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                best = Some((rank, route));
            }
        }
        best.map(|(_, r)| r)
    }
}

/// The host a request is for, lowercase, without port or trailing dot.
pub fn request_host(uri: &http::Uri, headers: &http::HeaderMap) -> String {
    let raw = uri
        .host()
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("");
    let without_port = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |i| &raw[..=i])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Pool;

    fn route(name: &str, host: Option<&str>, path: PathMatch) -> Arc<Route> {
        let name: Arc<str> = name.into();
        Arc::new(Route {
            metrics: Arc::new(crate::metrics::RouteMetrics::new(&name)),
            plugin_metrics: Vec::new(),
            name,
            host: HostMatch::parse(host),
            path,
            pool: Pool::for_tests(),
            chain: Default::default(),
            limits: Vec::new(),
            limits_after_plugins: Vec::new(),
            strip_prefix: None,
            connect_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
            max_lifetime: None,
            half_close_timeout: std::time::Duration::from_secs(1),
            frame_rules: None,
        })
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.into())
    }

    fn found<'a>(r: &'a Router, host: &str, path: &str) -> Option<&'a str> {
        r.find(host, path).map(|r| &*r.name)
    }

    #[test]
    fn exact_beats_longest_prefix_beats_regex() {
        let r = Router::new(vec![
            route("regex", None, PathMatch::Regex(Regex::new("^/ws").unwrap())),
            route("short", None, prefix("/")),
            route("long", None, prefix("/ws/")),
            route("exact", None, PathMatch::Exact("/ws/chat".into())),
        ]);
        assert_eq!(found(&r, "a", "/ws/chat"), Some("exact"));
        assert_eq!(found(&r, "a", "/ws/other"), Some("long"));
        assert_eq!(found(&r, "a", "/api"), Some("short"));
    }

    #[test]
    fn regexes_match_in_file_order() {
        let r = Router::new(vec![
            route(
                "first",
                None,
                PathMatch::Regex(Regex::new("^/rooms/").unwrap()),
            ),
            route(
                "second",
                None,
                PathMatch::Regex(Regex::new("^/rooms/[0-9]+$").unwrap()),
            ),
        ]);
        assert_eq!(found(&r, "a", "/rooms/12"), Some("first"));
        assert_eq!(found(&r, "a", "/lobby"), None);
    }

    #[test]
    fn most_specific_host_with_a_matching_path_wins() {
        let r = Router::new(vec![
            route("any", None, prefix("/")),
            route("wild", Some("*.example.com"), prefix("/")),
            route("deeper", Some("*.chat.example.com"), prefix("/")),
            route("exact", Some("chat.example.com"), prefix("/ws")),
        ]);
        assert_eq!(found(&r, "chat.example.com", "/ws"), Some("exact"));
        // The exact host has no route for /api, so the wildcard that does takes it.
        assert_eq!(found(&r, "chat.example.com", "/api"), Some("wild"));
        assert_eq!(found(&r, "a.chat.example.com", "/"), Some("deeper"));
        assert_eq!(found(&r, "example.com", "/"), Some("any"));
        assert_eq!(found(&r, "evil-example.com", "/"), Some("any"));
    }

    #[test]
    fn no_match_is_none() {
        let r = Router::new(vec![route(
            "ws",
            Some("a.example.com"),
            PathMatch::Exact("/ws".into()),
        )]);
        assert_eq!(found(&r, "a.example.com", "/ws/"), None);
        assert_eq!(found(&r, "b.example.com", "/ws"), None);
    }

    #[test]
    fn host_is_normalised() {
        let h = |uri: &str, host: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::HOST, host.parse().unwrap());
            request_host(&uri.parse().unwrap(), &headers)
        };
        assert_eq!(h("/", "Chat.Example.COM:8080"), "chat.example.com");
        assert_eq!(h("/", "example.com."), "example.com");
        assert_eq!(h("/", "[::1]:8080"), "[::1]");
        assert_eq!(h("http://other.example/x", "example.com"), "other.example");
    }

    #[test]
    fn strip_prefix_is_literal_and_keeps_a_leading_slash() {
        let mut r = Arc::into_inner(route("r", None, prefix("/ws"))).unwrap();
        r.strip_prefix = Some("/ws".into());
        assert_eq!(r.rewrite_path("/ws/chat"), "/chat");
        assert_eq!(r.rewrite_path("/ws"), "/");
        assert_eq!(r.rewrite_path("/wsx"), "/x");
        assert_eq!(r.rewrite_path("/api"), "/api");
    }
}
