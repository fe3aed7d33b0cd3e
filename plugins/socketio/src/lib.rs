//! Admit only well-formed Engine.IO requests (the transport under Socket.IO), and make the
//! session id the affinity key so a client's polling requests and its WebSocket upgrade
//! can stay on one server.
//!
//! ```toml
//! [plugin.socketio]
//! wasm = "socketio.wasm"
//! config = { path = "/socket.io/", versions = [4] }
//! ```
//!
//! Rejections are `400` with an Engine.IO-style JSON body, `{"code":N,"message":"..."}`,
//! using Engine.IO's own codes: 0 unknown transport, 1 unknown session id, 2 bad handshake
//! method, 3 bad request, 5 unsupported protocol version.

use std::sync::OnceLock;

use airlock_plugin_sdk::{
    MutationsExt as _, Plugin, Request, Verdict, allow_with, export, no_changes, query_params,
    reject_with,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_versions")]
    versions: Vec<u32>,
}

fn default_path() -> String {
    "/socket.io/".into()
}

fn default_versions() -> Vec<u32> {
    vec![4]
}

#[derive(Debug)]
pub struct Policy {
    path: String,
    versions: Vec<u32>,
}

/// Engine.IO's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    UnsupportedProtocolVersion = 5,
}

impl Code {
    fn message(self) -> &'static str {
        match self {
            Code::UnknownTransport => "Transport unknown",
            Code::UnknownSid => "Session ID unknown",
            Code::BadHandshakeMethod => "Bad handshake method",
            Code::BadRequest => "Bad request",
            Code::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

/// A session id as Engine.IO servers issue them: base64url characters, bounded length.
fn valid_sid(sid: &str) -> bool {
    (1..=64).contains(&sid.len())
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Policy {
    pub fn from_json(json: &str) -> Result<Self, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| format!("invalid config: {e}"))?;
        if !c.path.starts_with('/') {
            return Err(format!("`path` must start with \"/\", got {:?}", c.path));
        }
        if c.versions.is_empty() {
            return Err("`versions` is empty: every request would be rejected".into());
        }
        let path = if c.path.ends_with('/') {
            c.path
        } else {
            format!("{}/", c.path)
        };
        Ok(Self {
            path,
            versions: c.versions,
        })
    }

    /// `Ok(affinity key)` for an acceptable request, `Err(code)` otherwise.
    ///
    /// Each request field is read once: in airlock, every read copies it into this
    /// plugin's memory.
    pub fn check<'a>(&self, r: impl Into<Request<'a>>) -> Result<Option<String>, Code> {
        let r = r.into();
        // "/socket.io/" and "/socket.io" both address the endpoint.
        let path = r.path();
        let under_path = path.starts_with(&self.path) || path == self.path.trim_end_matches('/');
        if !under_path {
            return Err(Code::BadRequest);
        }
        let query = r.query().unwrap_or_default();
        let [version, sid, transport] = query_params(&query, ["EIO", "sid", "transport"]);
        let version = version.and_then(|v| v.parse::<u32>().ok());
        if !version.is_some_and(|v| self.versions.contains(&v)) {
            return Err(Code::UnsupportedProtocolVersion);
        }
        if let Some(sid) = &sid
            && !valid_sid(sid)
        {
            return Err(Code::UnknownSid);
        }
        match transport.as_deref() {
            Some("websocket") => {
                if r.upgrade().as_deref() != Some("websocket") || r.method() != "GET" {
                    return Err(Code::BadRequest);
                }
            }
            Some("polling") => {
                if r.upgrade().is_some() {
                    return Err(Code::BadRequest);
                }
                match &*r.method() {
                    "GET" => {}
                    // Sending data needs a session.
                    "POST" if sid.is_some() => {}
                    _ => return Err(Code::BadHandshakeMethod),
                }
            }
            _ => return Err(Code::UnknownTransport),
        }
        Ok(sid)
    }

    pub fn decide<'a>(&self, r: impl Into<Request<'a>>) -> Verdict {
        match self.check(r) {
            Ok(Some(sid)) => allow_with(no_changes().affinity_key(sid)),
            Ok(None) => allow_with(no_changes()),
            Err(code) => reject_with(
                400,
                serde_json::json!({ "code": code as u8, "message": code.message() }).to_string(),
                vec![("content-type".into(), "application/json".into())],
            ),
        }
    }
}

static POLICY: OnceLock<Policy> = OnceLock::new();

struct SocketIo;

