//! Upstream pools: servers, the balancers that pick among them, passive health, connect
//! with a timeout and failover to the next server, idle keep-alive connections, and TLS
//! to the servers.
//!
//! Not here: what is sent over a connection (`crate::forward`, `crate::upgrade`).

pub mod balance;
mod health;
mod keepalive;
mod pool;
mod server;
pub mod tls;

pub use pool::Pool;
pub use server::{ActiveGuard, Server};
