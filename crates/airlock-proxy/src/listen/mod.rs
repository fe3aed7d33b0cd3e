//! Listening: the accept loop, the TLS handshake, and serving a connection's requests
//! with HTTP/1.1 (hyper, or airlock's own read of a first request that is an upgrade)
//! or HTTP/2.
//!
//! Every request, whichever protocol carried it, goes to `crate::request::handle`. Not
//! here: what happens to a request (`crate::request`), certificates (`crate::tls`).

mod accept;
mod direct;
mod h1;
mod h2;
mod service;

pub use accept::accept_loop;
