//! The process's one Wasm engine, its linker, and the epoch ticker behind call deadlines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{v0_1, v0_2};
use crate::cache::DiskCache;
use crate::error::PluginError;
use crate::instance::StoreData;

/// How often the epoch advances; deadlines are counted in these ticks.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// After this many ticks with no plugin call running or started, the ticker sleeps until
/// the next call.
const IDLE_TICKS: u32 = 100;

/// One engine for the process, shared by every plugin.
#[derive(Clone)]
pub struct PluginHost {
    pub(crate) engine: Engine,
    pub(crate) linker: Arc<Linker<StoreData>>,
    /// Components compiled so far, by their bytes: several `[plugin.*]` tables often
    /// load one file with different configs, and compiling is the slow part of a load.
    compiled: Arc<Mutex<HashMap<Vec<u8>, Component>>>,
    /// Compiled components kept on disk between runs.
    disk: Option<DiskCache>,
    /// Advances the engine's epoch while plugin code runs.
    pub(crate) ticker: Arc<Ticker>,
}

impl PluginHost {
    /// An engine sized for `total_instances` live instances of at most `max_memory` bytes
    /// of linear memory each, keeping compiled plugins in `disk` when given.
    pub fn new(
        total_instances: usize,
        max_memory: usize,
        disk: Option<DiskCache>,
    ) -> Result<Self, PluginError> {
        let engine_error = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));
        let slots = u32::try_from(total_instances.max(1) + 4).unwrap_or(u32::MAX);
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(slots)
            // A Rust wasm32-wasip2 component holds a few core instances, memories and
            // tables (the program plus the adapter's shims).
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(8))
            .max_memory_size(max_memory.max(1 << 16))
            // Reset memory with PAGEMAP_SCAN where the kernel has it, and keep the first
            // pages resident so reuse does not fault them in again.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(1 << 20)
            .table_keep_resident(1 << 16);

        let mut config = Config::new();
        config
            .epoch_interruption(true)
            // Plugins are synchronous; concurrency support makes every call several
            // times slower (measured: 3.4x per call).
            .concurrency_support(false)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&config).map_err(engine_error)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_error)?;
        // Both interface versions: their imports have different names, so a plugin built
        // for either links.
        v0_1::HandshakePlugin::add_to_linker::<_, HasSelf<StoreData>>(&mut linker, |data| data)
            .map_err(engine_error)?;
        v0_2::HandshakePlugin::add_to_linker::<_, HasSelf<StoreData>>(&mut linker, |data| data)
            .map_err(engine_error)?;

        let weak = engine.weak();
        let ticker = Ticker::spawn(move || {
            if let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
            }
        });
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            compiled: Arc::default(),
            disk,
            ticker,
        })
    }

    /// Compile `wasm`, or reuse the component compiled from the same bytes (in this
    /// process, or in the disk cache).
    pub(crate) fn compile(&self, plugin: &str, wasm: &[u8]) -> wasmtime::Result<Component> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(component) = compiled.get(wasm) {
            return Ok(component.clone());
        }
        let component = match &self.disk {
            Some(disk) => disk.load_or_compile(&self.engine, plugin, wasm)?,
            None => Component::new(&self.engine, wasm)?,
        };
        compiled.insert(wasm.to_vec(), component.clone());
        Ok(component)
    }
}

