//! Plugin errors: at load (file, compile, configure) and per call (trap, deadline, memory).

use std::path::PathBuf;

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
    #[error("plugin `{plugin}` failed while configuring: {source}")]
    ConfigureFailed {
        plugin: String,
        #[source]
        source: CallError,
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
