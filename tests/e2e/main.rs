//! End-to-end tests: the real airlock binary between real backends and real clients, all on
//! loopback with ephemeral ports.

mod support;

mod bad_input;
mod balance;
mod cli;
mod dns;
mod drain;
mod frames;
mod handoff;
mod health;
mod http;
mod lifecycle;
mod limits;
mod metrics;
mod plugin_languages;
mod plugins;
mod reload;
mod shared_limits;
mod socketio;
mod telemetry;
mod tls;
mod token_auth;
mod websocket;
