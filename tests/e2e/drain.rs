//! Drains that WebSocket clients survive: on SIGTERM and on an admin drain of a server,
//! open tunnels get close frames (both sides), spread over `drain_spread`.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::support::client::{Ws, open_ws, request};
use crate::support::{Airlock, Backend, single_route};

/// Open `n` WebSockets through `airlock`, each past its greeting.
async fn open(airlock: &Airlock, n: usize) -> Vec<Ws> {
    let mut all = Vec::new();
    for _ in 0..n {
        let ws = open_ws(airlock.addr(), "/").await;
        all.push(ws);
    }
    all
}

/// Read until the proxy's close frame; when it came (after `since`) and its code.
/// Reading on lets the client library answer it, as a browser does.
async fn await_close(mut ws: Ws, since: Instant, limit: Duration) -> Option<(Duration, u16)> {
    let read = async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Close(frame) = msg {
                let at = since.elapsed();
                // Let the reply go out and the proxy close the connection.
                while let Some(Ok(_)) = ws.next().await {}
                return Some((at, frame.map_or(1005, |f| u16::from(f.code))));
            }
        }
        None
    };
    tokio::time::timeout(limit, read).await.ok().flatten()
}

/// Still relaying: an echo comes back.
async fn still_echoes(ws: &mut Ws) -> bool {
    if ws.send(Message::text("still there?")).await.is_err() {
        return false;
    }
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    matches!(echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "still there?")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_1001_spread_over_drain_spread() {
    let backend = Backend::start("a").await;
    let cfg = single_route(&[backend.addr], "", "").replace(
        "shutdown_grace = \"5s\"",
        "shutdown_grace = \"6s\"\ndrain_spread = \"2s\"",
    );
    let mut airlock = Airlock::start(&cfg);
    let clients = open(&airlock, 100).await;

    let since = Instant::now();
    airlock.signal("TERM");
    let closes: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(await_close(ws, since, Duration::from_secs(6))))
        .collect();
    let mut at = Vec::new();
    for close in closes {
        let (when, code) = close
            .await
            .unwrap()
            .expect("a close frame within the grace");
        assert_eq!(code, 1001);
        at.push(when);
    }
    at.sort();
    let (first, last) = (at[0], at[99]);
    // Turns come every 20 ms, the first 10 ms in and the last 10 ms before the end; the
    // bounds leave room for a slow machine's delays, none for an all-at-once close.
    assert!(
        first < Duration::from_millis(500),
        "first close at {first:?}"
    );
    assert!(
        last >= Duration::from_millis(1700),
        "last close at {last:?}"
    );
    assert!(last < Duration::from_millis(3500), "last close at {last:?}");
    for window in at.windows(26) {
        assert!(
            window[25] - window[0] >= Duration::from_millis(250),
            "26 closes within {:?}: not spread",
            window[25] - window[0]
        );
    }
    let status = airlock.wait_exit(Duration::from_secs(6)).await;
    assert!(status.success(), "{status}");
    assert!(
        since.elapsed() < Duration::from_secs(6),
        "exited after the grace"
    );

    // The upstream got a close frame on every tunnel too, with the same code.
    let upstream = backend.close_codes.lock().unwrap().clone();
    assert_eq!(upstream.len(), 100, "{upstream:?}");
    assert!(upstream.iter().all(|c| *c == 1001), "{upstream:?}");
    let logged = airlock.logs_where(|v| v["event"] == "tunnel_close");
    assert_eq!(logged.len(), 100);
    for line in &logged {
        assert_eq!(line["reason"], "drain", "{line}");
        assert_eq!(line["closed_by"], "proxy", "{line}");
        assert_eq!(line["close_code"], 1001, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_close_code_is_configurable() {
    let backend = Backend::start("a").await;
    let cfg = single_route(&[backend.addr], "", "").replace(
        "shutdown_grace = \"5s\"",
        "shutdown_grace = \"5s\"\ndrain_spread = \"100ms\"\ndrain_close_code = 1012",
    );
    let mut airlock = Airlock::start(&cfg);
    let ws = open(&airlock, 1).await.pop().unwrap();
    airlock.signal("TERM");
    let (_, code) = await_close(ws, Instant::now(), Duration::from_secs(5))
        .await
        .expect("a close frame");
    assert_eq!(code, 1012);
    airlock.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(*backend.close_codes.lock().unwrap(), [1012]);
}

/// `POST` to the admin endpoint.
async fn post(airlock: &Airlock, path: &str) -> u16 {
    let mut conn = crate::support::client::Conn::open(airlock.admin()).await;
    conn.send(request("POST", path, &[], bytes::Bytes::new()))
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_server_closes_its_tunnels_and_no_others() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let cfg = single_route(&[a.addr, b.addr], "", "").replace(
        "shutdown_grace = \"5s\"",
        "shutdown_grace = \"5s\"\ndrain_spread = \"1s\"",
    );
    let airlock = Airlock::start(&cfg);
    // Round robin: half of them on each server.
    let clients = open(&airlock, 10).await;
    assert_eq!(a.connections.load(std::sync::atomic::Ordering::Relaxed), 5);

    let path = format!("/upstreams/pool/servers/{}/drain", a.addr);
    assert_eq!(post(&airlock, &path).await, 200);
    let since = Instant::now();
    let waits: Vec<_> = clients
        .into_iter()
        .map(|ws| {
            tokio::spawn(async move {
                let mut ws = ws;
                // A tunnel on `b` keeps echoing; one on `a` gets a close frame.
                let closed = tokio::time::timeout(Duration::from_secs(3), async {
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Close(frame))) => {
                                return frame.map(|f| u16::from(f.code));
                            }
                            Some(Ok(_)) => {}
                            _ => return None,
                        }
                    }
                })
                .await;
                match closed {
                    Ok(code) => (Some(code), false),
                    Err(_) => (None, still_echoes(&mut ws).await),
                }
            })
        })
        .collect();
    let mut closed = 0;
    let mut kept = 0;
    for wait in waits {
        match wait.await.unwrap() {
            (Some(code), _) => {
                assert_eq!(code, Some(1001));
                closed += 1;
            }
            (None, echoes) => {
                assert!(echoes, "a tunnel on the other server stopped relaying");
                kept += 1;
            }
        }
    }
    assert!(since.elapsed() >= Duration::from_secs(3));
    assert_eq!((closed, kept), (5, 5));
    assert_eq!(*a.close_codes.lock().unwrap(), [1001; 5]);
    assert!(b.close_codes.lock().unwrap().is_empty());
    // New connections go to `b` only.
    let _more = open(&airlock, 4).await;
    assert_eq!(a.connections.load(std::sync::atomic::Ordering::Relaxed), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_keeps_tunnels_or_is_undone_closes_nothing() {
    let a = Backend::start("a").await;
    let cfg = single_route(&[a.addr], "", "").replace(
        "shutdown_grace = \"5s\"",
        "shutdown_grace = \"5s\"\ndrain_spread = \"2s\"",
    );
    let airlock = Airlock::start(&cfg);
    let mut clients = open(&airlock, 4).await;
    let server = format!("/upstreams/pool/servers/{}", a.addr);
    assert_eq!(
        post(&airlock, &format!("{server}/drain?tunnels=keep")).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for ws in &mut clients {
        assert!(still_echoes(ws).await, "`tunnels=keep` closed a tunnel");
    }
    // A drain undone before its spread is over stops closing: the first of four closes
    // at 250 ms, the undrain comes before the second at 750 ms.
    assert_eq!(post(&airlock, &format!("{server}/undrain")).await, 200);
    assert_eq!(post(&airlock, &format!("{server}/drain")).await, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(post(&airlock, &format!("{server}/undrain")).await, 200);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut still = 0;
    for ws in &mut clients {
        if still_echoes(ws).await {
            still += 1;
        }
    }
    assert_eq!(still, 3, "one closed before the undrain, the others kept");
    assert_eq!(*a.close_codes.lock().unwrap(), [1001]);
}
