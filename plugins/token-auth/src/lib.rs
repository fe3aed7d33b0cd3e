//! Admit only requests that carry a valid HMAC-signed JWT (HS256, HS384 or HS512);
//! everything else gets `401` with an RFC 6750 `WWW-Authenticate` challenge.
//!
//! ```toml
//! [plugin.auth]
//! wasm = "token_auth.wasm"
//! config = { secret = "…at least 32 bytes…", audience = "chat", subject_header = "x-auth-subject" }
//! ```
//!
//! The token may come in the `Authorization: Bearer` header, an `access_token` query
//! parameter, an `access_token` cookie, or — for browsers, whose WebSocket API cannot set
//! headers — as the subprotocol after `access_token` in `Sec-WebSocket-Protocol`
//! (`new WebSocket(url, ["access_token", token])`). Wherever it came from, the token is
//! removed from what the upstream sees, and the plugin never logs it.

use std::borrow::Cow;
use std::sync::OnceLock;

use airlock_plugin_sdk::{
    Mutations, MutationsExt as _, Plugin, Request, Verdict, allow_with, cookie, cookies_without,
    export, no_changes, now_unix_ms, query_param, query_without, reject_with,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The shared secret as text (its UTF-8 bytes are the key).
    secret: Option<String>,
    /// The shared secret as standard base64, for keys that are not text.
    secret_base64: Option<String>,
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    /// Accepted audiences; when set, the token's `aud` must name one of them.
    audience: Option<OneOrMany>,
    /// When set, the token's `iss` must equal it.
    issuer: Option<String>,
    #[serde(default = "default_true")]
    require_exp: bool,
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    #[serde(default = "default_sources")]
    sources: Vec<Source>,
    #[serde(default = "default_carrier_name")]
    query_param: String,
    #[serde(default = "default_carrier_name")]
    cookie: String,
    #[serde(default = "default_carrier_name")]
    protocol: String,
    #[serde(default = "default_subject_header")]
    subject_header: String,
    #[serde(default = "default_realm")]
    realm: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn default_algorithms() -> Vec<String> {
    vec!["HS256".into()]
}
fn default_true() -> bool {
    true
}
fn default_leeway() -> u64 {
    30
}
fn default_sources() -> Vec<Source> {
    vec![
        Source::Header,
        Source::Query,
        Source::Cookie,
        Source::Protocol,
    ]
}
fn default_carrier_name() -> String {
    "access_token".into()
}
fn default_subject_header() -> String {
    "x-auth-subject".into()
}
fn default_realm() -> String {
    "airlock".into()
}

/// Where a token may be carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `Authorization: Bearer <token>`.
    Header,
    /// The `query_param` query parameter.
    Query,
    /// The `cookie` cookie.
    Cookie,
    /// The subprotocol offered right after `protocol` in `Sec-WebSocket-Protocol`.
    Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Hs256,
    Hs384,
    Hs512,
}

impl Algorithm {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "HS256" => Some(Self::Hs256),
            "HS384" => Some(Self::Hs384),
            "HS512" => Some(Self::Hs512),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Hs384 => "HS384",
            Self::Hs512 => "HS512",
        }
    }

    /// RFC 7518 §3.2: the key must be at least as long as the hash output.
    fn min_key_len(self) -> usize {
        match self {
            Self::Hs256 => 32,
            Self::Hs384 => 48,
            Self::Hs512 => 64,
        }
    }
}

/// The secret keyed into one algorithm's MAC. Done once at configure time: HMAC hashes
/// the padded key before any message, so this saves two hash blocks on every call.
enum KeyedMac {
    Hs256(Hmac<sha2::Sha256>),
    Hs384(Hmac<sha2::Sha384>),
    Hs512(Hmac<sha2::Sha512>),
}

impl KeyedMac {
    fn new(alg: Algorithm, key: &[u8]) -> Self {
        fn keyed<M: Mac + KeyInit>(key: &[u8]) -> M {
            <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length")
        }
        match alg {
            Algorithm::Hs256 => Self::Hs256(keyed(key)),
            Algorithm::Hs384 => Self::Hs384(keyed(key)),
            Algorithm::Hs512 => Self::Hs512(keyed(key)),
        }
    }

