//! The relay on real loopback sockets: a drain's close handshake on a WebSocket tunnel.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::*;

/// A connected pair: the outer end (the test's) and the inner end (the relay's).
async fn pair() -> (TcpStream, Stream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outer = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (inner, _) = listener.accept().await.unwrap();
    (outer, Stream::Tcp(inner))
}

struct Rig {
    client: TcpStream,
    upstream: TcpStream,
    drain: Option<oneshot::Sender<u16>>,
    relay: tokio::task::JoinHandle<Outcome>,
}

async fn rig(websocket: bool) -> Rig {
    let framing = if websocket {
        Framing::Track
    } else {
        Framing::Bytes
    };
    rig_with(framing).await
}

async fn rig_with(framing: Framing) -> Rig {
    let (client, client_inner) = pair().await;
    let (upstream, upstream_inner) = pair().await;
    let (drain, drained) = oneshot::channel();
    let signals = Signals {
        drain: async move { drained.await.unwrap_or(1001) },
        force: CancellationToken::new(),
    };
    let limits = Limits {
        idle_timeout: Duration::from_secs(60),
        max_lifetime: None,
        half_close_timeout: Duration::from_secs(60),
    };
    let endpoint = |stream| Endpoint {
        stream,
        already_read: Bytes::new(),
    };
    let relay = tokio::spawn(relay(
        endpoint(client_inner),
        endpoint(upstream_inner),
        limits,
        framing,
        signals,
    ));
    Rig {
        client,
        upstream,
        drain: Some(drain),
        relay,
    }
}

/// A masked client frame (key 1 2 3 4).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [1, 2, 3, 4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode, payload.len() as u8];
    f.extend_from_slice(payload);
    f
}

/// The client and the upstream each answer the proxy's close with their own close frame;
/// the relay then ends (within 2 s).
async fn both_answer(rig: &mut Rig, client_code: u16, upstream_code: u16) -> Outcome {
    rig.client
        .write_all(&client_frame(0x8, &client_code.to_be_bytes()))
        .await
        .unwrap();
    rig.upstream
        .write_all(&server_frame(0x8, &upstream_code.to_be_bytes()))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), &mut rig.relay)
        .await
        .expect("the relay ends once both answered")
        .unwrap()
}

async fn read_exact(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
        .await
        .expect("bytes in time")
        .unwrap();
    buf
}

/// The code of an (unmasked or masked) close frame at the start of `bytes`.
fn close_code(bytes: &[u8]) -> u16 {
    assert_eq!(bytes[0], 0x88, "a close frame: {bytes:?}");
    let (key, at) = if bytes[1] & 0x80 != 0 {
        (bytes[2..6].to_vec(), 6)
    } else {
        (vec![0; 4], 2)
    };
    u16::from_be_bytes([bytes[at] ^ key[0], bytes[at + 1] ^ key[1]])
}

