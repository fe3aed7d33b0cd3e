//! The process's one Wasm engine, its linker, and the epoch ticker behind call deadlines.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{v0_1, v0_2, v0_3};
use crate::cache::DiskCache;
use crate::error::PluginError;
use crate::instance::StoreData;
use crate::language::Footprint;

/// How often the epoch advances while a call has run past its `timeout` in wall-clock
/// time: how soon after using its `timeout` of CPU time a call is stopped.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// After this long with no plugin call running or started, the ticker sleeps until the
/// next call; it never naps longer than this either, so that it notices.
const IDLE: Duration = Duration::from_millis(100);

/// Threads whose calls the ticker watches one by one (see [`Ticker`]). A call on a
/// thread beyond these is ticked every `TICK` while it runs, as if already late.
const SLOTS: usize = 64;

/// How many instances of each kind the engine's pools hold: the live instances of every
/// component loaded, plus [`SPARES`] of the largest, for the instances being replaced
/// beside the live ones (a failed instance is discarded while its replacement starts).
///
/// Every memory slot reserves several GiB of address space (never memory), so spares
/// sized for a componentize-py plugin when only Rust plugins are loaded would reserve
/// four times more than needed: more than valgrind, or a tight `ulimit -v`, allows.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Capacity {
    live: Totals,
    largest: Footprint,
}

/// Instances replaced at once, at most, beyond the live ones.
const SPARES: u32 = 4;

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    component_instances: u32,
    core_instances: u32,
    memories: u32,
    tables: u32,
}

impl Capacity {
    /// Room for `instances` more instances of a component with `footprint`.
    pub(crate) fn add(&mut self, instances: usize, footprint: Footprint) {
        let n = u32::try_from(instances.max(1)).unwrap_or(u32::MAX);
        let room = |per: u32| n.saturating_mul(per.max(1));
        let live = &mut self.live;
        live.component_instances = live.component_instances.saturating_add(n);
        live.core_instances = live
            .core_instances
            .saturating_add(room(footprint.core_instances));
        live.memories = live.memories.saturating_add(room(footprint.memories));
        live.tables = live.tables.saturating_add(room(footprint.tables));
        let largest = &mut self.largest;
        largest.core_instances = largest.core_instances.max(footprint.core_instances);
        largest.memories = largest.memories.max(footprint.memories);
        largest.tables = largest.tables.max(footprint.tables);
    }

