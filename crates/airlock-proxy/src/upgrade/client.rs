//! The client's side of an upgrade: who serves the client's connection (hyper, for
//! HTTP/1.1 after other requests and for HTTP/2 streams; or airlock's own first-request
//! read) and so who writes the `101` and starts the tunnel.

use http::header::HeaderValue;
use hyper::upgrade::OnUpgrade;

use super::switched::Tunnel;

/// Who serves the client's side of the request, and so who starts the tunnel.
pub enum ClientSide<'a> {
    /// hyper: it hands over the connection (HTTP/1.1) or the stream (HTTP/2) through
    /// this once the response has been written, to a tunnel task spawned here.
    Hyper(OnUpgrade),
    /// airlock read the request head itself (see `crate::listen::direct`): the tunnel is left
    /// in `switch`, for the caller to run once it has written the `101`. `upgrade` is the
    /// protocol the request asks for, as the head was found to be an upgrade by.
    Direct {
        switch: &'a mut Option<Switch>,
        upgrade: HeaderValue,
    },
}

/// An upgrade accepted for a client that airlock answers itself.
pub struct Switch {
    pub tunnel: Tunnel,
    /// Header lines from the upstream's `101`, for the client (hop-by-hop headers
    /// removed), to go before the response's own headers; `headers::switch_lines`.
    pub lines: Vec<u8>,
}
