//! Servers given by name: every address the system resolver gives is a server, names are
//! resolved again every `resolve_interval`, and a name that does not resolve is reported
//! once and leaves the other servers serving.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use crate::support::client::get;
use crate::support::{Airlock, Backend, config};

fn upstreams(r: &crate::support::client::Response) -> Value {
    r.json()["upstreams"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_becomes_every_address_it_resolves_to() {
    let backend = Backend::start("named").await;
    let port = backend.addr.port();
    let airlock = Airlock::start(&config(&format!(
        "[[route]]\nname = \"main\"\npath_prefix = \"/\"\nupstream = \"pool\"\n\n[upstream.pool]\nservers = [\"localhost:{port}\"]\nresolve_interval = \"1s\"\n"
    )));
    // Resolved before the first request: no 503 window at start.
    let r = get(airlock.addr(), "/").await;
    assert_eq!(r.status, 200, "{}", airlock.dump_logs());
    assert_eq!(r.json()["backend"], "named");

    let expected: BTreeSet<String> = tokio::net::lookup_host(format!("localhost:{port}"))
        .await
        .unwrap()
        .map(|a| a.to_string())
        .collect();
    let pool = upstreams(&get(airlock.admin(), "/upstreams").await);
    let servers: BTreeSet<String> = pool["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert_eq!(s["name"], format!("localhost:{port}"), "{s:#}");
            s["addr"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(servers, expected, "{pool:#}");
    let name = &pool["names"][0];
    assert_eq!(name["name"], format!("localhost:{port}"));
    assert!(name["error"].is_null(), "{name:#}");
    let first = name["resolved_at"].as_str().unwrap().to_string();

    // Resolved again within the interval (1s), with the same answer: the same servers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pool = upstreams(&get(airlock.admin(), "/upstreams").await);
        if pool["names"][0]["resolved_at"].as_str() != Some(&first) {
            assert_eq!(pool["servers"].as_array().unwrap().len(), expected.len());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never re-resolved: {pool:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        airlock
            .logs_where(|v| v["message"] == "upstream servers changed")
            .len()
            <= 1,
        "only the first resolution changes the servers:\n{}",
        airlock.dump_logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_does_not_resolve_is_reported_once_and_the_rest_serve() {
    let backend = Backend::start("literal").await;
    let airlock = Airlock::start(&config(&format!(
        "[[route]]\nname = \"main\"\npath_prefix = \"/\"\nupstream = \"mixed\"\n\n[[route]]\nname = \"lost\"\npath_prefix = \"/lost\"\nupstream = \"lost\"\n\n[upstream.mixed]\nservers = [\"no-such-host.invalid:9001\", \"{}\"]\nresolve_interval = \"1s\"\n\n[upstream.lost]\nservers = [\"no-such-host.invalid:9002\"]\nresolve_interval = \"1s\"\n",
        backend.addr
    )));
    for i in 0..4 {
        let r = get(airlock.addr(), &format!("/{i}")).await;
        assert_eq!(r.status, 200, "{}", airlock.dump_logs());
        assert_eq!(r.json()["backend"], "literal");
    }
    // A pool with nothing resolved answers 503 with the reason, not a hang or a 502.
    let r = get(airlock.addr(), "/lost/x").await;
    assert_eq!(r.status, 503, "{:?}", r.body);

    // Retried every second (the backoff is capped by the interval), warned about once
    // per name: after 2.5s each name has failed three times.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let all = get(airlock.admin(), "/upstreams").await.json();
    for pool in all["upstreams"].as_array().unwrap() {
        let name = &pool["names"][0];
        assert!(name["error"].is_string(), "{pool:#}");
        assert!(name["resolved_at"].is_null(), "{pool:#}");
    }
    let warned = airlock.logs_where(|v| {
        v["message"] == "cannot resolve upstream server name; keeping its last addresses"
    });
    assert_eq!(
        warned.len(),
        2,
        "one warning per name:\n{}",
        airlock.dump_logs()
    );
    let r = get(airlock.addr(), "/lost/again").await;
    assert_eq!(r.status, 503);
}
