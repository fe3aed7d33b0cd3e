//! The relay itself: one future that moves bytes both ways, watches the timers and ends
//! with an [`Outcome`].

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{CloseReason, Endpoint, Limits, Outcome, Side};
use crate::stream::Stream;

/// Bytes read per system call.
const CHUNK: usize = 16 * 1024;

struct Direction {
    /// The side bytes come from and the side they go to.
    from: Side,
    to: Side,
    /// Bytes read but not yet written, only while the destination is full.
    pending: Bytes,
    /// The source has finished sending; the destination's write half is being shut down.
    src_done: bool,
    /// Finished: the source ended and the destination's write half is shut.
    eof: bool,
    bytes: u64,
}

impl Direction {
    fn new(from: Side, to: Side, already_read: Bytes) -> Self {
        Self {
            from,
            to,
            pending: already_read,
            src_done: false,
            eof: false,
            bytes: 0,
        }
    }
}

/// A failed direction: which side's socket failed, and how.
struct Failure(Side, io::Error);

pub(super) struct Relay {
    client: Stream,
    upstream: Stream,
    to_upstream: Direction,
    to_client: Direction,
    first_eof: Option<Side>,
    idle_timeout: Duration,
    half_close_timeout: Duration,
    last_activity: Instant,
    idle: Pin<Box<Sleep>>,
    lifetime: Option<Pin<Box<Sleep>>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    started: Instant,
}

impl Relay {
    pub(super) fn new(
        client: Endpoint,
        upstream: Endpoint,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        let started = Instant::now();
        Self {
            client: client.stream,
            upstream: upstream.stream,
            to_upstream: Direction::new(Side::Client, Side::Upstream, client.already_read),
            to_client: Direction::new(Side::Upstream, Side::Client, upstream.already_read),
            first_eof: None,
            idle_timeout: limits.idle_timeout,
            half_close_timeout: limits.half_close_timeout,
            last_activity: started,
            idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            lifetime: limits.max_lifetime.map(|d| Box::pin(tokio::time::sleep(d))),
            shutdown: Box::pin(shutdown.cancelled_owned()),
            started,
        }
    }

    fn outcome(&self, closed_by: Side, reason: CloseReason) -> Outcome {
        Outcome {
            client_to_upstream: self.to_upstream.bytes,
            upstream_to_client: self.to_client.bytes,
            closed_by,
            reason,
            duration: self.started.elapsed(),
        }
    }
}

impl Future for Relay {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = &mut *self;
        let mut moved = false;
        let mut failure = None;

        for from in [Side::Client, Side::Upstream] {
            let (src, dst, dir, reverse) = match from {
                Side::Client => (
                    &mut this.client,
                    &mut this.upstream,
                    &mut this.to_upstream,
                    &this.to_client,
                ),
                _ => (
                    &mut this.upstream,
                    &mut this.client,
                    &mut this.to_client,
                    &this.to_upstream,
                ),
            };
            if dir.eof {
                continue;
            }
            match pump(src, dst, dir, reverse.eof, &mut moved, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => {
                    this.first_eof.get_or_insert(from);
                }
                Poll::Ready(Err(Failure(side, e))) => {
                    failure = Some((side, e.kind()));
                    break;
                }
            }
        }
        if let Some((side, kind)) = failure {
            return Poll::Ready(this.outcome(side, CloseReason::Error(kind)));
        }
        if this.to_upstream.eof && this.to_client.eof {
            let by = this.first_eof.unwrap_or(Side::Client);
            return Poll::Ready(this.outcome(by, CloseReason::Closed));
        }

