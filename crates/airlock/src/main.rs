//! The `airlock` command: parse and validate configuration, build the proxy, serve until a
//! signal, drain with a grace period. Everything else lives in the library crates.

#![forbid(unsafe_code)]

mod cli;
mod demo;
mod plugin_new;
mod plugin_test;
mod reload;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use cli::{Cli, Command};

// mimalloc instead of the system allocator: a WebSocket handshake allocates and frees
// dozens of small blocks (tasks, buffers, header maps), and glibc's malloc showed as 8%
// of airlock's CPU under handshake load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_USAGE from sysexits.h: the configuration (or command line) is wrong.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_filter = cli.log.clone();
    if let Err(e) = airlock_telemetry::init(log_filter.as_deref(), cli.log_format.into()) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // Panics are bugs (or a plugin host call gone wrong, which the plugin host contains);
    // report them as one log line in the configured format rather than raw stderr.
    std::panic::set_hook(Box::new(
        |info| tracing::error!(panic = %info, "internal error (panic)"),
    ));
    match cli.command {
        Command::Check { config } => match load(&config) {
            Ok(loaded) => {
                let c = &loaded.config;
                println!(
                    "{}: OK ({} listeners, {} routes, {} upstreams, {} plugins)",
                    config.display(),
                    c.listeners.len(),
                    c.routes.len(),
                    c.upstreams.len(),
                    c.plugins.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config, handoff } => match load(&config) {
            Ok(loaded) => serve(loaded, Some(config), None, handoff),
            Err(code) => code,
        },
        Command::Reload { config, admin } => reload::run(&config, admin),
        Command::Plugin(cli::PluginCommand::Wit { version }) => match wit(version.as_deref()) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Plugin(cli::PluginCommand::New { name, lang, dir }) => {
            match plugin_new::run(&name, lang, dir.as_deref()) {
                Ok(dir) => {
                    println!(
                        "wrote {} plugin `{name}` in {}; its README.md has the commands",
                        format!("{lang:?}").to_lowercase(),
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        Command::Plugin(cli::PluginCommand::Test(args)) => match plugin_test::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Demo(args) => match demo::prepare(&args) {
            Ok((loaded, path, upstream)) => serve(loaded, Some(path), Some(upstream), None),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Parse, validate and build (without binding) so that every config error is reported
/// before anything starts.
fn load(path: &std::path::Path) -> Result<airlock_config::LoadedConfig, ExitCode> {
    let loaded = airlock_config::load_file(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    airlock_proxy::Plan::build(&loaded).map_err(|e| {
        eprintln!("error: {}: {e}", path.display());
        ExitCode::from(EXIT_CONFIG)
    })?;
    Ok(loaded)
}

fn serve(
    loaded: airlock_config::LoadedConfig,
    path: Option<std::path::PathBuf>,
    demo: Option<demo::Upstream>,
    handoff: Option<PathBuf>,
) -> ExitCode {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("airlock-worker");
    if let Some(n) = loaded.config.worker_threads {
        runtime.worker_threads(n);
    }
    let result = runtime
        .build()
        .context("cannot start the Tokio runtime")
        .and_then(|rt| rt.block_on(run(loaded, path, demo, handoff)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    loaded: airlock_config::LoadedConfig,
    path: Option<std::path::PathBuf>,
    demo: Option<demo::Upstream>,
    handoff: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut plan = airlock_proxy::Plan::build(&loaded)?;
    if let Some(path) = path {
        plan = plan.reloadable_from(path);
    }
    let (bound, mut successors) = match &handoff {
        Some(path) => plan.bind_taking_over(path).await?,
        None => (plan.bind().await?, None),
    };
    // The demo's files go when it ends.
    let _demo_dir = demo.map(|demo| demo.start(&bound)).transpose()?;
    let running = bound.start();

    let mut signals = Signals::new()?;
    let first = tokio::select! {
        signal = signals.next_stop(&running) => signal,
        pid = hand_over(&running, successors.as_ref()) => {
            tracing::info!(successor = pid, "handed the listening sockets to the successor");
            // The path is the successor's now.
            successors = None;
            "handoff"
        }
    };
    // A successor that comes while this one drains finds no one at the path and starts
    // afresh (this one's listeners close as the drain begins), rather than waiting for an
    // answer that would never come.
    if let (Some(listener), Some(at)) = (successors.take(), &handoff) {
        drop(listener);
        let _ = std::fs::remove_file(at);
    }
    tracing::info!(
        signal = first,
        grace = ?running.shutdown_grace,
        open = running.open_tasks(),
        "shutting down: no new connections; open tunnels may finish within the grace period"
    );
    running.begin_shutdown();
    tokio::select! {
        _ = running.drained() => tracing::info!("all connections closed; exiting"),
        _ = tokio::time::sleep(running.shutdown_grace) => {
            tracing::info!(open = running.open_tasks(), "grace period over; closing what is left");
            running.force_close();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), running.drained()).await;
        }
        second = signals.next_stop(&running) => {
            tracing::warn!(signal = second, open = running.open_tasks(), "second signal; exiting now");
            return Ok(());
        }
    }
    running.flush_traces().await;
    Ok(())
}

/// The successor's pid once one took the sockets over; never without `--handoff`.
async fn hand_over(
    running: &airlock_proxy::Running,
    successors: Option<&tokio::net::UnixListener>,
) -> u32 {
    match successors {
        Some(listener) => running.hand_over(listener).await,
        None => std::future::pending().await,
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// The next SIGTERM or SIGINT; a SIGHUP meanwhile reloads the configuration file and
    /// the certificates (also when the file is refused: a renewed certificate should not
    /// wait for a fixed config).
    async fn next_stop(&mut self, running: &airlock_proxy::Running) -> &'static str {
        loop {
            match self.next().await {
                "SIGHUP" => {
                    tracing::info!("SIGHUP: reloading the configuration and certificates");
                    // The outcome is logged by the reload itself.
                    let _ = running.reload().await;
                    running.reload_certificates();
                }
                stop => return stop,
            }
        }
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// Every version of the plugin interface airlock loads, newest first (the files in `wit/`).
const WIT: [(&str, &str); 3] = [
    ("0.3.0", include_str!("../../../wit/airlock-plugin.wit")),
    (
        "0.2.0",
        include_str!("../../../wit/v0.2.0/airlock-plugin.wit"),
    ),
    (
        "0.1.0",
        include_str!("../../../wit/v0.1.0/airlock-plugin.wit"),
    ),
];

/// `airlock plugin wit [--version V]`: the interface's text.
fn wit(version: Option<&str>) -> Result<&'static str, String> {
    let wanted = version.unwrap_or(WIT[0].0);
    WIT.iter()
        .find(|(v, _)| *v == wanted.trim_start_matches('v'))
        .map(|(_, text)| *text)
        .ok_or_else(|| {
            let known: Vec<&str> = WIT.iter().map(|(v, _)| *v).collect();
            format!(
                "no plugin interface version {wanted:?}; airlock loads {}",
                known.join(", ")
            )
        })
}
