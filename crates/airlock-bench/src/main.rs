//! `airlock-bench`: the load generator and WebSocket echo upstream behind airlock's
//! benchmarks (`bench/`, `docs/benchmarks.md`). It measures; it never asserts.
//!
//! ```sh
//! airlock-bench upstream --listen 127.0.0.1:9001
//! airlock-bench handshakes --url ws://127.0.0.1:8080/ws --connections 16 --duration 5s
//! airlock-bench pingpong --url ws://127.0.0.1:8080/ws --size 1024 --duration 5s
//! airlock-bench paced --url ws://127.0.0.1:8080/ws --rate 10000 --size 256 --duration 5s
//! airlock-bench idle --url ws://127.0.0.1:8080/ws --connections 5000 --hold 5s
//! airlock-bench --ca ca.pem idle --url wss://bench.test:8443/ws --connect 127.0.0.1:8443
//! ```
//!
//! Each load mode prints one JSON object with its figures on stdout. `report` turns the
//! medians `bench/compare.sh` collects into markdown tables and an SVG chart.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Bytes;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::Message;

mod report;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// For `wss://` URLs: trust the CA certificates in this PEM file.
    #[arg(long, global = true)]
    ca: Option<std::path::PathBuf>,
    /// Connect to this address instead of resolving the URL's host (which is still sent
    /// as SNI and `Host`).
    #[arg(long, global = true)]
    connect: Option<SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A WebSocket echo server: every text or binary message is sent back as it came.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
    },
    /// Open WebSockets as fast as possible, closed loop: connect, handshake, close, again.
    Handshakes {
        /// `ws://host:port/path?query`
        #[arg(long)]
        url: String,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// How long to run, like `5s`.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// An extra request header, `Name: value`; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
    /// Closed-loop ping-pong: each connection sends a binary message and waits for its
    /// echo before sending the next.
    Pingpong {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Message size in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Open-loop traffic: `rate` messages per second in all, spread evenly over
    /// `connections` WebSockets, each sent on schedule whether or not earlier echoes have
    /// come back. Latency is from the moment a message is written to its echo.
    Paced {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Messages per second, all connections together.
        #[arg(long, default_value_t = 10_000)]
        rate: u32,
        /// Message size in bytes (at least 8: the send time travels in the message).
        #[arg(long, default_value_t = 256)]
        size: usize,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Print the figures and goals tables for a medians file written by
    /// `bench/compare.sh`, and draw the chart.
    Report {
        /// Tab-separated: a metric key, then the figures for direct, airlock, nginx and
        /// HAProxy.
        input: std::path::PathBuf,
        /// Write the chart here (SVG).
        #[arg(long)]
        svg: Option<std::path::PathBuf>,
    },
    /// Open `connections` WebSockets, check each echoes once, hold them all open for
    /// `hold`, then close them. Prints when they are all open (for memory readings).
    Idle {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        hold: Duration,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Report { input, svg } = &cli.command {
        let figures = report::read(input)?;
        print!("{}", report::markdown(&figures));
        if let Some(svg) = svg {
            report::chart(&figures, svg)?;
        }
        return Ok(());
    }
    let tls = match &cli.ca {
        Some(ca) => Some(client_tls(ca)?),
        None => None,
    };
    let _ = DIAL.set(Dial {
        tls,
        addr: cli.connect,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Upstream { listen } => upstream(listen).await,
            Command::Handshakes {
                url,
                connections,
                duration,
                headers,
            } => handshakes(&url, connections, duration, &headers).await,
            Command::Pingpong {
                url,
                connections,
                size,
                duration,
            } => pingpong(&url, connections, size, duration).await,
            Command::Paced {
                url,
                connections,
                rate,
                size,
                duration,
            } => paced(&url, connections, rate, size, duration).await,
            Command::Idle {
                url,
                connections,
                hold,
            } => idle(&url, connections, hold).await,
            Command::Report { .. } => unreachable!("handled before the runtime starts"),
        }
    })
}

async fn upstream(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn handshakes(
    url: &str,
    connections: usize,
    duration: Duration,
    headers: &[String],
) -> anyhow::Result<()> {
    let mut request = url.into_client_request().context("--url")?;
    for header in headers {
        let Some((name, value)) = header.split_once(':') else {
            bail!("--header {header:?} is not `Name: value`");
        };
        request.headers_mut().append(
            HeaderName::from_bytes(name.trim().as_bytes())?,
            HeaderValue::from_str(value.trim())?,
        );
    }
    // One handshake first: a proxy that refuses it would make every figure meaningless.
    let (ws, response) = connect(request.clone())
        .await
        .with_context(|| format!("the first handshake with {url} failed"))?;
    drop((ws, response));

    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let request = request.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = new_histogram();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match connect(request.clone()).await {
                    Ok((mut ws, _)) => {
                        let _ = latency.record(t0.elapsed().as_micros() as u64);
                        // Close as a browser does, and wait for the other side's close.
                        let _ = ws.close(None).await;
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            while ws.next().await.is_some() {}
                        })
                        .await;
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latency
        }));
    }
    let mut latency = new_histogram();
    for task in tasks {
        latency.add(task.await?)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "mode": "handshakes",
        "url": url,
        "connections": connections,
        "seconds": round(elapsed),
        "handshakes": latency.len(),
        "errors": errors.load(Ordering::Relaxed),
        "per_second": round(latency.len() as f64 / elapsed),
        "p50_us": latency.value_at_quantile(0.5),
        "p99_us": latency.value_at_quantile(0.99),
        "p999_us": latency.value_at_quantile(0.999),
    });
    println!("{out}");
    Ok(())
}