    /// The pools' sizes: the live instances and the spares.
    fn totals(&self) -> Totals {
        let spare = |live: u32, per: u32| live.saturating_add(SPARES * per.max(1));
        Totals {
            component_instances: spare(self.live.component_instances, 1),
            core_instances: spare(self.live.core_instances, self.largest.core_instances),
            memories: spare(self.live.memories, self.largest.memories),
            tables: spare(self.live.tables, self.largest.tables),
        }
    }
}

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
    /// An engine sized for `total_instances` live instances of components no bigger than
    /// [`Footprint::LARGEST_EXPECTED`], of at most `max_memory` bytes of linear memory
    /// each, keeping compiled plugins in `disk` when given.
    pub fn new(
        total_instances: usize,
        max_memory: usize,
        disk: Option<DiskCache>,
    ) -> Result<Self, PluginError> {
        let mut capacity = Capacity::default();
        capacity.add(total_instances, Footprint::LARGEST_EXPECTED);
        Self::with_capacity(capacity, max_memory, disk)
    }

    /// An engine whose pools hold `capacity`, with linear memories of at most
    /// `max_memory` bytes.
    pub(crate) fn with_capacity(
        capacity: Capacity,
        max_memory: usize,
        disk: Option<DiskCache>,
    ) -> Result<Self, PluginError> {
        let engine_error = |e: wasmtime::Error| PluginError::Engine(format!("{e:#}"));
        let totals = capacity.totals();
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(totals.component_instances)
            .total_core_instances(totals.core_instances)
            .total_memories(totals.memories)
            .total_tables(totals.tables)
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
        v0_3::HandshakePlugin::add_to_linker::<_, HasSelf<StoreData>>(&mut linker, |data| data)
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

/// The thread behind call deadlines. It advances the engine's epoch, which makes each
/// running call check how much CPU time it has used ([`crate::instance`]'s `on_tick`),
/// only once a call has run for its `timeout` in wall-clock time, and then every `TICK`
/// until that call ends: a call cannot have used its `timeout` of CPU time any sooner.
///
/// So the thread does not wake a thousand times a second under load, which on a busy
/// machine preempts a thread doing useful work each time. Between calls it naps until
/// the earliest deadline of the calls running, or for the shortest `timeout` of any
/// plugin when none runs (a call starting during the nap cannot be due before it ends),
/// and after `IDLE` without calls it sleeps until the next one. Every entry into guest
/// code holds a [`Running`] guard, which publishes the call's deadline in its thread's
/// slot and wakes the thread if it sleeps.
pub(crate) struct Ticker {
    /// What deadlines are counted from.
    origin: Instant,
    /// Per calling thread (see [`thread_slot`]): the wall-clock deadline of the call it
    /// runs, in nanoseconds since `origin`; 0 when it runs none.
    deadlines: [Deadline; SLOTS],
    /// Calls running on threads without a slot.
    unslotted: AtomicUsize,
    /// Guest calls started so far: calls shorter than a nap are seen by this.
    started: AtomicU64,
    /// The shortest `timeout` of any plugin, in nanoseconds: the longest nap.
    shortest_timeout: AtomicU64,
    /// Whether the thread sleeps until a call; set and cleared under `lock`.
    asleep: AtomicBool,
    /// Set (under `lock`) when a nap must end early: a shorter `timeout` arrived.
    rescan: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// One thread's slot in [`Ticker::deadlines`], alone on its cache line: every call
/// writes its thread's slot twice, and the workers' slots must not share a line.
#[repr(align(64))]
#[derive(Default)]
struct Deadline(AtomicU64);

/// Held while guest code runs; see [`Ticker`].
pub(crate) struct Running<'a> {
    ticker: &'a Ticker,
    slot: Option<usize>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        match self.slot {
            Some(slot) => self.ticker.deadlines[slot].0.store(0, SeqCst),
            None => {
                self.ticker.unslotted.fetch_sub(1, SeqCst);
            }
        }
    }
}

/// What the ticker found in one look at the running calls.
struct Scan {
    /// A call has run past its deadline (or runs on a thread without a slot).
    late: bool,
    /// The earliest deadline of the calls not yet late.
    next: Option<u64>,
}

impl Ticker {
    /// Start the thread; it calls `tick` to advance the epoch, and ends once nobody else
    /// holds the ticker (no call can come then).
    fn spawn(tick: impl Fn() + Send + 'static) -> Arc<Self> {
        Self::spawn_napping(IDLE, tick)
    }

