//! Upgrades without a restart: a new airlock started with the same `--handoff` path takes
//! the running one's listening sockets over; the old one drains and exits, and no
//! connection is refused in between.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::client::{get, open_ws};
use crate::support::{Airlock, Backend, TempDir, airlock_cmd, output, single_route};

/// One request on a new connection; its status, or why there was none.
async fn one_request(addr: SocketAddr) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| "no answer in 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {answer:?}"))
}

/// Requests on new connections, one after another, until stopped: how many were made,
/// and every failure.
struct Hammer {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Hammer {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicUsize::new(0));
        let (until, count) = (stop.clone(), made.clone());
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            while !until.load(Ordering::Relaxed) {
                match one_request(addr).await {
                    Ok(200) => {}
                    Ok(status) => failures.push(format!("status {status}")),
                    Err(e) => failures.push(e),
                }
                count.fetch_add(1, Ordering::Relaxed);
            }
            failures
        });
        Self { stop, made, task }
    }

    /// Wait until `more` requests past now were made (bounded).
    async fn go_on_for(&self, more: usize) {
        let target = self.made.load(Ordering::Relaxed) + more;
        for _ in 0..2_000 {
            if self.made.load(Ordering::Relaxed) >= target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the requests stalled");
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        (self.made.load(Ordering::Relaxed), failures)
    }
}

fn access_lines(airlock: &Airlock) -> usize {
    airlock
        .logs_where(|v| v["event"] == "request" && v["http.response.status_code"] == 200)
        .len()
}

/// A backend, a configuration routing to it, and a handoff path in a directory of its own.
struct Setup {
    _backend: Backend,
    cfg: String,
    dir: TempDir,
    socket: PathBuf,
}

impl Setup {
    async fn new() -> Self {
        let backend = Backend::start("a").await;
        let cfg = single_route(&[backend.addr], "", "");
        let dir = TempDir::new();
        let socket = dir.path().join("handoff.sock");
        Self {
            _backend: backend,
            cfg,
            dir,
            socket,
        }
    }

    fn args(&self) -> [&OsStr; 2] {
        [OsStr::new("--handoff"), self.socket.as_os_str()]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_takes_the_sockets_over_and_no_connection_is_refused() {
    let setup = Setup::new().await;
    let (cfg, socket, args) = (&setup.cfg, &setup.socket, setup.args());
    // A socket file left by a process that is gone: the first airlock starts anyway.
    drop(std::os::unix::net::UnixListener::bind(socket).unwrap());

    let mut first = Airlock::start_with(cfg, &args);
    // Whoever can connect gets the sockets: the owner only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let mut tunnel = open_ws(first.addr(), "/").await;
    let hammer = Hammer::start(first.addr());
    hammer.go_on_for(20).await;

    let mut second = Airlock::start_with(cfg, &args);
    assert_eq!(second.addr(), first.addr(), "the same socket");
    assert_eq!(second.admin(), first.admin());
    first
        .wait_for_log("the handoff", |v| {
            v["message"] == "handed the listening sockets to the successor"
                && v["successor"] == second.pid()
        })
        .await;
    second
        .wait_for_log("the takeover", |v| {
            v["message"].as_str().unwrap_or("").starts_with("took over")
                && v["predecessor"] == first.pid()
        })
        .await;

    // The old process's tunnel is closed as on SIGTERM, with a close frame.
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = tunnel.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("a close frame within 10 s");
    assert_eq!(close, Some(1001));
    drop(tunnel);
    assert!(first.wait_exit(Duration::from_secs(10)).await.success());

    hammer.go_on_for(50).await;
    let (made, failures) = hammer.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {made} requests failed across the handoff: {failures:?}",
        failures.len()
    );
    // Every request is in one access log or the other (the last lines may still be on
    // their way through the log pipes).
    let mut counts = (0, 0);
    for _ in 0..500 {
        counts = (access_lines(&first), access_lines(&second));
        if counts.0 + counts.1 >= made {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (before, after) = counts;
    assert!(
        before >= 20 && after >= 50,
        "{before} before, {after} after"
    );
    assert_eq!(
        before + after,
        made,
        "every request answered by one of them"
    );

    // The new process serves WebSockets and the admin endpoint on the same ports.
    let mut ws = open_ws(second.addr(), "/").await;
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    assert_eq!(get(second.admin(), "/readyz").await.status, 200);

    // And it hands over in turn to the next one.
    let third = Airlock::start_with(cfg, &args);
    assert!(second.wait_exit(Duration::from_secs(10)).await.success());
    assert_eq!(third.addr(), first.addr());
    assert_eq!(get(third.addr(), "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_that_cannot_start_leaves_the_running_one_serving() {
    let setup = Setup::new().await;
    let (cfg, dir, args) = (&setup.cfg, &setup.dir, setup.args());
    let mut running = Airlock::start_with(cfg, &args);

    // The successor's configuration adds a listener on a port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let broken = cfg.replacen(
        "[[route]]",
        &format!("[[listener]]\nname = \"extra\"\nbind = \"{busy}\"\n\n[[route]]"),
        1,
    );
    let path = dir.write("broken.toml", &broken);
    let mut successor = airlock_cmd();
    successor
        .args(["run", "--config"])
        .arg(&path)
        .args(args)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(30), output(successor))
        .await
        .expect("the successor exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("cannot bind listener `extra` to {busy}")),
        "{stderr}"
    );

    running
        .wait_for_log("the failed handoff", |v| {
            v["message"] == "a successor did not take over; still serving"
        })
        .await;
    assert!(running.is_running());
    assert_eq!(get(running.addr(), "/").await.status, 200);
    assert_eq!(get(running.admin(), "/readyz").await.status, 200);

    // It still hands over to a successor that starts.
    let next = Airlock::start_with(cfg, &args);
    assert!(running.wait_exit(Duration::from_secs(10)).await.success());
    assert_eq!(get(next.addr(), "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_path_that_cannot_be_used_fails_the_start_before_binding() {
    let cfg = single_route(&["127.0.0.1:9".parse().unwrap()], "", "");
    let dir = TempDir::new();
    let path = dir.write("airlock.toml", &cfg);
    let missing = dir.path().join("no-such-dir/handoff.sock");
    let mut command = airlock_cmd();
    command
        .args(["run", "--config"])
        .arg(&path)
        .arg("--handoff")
        .arg(&missing)
        .stdin(std::process::Stdio::null());
    let out = tokio::time::timeout(Duration::from_secs(30), output(command))
        .await
        .expect("airlock exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen for a successor at {}",
            missing.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
}