    /// Whether `signature` is the MAC of `input`, compared in constant time.
    fn verify(&self, input: &[u8], signature: &[u8]) -> bool {
        fn check<M: Mac + Clone>(mac: &M, input: &[u8], signature: &[u8]) -> bool {
            let mut mac = mac.clone();
            mac.update(input);
            mac.verify_slice(signature).is_ok()
        }
        match self {
            Self::Hs256(mac) => check(mac, input, signature),
            Self::Hs384(mac) => check(mac, input, signature),
            Self::Hs512(mac) => check(mac, input, signature),
        }
    }
}

/// The parts of a JWS header that matter here.
#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    /// RFC 7515 §4.1.11: extensions we do not understand must not be ignored.
    crit: Option<IgnoredAny>,
}

/// The registered claims checked here; others are ignored.
#[derive(Deserialize)]
struct Claims {
    exp: Option<f64>,
    nbf: Option<f64>,
    aud: Option<OneOrMany>,
    iss: Option<String>,
    sub: Option<String>,
}

/// Why a request was refused. The description goes to the client (body and
/// `error_description`); it never contains the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    Algorithm,
    Signature,
    NoExpiry,
    Expired,
    NotYetValid,
    Audience,
    Issuer,
}

impl Failure {
    pub fn description(self) -> &'static str {
        match self {
            Self::Missing => "no access token",
            Self::Malformed => "malformed access token",
            Self::Algorithm => "access token signed with an algorithm that is not accepted",
            Self::Signature => "access token signature does not verify",
            Self::NoExpiry => "access token has no expiry",
            Self::Expired => "access token expired",
            Self::NotYetValid => "access token not valid yet",
            Self::Audience => "access token is for another audience",
            Self::Issuer => "access token is from another issuer",
        }
    }
}

/// The configured policy. Deliberately not `Debug`: it holds the secret.
pub struct Policy {
    /// A keyed MAC for each accepted algorithm.
    macs: Vec<(Algorithm, KeyedMac)>,
    audiences: Vec<String>,
    issuer: Option<String>,
    require_exp: bool,
    leeway: u64,
    sources: Vec<Source>,
    query_param: String,
    cookie: String,
    protocol: String,
    subject_header: String,
    realm: String,
}

