//! Rate limits shared by two airlock instances through a real Redis, and what happens
//! when Redis stops answering or dies.

use std::time::Duration;

use crate::support::client::{Response, get};
use crate::support::redis::Redis;
use crate::support::{Airlock, Backend, config};

/// Longer than the 5ms default: on a machine busy with the other tests a debug build's
/// check can take longer than 5ms now and then, and the test is about sharing and
/// `on_store_error`, not about the default. What it checks of the timeout is that no
/// handshake waits much longer than it.
const STORE_TIMEOUT: &str = "100ms";

fn shared_config(backend: std::net::SocketAddr, redis: &Redis) -> String {
    let url = redis.url();
    config(&format!(
        "[[route]]\nname = \"strict\"\npath_prefix = \"/strict\"\nupstream = \"pool\"\nlimits = [\"strict\"]\n\n\
         [[route]]\nname = \"main\"\npath_prefix = \"/\"\nupstream = \"pool\"\nlimits = [\"shared\"]\n\n\
         [upstream.pool]\nservers = [\"{backend}\"]\n\n\
         [limit.shared]\nrate = \"3/min\"\nstore = \"{url}\"\nstore_timeout = \"{STORE_TIMEOUT}\"\n\n\
         [limit.strict]\nrate = \"3/min\"\nstore = \"{url}\"\nstore_timeout = \"{STORE_TIMEOUT}\"\n\
         on_store_error = \"deny\"\n"
    ))
}

/// A request, and how long it took.
async fn timed(addr: std::net::SocketAddr, path: &str) -> (Response, Duration) {
    let started = tokio::time::Instant::now();
    let response = get(addr, path).await;
    (response, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_rate_in_redis_and_apply_on_store_error_when_it_fails() {
    let Some(redis) = Redis::start() else { return };
    let backend = Backend::start("a").await;
    let cfg = shared_config(backend.addr, &redis);
    let one = Airlock::start(&cfg);
    let two = Airlock::start(&cfg);

    // 3 per minute across both: alternating between them, exactly three pass.
    let mut codes = Vec::new();
    let mut last = None;
    for i in 0..6 {
        let instance = if i % 2 == 0 { &one } else { &two };
        let response = get(instance.addr(), "/").await;
        codes.push(response.status);
        last = Some(response);
    }
    assert_eq!(codes, [200, 200, 200, 429, 429, 429]);
    // The next would pass 20 s after the first (one interval of a 3/min rate).
    let retry: u64 = last
        .unwrap()
        .header("retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!((19..=20).contains(&retry), "Retry-After: {retry}");

    // Redis stops answering (SIGSTOP: the connection stays open, replies never come).
    redis.signal("STOP");
    let mut slowest = Duration::ZERO;
    let mut fallback = Vec::new();
    for _ in 0..5 {
        let (response, took) = timed(one.addr(), "/").await;
        fallback.push(response.status);
        slowest = slowest.max(took);
        let (response, took) = timed(one.addr(), "/strict").await;
        assert_eq!(response.status, 503, "on_store_error = \"deny\"");
        slowest = slowest.max(took);
    }
    // "allow" falls back to this instance's own count of the same rate: a fresh burst of
    // three here, then refusals; never unlimited.
    assert_eq!(fallback, [200, 200, 200, 429, 429]);
    assert!(
        slowest < Duration::from_millis(600),
        "a handshake waited {slowest:?} on a silent store (store_timeout is {STORE_TIMEOUT})"
    );
    let warned = one
        .wait_for_log("the outage warning", |v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("shared store failed"))
        })
        .await;
    assert!(
        warned["limit"] == "shared" || warned["limit"] == "strict",
        "{warned}"
    );
    let denied = one
        .wait_for_log("the deny", |v| {
            v["event"] == "request" && v["limit"] == "strict"
        })
        .await;
    assert!(
        denied["error.message"]
            .as_str()
            .is_some_and(|m| m.contains("on_store_error")),
        "{denied}"
    );

    // Back again: the shared count still holds the first three.
    redis.signal("CONT");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    loop {
        let response = get(one.addr(), "/strict").await;
        if response.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never answered again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(one.addr(), "/").await.status,
        429,
        "still over the shared rate"
    );
    one.wait_for_log("the recovery", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("answers again"))
    })
    .await;

    // Redis dies: connections are refused, and the same rules apply at once.
    redis.signal("KILL");
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        let (response, took) = timed(two.addr(), "/strict").await;
        assert_eq!(response.status, 503);
        assert!(took < Duration::from_millis(500), "took {took:?}");
    }
}
