//! Plugins written in JavaScript and Python, through the real binary: the two examples
//! decide right, the sandbox holds for language runtimes (a loop, an allocation bomb and
//! an exception each cost one request), and `airlock plugin new` projects in every
//! language build and pass their own tests unchanged.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::Mac as _;

use crate::support::client::{get_with, ws_handshake};
use crate::support::components::{self, js_plugin, py_plugin};
use crate::support::{Airlock, Backend, TempDir, airlock_bin, config, output};

/// A config with one route, `name`, running only the plugin `name` (the component at
/// `wasm`, with the more keys of its table in `options`) in front of `upstream`.
fn one_plugin(name: &str, upstream: &str, wasm: &Path, options: &str) -> String {
    config(&format!(
        "[[route]]\nname = \"{name}\"\nupstream = \"u\"\nplugins = [\"{name}\"]\n\n[upstream.u]\nservers = [\"{upstream}\"]\n\n[plugin.{name}]\nwasm = \"{}\"\n{options}\n",
        wasm.display()
    ))
}

/// What `airlock check` printed refusing `config`, which it must refuse with status 64.
fn check_refuses(config: &str) -> String {
    let dir = TempDir::new();
    let out = crate::support::airlock_command("check", &dir.write("airlock.toml", config));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_tenant_router_sends_each_tenant_to_its_pool() {
    let wasm = js_plugin("tenant-router-js", "plugin.js").await;
    let (acme, globex) = (Backend::start("acme").await, Backend::start("globex").await);
    let airlock = Airlock::start(&config(&format!(
        r#"
[[route]]
name = "feeds"
upstream = "acme"
plugins = ["tenants"]

[upstream.acme]
servers = ["{}"]

[upstream.globex]
servers = ["{}"]

[plugin.tenants]
wasm = "{}"
instances = 3
config = {{ domain = "chat.test", tenants = {{ acme = "acme", globex = "globex" }} }}
"#,
        acme.addr,
        globex.addr,
        wasm.display()
    )));
    // Its language was read from the component, and its memory cap follows; its
    // instances were all started at load, not in the middle of requests.
    airlock
        .wait_for_log("plugin loaded", |v| {
            v["message"] == "plugin loaded"
                && v["language"] == "JavaScript (ComponentizeJS)"
                && v["max_memory"] == 48 << 20
                && v["instances_started"] == 3
        })
        .await;
    let addr = airlock.addr();

    // By header (any case), and by the host's first label.
    let r = get_with(addr, "/api", &[("x-tenant", "GLOBEX")]).await;
    assert_eq!((r.status, r.header("x-backend")), (200, Some("globex")));
    assert_eq!(r.json()["headers"]["x-tenant"], "globex");

    // WebSockets: admitted to the tenant's pool, which sees the tenant header.
    let opened = |b: &Backend| b.connections.load(std::sync::atomic::Ordering::SeqCst);
    for (headers, tenant, pool) in [
        (&[("x-tenant", "globex")][..], "globex", &globex),
        (&[("host", "acme.chat.test")][..], "acme", &acme),
    ] {
        let before = opened(pool);
        let (status, first) = ws_handshake(addr, "/headers", headers).await;
        assert_eq!(status, 101);
        assert!(
            first.contains(&format!(r#""x-tenant":"{tenant}""#)),
            "{first}"
        );
        assert_eq!(opened(pool), before + 1, "{tenant}");
    }

    // Unknown and missing tenants are refused with the plugin's answers.
    let (status, body) = ws_handshake(addr, "/headers", &[("x-tenant", "initech")]).await;
    assert_eq!((status, body.as_str()), (403, "unknown tenant\n"));
    let r = get_with(addr, "/api", &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(&r.body[..], b"no tenant: send the x-tenant header\n");

    // The tenant is in the access log.
    airlock
        .wait_for_log("access line with the tenant", |v| {
            v["plugin.attributes"] == "tenant=globex" && v["http.response.status_code"] == 101
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_tenant_router_refuses_a_bad_config_by_name() {
    let wasm = js_plugin("tenant-router-js", "plugin.js").await;
    let stderr = check_refuses(&one_plugin(
        "tenants",
        "127.0.0.1:9",
        &wasm,
        "config = { tenants = { \"Not A Label\" = \"u\" } }",
    ));
    assert!(
        stderr.contains("plugin `tenants` refused its configuration: config.tenants: `Not A Label` is not a tenant name"),
        "{stderr}"
    );
}

const KEY: &str = "a-test-secret-of-at-least-32-chars!!";

/// `path?query&sig=...`, signed with `KEY`.
fn signed(path: &str, query: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(format!("{path}?{query}").as_bytes());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{path}?{query}&sig={sig}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_signed_url_plugin_admits_only_valid_unexpired_signatures() {
    let wasm = py_plugin("signed-url-py", "app").await;
    let backend = Backend::start("feed").await;
    let airlock = Airlock::start(&one_plugin(
        "signed",
        &backend.addr.to_string(),
        &wasm,
        &format!("config = {{ keys = {{ k1 = \"{KEY}\" }}, max_ttl_seconds = 600 }}"),
    ));
    airlock
        .wait_for_log("plugin loaded", |v| {
            v["message"] == "plugin loaded" && v["language"] == "Python (componentize-py)"
        })
        .await;
    let addr = airlock.addr();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // A valid URL: admitted, and the upstream sees it without the key id and signature.
    let query = format!("room=42&expires={}&kid=k1", now + 300);
    let (status, first) = ws_handshake(addr, &signed("/ws/feed", &query), &[]).await;
    assert_eq!(status, 101);
    assert_eq!(
        first,
        format!("path:/ws/feed?room=42&expires={}", now + 300)
    );

    let tampered = signed("/ws/feed", &query).replace("room=42", "room=43");
    let expired = signed("/ws/feed", &format!("room=42&expires={}&kid=k1", now - 120));
    let too_far = signed(
        "/ws/feed",
        &format!("room=42&expires={}&kid=k1", now + 7200),
    );
    let unknown_key = signed("/ws/feed", &format!("room=42&expires={}&kid=k9", now + 60));
    for (url, want, body) in [
        (
            "/ws/feed?room=42".to_string(),
            401,
            "a signed URL is required\n",
        ),
        (tampered, 403, "bad signature\n"),
        (expired, 403, "the signed URL has expired\n"),
        (too_far, 403, "the signed URL expires too far ahead\n"),
        (unknown_key, 403, "unknown signing key\n"),
    ] {
        assert_eq!(
            ws_handshake(addr, &url, &[]).await,
            (want, body.to_string()),
            "{url}"
        );
    }
    airlock
        .wait_for_log("access line with the key id", |v| {
            v["plugin.attributes"] == "signed_by=k1"
        })
        .await;
}

/// A route per way the guest at `wasm` can fail; each failure costs its request a 503
/// (the plugin's `on_error = "deny"`) and a log line with the cause, and the next request
/// through the same plugin is admitted.
async fn each_failure_costs_one_request(wasm: &Path, exception: &str) {
    let backend = Backend::start("b").await;
    let table = |name: &str, options: &str| {
        format!(
            "[[route]]\nname = \"{name}\"\npath_prefix = \"/{name}\"\nupstream = \"u\"\nplugins = [\"{name}\"]\n\n[plugin.{name}]\nwasm = \"{}\"\n{options}\n",
            wasm.display()
        )
    };
    // The bomb gets time enough to reach its memory cap (48 MiB of page faults take
    // about 45 ms here) rather than its deadline.
    let airlock = Airlock::start(&config(&format!(
        "[upstream.u]\nservers = [\"{}\"]\n\n{}\n{}",
        backend.addr,
        table("fast", ""),
        table("roomy", "timeout = \"2s\"")
    )));
    let addr = airlock.addr();
    for (route, mode, cause) in [
        ("fast", "loop", "exceeded its 5ms deadline".to_string()),
        (
            "roomy",
            "alloc",
            format!("exceeded its memory limit of {} bytes", 48 << 20),
        ),
        ("roomy", exception, "trapped".to_string()),
    ] {
        let (status, _) = ws_handshake(addr, &format!("/{route}"), &[("x-misbehave", mode)]).await;
        assert_eq!(status, 503, "{mode}");
        airlock
            .wait_for_log(&cause, |v| {
                v["message"] == r#"plugin failed; request denied (on_error = "deny")"#
                    && v["error"].as_str().is_some_and(|m| m.contains(&cause))
            })
            .await;
        // The instance that failed is gone; the next request gets a sound one.
        let (status, first) = ws_handshake(addr, &format!("/{route}"), &[]).await;
        assert_eq!(
            (status, first),
            (101, format!("path:/{route}")),
            "after {mode}"
        );
    }
    let mut airlock = airlock;
    assert!(airlock.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_loop_allocation_bomb_or_exception_costs_one_request() {
    let wasm = js_plugin("test-guest-js", "guest.js").await;
    each_failure_costs_one_request(&wasm, "throw").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_loop_allocation_bomb_or_exception_costs_one_request() {
    let wasm = py_plugin("test-guest-py", "app").await;
    each_failure_costs_one_request(&wasm, "raise").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_print_fails_its_call_alike_in_the_proxy_and_in_plugin_test() {
    let wasm = py_plugin("test-guest-py", "app").await;
    let cause = "plugins have no stdout or stderr (use the host log function)";
    let backend = Backend::start("b").await;
    let airlock = Airlock::start(&one_plugin("p", &backend.addr.to_string(), &wasm, ""));
    let (status, _) = ws_handshake(airlock.addr(), "/", &[("x-misbehave", "print")]).await;
    assert_eq!(status, 503);
    airlock
        .wait_for_log(cause, |v| {
            v["error"].as_str().is_some_and(|m| m.contains(cause))
        })
        .await;
    assert_eq!(ws_handshake(airlock.addr(), "/", &[]).await.0, 101);

    // `airlock plugin test` says the same, rather than admitting what the proxy refuses.
    let mut command = Command::new(airlock_bin());
    command
        .args(["plugin", "test", "--wasm"])
        .arg(&wasm)
        .args(["-H", "x-misbehave: print", "GET", "/"])
        .env("XDG_CACHE_HOME", crate::support::e2e_cache_home());
    let out = output(command).await;
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["verdict"], "error", "{verdict}");
    assert!(
        verdict["error"].as_str().is_some_and(|m| m.contains(cause)),
        "{verdict}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_memory_below_a_runtimes_starting_image_is_refused_with_advice() {
    let wasm = py_plugin("test-guest-py", "app").await;
    let stderr = check_refuses(&one_plugin(
        "p",
        "127.0.0.1:9",
        &wasm,
        "max_memory = \"8MiB\"",
    ));
    assert!(
        stderr.contains("plugin `p`: its memory starts at ")
            && stderr.contains(" MiB but max_memory is 8.0 MiB; Python (componentize-py) plugins need more: leave max_memory unset (their default is 48 MiB)"),
        "{stderr}"
    );
}

/// `airlock plugin new NAME --lang LANG` in a new directory under `parent`.
async fn plugin_new(parent: &Path, name: &str, lang: &str) -> std::path::PathBuf {
    let dir = parent.join(name);
    let mut command = Command::new(airlock_bin());
    command
        .args(["plugin", "new", name, "--lang", lang, "--dir"])
        .arg(&dir);
    let out = output(command).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Run `command` in `dir` off the runtime, with the test's airlock as `$AIRLOCK` and its
/// plugin cache; require success.
async fn run_in(dir: &Path, mut command: Command) -> String {
    command
        .current_dir(dir)
        .env("AIRLOCK", airlock_bin())
        .env("XDG_CACHE_HOME", crate::support::e2e_cache_home());
    let out = output(command).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

/// The project's own `airlock.toml` loads the built plugin, and its route admits the
/// origin the template lists.
async fn loads_from_its_config(dir: &Path) {
    let mut command = Command::new(airlock_bin());
    command.args([
        "plugin",
        "test",
        "--config",
        "airlock.toml",
        "--route",
        "ws",
        "-H",
        "Origin: https://app.example.com",
        "GET",
        "/ws",
    ]);
    let text = run_in(dir, command).await;
    assert!(text.contains(r#""verdict": "allow""#), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_javascript_project_builds_and_passes_its_test() {
    let parent = TempDir::new();
    let dir = plugin_new(parent.path(), "js-policy", "js").await;
    let npm = |args: &[&str]| {
        let mut command = Command::new("npm");
        command.args(args);
        command
    };
    run_in(
        &dir,
        npm(&["ci", "--no-audit", "--no-fund", "--prefer-offline"]),
    )
    .await;
    run_in(&dir, npm(&["run", "build"])).await;
    let tests = run_in(&dir, npm(&["test"])).await;
    assert!(
        tests.contains("# pass 2") && tests.contains("# fail 0"),
        "{tests}"
    );
    loads_from_its_config(&dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_python_project_builds_and_passes_its_test() {
    let bin = tokio::task::spawn_blocking(components::componentize_py_bin)
        .await
        .unwrap();
    let parent = TempDir::new();
    let dir = plugin_new(parent.path(), "py-policy", "python").await;
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut build = Command::new("./build.sh");
    build.env("PATH", &path);
    run_in(&dir, build).await;
    let mut test = Command::new("python3");
    test.args(["-m", "unittest", "-v"]);
    let tests = run_in(&dir, test).await;
    assert!(
        tests.contains("Ran 2 tests") && tests.contains("\nOK"),
        "{tests}"
    );
    loads_from_its_config(&dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rust_project_builds_and_passes_its_test() {
    // The project lives at one place under target/, so that its own target/ (the
    // dependencies' builds) survives between test runs; its sources are written anew.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-plugin-new-rust/rs-policy");
    let kept = dir.with_file_name("kept-target");
    let _ = std::fs::remove_dir_all(&kept);
    let _ = std::fs::rename(dir.join("target"), &kept);
    let _ = std::fs::remove_dir_all(&dir);
    let dir = plugin_new(dir.parent().unwrap(), "rs-policy", "rust").await;
    let _ = std::fs::rename(&kept, dir.join("target"));
    let cargo = |args: &[&str]| {
        let mut command = Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
        command.args(args);
        // The outer build's settings are for this workspace, not the new project.
        for (var, _) in std::env::vars() {
            if var.starts_with("CARGO_") || var == "RUSTFLAGS" || var == "RUSTC_WRAPPER" {
                command.env_remove(var);
            }
        }
        command
    };
    run_in(
        &dir,
        cargo(&["build", "--release", "--target", "wasm32-wasip2"]),
    )
    .await;
    let tests = run_in(&dir, cargo(&["test"])).await;
    assert!(tests.contains("test result: ok. 2 passed"), "{tests}");
    loads_from_its_config(&dir).await;
}
