//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  airlock demo                                  # try it: open http://127.0.0.1:8080/
  airlock check --config airlock.toml           # validate a configuration, exit 64 on errors
  airlock run --config airlock.toml             # serve until SIGTERM/SIGINT
  airlock run --config airlock.toml --handoff /run/airlock.sock
                                                # the same, and a new one started alike takes over
  airlock reload --config airlock.toml          # apply an edited file; open tunnels stay
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
        /// Take the listening sockets over from the airlock serving this Unix socket, if
        /// one does (it then drains and exits; no connection is refused meanwhile), and
        /// serve it for the next one. Start every airlock with the same path to upgrade
        /// the binary or restart without a gap.
        #[arg(long, value_name = "SOCKET")]
        handoff: Option<PathBuf>,
    },
    /// Validate a configuration file and exit: 0 when valid, 64 with the errors otherwise.
    Check {
        /// The TOML configuration file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Make a running airlock read its configuration file again (through its admin
    /// endpoint's `POST /reload`): 0 when it took effect, 64 with the errors when refused.
    Reload {
        /// The configuration file the running airlock was started with; its `[admin]`
        /// table says where to reach it.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The admin endpoint's address, when the file's `[admin] bind` is not enough
        /// (port 0, or another host's view).
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
    },
    /// Run airlock in front of a built-in chat server, with a web page to try it.
    Demo(DemoArgs),
    /// Work with handshake plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Run a plugin (or a route's chain) on one request and print the verdict as JSON.
    #[command(after_help = "\
Examples:
  airlock plugin test --wasm origin_allowlist.wasm --config '{\"allow\": [\"https://app.example.com\"]}' \\
      -H 'Origin: https://evil.example' GET https://chat.example.com/ws
  airlock plugin test --config airlock.toml --route chat -H 'Origin: https://app.example.com' GET /ws/chat
")]
    Test(PluginTestArgs),
    /// Print the plugin interface (WIT) this airlock loads, for plugin builds and tooling.
    #[command(after_help = "\
Examples:
  airlock plugin wit > wit/airlock-plugin.wit      the newest version, 0.3.0
  airlock plugin wit --version 0.2.0               an older one airlock still loads
")]
    Wit {
        /// The interface version: 0.3.0 (default), 0.2.0 or 0.1.0.
        #[arg(long, value_name = "VERSION")]
        version: Option<String>,
    },
    /// Write a new plugin project: the interface, a plugin that admits listed origins, a
    /// test, an airlock.toml that loads it, and a README with the commands.
    #[command(after_help = "\
Examples:
  airlock plugin new my-policy --lang js        then: cd my-policy && npm ci && npm run build && npm test
  airlock plugin new my-policy --lang python    then: cd my-policy && ./build.sh && python3 -m unittest
  airlock plugin new my-policy --lang rust      then: cd my-policy && cargo build --release --target wasm32-wasip2
")]
    New {
        /// The plugin's name: lowercase letters, digits and dashes (`my-policy`).
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: PluginLang,
        /// Where to write it (default: ./NAME); must not exist, or be empty.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// A language `airlock plugin new` writes plugins in.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PluginLang {
    Rust,
    /// JavaScript, built with ComponentizeJS.
    Js,
    /// Python, built with componentize-py.
    Python,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PluginTestArgs {
    /// The plugin component to run. Without it, `--config` is an airlock configuration
    /// file and `--route` names the route whose chain runs.
    #[arg(long, value_name = "FILE")]
    pub wasm: Option<PathBuf>,
    /// With `--wasm`: the plugin's configuration as JSON (default `{}`). Without: the
    /// airlock configuration file.
    #[arg(long, value_name = "JSON|FILE")]
    pub config: Option<String>,
    /// The route whose plugins run, in order (with an airlock configuration).
    #[arg(long, value_name = "NAME")]
    pub route: Option<String>,
    /// A request header, `Name: value`; repeat for more.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// The client address the plugin sees.
    #[arg(long, default_value = "127.0.0.1")]
    pub client: String,
    /// The request method.
    pub method: String,
    /// The request URL: `https://host/path?query` or `/path?query`.
    pub url: String,
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
