//! Logging for airlock: a `tracing` subscriber writing to stderr as text or JSON, with the
//! level taken from `--log` or `AIRLOCK_LOG`.
//!
//! Not here: what gets logged (each crate decides) or the access log's fields (the proxy
//! crate's `access_log` module).
//!
//! [`trace`]: OpenTelemetry spans, sampled and exported over OTLP/HTTP.

#![forbid(unsafe_code)]

pub mod trace;

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with event fields at the top level.
    Json,
}

/// The filter used when neither `--log` nor `AIRLOCK_LOG` is given.
pub const DEFAULT_FILTER: &str = "info";

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid log filter {filter:?}: {source}; use a level (error, warn, info, debug, trace) or directives like \"info,airlock_proxy=debug\""
)]
pub struct LogInitError {
    filter: String,
    #[source]
    source: tracing_subscriber::filter::ParseError,
}

/// Install the global subscriber. `filter` is an `EnvFilter` directive string such as
/// `"info"` or `"warn,airlock::access=info"`.
pub fn init(filter: Option<&str>, format: LogFormat) -> Result<(), LogInitError> {
    let filter = filter.unwrap_or(DEFAULT_FILTER);
    let env_filter = EnvFilter::try_new(filter).map_err(|source| LogInitError {
        filter: filter.to_string(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_span_events(FmtSpan::NONE);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    Ok(())
}
