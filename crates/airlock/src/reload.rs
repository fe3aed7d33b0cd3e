//! `airlock reload`: ask a running airlock, through its admin endpoint, to read its
//! configuration file again, and say what it answered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;

use crate::EXIT_CONFIG;

/// How long the running airlock may take to answer (it compiles changed plugins first).
const ANSWER_WAIT: Duration = Duration::from_secs(120);

pub fn run(config: &Path, admin: Option<SocketAddr>) -> ExitCode {
    let admin = match admin.map_or_else(|| admin_of(config), Ok) {
        Ok(admin) => admin,
        Err(Refused::Config(errors)) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(Refused::Other(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")
        .and_then(|rt| rt.block_on(post_reload(admin)));
    match answer {
        Ok((200, body)) => {
            let generation = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["generation"].as_u64());
            match generation {
                Some(n) => println!("{}: reloaded (generation {n})", config.display()),
                None => println!("{}: reloaded", config.display()),
            }
            ExitCode::SUCCESS
        }
        Ok((422, body)) => {
            eprint!("{body}");
            eprintln!("reload refused; airlock keeps running its previous configuration");
            ExitCode::from(EXIT_CONFIG)
        }
        Ok((status, body)) => {
            eprintln!(
                "error: airlock at {admin} answered {status}: {}",
                body.trim_end()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Refused {
    /// The file itself has errors (printed as `airlock check` prints them).
    Config(String),
    Other(anyhow::Error),
}

/// Where the admin endpoint of the airlock started from `config` listens.
fn admin_of(config: &Path) -> Result<SocketAddr, Refused> {
    let loaded = airlock_config::load_file(config).map_err(|e| Refused::Config(e.to_string()))?;
    let Some(admin) = &loaded.config.admin else {
        return Err(Refused::Other(anyhow::anyhow!(
            "{} has no [admin] table, so the running airlock cannot be reached; send it SIGHUP instead",
            config.display()
        )));
    };
    let bind = admin.bind.get_ref().0;
    if bind.port() == 0 {
        return Err(Refused::Other(anyhow::anyhow!(
            "{}: [admin] binds port 0; give the address it got with --admin ADDR",
            config.display()
        )));
    }
    // A wildcard bind is reached on loopback.
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, bind.port()))
}

/// `POST /reload`: the status and the body.
async fn post_reload(admin: SocketAddr) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot reach airlock's admin endpoint at {admin}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::post("/reload")
        .header(http::header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())?;
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(ANSWER_WAIT, exchange).await {
        Ok(answer) => answer,
        Err(_) => bail!("airlock at {admin} did not answer within {ANSWER_WAIT:?}"),
    }
}
