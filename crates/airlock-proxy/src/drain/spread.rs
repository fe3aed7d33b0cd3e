//! Closing open tunnels gradually. A drain (SIGTERM, or a server drained through the admin
//! API) that closed every tunnel at once would have every client reconnect in the same
//! second; a [`Spread`] instead hands out turns at a steady rate, so that `n` tunnels
//! close one every `spread / n`, the first after half a step and the last half a step
//! before the end of the spread. Tunnels still waiting when the spread is over (ones that opened during it) go
//! together.
//!
//! A tunnel waits for its turn in [`Spread::turn`]; turns are permits of a fair
//! semaphore, so tunnels close in the order they started waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

/// Woken whenever any drain begins: an idle tunnel waits on this alone (a few dozen
/// bytes), and builds its wait for a turn only when a drain has begun.
static DRAIN_BEGAN: Notify = Notify::const_new();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No drain: tunnels run.
    Idle,
    /// Turns are being handed out.
    Spreading,
    /// The spread is over: every tunnel closes.
    AllGo,
}

/// One drain's schedule of tunnel closes; see the module docs.
#[derive(Debug)]
pub struct Spread {
    phase: watch::Sender<Phase>,
    turns: Semaphore,
    /// The close code WebSocket tunnels get.
    code: AtomicU16,
    /// Counts drains begun or stopped: a hand-out task of an earlier one gives up.
    round: AtomicU64,
}

impl Default for Spread {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Idle),
            turns: Semaphore::new(0),
            code: AtomicU16::new(airlock_config::DEFAULT_DRAIN_CLOSE_CODE),
            round: AtomicU64::new(0),
        }
    }
}

impl Spread {
    /// Close `n` tunnels over `over`, at a steady rate; WebSocket tunnels get close frames
    /// with `code`. A drain already under way starts again with these figures.
    pub fn begin(self: &Arc<Self>, n: usize, over: Duration, code: u16) {
        self.code.store(code, Ordering::Relaxed);
        let round = self.round.fetch_add(1, Ordering::Relaxed) + 1;
        // Turns left from an earlier drain would let tunnels go at once.
        let left = self.turns.available_permits();
        if let Ok(permits) = self.turns.try_acquire_many(left as u32) {
            permits.forget();
        }
        if n == 0 || over.is_zero() {
            self.phase.send_replace(Phase::AllGo);
            DRAIN_BEGAN.notify_waiters();
            return;
        }
        self.phase.send_replace(Phase::Spreading);
        DRAIN_BEGAN.notify_waiters();
        let spread = self.clone();
        tokio::spawn(async move { spread.hand_out(round, n, over).await });
    }

    /// Stop closing tunnels (a server returned to rotation); those that have not had their
    /// turn run on.
    pub fn stop(&self) {
        self.round.fetch_add(1, Ordering::Relaxed);
        self.phase.send_replace(Phase::Idle);
    }