async fn pingpong(
    url: &str,
    connections: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<()> {
    let sockets = connect_all(url, connections).await?;
    let payload = Bytes::from(vec![0x5a; size]);
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut ws in sockets {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = new_histogram();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                ws.send(Message::Binary(payload.clone())).await?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Binary(echo))) if echo.len() == payload.len() => break,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        other => bail!("expected the echo, got {other:?}"),
                    }
                }
                let _ = latency.record(t0.elapsed().as_micros() as u64);
            }
            let _ = ws.close(None).await;
            anyhow::Ok(latency)
        }));
    }
    let mut latency = new_histogram();
    for task in tasks {
        latency.add(task.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "mode": "pingpong",
            "url": url,
            "connections": connections,
            "size": size,
            "seconds": round(elapsed),
            "round_trips": latency.len(),
            "per_second": round(latency.len() as f64 / elapsed),
            "p50_us": latency.value_at_quantile(0.5),
            "p99_us": latency.value_at_quantile(0.99),
            "p999_us": latency.value_at_quantile(0.999),
        })
    );
    Ok(())
}

async fn paced(
    url: &str,
    connections: usize,
    rate: u32,
    size: usize,
    duration: Duration,
) -> anyhow::Result<()> {
    if size < 8 {
        bail!("--size must be at least 8 bytes");
    }
    if connections == 0 || rate == 0 {
        bail!("--connections and --rate must be more than 0");
    }
    let sockets = connect_all(url, connections).await?;
    // Each connection sends every `period`; their schedules are staggered across one
    // period so the load is smooth rather than in bursts.
    let period = Duration::from_secs_f64(connections as f64 / f64::from(rate));
    let epoch = Instant::now();
    let end = epoch + period + duration;
    // Echoes still missing this long after the last send count as lost.
    let grace = Duration::from_secs(2);
    let late = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let (mut sink, mut stream) = ws.split();
        let first = epoch + period.mul_f64(i as f64 / connections as f64);
        let late = late.clone();
        let (sent_tx, mut sent_rx) = tokio::sync::oneshot::channel();
        let sender = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(first, period);
            let mut sent = 0u64;
            let mut message = vec![0x5a; size];
            loop {
                let due = ticks.tick().await;
                if due >= end {
                    break;
                }
                let now = Instant::now();
                // Tokio's timer ticks in milliseconds, so a millisecond or two is normal;
                // more means the load generator cannot keep up.
                if now.duration_since(due) > Duration::from_millis(5) {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                let stamp = now.duration_since(epoch).as_nanos() as u64;
                message[..8].copy_from_slice(&stamp.to_le_bytes());
                sink.send(Message::binary(message.clone())).await?;
                sent += 1;
            }
            let _ = sent_tx.send(sent);
            anyhow::Ok((sink, sent))
        });
        let receiver = tokio::spawn(async move {
            let mut latency = new_histogram();
            // How many echoes to wait for, once the sender is done.
            let mut expected = None;
            let give_up = tokio::time::sleep_until(end + grace);
            tokio::pin!(give_up);
            while expected.is_none_or(|n| latency.len() < n) {
                tokio::select! {
                    n = &mut sent_rx, if expected.is_none() => expected = Some(n.unwrap_or(0)),
                    next = stream.next() => match next {
                        Some(Ok(Message::Binary(echo))) if echo.len() == size => {
                            let stamp = u64::from_le_bytes(echo[..8].try_into()?);
                            let sent_at = epoch + Duration::from_nanos(stamp);
                            let _ = latency.record(sent_at.elapsed().as_micros() as u64);
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        other => bail!("expected an echo, got {other:?}"),
                    },
                    () = &mut give_up => break,
                }
            }
            anyhow::Ok((stream, latency))
        });
        tasks.push((sender, receiver));
    }
    let mut latency = new_histogram();
    let mut sent = 0;
    for (sender, receiver) in tasks {
        let (sink, n) = sender.await??;
        let (stream, received) = receiver.await??;
        sent += n;
        latency.add(received)?;
        let _ = sink.reunite(stream)?.close(None).await;
    }
    let received = latency.len();
    println!(
        "{}",
        serde_json::json!({
            "mode": "paced",
            "url": url,
            "connections": connections,
            "size": size,
            "rate": rate,
            "seconds": round(duration.as_secs_f64()),
            "sent": sent,
            "received": received,
            "lost": sent.saturating_sub(received),
            "late_sends": late.load(Ordering::Relaxed),
            "per_second": round(received as f64 / duration.as_secs_f64()),
            "p50_us": latency.value_at_quantile(0.5),
            "p99_us": latency.value_at_quantile(0.99),
            "p999_us": latency.value_at_quantile(0.999),
        })
    );
    Ok(())
}

