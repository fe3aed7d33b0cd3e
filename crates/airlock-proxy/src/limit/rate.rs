//! The rate rule: GCRA (the generic cell rate algorithm, ITU-T I.371), kept as one
//! number per key, the theoretical arrival time (TAT).
//!
//! With `rate = "N/P"` and `burst = B`, the emission interval is `T = P / N` and the
//! tolerance `τ = (B − 1) · T`. A request at time `t` is admitted when
//! `max(TAT, t) − t ≤ τ`, and then `TAT = max(TAT, t) + T`. So a key that has been quiet
//! for at least `B · T` may send `B` requests at once, and after that one every `T`; at no
//! point have more than `B + ⌊d / T⌋` been admitted in any span of length `d`. A refused
//! request changes nothing, and would be admitted after `max(TAT, t) − t − τ`: that is
//! the `Retry-After`. A key whose TAT has passed is in the same state as a key never
//! seen, which is what lets the table forget it without changing any answer.
//!
//! Times are nanoseconds on [`now`]'s monotonic clock; a `u64` of them lasts 584 years.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A rate rule: the emission interval and the tolerance, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    interval: u64,
    tolerance: u64,
}

impl Gcra {
    /// `count` per `per`, `burst` at once. `count` and `burst` are at least 1 (validated).
    pub fn new(count: u32, per: Duration, burst: u32) -> Self {
        let interval = (per.as_nanos() / u128::from(count.max(1))).max(1);
        let interval = u64::try_from(interval).unwrap_or(u64::MAX);
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1) - 1)),
        }
    }

    /// Admit a request at `now` against `tat`: the new TAT, or how long until a request
    /// would be admitted.
    pub fn check(&self, tat: u64, now: u64) -> Result<u64, Duration> {
        let tat = tat.max(now);
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Err(Duration::from_nanos(ahead - self.tolerance));
        }
        Ok(tat.saturating_add(self.interval))
    }

    /// `(interval, tolerance)` in whole microseconds, for a shared store (the interval
    /// rounded up, so a shared rate is never looser than the local one).
    pub fn micros(&self) -> (u64, u64) {
        (self.interval.div_ceil(1000), self.tolerance / 1000)
    }

    /// Requests per second, on average.
    pub fn per_second(&self) -> f64 {
        1e9 / self.interval as f64
    }

    /// Requests admitted at once from a quiet key.
    pub fn burst(&self) -> u64 {
        self.tolerance / self.interval + 1
    }
}

/// Nanoseconds since this process first asked.
pub fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_quiet_key_gets_its_burst_then_the_rate() {
        // 10/s, burst 3: three at once, then one per 100 ms.
        let g = Gcra::new(10, Duration::from_secs(1), 3);
        let t0 = 5 * SEC;
        let mut tat = 0;
        for _ in 0..3 {
            tat = g.check(tat, t0).expect("within the burst");
        }
        let wait = g.check(tat, t0).expect_err("burst spent");
        assert_eq!(wait, Duration::from_millis(100));
        // Refusals do not move the TAT; after the wait exactly one more is admitted.
        assert_eq!(g.check(tat, t0 + SEC / 20), Err(Duration::from_millis(50)));
        tat = g.check(tat, t0 + SEC / 10).expect("one interval later");
        assert!(g.check(tat, t0 + SEC / 10).is_err());
    }

    #[test]
    fn burst_one_is_the_plain_rate() {
        let g = Gcra::new(2, Duration::from_secs(1), 1);
        let tat = g.check(0, SEC).unwrap();
        assert_eq!(g.check(tat, SEC), Err(Duration::from_millis(500)));
        assert!(g.check(tat, SEC + SEC / 2).is_ok());
    }

    #[test]
    fn per_minute_rates() {
        let g = Gcra::new(600, Duration::from_secs(60), 5);
        assert_eq!(g.interval, SEC / 10);
        assert_eq!((g.per_second(), g.burst()), (10.0, 5));
    }
}
