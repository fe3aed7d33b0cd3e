//! The request as plugins see it, held by the host between calls.
//!
//! Its strings borrow from the HTTP request until a plugin changes them: a call copies
//! every string into the guest's memory anyway (the canonical ABI), so owned copies on
//! the host would only add allocations: two for every header, and more for each plugin
//! that asks for only some headers.

use std::borrow::Cow;

use crate::bindings::v0_1::airlock::plugin::types as wit;

/// One request at handshake time; see `handshake` in `wit/v0.1.0/airlock-plugin.wit` and the `request` resource in `wit/airlock-plugin.wit`.
#[derive(Debug, Clone, PartialEq)]
pub struct Handshake<'a> {
    pub id: Cow<'a, str>,
    pub method: Cow<'a, str>,
    pub scheme: Cow<'a, str>,
    pub authority: Cow<'a, str>,
    pub path: Cow<'a, str>,
    pub query: Option<Cow<'a, str>>,
    pub headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub client_addr: Cow<'a, str>,
    pub tls: Option<TlsInfo<'a>>,
    pub route: Cow<'a, str>,
    pub upgrade: Option<Cow<'a, str>>,
    pub subprotocols: Vec<Cow<'a, str>>,
}

/// The TLS session a request arrived on; see `tls-info` in the WIT.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsInfo<'a> {
    pub sni: Option<Cow<'a, str>>,
    pub alpn: Option<Cow<'a, str>>,
    pub version: Cow<'a, str>,
    pub client_cert_subject: Option<Cow<'a, str>>,
    pub client_cert_sans: Vec<Cow<'a, str>>,
}

impl Handshake<'_> {
    /// Pass the record to `call` in the form the bindings take, with only the headers
    /// `keep` accepts. Lists of slices are built here; nothing else is copied.
    pub(crate) fn with_record<R>(
        &self,
        keep: impl Fn(&str) -> bool,
        call: impl FnOnce(wit::Handshake<'_>) -> R,
    ) -> R {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .filter(|(name, _)| keep(name))
            .map(|(name, value)| (&**name, &**value))
            .collect();
        let subprotocols: Vec<&str> = self.subprotocols.iter().map(|s| &**s).collect();
        let sans: Vec<&str> = self
            .tls
            .iter()
            .flat_map(|t| &t.client_cert_sans)
            .map(|s| &**s)
            .collect();
        call(wit::Handshake {
            id: &self.id,
            method: &self.method,
            scheme: &self.scheme,
            authority: &self.authority,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &headers,
            client_addr: &self.client_addr,
            tls: self.tls.as_ref().map(|t| wit::TlsInfo {
                sni: t.sni.as_deref(),
                alpn: t.alpn.as_deref(),
                version: &t.version,
                client_cert_subject: t.client_cert_subject.as_deref(),
                client_cert_sans: &sans,
            }),
            route: &self.route,
            upgrade: self.upgrade.as_deref(),
            subprotocols: &subprotocols,
        })
    }
}
