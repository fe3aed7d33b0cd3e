//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  airlock demo                                  # try it: open http://127.0.0.1:8080/
  airlock check --config airlock.toml           # validate a configuration, exit 64 on errors
  airlock run --config airlock.toml             # serve until SIGTERM/SIGINT
  AIRLOCK_LOG=debug airlock run --config airlock.toml --log-format json
";

/// A WebSocket-aware reverse proxy whose handshake policy is extended by WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or directives like
    /// "info,airlock::access=warn".
    #[arg(long, global = true, env = "AIRLOCK_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// How log lines are written on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve with a configuration file until SIGTERM or SIGINT.
    Run {
        /// The TOML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit: 0 when valid, 64 with the errors otherwise.
    Check {
        /// The TOML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run airlock in front of a built-in chat server, with a web page to try it.
    Demo(DemoArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where the demo proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the demo's admin endpoint listens.
    #[arg(long, default_value = "127.0.0.1:9900")]
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl From<LogFormat> for airlock_telemetry::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => Self::Text,
            LogFormat::Json => Self::Json,
        }
    }
}
