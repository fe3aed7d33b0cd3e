//! The real Socket.IO server and client (npm `socket.io`, `socket.io-client`), installed
//! from `tests/socketio/package-lock.json` and run with the machine's Node.js.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `tests/socketio`, with its packages installed (`npm ci`, once per test process, when
/// `node_modules` is missing).
fn project() -> PathBuf {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/socketio"));
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if !*installed && !dir.join("node_modules/socket.io-client").exists() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("npm, to install the Socket.IO test packages");
        assert!(
            out.status.success(),
            "npm ci in {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *installed = true;
    dir
}

/// One `node server.js NAME` process; killed on drop.
pub struct SocketIoServer {
    child: Child,
    pub addr: SocketAddr,
}

impl SocketIoServer {
    pub fn start(name: &str) -> Self {
        Self::start_on(name, 0)
    }

    /// Start on `port` (0: a free one), as a server restarted at its old address.
    pub fn start_on(name: &str, port: u16) -> Self {
        let mut child = Command::new("node")
            .arg("server.js")
            .arg(name)
            .arg(port.to_string())
            .current_dir(project())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node, to run the Socket.IO server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["port"].as_u64())
            .unwrap_or_else(|| panic!("server.js printed {line:?}, not its port"));
        Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port as u16)),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SocketIoServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One client's result from `clients.js`.
#[derive(Debug)]
pub struct ClientRun {
    pub i: u64,
    pub servers: Vec<String>,
    pub transport: Option<String>,
    pub error: Option<String>,
}

/// Run `node clients.js OPTIONS` (see the script for the options) and return each
/// client's result. Bounded: the script times each client out, and is killed after 60s.
pub fn run_clients(options: Value) -> Vec<ClientRun> {
    let mut child = Command::new("node")
        .arg("clients.js")
        .arg(options.to_string())
        .current_dir(project())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node, to run the Socket.IO clients");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("clients.js ran for over 60s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let line = reader.join().unwrap().unwrap();
    let value: Value =
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("clients.js printed {line:?}"));
    value["clients"]
        .as_array()
        .expect("a clients array")
        .iter()
        .map(|c| ClientRun {
            i: c["i"].as_u64().unwrap(),
            servers: c["servers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect(),
            transport: c["transport"].as_str().map(str::to_string),
            error: c["error"].as_str().map(str::to_string),
        })
        .collect()
}
