//! Live reload through the real binary: `airlock reload` (the admin endpoint's
//! `POST /reload`) and SIGHUP. Open tunnels keep running on the configuration they started
//! with, new connections get the new one, a handshake loop sees no failure during the
//! swap, a broken file is refused with located errors, and what did not change keeps its
//! state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::support::client::{get, get_with, status_of, upgrade_head};
use crate::support::{Airlock, Backend, airlock_cmd, config, plugin_wasm};

const ONE: &str = "https://one.example";
const TWO: &str = "https://two.example";

/// A config: the `chat` route (origin plugin allowing `allow`) to a pool of `servers`,
/// plus one route `extra` on `/{extra}`.
fn version(servers: &[SocketAddr], allow: &[&str], extra: &str) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    let allow: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
    config(&format!(
        "[[route]]\nname = \"{extra}\"\npath_prefix = \"/{extra}\"\nupstream = \"pool\"\n\n\
         [[route]]\nname = \"chat\"\npath_prefix = \"/\"\nupstream = \"pool\"\nplugins = [\"origin\"]\n\n\
         [upstream.pool]\nservers = [{}]\n\n\
         [plugin.origin]\nwasm = \"{}\"\nconfig = {{ allow = [{}] }}\n",
        servers.join(", "),
        plugin_wasm("origin_allowlist.wasm"),
        allow.join(", "),
    ))
}

/// `airlock reload` against `airlock`'s admin endpoint (off the runtime's threads): exit
/// code, stdout, stderr.
async fn reload(airlock: &Airlock) -> (Option<i32>, String, String) {
    let admin = airlock.admin().to_string();
    let path = airlock.config_path().to_path_buf();
    let mut command = airlock_cmd();
    command
        .args(["reload", "--config"])
        .arg(&path)
        .args(["--admin", &admin]);
    let out = crate::support::output(command).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `config` with a second listener, `extra`, on `bind`.
fn with_extra_listener(config: &str, bind: &str) -> String {
    config.replacen(
        "[[route]]",
        &format!("[[listener]]\nname = \"extra\"\nbind = \"{bind}\"\n\n[[route]]"),
        1,
    )
}

/// The log line of the reload that took effect.
async fn reloaded(airlock: &Airlock) -> serde_json::Value {
    airlock
        .wait_for_log("the reload", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("configuration reloaded"))
        })
        .await
}

async fn open_ws(
    addr: SocketAddr,
    origin: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("path:/ws"));
    ws
}

async fn handshake(addr: SocketAddr, origin: &str) -> u16 {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Origin: {origin}\r\n\r\n"
    );
    status_of(&upgrade_head(addr, request.as_bytes()).await.1)
}