impl Policy {
    pub fn from_json(json: &str) -> Result<Self, String> {
        let c: Config = serde_json::from_str(json).map_err(|e| format!("invalid config: {e}"))?;
        let key = match (c.secret, c.secret_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("`secret_base64` is not valid base64: {e}"))?,
            (None, None) => return Err("set `secret` or `secret_base64`".into()),
            (Some(_), Some(_)) => {
                return Err("set only one of `secret` and `secret_base64`".into());
            }
        };
        if c.algorithms.is_empty() {
            return Err("`algorithms` is empty: every token would be rejected".into());
        }
        let algorithms = c
            .algorithms
            .iter()
            .map(|name| {
                Algorithm::parse(name).ok_or_else(|| {
                    format!("unknown algorithm {name:?} (token-auth supports HS256, HS384, HS512)")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for alg in &algorithms {
            if key.len() < alg.min_key_len() {
                return Err(format!(
                    "the secret is {} bytes; {} needs at least {} (RFC 7518 §3.2)",
                    key.len(),
                    alg.name(),
                    alg.min_key_len()
                ));
            }
        }
        let audiences = match c.audience {
            None => Vec::new(),
            Some(OneOrMany::One(a)) => vec![a],
            Some(OneOrMany::Many(list)) if list.is_empty() => {
                return Err("`audience` is an empty list; leave it out to accept any".into());
            }
            Some(OneOrMany::Many(list)) => list,
        };
        if c.sources.is_empty() {
            return Err("`sources` is empty: no token could ever be found".into());
        }
        for (key, value) in [
            ("query_param", &c.query_param),
            ("cookie", &c.cookie),
            ("protocol", &c.protocol),
        ] {
            if value.is_empty() {
                return Err(format!("`{key}` is empty"));
            }
        }
        let subject_header = c.subject_header.to_ascii_lowercase();
        if !subject_header.is_empty() && !is_token(&subject_header) {
            return Err(format!(
                "`subject_header` {subject_header:?} is not a valid header name"
            ));
        }
        if c.realm.contains(['"', '\\']) || c.realm.chars().any(char::is_control) {
            return Err("`realm` may not contain quotes, backslashes or control characters".into());
        }
        Ok(Self {
            macs: algorithms
                .iter()
                .map(|&alg| (alg, KeyedMac::new(alg, &key)))
                .collect(),
            audiences,
            issuer: c.issuer,
            require_exp: c.require_exp,
            leeway: c.leeway_seconds,
            sources: c.sources,
            query_param: c.query_param,
            cookie: c.cookie,
            protocol: c.protocol,
            subject_header,
            realm: c.realm,
        })
    }

    /// What the enabled sources carry in `r`, each read from airlock once. The subject
    /// header is not read: it is removed or replaced.
    fn read<'a>(&self, r: Request<'a>) -> Carriers<'a> {
        let mut c = Carriers::default();
        for source in &self.sources {
            match source {
                Source::Header => c.authorization = r.header("authorization"),
                Source::Query => c.query = r.query(),
                Source::Cookie => c.cookies = r.header_all("cookie"),
                Source::Protocol => c.subprotocols = r.subprotocols(),
            }
        }
        c
    }

    /// The verdict for `r` at `now` (seconds since the Unix epoch).
    pub fn decide<'a>(&self, r: impl Into<Request<'a>>, now: u64) -> Verdict {
        let carriers = self.read(r.into());
        let subject = self
            .find(&carriers)
            .ok_or(Failure::Missing)
            .and_then(|(_, token)| self.verify(&token, now));
        match subject {
            Ok(subject) => allow_with(self.forwarded(&carriers, subject)),
            Err(failure) => self.refuse(failure),
        }
    }

    /// The first token found, in the order of `sources`.
    fn find(&self, c: &Carriers<'_>) -> Option<(Source, String)> {
        self.sources.iter().find_map(|&source| {
            let token = match source {
                Source::Header => c.bearer().map(str::to_string),
                Source::Query => c
                    .query
                    .as_deref()
                    .and_then(|q| query_param(q, &self.query_param)),
                Source::Cookie => cookie(&c.cookies, &self.cookie).map(str::to_string),
                Source::Protocol => self.offered_after_marker(c).map(str::to_string),
            };
            token.filter(|t| !t.is_empty()).map(|t| (source, t))
        })
    }

    fn offered_after_marker<'c>(&self, c: &'c Carriers<'_>) -> Option<&'c str> {
        let at = c.subprotocols.iter().position(|p| *p == self.protocol)?;
        c.subprotocols.get(at + 1).map(|p| &**p)
    }

