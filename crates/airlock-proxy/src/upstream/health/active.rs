//! Active health state of one server: up or down by the last probes (`fall` failures in a
//! row take it out, `rise` passes in a row bring it back), and the last probe's result for
//! the admin API. A server starts up: a proxy that refused traffic until the first probe
//! (at a random point of the first interval) would turn every start into an outage.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

#[derive(Debug)]
pub struct ActiveHealth {
    /// False when the pool has no `health_check`: always up.
    checked: bool,
    up: AtomicBool,
    rise: u32,
    fall: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    passes: u32,
    fails: u32,
    last: Option<(SystemTime, Result<u16, String>)>,
}

/// What a probe result changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    WentDown,
    CameUp,
}

impl ActiveHealth {
    pub fn new(check: Option<&airlock_config::HealthCheck>) -> Self {
        Self {
            checked: check.is_some(),
            up: AtomicBool::new(true),
            rise: check.map_or(1, |c| c.rise.max(1)),
            fall: check.map_or(1, |c| c.fall.max(1)),
            state: Mutex::new(State::default()),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Record a probe: `Ok(status)` passed, `Err(why)` failed.
    pub fn record(&self, result: Result<u16, String>) -> Option<Change> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let passed = result.is_ok();
        s.last = Some((SystemTime::now(), result));
        let up = self.is_up();
        if passed {
            s.fails = 0;
            s.passes = s.passes.saturating_add(1);
            if !up && s.passes >= self.rise {
                self.up.store(true, Ordering::Relaxed);
                return Some(Change::CameUp);
            }
        } else {
            s.passes = 0;
            s.fails = s.fails.saturating_add(1);
            if up && s.fails >= self.fall {
                self.up.store(false, Ordering::Relaxed);
                return Some(Change::WentDown);
            }
        }
        None
    }

    /// `"up"`, `"down"`, or `"off"` without a health check, and the last probe.
    pub fn status(&self) -> serde_json::Value {
        if !self.checked {
            return serde_json::json!({ "state": "off" });
        }
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let last = s.last.as_ref().map(|(at, result)| {
            let at = humantime::format_rfc3339_millis(*at).to_string();
            match result {
                Ok(status) => serde_json::json!({ "at": at, "ok": true, "status": status }),
                Err(error) => serde_json::json!({ "at": at, "ok": false, "error": error }),
            }
        });
        serde_json::json!({
            "state": if self.is_up() { "up" } else { "down" },
            "last_probe": last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rise: u32, fall: u32) -> airlock_config::HealthCheck {
        toml::from_str(&format!("rise = {rise}\nfall = {fall}")).unwrap()
    }

    #[test]
    fn fall_failures_in_a_row_take_it_out_and_rise_passes_bring_it_back() {
        let h = ActiveHealth::new(Some(&check(2, 3)));
        assert!(h.is_up());
        assert_eq!(h.record(Err("refused".into())), None);
        assert_eq!(h.record(Err("refused".into())), None);
        assert_eq!(h.record(Ok(200)), None, "a pass resets the failure streak");
        for _ in 0..2 {
            assert_eq!(h.record(Err("refused".into())), None);
        }
        assert_eq!(h.record(Err("refused".into())), Some(Change::WentDown));
        assert!(!h.is_up());
        assert_eq!(h.record(Err("refused".into())), None);
        assert_eq!(h.record(Ok(200)), None);
        assert_eq!(h.record(Ok(200)), Some(Change::CameUp));
        assert!(h.is_up());
        let status = h.status();
        assert_eq!(status["state"], "up");
        assert_eq!(status["last_probe"]["status"], 200);
    }

    #[test]
    fn unchecked_servers_are_up_and_say_off() {
        let h = ActiveHealth::new(None);
        assert!(h.is_up());
        assert_eq!(h.status()["state"], "off");
    }
}
