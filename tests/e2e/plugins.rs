//! Wasm handshake plugins through the real binary: the example plugins, the chain, and the
//! sandbox (guests that loop, allocate, panic and trap on purpose).

use std::time::Duration;

use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::support::client::{get, get_with, ws_handshake};
use crate::support::{Airlock, Backend, config, plugin_wasm};

/// A config whose route `main` (every path) runs `plugins` in front of `backend`, with the
/// `[plugin.*]` tables in `plugin_tables`.
pub fn with_plugins(backend: &Backend, plugins: &[&str], plugin_tables: &str) -> String {
    let list: Vec<String> = plugins.iter().map(|p| format!("\"{p}\"")).collect();
    config(&format!(
        "[[route]]\nname = \"main\"\nupstream = \"pool\"\nplugins = [{}]\n\n[upstream.pool]\nservers = [\"{}\"]\n\n[upstream.canary]\nservers = [\"{}\"]\n\n{plugin_tables}\n",
        list.join(", "),
        backend.addr,
        backend.addr,
    ))
}

fn guest(name: &str, config: &str) -> String {
    format!(
        "[plugin.{name}]\nwasm = \"{}\"\nconfig = {config}\n",
        plugin_wasm("test_guest.wasm")
    )
}

/// A config whose upstream `pool` is `backend`, routes to come.
fn pool_config(backend: &Backend) -> String {
    config(&format!(
        "[upstream.pool]\nservers = [\"{}\"]\n",
        backend.addr
    ))
}

/// A route `name` for `/prefix` through the test guest `name` configured with
/// `guest_config`; `options` are more keys of its `[plugin.*]` table.
fn guest_route(name: &str, prefix: &str, guest_config: &str, options: &str) -> String {
    format!(
        "\n[[route]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstream = \"pool\"\nplugins = [\"{name}\"]\n\n{}{options}",
        guest(name, guest_config)
    )
}