        if moved {
            this.last_activity = Instant::now();
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(this.outcome(Side::Proxy, CloseReason::Shutdown));
        }
        if let Some(lifetime) = &mut this.lifetime
            && lifetime.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(this.outcome(Side::Proxy, CloseReason::MaxLifetime));
        }
        let (quiet_limit, reason) = match this.first_eof {
            Some(_) if this.half_close_timeout < this.idle_timeout => {
                (this.half_close_timeout, CloseReason::HalfCloseTimeout)
            }
            _ => (this.idle_timeout, CloseReason::IdleTimeout),
        };
        let deadline = this.last_activity + quiet_limit;
        if this.first_eof.is_some() && this.idle.deadline() > deadline {
            this.idle.as_mut().reset(deadline);
        }
        // The idle timer is not reset per message (that would touch the timer wheel on the
        // hot path); when it fires early, it is re-armed from the last activity.
        while this.idle.as_mut().poll(cx).is_ready() {
            let deadline = this.last_activity + quiet_limit;
            if Instant::now() >= deadline {
                return Poll::Ready(this.outcome(Side::Proxy, reason));
            }
            this.idle.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// Move bytes from `src` to `dst` until `src` would block (Pending), `src` ends and the
/// end is passed on (Ready(Ok)) or a stream fails. `reverse_done`: `dst` has already
/// ended its own bytes, so this end finishes the tunnel.
fn pump(
    src: &mut Stream,
    dst: &mut Stream,
    dir: &mut Direction,
    reverse_done: bool,
    moved: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Failure>> {
    let (from, to) = (dir.from, dir.to);
    loop {
        while dir.pending.has_remaining() {
            let n = ready!(Pin::new(&mut *dst).poll_write(cx, &dir.pending))
                .and_then(nonzero_write)
                .map_err(|e| Failure(to, e))?;
            dir.pending.advance(n);
            dir.bytes += n as u64;
            *moved = true;
        }
        // The copy is written: let its memory go before waiting for more.
        dir.pending = Bytes::new();

        if dir.src_done {
            // The last end of a plain TCP tunnel: closing `dst`, which comes next, sends
            // the same FIN as a shutdown would. It cannot turn into a reset: `dst`'s
            // bytes were all read, up to its own end. (TLS and HTTP/2 streams still need
            // their shutdown: it writes close_notify or END_STREAM.)
            if reverse_done && matches!(dst, Stream::Tcp(_)) {
                dir.eof = true;
                return Poll::Ready(Ok(()));
            }
            // Propagate the half-close; the other direction keeps flowing.
            match ready!(Pin::new(&mut *dst).poll_shutdown(cx)) {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => {
                    return Poll::Ready(Err(Failure(to, e)));
                }
                _ => {}
            }
            dir.eof = true;
            return Poll::Ready(Ok(()));
        }

        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut *src).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {}
            // A TLS peer that closes its socket without close_notify (most browsers and
            // many libraries do): the end of its bytes, as on plain TCP.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure(from, e))),
            Poll::Pending => {
                // Nothing more to read for now: push out what an encrypting or framing
                // destination still buffers (a no-op on plain TCP).
                if let Poll::Ready(Err(e)) = Pin::new(&mut *dst).poll_flush(cx) {
                    return Poll::Ready(Err(Failure(to, e)));
                }
                return Poll::Pending;
            }
        }
        let read = buf.filled();
        if read.is_empty() {
            dir.src_done = true;
            continue;
        }
        *moved = true;
        let mut written = 0;
        while written < read.len() {
            match Pin::new(&mut *dst).poll_write(cx, &read[written..]) {
                Poll::Ready(Ok(w)) => written += nonzero_write(w).map_err(|e| Failure(to, e))?,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure(to, e))),
                Poll::Pending => break,
            }
        }
        dir.bytes += written as u64;
        if written < read.len() {
            // `dst` is full and will wake this task when it can take more.
            dir.pending = Bytes::copy_from_slice(&read[written..]);
            return Poll::Pending;
        }
    }
}

fn nonzero_write(n: usize) -> io::Result<usize> {
    if n == 0 {
        Err(io::ErrorKind::WriteZero.into())
    } else {
        Ok(n)
    }
}
