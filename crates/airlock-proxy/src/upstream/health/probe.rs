//! Active health probes: what one probe sends and what passes, and the schedule that
//! probes each server of a pool, off the request path.
//!
//! - `http`: `GET path` with `Connection: close`; passes on `expect_status`, or on any
//!   2xx or 3xx when unset.
//! - `websocket`: a real WebSocket handshake on `path`; passes on a `101` with the right
//!   `Sec-WebSocket-Accept`, after which the probe sends a close frame (1000) and waits
//!   briefly for the server's, so the backend sees a clean close, not a reset.
//!
//! Both go over the same connect as traffic (TCP, then the pool's TLS), so a probe fails
//! when traffic would. A probe task holds its server weakly and ends when the pool is gone.

use std::sync::Arc;
use std::time::Duration;

use airlock_config::{HealthCheck, ProbeKind};
use http::HeaderValue;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::Change;
use crate::http::websocket_key::{accept_for, new_key};
use crate::stream::Stream;
use crate::upstream::server::{Server, WeakServer};

/// The most of a probe answer's head that is read.
const MAX_HEAD: usize = 16 * 1024;

/// Probe `server` every `interval` (±10%), starting at a random point of the first
/// interval, until the pool that owns it is dropped.
pub async fn run(server: WeakServer, pool: Arc<str>, check: Arc<HealthCheck>) {
    let interval = check.interval.get();
    tokio::time::sleep(interval.mul_f64(rand::random_range(0.0..1.0))).await;
    loop {
        let Some(server) = server.upgrade().filter(|s| !s.is_retired()) else {
            return;
        };
        let result = probe(&server, &check).await;
        match server.record_probe(result.clone()) {
            Some(Change::WentDown) => tracing::warn!(
                upstream = &*pool,
                server = &*server.addr,
                error = result.as_ref().err().map(String::as_str),
                fall = check.fall,
                "upstream server failed its health checks; out of rotation"
            ),
            Some(Change::CameUp) => tracing::info!(
                upstream = &*pool,
                server = &*server.addr,
                rise = check.rise,
                "upstream server passed its health checks; back in rotation"
            ),
            None => {}
        }
        drop(server);
        tokio::time::sleep(interval.mul_f64(rand::random_range(0.9..1.1))).await;
    }
}

/// One probe: `Ok(status)` when it passes, `Err(why)` otherwise.
pub async fn probe(server: &Server, check: &HealthCheck) -> Result<u16, String> {
    let timeout = check.timeout.get();
    match tokio::time::timeout(timeout, probe_now(server, check)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn probe_now(server: &Server, check: &HealthCheck) -> Result<u16, String> {
    let mut stream = server
        .connect(check.timeout.get())
        .await
        .map_err(|e| crate::error::chain(&e))?;
    let host = check
        .host
        .as_deref()
        .or(server.name())
        .unwrap_or(&server.addr);
    let key = (check.kind == ProbeKind::Websocket).then(new_key);
    let head = request_head(&check.path, host, key.as_ref());
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("sending the probe: {e}"))?;
    let (status, accept) = read_head(&mut stream).await?;
    match key {
        None => {
            let passes = match check.expect_status {
                Some(expected) => status == expected,
                None => (200..400).contains(&status),
            };
            if passes {
                Ok(status)
            } else {
                Err(format!("status {status}"))
            }
        }
        Some(key) => {
            if status != 101 {
                return Err(format!("status {status} to a WebSocket handshake, not 101"));
            }
            if accept.as_ref() != Some(&accept_for(&key)) {
                return Err("101 with a wrong Sec-WebSocket-Accept".into());
            }
            close_cleanly(&mut stream).await;
            Ok(status)
        }
    }
}

fn request_head(path: &str, host: &str, websocket_key: Option<&HeaderValue>) -> String {
    let mut head =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: airlock-health-check\r\n");
    match websocket_key {
        Some(key) => {
            let key = key.to_str().expect("base64 is text");
            head.push_str("Connection: Upgrade\r\nUpgrade: websocket\r\n");
            head.push_str(&format!(
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            ));
        }
        None => head.push_str("Connection: close\r\n"),
    }
    head.push_str("\r\n");
    head
}

/// The status and `Sec-WebSocket-Accept` of the answer.
async fn read_head(stream: &mut Stream) -> Result<(u16, Option<HeaderValue>), String> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection without an answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let status = response.code.unwrap_or(0);
                let accept = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                    .and_then(|h| HeaderValue::from_bytes(h.value).ok());
                return Ok((status, accept));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err("an answer head over 16 KiB".into()),
            Err(e) => return Err(format!("not an HTTP answer: {e}")),
        }
    }
}

/// Send a masked close frame (1000, no reason) and give the server a moment to answer
/// with its own before the connection is dropped.
async fn close_cleanly(stream: &mut Stream) {
    let mask: [u8; 4] = rand::random();
    let code = 1000u16.to_be_bytes();
    let frame = [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        code[0] ^ mask[0],
        code[1] ^ mask[1],
    ];
    if stream.write_all(&frame).await.is_err() {
        return;
    }
    let mut sink = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let http = request_head("/healthz", "10.0.0.1:80", None);
        assert_eq!(
            http,
            "GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:80\r\nUser-Agent: airlock-health-check\r\nConnection: close\r\n\r\n"
        );
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let ws = request_head("/ws", "h", Some(&key));
        assert!(ws.contains("\r\nUpgrade: websocket\r\n"), "{ws}");
        assert!(
            ws.contains("\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            "{ws}"
        );
        assert!(ws.ends_with("\r\n\r\n"));
    }
}