/// A WebSocket handshake with these headers; the status the client got.
async fn ws_status(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    ws_handshake(addr, path, headers).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allowlist_admits_listed_origins_and_rejects_the_rest() {
    let backend = Backend::start("a").await;
    let table = format!(
        "[plugin.origin]\nwasm = \"{}\"\nconfig = {{ allow = [\"https://app.example.com\", \"https://*.example.org\"] }}\n",
        plugin_wasm("origin_allowlist.wasm")
    );
    let airlock = Airlock::start(&with_plugins(&backend, &["origin"], &table));
    let addr = airlock.addr();
    for (origin, want) in [
        ("https://app.example.com", 101),
        ("https://a.example.org", 101),
        ("https://deep.sub.example.org", 101),
        ("https://example.org", 403),
        ("https://example.org.evil.net", 403),
        ("https://app.example.com.evil.net", 403),
        ("http://app.example.com", 403),
        ("https://evil.example", 403),
    ] {
        assert_eq!(
            ws_status(addr, "/ws", &[("origin", origin)]).await,
            want,
            "{origin}"
        );
    }
    // No Origin at all: rejected by default.
    let r = get(addr, "/api").await;
    assert_eq!(r.status, 403);
    assert_eq!(&r.body[..], b"origin (none) is not allowed\n");
    let line = airlock
        .wait_for_log("rejection", |v| v["http.response.status_code"] == 403)
        .await;
    assert_eq!(line["plugin"], "origin");
    assert_eq!(line["error.source"], "plugin");
    // Plain requests go through the same chain.
    assert_eq!(
        get_with(addr, "/api", &[("origin", "https://app.example.com")])
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_runs_in_order_and_mutations_reach_the_upstream_and_the_client() {
    let backend = Backend::start("a").await;
    let tables = [
        guest(
            "first",
            r#"{ set_headers = [["x-chain", "first"]], remove_headers = ["x-secret"], path = "/rewritten", query = "a=1", response_headers = [["x-first", "1"]], attributes = [["user", "alice"]] }"#,
        ),
        guest(
            "second",
            r#"{ require_header = ["x-chain", "first"], set_headers = [["x-second", "2"]], upstream = "canary", echo_request_header = "x-second-saw" }"#,
        ),
    ]
    .join("\n");
    let airlock = Airlock::start(&with_plugins(&backend, &["first", "second"], &tables));
    let r = get_with(
        airlock.addr(),
        "/original?token=abc",
        &[("x-secret", "s3cret"), ("x-keep", "k")],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = r.json();
    assert_eq!(seen["uri"], "/rewritten?a=1");
    assert_eq!(seen["headers"]["x-chain"], "first");
    assert_eq!(seen["headers"]["x-second"], "2");
    assert_eq!(seen["headers"]["x-keep"], "k");
    assert!(seen["headers"].get("x-secret").is_none());
    assert_eq!(r.header("x-first"), Some("1"));
    // The second plugin saw the first one's path and query.
    let saw: serde_json::Value = serde_json::from_str(r.header("x-second-saw").unwrap()).unwrap();
    assert_eq!(saw["path"], "/rewritten");
    assert_eq!(saw["query"], "a=1");
    assert_eq!(saw["client_addr"], "127.0.0.1");
    assert_eq!(saw["route"], "main");
    let line = airlock
        .wait_for_log("access line", |v| v["http.response.status_code"] == 200)
        .await;
    assert_eq!(line["upstream"], "canary");
    assert_eq!(line["plugin.attributes"], "user=alice");
    assert!(line["plugins_us"].as_f64().unwrap() > 0.0);
}

/// A `[plugin.NAME]` table for the guest built for `airlock:plugin@0.1.0`.
fn compat_v0_1(name: &str, config: &str) -> String {
    format!(
        "[plugin.{name}]\nwasm = \"{}\"\nconfig = {config}\n",
        plugin_wasm("compat_v0_1.wasm")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_built_for_0_1_run_in_one_chain_with_0_2_plugins() {
    let backend = Backend::start("a").await;
    let tables = [
        // 0.1: sees only the header it wants; its change reaches the 0.2 plugin after it.
        compat_v0_1(
            "narrow",
            r#"{ wanted_headers = ["X-Keep"], echo_request_header = "x-narrow-saw", set_headers = [["x-added", "1"]] }"#,
        ),
        // 0.2: reads every header through the request resource.
        guest(
            "wide",
            r#"{ echo_request_header = "x-wide-saw", set_headers = [["x-from-v2", "1"]] }"#,
        ),
        // 0.1 again: sees the 0.2 plugin's change (or rejects with 412).
        compat_v0_1("after", r#"{ reject_unless_header = "x-from-v2" }"#),
    ]
    .join("\n");
    let airlock = Airlock::start(&with_plugins(
        &backend,
        &["narrow", "wide", "after"],
        &tables,
    ));
    let r = get_with(airlock.addr(), "/", &[("x-keep", "k"), ("x-other", "o")]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let saw = |name| -> Vec<String> {
        let seen: serde_json::Value = serde_json::from_str(r.header(name).unwrap()).unwrap();
        serde_json::from_value(seen["header_names"].clone()).unwrap()
    };
    assert_eq!(saw("x-narrow-saw"), ["x-keep"]);
    let wide = saw("x-wide-saw");
    for name in ["x-keep", "x-other", "x-added", "host"] {
        assert!(
            wide.iter().any(|n| n == name),
            "{name} missing from {wide:?}"
        );
    }
    let upstream = r.json();
    assert_eq!(upstream["headers"]["x-other"], "o");
    assert_eq!(upstream["headers"]["x-keep"], "k");
    assert_eq!(upstream["headers"]["x-added"], "1");
    assert_eq!(upstream["headers"]["x-from-v2"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_rejection_ends_the_chain_with_its_status_body_and_headers() {
    let backend = Backend::start("a").await;
    let tables = [
        guest(
            "gate",
            r#"{ reject = { status = 451, body = "not here\n" } }"#,
        ),
        guest("never", r#"{ mode = "panic" }"#),
    ]
    .join("\n");
    let airlock = Airlock::start(&with_plugins(&backend, &["gate", "never"], &tables));
    let r = get(airlock.addr(), "/x").await;
    assert_eq!(r.status, 451);
    assert_eq!(&r.body[..], b"not here\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert!(
        airlock
            .logs_where(|v| v["message"]
                .as_str()
                .is_some_and(|m| m.contains("plugin failed")))
            .is_empty()
    );
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subprotocol_chosen_by_a_plugin_is_what_the_upstream_and_client_see() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&with_plugins(
        &backend,
        &["pick"],
        &guest("pick", r#"{ subprotocol = "chat.v2" }"#),
    ));
    let mut request = format!("ws://{}/ws", airlock.addr())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "chat.v1, chat.v2".parse().unwrap(),
    );
    let (_ws, response) = connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
}

/// Each misbehaving guest costs one request a 503 (or passes with on_error = "allow"),
/// the log names the plugin and the cause, and the next requests are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_cost_one_request_never_the_proxy() {
    let backend = Backend::start("a").await;
    let mut cfg = pool_config(&backend);
    let cases = [
        ("loop", "deadline"),
        ("alloc", "memory limit"),
        ("panic", "trapped"),
        ("trap", "trapped"),
        ("print", "no stdout"),
    ];
    for (mode, _) in cases {
        // Only the looping guest should meet its deadline: the others get one long
        // enough that a loaded machine can't turn their failure into a timeout.
        let timeout = if mode == "loop" { "20ms" } else { "5s" };
        let script = format!("{{ mode = \"{mode}\" }}");
        let limits = format!("timeout = \"{timeout}\"\nmax_memory = \"8MiB\"\n");
        cfg.push_str(&guest_route(mode, &format!("/{mode}"), &script, &limits));
        cfg.push_str(&guest_route(
            &format!("{mode}-open"),
            &format!("/open/{mode}"),
            &script,
            &format!("{limits}on_error = \"allow\"\n"),
        ));
    }
    cfg.push_str("\n[[route]]\nname = \"healthy\"\npath_prefix = \"/\"\nupstream = \"pool\"\n");
    let airlock = Airlock::start(&cfg);
    for (mode, cause) in cases {
        for attempt in 0..3 {
            let r = get(airlock.addr(), &format!("/{mode}")).await;
            assert_eq!(r.status, 503, "{mode} attempt {attempt}");
            // The proxy is unharmed: a plain route still works right after.
            assert_eq!(get(airlock.addr(), "/healthy").await.status, 200);
        }
        let r = get(airlock.addr(), &format!("/open/{mode}")).await;
        assert_eq!(r.status, 200, "{mode} with on_error = allow");
        // Lines reach the test through a reader thread: wait for them, bounded.
        let denied = airlock
            .wait_for_log(&format!("503 access line for {mode}"), |v| {
                v["plugin"] == mode && v["http.response.status_code"] == 503
            })
            .await;
        let message = denied["error.message"].as_str().unwrap();
        assert!(
            message.contains(&format!("plugin `{mode}` failed")) && message.contains(cause),
            "{mode}: {message}"
        );
        airlock
            .wait_for_log(&format!("on_error = allow warning for {mode}"), |v| {
                v["plugin"] == format!("{mode}-open")
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("allowed by on_error"))
            })
            .await;
    }
    // A guest's panic message reaches the log through the SDK's panic hook, naming the
    // request whose call panicked.
    let panicked = airlock
        .wait_for_log("panic message", |v| {
            v["plugin"] == "panic"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("panics on purpose"))
        })
        .await;
    let request = panicked["request"].as_str().unwrap_or_default();
    let denied = airlock.logs_where(|v| {
        v["plugin"] == "panic"
            && v["http.response.status_code"] == 503
            && v["request.id"] == request
    });
    assert!(
        !denied.is_empty(),
        "no 503 for request {request:?}: {panicked}"
    );
}

/// A plugin's `timeout` counts the CPU time its call uses, not time its thread spent
/// waiting for a busy core: airlock and a busy loop share one CPU, and a call that is
/// busy for 100 ms of wall-clock time (about half of it on the CPU) passes a 75 ms
/// timeout, while one busy for 400 ms does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_deadlines_count_cpu_time_not_time_spent_waiting_for_a_core() {
    let backend = Backend::start("a").await;
    let mut cfg = pool_config(&backend);
    for (name, spin_ms) in [("shared", 100), ("long", 400)] {
        cfg.push_str(&guest_route(
            name,
            &format!("/{name}"),
            &format!("{{ mode = \"spin\", spin_ms = {spin_ms} }}"),
            "timeout = \"75ms\"\n",
        ));
    }
    let airlock = Airlock::start(&cfg);
    let cpu = first_allowed_cpu();
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu, &airlock.pid().to_string()])
        .output()
        .expect("run taskset");
    assert!(pinned.status.success(), "taskset: {pinned:?}");
    let _hog = BusyLoop::on_cpu(&cpu);

    let r = get(airlock.addr(), "/shared").await;
    assert_eq!(
        r.status,
        200,
        "100 ms on a shared core; logs:\n{}",
        airlock.dump_logs()
    );
    let r = get(airlock.addr(), "/long").await;
    assert_eq!(r.status, 503, "400 ms on a shared core");
    let denied = airlock
        .wait_for_log("503 access line", |v| {
            v["plugin"] == "long" && v["http.response.status_code"] == 503
        })
        .await;
    let message = denied["error.message"].as_str().unwrap();
    assert!(message.contains("exceeded its 75ms deadline"), "{message}");
}

/// With `instances = 1`, calls take turns: a call that finds the instance busy waits for
/// it, is woken as soon as it is returned, and gives up after the plugin's `timeout` with
/// a clear error. Threads call one plugin directly (through the proxy, its scheduling
/// would decide which call starts when).
#[test]
fn a_call_waits_for_a_busy_instance_up_to_the_timeout() {
    use airlock_plugins::CallError;
    // Each call holds the instance 150 ms; the later calls start 30 ms after the first.
    let take_turns = |timeout, later_calls| {
        let plugin = slow_plugin(timeout);
        let call = || {
            let started = std::time::Instant::now();
            let result = plugin.call(&handshake()).map(|_| ());
            (result, started.elapsed())
        };
        std::thread::scope(|s| {
            let first = s.spawn(call);
            std::thread::sleep(Duration::from_millis(30));
            let later: Vec<_> = (0..later_calls).map(|_| s.spawn(call)).collect();
            let first = first.join().unwrap();
            assert!(first.0.is_ok(), "{first:?}");
            later
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        })
    };

    // A long timeout: the second call is woken when the first returns the instance
    // (about 270 ms after it started), not when its wait runs out (1 s).
    let [(result, took)] = &take_turns(Duration::from_secs(1), 1)[..] else {
        unreachable!()
    };
    assert!(result.is_ok(), "{result:?}");
    assert!(
        *took < Duration::from_millis(700),
        "woken when the instance came back, not at the end of the wait: {took:?}"
    );

    // A 200 ms timeout and two waiting calls: one gets the instance after 120 ms, the
    // other would need 270 ms and gives up at 200.
    let mut later = take_turns(Duration::from_millis(200), 2);
    later.sort_by_key(|(result, _)| result.is_err());
    let [(waited, _), (busy, busy_for)] = &later[..] else {
        unreachable!()
    };
    assert!(waited.is_ok(), "{waited:?}");
    assert!(
        matches!(busy, Err(CallError::Busy(t)) if *t == Duration::from_millis(200)),
        "{busy:?}"
    );
    assert!(
        *busy_for >= Duration::from_millis(200),
        "gave up early: {busy_for:?}"
    );
    assert_eq!(
        busy.as_ref().unwrap_err().to_string(),
        "no instance became free within 200ms (all busy)"
    );
}

/// The test guest with one instance, busy for 150 ms of wall-clock time per call.
fn slow_plugin(timeout: Duration) -> airlock_plugins::Plugin {
    use airlock_plugins::{OnError, Plugin, PluginHost, PluginSettings};
    let host = PluginHost::new(4, 16 << 20, None).unwrap();
    let settings = PluginSettings {
        name: "slow".into(),
        timeout,
        max_memory: Some(16 << 20),
        instances: 1,
        on_error: OnError::Deny,
        config_json: r#"{"mode":"spin","spin_ms":150}"#.into(),
    };
    let wasm = std::path::Path::new(env!("AIRLOCK_PLUGIN_DIR")).join("test_guest.wasm");
    Plugin::load(&host, &wasm, settings).unwrap()
}

fn handshake() -> airlock_plugins::Handshake<'static> {
    airlock_plugins::Handshake {
        id: "1".into(),
        method: "GET".into(),
        scheme: "http".into(),
        authority: "test.local".into(),
        path: "/".into(),
        query: None,
        headers: Vec::new(),
        client_addr: "127.0.0.1".into(),
        tls: None,
        route: "main".into(),
        upgrade: None,
        subprotocols: Vec::new(),
    }
}

/// The first CPU this process may run on, as `taskset` takes it.
fn first_allowed_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/self/status");
    list.trim().split([',', '-']).next().unwrap().to_string()
}

/// A shell busy loop pinned to one CPU, killed when dropped.
struct BusyLoop(std::process::Child);

impl BusyLoop {
    fn on_cpu(cpu: &str) -> Self {
        let child = std::process::Command::new("taskset")
            .args(["-c", cpu, "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("start a busy loop");
        // Wait (bounded) until it has been on the CPU for a few clock ticks.
        let stat = format!("/proc/{}/stat", child.id());
        let started = std::time::Instant::now();
        while std::fs::read_to_string(&stat)
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(11)?
                    .parse::<u64>()
                    .ok()
            })
            .is_none_or(|user_ticks| user_ticks < 3)
        {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the busy loop never ran"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Self(child)
    }
}

impl Drop for BusyLoop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_that_refuse_their_config_stop_the_start_with_a_clear_error() {
    let dir = crate::support::TempDir::new();
    let cfg = config(&format!(
        "[[route]]\nname = \"r\"\nupstream = \"u\"\nplugins = [\"picky\"]\n\n[upstream.u]\nservers = [\"127.0.0.1:9\"]\n\n{}",
        guest("picky", r#"{ mode = "refuse-config" }"#)
    ));
    let path = dir.write("picky.toml", &cfg);
    crate::support::assert_config_refused(
        &path,
        "plugin `picky` refused its configuration: this configuration is refused on purpose",
    );
    let missing = dir.write(
        "missing.toml",
        &cfg.replace(&plugin_wasm("test_guest.wasm"), "nope.wasm"),
    );
    let out = crate::support::airlock_command("check", &missing);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("plugin `picky`: cannot read"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_header_values_get_400_on_plugin_routes() {
    let backend = Backend::start("a").await;
    let airlock = Airlock::start(&with_plugins(&backend, &["ok"], &guest("ok", "{}")));
    let response = crate::support::client::raw(
        airlock.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Bin: \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        crate::support::client::status_of(&response),
        400,
        "{response}"
    );
}

fn plugin_test(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = crate::support::airlock_cmd()
        .args(["plugin", "test"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugin_test_runs_one_plugin_and_prints_its_verdict() {
    let wasm = plugin_wasm("origin_allowlist.wasm");
    let config = r#"{"allow": ["https://app.example.com"]}"#;
    let (code, out, _) = plugin_test(&[
        "--wasm",
        &wasm,
        "--config",
        config,
        "-H",
        "Origin: https://evil.example",
        "GET",
        "https://chat.example.com/ws",
    ]);
    assert_eq!(code, 0);
    assert_eq!(out["verdict"], "reject");
    assert_eq!(out["status"], 403);
    assert!(out["warm_call_us"].as_f64().unwrap() > 0.0);
    let (_, out, _) = plugin_test(&[
        "--wasm",
        &wasm,
        "--config",
        config,
        "-H",
        "Origin: https://app.example.com",
        "GET",
        "/ws?room=1",
    ]);
    assert_eq!(out["verdict"], "allow");
    assert_eq!(out["request"]["query"], "room=1");
    assert_eq!(
        out["attributes"][0],
        serde_json::json!(["origin", "https://app.example.com"])
    );
    let (code, _, stderr) =
        plugin_test(&["--wasm", &wasm, "--config", r#"{"alow": []}"#, "GET", "/"]);
    assert_eq!(code, 64);
    assert!(
        stderr.contains("refused its configuration") && stderr.contains("unknown field `alow`"),
        "{stderr}"
    );
}

#[test]
fn plugin_test_runs_a_routes_chain_from_a_config_file() {
    let dir = crate::support::TempDir::new();
    let cfg = config(&format!(
        "[[route]]\nname = \"chat\"\nupstream = \"u\"\nplugins = [\"first\", \"second\"]\n\n[upstream.u]\nservers = [\"127.0.0.1:9\"]\n\n{}\n{}",
        guest(
            "first",
            r#"{ set_headers = [["x-chain", "first"]], path = "/moved" }"#
        ),
        guest(
            "second",
            r#"{ require_header = ["x-chain", "first"], upstream = "u" }"#
        ),
    ));
    let path = dir.write("airlock.toml", &cfg);
    let path = path.to_str().unwrap();
    let (code, out, stderr) = plugin_test(&["--config", path, "--route", "chat", "GET", "/ws"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out["verdict"], "allow", "{out}");
    assert_eq!(out["request"]["path"], "/moved");
    assert_eq!(out["upstream"], "u");
    let (code, _, stderr) = plugin_test(&["--config", path, "--route", "nope", "GET", "/ws"]);
    assert_eq!(code, 64);
    assert!(
        stderr.contains("no route named `nope`") && stderr.contains("routes: chat"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_admits_engine_io_v4_and_refuses_the_rest() {
    let backend = Backend::start("a").await;
    let table = format!(
        "[plugin.socketio]\nwasm = \"{}\"\n",
        plugin_wasm("socketio.wasm")
    );
    let airlock = Airlock::start(&with_plugins(&backend, &["socketio"], &table));
    let addr = airlock.addr();

    // v4 polling handshake, then polling with a session, then the WebSocket upgrade.
    let r = get(addr, "/socket.io/?EIO=4&transport=polling&t=abc").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/socket.io/?EIO=4&transport=polling&t=abc");
    assert_eq!(
        get(
            addr,
            "/socket.io/?EIO=4&transport=polling&sid=lv_VI97HAXpY6yYWAAAC"
        )
        .await
        .status,
        200
    );
    assert_eq!(
        ws_status(
            addr,
            "/socket.io/?EIO=4&transport=websocket&sid=lv_VI97HAXpY6yYWAAAC",
            &[]
        )
        .await,
        101
    );
    // The sid is the affinity key (for hash/sticky balancing); being a session id from the
    // query string, it must not be logged.
    let (_, out, _) = plugin_test(&[
        "--wasm",
        &plugin_wasm("socketio.wasm"),
        "-H",
        "Upgrade: websocket",
        "GET",
        "/socket.io/?EIO=4&transport=websocket&sid=lv_VI97HAXpY6yYWAAAC",
    ]);
    assert_eq!(out["affinity_key"], "lv_VI97HAXpY6yYWAAAC");
    airlock
        .wait_for_log("upgrade line", |v| v["http.response.status_code"] == 101)
        .await;
    assert!(
        !airlock.dump_logs().contains("lv_VI97HAXpY6yYWAAAC"),
        "the sid reached the log"
    );

    for (path, code) in [
        ("/socket.io/?EIO=3&transport=polling", 5),
        ("/socket.io/?EIO=4&transport=flashsocket", 0),
        ("/socket.io/?EIO=4&transport=polling&sid=bad%20sid", 1),
        ("/socket.io/?EIO=4&transport=websocket", 3),
        ("/elsewhere/?EIO=4&transport=polling", 3),
    ] {
        let r = get(addr, path).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json()["code"], code, "{path}");
    }
    assert_eq!(
        ws_status(addr, "/socket.io/?EIO=3&transport=websocket", &[]).await,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_plugins_are_cached_on_disk_and_a_bad_entry_is_compiled_again() {
    use std::os::unix::fs::PermissionsExt as _;

    let backend = Backend::start("a").await;
    let scratch = crate::support::TempDir::new();
    let cache = scratch.path().join("cache");
    let table = format!(
        "[plugin.origin]\nwasm = \"{}\"\nconfig = {{ allow = [\"https://a.example\"] }}\n",
        plugin_wasm("origin_allowlist.wasm")
    );
    let config = format!(
        "plugin_cache_dir = \"{}\"\n{}",
        cache.display(),
        with_plugins(&backend, &["origin"], &table)
    );
    let serves = |addr| async move {
        get_with(addr, "/", &[("origin", "https://a.example")])
            .await
            .status
            == 200
    };
    let entries = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };

    // First start: compiled, then stored, readable by this user only.
    let airlock = Airlock::start(&config);
    airlock
        .wait_for_log("compiled", |v| v["message"] == "plugin compiled and cached")
        .await;
    assert!(serves(airlock.addr()).await);
    drop(airlock);
    let files = entries();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].extension().is_some_and(|x| x == "cwasm"));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&files[0]), 0o600);
    assert_eq!(mode(&cache), 0o700);

    // Second start: loaded, not compiled.
    let airlock = Airlock::start(&config);
    airlock
        .wait_for_log("cache hit", |v| {
            v["message"] == "compiled plugin loaded from the cache"
        })
        .await;
    assert!(serves(airlock.addr()).await);
    assert!(
        airlock
            .logs_where(|v| v["message"] == "plugin compiled and cached")
            .is_empty()
    );
    drop(airlock);

    // A damaged entry is refused by wasmtime and compiled again.
    std::fs::write(&files[0], b"not a compiled component").unwrap();
    let airlock = Airlock::start(&config);
    let warning = airlock
        .wait_for_log("unusable entry", |v| {
            v["message"] == "cached compiled plugin is unusable; compiling again"
        })
        .await;
    assert_eq!(warning["plugin"], "origin");
    airlock
        .wait_for_log("recompiled", |v| {
            v["message"] == "plugin compiled and cached"
        })
        .await;
    assert!(serves(airlock.addr()).await);
    drop(airlock);

    // A directory others may write to is not used at all.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let airlock = Airlock::start(&config);
    let off = airlock
        .wait_for_log("cache off", |v| v["message"] == "plugin cache off")
        .await;
    assert!(
        off["error"]
            .as_str()
            .unwrap()
            .contains("writable by other users"),
        "{off}"
    );
    assert!(serves(airlock.addr()).await);
}
