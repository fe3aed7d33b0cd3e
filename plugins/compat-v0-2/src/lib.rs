//! A plugin for `airlock:plugin@0.2.0`, the interface before `limit-key`, built from
//! `wit/v0.2.0/` without the SDK (which is for 0.3). airlock's tests use it to check that
//! plugins built for 0.2 still load and have their verdicts applied. Its config:
//!
//! - `set_headers = [["name", "value"]]`: headers to set on the upstream request;
//! - `reject_unless_header = "name"`: reject with 412 unless the request has it.

#![allow(unsafe_code)]

use std::sync::OnceLock;

use serde::Deserialize;

wit_bindgen::generate!({
    world: "handshake-plugin",
    path: "../../wit/v0.2.0",
});

use airlock::plugin::types::{Mutations, Rejection};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    set_headers: Vec<(String, String)>,
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

    fn on_handshake(request: &Request) -> Verdict {
        let config = CONFIG.get().expect("configured");
        if let Some(name) = &config.reject_unless_header
            && request.header(name).is_none()
        {
            return Verdict::Reject(Rejection {
                status: 412,
                body: format!("expected header {name}\n"),
                headers: Vec::new(),
            });
        }
        Verdict::Allow(Mutations {
            path: None,
            query: None,
            set_headers: config.set_headers.clone(),
            remove_headers: Vec::new(),
            upstream: None,
            affinity_key: None,
            subprotocol: None,
            response_headers: Vec::new(),
            attributes: Vec::new(),
        })
    }
}

export!(Compat);
