//! Upstream pools: balancing, failover, passive health, and what clients see when every
//! server is unreachable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_tungstenite::connect_async;

use crate::support::client::{Conn, get, get_with, open_ws};
use crate::support::{Airlock, Backend, config, refused_addr, single_route};

async fn tally(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..n {
        // A fresh client connection each time: balancing is per request, not per connection.
        let r = get(addr, &format!("/{i}")).await;
        assert_eq!(r.status, 200);
        *counts
            .entry(r.json()["backend"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_by_weight() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let even = Airlock::start(&single_route(&[a.addr, b.addr], "", ""));
    let counts = tally(even.addr(), 10).await;
    assert_eq!((counts["a"], counts["b"]), (5, 5), "{counts:?}");

    let weighted = Airlock::start(&config(&format!(
        "[[route]]\nname = \"main\"\nupstream = \"pool\"\n\n[upstream.pool]\nservers = [{{ addr = \"{}\", weight = 3 }}, \"{}\"]\n",
        a.addr, b.addr
    )));
    let counts = tally(weighted.addr(), 8).await;
    assert_eq!((counts["a"], counts["b"]), (6, 2), "{counts:?}");
}

/// `active` per server address, from the admin endpoint.
async fn active(airlock: &Airlock) -> HashMap<String, u64> {
    let r = get(airlock.admin(), "/upstreams").await;
    r.json()["upstreams"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["addr"].as_str().unwrap().to_string(),
                s["active"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_new_work_away_from_servers_holding_tunnels() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let airlock = Airlock::start(&single_route(
        &[a.addr, b.addr],
        "",
        "balance = \"least_conn\"",
    ));
    let _ws1 = open_ws(airlock.addr(), "/t1").await;
    let first = airlock
        .wait_for_log("upgrade line", |v| v["upgrade"] == true)
        .await["upstream.server"]
        .as_str()
        .unwrap()
        .to_string();
    let (busy, idle) = if first == a.addr.to_string() {
        (a.addr, b.addr)
    } else {
        (b.addr, a.addr)
    };
    for i in 0..4 {
        // Wait until the previous request's count is released, then the idle server must win.
        let deadline = tokio::time::Instant::now() + crate::support::WAIT;
        while active(&airlock).await[&idle.to_string()] != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "in-flight count never released"
            );
        }
        let r = get(airlock.addr(), &format!("/r{i}")).await;
        let want = if idle == a.addr { "a" } else { "b" };
        assert_eq!(
            r.json()["backend"],
            want,
            "request {i} went to the server holding a tunnel"
        );
    }
    // A second tunnel goes to the other server; the admin endpoint shows one on each.
    let _ws2 = open_ws(airlock.addr(), "/t2").await;
    let counts = active(&airlock).await;
    assert_eq!(
        (counts[&busy.to_string()], counts[&idle.to_string()]),
        (1, 1),
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_server_and_marks_the_dead_one_down() {
    let live = Backend::start("live").await;
    let dead = refused_addr();
    let airlock = Airlock::start(&single_route(
        &[dead, live.addr],
        "",
        "fail_timeout = \"1m\"",
    ));
    let counts = tally(airlock.addr(), 6).await;
    assert_eq!(counts["live"], 6);
    // With max_fails = 1, the dead server failed once and was left out afterwards.
    airlock
        .wait_for_log("failure line", |v| v["message"] == "upstream server failed")
        .await;
    let failures = airlock.logs_where(|v| v["message"] == "upstream server failed");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["marked_down"], true);
    // WebSocket upgrades fail over too.
    let _ws = open_ws(airlock.addr(), "/ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_refusing_is_a_502_and_the_proxy_keeps_serving() {
    let live = Backend::start("live").await;
    let airlock = Airlock::start(&config(&format!(
        "[[route]]\nname = \"dead\"\npath_prefix = \"/dead\"\nupstream = \"dead\"\n\n\
         [[route]]\nname = \"live\"\nupstream = \"live\"\n\n\
         [upstream.dead]\nservers = [\"{}\", \"{}\"]\n\n[upstream.live]\nservers = [\"{}\"]\n",
        refused_addr(),
        refused_addr(),
        live.addr
    )));
    let r = get(airlock.addr(), "/dead/x").await;
    assert_eq!(r.status, 502);
    let err = connect_async(format!("ws://{}/dead/ws", airlock.addr()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("502"), "{err}");
    assert_eq!(get(airlock.addr(), "/ok").await.status, 200);
    let line = airlock
        .wait_for_log("502 access line", |v| v["http.response.status_code"] == 502)
        .await;
    assert_eq!(line["error.source"], "upstream");
    assert!(
        line["error.message"].as_str().unwrap().contains("refused"),
        "{line}"
    );
}

/// A listening socket whose accept queue is full, so new connections hang in SYN-SENT.
fn blackhole() -> (
    tokio::net::TcpListener,
    Vec<std::net::TcpStream>,
    SocketAddr,
) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => return (listener, fillers, addr),
        }
    }
    panic!("could not fill the accept queue of {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeouts_are_a_504() {
    let (_listener, _fillers, addr) = blackhole();
    let airlock = Airlock::start(&single_route(&[addr], "connect_timeout = \"300ms\"", ""));
    let mut conn = Conn::open(airlock.addr()).await;
    let r = conn.get("/slow").await;
    assert_eq!(r.status, 504);
    let line = airlock
        .wait_for_log("504 access line", |v| v["http.response.status_code"] == 504)
        .await;
    assert!(
        line["error.message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{line}"
    );
}

/// Backends "a", "b" and "c", and their addresses.
async fn three_backends() -> (Vec<Backend>, Vec<SocketAddr>) {
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(Backend::start(name).await);
    }
    let addrs = backends.iter().map(|b| b.addr).collect();
    (backends, addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_two_uses_every_server() {
    let (_backends, addrs) = three_backends().await;
    let airlock = Airlock::start(&single_route(&addrs, "", "balance = \"random_two\""));
    // Idle servers tie, so picks follow the (equal) weights: 60 requests miss a server
    // with probability 3 × (2/3)^60, about 1e-10.
    let counts = tally(airlock.addr(), 60).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_sends_each_key_to_one_server() {
    let (_backends, addrs) = three_backends().await;
    let airlock = Airlock::start(&single_route(
        &addrs,
        "",
        "balance = \"consistent_hash\"\nhash_key = \"header:X-User\"",
    ));
    let mut used = std::collections::BTreeSet::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..3 {
            let r = get_with(airlock.addr(), &format!("/{i}"), &[("x-user", &user)]).await;
            seen.insert(r.json()["backend"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "{user} went to {seen:?}");
        used.extend(seen);
    }
    assert!(used.len() >= 2, "20 users all on {used:?}");
}

const WS_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_is_set_once_followed_and_replaced_when_its_server_dies() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let airlock = Airlock::start(&single_route(
        &[a.addr, b.addr],
        "",
        "balance = \"sticky_cookie\"\nfail_timeout = \"1m\"\nkeepalive = 0\ncookie = { name = \"srv\", strip = true }",
    ));
    let first = get(airlock.addr(), "/").await;
    let set = first
        .header("set-cookie")
        .expect("a new client gets a cookie");
    assert!(set.starts_with("srv="), "{set}");
    assert!(set.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{set}");
    assert!(!set.contains("127.0.0.1") && !set.contains(&a.addr.port().to_string()));
    let pair = set.split(';').next().unwrap().to_string();
    let home = first.json()["backend"].as_str().unwrap().to_string();

    // With the cookie: always the same server, no new cookie, and (strip) the upstream
    // sees the other cookies but not this one.
    let cookies = format!("theme=dark; {pair}");
    for i in 0..6 {
        let r = get_with(airlock.addr(), &format!("/{i}"), &[("cookie", &cookies)]).await;
        assert_eq!(r.json()["backend"], home.as_str(), "request {i}");
        assert_eq!(r.header("set-cookie"), None);
        assert_eq!(r.json()["headers"]["cookie"], "theme=dark");
    }
    // A made-up value names no server: placed anew, with a cookie.
    let forged = get_with(
        airlock.addr(),
        "/",
        &[("cookie", "srv=0123456789abcdef01234567")],
    )
    .await;
    assert!(forged.header("set-cookie").is_some());

    // The 101 of an upgrade carries the cookie too.
    let (_ws, head) = crate::support::client::upgrade_head(airlock.addr(), WS_UPGRADE).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nset-cookie: srv="),
        "{head}"
    );

    // The cookie's server dies: the client moves and gets the other server's cookie.
    let (dead, other) = if home == "a" { (a, "b") } else { (b, "a") };
    drop(dead);
    let moved = get_with(airlock.addr(), "/", &[("cookie", &cookies)]).await;
    assert_eq!(moved.status, 200);
    assert_eq!(moved.json()["backend"], other);
    let new_pair = moved
        .header("set-cookie")
        .expect("a new cookie")
        .split(';')
        .next()
        .unwrap();
    assert_ne!(new_pair, pair);
    let again = get_with(airlock.addr(), "/", &[("cookie", new_pair)]).await;
    assert_eq!(again.json()["backend"], other);
    assert_eq!(again.header("set-cookie"), None);
}
