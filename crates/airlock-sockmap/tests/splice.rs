//! Real sockets on loopback, spliced by the real kernel. Needs root (or CAP_BPF and
//! CAP_NET_ADMIN); without it each test says why and checks only that the splicer says so.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use airlock_sockmap::{End, Splicer};

fn splicer(capacity: u32) -> Option<Splicer> {
    match Splicer::new(capacity) {
        Ok(splicer) => Some(splicer),
        Err(e) => {
            eprintln!("kernel relay unavailable here, not tested: {e}");
            assert!(e.to_string().contains("BPF"), "{e}");
            None
        }
    }
}

/// A connected pair: (the client's end, the proxy's accepted end).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    (client, accepted)
}

/// client ↔ proxy_a, proxy_b ↔ server.
fn tunnel() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
    let (client, proxy_a) = pair();
    let (proxy_b, server) = pair();
    for s in [&client, &proxy_a, &proxy_b, &server] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    (client, proxy_a, proxy_b, server)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn bytes_cross_in_order_both_ways_including_those_sent_before_the_splice() {
    let Some(splicer) = splicer(16) else { return };
    let (mut client, proxy_a, proxy_b, mut server) = tunnel();
    client.write_all(b"early").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let splice = splicer.splice(proxy_a.as_fd(), proxy_b.as_fd()).unwrap();
    let mut early = [0u8; 5];
    server.read_exact(&mut early).unwrap();
    assert_eq!(&early, b"early");

    let sizes = [1usize, 125, 126, 1024, 16 * 1024, 65_536, 1 << 20];
    let up: Vec<u8> = sizes.iter().flat_map(|&n| pattern(n, 1)).collect();
    let down: Vec<u8> = sizes.iter().rev().flat_map(|&n| pattern(n, 7)).collect();
    let (up_len, down_len) = (up.len(), down.len());
    let mut client_w = client.try_clone().unwrap();
    let mut server_w = server.try_clone().unwrap();
    let writer_up = std::thread::spawn(move || client_w.write_all(&up).map(|_| up));
    let writer_down = std::thread::spawn(move || server_w.write_all(&down).map(|_| down));
    let mut got_up = vec![0u8; up_len];
    server.read_exact(&mut got_up).unwrap();
    let mut got_down = vec![0u8; down_len];
    client.read_exact(&mut got_down).unwrap();
    assert!(
        got_up == writer_up.join().unwrap().unwrap(),
        "client to server differs"
    );
    assert!(
        got_down == writer_down.join().unwrap().unwrap(),
        "server to client differs"
    );

    let a = splice.received(End::A).unwrap();
    let b = splice.received(End::B).unwrap();
    assert_eq!(a.bytes, (up_len + 5) as u64);
    assert_eq!(b.bytes, down_len as u64);
    assert!(a.last > 0 && b.last > 0);
    assert_eq!((a.passed, b.passed), (0, 0));
    assert!(splice.delivered(End::A, proxy_b.as_fd()).unwrap());
    assert_eq!(splicer.entries().unwrap(), (2, 2));
    drop(splice);
    assert_eq!(splicer.entries().unwrap(), (0, 0));
}

#[test]
fn a_half_close_reaches_the_socket_and_the_other_way_keeps_flowing() {
    let Some(splicer) = splicer(4) else { return };
    let (mut client, mut proxy_a, proxy_b, mut server) = tunnel();
    let splice = splicer.splice(proxy_a.as_fd(), proxy_b.as_fd()).unwrap();
    client.write_all(b"last words").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // The spliced socket sees the end of its input (its bytes went to the peer).
    let mut rest = Vec::new();
    proxy_a.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !splice.delivered(End::A, proxy_b.as_fd()).unwrap() {
        assert!(Instant::now() < deadline, "never delivered");
        std::thread::sleep(Duration::from_millis(1));
    }
    proxy_b.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words");
    server.write_all(b"reply").unwrap();
    let mut reply = [0u8; 5];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"reply");
}

#[test]
fn closed_sockets_leave_nothing_in_the_maps() {
    let Some(splicer) = splicer(64) else { return };
    for round in 0..1_000 {
        let (mut client, proxy_a, proxy_b, mut server) = tunnel();
        let splice = splicer.splice(proxy_a.as_fd(), proxy_b.as_fd()).unwrap();
        client.write_all(&[round as u8; 3]).unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).unwrap();
        assert_eq!(got, [round as u8; 3]);
        // Half the time the sockets close first, half the time the splice goes first.
        if round % 2 == 0 {
            drop((proxy_a, proxy_b));
            drop(splice);
        } else {
            drop(splice);
            drop((proxy_a, proxy_b));
        }
    }
    assert_eq!(splicer.entries().unwrap(), (0, 0));
}

#[test]
fn bytes_the_kernel_cannot_redirect_stay_readable_and_are_counted_as_passed() {
    let Some(splicer) = splicer(4) else { return };
    let (mut client, mut proxy_a, proxy_b, _server) = tunnel();
    let splice = splicer.splice(proxy_a.as_fd(), proxy_b.as_fd()).unwrap();
    // Closing the peer takes it out of the map: nothing can be redirected to it.
    drop(proxy_b);
    client.write_all(b"for nobody").unwrap();
    let mut got = [0u8; 10];
    proxy_a.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"for nobody");
    let a = splice.received(End::A).unwrap();
    assert_eq!((a.bytes, a.passed), (10, 10));
    // Until the caller says it forwarded them, later bytes queue behind them.
    client.write_all(b"more").unwrap();
    let mut more = [0u8; 4];
    proxy_a.read_exact(&mut more).unwrap();
    assert_eq!(&more, b"more");
    assert_eq!(splice.received(End::A).unwrap().passed, 14);
    splice.forwarded(End::A, 14).unwrap();
    drop(splice);
    assert_eq!(splicer.entries().unwrap(), (0, 0));
}
