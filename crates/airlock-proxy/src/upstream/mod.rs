//! Upstream pools: servers (names resolved and re-resolved), the balancers that pick
//! among them, passive and active health, connect with a timeout and failover to the next
//! server, idle keep-alive connections, and TLS to the servers.
//!
//! Not here: what is sent over a connection (`crate::forward`, `crate::upgrade`).

pub mod balance;
mod health;
mod keepalive;
mod members;
mod pool;
mod queue;
mod resolve;
mod server;
pub mod tls;

pub use members::Members;
pub use pool::Pool;
pub use server::{ActiveGuard, Server};