async fn idle(url: &str, connections: usize, hold: Duration) -> anyhow::Result<()> {
    let mut sockets = Vec::with_capacity(connections);
    for i in 0..connections {
        let (mut ws, _) = connect(url)
            .await
            .with_context(|| format!("connection {i} to {url}"))?;
        ws.send(Message::binary(vec![1u8; 16])).await?;
        match ws.next().await {
            Some(Ok(Message::Binary(_))) => {}
            other => bail!("connection {i}: expected the echo, got {other:?}"),
        }
        sockets.push(ws);
    }
    // A line on its own first, so a script can read memory while the tunnels are open.
    println!("open {connections}");
    tokio::time::sleep(hold).await;
    for mut ws in sockets {
        let _ = ws.close(None).await;
    }
    println!(
        "{}",
        serde_json::json!({ "mode": "idle", "url": url, "connections": connections })
    );
    Ok(())
}

/// How load modes reach the server: TLS settings for `wss://`, an address override.
struct Dial {
    tls: Option<Arc<rustls::ClientConfig>>,
    addr: Option<SocketAddr>,
}

static DIAL: std::sync::OnceLock<Dial> = std::sync::OnceLock::new();

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

/// Open `n` WebSockets to `url`, one after another.
async fn connect_all(url: &str, n: usize) -> anyhow::Result<Vec<Ws>> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let (ws, _) = connect(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        sockets.push(ws);
    }
    Ok(sockets)
}

/// Open a WebSocket (`ws://` or `wss://`) without any proxy or DNS surprises.
async fn connect(
    request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest,
) -> anyhow::Result<(
    Ws,
    tokio_tungstenite::tungstenite::handshake::client::Response,
)> {
    let request = request.into_client_request()?;
    let dial = DIAL.get().context("dial settings")?;
    let uri = request.uri();
    let host = uri.host().context("URL without host")?.to_string();
    let secure = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = match dial.addr {
        Some(addr) => tokio::net::TcpStream::connect(addr).await?,
        None => tokio::net::TcpStream::connect((host.as_str(), port)).await?,
    };
    tcp.set_nodelay(true)?;
    let stream: Box<dyn Io> = if secure {
        let tls = dial.tls.clone().context("wss:// needs --ca")?;
        let name = rustls::pki_types::ServerName::try_from(host)?;
        Box::new(
            tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?,
        )
    } else {
        Box::new(tcp)
    };
    Ok(tokio_tungstenite::client_async(request, stream).await?)
}

fn client_tls(ca: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("--ca {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Microseconds from 1 µs to 60 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
