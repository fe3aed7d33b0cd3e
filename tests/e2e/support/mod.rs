//! Test harness: the real `airlock` binary on ephemeral ports, real backends, helpers for
//! clients. Every wait is bounded.

pub mod backend;
pub mod client;
pub mod components;
pub mod otlp;
pub mod python;
pub mod redis;
pub mod socketio;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use backend::Backend;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long airlock may take to start (compiling plugins in a debug build on a loaded
/// machine is the slow part).
const START_WAIT: Duration = Duration::from_secs(60);

pub fn airlock_bin() -> &'static str {
    env!("CARGO_BIN_EXE_airlock")
}

/// A command running the airlock binary, with its plugin cache under `target/tmp`
/// (shared by the tests, kept apart from the user's own cache).
pub fn airlock_cmd() -> Command {
    let mut command = Command::new(airlock_bin());
    command.env("XDG_CACHE_HOME", e2e_cache_home());
    command
}

pub fn e2e_cache_home() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-cache")
}

/// A scratch directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("airlock-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running airlock process with its parsed JSON log lines.
pub struct Airlock {
    child: Child,
    logs: Arc<Mutex<Vec<Value>>>,
    listeners: Vec<(String, SocketAddr)>,
    admin: Option<SocketAddr>,
    config: PathBuf,
    _dir: TempDir,
}

impl Airlock {
    /// Start airlock with `config` (TOML). Listeners and admin should bind port 0.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    /// Start airlock with `config` and more arguments for `airlock run`.
    pub fn start_with(config: &str, args: &[&std::ffi::OsStr]) -> Self {
        let dir = TempDir::new();
        let path = dir.write("airlock.toml", config);
        let listener_count = toml_listener_count(config);
        let has_admin = config.contains("[admin]");
        let mut child = airlock_cmd()
            .args(["--log-format", "json", "--log", "info", "run", "--config"])
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn airlock");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let value =
                    serde_json::from_str(&line).unwrap_or_else(|_| Value::String(line.clone()));
                sink.lock().unwrap().push(value);
            }
        });
        let mut airlock = Self {
            child,
            logs,
            listeners: Vec::new(),
            admin: None,
            config: path,
            _dir: dir,
        };
        let deadline = Instant::now() + START_WAIT;
        loop {
            airlock.listeners = airlock
                .logs_where(|v| v["message"] == "listening")
                .iter()
                .map(|v| {
                    (
                        v["listener"].as_str().unwrap().to_string(),
                        v["addr"].as_str().unwrap().parse().unwrap(),
                    )
                })
                .collect();
            airlock.admin = airlock
                .logs_where(|v| v["message"] == "admin listening")
                .first()
                .map(|v| v["addr"].as_str().unwrap().parse().unwrap());
            if airlock.listeners.len() == listener_count && (airlock.admin.is_some() || !has_admin)
            {
                return airlock;
            }
            if let Ok(Some(status)) = airlock.child.try_wait() {
                panic!(
                    "airlock exited with {status} before listening; logs:\n{}",
                    airlock.dump_logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "airlock did not report its listeners; logs:\n{}",
                airlock.dump_logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    /// The address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no listener {name}"))
            .1
    }

    /// The configuration file it runs (rewrite it, then reload).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("config has an [admin] table")
    }

    pub fn logs_where(&self, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|v| pred(v))
            .cloned()
            .collect()
    }

    /// Wait (bounded) for a log line matching `pred` and return it.
    pub async fn wait_for_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.logs_where(&pred).into_iter().next() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no log line for {what}; logs:\n{}",
                self.dump_logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn dump_logs(&self) -> String {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "airlock did not exit within {limit:?}; logs:\n{}",
                self.dump_logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Airlock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn toml_listener_count(config: &str) -> usize {
    config
        .lines()
        .filter(|l| l.trim() == "[[listener]]")
        .count()
}

/// A config with one listener named "public" on port 0, an admin endpoint on port 0, and
/// `rest` (routes, upstreams) appended.
pub fn config(rest: &str) -> String {
    format!(
        "shutdown_grace = \"5s\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n{rest}"
    )
}

/// Add `option` (a TOML line) to the "public" listener of a config made by `config`.
pub fn with_listener_option(config: &str, option: &str) -> String {
    config.replacen(
        "bind = \"127.0.0.1:0\"\n\n[[route]]",
        &format!("bind = \"127.0.0.1:0\"\n{option}\n\n[[route]]"),
        1,
    )
}

/// One route `name` for every path to an upstream pool of `servers`.
pub fn single_route(servers: &[SocketAddr], extra_route: &str, extra_upstream: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    config(&format!(
        "[[route]]\nname = \"main\"\npath_prefix = \"/\"\nupstream = \"pool\"\n{extra_route}\n\n[upstream.pool]\nservers = [{}]\n{extra_upstream}\n",
        list.join(", ")
    ))
}

/// Run `command` to completion off the async runtime's threads; its output.
pub async fn output(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// Run a tool the tests need (npm, python3, componentize-py) to completion, requiring
/// success.
pub fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `airlock COMMAND --config PATH` to completion.
pub fn airlock_command(command: &str, config: &std::path::Path) -> std::process::Output {
    airlock_cmd()
        .args([command, "--config"])
        .arg(config)
        .output()
        .unwrap()
}

/// Both `check` and `run` refuse `config` with status 64 and a message containing `needle`.
pub fn assert_config_refused(config: &std::path::Path, needle: &str) {
    for command in ["check", "run"] {
        let out = airlock_command(command, config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{command}: {stderr}");
        assert!(stderr.contains(needle), "{command}: {stderr}");
    }
}

/// The path of a plugin built by `crates/airlock/build.rs`, like `origin_allowlist.wasm`.
pub fn plugin_wasm(file: &str) -> String {
    format!("{}/{file}", env!("AIRLOCK_PLUGIN_DIR"))
}

/// An address on which nothing listens (connections are refused).
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}