impl Plugin for SocketIo {
    fn configure(config: String) -> Result<(), String> {
        POLICY
            .set(Policy::from_json(&config)?)
            .map_err(|_| "configured twice".to_string())
    }

    fn on_handshake(request: Request<'_>) -> Verdict {
        POLICY
            .get()
            .expect("configure runs before any handshake")
            .decide(request)
    }
}

export!(SocketIo);

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_plugin_sdk::{Handshake, test_request};

    fn policy() -> Policy {
        Policy::from_json("{}").unwrap()
    }

    fn ws(path: &str) -> Handshake {
        test_request(path, &[("upgrade", "websocket")])
    }

    fn post(path: &str) -> Handshake {
        let mut r = test_request(path, &[]);
        r.method = "POST".into();
        r
    }

    #[test]
    fn v4_polling_and_websocket_are_admitted() {
        let p = policy();
        assert_eq!(
            p.check(&test_request(
                "/socket.io/?EIO=4&transport=polling&t=N8hyd6w",
                &[]
            )),
            Ok(None)
        );
        assert_eq!(
            p.check(&post(
                "/socket.io/?EIO=4&transport=polling&sid=lv_VI97HAXpY6yYWAAAC"
            )),
            Ok(Some("lv_VI97HAXpY6yYWAAAC".into()))
        );
        assert_eq!(
            p.check(&ws("/socket.io/?EIO=4&transport=websocket&sid=abc")),
            Ok(Some("abc".into()))
        );
        assert_eq!(
            p.check(&ws("/socket.io?EIO=4&transport=websocket")),
            Ok(None)
        );
    }

    #[test]
    fn other_versions_transports_and_paths_are_refused() {
        let p = policy();
        assert_eq!(
            p.check(&test_request("/socket.io/?EIO=3&transport=polling", &[])),
            Err(Code::UnsupportedProtocolVersion)
        );
        assert_eq!(
            p.check(&test_request("/socket.io/?transport=polling", &[])),
            Err(Code::UnsupportedProtocolVersion)
        );
        assert_eq!(
            p.check(&test_request(
                "/socket.io/?EIO=4&transport=flashsocket",
                &[]
            )),
            Err(Code::UnknownTransport)
        );
        assert_eq!(
            p.check(&test_request("/socket.io/?EIO=4", &[])),
            Err(Code::UnknownTransport)
        );
        assert_eq!(
            p.check(&test_request("/other/?EIO=4&transport=polling", &[])),
            Err(Code::BadRequest)
        );
        // WebSocket transport without the upgrade, or an upgrade on the polling transport.
        assert_eq!(
            p.check(&test_request("/socket.io/?EIO=4&transport=websocket", &[])),
            Err(Code::BadRequest)
        );
        assert_eq!(
            p.check(&ws("/socket.io/?EIO=4&transport=polling")),
            Err(Code::BadRequest)
        );
        // POST without a session, and other methods.
        assert_eq!(
            p.check(&post("/socket.io/?EIO=4&transport=polling")),
            Err(Code::BadHandshakeMethod)
        );
        let mut put = test_request("/socket.io/?EIO=4&transport=polling&sid=abc", &[]);
        put.method = "PUT".into();
        assert_eq!(p.check(&put), Err(Code::BadHandshakeMethod));
    }

    #[test]
    fn malformed_session_ids_are_refused() {
        let p = policy();
        for sid in ["a%20b", "../etc", "x".repeat(65).as_str(), "a.b"] {
            let r = test_request(
                &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
                &[],
            );
            assert_eq!(p.check(&r), Err(Code::UnknownSid), "{sid}");
        }
    }

    #[test]
    fn rejections_are_engine_io_json() {
        let Verdict::Reject(r) =
            policy().decide(&test_request("/socket.io/?EIO=3&transport=polling", &[]))
        else {
            panic!()
        };
        assert_eq!(r.status, 400);
        assert_eq!(
            r.body,
            r#"{"code":5,"message":"Unsupported protocol version"}"#
        );
    }

    #[test]
    fn config_is_checked() {
        assert!(Policy::from_json(r#"{"path": "socket.io"}"#).is_err());
        assert!(Policy::from_json(r#"{"versions": []}"#).is_err());
        let p = Policy::from_json(r#"{"path": "/rt", "versions": [3, 4]}"#).unwrap();
        assert_eq!(
            p.check(&test_request("/rt/?EIO=3&transport=polling", &[])),
            Ok(None)
        );
    }
}
