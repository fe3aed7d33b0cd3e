//! Prometheus metrics, served as OpenMetrics text by the admin endpoint's `GET /metrics`.
//!
//! One set of metric families for the process ([`global`]), so that counters survive
//! anything that rebuilds the running configuration. Two kinds of figures:
//!
//! - **Counted as things happen**: requests, errors, tunnels, bytes, plugin calls, limit
//!   refusals, connect failures. The per-request and per-call paths use handles resolved
//!   once per route and plugin when the snapshot is built ([`RouteMetrics`],
//!   [`PluginMetrics`]): an increment is an atomic add, with no label lookup. Labels
//!   known only when counting (a request's status code, who closed a tunnel and why) are
//!   kept at hand per route once used; a label lookup (a hash and the family's read
//!   lock, about 500 instructions) is paid for the first of each, for rare codes, and
//!   for errors' causes.
//! - **Read at scrape time**: per-server health, in-flight requests and tunnels, tracked
//!   limit keys, open connections. These are already counted where the proxy needs them;
//!   the admin endpoint copies them in before it encodes ([`encode`]'s `refresh`), so they
//!   cost the data path nothing.
//!
//! Labels are bounded by the configuration: route, pool, server, plugin and limit names,
//! status codes, and fixed cause and reason names. Client addresses and paths never
//! become labels.

mod families;
mod handles;
mod labels;

pub use families::{Metrics, ServerState};
pub use handles::{CallResult, PluginMetrics, RouteMetrics, TunnelClose};

use std::sync::{LazyLock, Mutex};

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric as OpenMetrics text, after `refresh` has set the scrape-time figures.
/// Scrapes are serialised so that one scrape's refresh cannot interleave with another's.
pub fn encode(refresh: impl FnOnce(&Metrics)) -> String {
    static SCRAPE: Mutex<()> = Mutex::new(());
    let _one_at_a_time = SCRAPE.lock().unwrap_or_else(|e| e.into_inner());
    let metrics = global();
    refresh(metrics);
    let mut text = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &metrics.registry);
    text
}
