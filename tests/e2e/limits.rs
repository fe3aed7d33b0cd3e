//! Admission limits through the real binary: rates with `Retry-After`, concurrent counts,
//! keys, `max_connections`, slots released on every way a request or tunnel ends, and a
//! flood of keys held to `max_keys`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::support::client::{Conn, get, get_with, request, status_of, upgrade_head};
use crate::support::{Airlock, Backend, WAIT, plugin_wasm, refused_addr, single_route};

const WS_UPGRADE: &str = "HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n";

/// Open a WebSocket on `path` with raw bytes; the status and the socket.
async fn upgrade(addr: SocketAddr, path: &str, headers: &str) -> (u16, TcpStream, String) {
    let request = format!("GET {path} {WS_UPGRADE}{headers}\r\n");
    let (stream, head) = upgrade_head(addr, request.as_bytes()).await;
    (status_of(&head), stream, head)
}

fn with_limit(servers: &[SocketAddr], route: &str, limit: &str) -> String {
    format!(
        "{}\n{limit}\n",
        single_route(servers, &format!("limits = [\"l\"]\n{route}"), "")
    )
}

/// What `GET /limits` says about limit `l`.
async fn limit_status(airlock: &Airlock) -> serde_json::Value {
    let all = get(airlock.admin(), "/limits").await.json();
    all["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "l")
        .cloned()
        .expect("limit l in /limits")
}

/// Wait until limit `l` tracks no key: every slot given back.
async fn wait_released(airlock: &Airlock, after: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = limit_status(airlock).await;
        if status["tracked_keys"] == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {after}, a slot is still held: {status}\n{}",
            airlock.dump_logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_admits_its_burst_then_answers_429_with_a_retry_after_that_holds() {
    let backend = Backend::start("a").await;
    // 2/s with a burst of 3: three at once, then one each 500 ms.
    let airlock = Airlock::start(&with_limit(
        &[backend.addr],
        "",
        "[limit.l]\nrate = \"2/s\"\nburst = 3\n",
    ));
    let mut conn = Conn::open(airlock.addr()).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(conn.get("/").await);
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    assert_eq!(codes, [200, 200, 200, 429, 429]);
    // The fourth would pass 500 ms after the first three: rounded up, 1 second.
    assert_eq!(statuses[3].header("retry-after"), Some("1"));
    let refused = airlock
        .wait_for_log("the refusal", |v| v["http.response.status_code"] == 429)
        .await;
    assert_eq!(refused["limit"], "l", "{refused}");
    assert_eq!(refused["error.source"], "limit", "{refused}");

    // Waiting as told (1 s, two intervals of 500 ms) admits exactly two more.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(conn.get("/").await.status);
    }
    assert_eq!(codes, [200, 200, 429]);
    // A WebSocket handshake counts the same as a request.
    let (status, _, head) = upgrade(airlock.addr(), "/ws", "").await;
    assert_eq!(status, 429, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_key_counts_each_value_and_falls_back_to_the_address() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&with_limit(
        &[backend.addr],
        "",
        "[limit.l]\nrate = \"1/min\"\nkey = \"header:X-Api-Key\"\n",
    ));
    let addr = airlock.addr();
    let key = |k: &'static str| [("x-api-key", k)];
    assert_eq!(get_with(addr, "/", &key("alpha")).await.status, 200);
    let refused = get_with(addr, "/", &key("alpha")).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("60"));
    assert_eq!(get_with(addr, "/", &key("beta")).await.status, 200);
    // Without the header, the client's address is the key: once, then refused.
    assert_eq!(get(addr, "/").await.status, 200);
    assert_eq!(get(addr, "/").await.status, 429);
    // A key of any length costs one entry (long ones are kept as a digest).
    let long = "k".repeat(4000);
    let long_key = [("x-api-key", long.as_str())];
    assert_eq!(get_with(addr, "/", &long_key).await.status, 200);
    assert_eq!(get_with(addr, "/", &long_key).await.status, 429);
    assert_eq!(limit_status(&airlock).await["tracked_keys"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tunnels_per_client_are_capped_and_come_back_when_one_closes() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&with_limit(
        &[backend.addr],
        "",
        "[limit.l]\nconcurrent = 2\n",
    ));
    let (first, s1, _) = upgrade(airlock.addr(), "/ws", "").await;
    let (second, s2, _) = upgrade(airlock.addr(), "/ws", "").await;
    assert_eq!((first, second), (101, 101));
    let (third, _, head) = upgrade(airlock.addr(), "/ws", "").await;
    assert_eq!(third, 503, "{head}");
    assert!(!head.to_ascii_lowercase().contains("retry-after"), "{head}");
    // Plain requests count while they run; with two tunnels open there is no room.
    assert_eq!(get(airlock.addr(), "/").await.status, 503);
    assert_eq!(limit_status(&airlock).await["tracked_keys"], 1);

    drop(s1);
    airlock
        .wait_for_log("the first tunnel's close", |v| v["event"] == "tunnel_close")
        .await;
    let (fourth, _s4, _) = upgrade(airlock.addr(), "/ws", "").await;
    assert_eq!(fourth, 101);
    drop((s2, _s4));
    wait_released(&airlock, "closing both tunnels").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_key_caps_each_route_that_names_the_limit() {
    let backend = Backend::start("a").await;
    let config = format!(
        "{}\n[[route]]\nname = \"other\"\npath_prefix = \"/other\"\nupstream = \"pool\"\nlimits = [\"l\"]\n\n[limit.l]\nconcurrent = 1\nkey = \"route\"\n",
        single_route(&[backend.addr], "limits = [\"l\"]", "")
    );
    let airlock = Airlock::start(&config);
    let (a, _main, _) = upgrade(airlock.addr(), "/ws", "").await;
    let (b, _other, _) = upgrade(airlock.addr(), "/other/ws", "").await;
    assert_eq!((a, b), (101, 101), "one tunnel on each route");
    // A different client address makes no difference: the route is the key.
    let (c, _, _) = upgrade(airlock.addr(), "/ws", "").await;
    assert_eq!(c, 503);
    assert_eq!(limit_status(&airlock).await["tracked_keys"], 2);
}

/// A WebSocket upstream that accepts one upgrade per connection and closes it at once.
async fn upstream_that_hangs_up() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                    b"dGhlIHNhbXBsZSBub25jZQ==",
                );
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_given_back_on_every_way_a_request_or_tunnel_ends() {
    let backend = Backend::start("a").await;
    let hangs_up = upstream_that_hangs_up().await;
    let dead = refused_addr();
    let route = |name: &str, prefix: &str, pool: &str, extra: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"{pool}\"\nlimits = [\"l\"]\n{extra}\n"
        )
    };
    let config = crate::support::config(&format!(
        "{}{}{}{}{}\
         [upstream.pool]\nservers = [\"{}\"]\n\n[upstream.hangs_up]\nservers = [\"{hangs_up}\"]\n\n\
         [upstream.dead]\nservers = [\"{dead}\"]\nmax_fails = 0\n\n\
         [plugin.origin]\nwasm = \"{}\"\nconfig = {{ allow = [\"https://app.example.com\"] }}\n\n\
         [limit.l]\nconcurrent = 1\n",
        route("idle", "/idle", "pool", "idle_timeout = \"300ms\""),
        route("hangs_up", "/hangs_up", "hangs_up", ""),
        route("dead", "/dead", "dead", ""),
        route("origin", "/origin", "pool", "plugins = [\"origin\"]"),
        route("main", "/", "pool", ""),
        backend.addr,
        plugin_wasm("origin_allowlist.wasm"),
    ));
    let airlock = Airlock::start(&config);
    let addr = airlock.addr();
    // Each way of ending, then the one slot must be free: a tunnel is admitted.
    let admitted = async |after: &str| {
        wait_released(&airlock, after).await;
        let (status, stream, head) = upgrade(addr, "/ws", "").await;
        assert_eq!(status, 101, "after {after}: {head}");
        drop(stream);
        wait_released(&airlock, after).await;
    };

    // The client resets the connection mid-tunnel.
    let (status, stream, _) = upgrade(addr, "/ws", "").await;
    assert_eq!(status, 101);
    stream.set_zero_linger().unwrap();
    drop(stream);
    admitted("a client reset").await;

    // The upstream closes the tunnel.
    let (status, mut stream, _) = upgrade(addr, "/hangs_up/ws", "").await;
    assert_eq!(status, 101);
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
    // A client closes its side when the upstream's ends (else the tunnel rightly waits
    // for it, up to `half_close_timeout`).
    drop(stream);
    admitted("the upstream hanging up").await;

    // The idle timeout closes it.
    let (status, _idle, _) = upgrade(addr, "/idle/ws", "").await;
    assert_eq!(status, 101);
    airlock
        .wait_for_log("the idle close", |v| {
            v["event"] == "tunnel_close" && v["route"] == "idle"
        })
        .await;
    admitted("an idle timeout").await;

    // A plugin rejects the handshake (limits run first, so it held a slot).
    let (status, _, _) = upgrade(addr, "/origin/ws", "Origin: https://evil.example\r\n").await;
    assert_eq!(status, 403);
    admitted("a plugin's rejection").await;

    // The upstream cannot be reached.
    let (status, _, _) = upgrade(addr, "/dead/ws", "").await;
    assert_eq!(status, 502);
    admitted("a dead upstream").await;

    // The upstream refuses the upgrade with a body, streamed back.
    let (status, _, _) = upgrade(addr, "/refuse-upgrade", "").await;
    assert_eq!(status, 403);
    admitted("an upstream's refusal").await;

    // Plain requests, one after another on a keep-alive connection: each frees its slot
    // when its response ends.
    let mut conn = Conn::open(addr).await;
    for _ in 0..3 {
        assert_eq!(conn.get("/").await.status, 200);
    }
    let echoed = conn
        .send(request("POST", "/echo", &[], vec![7u8; 100_000]))
        .await;
    assert_eq!((echoed.status, echoed.body.len()), (200, 100_000));
    admitted("plain requests").await;

    // A client that goes away while its response streams.
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nabc")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(raw);
    admitted("a client gone mid-request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_answers_503_and_closes_beyond_the_limit() {
    let backend = Backend::start("a").await;
    let config = format!(
        "max_connections = 2\n{}",
        single_route(&[backend.addr], "", "")
    );
    let airlock = Airlock::start(&config);
    let (a, s1, _) = upgrade(airlock.addr(), "/ws", "").await;
    let (b, _s2, _) = upgrade(airlock.addr(), "/ws", "").await;
    assert_eq!((a, b), (101, 101));
    let mut third = TcpStream::connect(airlock.addr()).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = crate::support::client::read_all(&mut third).await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let log = airlock
        .wait_for_log("the refusal", |v| v["limit"] == "max_connections")
        .await;
    assert_eq!(log["http.response.status_code"], 503, "{log}");
    let limits = get(airlock.admin(), "/limits").await.json();
    assert_eq!(limits["connections"]["max"], 2, "{limits}");

    drop(s1);
    airlock
        .wait_for_log("the tunnel's close", |v| v["event"] == "tunnel_close")
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let open = get(airlock.admin(), "/limits").await.json()["connections"]["open"].clone();
        if open == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "open: {open}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(airlock.addr(), "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_is_held_to_max_keys() {
    let backend = Backend::start("a").await;
    // Every key is in debt for an hour, so none goes idle by itself: only eviction can
    // keep the table at its cap.
    let airlock = Airlock::start(&with_limit(
        &[backend.addr],
        "",
        "[limit.l]\nrate = \"1/h\"\nkey = \"header:X-Key\"\nmax_keys = 1000\n",
    ));
    let flood = |worker: u32| {
        let addr = airlock.addr();
        async move {
            let mut conn = Conn::open(addr).await;
            for n in 0..2500u32 {
                let key = format!("{worker}-{n}");
                let r = conn.send(request("GET", "/", &[("x-key", &key)], "")).await;
                assert_eq!(r.status, 200, "key {key}: a new key is admitted");
            }
        }
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        futures_util::future::join_all((0..4).map(flood)),
    )
    .await
    .expect("flood in time");
    let status = limit_status(&airlock).await;
    let tracked = status["tracked_keys"].as_u64().unwrap();
    assert!(
        (1..=1000).contains(&tracked),
        "10,000 keys, max_keys 1000: {status}"
    );
    // A key just seen is still remembered: the eviction forgets the oldest debts first.
    let recent = get_with(airlock.addr(), "/", &[("x-key", "3-2499")]).await;
    assert_eq!(recent.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_at_max_conns_is_passed_over_even_by_a_hash() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let airlock = Airlock::start(&single_route(
        &[a.addr, b.addr],
        "",
        "balance = \"ip_hash\"\nmax_conns = 1",
    ));
    // ip_hash sends this client to one server; that one is full after the first tunnel.
    let (first, _s1, _) = upgrade(airlock.addr(), "/ws", "").await;
    let (second, _s2, _) = upgrade(airlock.addr(), "/ws", "").await;
    assert_eq!((first, second), (101, 101));
    let pools = get(airlock.admin(), "/upstreams").await.json();
    let tunnels: Vec<_> = pools["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tunnels"].clone())
        .collect();
    assert_eq!(tunnels, [1, 1], "one tunnel on each server: {pools}");
    // Both full, no queue_timeout: refused at once.
    let started = tokio::time::Instant::now();
    let (third, _, head) = upgrade(airlock.addr(), "/ws", "").await;
    assert_eq!(third, 503, "{head}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let log = airlock
        .wait_for_log("the refusal", |v| v["http.response.status_code"] == 503)
        .await;
    let message = log["error.message"].as_str().unwrap_or_default();
    assert!(message.contains("max_conns"), "{log}");
    let pools = get(airlock.admin(), "/upstreams").await.json();
    assert_eq!(pools["upstreams"][0]["max_conns"], 1, "{pools}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_in_the_queue_for_a_slot_then_gets_503_after_queue_timeout() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&single_route(
        &[backend.addr],
        "",
        "max_conns = 1\nqueue_timeout = \"1500ms\"",
    ));
    let (first, s1, _) = upgrade(airlock.addr(), "/ws", "").await;
    assert_eq!(first, 101);
    // The second waits; the first tunnel closes 300 ms later and the second gets its slot.
    let addr = airlock.addr();
    let waiting = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let (status, stream, _) = upgrade(addr, "/ws", "").await;
        (status, started.elapsed(), stream)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s1);
    let (status, waited, _s2) = waiting.await.unwrap();
    assert_eq!(status, 101);
    assert!(waited >= Duration::from_millis(250), "waited {waited:?}");
    // With the slot taken again, the next waits the whole queue_timeout, then 503.
    let started = tokio::time::Instant::now();
    let (status, _, _) = upgrade(addr, "/ws", "").await;
    let waited = started.elapsed();
    assert_eq!(status, 503);
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
    // A plain request is queued the same way and refused the same way.
    assert_eq!(get(addr, "/").await.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_key_limits_follow_identity_and_0_2_plugins_still_run_beside_it() {
    let backend = Backend::start("a").await;
    let config = format!(
        "{}\n[plugin.old]\nwasm = \"{}\"\nconfig = {{ set_headers = [[\"x-old-ran\", \"1\"]] }}\n\n\
         [plugin.id]\nwasm = \"{}\"\nconfig = {{ limit_key_header = \"x-user\", require_header = [\"x-old-ran\", \"1\"] }}\n\n\
         [limit.l]\nrate = \"1/min\"\nkey = \"plugin\"\n",
        single_route(
            &[backend.addr],
            "plugins = [\"old\", \"id\"]\nlimits = [\"l\"]",
            ""
        ),
        plugin_wasm("compat_v0_2.wasm"),
        plugin_wasm("test_guest.wasm"),
    );
    let airlock = Airlock::start(&config);
    let addr = airlock.addr();
    let user = |u: &'static str| [("x-user", u)];
    // One address, two identities: each has its own count.
    let first = get_with(addr, "/", &user("alice")).await;
    assert_eq!(
        first.status, 200,
        "the 0.2 plugin ran first: {:?}",
        first.body
    );
    assert_eq!(first.json()["headers"]["x-old-ran"], "1");
    assert_eq!(get_with(addr, "/", &user("alice")).await.status, 429);
    assert_eq!(get_with(addr, "/", &user("bob")).await.status, 200);
    // No identity: the address is the key.
    assert_eq!(get(addr, "/").await.status, 200);
    assert_eq!(get(addr, "/").await.status, 429);
    // The identity is not written to the log.
    let logs = airlock.dump_logs();
    assert!(!logs.contains("alice"), "{logs}");
}