    /// Check `token`; `Ok` carries its subject (`sub`), if it has one.
    pub fn verify(&self, token: &str, now: u64) -> Result<Option<String>, Failure> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::Malformed);
        };
        let signed = &token[..header.len() + 1 + payload.len()];
        let header: JoseHeader = decode(header)?;
        let mac = self
            .macs
            .iter()
            .find(|(alg, _)| Algorithm::parse(&header.alg) == Some(*alg))
            .map(|(_, mac)| mac)
            .ok_or(Failure::Algorithm)?;
        if header.crit.is_some() {
            return Err(Failure::Malformed);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Failure::Malformed)?;
        if !mac.verify(signed.as_bytes(), &signature) {
            return Err(Failure::Signature);
        }

        // Only now, with the signature checked, are the claims worth reading.
        let claims: Claims = decode(payload)?;
        let (now, leeway) = (now as f64, self.leeway as f64);
        match claims.exp {
            Some(exp) if now >= exp + leeway => return Err(Failure::Expired),
            None if self.require_exp => return Err(Failure::NoExpiry),
            _ => {}
        }
        if claims.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(Failure::NotYetValid);
        }
        if !self.audiences.is_empty() {
            let accepted = |a: &String| self.audiences.contains(a);
            let ok = match &claims.aud {
                Some(OneOrMany::One(a)) => accepted(a),
                Some(OneOrMany::Many(list)) => list.iter().any(accepted),
                None => false,
            };
            if !ok {
                return Err(Failure::Audience);
            }
        }
        if let Some(issuer) = &self.issuer
            && claims.iss.as_ref() != Some(issuer)
        {
            return Err(Failure::Issuer);
        }
        match claims.sub {
            Some(sub) if !is_header_value(&sub) => Err(Failure::Malformed),
            sub => Ok(sub),
        }
    }

    /// The changes for an admitted request: every token carrier removed, the subject
    /// header set (or a client-supplied one removed), and the subject as the limit key
    /// (so a route's `key = "plugin"` limits count per user).
    fn forwarded(&self, c: &Carriers<'_>, subject: Option<String>) -> Mutations {
        let mut m = no_changes();
        for source in &self.sources {
            m = match source {
                Source::Header if c.bearer().is_some() => m.remove_header("authorization"),
                Source::Query => match c.query.as_deref() {
                    Some(q) if query_param(q, &self.query_param).is_some() => {
                        m.query(query_without(q, &self.query_param))
                    }
                    _ => m,
                },
                Source::Cookie if cookie(&c.cookies, &self.cookie).is_some() => {
                    match cookies_without(&c.cookies, &self.cookie) {
                        Some(rest) => m.set_header("cookie", rest),
                        None => m.remove_header("cookie"),
                    }
                }
                Source::Protocol if c.subprotocols.iter().any(|p| *p == self.protocol) => {
                    self.strip_protocol(&c.subprotocols, m)
                }
                _ => m,
            };
        }
        if !self.subject_header.is_empty() {
            m = match &subject {
                Some(sub) => m.set_header(&self.subject_header, sub.clone()),
                None => m.remove_header(&self.subject_header),
            };
        }
        if let Some(sub) = subject {
            m = m.limit_key(sub.clone()).attribute("subject", sub);
        }
        m
    }

    /// Offer the upstream the other subprotocols only. When none remain, the upstream
    /// chooses none, so answer the client with the marker: browsers fail a handshake
    /// whose `101` selects no protocol after they offered some.
    fn strip_protocol(&self, offered: &[Cow<'_, str>], m: Mutations) -> Mutations {
        let at = offered.iter().position(|p| *p == self.protocol);
        let rest: Vec<&str> = offered
            .iter()
            .enumerate()
            .filter(|(i, _)| at.is_none_or(|at| *i != at && *i != at + 1))
            .map(|(_, p)| &**p)
            .collect();
        if rest.is_empty() {
            m.remove_header("sec-websocket-protocol")
                .response_header("sec-websocket-protocol", self.protocol.clone())
        } else {
            m.set_header("sec-websocket-protocol", rest.join(", "))
        }
    }

    fn refuse(&self, failure: Failure) -> Verdict {
        let challenge = match failure {
            Failure::Missing => format!("Bearer realm=\"{}\"", self.realm),
            _ => format!(
                "Bearer realm=\"{}\", error=\"invalid_token\", error_description=\"{}\"",
                self.realm,
                failure.description()
            ),
        };
        reject_with(
            401,
            format!("{}\n", failure.description()),
            vec![("www-authenticate".into(), challenge)],
        )
    }
}

/// The parts of a request that can carry a token, as far as the enabled sources read
/// them (the rest stay empty).
#[derive(Default)]
struct Carriers<'a> {
    authorization: Option<Cow<'a, str>>,
    query: Option<Cow<'a, str>>,
    cookies: Vec<Cow<'a, str>>,
    subprotocols: Vec<Cow<'a, str>>,
}

impl Carriers<'_> {
    /// The token of an `Authorization: Bearer` header.
    fn bearer(&self) -> Option<&str> {
        let (scheme, token) = self.authorization.as_deref()?.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

fn decode<T: DeserializeOwned>(part: &str) -> Result<T, Failure> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Failure::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Failure::Malformed)
}

