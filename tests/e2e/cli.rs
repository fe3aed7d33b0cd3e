//! The command line: `check` exit codes and messages, `run` refusing bad configs.

use crate::support::{TempDir, airlock_cmd, config};

#[test]
fn check_accepts_a_valid_config() {
    let dir = TempDir::new();
    let path = dir.write("ok.toml", &config("[[route]]\nname = \"r\"\nupstream = \"u\"\n\n[upstream.u]\nservers = [\"127.0.0.1:9\"]\n"));
    let out = crate::support::airlock_command("check", &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("OK (1 listeners, 1 routes, 1 upstreams, 0 plugins)")
    );
}

#[test]
fn check_and_run_reject_a_bad_config_with_64_and_a_located_message() {
    let dir = TempDir::new();
    let path = dir.write(
        "bad.toml",
        &config("[[route]]\nname = \"r\"\nupstream = \"missing\"\n"),
    );
    crate::support::assert_config_refused(
        &path,
        "bad.toml:12:12: route `r` uses upstream `missing`, which is not defined",
    );
}

#[test]
fn check_reports_a_missing_file() {
    let out = airlock_cmd()
        .args(["check", "--config", "/nonexistent/airlock.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the configuration file"));
}

#[test]
fn help_shows_examples_and_version_prints() {
    let out = airlock_cmd().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("airlock check --config airlock.toml"));
    let out = airlock_cmd().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("airlock 0."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_page_and_chat_behind_the_origin_allowlist() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use std::io::{BufRead as _, BufReader};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

    // The demo's allowlist names its own address, so it needs a real port up front.
    let free = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (listen, admin) = (free(0), free(1));
    let mut child = airlock_cmd()
        .args([
            "demo",
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !seen
        .iter()
        .any(|l: &String| l.contains("https://evil.example"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("demo did not show its origin check:\n{}", seen.join("\n")),
        }
    }
    // The demo's built-in collector prints the traces airlock exports: the two
    // handshakes, each with its plugin's verdict.
    while seen
        .iter()
        .filter(|l: &&String| l.contains("plugin origin"))
        .count()
        < 2
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("demo did not print its traces:\n{}", seen.join("\n")),
        }
    }
    let text = seen.join("\n");
    assert!(
        text.contains("verdict=allow") && text.contains("verdict=reject"),
        "{text}"
    );
    assert!(
        text.contains("GET chat") && text.lines().any(|l| l.starts_with("trace ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("Origin: http://{listen}"))
            && text.contains("-> 101 Switching Protocols"),
        "{text}"
    );
    assert!(
        text.contains("https://evil.example") && text.contains("-> 403 Forbidden"),
        "{text}"
    );

    let page = crate::support::client::get(listen, "/").await;
    assert_eq!(page.status, 200);
    // Two chat servers behind a sticky cookie: a browser that keeps the cookie stays on
    // the server it got, and the admin API shows the pool.
    let set = page
        .header("set-cookie")
        .expect("a sticky cookie")
        .to_string();
    assert!(set.starts_with("airlock_demo_server="), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let mut placed = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let r =
            crate::support::client::get_with(listen, "/api/whoami", &[("cookie", &cookie)]).await;
        assert_eq!(r.header("set-cookie"), None, "the cookie is kept");
        placed.insert(r.json()["server"].as_str().unwrap().to_string());
    }
    assert_eq!(placed.len(), 1, "{placed:?}");
    let pool = crate::support::client::get(admin, "/upstreams")
        .await
        .json();
    let pool = &pool["upstreams"][0];
    assert_eq!(pool["balance"], "sticky_cookie", "{pool:#}");
    assert_eq!(pool["servers"].as_array().unwrap().len(), 2, "{pool:#}");
    // The demo's banner points at /metrics, and the chat handshakes so far are counted.
    assert!(text.contains(&format!("http://{admin}/metrics")), "{text}");
    let metrics = crate::support::client::get(admin, "/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.contains("airlock_requests_total{route=\"chat\",kind=\"upgrade\",code=\"101\"}"),
        "{metrics}"
    );
    assert!(String::from_utf8_lossy(&page.body).contains("new WebSocket("));
    let mut request = format!("ws://{listen}/ws/chat")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", format!("http://{listen}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(Message::text("hello, airlock")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello, airlock")
    );

    // The banner names the demo's configuration file; edited and reloaded, the plugin
    // admits the origin it refused at start, and the open WebSocket carries on.
    let config = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("airlock reload --config "))
        .expect("the banner shows how to reload")
        .to_string();
    let demo_config = config.clone();
    let edited = std::fs::read_to_string(&config)
        .unwrap()
        .replace("allow = [", "allow = [\"https://evil.example\", ");
    std::fs::write(&config, edited).unwrap();
    let mut reload = airlock_cmd();
    reload.args(["reload", "--config", &config]);
    let out = crate::support::output(reload).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut evil = format!("ws://{listen}/ws/chat")
        .into_client_request()
        .unwrap();
    evil.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    tokio_tungstenite::connect_async(evil)
        .await
        .expect("the reloaded allowlist admits https://evil.example");
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    // Stopped as an operator would (SIGTERM), the demo removes its files.
    drop(ws);
    let dir = std::path::Path::new(&demo_config)
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(dir.exists());
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not exit on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!dir.exists(), "the demo left {} behind", dir.display());
}

#[test]
fn plugin_wit_prints_each_interface_version_airlock_loads() {
    let wit = |args: &[&str]| {
        airlock_cmd()
            .args(["plugin", "wit"])
            .args(args)
            .output()
            .unwrap()
    };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit");
    for (args, file) in [
        (&[][..], "airlock-plugin.wit"),
        (&["--version", "0.3.0"][..], "airlock-plugin.wit"),
        (&["--version", "0.2.0"][..], "v0.2.0/airlock-plugin.wit"),
        (&["--version", "0.1.0"][..], "v0.1.0/airlock-plugin.wit"),
    ] {
        let out = wit(args);
        assert!(out.status.success(), "{args:?}");
        let expected = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), expected, "{args:?}");
    }
    let out = wit(&["--version", "9.9.9"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"9.9.9\"") && err.contains("0.3.0, 0.2.0, 0.1.0"),
        "{err}"
    );
}
