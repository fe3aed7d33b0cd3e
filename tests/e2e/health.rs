//! Active health checks and the admin API's drain: servers leave rotation when probes
//! fail (HTTP status, refused WebSocket handshake) or an operator drains them, and come
//! back; open tunnels are never touched.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::support::client::{Conn, get, request};
use crate::support::socketio::{SocketIoServer, run_clients};
use crate::support::{Airlock, Backend, WAIT, config, single_route, with_listener_option};

/// A plain HTTP server that answers `/healthz` with a status the test sets and anything
/// else `200 {"backend": NAME}`, refusing upgrades (no `101`, ever).
struct StatusServer {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StatusServer {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(AtomicU16::new(200));
        let status = health.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let status = status.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read_exact(&mut byte).await.is_err() {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head);
                    let (code, body) = if head.starts_with("GET /healthz ") {
                        (status.load(Ordering::Relaxed), "checked\n".to_string())
                    } else {
                        (200, json!({ "backend": name }).to_string())
                    };
                    let response = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        Self { addr, health, task }
    }
}

/// The admin API's entry for the server at `addr`.
async fn server_status(airlock: &Airlock, addr: SocketAddr) -> Value {
    let r = get(airlock.admin(), "/upstreams").await;
    r.json()["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == addr.to_string())
        .cloned()
        .unwrap_or_else(|| panic!("{addr} not in /upstreams"))
}

/// Poll the admin API until the server's active health is `state`; bounded by `WAIT`.
async fn wait_active(airlock: &Airlock, addr: SocketAddr, state: &str) -> Value {
    wait_server(airlock, addr, state, |s| {
        s["health"]["active"]["state"] == state
    })
    .await
}

/// Poll the admin API until the server's entry satisfies `done`; bounded by `WAIT`.
async fn wait_server(
    airlock: &Airlock,
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = server_status(airlock, addr).await;
        if done(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never became {what}: {s:#}\n{}",
            airlock.dump_logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn backends_of(airlock: &Airlock, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        let r = get(airlock.addr(), &format!("/{i}")).await;
        assert_eq!(r.status, 200);
        *counts
            .entry(r.json()["backend"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

const PROBES: &str = "health_check = { path = \"/healthz\", interval = \"200ms\", timeout = \"200ms\", rise = 2, fall = 2 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_http_probes_take_a_server_out_and_passing_ones_bring_it_back() {
    let good = Backend::start("good").await;
    let flaky = StatusServer::start("flaky").await;
    let airlock = Airlock::start(&single_route(&[good.addr, flaky.addr], "", PROBES));
    wait_active(&airlock, flaky.addr, "up").await;
    assert_eq!(backends_of(&airlock, 4).await.len(), 2);

    flaky.health.store(503, Ordering::Relaxed);
    let down = wait_active(&airlock, flaky.addr, "down").await;
    assert_eq!(down["available"], false);
    assert_eq!(down["health"]["passive"], "up", "traffic never failed");
    let last = &down["health"]["active"]["last_probe"];
    assert_eq!(
        (last["ok"].clone(), last["error"].clone()),
        (json!(false), json!("status 503"))
    );
    assert!(last["at"].as_str().unwrap().ends_with('Z'), "{last}");
    let counts = backends_of(&airlock, 6).await;
    assert_eq!(counts.get("good"), Some(&6), "{counts:?}");
    airlock
        .wait_for_log("down line", |v| {
            v["message"] == "upstream server failed its health checks; out of rotation"
                && v["server"] == flaky.addr.to_string()
        })
        .await;

    flaky.health.store(200, Ordering::Relaxed);
    wait_active(&airlock, flaky.addr, "up").await;
    assert_eq!(backends_of(&airlock, 4).await.get("flaky"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_probe_marks_down_a_server_that_answers_200_but_refuses_upgrades() {
    let ws = Backend::start("ws").await;
    let plain = StatusServer::start("plain").await;
    let probes = "health_check = { kind = \"websocket\", path = \"/ws\", interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 2 }";
    let airlock = Airlock::start(&single_route(&[ws.addr, plain.addr], "", probes));
    let down = wait_active(&airlock, plain.addr, "down").await;
    let error = down["health"]["active"]["last_probe"]["error"]
        .as_str()
        .unwrap();
    assert_eq!(error, "status 200 to a WebSocket handshake, not 101");
    // The real WebSocket server passes, probe after probe, and gets every upgrade.
    // Servers start up, so wait for a probe to have run, not for the state.
    let up = wait_server(&airlock, ws.addr, "probed", |s| {
        !s["health"]["active"]["last_probe"].is_null()
    })
    .await;
    assert_eq!(up["health"]["active"]["state"], "up", "{up}");
    assert_eq!(up["health"]["active"]["last_probe"]["status"], 101, "{up}");
    for _ in 0..3 {
        let (mut client, _) = connect_async(format!("ws://{}/chat", airlock.addr()))
            .await
            .expect("upgrades go to the server that passes");
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::text("path:/chat")
        );
        client.send(Message::text("hi")).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Message::text("hi"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_server_keeps_its_tunnels_and_sends_new_work_elsewhere() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let airlock = Airlock::start(&single_route(&[a.addr, b.addr], "", ""));
    let admin = airlock.admin();
    // A tunnel on each server (round robin), before the drain.
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let (mut ws, _) = connect_async(format!("ws://{}/t", airlock.addr()))
            .await
            .unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("path:/t"));
        tunnels.push(ws);
    }
    let post = |path: String| async move {
        Conn::open(admin)
            .await
            .send(request("POST", &path, &[], ""))
            .await
    };
    let r = post(format!("/upstreams/pool/servers/{}/drain", a.addr)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["drained"], true);
    assert_eq!(r.json()["tunnels"], 1);
    assert_eq!(backends_of(&airlock, 4).await.get("b"), Some(&4));
    // The drained server's tunnel still relays.
    for ws in &mut tunnels {
        ws.send(Message::text("after")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    }
    // Mistakes get clear answers.
    assert_eq!(
        get(admin, &format!("/upstreams/pool/servers/{}/drain", a.addr))
            .await
            .status,
        405
    );
    assert_eq!(
        post("/upstreams/pool/servers/10.9.9.9:1/drain".into())
            .await
            .status,
        404
    );
    assert_eq!(
        post(format!("/upstreams/nope/servers/{}/drain", a.addr))
            .await
            .status,
        404
    );
    // Every server drained: 503, not a hang or a 502.
    post(format!("/upstreams/pool/servers/{}/drain", b.addr)).await;
    let r = get(airlock.addr(), "/none").await;
    assert_eq!(r.status, 503);
    let r = post(format!("/upstreams/pool/servers/{}/undrain", a.addr)).await;
    assert_eq!(r.json()["drained"], false);
    assert_eq!(backends_of(&airlock, 2).await.get("a"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_of_three_socketio_servers_moves_only_its_clients() {
    let mut servers = [
        SocketIoServer::start("a"),
        SocketIoServer::start("b"),
        SocketIoServer::start("c"),
    ];
    let list: Vec<String> = servers.iter().map(|s| format!("\"{}\"", s.addr)).collect();
    let probes = "health_check = { path = \"/healthz\", interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 2 }";
    let cfg = config(&format!(
        "[[route]]\nname = \"sio\"\nupstream = \"pool\"\n\n[upstream.pool]\nservers = [{}]\nbalance = \"ip_hash\"\n{probes}\n",
        list.join(", ")
    ));
    let airlock = Airlock::start(&with_listener_option(
        &cfg,
        "trusted_proxies = [\"127.0.0.1\"]",
    ));
    let url = format!("http://{}", airlock.addr());
    let placement = || {
        let runs = run_clients(json!({
            "url": url, "count": 24, "events": 4,
            "headers": { "X-Forwarded-For": "198.51.100.{i}" },
        }));
        runs.iter()
            .map(|r| {
                assert_eq!(r.error, None, "client {}", r.i);
                assert_eq!(r.servers.len(), 1, "client {}: {:?}", r.i, r.servers);
                (r.i, r.servers[0].clone())
            })
            .collect::<HashMap<u64, String>>()
    };
    let before = tokio::task::block_in_place(placement);
    assert!(
        before.values().any(|s| s == "c"),
        "no client on c: {before:?}"
    );

    // One open engine.io WebSocket per client, placed like its Socket.IO client.
    let mut tunnels = Vec::new();
    for (i, server) in &before {
        let mut req = format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket",
            airlock.addr()
        )
        .into_client_request()
        .unwrap();
        req.headers_mut().insert(
            "x-forwarded-for",
            format!("198.51.100.{i}").parse().unwrap(),
        );
        let (mut ws, _) = connect_async(req).await.unwrap();
        let open = ws.next().await.unwrap().unwrap();
        assert!(open.to_text().unwrap().starts_with("0{"), "{open:?}");
        tunnels.push((server.clone(), ws));
    }
    let on_c = tunnels.iter().filter(|(s, _)| s == "c").count();

    let c_addr = servers[2].addr;
    let closes_on_c = || {
        airlock.logs_where(|v| {
            v["event"] == "tunnel_close" && v["upstream.server"] == c_addr.to_string()
        })
    };
    let closed_before = closes_on_c().len();
    servers[2].kill();
    // Its tunnels close at once and cleanly: the client's stream ends (no hang), and once
    // the client closes too, the tunnel is logged as closed by the upstream and the
    // server's count drops to 0.
    // The tunnels on live servers carry on.
    let mut live = Vec::new();
    for (server, mut ws) in tunnels {
        if server == "c" {
            let end = tokio::time::timeout(WAIT, async {
                loop {
                    match ws.next().await {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                        Some(Ok(_)) => continue,
                    }
                }
            })
            .await;
            assert!(end.is_ok(), "a tunnel to the killed server stayed open");
            // Having seen the end, a client closes its socket (dropped here): the relay
            // half-closed towards it, as TCP does, and waits for that.
        } else {
            // Join the default namespace: the live server answers "40{sid}".
            ws.send(Message::text("40")).await.unwrap();
            let reply = ws.next().await.unwrap().unwrap();
            assert!(
                reply.to_text().unwrap().starts_with("40"),
                "{server}: {reply:?}"
            );
            live.push(ws);
        }
    }
    wait_server(&airlock, c_addr, "without tunnels", |s| s["tunnels"] == 0).await;
    let closed = closes_on_c().split_off(closed_before);
    assert_eq!(closed.len(), on_c, "{}", airlock.dump_logs());
    assert!(
        closed.iter().all(|v| v["closed_by"] == "upstream"),
        "{closed:#?}"
    );
    drop(live);

    let down = wait_active(&airlock, c_addr, "down").await;
    assert_eq!(down["available"], false);
    let during = tokio::task::block_in_place(placement);
    for (i, server) in &before {
        if server == "c" {
            assert_ne!(during[i], "c");
        } else {
            assert_eq!(&during[i], server, "client {i} of a live server moved");
        }
    }

    servers[2] = SocketIoServer::start_on("c", c_addr.port());
    wait_active(&airlock, c_addr, "up").await;
    let after = tokio::task::block_in_place(placement);
    assert_eq!(after, before, "c's clients came back to it");
}