    /// Whether a drain is under way.
    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() != Phase::Idle
    }

    /// Resolves when one of `spreads` has begun a drain (perhaps one already under way).
    pub async fn began(spreads: &[&Spread]) {
        loop {
            let began = DRAIN_BEGAN.notified();
            let mut began = std::pin::pin!(began);
            // Registered before looking, so that a drain that begins meanwhile wakes it.
            began.as_mut().enable();
            if spreads.iter().any(|s| s.is_draining()) {
                return;
            }
            began.await;
        }
    }

    /// Resolves when it is this tunnel's turn to close, with the close code to send.
    pub async fn turn(self: Arc<Self>) -> u16 {
        let mut phase = self.phase.subscribe();
        loop {
            // The sender lives in `self`: waiting cannot fail.
            let now = phase
                .wait_for(|p| *p != Phase::Idle)
                .await
                .map_or(Phase::AllGo, |p| *p);
            if now == Phase::Spreading {
                tokio::select! {
                    permit = self.turns.acquire() => {
                        if let Ok(permit) = permit {
                            permit.forget();
                        }
                    }
                    _ = phase.wait_for(|p| *p != Phase::Spreading) => {}
                }
            }
            // A drain stopped meanwhile: wait for the next.
            if self.is_draining() {
                return self.code.load(Ordering::Relaxed);
            }
        }
    }

    /// Hand out turn `i` of `n` at `(i + 1/2) * over / n`, then let every tunnel go.
    async fn hand_out(&self, round: u64, n: usize, over: Duration) {
        let current = || self.round.load(Ordering::Relaxed) == round;
        let started = Instant::now();
        let mut given = 0;
        while given < n {
            if !current() {
                return;
            }
            let elapsed = started.elapsed().as_secs_f64() / over.as_secs_f64();
            let due = ((elapsed * n as f64 + 0.5) as usize).min(n);
            if due > given {
                self.turns.add_permits(due - given);
                given = due;
            }
            // Many turns a millisecond are handed out together.
            let next = started + over.mul_f64((given as f64 + 0.5) / n as f64);
            let soonest = Instant::now() + Duration::from_millis(1);
            tokio::time::sleep_until(next.max(soonest)).await;
        }
        tokio::time::sleep_until(started + over).await;
        if current() {
            self.phase.send_replace(Phase::AllGo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When each of `n` tunnels gets its turn, after the start, earliest first.
    async fn turns(spread: &Arc<Spread>, n: usize) -> Vec<Duration> {
        let started = Instant::now();
        let waiting: Vec<_> = (0..n)
            .map(|_| {
                let turn = spread.clone().turn();
                tokio::spawn(async move { (turn.await, started.elapsed()) })
            })
            .collect();
        let mut at = Vec::new();
        for w in waiting {
            let (code, when) = w.await.unwrap();
            assert_eq!(code, spread.code.load(Ordering::Relaxed));
            at.push(when);
        }
        at.sort();
        at
    }

    #[tokio::test(start_paused = true)]
    async fn turns_come_at_a_steady_rate_over_the_spread() {
        let spread = Arc::new(Spread::default());
        let waiting = {
            let spread = spread.clone();
            tokio::spawn(async move { turns(&spread, 100).await })
        };
        tokio::task::yield_now().await;
        spread.begin(100, Duration::from_secs(2), 1012);
        let at = waiting.await.unwrap();
        assert!(at[0] < Duration::from_millis(25), "first at {:?}", at[0]);
        assert!(
            at[99] >= Duration::from_millis(1900),
            "last at {:?}",
            at[99]
        );
        assert!(
            at[99] <= Duration::from_millis(2050),
            "last at {:?}",
            at[99]
        );
        // No burst: never more than a few in any 100 ms.
        for w in at.windows(11) {
            assert!(w[10] - w[0] >= Duration::from_millis(150), "{w:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_drain_closes_nothing_more() {
        let spread = Arc::new(Spread::default());
        let waiting = tokio::spawn(spread.clone().turn());
        tokio::task::yield_now().await;
        spread.begin(100, Duration::from_secs(100), 1001);
        spread.stop();
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(!waiting.is_finished());
        // The next drain does close it.
        spread.begin(1, Duration::from_secs(1), 1001);
        assert_eq!(waiting.await.unwrap(), 1001);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_tunnel_learns_that_its_drain_began() {
        let [process, server, other] = [(); 3].map(|()| Arc::new(Spread::default()));
        let waiting = async { Spread::began(&[&process, &server]).await };
        let mut waiting = std::pin::pin!(waiting);
        let step = |w: std::pin::Pin<&mut _>| {
            let waker = futures_util::task::noop_waker();
            std::future::Future::poll(w, &mut std::task::Context::from_waker(&waker))
        };
        assert!(step(waiting.as_mut()).is_pending());
        other.begin(3, Duration::from_secs(1), 1001);
        assert!(
            step(waiting.as_mut()).is_pending(),
            "another server's drain"
        );
        server.begin(3, Duration::from_secs(1), 1001);
        assert!(step(waiting.as_mut()).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_to_spread_lets_every_tunnel_go() {
        let spread = Arc::new(Spread::default());
        spread.begin(0, Duration::from_secs(10), 1001);
        let at = turns(&spread, 3).await;
        assert!(at.iter().all(|t| t.is_zero()), "{at:?}");
    }
}
