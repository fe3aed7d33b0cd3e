//! airlock's configuration: the TOML schema users write, parsing with exact error
//! locations, and the cross-checks that make a file safe to run.
//!
//! This crate knows nothing about sockets or plugins at run time: it turns a file into a
//! validated [`Config`] or into [`ConfigErrors`] that name the file, line and column of
//! every problem and say what would be valid. Loading Wasm plugins is the plugin host's
//! job; here plugin tables are checked for shape only.

#![forbid(unsafe_code)]

mod balance;
mod error;
mod health;
mod limit;
mod model;
mod telemetry;
mod units;
mod validate;
mod websocket;

use std::path::{Path, PathBuf};

pub use balance::*;
pub use error::{ConfigError, ConfigErrors};
pub use health::*;
pub use limit::*;
pub use model::*;
pub use telemetry::{
    DEFAULT_EXPORT_TIMEOUT, DEFAULT_MAX_QUEUE, Sampler, Secret, Telemetry, TrustTraceparent,
    split_endpoint,
};
pub use units::{ByteSize, Duration};
pub use websocket::{DEFAULT_PONG_TIMEOUT, WebSocket};

/// A configuration that parsed and passed validation, with the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// The directory relative paths in the file are resolved against.
    pub base_dir: PathBuf,
}

impl LoadedConfig {
    /// Resolve a path written in the config file (relative to the file's directory).
    pub fn resolve(&self, path: &str) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// Read, parse and validate the configuration file at `path`.
pub fn load_file(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(ConfigError::io(path.display().to_string(), &e)))?;
    let config = parse(&source, &path.display().to_string())?;
    let base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(LoadedConfig { config, base_dir })
}

/// Parse and validate configuration text. `file_name` is used in error messages only.
pub fn parse(source: &str, file_name: &str) -> Result<Config, ConfigErrors> {
    let config: Config = toml::from_str(source)
        .map_err(|e| ConfigErrors::single(ConfigError::from_toml(file_name, source, &e)))?;
    let problems = validate::validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors::new(
            problems
                .into_iter()
                .map(|p| ConfigError::at(file_name, source, p.span, p.message))
                .collect(),
        ))
    }
}
