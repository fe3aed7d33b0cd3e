//! `airlock demo`: the proxy on an embedded configuration, in front of a built-in chat
//! server that also serves a page to try it from a browser.

mod chat;
mod traces;

use std::net::SocketAddr;

use anyhow::Context as _;

use crate::cli::DemoArgs;

/// The embedded configuration; `{listen}`, `{port}`, `{admin}`, `{upstream1}`,
/// `{upstream2}` and `{collector}` are filled in.
const CONFIG_TEMPLATE: &str = include_str!("demo.toml");

/// The origin-allowlist plugin, built by build.rs.
const ORIGIN_ALLOWLIST: &[u8] = include_bytes!(concat!(
    env!("AIRLOCK_PLUGIN_DIR"),
    "/origin_allowlist.wasm"
));

/// The built-in chat servers' names.
const SERVERS: [&str; 2] = ["chat-1", "chat-2"];

/// The built-in upstream (two chat servers), bound before the runtime starts so their
/// addresses can go into the configuration.
pub struct Upstream {
    listeners: Vec<std::net::TcpListener>,
    /// The built-in trace collector.
    collector: std::net::TcpListener,
    /// The demo's configuration file and its plugin, kept while the demo runs so that it
    /// can be edited and reloaded.
    dir: std::path::PathBuf,
}

/// Bind the built-in chat server and produce the demo configuration pointing at it.
pub fn prepare(
    args: &DemoArgs,
) -> anyhow::Result<(airlock_config::LoadedConfig, std::path::PathBuf, Upstream)> {
    let mut listeners = Vec::new();
    let mut text = CONFIG_TEMPLATE
        .replace("{listen}", &args.listen.to_string())
        .replace("{port}", &args.listen.port().to_string())
        .replace("{admin}", &args.admin.to_string());
    for n in 1..=SERVERS.len() {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a demo chat server")?;
        listener.set_nonblocking(true)?;
        text = text.replace(
            &format!("{{upstream{n}}}"),
            &listener.local_addr()?.to_string(),
        );
        listeners.push(listener);
    }
    let collector =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind the demo collector")?;
    collector.set_nonblocking(true)?;
    text = text.replace("{collector}", &collector.local_addr()?.to_string());
    // Written out, so that it can be edited and reloaded like any configuration.
    let dir = std::env::temp_dir().join(format!("airlock-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("cannot create a directory for the demo")?;
    std::fs::write(dir.join("origin_allowlist.wasm"), ORIGIN_ALLOWLIST)
        .context("cannot write the demo plugin")?;
    let path = dir.join("airlock.toml");
    std::fs::write(&path, text).context("cannot write the demo configuration")?;
    let loaded = airlock_config::load_file(&path)
        .map_err(|e| anyhow::anyhow!("the embedded demo configuration is invalid: {e}"))?;
    Ok((
        loaded,
        path,
        Upstream {
            listeners,
            collector,
            dir,
        },
    ))
}

impl Upstream {
    /// Serve the chat server and tell the user where to look.
    pub fn start(self, proxy: &airlock_proxy::Bound) -> anyhow::Result<DemoDir> {
        let room = chat::room();
        let mut servers = Vec::new();
        for (listener, name) in self.listeners.into_iter().zip(SERVERS) {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            servers.push(format!("{name} at {}", listener.local_addr()?));
            tokio::spawn(chat::serve(listener, name, room.clone()));
        }
        let servers = servers.join(" and ");
        tokio::spawn(traces::serve(tokio::net::TcpListener::from_std(
            self.collector,
        )?));
        let public: Option<SocketAddr> = proxy.listener_addrs().first().map(|(_, a)| *a);
        let admin = proxy
            .admin_addr()
            .map_or_else(|| "(no admin)".to_string(), |a| a.to_string());
        if let Some(addr) = public {
            eprintln!(
                "\nairlock demo is running.\n\
                 \n  open   http://{addr}/            a chat page served through airlock\n  \
                 ws     ws://{addr}/ws/chat       WebSocket, to {servers}\n  \
                 api    http://{addr}/api/whoami  what the upstream sees (X-Forwarded-* headers, its name)\n  \
                 admin  http://{admin}/upstreams  the pool: sticky cookie, health probes, open tunnels\n  \
                 admin  http://{admin}/metrics    Prometheus metrics: requests, tunnels, plugin calls\n  \
                 traces printed below as they arrive: airlock exports them over OTLP to a\n         \
                 collector built into the demo (set [telemetry] otlp_endpoint to use yours)\n\
                 \nIts configuration is {config}: edit it (add an origin to the plugin's `allow`,\n\
                 a route, a server), then apply it without dropping a WebSocket:\n  \
                 airlock reload --config {config}\n\
                 \nPress Ctrl-C to stop.\n",
                config = self.dir.join("airlock.toml").display(),
            );
            tokio::spawn(show_origin_check(addr));
        }
        Ok(DemoDir(self.dir))
    }
}

/// The demo's directory, removed when the demo ends.
pub struct DemoDir(std::path::PathBuf);

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Show the origin-allowlist plugin at work: one handshake from the page's own origin,
/// one from a site that is not on the list.
async fn show_origin_check(addr: SocketAddr) {
    let allowed = format!("http://{addr}");
    let mut lines = vec!["The /ws/ route runs the origin-allowlist plugin:".to_string()];
    for origin in [allowed.as_str(), "https://evil.example"] {
        let status = handshake_status(addr, origin)
            .await
            .unwrap_or_else(|e| format!("failed: {e}"));
        lines.push(format!(
            "  WebSocket handshake with Origin: {origin:<24} -> {status}"
        ));
    }
    eprintln!("{}\n", lines.join("\n"));
}

async fn handshake_status(addr: SocketAddr, origin: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET /ws/chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = vec![0u8; 256];
    let n = stream.read(&mut head).await?;
    let text = String::from_utf8_lossy(&head[..n]);
    Ok(text
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("HTTP/1.1 ")
        .to_string())
}