/// Which backend answers a plain request on `/`.
async fn backend_of(addr: SocketAddr) -> String {
    let r = get_with(addr, "/", &[("origin", ONE)]).await;
    assert_eq!(r.status, 200);
    r.header("x-backend").unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_routes_servers_and_plugins_while_open_tunnels_carry_on() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let airlock = Airlock::start(&version(&[a.addr], &[ONE], "old"));
    let addr = airlock.addr();
    assert_eq!(backend_of(addr).await, "a");
    assert_eq!(get(addr, "/old").await.status, 200);
    assert_eq!(handshake(addr, TWO).await, 403);

    // 100 tunnels open on the first configuration, each exchanging a message.
    let mut open = Vec::new();
    for _ in 0..100 {
        open.push(open_ws(addr, ONE).await);
    }
    for ws in &mut open {
        ws.send(Message::text("before")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
    }

    // Handshakes go on without a pause while the configuration changes under them.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let looping = {
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if handshake(addr, ONE).await == 101 {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    while done.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A route removed and one added, the pool's servers changed, the plugin's config
    // changed.
    std::fs::write(
        airlock.config_path(),
        version(&[b.addr], &[ONE, TWO], "new"),
    )
    .unwrap();
    let (code, stdout, stderr) = reload(&airlock).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("reloaded (generation 2)"), "{stdout}");

    // New connections follow the new configuration.
    assert_eq!(backend_of(addr).await, "b");
    assert_eq!(get(addr, "/new").await.status, 200);
    // /old is the chat route's now: its plugin wants an Origin.
    assert_eq!(get(addr, "/old").await.status, 403);
    assert_eq!(backend_of(addr).await, "b");
    assert_eq!(handshake(addr, TWO).await, 101);

    let before = done.load(Ordering::Relaxed);
    while done.load(Ordering::Relaxed) < before + 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    looping.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "handshakes failed during the reload ({} passed)",
        done.load(Ordering::Relaxed)
    );

    // Every tunnel opened before the reload still works, still on server a.
    for ws in &mut open {
        ws.send(Message::text("after")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    }
    assert!(a.connections.load(Ordering::Relaxed) >= 100);
    let upstreams = get(airlock.admin(), "/upstreams").await.json();
    let servers = upstreams["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(servers.len(), 1, "{upstreams:#}");
    assert_eq!(servers[0]["addr"], b.addr.to_string(), "{upstreams:#}");
    for ws in open {
        crate::support::client::close_ws(ws).await;
    }
    let line = reloaded(&airlock).await;
    assert_eq!(line["generation"], 2, "{line}");
    assert_eq!(line["pools_kept"], 0, "the pool's servers changed: {line}");
    let running = get(airlock.admin(), "/config").await.json();
    assert_eq!(running["generation"], 2, "{running:#}");
    assert_eq!(
        running["listeners"][0]["routes"],
        serde_json::json!(["new", "chat"]),
        "{running:#}"
    );
    assert_eq!(running["path"], airlock.config_path().display().to_string());
    assert_eq!(
        line["plugins_kept"], 0,
        "the plugin's config changed: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_configuration_is_refused_with_its_errors_and_the_running_one_stays() {
    let a = Backend::start("a").await;
    let good = version(&[a.addr], &[ONE], "old");
    let airlock = Airlock::start(&good);
    let addr = airlock.addr();
    let refusing_guest = good.replace(
        &format!(
            "wasm = \"{}\"\nconfig = {{ allow = [\"{ONE}\"] }}",
            plugin_wasm("origin_allowlist.wasm")
        ),
        &format!(
            "wasm = \"{}\"\nconfig = {{ mode = \"refuse-config\" }}",
            plugin_wasm("test_guest.wasm")
        ),
    );
    assert_ne!(refusing_guest, good);
    // A listener added on an address in use (the backend's).
    let taken = with_extra_listener(&good, &a.addr.to_string());
    let moved_admin = good.replacen(
        "[admin]\nbind = \"127.0.0.1:0\"",
        "[admin]\nbind = \"127.0.0.2:0\"",
        1,
    );
    assert_ne!(moved_admin, good);
    let cases = [
        (
            "an unknown key",
            format!("{good}\nbogus = 1\n"),
            "unknown field `bogus`",
        ),
        (
            "a missing plugin file",
            good.replace("origin_allowlist.wasm", "no_such_plugin.wasm"),
            "plugin `origin`: cannot read",
        ),
        (
            "a plugin refusing its config",
            refusing_guest,
            "plugin `origin` refused its configuration",
        ),
        ("an address in use", taken, "cannot bind listener `extra`"),
        (
            "a moved admin endpoint",
            moved_admin,
            "the admin endpoint cannot change on a reload",
        ),
    ];
    for (what, text, needle) in cases {
        std::fs::write(airlock.config_path(), &text).unwrap();
        let (code, stdout, stderr) = reload(&airlock).await;
        assert_eq!(code, Some(64), "{what}: {stdout}{stderr}");
        assert!(stderr.contains(needle), "{what}: {stderr}");
        // The running configuration serves on.
        assert_eq!(backend_of(addr).await, "a", "after {what}");
        assert_eq!(handshake(addr, ONE).await, 101, "after {what}");
    }
    // The unknown key's error is located, as `airlock check` locates it.
    std::fs::write(airlock.config_path(), format!("{good}\nbogus = 1\n")).unwrap();
    let (_, _, stderr) = reload(&airlock).await;
    let line = good.lines().count() + 2;
    assert!(
        stderr.contains(&format!(":{line}:1: unknown field `bogus`")),
        "{stderr}"
    );

    let metrics = String::from_utf8(get(airlock.admin(), "/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("airlock_config_generation 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("airlock_config_reloads_total{result=\"refused\"} 6\n"),
        "{metrics}"
    );

    // Fixed, it applies.
    std::fs::write(airlock.config_path(), &good).unwrap();
    let (code, stdout, stderr) = reload(&airlock).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_what_did_not_change_keeps_its_state() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let airlock = Airlock::start(&version(&[a.addr, b.addr], &[ONE], "old"));
    let addr = airlock.addr();
    // State the reload must keep: a drained server, and the plugin's warm instances.
    let drain = format!("/upstreams/pool/servers/{}/drain", b.addr);
    let drained = crate::support::client::Conn::open(airlock.admin())
        .await
        .send(crate::support::client::request("POST", &drain, &[], ""))
        .await;
    assert_eq!(drained.status, 200);

    std::fs::write(
        airlock.config_path(),
        version(&[a.addr, b.addr], &[ONE], "new"),
    )
    .unwrap();
    airlock.signal("HUP");
    let line = reloaded(&airlock).await;
    assert_eq!(line["pools_kept"], 1, "{line}");
    assert_eq!(line["plugins_kept"], 1, "{line}");
    assert_eq!(get(addr, "/new").await.status, 200);
    // The pool is the same object: b is still drained, so everything goes to a.
    for _ in 0..6 {
        assert_eq!(backend_of(addr).await, "a");
    }
    let upstreams = get(airlock.admin(), "/upstreams").await.json();
    let b_status = upstreams["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == b.addr.to_string())
        .cloned()
        .unwrap();
    assert_eq!(b_status["drained"], true, "{b_status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_come_and_go_with_a_reload_and_their_tunnels_stay() {
    let a = Backend::start("a").await;
    let first = version(&[a.addr], &[ONE], "old");
    let airlock = Airlock::start(&first);
    let public = airlock.addr();
    let mut tunnel = open_ws(public, ONE).await;

    // A listener added: it serves as soon as the reload returns.
    std::fs::write(
        airlock.config_path(),
        with_extra_listener(&first, "127.0.0.1:0"),
    )
    .unwrap();
    let (code, stdout, stderr) = reload(&airlock).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let line = airlock
        .wait_for_log("the new listener", |v| {
            v["message"] == "listening" && v["listener"] == "extra"
        })
        .await;
    let extra: SocketAddr = line["addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(backend_of(extra).await, "a");
    assert_eq!(
        backend_of(public).await,
        "a",
        "an unchanged listener keeps serving"
    );

    // The first listener removed: its socket closes, the tunnel it accepted carries on.
    // (`extra` keeps its configured address, port 0, so it is the same listener.)
    let only_extra = with_extra_listener(&first, "127.0.0.1:0").replacen(
        "[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n",
        "",
        1,
    );
    assert!(!only_extra.contains("\"public\""), "{only_extra}");
    std::fs::write(airlock.config_path(), only_extra).unwrap();
    let (code, stdout, stderr) = reload(&airlock).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let refused = tokio::net::TcpStream::connect(public).await;
    assert!(refused.is_err(), "the removed listener still accepts");
    assert_eq!(backend_of(extra).await, "a");
    tunnel.send(Message::text("still open")).await.unwrap();
    assert_eq!(
        tunnel.next().await.unwrap().unwrap(),
        Message::text("still open")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_reloads_when_the_file_changes() {
    let a = Backend::start("a").await;
    let watched =
        |extra: &str| format!("watch_config = true\n{}", version(&[a.addr], &[ONE], extra));
    let airlock = Airlock::start(&watched("old"));
    let addr = airlock.addr();
    assert_eq!(
        get(addr, "/new").await.status,
        403,
        "the chat route's, without an Origin"
    );

    // A broken write is refused (and logged); the running configuration stays.
    std::fs::write(airlock.config_path(), "watch_config = true\n[[route]\n").unwrap();
    airlock
        .wait_for_log("the refusal", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("reload refused"))
        })
        .await;
    assert_eq!(backend_of(addr).await, "a");

    // Fixed, with a new route: applied without a command.
    std::fs::write(airlock.config_path(), watched("new")).unwrap();
    let line = reloaded(&airlock).await;
    assert_eq!(line["generation"], 2, "{line}");
    assert_eq!(get(addr, "/new").await.status, 200);
}
