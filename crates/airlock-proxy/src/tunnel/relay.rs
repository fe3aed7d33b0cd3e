//! The relay itself: one future that moves bytes both ways, watches the timers and the
//! drain, and ends with an [`Outcome`].

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::dormant::Dormant;
use super::frames::{Aware, Frames, close_frame, ping_frame};
use super::websocket::{Checker, code};
use super::{
    CLOSE_HANDSHAKE_TIMEOUT, CloseReason, Endpoint, FrameStats, Framing, Limits, Outcome,
    PeerCloseFrame, Side, Signals,
};
use crate::stream::Stream;

/// Bytes read per system call.
const CHUNK: usize = 16 * 1024;

/// The reason text of the proxy's close frames with `code`.
fn reason_text(code: u16) -> &'static str {
    match code {
        code::GOING_AWAY => "going away",
        code::PROTOCOL_ERROR => "protocol error",
        code::POLICY => "message rate exceeded",
        code::TOO_BIG => "message too big",
        1012 => "service restart",
        _ => "",
    }
}

/// Where a direction stands in a close the proxy started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// No close started: bytes are relayed.
    Open,
    /// A close frame with this code goes to the destination at the next frame boundary;
    /// bytes up to it are relayed.
    Want(u16),
    /// The destination has its close frame (the proxy's, or the source's own): nothing
    /// more is relayed. The source is read on, for its close frame.
    Sent,
}

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
    /// Frame boundaries of the source's bytes, on a WebSocket tunnel.
    frames: Option<Frames>,
    /// A frame of the proxy's own, written after `pending`.
    own: Bytes,
    close: Close,
    /// The source broke a frame-aware route's rules: the close code it is to get.
    violation: Option<u16>,
    /// airlock's ping, to go to the destination at the next frame boundary.
    ping_wanted: Option<[u8; 8]>,
    /// The source answered airlock's ping (the pong was not relayed).
    pong_seen: bool,
    /// Bytes read but not yet looked at (what followed a pong taken out of a read).
    carry: Bytes,
    /// The source will not answer a close (a peer that stopped answering pings).
    gave_up: bool,
}

impl Direction {
    fn new(from: Side, to: Side, already_read: Bytes, framing: &Framing) -> Self {
        let mut frames = match framing {
            Framing::Bytes => None,
            Framing::Track => Some(Frames::default()),
            Framing::Enforce { rules, rsv_allowed } => Some(Frames::checked(Checker::new(
                rules.clone(),
                from == Side::Client,
                *rsv_allowed,
            ))),
        };
        if let Some(frames) = &mut frames {
            // The first bytes are relayed as they are; their frames are counted.
            let _ = frames.check(&already_read);
        }
        Self {
            from,
            to,
            pending: already_read,
            src_done: false,
            eof: false,
            bytes: 0,
            frames,
            own: Bytes::new(),
            close: Close::Open,
            violation: None,
            ping_wanted: None,
            pong_seen: false,
            carry: Bytes::new(),
            gave_up: false,
        }
    }

    /// Start a close: a close frame with `code` for the destination, unless it has one
    /// already or can take no more.
    fn start_close(&mut self, code: u16) {
        let has_one = self.frames.as_ref().is_some_and(|f| f.saw_close());
        self.close = if self.src_done || self.eof || has_one {
            Close::Sent
        } else {
            Close::Want(code)
        };
    }

    /// The close is complete in this direction: the destination has its close frame and
    /// the source has sent its own (or finished).
    fn close_settled(&self) -> bool {
        self.close == Close::Sent
            && self.pending.is_empty()
            && self.own.is_empty()
            && (self.src_done
                || self.gave_up
                || self.frames.as_ref().is_some_and(|f| f.saw_close()))
    }

    fn frames_lost(&self) -> bool {
        self.frames.as_ref().is_some_and(|f| f.lost())
    }

