//! {{name}}: an airlock handshake plugin in Rust.
//!
//! airlock calls `configure` once per instance with the plugin's `config` table as JSON,
//! then `on_handshake` for every request on the routes that list the plugin. Edit
//! `on_handshake`; `cargo build --release --target wasm32-wasip2` makes
//! `target/wasm32-wasip2/release/{{file}}.wasm`, `cargo test` tests the logic natively.

use std::sync::OnceLock;

use airlock_plugin_sdk::{MutationsExt as _, Plugin, Request, Verdict, allow_with, export, no_changes, reject};

static ALLOWED: OnceLock<Vec<String>> = OnceLock::new();

struct {{type_name}};

impl Plugin for {{type_name}} {
    fn configure(config: String) -> Result<(), String> {
        let config: serde_json::Value = serde_json::from_str(&config).map_err(|e| e.to_string())?;
        let allow = config["allow"]
            .as_array()
            .and_then(|list| list.iter().map(|o| o.as_str().map(String::from)).collect::<Option<Vec<_>>>())
            .ok_or(r#"config.allow must be a list of origins, like ["https://app.example.com"]"#)?;
        // A new instance is configured the same way; the first list stays.
        let _ = ALLOWED.set(allow);
        Ok(())
    }

    /// Admit listed origins, refuse the rest.
    fn on_handshake(request: Request<'_>) -> Verdict {
        let allowed = ALLOWED.get().map(Vec::as_slice).unwrap_or_default();
        match request.header("origin") {
            Some(origin) if allowed.iter().any(|a| *a == origin) => {
                allow_with(no_changes().attribute("origin", origin.as_ref()))
            }
            _ => reject(403, "origin not allowed\n"),
        }
    }
}

export!({{type_name}});

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(origin: &str) -> Verdict {
        {{type_name}}::configure(r#"{"allow": ["https://app.example.com"]}"#.into()).unwrap();
        let handshake = airlock_plugin_sdk::test_request("/ws", &[("origin", origin)]);
        {{type_name}}::on_handshake(Request::from(&handshake))
    }

    #[test]
    fn a_listed_origin_is_admitted() {
        assert!(matches!(decide("https://app.example.com"), Verdict::Allow(_)));
    }

    #[test]
    fn another_origin_is_refused() {
        let Verdict::Reject(rejection) = decide("https://evil.example") else {
            panic!("admitted");
        };
        assert_eq!(rejection.status, 403);
    }
}