/// The thread behind call deadlines: it advances the epoch every tick while plugin code
/// may be running, and sleeps once none has run for `IDLE_TICKS`, so an idle proxy is
/// not woken a thousand times a second. Every entry into guest code holds a [`Running`]
/// guard, which wakes the thread if it sleeps; a call that runs past its deadline is
/// therefore always interrupted, however long the proxy was idle before it.
pub(crate) struct Ticker {
    /// Guest calls running now.
    running: AtomicUsize,
    /// Guest calls started so far: calls shorter than a tick are seen by this.
    started: AtomicU64,
    /// Whether the thread sleeps; set and cleared under `lock`.
    asleep: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Held while guest code runs; see [`Ticker`].
pub(crate) struct Running<'a>(&'a Ticker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

impl Ticker {
    /// Start the thread; it calls `tick` every tick, and ends once nobody else holds the
    /// ticker (no call can come then).
    fn spawn(tick: impl Fn() + Send + 'static) -> Arc<Self> {
        let ticker = Arc::new(Self {
            running: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let weak = Arc::downgrade(&ticker);
        std::thread::Builder::new()
            .name("airlock-wasm-epoch".into())
            .spawn(move || {
                let mut idle_ticks = 0;
                let mut last_started = 0;
                loop {
                    tick();
                    std::thread::sleep(TICK);
                    let Some(ticker) = weak.upgrade() else { return };
                    let started = ticker.started.load(SeqCst);
                    if started != last_started || ticker.running.load(SeqCst) > 0 {
                        (idle_ticks, last_started) = (0, started);
                    } else {
                        idle_ticks += 1;
                    }
                    if idle_ticks >= IDLE_TICKS {
                        if !ticker.sleep_until_called(last_started) {
                            return;
                        }
                        idle_ticks = 0;
                    }
                }
            })
            .expect("spawn the epoch thread");
        ticker
    }

    /// Mark guest code as running (and wake the thread) until the guard is dropped.
    pub(crate) fn running(&self) -> Running<'_> {
        self.running.fetch_add(1, SeqCst);
        self.started.fetch_add(1, SeqCst);
        // Both sides write, then read the other's flag, all sequentially consistent: if the
        // thread went to sleep without seeing this call, this call sees it asleep.
        if self.asleep.load(SeqCst) {
            let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.asleep.store(false, SeqCst);
            self.wake.notify_one();
        }
        Running(self)
    }

    /// Sleep until a call starts (at once if one started after `last_started`). Wakes
    /// every second to check whether anyone else still holds the ticker: false when
    /// nobody does, and no call can come.
    fn sleep_until_called(self: &Arc<Self>, last_started: u64) -> bool {
        let mut lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.asleep.store(true, SeqCst);
        if self.started.load(SeqCst) != last_started {
            self.asleep.store(false, SeqCst);
            return true;
        }
        while self.asleep.load(SeqCst) {
            lock = self
                .wake
                .wait_timeout(lock, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if Arc::strong_count(self) == 1 {
                return false;
            }
        }
        true
    }

    #[cfg(test)]
    fn is_asleep(&self) -> bool {
        self.asleep.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Wait (at most 5 s) until `done`.
    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A ticker that counts its ticks, once it has gone to sleep for want of calls.
    fn asleep_counting_ticker() -> (Arc<AtomicU64>, Arc<Ticker>) {
        let ticks = Arc::new(AtomicU64::new(0));
        let counter = ticks.clone();
        let ticker = Ticker::spawn(move || {
            counter.fetch_add(1, SeqCst);
        });
        wait_for("the idle ticker sleeps", || ticker.is_asleep());
        (ticks, ticker)
    }

    #[test]
    fn the_ticker_sleeps_while_idle_and_ticks_while_guest_code_runs() {
        let (ticks, ticker) = asleep_counting_ticker();
        let asleep_at = ticks.load(SeqCst);
        std::thread::sleep(TICK * 20);
        assert_eq!(ticks.load(SeqCst), asleep_at, "an asleep ticker ticked");

        // A long call: the ticker wakes and keeps ticking however long the call runs,
        // past the idle limit, so its deadline can be enforced.
        let call = ticker.running();
        assert!(!ticker.is_asleep());
        let running_since = ticks.load(SeqCst);
        std::thread::sleep(TICK * (IDLE_TICKS + 50));
        assert!(!ticker.is_asleep(), "slept during a call");
        let during = ticks.load(SeqCst) - running_since;
        assert!(during >= 10, "only {during} ticks during a long call");
        drop(call);
        wait_for("the ticker sleeps again", || ticker.is_asleep());
    }

    #[test]
    fn the_ticker_thread_ends_with_its_last_holder() {
        let (ticks, ticker) = asleep_counting_ticker();
        drop(ticker);
        // The closure (and its clone of `ticks`) goes with the thread.
        wait_for("the thread ends", || Arc::strong_count(&ticks) == 1);
    }
}