    fn aware(&self) -> Option<&Aware> {
        self.frames.as_ref().and_then(|f| f.aware())
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
    /// Resolves when a drain or the end of the grace period closes the tunnel; after a
    /// drain began closing it, the end of the grace period alone.
    signal: Dormant<Signal>,
    /// Cancelled when the grace period is over.
    force: CancellationToken,
    /// A close handshake the proxy started: why, on whose account, and the code it sent.
    closing: Option<Closing>,
    /// airlock's pings to the client, on a frame-aware route that asks for them.
    pinger: Option<Pinger>,
    started: Instant,
}

/// airlock's keep-alive pings to the client.
struct Pinger {
    interval: Duration,
    timeout: Duration,
    /// When the next ping goes, or (while one is unanswered) when the client is given up.
    timer: Pin<Box<Sleep>>,
    sent: u64,
    waiting: bool,
}

/// A close handshake under way.
#[derive(Debug, Clone, Copy)]
struct Closing {
    reason: CloseReason,
    by: Side,
    code: u16,
}

impl Relay {
    /// Send a ping when it is due; give the client up when one went unanswered
    /// (`Ready`: the tunnel ends).
    fn keep_alive(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        if std::mem::take(&mut self.to_upstream.pong_seen)
            && let Some(p) = &mut self.pinger
        {
            p.waiting = false;
            p.timer.as_mut().reset(Instant::now() + p.interval);
        }
        let Some(p) = &mut self.pinger else {
            return Poll::Pending;
        };
        if p.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if p.waiting {
            // No pong in time: the client is gone. The upstream gets 1001; the client
            // is not waited for.
            self.pinger = None;
            self.to_upstream.gave_up = true;
            let closing = Closing {
                reason: CloseReason::PongTimeout,
                by: Side::Client,
                code: code::GOING_AWAY,
            };
            return self.end_with_close(closing, cx);
        }
        p.sent += 1;
        p.waiting = true;
        p.timer.as_mut().reset(Instant::now() + p.timeout);
        let payload = p.sent.to_be_bytes();
        self.to_client.ping_wanted = Some(payload);
        if let Some(aware) = self.to_upstream.frames.as_mut().and_then(|f| f.aware_mut()) {
            aware.pong_expected = Some(payload);
        }
        // Poll again at once: the pump sends the ping, the timer is armed.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What the proxy asks of the tunnel.
enum Signal {
    /// Close now: the grace period is over.
    Force,
    /// Close gracefully, with this close code for a WebSocket.
    Drain(u16),
}

/// Resolves with [`Signal::Force`] when `force` is cancelled.
async fn forced(force: CancellationToken) -> Signal {
    force.cancelled_owned().await;
    Signal::Force
}

/// Resolves with the first of the two signals.
async fn either(force: CancellationToken, drain: impl Future<Output = u16>) -> Signal {
    tokio::select! {
        biased;
        _ = force.cancelled() => Signal::Force,
        code = drain => Signal::Drain(code),
    }
}

impl Relay {
    pub(super) fn new(
        client: Endpoint,
        upstream: Endpoint,
        limits: Limits,
        framing: Framing,
        signals: Signals<impl Future<Output = u16> + Send + 'static>,
    ) -> Self {
        let started = Instant::now();
        let force = signals.force;
        let pinger = match &framing {
            Framing::Enforce { rules, .. } => rules.ping.map(|(interval, timeout)| Pinger {
                interval,
                timeout,
                timer: Box::pin(tokio::time::sleep(interval)),
                sent: 0,
                waiting: false,
            }),
            _ => None,
        };
        Self {
            client: client.stream,
            upstream: upstream.stream,
            to_upstream: Direction::new(
                Side::Client,
                Side::Upstream,
                client.already_read,
                &framing,
            ),
            to_client: Direction::new(
                Side::Upstream,
                Side::Client,
                upstream.already_read,
                &framing,
            ),
            first_eof: None,
            idle_timeout: limits.idle_timeout,
            half_close_timeout: limits.half_close_timeout,
            last_activity: started,
            idle: Box::pin(tokio::time::sleep(limits.idle_timeout)),
            lifetime: limits.max_lifetime.map(|d| Box::pin(tokio::time::sleep(d))),
            signal: Dormant::new(Box::pin(either(force.clone(), signals.drain))),
            force,
            closing: None,
            pinger,
            started,
        }
    }

    fn outcome(&self, closed_by: Side, reason: CloseReason) -> Outcome {
        Outcome {
            client_to_upstream: self.to_upstream.bytes,
            upstream_to_client: self.to_client.bytes,
            closed_by,
            reason,
            close_code: self.closing.map(|c| c.code),
            duration: self.started.elapsed(),
            frames: self.frame_stats(),
        }
    }

    /// How a close the proxy started ends (settled, timed out, or cut short).
    fn closed(&self) -> Outcome {
        let closing = self.closing.expect("a close under way");
        self.outcome(closing.by, closing.reason)
    }

    fn frame_stats(&self) -> Option<FrameStats> {
        let (from_client, from_upstream) = (self.to_upstream.aware()?, self.to_client.aware()?);
        // The first close frame either side sent.
        let peer_close = [(Side::Client, from_client), (Side::Upstream, from_upstream)]
            .into_iter()
            .filter_map(|(side, a)| Some((a.close_at?, side, a)))
            .min_by_key(|(at, _, _)| *at)
            .map(|(_, side, a)| {
                let (code, reason) = a
                    .close
                    .as_ref()
                    .map_or((1005, String::new()), |c| c.code_and_reason());
                PeerCloseFrame { side, code, reason }
            });
        Some(FrameStats {
            messages_from_client: from_client.checker.messages,
            messages_from_upstream: from_upstream.checker.messages,
            largest_from_client: from_client.checker.largest,
            largest_from_upstream: from_upstream.checker.largest,
            peer_close,
        })
    }

    /// Close the tunnel with close frames, `to_client` to the client and `to_upstream` to
    /// the upstream, each between frames, and wait for their answers (`true`); a tunnel
    /// whose frames are not followed closes at once (`false`).
    fn start_close(&mut self, closing: Closing, to_client: u16, to_upstream: u16) -> bool {
        let websocket = self.to_upstream.frames.is_some();
        if !websocket || self.to_upstream.frames_lost() || self.to_client.frames_lost() {
            return false;
        }
        self.closing = Some(closing);
        self.to_upstream.start_close(to_upstream);
        self.to_client.start_close(to_client);
        self.idle
            .as_mut()
            .reset(Instant::now() + CLOSE_HANDSHAKE_TIMEOUT);
        true
    }

    /// A timeout or the lifetime ends the tunnel: a frame-aware one with close frames
    /// (1001 both ways), any other at once.
    fn time_is_up(&mut self, reason: CloseReason, cx: &mut Context<'_>) -> Poll<Outcome> {
        let closing = Closing {
            reason,
            by: Side::Proxy,
            code: code::GOING_AWAY,
        };
        self.end_with_close(closing, cx)
    }

    /// End a frame-aware tunnel with 1001 close frames both ways (`Pending` while they go
    /// out), any other at once.
    fn end_with_close(&mut self, closing: Closing, cx: &mut Context<'_>) -> Poll<Outcome> {
        let aware = self.to_upstream.aware().is_some();
        if aware && self.start_close(closing, code::GOING_AWAY, code::GOING_AWAY) {
            // Poll again at once: the pumps send the close frames, the timer is armed.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.outcome(closing.by, closing.reason))
    }

    /// A side broke a frame-aware route's rules: it gets a close frame with the code
    /// (the other side already has 1001, from the pump).
    fn start_violation_close(&mut self, cx: &mut Context<'_>) {
        for offender in [Side::Client, Side::Upstream] {
            let (dir, reverse) = match offender {
                Side::Client => (&mut self.to_upstream, &mut self.to_client),
                _ => (&mut self.to_client, &mut self.to_upstream),
            };
            let Some(code) = dir.violation.take() else {
                continue;
            };
            if self.closing.is_some() {
                continue;
            }
            let closing = Closing {
                reason: CloseReason::Violation(code),
                by: offender,
                code,
            };
            reverse.start_close(code);
            self.closing = Some(closing);
            self.idle
                .as_mut()
                .reset(Instant::now() + CLOSE_HANDSHAKE_TIMEOUT);
            // Poll again at once: the pumps send the close frame.
            cx.waker().wake_by_ref();
        }
    }
}

impl Future for Relay {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = &mut *self;
        let mut moved = false;
        let mut failure = None;

        while let Poll::Ready(signal) = this.signal.poll(cx) {
            let Signal::Drain(code) = signal else {
                return Poll::Ready(this.outcome(Side::Proxy, CloseReason::Shutdown));
            };
            // From here on only the end of the grace period.
            this.signal = Dormant::new(Box::pin(forced(this.force.clone())));
            let closing = Closing {
                reason: CloseReason::Drain,
                by: Side::Proxy,
                code,
            };
            if this.closing.is_none() && !this.start_close(closing, code, code) {
                return Poll::Ready(this.outcome(Side::Proxy, CloseReason::Drain));
            }
        }

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
            // A side that broke the rules: the other direction stops relaying before it is
            // pumped (the other side's answer to its 1001 must not reach the offender).
            this.start_violation_close(cx);
        }
        if let Some((side, kind)) = failure {
            return Poll::Ready(this.outcome(side, CloseReason::Error(kind)));
        }
        if this.closing.is_some() {
            if this.to_upstream.frames_lost() || this.to_client.frames_lost() {
                return Poll::Ready(this.closed());
            }
            if this.to_upstream.close_settled() && this.to_client.close_settled() {
                // Both sides have answered: push out what a TLS or HTTP/2 stream still
                // holds, then close TCP.
                for stream in [&mut this.client, &mut this.upstream] {
                    if Pin::new(stream).poll_flush(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                return Poll::Ready(this.closed());
            }
        }
        if this.to_upstream.eof && this.to_client.eof {
            if this.closing.is_some() {
                return Poll::Ready(this.closed());
            }
            let by = this.first_eof.unwrap_or(Side::Client);
            return Poll::Ready(this.outcome(by, CloseReason::Closed));
        }

        if this.closing.is_some() {
            // The close handshake's time is up.
            if this.idle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(this.closed());
            }
            return Poll::Pending;
        }
        if moved {
            this.last_activity = Instant::now();
        }
        if let Poll::Ready(outcome) = this.keep_alive(cx) {
            return Poll::Ready(outcome);
        }
        if this.closing.is_some() {
            return Poll::Pending;
        }
        if let Some(lifetime) = &mut this.lifetime
            && lifetime.as_mut().poll(cx).is_ready()
        {
            this.lifetime = None;
            return this.time_is_up(CloseReason::MaxLifetime, cx);
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
                return this.time_is_up(reason, cx);
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

        if !dir.own.is_empty() {
            while dir.own.has_remaining() {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &dir.own))
                    .and_then(nonzero_write)
                    .map_err(|e| Failure(to, e))?;
                dir.own.advance(n);
            }
            dir.own = Bytes::new();
            if let Poll::Ready(Err(e)) = Pin::new(&mut *dst).poll_flush(cx) {
                return Poll::Ready(Err(Failure(to, e)));
            }
        }
        if dir.close == Close::Open
            && dir.ping_wanted.is_some()
            && dir.frames.as_ref().is_some_and(|f| f.at_boundary())
        {
            dir.own = ping_frame(dir.ping_wanted.take().expect("checked"));
            continue;
        }
        if let Close::Want(code) = dir.close
            && dir.frames.as_ref().is_some_and(|f| f.at_boundary())
        {
            dir.own = close_frame(code, reason_text(code), to == Side::Upstream);
            dir.close = Close::Sent;
            continue;
        }

        // What followed a pong taken out of an earlier read comes first.
        let carried = std::mem::take(&mut dir.carry);
        let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        let read: &[u8] = if !carried.is_empty() {
            &carried
        } else {
            if dir.src_done {
                // The last end of a plain TCP tunnel: closing `dst`, which comes next,
                // sends the same FIN as a shutdown would. It cannot turn into a reset:
                // `dst`'s bytes were all read, up to its own end. (TLS and HTTP/2 streams
                // still need their shutdown: it writes close_notify or END_STREAM.)
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
            match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {}
                // A TLS peer that closes its socket without close_notify (most browsers
                // and many libraries do): the end of its bytes, as on plain TCP.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failure(from, e))),
                Poll::Pending => {
                    // Nothing more to read for now: push out what an encrypting or
                    // framing destination still buffers (a no-op on plain TCP).
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
            read
        };
        let read = match (&mut dir.frames, dir.close) {
            (None, _) => {
                *moved = true;
                read
            }
            (Some(frames), Close::Open) if frames.aware().is_some() => {
                // On a frame-aware route only data messages count as activity.
                let check = frames.check(read);
                *moved |= check.data;
                if let Some((start, len)) = check.pong {
                    // The answer to airlock's ping goes no further. (Rare: the bytes
                    // around it are copied.)
                    dir.pong_seen = true;
                    dir.pending = Bytes::copy_from_slice(&read[..start]);
                    dir.carry = Bytes::copy_from_slice(&read[start + len..]);
                    continue;
                }
                match check.violation {
                    None => read,
                    Some((at, code, began_before)) => {
                        // Nothing from the offending frame on is relayed; the other side
                        // gets 1001 in its place (unless it already has the frame's
                        // first bytes, which no close frame can follow).
                        dir.violation = Some(code);
                        dir.close = Close::Sent;
                        if !began_before {
                            dir.own = close_frame(
                                code::GOING_AWAY,
                                reason_text(code::GOING_AWAY),
                                to == Side::Upstream,
                            );
                        }
                        &read[..at]
                    }
                }
            }
            (Some(frames), Close::Open) => {
                *moved = true;
                frames.track(read);
                read
            }
            // Relay up to the next frame boundary; the close frame goes there.
            (Some(frames), Close::Want(code)) => match frames.track_to_boundary(read) {
                Some(at) => {
                    frames.track(&read[at..]);
                    dir.own = close_frame(code, reason_text(code), to == Side::Upstream);
                    dir.close = Close::Sent;
                    &read[..at]
                }
                None => read,
            },
            // The destination has its close frame: the source's bytes go no further (they
            // are followed for the source's own close frame).
            (Some(frames), Close::Sent) => {
                let _ = frames.check(read);
                &read[..0]
            }
        };
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
