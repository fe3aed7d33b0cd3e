//! `store = "redis://..."`: a limit's rate kept in Redis, so that every airlock instance
//! naming the same server and limit shares it.
//!
//! One round trip per check: a Lua script (sent once, then run by its SHA with
//! `EVALSHA`) runs the same GCRA as `rate`, on Redis's clock (`TIME`), so instances whose
//! clocks differ still agree. The key, `airlock:limit:NAME:KEY`, holds the TAT in
//! microseconds and expires when it passes (an idle key is the same as none), so Redis
//! holds at most the keys that are in debt. Scripts that call `TIME` before writing need
//! Redis 5 or newer.
//!
//! The client is `redis` with its `ConnectionManager`: one multiplexed connection per
//! store, shared by every request (commands are pipelined on it, so it does what a pool
//! would without the pool's handshakes), reconnected in the background when it breaks.
//!
//! A check that fails or takes longer than `store_timeout` applies `on_store_error`:
//! `allow` checks the same rate against this instance's own table (so an outage leaves
//! a per-instance limit, never no limit), `deny` refuses with 503. After a failure the
//! store is not asked again for [`RETRY_AFTER_FAILURE`]: during an outage handshakes do not
//! each wait for the timeout. The outage is logged once, and its end.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::rate::{self, Gcra};
use super::table::Key;

/// How long the store is left alone after it failed.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// How long start-up waits for a store to connect and load the script.
const WARM_UP: Duration = Duration::from_secs(2);

/// GCRA on Redis's clock. KEYS[1]: the key; ARGV: interval and tolerance in µs. Returns
/// 0 when admitted, else the wait in µs.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local ahead = tat - now
if ahead > tolerance then return ahead - tolerance end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.ceil((new - now) / 1000))
return 0
";

/// What the store said.
pub enum Answer {
    Admitted,
    /// Over the rate; a request would pass after this long.
    Wait(Duration),
    /// No answer in time, or an error.
    Failed,
}

pub struct SharedRate {
    limit: String,
    client: redis::Client,
    connection: OnceLock<ConnectionManager>,
    script: redis::Script,
    timeout: Duration,
    /// `rate::now()` before which the store is not asked (after a failure).
    resting_until: AtomicU64,
    /// In an outage (logged once).
    down: AtomicBool,
}

impl std::fmt::Debug for SharedRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRate")
            .field("limit", &self.limit)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SharedRate {
    /// Checks the URL; connects on first use.
    pub fn new(limit: &str, url: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        Ok(Self {
            limit: limit.to_string(),
            client: redis::Client::open(url)?,
            connection: OnceLock::new(),
            script: redis::Script::new(SCRIPT),
            timeout,
            resting_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
        })
    }

    /// The connection's settings. Each check has its own `store_timeout` around it; the
    /// connection's own response timeout is only there to notice a store that went silent,
    /// and must let the connection's set-up commands and `SCRIPT LOAD` finish.
    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(self.timeout.max(Duration::from_secs(1))))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1))
    }

    /// Connect and load the script before the first request: within a first check's
    /// `store_timeout` (5ms by default) a new connection, its set-up and `SCRIPT LOAD`
    /// may not fit, and the first handshakes after a start would get `on_store_error`.
    /// A store that does not answer within [`WARM_UP`] is logged as failed, and the
    /// first check connects again.
    pub async fn warm_up(&self) {
        let connect = async {
            let mut c =
                ConnectionManager::new_with_config(self.client.clone(), self.manager_config())
                    .await?;
            self.script.load_async(&mut c).await?;
            Ok::<_, redis::RedisError>(c)
        };
        match tokio::time::timeout(WARM_UP, connect).await {
            Ok(Ok(c)) => {
                let _ = self.connection.set(c);
            }
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed(&format!("no answer within {WARM_UP:?} at start")),
        }
    }

    fn connection(&self) -> Option<ConnectionManager> {
        if let Some(c) = self.connection.get() {
            return Some(c.clone());
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager_config()) {
            Ok(c) => Some(self.connection.get_or_init(|| c).clone()),
            Err(e) => {
                self.failed(&e.to_string());
                None
            }
        }
    }

    /// Check one request under `key` against `rate`.
    pub async fn check(&self, key: &Key, rate: &Gcra) -> Answer {
        let now = rate::now();
        if now < self.resting_until.load(Ordering::Relaxed) {
            return Answer::Failed;
        }
        let Some(mut connection) = self.connection() else {
            return Answer::Failed;
        };
        let (interval, tolerance) = rate.micros();
        let mut name = format!("airlock:limit:{}:", self.limit).into_bytes();
        match key {
            Key::Ip(ip) => name.extend_from_slice(ip.to_string().as_bytes()),
            Key::Bytes(b) => name.extend_from_slice(b),
        }
        let mut invocation = self.script.key(name);
        invocation.arg(interval).arg(tolerance);
        let call = invocation.invoke_async::<u64>(&mut connection);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(wait)) => {
                self.recovered();
                if wait == 0 {
                    Answer::Admitted
                } else {
                    Answer::Wait(Duration::from_micros(wait))
                }
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                Answer::Failed
            }
            Err(_) => {
                self.failed(&format!(
                    "no answer within store_timeout ({:?})",
                    self.timeout
                ));
                Answer::Failed
            }
        }
    }

    fn failed(&self, error: &str) {
        let until = rate::now() + RETRY_AFTER_FAILURE.as_nanos() as u64;
        self.resting_until.store(until, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limit = self.limit,
                error,
                "the limit's shared store failed; on_store_error applies until it answers again"
            );
        }
    }

    fn recovered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(limit = self.limit, "the limit's shared store answers again");
        }
    }
}
