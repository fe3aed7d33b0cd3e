//! airlock's data plane: listeners, routing, the request phases (plugins, upstream
//! choice, forwarding), upgrades and the byte tunnel, upstream pools with balancing and
//! passive health, admission limits, Prometheus metrics, the admin endpoint and graceful
//! shutdown.
//!
//! Not here: parsing configuration (`airlock-config`), running Wasm (`airlock-plugins`),
//! logging setup (`airlock-telemetry`), the command line (`airlock`).
//!
//! Use: [`Plan::build`] checks a configuration without touching the network,
//! [`Plan::bind`] binds every socket, [`Bound::start`] starts serving and returns a
//! [`Running`] handle for shutdown. `docs/architecture.md` maps the areas below.

#![forbid(unsafe_code)]

// Leaves: used by the areas above them, using none of them.
mod drain;
mod error;
mod http;
mod limit;
mod metrics;
mod stream;
mod tls;
mod tunnel;

// Pools, routes, and the snapshot that holds them.
mod route;
mod snapshot;
mod upstream;

// A connection and the phases of its requests.
mod conn;
mod forward;
mod listen;
mod observe;
mod request;
mod upgrade;

// Around the data plane.
mod admin;
mod handoff;
mod lifecycle;
mod reload;

pub use error::{ErrorSource, ProxyError};
pub use handoff::HandoffError;
pub use lifecycle::{Bound, Plan, Running, StartError};
pub use reload::{ReloadError, Reloaded};
