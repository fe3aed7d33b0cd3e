//! `airlock demo`: the proxy on an embedded configuration, in front of a built-in chat
//! server that also serves a page to try it from a browser.

mod chat;

use std::net::SocketAddr;

use anyhow::Context as _;

use crate::cli::DemoArgs;

/// The embedded configuration; `{listen}`, `{admin}` and `{upstream}` are filled in.
const CONFIG_TEMPLATE: &str = include_str!("demo.toml");

/// The built-in upstream, bound before the runtime starts so its address can go into the
/// configuration.
pub struct Upstream {
    listener: std::net::TcpListener,
}

/// Bind the built-in chat server and produce the demo configuration pointing at it.
pub fn prepare(args: &DemoArgs) -> anyhow::Result<(airlock_config::LoadedConfig, Upstream)> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind the demo chat server")?;
    listener.set_nonblocking(true)?;
    let upstream = listener.local_addr()?;
    let text = CONFIG_TEMPLATE
        .replace("{listen}", &args.listen.to_string())
        .replace("{admin}", &args.admin.to_string())
        .replace("{upstream}", &upstream.to_string());
    let config = airlock_config::parse(&text, "<embedded demo config>")
        .context("the embedded demo configuration is invalid")?;
    let loaded = airlock_config::LoadedConfig {
        config,
        base_dir: ".".into(),
    };
    Ok((loaded, Upstream { listener }))
}

impl Upstream {
    /// Serve the chat server and tell the user where to look.
    pub fn start(self, proxy: &airlock_proxy::Bound) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let upstream = listener.local_addr()?;
        tokio::spawn(chat::serve(listener));
        let public: Option<SocketAddr> = proxy.listener_addrs().first().map(|(_, a)| *a);
        if let Some(addr) = public {
            eprintln!(
                "\nairlock demo is running.\n\
                 \n  open   http://{addr}/            a chat page served through airlock\n  \
                 ws     ws://{addr}/ws/chat       WebSocket, forwarded to the chat server at {upstream}\n  \
                 api    http://{addr}/api/whoami  what the upstream sees (X-Forwarded-* headers)\n\
                 \nPress Ctrl-C to stop.\n"
            );
        }
        Ok(())
    }
}
