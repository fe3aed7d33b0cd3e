//! Cross-checks that serde cannot express: uniqueness, references between tables, and the
//! shape of strings (hosts, paths, regexes, server addresses).

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use crate::balance::{Balance, is_token_byte};
use crate::health::{HealthCheck, ProbeKind};
use crate::limit::{Limit, Store};
use crate::model::{Config, DEFAULT_ALPN, Listener, Route, Spanned, Upstream, UpstreamTls};

pub(crate) struct Problem {
    pub span: Option<Range<usize>>,
    pub message: String,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn at<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.0.push(Problem {
            span: Some(at.span()),
            message: message.into(),
        });
    }
    fn whole_file(&mut self, message: impl Into<String>) {
        self.0.push(Problem {
            span: None,
            message: message.into(),
        });
    }
}

pub(crate) fn validate(config: &Config) -> Vec<Problem> {
    let mut p = Problems::default();
    check_listeners(config, &mut p);
    for route in &config.routes {
        check_route(config, route, &mut p);
    }
    check_unique(config.routes.iter().map(|r| &r.name), "route", &mut p);
    check_upstreams(config, &mut p);
    check_plugins(config, &mut p);
    check_limits(config, &mut p);
    if config.worker_threads == Some(0) {
        p.whole_file("`worker_threads` must be at least 1");
    }
    check_drain(config, &mut p);
    if let Some(telemetry) = &config.telemetry {
        check_telemetry(telemetry, &mut p);
    }
    p.0
}

fn check_unique<'a>(
    names: impl Iterator<Item = &'a Spanned<String>>,
    what: &str,
    p: &mut Problems,
) {
    let mut seen = BTreeSet::new();
    for name in names {
        if name.get_ref().is_empty() {
            p.at(name, format!("{what} name must not be empty"));
        } else if !seen.insert(name.get_ref().as_str()) {
            p.at(
                name,
                format!(
                    "duplicate {what} name `{}`; {what} names must be unique",
                    name.get_ref()
                ),
            );
        }
    }
}

fn check_listeners(config: &Config, p: &mut Problems) {
    if config.listeners.is_empty() {
        p.whole_file(
            "no listeners: add at least one [[listener]] table with a `name` and a `bind` address",
        );
    }
    check_unique(config.listeners.iter().map(|l| &l.name), "listener", p);
    let mut binds = HashMap::new();
    for l in &config.listeners {
        let addr = l.bind.get_ref().0;
        // Port 0 asks the OS for a fresh port each time, so two of them never collide.
        if addr.port() == 0 {
            continue;
        }
        if let Some(other) = binds.insert(addr, l.name.get_ref().as_str()) {
            p.at(
                &l.bind,
                format!(
                    "listener `{}` binds {addr}, which listener `{other}` already binds",
                    l.name.get_ref()
                ),
            );
        }
    }
    for l in &config.listeners {
        check_listener_tls(l, p);
    }
    if let Some(admin) = &config.admin {
        let addr = admin.bind.get_ref().0;
        if let Some(other) = binds.get(&addr).filter(|_| addr.port() != 0) {
            p.at(
                &admin.bind,
                format!("admin binds {addr}, which listener `{other}` already binds"),
            );
        }
    }
}