    /// [`Self::spawn`], napping at most `longest_nap` at a time.
    fn spawn_napping(longest_nap: Duration, tick: impl Fn() + Send + 'static) -> Arc<Self> {
        let ticker = Arc::new(Self {
            origin: Instant::now(),
            deadlines: std::array::from_fn(|_| Deadline::default()),
            unslotted: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            shortest_timeout: AtomicU64::new(u64::MAX),
            asleep: AtomicBool::new(false),
            rescan: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let weak = Arc::downgrade(&ticker);
        std::thread::Builder::new()
            .name("airlock-wasm-epoch".into())
            .spawn(move || {
                let mut last_started = 0;
                let mut idle_since = 0;
                loop {
                    let Some(ticker) = weak.upgrade() else { return };
                    let now = ticker.now();
                    let scan = ticker.scan(now);
                    if scan.late {
                        tick();
                    }
                    let started = ticker.started.load(SeqCst);
                    if scan.late || scan.next.is_some() || started != last_started {
                        (idle_since, last_started) = (now, started);
                    } else if now - idle_since >= nanos(IDLE) {
                        if !ticker.sleep_until_called(last_started) {
                            return;
                        }
                        idle_since = ticker.now();
                        continue;
                    }
                    let until = if scan.late {
                        now + nanos(TICK)
                    } else {
                        let longest = ticker.shortest_timeout.load(SeqCst);
                        let longest = longest.min(nanos(longest_nap));
                        scan.next.unwrap_or(u64::MAX).min(now + longest)
                    };
                    ticker.nap(Duration::from_nanos(until.saturating_sub(now)));
                }
            })
            .expect("spawn the epoch thread");
        ticker
    }

    /// Nanoseconds since `origin`.
    fn now(&self) -> u64 {
        nanos(self.origin.elapsed())
    }

    fn scan(&self, now: u64) -> Scan {
        let mut scan = Scan {
            late: self.unslotted.load(SeqCst) > 0,
            next: None,
        };
        for deadline in &self.deadlines {
            match deadline.0.load(SeqCst) {
                0 => {}
                d if d <= now => scan.late = true,
                d => scan.next = Some(scan.next.map_or(d, |n| n.min(d))),
            }
        }
        scan
    }

    /// Watch calls with this `timeout` from now on: naps become no longer than it.
    pub(crate) fn watch(&self, timeout: Duration) {
        let previous = self.shortest_timeout.fetch_min(nanos(timeout), SeqCst);
        if nanos(timeout) < previous {
            let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.rescan.store(true, SeqCst);
            self.wake.notify_all();
        }
    }

    /// Mark guest code as running, due `timeout` from now (and wake the thread if it
    /// sleeps), until the guard is dropped.
    pub(crate) fn running(&self, timeout: Duration) -> Running<'_> {
        self.started.fetch_add(1, SeqCst);
        let deadline = self.now().saturating_add(nanos(timeout)).max(1);
        let slot = thread_slot().filter(|&slot| {
            self.deadlines[slot]
                .0
                .compare_exchange(0, deadline, SeqCst, SeqCst)
                .is_ok()
        });
        if slot.is_none() {
            self.unslotted.fetch_add(1, SeqCst);
        }
        // Both sides write, then read the other's flag, all sequentially consistent: if the
        // thread went to sleep without seeing this call, this call sees it asleep.
        if self.asleep.load(SeqCst) {
            let _lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.asleep.store(false, SeqCst);
            self.wake.notify_one();
        }
        Running { ticker: self, slot }
    }

    /// Wait `duration`, or less if a shorter `timeout` arrives.
    fn nap(&self, duration: Duration) {
        let lock = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if !self.rescan.swap(false, SeqCst) {
            drop(
                self.wake
                    .wait_timeout(lock, duration)
                    .unwrap_or_else(|e| e.into_inner()),
            );
        }
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

/// `duration` in nanoseconds, saturating (a `timeout` of centuries is still a number).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// This thread's index into every ticker's `deadlines`, or `None` once `SLOTS` threads
/// hold one. A thread returns its index when it ends.
fn thread_slot() -> Option<usize> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static FREED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

    struct Slot(Option<usize>);
    impl Drop for Slot {
        fn drop(&mut self) {
            if let Some(slot) = self.0 {
                FREED.lock().unwrap_or_else(|e| e.into_inner()).push(slot);
            }
        }
    }
    thread_local! {
        static SLOT: Slot = Slot({
            let freed = FREED.lock().unwrap_or_else(|e| e.into_inner()).pop();
            freed.or_else(|| {
                let next = NEXT.fetch_add(1, SeqCst);
                (next < SLOTS).then_some(next)
            })
        });
    }
    SLOT.try_with(|slot| slot.0).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn spares_are_sized_for_the_largest_component_loaded() {
        let rust = Footprint {
            core_instances: 3,
            memories: 1,
            tables: 1,
        };
        let python = Footprint {
            core_instances: 14,
            memories: 2,
            tables: 5,
        };
        let mut capacity = Capacity::default();
        capacity.add(1, rust);
        capacity.add(2, rust);
        let totals = capacity.totals();
        assert_eq!(totals.component_instances, 3 + SPARES);
        assert_eq!(totals.core_instances, 9 + SPARES * 3);
        assert_eq!(totals.memories, 3 + SPARES);
        capacity.add(2, python);
        let totals = capacity.totals();
        assert_eq!(totals.component_instances, 5 + SPARES);
        assert_eq!(totals.core_instances, 9 + 28 + SPARES * 14);
        assert_eq!(totals.memories, 3 + 4 + SPARES * 2);
        assert_eq!(totals.tables, 3 + 10 + SPARES * 5);
    }

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
    fn the_ticker_sleeps_while_idle_and_ticks_a_call_from_its_deadline_on() {
        let (ticks, ticker) = asleep_counting_ticker();
        let asleep_at = ticks.load(SeqCst);
        std::thread::sleep(TICK * 20);
        assert_eq!(ticks.load(SeqCst), asleep_at, "an asleep ticker ticked");

        // A long call: the ticker wakes, leaves it alone until its deadline, then keeps
        // ticking however long it runs, past the idle limit, so it can be stopped.
        let timeout = Duration::from_millis(60);
        let call = ticker.running(timeout);
        assert!(!ticker.is_asleep());
        std::thread::sleep(timeout / 2);
        assert_eq!(ticks.load(SeqCst), asleep_at, "ticked before the deadline");
        std::thread::sleep(timeout / 2 + IDLE + TICK * 50);
        assert!(!ticker.is_asleep(), "slept during a call");
        let late = ticks.load(SeqCst) - asleep_at;
        assert!(late >= 10, "only {late} ticks during a late call");
        drop(call);
        wait_for("the ticker sleeps again", || ticker.is_asleep());
    }

    #[test]
    fn calls_that_end_before_their_deadline_are_never_ticked() {
        let (ticks, ticker) = asleep_counting_ticker();
        let asleep_at = ticks.load(SeqCst);
        for _ in 0..50 {
            let call = ticker.running(Duration::from_millis(50));
            std::thread::sleep(Duration::from_millis(2));
            drop(call);
        }
        assert_eq!(ticks.load(SeqCst), asleep_at);
    }

    #[test]
    fn a_shorter_timeout_ends_a_nap_early() {
        let ticks = Arc::new(AtomicU64::new(0));
        let counter = ticks.clone();
        // Naps of up to an hour: with no timeout watched yet, the first is that long.
        let ticker = Ticker::spawn_napping(Duration::from_secs(3600), move || {
            counter.fetch_add(1, SeqCst);
        });
        std::thread::sleep(TICK * 10);
        ticker.watch(Duration::from_millis(5));
        let call = ticker.running(Duration::from_millis(5));
        // Due in 5 ms; ticked then only if `watch` cut the hour's nap short.
        wait_for("the late call is ticked", || ticks.load(SeqCst) > 0);
        drop(call);
    }

    #[test]
    fn calls_beyond_the_thread_slots_are_ticked_every_tick() {
        let (ticks, ticker) = asleep_counting_ticker();
        let asleep_at = ticks.load(SeqCst);
        // A nested call on one thread finds its slot taken, as a thread without one would.
        let outer = ticker.running(Duration::from_secs(3600));
        let inner = ticker.running(Duration::from_secs(3600));
        assert!(outer.slot.is_some() && inner.slot.is_none());
        wait_for("the unslotted call is ticked", || {
            ticks.load(SeqCst) >= asleep_at + 5
        });
        drop(inner);
        drop(outer);
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