fn is_token(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_value(value: &str) -> bool {
    !value.chars().any(|c| c.is_control() && c != '\t')
}

static POLICY: OnceLock<Policy> = OnceLock::new();

struct TokenAuth;

impl Plugin for TokenAuth {
    fn configure(config: String) -> Result<(), String> {
        let policy = Policy::from_json(&config)?;
        let _ = POLICY.set(policy);
        Ok(())
    }

    fn on_handshake(request: Request<'_>) -> Verdict {
        let policy = POLICY.get().expect("airlock calls configure first");
        policy.decide(request, now_unix_ms() / 1000)
    }
}

export!(TokenAuth);

#[cfg(test)]
mod tests {
    use airlock_plugin_sdk::{Rejection, test_request};
    use serde_json::Value;

    use super::*;

    fn sign(alg: Algorithm, key: &[u8], input: &[u8]) -> Vec<u8> {
        fn mac<M: Mac + KeyInit>(key: &[u8], input: &[u8]) -> Vec<u8> {
            let mut mac = <M as KeyInit>::new_from_slice(key).unwrap();
            mac.update(input);
            mac.finalize().into_bytes().to_vec()
        }
        match alg {
            Algorithm::Hs256 => mac::<Hmac<sha2::Sha256>>(key, input),
            Algorithm::Hs384 => mac::<Hmac<sha2::Sha384>>(key, input),
            Algorithm::Hs512 => mac::<Hmac<sha2::Sha512>>(key, input),
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn token(alg: Algorithm, key: &str, claims: Value) -> String {
        let header = serde_json::json!({ "alg": alg.name(), "typ": "JWT" });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(sign(alg, key.as_bytes(), signed.as_bytes()));
        format!("{signed}.{signature}")
    }

    fn valid() -> String {
        token(
            Algorithm::Hs256,
            SECRET,
            serde_json::json!({ "sub": "alice", "aud": "chat", "exp": NOW + 60 }),
        )
    }

    fn policy(extra: &str) -> Policy {
        Policy::from_json(&format!(
            r#"{{ "secret": "{SECRET}", "audience": "chat" {extra} }}"#
        ))
        .unwrap()
    }

    fn failure(p: &Policy, token: &str) -> Failure {
        p.verify(token, NOW).unwrap_err()
    }

    fn allowed(v: Verdict) -> Mutations {
        match v {
            Verdict::Allow(m) => m,
            Verdict::Reject(r) => panic!("rejected: {} {}", r.status, r.body),
        }
    }

    fn rejected(v: Verdict) -> Rejection {
        match v {
            Verdict::Reject(r) => r,
            Verdict::Allow(_) => panic!("allowed"),
        }
    }

    #[test]
    fn a_valid_token_passes_and_its_subject_is_forwarded() {
        let p = policy("");
        assert_eq!(p.verify(&valid(), NOW), Ok(Some("alice".into())));
        let auth = format!("Bearer {}", valid());
        let m = allowed(p.decide(&test_request("/", &[("authorization", &auth)]), NOW));
        assert_eq!(m.remove_headers, ["authorization"]);
        assert_eq!(m.set_headers, [("x-auth-subject".into(), "alice".into())]);
        assert_eq!(m.attributes, [("subject".into(), "alice".into())]);
    }

    #[test]
    fn time_claims_are_checked_with_leeway() {
        let p = policy("");
        let at = |claims| token(Algorithm::Hs256, SECRET, claims);
        let exp = |t| at(serde_json::json!({ "aud": "chat", "exp": t }));
        assert_eq!(failure(&p, &exp(NOW - 31)), Failure::Expired);
        assert_eq!(failure(&p, &exp(NOW - 30)), Failure::Expired);
        assert!(p.verify(&exp(NOW - 29), NOW).is_ok());
        let nbf = |t| at(serde_json::json!({ "aud": "chat", "exp": NOW + 600, "nbf": t }));
        assert_eq!(failure(&p, &nbf(NOW + 31)), Failure::NotYetValid);
        assert!(p.verify(&nbf(NOW + 30), NOW).is_ok());
        let no_exp = at(serde_json::json!({ "aud": "chat" }));
        assert_eq!(failure(&p, &no_exp), Failure::NoExpiry);
        let relaxed = policy(r#", "require_exp": false, "leeway_seconds": 0"#);
        assert!(relaxed.verify(&no_exp, NOW).is_ok());
        assert_eq!(failure(&relaxed, &exp(NOW)), Failure::Expired);
        let text = at(serde_json::json!({ "aud": "chat", "exp": "tomorrow" }));
        assert_eq!(failure(&p, &text), Failure::Malformed);
    }

    #[test]
    fn audience_and_issuer_must_match_when_configured() {
        let p = policy(r#", "issuer": "https://id.example""#);
        let with = |claims| token(Algorithm::Hs256, SECRET, claims);
        let exp = NOW + 60;
        let iss = "https://id.example";
        assert!(
            p.verify(
                &with(serde_json::json!({ "aud": ["x", "chat"], "iss": iss, "exp": exp })),
                NOW
            )
            .is_ok()
        );
        for (claims, want) in [
            (
                serde_json::json!({ "aud": "other", "iss": iss, "exp": exp }),
                Failure::Audience,
            ),
            (
                serde_json::json!({ "aud": ["x"], "iss": iss, "exp": exp }),
                Failure::Audience,
            ),
            (
                serde_json::json!({ "iss": iss, "exp": exp }),
                Failure::Audience,
            ),
            (
                serde_json::json!({ "aud": "chat", "exp": exp }),
                Failure::Issuer,
            ),
            (
                serde_json::json!({ "aud": "chat", "iss": "https://evil", "exp": exp }),
                Failure::Issuer,
            ),
        ] {
            assert_eq!(failure(&p, &with(claims)), want);
        }
    }

    #[test]
    fn forged_and_malformed_tokens_fail() {
        let p = policy("");
        let claims = serde_json::json!({ "aud": "chat", "exp": NOW + 60 });
        let wrong_key = token(
            Algorithm::Hs256,
            "another secret of thirty-two bytes",
            claims.clone(),
        );
        assert_eq!(failure(&p, &wrong_key), Failure::Signature);
        // HS512 is not accepted unless configured.
        let hs512 = token(Algorithm::Hs512, SECRET, claims.clone());
        assert_eq!(failure(&p, &hs512), Failure::Algorithm);
        // alg "none" with an empty signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert_eq!(failure(&p, &none), Failure::Algorithm);
        // A changed payload under the original signature.
        let good = valid();
        let parts: Vec<&str> = good.split('.').collect();
        let forged_claims = serde_json::json!({ "sub": "admin", "aud": "chat", "exp": NOW + 60 });
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(forged_claims.to_string()),
            parts[2]
        );
        assert_eq!(failure(&p, &forged), Failure::Signature);
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.e30",
            &format!("{}.{}.**", parts[0], parts[1]),
        ] {
            assert_eq!(failure(&p, bad), Failure::Malformed, "{bad}");
        }
        let bad_sub = token(
            Algorithm::Hs256,
            SECRET,
            serde_json::json!({ "sub": "a\r\nx-admin: 1", "aud": "chat", "exp": NOW + 60 }),
        );
        assert_eq!(failure(&p, &bad_sub), Failure::Malformed);
    }

    #[test]
    fn every_carrier_is_found_and_stripped() {
        let p = policy("");
        let t = valid();
        let m = allowed(p.decide(
            &test_request(&format!("/ws?room=1&access_token={t}"), &[]),
            NOW,
        ));
        assert_eq!(m.query.as_deref(), Some("room=1"));
        let only = allowed(p.decide(&test_request(&format!("/ws?access_token={t}"), &[]), NOW));
        assert_eq!(only.query.as_deref(), Some(""));

        let cookies = format!("theme=dark; access_token={t}");
        let m = allowed(p.decide(&test_request("/", &[("cookie", &cookies)]), NOW));
        assert!(
            m.set_headers
                .contains(&("cookie".into(), "theme=dark".into()))
        );

        let offered = format!("access_token, {t}");
        let m = allowed(p.decide(
            &test_request("/", &[("sec-websocket-protocol", &offered)]),
            NOW,
        ));
        assert_eq!(m.remove_headers, ["sec-websocket-protocol"]);
        assert_eq!(
            m.response_headers,
            [("sec-websocket-protocol".into(), "access_token".into())]
        );
        let offered = format!("chat.v2, access_token, {t}");
        let m = allowed(p.decide(
            &test_request("/", &[("sec-websocket-protocol", &offered)]),
            NOW,
        ));
        assert!(
            m.set_headers
                .contains(&("sec-websocket-protocol".into(), "chat.v2".into()))
        );
        assert!(m.response_headers.is_empty());
    }

    #[test]
    fn a_missing_or_bad_token_gets_401_with_a_bearer_challenge() {
        let p = policy("");
        let r = rejected(p.decide(&test_request("/", &[("authorization", "Basic YTpi")]), NOW));
        assert_eq!(r.status, 401);
        assert_eq!(r.body, "no access token\n");
        assert_eq!(
            r.headers,
            [("www-authenticate".into(), "Bearer realm=\"airlock\"".into())]
        );
        let r = rejected(p.decide(&test_request("/?access_token=x.y.z", &[]), NOW));
        assert_eq!(
            r.headers[0].1,
            "Bearer realm=\"airlock\", error=\"invalid_token\", error_description=\"malformed access token\""
        );
        assert!(!r.body.contains("x.y.z"));
    }

    #[test]
    fn a_spoofed_subject_header_is_removed() {
        let p = policy("");
        let t = token(
            Algorithm::Hs256,
            SECRET,
            serde_json::json!({ "aud": "chat", "exp": NOW + 9 }),
        );
        let auth = format!("Bearer {t}");
        let r = test_request(
            "/",
            &[("authorization", &auth), ("x-auth-subject", "admin")],
        );
        let m = allowed(p.decide(&r, NOW));
        assert!(m.remove_headers.contains(&"x-auth-subject".to_string()));
        assert!(m.set_headers.is_empty());
    }

    #[test]
    fn only_configured_sources_are_read() {
        let p = policy(r#", "sources": ["cookie"]"#);
        let auth = format!("Bearer {}", valid());
        let r = rejected(p.decide(&test_request("/", &[("authorization", &auth)]), NOW));
        assert_eq!(r.status, 401);
    }

    #[test]
    fn unusable_configs_are_refused() {
        for (config, needle) in [
            (r#"{}"#, "set `secret`"),
            (
                r#"{"secret": "short"}"#,
                "the secret is 5 bytes; HS256 needs at least 32",
            ),
            (
                &format!(r#"{{"secret": "{SECRET}", "algorithms": ["HS512"]}}"#),
                "HS512 needs at least 64",
            ),
            (
                &format!(r#"{{"secret": "{SECRET}", "algorithms": ["RS256"]}}"#),
                "unknown algorithm \"RS256\"",
            ),
            (
                &format!(r#"{{"secret": "{SECRET}", "sources": []}}"#),
                "`sources` is empty",
            ),
            (
                &format!(r#"{{"secret": "{SECRET}", "sources": ["body"]}}"#),
                "unknown variant",
            ),
            (
                &format!(r#"{{"secret": "{SECRET}", "subject_header": "x user"}}"#),
                "not a valid header name",
            ),
            (
                &format!(r#"{{"secret": "{SECRET}", "secret_base64": "AA=="}}"#),
                "only one of",
            ),
            (r#"{"secret_base64": "not base64!"}"#, "not valid base64"),
            (
                &format!(r#"{{"secret": "{SECRET}", "audiance": "x"}}"#),
                "unknown field `audiance`",
            ),
        ] {
            let err = Policy::from_json(config)
                .err()
                .unwrap_or_else(|| panic!("{config} was accepted"));
            assert!(err.contains(needle), "{config}: {err}");
        }
        let b64 = STANDARD.encode([7u8; 32]);
        assert!(Policy::from_json(&format!(r#"{{"secret_base64": "{b64}"}}"#)).is_ok());
    }
}
