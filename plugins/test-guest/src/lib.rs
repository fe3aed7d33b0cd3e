//! A guest for airlock's tests. Its config says what it does on each handshake:
//!
//! - `mode`: `"allow"` (default), `"loop"` (forever), `"alloc"` (without bound),
//!   `"spin"` (busy for `spin_ms` of wall-clock time, then allow),
//!   `"panic"`, `"trap"` (`unreachable`), `"print"` (write to stdout, which plugins do
//!   not have), or `"refuse-config"` (fail `configure`).
//! - `require_header = ["name", "value"]`: reject with 412 unless the request has it
//!   (to prove a plugin sees the changes of the ones before it).
//! - `reject = { status = 451, body = "..." }`: reject.
//! - Mutations: `set_headers`, `remove_headers`, `response_headers`, `attributes`
//!   (lists of pairs or names), `path`, `query`, `upstream`, `subprotocol`.
//! - `limit_key_header = "x-user"`: the limit key is that header's value, when present.
//! - `echo_request_header = "x-seen"`: add a response header with the JSON of what the
//!   plugin saw (path, query, client address, upgrade, subprotocols, header names).

use std::sync::OnceLock;

use airlock_plugin_sdk::{
    Mutations, MutationsExt as _, Plugin, Request, Verdict, allow_with, export, no_changes, reject,
};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Script {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    spin_ms: u64,
    #[serde(default)]
    require_header: Option<(String, String)>,
    #[serde(default)]
    reject: Option<Reject>,
    #[serde(default)]
    set_headers: Vec<(String, String)>,
    #[serde(default)]
    remove_headers: Vec<String>,
    #[serde(default)]
    response_headers: Vec<(String, String)>,
    #[serde(default)]
    attributes: Vec<(String, String)>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    subprotocol: Option<String>,
    #[serde(default)]
    echo_request_header: Option<String>,
    #[serde(default)]
    limit_key_header: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Reject {
    status: u16,
    body: String,
}

static SCRIPT: OnceLock<Script> = OnceLock::new();

struct TestGuest;

impl Plugin for TestGuest {
    fn configure(config: String) -> Result<(), String> {
        let script: Script =
            serde_json::from_str(&config).map_err(|e| format!("invalid config: {e}"))?;
        if script.mode.as_deref() == Some("refuse-config") {
            return Err("this configuration is refused on purpose".into());
        }
        SCRIPT
            .set(script)
            .map_err(|_| "configured twice".to_string())
    }

    fn on_handshake(request: Request<'_>) -> Verdict {
        let script = SCRIPT.get().expect("configured");
        match script.mode.as_deref() {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("spin") => {
                let until =
                    std::time::Instant::now() + std::time::Duration::from_millis(script.spin_ms);
                while std::time::Instant::now() < until {
                    std::hint::spin_loop();
                }
            }
            Some("alloc") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("panic") => panic!("the test guest panics on purpose"),
            Some("trap") => std::process::abort(),
            Some("print") => println!("plugins have no stdout"),
            _ => {}
        }
        if let Some((name, value)) = &script.require_header
            && request.header(name).as_deref() != Some(value.as_str())
        {
            return reject(412, format!("expected header {name}: {value}\n"));
        }
        if let Some(r) = &script.reject {
            return reject(r.status, r.body.clone());
        }
        allow_with(mutations(script, request))
    }
}

fn mutations(script: &Script, request: Request<'_>) -> Mutations {
    let mut m = no_changes();
    for (k, v) in &script.set_headers {
        m = m.set_header(k, v.clone());
    }
    for k in &script.remove_headers {
        m = m.remove_header(k);
    }
    for (k, v) in &script.response_headers {
        m = m.response_header(k, v.clone());
    }
    for (k, v) in &script.attributes {
        m = m.attribute(k, v.clone());
    }
    if let Some(name) = &script.echo_request_header {
        let seen = serde_json::json!({
            "id": request.id(),
            "path": request.path(),
            "query": request.query(),
            "client_addr": request.client_addr(),
            "upgrade": request.upgrade(),
            "subprotocols": request.subprotocols(),
            "route": request.route(),
            "method": request.method(),
            "authority": request.authority(),
            "header_names": request.headers().into_iter().map(|(n, _)| n).collect::<Vec<_>>(),
            "scheme": request.scheme(),
            "tls": request.tls().map(|t| serde_json::json!({
                "sni": t.sni,
                "alpn": t.alpn,
                "version": t.version,
                "client_cert_subject": t.client_cert_subject,
                "client_cert_sans": t.client_cert_sans,
            })),
        });
        m = m.response_header(name, seen.to_string());
    }
    if let Some(key) = script
        .limit_key_header
        .as_ref()
        .and_then(|name| request.header(name))
    {
        m = m.limit_key(key);
    }
    m.path = script.path.clone();
    m.query = script.query.clone();
    m.upstream = script.upstream.clone();
    m.subprotocol = script.subprotocol.clone();
    m
}

export!(TestGuest);
