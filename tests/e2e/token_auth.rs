//! The token-auth example plugin through the real binary: HS256 JWTs in each carrier a
//! client can use, valid and not, and the token never reaching the upstream or the log.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt as _;
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http;

use crate::plugins::with_plugins;
use crate::support::{Airlock, Backend, plugin_wasm};

const SECRET: &str = "e2e-secret-that-is-32-bytes-long";

/// An HS256 JWT with `claims`, signed with `secret`.
fn jwt(secret: &str, claims: Value) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn start(backend: &Backend) -> Airlock {
    let table = format!(
        "[plugin.auth]\nwasm = \"{}\"\nconfig = {{ secret = \"{SECRET}\", audience = \"chat\", leeway_seconds = 0 }}\n",
        plugin_wasm("token_auth.wasm")
    );
    Airlock::start(&with_plugins(backend, &["auth"], &table))
}

#[derive(Clone, Copy, Debug)]
enum Carrier {
    Header,
    Query,
    Cookie,
    Protocol,
}

const CARRIERS: [Carrier; 4] = [
    Carrier::Header,
    Carrier::Query,
    Carrier::Cookie,
    Carrier::Protocol,
];

/// A WebSocket handshake to `/headers` carrying `token` in `carrier` (and a client
/// attempt to name its own subject). `Ok` has the 101's headers and what the upstream
/// saw; `Err` the refusal's status, `WWW-Authenticate` and body.
async fn handshake(
    addr: std::net::SocketAddr,
    carrier: Carrier,
    token: &str,
) -> Result<(http::HeaderMap, Value), (u16, String, String)> {
    let query = match carrier {
        Carrier::Query => format!("?room=7&access_token={token}"),
        _ => "?room=7".into(),
    };
    let mut request = format!("ws://{addr}/headers{query}")
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("x-auth-subject", "mallory".parse().unwrap());
    match carrier {
        Carrier::Header => {
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Carrier::Cookie => {
            let cookies = format!("theme=dark; access_token={token}");
            headers.insert("cookie", cookies.parse().unwrap());
        }
        Carrier::Protocol => {
            let offer = format!("access_token, {token}");
            headers.insert("sec-websocket-protocol", offer.parse().unwrap());
        }
        Carrier::Query => {}
    }
    match connect_async(request).await {
        Ok((mut ws, response)) => {
            let greeting = ws.next().await.unwrap().unwrap().into_text().unwrap();
            let seen = greeting.strip_prefix("request:").unwrap();
            Ok((
                response.headers().clone(),
                serde_json::from_str(seen).unwrap(),
            ))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let challenge = response
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default());
            Err((response.status().as_u16(), challenge, body.into_owned()))
        }
        Err(e) => panic!("{carrier:?}: handshake failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_in_any_carrier_is_admitted_and_stripped_before_the_upstream() {
    let backend = Backend::start("a").await;
    let airlock = start(&backend);
    let token = jwt(
        SECRET,
        json!({ "sub": "alice", "aud": "chat", "exp": now() + 300 }),
    );
    for carrier in CARRIERS {
        let (response, seen) = handshake(airlock.addr(), carrier, &token)
            .await
            .unwrap_or_else(|e| panic!("{carrier:?} refused: {e:?}"));
        let h = &seen["headers"];
        assert_eq!(seen["uri"], "/headers?room=7", "{carrier:?}");
        assert_eq!(h["x-auth-subject"], "alice", "{carrier:?}");
        assert!(h.get("authorization").is_none(), "{carrier:?}: {h}");
        assert!(
            h.get("sec-websocket-protocol").is_none(),
            "{carrier:?}: {h}"
        );
        match carrier {
            Carrier::Cookie => assert_eq!(h["cookie"], "theme=dark"),
            _ => assert!(h.get("cookie").is_none(), "{carrier:?}: {h}"),
        }
        // A browser that offered ["access_token", token] needs one of them selected.
        let selected = response.get("sec-websocket-protocol");
        match carrier {
            Carrier::Protocol => assert_eq!(selected.unwrap(), "access_token"),
            _ => assert!(selected.is_none(), "{carrier:?}"),
        }
        assert!(
            !seen.to_string().contains(&token),
            "{carrier:?}: token reached the upstream"
        );
    }
    let line = airlock
        .wait_for_log("access line", |v| v["http.response.status_code"] == 101)
        .await;
    assert_eq!(line["plugin.attributes"], "subject=alice");
    assert!(
        !airlock.dump_logs().contains(&token),
        "the token reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_foreign_forged_and_missing_tokens_get_401_in_every_carrier() {
    let backend = Backend::start("a").await;
    let airlock = start(&backend);
    let t = now();
    let cases = [
        (
            jwt(
                SECRET,
                json!({ "sub": "alice", "aud": "chat", "exp": t - 5 }),
            ),
            "access token expired",
        ),
        (
            jwt(
                SECRET,
                json!({ "sub": "alice", "aud": "billing", "exp": t + 300 }),
            ),
            "access token is for another audience",
        ),
        (
            jwt(
                SECRET,
                json!({ "sub": "alice", "aud": "chat", "exp": t + 300, "nbf": t + 200 }),
            ),
            "access token not valid yet",
        ),
        (
            jwt(
                "a-different-secret-also-32-bytes",
                json!({ "sub": "alice", "aud": "chat", "exp": t + 300 }),
            ),
            "access token signature does not verify",
        ),
    ];
    for carrier in CARRIERS {
        for (token, reason) in &cases {
            let (status, challenge, body) = handshake(airlock.addr(), carrier, token)
                .await
                .expect_err("admitted");
            assert_eq!(status, 401, "{carrier:?} {reason}");
            assert_eq!(body, format!("{reason}\n"), "{carrier:?}");
            assert_eq!(
                challenge,
                format!(
                    "Bearer realm=\"airlock\", error=\"invalid_token\", error_description=\"{reason}\""
                ),
                "{carrier:?}"
            );
        }
    }
    // No token at all; and a plain HTTP request on the same route.
    let mut request = format!("ws://{}/headers", airlock.addr())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", "Basic YWxpY2U6cHc=".parse().unwrap());
    match connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 401);
            assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"airlock\"");
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(
        crate::support::client::get(airlock.addr(), "/api")
            .await
            .status,
        401
    );
    let line = airlock
        .wait_for_log("rejection", |v| v["http.response.status_code"] == 401)
        .await;
    assert_eq!(line["plugin"], "auth", "{line}");
    let logs = airlock.dump_logs();
    for (token, _) in &cases {
        assert!(!logs.contains(token.as_str()), "a token reached the log");
    }
    // The proxy still admits a good token afterwards.
    let good = jwt(
        SECRET,
        json!({ "sub": "bob", "aud": "chat", "exp": t + 300 }),
    );
    assert!(
        handshake(airlock.addr(), Carrier::Header, &good)
            .await
            .is_ok()
    );
}