fn check_listener_tls(l: &Listener, p: &mut Problems) {
    let name = l.name.get_ref();
    if let Some(h2c) = &l.h2c
        && *h2c.get_ref()
        && l.tls.is_some()
    {
        p.at(
            h2c,
            format!("listener `{name}` has both [listener.tls] and `h2c`; on a TLS listener HTTP/2 is offered through `alpn`"),
        );
    }
    if let Some(port) = &l.redirect_https {
        if l.tls.is_some() {
            p.at(
                port,
                format!("listener `{name}` has both [listener.tls] and `redirect_https`; redirect from a plain-text listener to the TLS one"),
            );
        }
        if *port.get_ref() == 0 {
            p.at(
                port,
                "`redirect_https` must be the TLS listener's port (1-65535)",
            );
        }
    }
    let Some(tls) = &l.tls else { return };
    let tls = tls.get_ref();
    if tls.certificates.get_ref().is_empty() {
        p.at(
            &tls.certificates,
            format!(r#"listener `{name}` has TLS but no certificates; add {{ cert = "cert.pem", key = "key.pem" }}"#),
        );
    }
    if let Some(alpn) = &tls.alpn {
        if alpn.get_ref().is_empty() {
            p.at(
                alpn,
                r#"`alpn` is empty; write ["h2", "http/1.1"], ["http/1.1"] or leave it out"#,
            );
        }
        let mut seen = BTreeSet::new();
        for proto in alpn.get_ref() {
            let proto_name = proto.get_ref().as_str();
            if !DEFAULT_ALPN.contains(&proto_name) {
                p.at(proto, format!(r#"unknown ALPN protocol "{proto_name}"; airlock speaks "h2" and "http/1.1""#));
            } else if !seen.insert(proto_name) {
                p.at(
                    proto,
                    format!(r#"ALPN protocol "{proto_name}" is listed twice"#),
                );
            }
        }
    }
    if let Some(hsts) = &tls.hsts {
        let v = hsts.get_ref();
        if v.is_empty()
            || !v
                .bytes()
                .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
        {
            p.at(
                hsts,
                r#"`hsts` must be a header value like "max-age=63072000; includeSubDomains""#,
            );
        }
    }
    if let (Some(auth), None) = (&tls.client_auth, &tls.client_ca) {
        p.at(
            auth,
            "`client_auth` needs `client_ca`: the CA certificates that sign client certificates",
        );
    }
}

fn check_upstream_tls(name: &str, tls: &Spanned<UpstreamTls>, p: &mut Problems) {
    let t = tls.get_ref();
    match (&t.client_cert, &t.client_key) {
        (Some(cert), None) => p.at(
            cert,
            format!("upstream `{name}`: `client_cert` needs `client_key`"),
        ),
        (None, Some(key)) => p.at(
            key,
            format!("upstream `{name}`: `client_key` needs `client_cert`"),
        ),
        _ => {}
    }
    if let (true, Some(ca)) = (t.insecure_skip_verify, &t.ca) {
        p.at(ca, format!("upstream `{name}`: `ca` has no effect with `insecure_skip_verify = true`; remove one"));
    }
    if let Some(sn) = &t.server_name {
        let v = sn.get_ref();
        let ok = !v.is_empty()
            && (v.parse::<std::net::IpAddr>().is_ok()
                || v.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                }));
        if !ok {
            p.at(sn, format!(r#"upstream `{name}`: invalid `server_name` "{v}"; write a DNS name like "backend.internal" or an IP address"#));
        }
    }
}

fn names<T>(map: &std::collections::BTreeMap<String, T>) -> String {
    if map.is_empty() {
        "none are defined".to_string()
    } else {
        let list: Vec<_> = map.keys().map(|k| format!("`{k}`")).collect();
        format!("defined: {}", list.join(", "))
    }
}

fn check_route(config: &Config, route: &Route, p: &mut Problems) {
    let name = route.name.get_ref();
    if let Some(ws) = &route.websocket {
        check_websocket(name, ws.get_ref(), p);
    }
    if !config.upstreams.contains_key(route.upstream.get_ref()) {
        p.at(
            &route.upstream,
            format!(
                "route `{name}` uses upstream `{}`, which is not defined ({}); add an [upstream.{}] table",
                route.upstream.get_ref(),
                names(&config.upstreams),
                route.upstream.get_ref()
            ),
        );
    }
    for plugin in &route.plugins {
        if !config.plugins.contains_key(plugin.get_ref()) {
            p.at(
                plugin,
                format!(
                    "route `{name}` uses plugin `{}`, which is not defined ({}); add a [plugin.{}] table",
                    plugin.get_ref(),
                    names(&config.plugins),
                    plugin.get_ref()
                ),
            );
        }
    }
    let mut seen = BTreeSet::new();
    for limit in &route.limits {
        let limit_name = limit.get_ref();
        if !config.limits.contains_key(limit_name) {
            p.at(
                limit,
                format!(
                    "route `{name}` uses limit `{limit_name}`, which is not defined ({}); add a [limit.{limit_name}] table",
                    names(&config.limits),
                ),
            );
        } else if !seen.insert(limit_name) {
            p.at(
                limit,
                format!("route `{name}` lists limit `{limit_name}` twice"),
            );
        }
    }
    if let Some(listeners) = &route.listeners {
        for l in listeners {
            if !config
                .listeners
                .iter()
                .any(|x| x.name.get_ref() == l.get_ref())
            {
                p.at(
                    l,
                    format!(
                        "route `{name}` names listener `{}`, which is not defined",
                        l.get_ref()
                    ),
                );
            }
        }
    }
    if let Some(host) = &route.host {
        check_host(host, p);
    }
    let matchers = [&route.path_exact, &route.path_prefix, &route.path_regex];
    let mut given = matchers.iter().filter_map(|m| m.as_ref());
    if let (Some(_), Some(second)) = (given.next(), given.next()) {
        p.at(
            second,
            format!("route `{name}` has more than one of `path_exact`, `path_prefix` and `path_regex`; keep one"),
        );
    }
    for (key, value) in [
        ("path_exact", &route.path_exact),
        ("path_prefix", &route.path_prefix),
        ("strip_prefix", &route.strip_prefix),
    ] {
        if let Some(v) = value
            && !v.get_ref().starts_with('/')
        {
            p.at(v, format!("`{key}` must start with \"/\", like \"/ws\""));
        }
    }
    if let Some(re) = &route.path_regex
        && let Err(e) = regex::Regex::new(re.get_ref())
    {
        let detail = e.to_string();
        let detail = detail.lines().last().unwrap_or_default().trim();
        let detail = detail.strip_prefix("error: ").unwrap_or(detail);
        p.at(
            re,
            format!("`path_regex` is not a valid regular expression: {detail}"),
        );
    }
    if route.idle_timeout.get().is_zero() {
        p.whole_file(format!(
            "route `{name}`: `idle_timeout` must be greater than zero"
        ));
    }
    if route.connect_timeout.get().is_zero() {
        p.whole_file(format!(
            "route `{name}`: `connect_timeout` must be greater than zero"
        ));
    }
}

fn check_host(host: &Spanned<String>, p: &mut Problems) {
    let h = host.get_ref();
    let bare = h.strip_prefix("*.").unwrap_or(h);
    let ok = !bare.is_empty()
        && bare.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !ok {
        p.at(
            host,
            format!(
                r#"invalid host "{h}"; write a host name like "chat.example.com", or "*.example.com" for its subdomains (no port, no other wildcards)"#
            ),
        );
    }
}

fn check_upstreams(config: &Config, p: &mut Problems) {
    for (name, up) in &config.upstreams {
        if up.servers.get_ref().is_empty() {
            p.at(
                &up.servers,
                format!("upstream `{name}` has no servers; list at least one \"host:port\""),
            );
        }
        for server in up.servers.get_ref() {
            let s = server.get_ref();
            if !valid_server_addr(&s.addr) {
                p.at(
                    server,
                    format!(
                        r#"invalid server address "{}" in upstream `{name}`; write host and port, like "127.0.0.1:9001" or "backend.internal:9001""#,
                        s.addr
                    ),
                );
            }
            if s.weight == 0 {
                p.at(
                    server,
                    format!(
                        "server \"{}\" in upstream `{name}` has weight 0; weights start at 1",
                        s.addr
                    ),
                );
            }
        }
        if let Some(tls) = &up.tls {
            check_upstream_tls(name, tls, p);
        }
        check_balance(name, up, p);
        if let Some(hc) = &up.health_check {
            check_health(name, hc, p);
        }
        if up.resolve_interval.get_ref().get() < std::time::Duration::from_secs(1) {
            p.at(
                &up.resolve_interval,
                format!(
                    r#"upstream `{name}`: `resolve_interval` must be at least "1s" (servers given by name are resolved again this often)"#
                ),
            );
        }
        if let Some(max) = &up.max_conns
            && *max.get_ref() == 0
        {
            p.at(
                max,
                format!(
                    "upstream `{name}`: `max_conns` must be at least 1 (leave it out for no limit)"
                ),
            );
        }
        if let (Some(wait), None) = (&up.queue_timeout, &up.max_conns) {
            p.at(
                wait,
                format!("upstream `{name}` has `queue_timeout` but no `max_conns`; requests wait only for a server at `max_conns`"),
            );
        }
        if up.connect_attempts == 0 {
            p.at(
                &up.servers,
                format!("upstream `{name}`: `connect_attempts` must be at least 1"),
            );
        }
    }
}

/// The balancer's own settings appear only with the balancer that reads them.
fn check_balance(name: &str, up: &Upstream, p: &mut Problems) {
    let balance = up.balance;
    let fallback = up.sticky_fallback.as_ref().map(|f| *f.get_ref());
    if let Some(key) = &up.hash_key {
        let hashes = balance == Balance::ConsistentHash
            || (balance == Balance::StickyCookie && fallback == Some(Balance::ConsistentHash));
        if !hashes {
            p.at(
                key,
                format!(
                    r#"upstream `{name}` has `hash_key` but balances with "{}"; `hash_key` is read by balance = "consistent_hash" (or a sticky_cookie pool whose sticky_fallback is "consistent_hash")"#,
                    balance.name()
                ),
            );
        }
    }
    if let Some(f) = &up.sticky_fallback {
        if balance != Balance::StickyCookie {
            p.at(
                f,
                format!(
                    r#"upstream `{name}` has `sticky_fallback` but balances with "{}"; it applies only to balance = "sticky_cookie""#,
                    balance.name()
                ),
            );
        } else if *f.get_ref() == Balance::StickyCookie {
            p.at(
                f,
                r#"`sticky_fallback` cannot itself be "sticky_cookie"; use "round_robin", "least_conn", "random_two", "ip_hash" or "consistent_hash""#,
            );
        }
    }
    if let Some(cookie) = &up.cookie {
        if balance != Balance::StickyCookie {
            p.at(
                cookie,
                format!(
                    r#"upstream `{name}` has `cookie` but balances with "{}"; it applies only to balance = "sticky_cookie""#,
                    balance.name()
                ),
            );
        }
        let c = cookie.get_ref();
        if c.name.is_empty() || !c.name.bytes().all(is_token_byte) {
            p.at(
                cookie,
                format!(
                    r#"invalid cookie name "{}"; use letters, digits and - _ ."#,
                    c.name
                ),
            );
        }
        if c.secret.as_ref().is_some_and(|s| s.len() < 16) {
            p.at(
                cookie,
                "the cookie `secret` must be at least 16 characters (it is an HMAC key)",
            );
        }
    }
}

fn check_health(name: &str, hc: &Spanned<HealthCheck>, p: &mut Problems) {
    let c = hc.get_ref();
    let mut wrong = |message: String| p.at(hc, format!("upstream `{name}`: {message}"));
    if c.rise == 0 || c.fall == 0 {
        wrong("health_check `rise` and `fall` must be at least 1".into());
    }
    if !c.path.starts_with('/')
        || c.path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        wrong(format!(
            r#"health_check `path` must start with "/" and have no spaces, got {:?}"#,
            c.path
        ));
    }
    if c.interval.get().is_zero() {
        wrong("health_check `interval` must be more than 0".into());
    }
    if c.timeout.get().is_zero() || c.timeout.get() > c.interval.get() {
        wrong("health_check `timeout` must be more than 0 and at most `interval`".into());
    }
    match (c.kind, c.expect_status) {
        (ProbeKind::Websocket, Some(_)) => wrong(
            "health_check `expect_status` is for kind = \"http\"; a websocket probe needs 101"
                .into(),
        ),
        (_, Some(s)) if !(100..=599).contains(&s) => wrong(format!(
            "health_check `expect_status` {s} is not an HTTP status"
        )),
        _ => {}
    }
    if c.host.as_ref().is_some_and(|h| {
        h.is_empty()
            || h.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    }) {
        wrong("health_check `host` must be a host name, like \"backend.internal\"".into());
    }
}

fn valid_server_addr(addr: &str) -> bool {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok_and(|p| p != 0)
                && !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        None => false,
    }
}

fn check_plugins(config: &Config, p: &mut Problems) {
    for (name, plugin) in &config.plugins {
        if plugin.wasm.get_ref().is_empty() {
            p.at(
                &plugin.wasm,
                format!("plugin `{name}`: `wasm` must name a .wasm file"),
            );
        }
        if let Some(n) = &plugin.instances
            && *n.get_ref() == 0
        {
            p.at(
                n,
                format!("plugin `{name}`: `instances` must be at least 1"),
            );
        }
        if plugin.timeout.get().is_zero() {
            p.at(
                &plugin.wasm,
                format!("plugin `{name}`: `timeout` must be greater than zero"),
            );
        }
    }
}

fn check_websocket(route: &str, ws: &crate::WebSocket, p: &mut Problems) {
    for size in [&ws.max_message, &ws.max_frame].into_iter().flatten() {
        if size.get_ref().0 == 0 {
            p.at(
                size,
                format!("route `{route}`: a WebSocket size limit must be at least 1 byte"),
            );
        }
    }
    if let (Some(message), Some(frame)) = (&ws.max_message, &ws.max_frame)
        && frame.get_ref().0 > message.get_ref().0
    {
        p.at(
            frame,
            format!(
                "route `{route}`: `max_frame` is larger than `max_message`, so it never applies; \
                 make it smaller or leave it out"
            ),
        );
    }
    if let Some(rate) = &ws.message_rate
        && rate.get_ref().count == 0
    {
        p.at(
            rate,
            format!("route `{route}`: `message_rate` must allow at least 1 message"),
        );
    }
    for time in [&ws.ping_interval, &ws.pong_timeout].into_iter().flatten() {
        if time.get_ref().get().is_zero() {
            p.at(
                time,
                format!(
                    "route `{route}`: `ping_interval` and `pong_timeout` must be greater than zero"
                ),
            );
        }
    }
    if let Some(timeout) = &ws.pong_timeout
        && ws.ping_interval.is_none()
    {
        p.at(
            timeout,
            format!("route `{route}`: `pong_timeout` needs a `ping_interval`"),
        );
    }
    if let Some(burst) = &ws.burst {
        if ws.message_rate.is_none() {
            p.at(
                burst,
                format!("route `{route}`: `burst` needs a `message_rate`"),
            );
        } else if *burst.get_ref() == 0 {
            p.at(
                burst,
                format!("route `{route}`: `burst` must be at least 1"),
            );
        }
    }
}

fn check_drain(config: &Config, p: &mut Problems) {
    if let Some(spread) = &config.drain_spread
        && spread.get_ref().get() > config.shutdown_grace.get()
    {
        p.at(
            spread,
            format!(
                "`drain_spread` ({}) must not be longer than `shutdown_grace` ({}): tunnels \
                 still open when the grace ends are closed at once",
                humantime::format_duration(spread.get_ref().get()),
                humantime::format_duration(config.shutdown_grace.get()),
            ),
        );
    }
    let code = *config.drain_close_code.get_ref();
    if !matches!(code, 1001 | 1012 | 4000..=4999) {
        p.at(
            &config.drain_close_code,
            format!(
                "`drain_close_code` {code} is not a code to close with on a drain; use 1001 \
                 (going away), 1012 (service restart) or an application code 4000-4999"
            ),
        );
    }
}

fn check_telemetry(t: &crate::Telemetry, p: &mut Problems) {
    if let Err(why) = crate::split_endpoint(t.otlp_endpoint.get_ref()) {
        p.at(&t.otlp_endpoint, format!("`otlp_endpoint` {why}"));
    }
    let ratio = *t.sample_ratio.get_ref();
    if !(0.0..=1.0).contains(&ratio) {
        p.at(
            &t.sample_ratio,
            "`sample_ratio` must be between 0.0 (no new trace sampled) and 1.0 (every one)",
        );
    }
    if *t.max_queue.get_ref() == 0 {
        p.at(&t.max_queue, "`max_queue` must be at least 1 span");
    }
    if t.export_timeout.get_ref().get().is_zero() {
        p.at(
            &t.export_timeout,
            "`export_timeout` must be greater than zero",
        );
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    // The values are secrets: these errors name the header and say what is wrong, without
    // the source line that would show the value.
    for (name, value) in &t.headers {
        if name.is_empty() || !name.chars().all(token) {
            p.whole_file(format!(
                "[telemetry] headers: {name:?} is not a valid HTTP header name"
            ));
        }
        if value
            .get_ref()
            .0
            .chars()
            .any(|c| c != '\t' && (c.is_control() || !c.is_ascii()))
        {
            p.whole_file(format!(
                "[telemetry] headers: the value of `{name}` has control or non-ASCII characters"
            ));
        }
    }
}

fn check_limits(config: &Config, p: &mut Problems) {
    if let Some(max) = &config.max_connections
        && *max.get_ref() == 0
    {
        p.at(
            max,
            "`max_connections` must be at least 1 (leave it out for no limit)",
        );
    }
    for (name, limit) in &config.limits {
        check_limit(name, limit, p);
    }
}

fn check_limit(name: &str, table: &Spanned<Limit>, p: &mut Problems) {
    let limit = table.get_ref();
    if limit.rate.is_none() && limit.concurrent.is_none() {
        p.at(
            table,
            format!(
                r#"limit `{name}` limits nothing; set `rate` (like "10/s"), `concurrent`, or both"#
            ),
        );
    }
    if let Some(rate) = &limit.rate
        && rate.get_ref().count == 0
    {
        p.at(
            rate,
            format!(
                "limit `{name}`: a `rate` of 0 admits nothing; remove the route's limit instead"
            ),
        );
    }
    match (&limit.burst, &limit.rate) {
        (Some(burst), None) => p.at(
            burst,
            format!("limit `{name}` has `burst` but no `rate`; `burst` is how far a rate may be exceeded at once"),
        ),
        (Some(burst), Some(_)) if *burst.get_ref() == 0 => p.at(
            burst,
            format!("limit `{name}`: `burst` must be at least 1"),
        ),
        _ => {}
    }
    if let Some(c) = &limit.concurrent
        && *c.get_ref() == 0
    {
        p.at(
            c,
            format!("limit `{name}`: `concurrent` must be at least 1"),
        );
    }
    if *limit.max_keys.get_ref() == 0 {
        p.at(
            &limit.max_keys,
            format!("limit `{name}`: `max_keys` must be at least 1"),
        );
    }
    if *limit.store.get_ref() == Store::Local {
        for (key, span) in [
            (
                "on_store_error",
                limit.on_store_error.as_ref().map(|s| s.span()),
            ),
            (
                "store_timeout",
                limit.store_timeout.as_ref().map(|s| s.span()),
            ),
        ] {
            if let Some(span) = span {
                p.0.push(Problem {
                    span: Some(span),
                    message: format!(
                        r#"limit `{name}` has `{key}` but its store is local; `{key}` applies to store = "redis://...""#
                    ),
                });
            }
        }
    } else if limit.rate.is_none() {
        p.at(
            table,
            format!("limit `{name}` has a shared store but no `rate`; only rates are shared (concurrent counts stay in each instance)"),
        );
    }
    if let Some(t) = &limit.store_timeout
        && t.get_ref().get().is_zero()
    {
        p.at(
            t,
            format!("limit `{name}`: `store_timeout` must be greater than zero"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::valid_server_addr;

    #[test]
    fn server_addresses() {
        assert!(valid_server_addr("127.0.0.1:9001"));
        assert!(valid_server_addr("[::1]:9001"));
        assert!(valid_server_addr("backend.internal:80"));
        assert!(!valid_server_addr("backend.internal"));
        assert!(!valid_server_addr("backend:0"));
        assert!(!valid_server_addr(":80"));
        assert!(!valid_server_addr("http://backend:80"));
    }
}
