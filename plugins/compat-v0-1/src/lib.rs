//! A plugin for `airlock:plugin@0.1.0`, the interface that passes the request as a record,
//! built from `wit/v0.1.0/` without the SDK (which is for 0.3). airlock's tests use it to
//! check that plugins built for 0.1 still load, are sent only the headers they want, and
//! have their verdicts applied. Its config:
//!
//! - `wanted_headers = ["x-keep"]`: what `wanted-headers` returns (default: all);
//! - `set_headers = [["name", "value"]]`: headers to set on the upstream request;
//! - `echo_request_header = "x-seen"`: a response header with the JSON of the record's
//!   path, route, upgrade and header names;
//! - `reject_unless_header = "name"`: reject with 412 unless the record carries it.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use serde::Deserialize;

wit_bindgen::generate!({
    world: "handshake-plugin",
    path: "../../wit/v0.1.0",
});

use airlock::plugin::types::{Mutations, Rejection};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    wanted_headers: Option<Vec<String>>,
    #[serde(default)]
    set_headers: Vec<(String, String)>,
    #[serde(default)]
    echo_request_header: Option<String>,
    #[serde(default)]
    reject_unless_header: Option<String>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct Compat;

impl Guest for Compat {
    fn configure(config: String) -> Result<(), String> {
        let config = serde_json::from_str(&config).map_err(|e| format!("invalid config: {e}"))?;
        CONFIG.set(config).map_err(|_| "configured twice".into())
    }

    fn wanted_headers() -> Option<Vec<String>> {
        CONFIG.get().expect("configured").wanted_headers.clone()
    }

    fn on_handshake(request: Handshake) -> Verdict {
        let config = CONFIG.get().expect("configured");
        if let Some(name) = &config.reject_unless_header
            && !request.headers.iter().any(|(n, _)| n == name)
        {
            return Verdict::Reject(Rejection {
                status: 412,
                body: format!("expected header {name}\n"),
                headers: Vec::new(),
            });
        }
        let mut response_headers = Vec::new();
        if let Some(name) = &config.echo_request_header {
            let seen = serde_json::json!({
                "path": request.path,
                "route": request.route,
                "upgrade": request.upgrade,
                "header_names": request.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            });
            response_headers.push((name.clone(), seen.to_string()));
        }
        Verdict::Allow(Mutations {
            path: None,
            query: None,
            set_headers: config.set_headers.clone(),
            remove_headers: Vec::new(),
            upstream: None,
            affinity_key: None,
            subprotocol: None,
            response_headers,
            attributes: Vec::new(),
        })
    }
}

export!(Compat);