#[tokio::test]
async fn a_drain_sends_close_frames_between_frames_and_waits_for_the_answers() {
    let mut rig = rig(true).await;
    // The client is in the middle of a frame when the drain comes.
    let frame = client_frame(0x2, b"hello, upstream");
    rig.client.write_all(&frame[..8]).await.unwrap();
    assert_eq!(read_exact(&mut rig.upstream, 8).await, frame[..8]);
    rig.drain.take().unwrap().send(1012).unwrap();

    // The client gets its close frame at once: the upstream's direction is between frames.
    let to_client = read_exact(&mut rig.client, 2 + 2 + "service restart".len()).await;
    assert_eq!(to_client[1], 17, "unmasked, code and reason");
    assert_eq!(close_code(&to_client), 1012);
    assert_eq!(&to_client[4..], b"service restart");

    // The upstream gets the rest of the client's frame first, then a masked close frame.
    // Nothing arrives before the frame is complete.
    let mut early = [0; 1];
    let nothing =
        tokio::time::timeout(Duration::from_millis(200), rig.upstream.read(&mut early)).await;
    assert!(nothing.is_err(), "bytes before the frame was complete");
    rig.client.write_all(&frame[8..]).await.unwrap();
    // Bytes after the client's frame are its answer to the close: not relayed.
    assert_eq!(
        read_exact(&mut rig.upstream, frame.len() - 8).await,
        frame[8..]
    );
    let to_upstream = read_exact(&mut rig.upstream, 6 + 2 + "service restart".len()).await;
    assert_eq!(to_upstream[1], 0x80 | 17, "masked");
    assert_eq!(close_code(&to_upstream), 1012);

    // Both answer; the relay then ends.
    let outcome = both_answer(&mut rig, 1012, 1012).await;
    assert_eq!(outcome.reason, CloseReason::Drain);
    assert_eq!(outcome.closed_by, Side::Proxy);
    assert_eq!(outcome.close_code, Some(1012));
    // The answers were not relayed across: each side only saw the proxy's close.
    let mut rest = Vec::new();
    rig.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

#[tokio::test]
async fn a_side_that_closed_first_gets_no_second_close_frame() {
    let mut rig = rig(true).await;
    // The client starts a close just before the drain: it reaches the upstream.
    let close = client_frame(0x8, &1000u16.to_be_bytes());
    rig.client.write_all(&close).await.unwrap();
    assert_eq!(read_exact(&mut rig.upstream, close.len()).await, close);
    rig.drain.take().unwrap().send(1001).unwrap();
    // The client gets the proxy's close; the upstream answers the client's.
    let to_client = read_exact(&mut rig.client, 14).await;
    assert_eq!(close_code(&to_client), 1001);
    rig.upstream
        .write_all(&server_frame(0x8, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(2), rig.relay)
        .await
        .expect("settled")
        .unwrap();
    assert_eq!(outcome.reason, CloseReason::Drain);
    let mut rest = Vec::new();
    rig.upstream.read_to_end(&mut rest).await.unwrap();
    assert!(
        rest.is_empty(),
        "a second close frame went upstream: {rest:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_answers_is_closed_after_the_handshake_timeout() {
    let mut rig = rig(true).await;
    rig.drain.take().unwrap().send(1001).unwrap();
    read_exact(&mut rig.client, 14).await;
    read_exact(&mut rig.upstream, 18).await;
    let outcome = rig.relay.await.unwrap();
    assert_eq!(outcome.reason, CloseReason::Drain);
    assert!(outcome.duration >= CLOSE_HANDSHAKE_TIMEOUT);
}

#[tokio::test]
async fn other_upgrades_are_closed_plainly() {
    let mut rig = rig(false).await;
    rig.client.write_all(b"raw bytes").await.unwrap();
    assert_eq!(read_exact(&mut rig.upstream, 9).await, b"raw bytes");
    rig.drain.take().unwrap().send(1001).unwrap();
    let outcome = rig.relay.await.unwrap();
    assert_eq!(outcome.reason, CloseReason::Drain);
    assert_eq!(outcome.close_code, None);
    let mut rest = Vec::new();
    rig.client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "no close frame on a non-WebSocket tunnel");
}

fn enforce(max_message: u64) -> Framing {
    enforce_with(max_message, None)
}

fn enforce_with(max_message: u64, ping: Option<(Duration, Duration)>) -> Framing {
    Framing::Enforce {
        rules: std::sync::Arc::new(FrameRules {
            max_message,
            max_frame: max_message,
            message_rate: None,
            ping,
        }),
        rsv_allowed: 0,
    }
}

#[tokio::test]
async fn a_frame_over_the_limit_is_not_relayed_and_both_sides_get_close_frames() {
    let mut rig = rig_with(enforce(10)).await;
    let small = client_frame(0x1, b"ok");
    let big = client_frame(0x2, &[7; 11]);
    // Both in one write: the small one goes through, the big one stops at its header.
    rig.client
        .write_all(&[small.clone(), big].concat())
        .await
        .unwrap();
    assert_eq!(read_exact(&mut rig.upstream, small.len()).await, small);
    let to_upstream = read_exact(&mut rig.upstream, 6 + 2 + "going away".len()).await;
    assert_eq!(close_code(&to_upstream), 1001);
    let to_client = read_exact(&mut rig.client, 2 + 2 + "message too big".len()).await;
    assert_eq!(close_code(&to_client), 1009);
    let outcome = both_answer(&mut rig, 1009, 1001).await;
    assert_eq!(outcome.reason, CloseReason::Violation(1009));
    assert_eq!(outcome.closed_by, Side::Client);
    assert_eq!(outcome.close_code, Some(1009));
    let frames = outcome.frames.expect("frame-aware counts");
    assert_eq!(frames.messages_from_client, 1);
    let first = frames.peer_close.expect("the client's close frame");
    assert_eq!((first.side, first.code), (Side::Client, 1009));
}

#[tokio::test(start_paused = true)]
async fn pings_answered_keep_the_tunnel_and_the_pongs_stay_with_airlock() {
    let ping = Some((Duration::from_secs(2), Duration::from_secs(1)));
    let mut rig = rig_with(enforce_with(1 << 20, ping)).await;
    for _ in 0..3 {
        // The ping comes after the interval: unmasked, 8 bytes of payload.
        let frame = read_exact(&mut rig.client, 10).await;
        assert_eq!(&frame[..2], &[0x89, 8]);
        // The pong, then a message, in one write: the pong is taken out, the message
        // goes through.
        let pong = client_frame(0xA, &frame[2..]);
        let message = client_frame(0x1, b"after the pong");
        rig.client
            .write_all(&[pong, message.clone()].concat())
            .await
            .unwrap();
        assert_eq!(read_exact(&mut rig.upstream, message.len()).await, message);
    }
    assert!(!rig.relay.is_finished());
    // A pong with another payload (the client's own) is relayed.
    let other = client_frame(0xA, b"12345678");
    rig.client.write_all(&other).await.unwrap();
    assert_eq!(read_exact(&mut rig.upstream, other.len()).await, other);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_answering_pings_is_closed() {
    let ping = Some((Duration::from_secs(2), Duration::from_secs(1)));
    let mut rig = rig_with(enforce_with(1 << 20, ping)).await;
    let started = tokio::time::Instant::now();
    let frame = read_exact(&mut rig.client, 10).await;
    assert_eq!(frame[0], 0x89);
    // No pong. The upstream gets 1001 and answers; the client is not waited for.
    let to_upstream = read_exact(&mut rig.upstream, 6 + 2 + "going away".len()).await;
    assert_eq!(close_code(&to_upstream), 1001);
    rig.upstream
        .write_all(&server_frame(0x8, &1001u16.to_be_bytes()))
        .await
        .unwrap();
    let outcome = rig.relay.await.unwrap();
    assert_eq!(outcome.reason, CloseReason::PongTimeout);
    assert_eq!(outcome.closed_by, Side::Client);
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_secs(3) && lived < Duration::from_secs(4),
        "{lived:?}"
    );
}
