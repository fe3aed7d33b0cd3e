//! Plugin errors: at load (file, compile, configure) and per call (trap, deadline, memory).

use std::path::PathBuf;

use crate::language::Language;

/// A plugin could not be loaded or configured.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin `{plugin}`: cannot read {path}")]
    Read {
        plugin: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin `{plugin}`: not a valid airlock plugin component: {reason}")]
    Compile { plugin: String, reason: String },
    #[error("plugin `{plugin}` refused its configuration: {message}")]
    Configure { plugin: String, message: String },
    /// The cause is part of the message, not an error source, so that a report of the
    /// chain does not say it twice.
    #[error("plugin `{plugin}` failed while starting an instance: {cause}")]
    ConfigureFailed { plugin: String, cause: CallError },
    #[error(
        "plugin `{plugin}`: its memory starts at {} but max_memory is {}; {}",
        mib(*starts_at),
        mib(*max_memory),
        memory_advice(*language, *starts_at)
    )]
    MemoryTooSmall {
        plugin: String,
        starts_at: usize,
        max_memory: usize,
        language: Language,
    },
    #[error("the Wasm engine could not be created: {0}")]
    Engine(String),
}

/// One call into a plugin failed. The instance that failed is discarded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("exceeded its {0:?} deadline")]
    Timeout(std::time::Duration),
    #[error("exceeded its memory limit of {0} bytes")]
    OutOfMemory(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("no instance became free within {0:?} (all busy)")]
    Busy(std::time::Duration),
    #[error("could not create an instance: {0}")]
    Instantiate(String),
    #[error("returned an invalid verdict: {0}")]
    InvalidVerdict(String),
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// What `max_memory` to set for a component whose memory starts at `starts_at` bytes.
fn memory_advice(language: Language, starts_at: usize) -> String {
    let default = language.default_max_memory();
    if default > starts_at {
        format!(
            "{} plugins need more: leave max_memory unset (their default is {} MiB) or set it to at least that",
            language.describe(),
            default >> 20
        )
    } else {
        format!(
            "set max_memory to at least {} MiB",
            (starts_at >> 20) * 2 + 1
        )
    }
}

impl CallError {
    /// A short name for the cause, for metrics: `timeout`, `memory`, `trap`, `busy`,
    /// `instantiate` or `invalid_output`.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::OutOfMemory(_) => "memory",
            Self::Trap(_) => "trap",
            Self::Busy(_) => "busy",
            Self::Instantiate(_) => "instantiate",
            Self::InvalidVerdict(_) => "invalid_output",
        }
    }
}
