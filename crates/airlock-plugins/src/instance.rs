//! Warm instances of one plugin: created and configured on demand up to a limit, reused
//! across calls, discarded after any failure.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{InstancePre, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::v0_1::airlock::plugin::host::{self, Level};
use crate::bindings::{v0_1, v0_2, v0_3};
use crate::engine::{PluginHost, Running, Ticker};
use crate::error::{CallError, PluginError};
use crate::request::{self, CurrentRequest};
use crate::{Handshake, PluginSettings, Verdict};

/// What each instance's store holds: an empty WASI context (no files, sockets,
/// environment or arguments), the memory limits, and what the host functions need.
pub struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    plugin: Arc<str>,
    /// The calling thread's CPU time when the running call started. See [`on_tick`].
    cpu_at_start: Duration,
    /// The CPU time the running call may use: the plugin's `timeout` for a call,
    /// [`START_TIMEOUT`] (at least) while an instance is created and configured.
    budget: Duration,
    /// The request the running call decides (a 0.2 plugin reads it; the host's `log`
    /// names its id).
    pub(crate) current: CurrentRequest,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl v0_1::airlock::plugin::types::Host for StoreData {}

impl host::Host for StoreData {
    fn log(&mut self, level: Level, message: String) {
        let (plugin, request) = (&*self.plugin, self.current.id());
        match level {
            Level::Trace => tracing::trace!(plugin, request, "{message}"),
            Level::Debug => tracing::debug!(plugin, request, "{message}"),
            Level::Info => tracing::info!(plugin, request, "{message}"),
            Level::Warn => tracing::warn!(plugin, request, "{message}"),
            Level::Error => tracing::error!(plugin, request, "{message}"),
        }
    }

    fn now_unix_ms(&mut self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

impl v0_2::airlock::plugin::host::Host for StoreData {
    fn log(&mut self, level: v0_2::airlock::plugin::host::Level, message: String) {
        host::Host::log(self, request::level_v0_2(level), message);
    }

    fn now_unix_ms(&mut self) -> u64 {
        host::Host::now_unix_ms(self)
    }
}

impl v0_3::airlock::plugin::host::Host for StoreData {
    fn log(&mut self, level: v0_3::airlock::plugin::host::Level, message: String) {
        host::Host::log(self, request::level_v0_3(level), message);
    }

    fn now_unix_ms(&mut self) -> u64 {
        host::Host::now_unix_ms(self)
    }
}

/// A plugin linked for the interface version it was built for.
enum Pre {
    V0_1(v0_1::HandshakePluginPre<StoreData>),
    V0_2(v0_2::HandshakePluginPre<StoreData>),
    V0_3(v0_3::HandshakePluginPre<StoreData>),
}

impl Pre {
    /// The newest version whose exports the component has.
    fn new(pre: InstancePre<StoreData>) -> wasmtime::Result<Self> {
        let v3_error = match v0_3::HandshakePluginPre::new(pre.clone()) {
            Ok(v3) => return Ok(Self::V0_3(v3)),
            Err(e) => e,
        };
        let v2_error = match v0_2::HandshakePluginPre::new(pre.clone()) {
            Ok(v2) => return Ok(Self::V0_2(v2)),
            Err(e) => e,
        };
        v0_1::HandshakePluginPre::new(pre)
            .map(Self::V0_1)
            .map_err(|v1_error| {
                wasmtime::format_err!(
                    "it is a plugin for none of airlock:plugin@0.3.0 ({v3_error:#}), 0.2.0 ({v2_error:#}) and 0.1.0 ({v1_error:#})"
                )
            })
    }

    fn engine(&self) -> &Engine {
        match self {
            Self::V0_1(pre) => pre.engine(),
            Self::V0_2(pre) => pre.engine(),
            Self::V0_3(pre) => pre.engine(),
        }
    }

    fn instantiate(&self, store: &mut Store<StoreData>) -> wasmtime::Result<Exports> {
        Ok(match self {
            Self::V0_1(pre) => Exports::V0_1(pre.instantiate(store)?),
            Self::V0_2(pre) => Exports::V0_2(pre.instantiate(store)?),
            Self::V0_3(pre) => Exports::V0_3(pre.instantiate(store)?),
        })
    }
}

/// An instance's exports, by interface version.
enum Exports {
    V0_1(v0_1::HandshakePlugin),
    V0_2(v0_2::HandshakePlugin),
    V0_3(v0_3::HandshakePlugin),
}

struct Instance {
    store: Store<StoreData>,
    plugin: Exports,
}

impl Instance {
    fn configure(&mut self, config: &str) -> wasmtime::Result<Result<(), String>> {
        match &self.plugin {
            Exports::V0_1(p) => p.call_configure(&mut self.store, config),
            Exports::V0_2(p) => p.call_configure(&mut self.store, config),
            Exports::V0_3(p) => p.call_configure(&mut self.store, config),
        }
    }

    /// The headers a 0.1 plugin reads (lowercase), or `None` for all; a 0.2 plugin reads
    /// headers by name and is never sent any it did not ask for.
    fn wanted_headers(&mut self) -> wasmtime::Result<Option<Box<[String]>>> {
        Ok(match &self.plugin {
            Exports::V0_1(p) => p
                .call_wanted_headers(&mut self.store)?
                .map(|names| names.iter().map(|n| n.to_ascii_lowercase()).collect()),
            Exports::V0_2(_) | Exports::V0_3(_) => None,
        })
    }

    /// Call `on-handshake`; a 0.1 plugin's record carries only the headers `keep` accepts.
    fn on_handshake(
        &mut self,
        request: &Handshake<'_>,
        keep: impl Fn(&str) -> bool,
    ) -> wasmtime::Result<Verdict> {
        let plugin = &self.plugin;
        CurrentRequest::during(&mut self.store, request, |store| match plugin {
            Exports::V0_1(p) => request
                .with_record(keep, |record| p.call_on_handshake(store, record))
                .map(request::verdict_v0_1),
            Exports::V0_2(p) => p
                .call_on_handshake(store, request::handle())
                .map(request::verdict_v0_2),
            Exports::V0_3(p) => p.call_on_handshake(store, request::handle()),
        })
    }
}

/// The least CPU time creating an instance and its `configure` call get, whatever the
/// plugin's `timeout` (sized for `on-handshake`): a language runtime starts up there. A
/// Python instance takes about 3.5 ms to create, a JavaScript one about 1 ms (see
/// `docs/plugins.md`), and a `configure` that loops forever is still stopped.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct InstancePool {
    pre: Pre,
    settings: PluginSettings,
    /// Linear memory one instance may grow to (`Source::max_memory`).
    max_memory: usize,
    name: Arc<str>,
    /// The headers the plugin reads (lowercase), from its `wanted-headers`; `None`: all.
    wanted: Option<Box<[String]>>,
    state: Mutex<PoolState>,
    freed: Condvar,
    /// Held while guest code runs, so that deadlines advance.
    ticker: Arc<Ticker>,
}

struct PoolState {
    idle: Vec<Instance>,
    /// Instances that exist: idle plus checked out.
    live: usize,
    /// Calls waiting for an instance. Returning one wakes a waiter only when there is
    /// one: a condition variable's notify is a system call even when nobody waits.
    waiting: usize,
}

impl InstancePool {
    pub fn new(
        host: &PluginHost,
        wasm: &Path,
        settings: &PluginSettings,
        max_memory: usize,
    ) -> Result<Self, PluginError> {
        let bytes = std::fs::read(wasm).map_err(|source| PluginError::Read {
            plugin: settings.name.clone(),
            path: wasm.to_path_buf(),
            source,
        })?;
        Self::from_bytes(host, &bytes, settings, max_memory)
    }

    fn from_bytes(
        host: &PluginHost,
        wasm: &[u8],
        settings: &PluginSettings,
        max_memory: usize,
    ) -> Result<Self, PluginError> {
        let compile_error = |e: wasmtime::Error| PluginError::Compile {
            plugin: settings.name.clone(),
            reason: format!("{e:#}"),
        };
        let component = host.compile(&settings.name, wasm).map_err(compile_error)?;
        let pre = host
            .linker
            .instantiate_pre(&component)
            .map_err(compile_error)?;
        let pre = Pre::new(pre).map_err(compile_error)?;
        let mut pool = Self {
            pre,
            settings: settings.clone(),
            max_memory,
            name: settings.name.as_str().into(),
            wanted: None,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                live: 0,
                waiting: 0,
            }),
            freed: Condvar::new(),
            ticker: host.ticker.clone(),
        };
        pool.ticker.watch(settings.timeout);
        // Create one instance now: a refused configuration is a load error.
        let mut first = pool.create()?;
        let running = pool.arm(&mut first.store, settings.timeout);
        let wanted = first
            .wanted_headers()
            .map_err(|e| PluginError::ConfigureFailed {
                plugin: settings.name.clone(),
                cause: pool.classify(e, settings.timeout),
            })?;
        drop(running);
        pool.wanted = wanted;
        {
            let mut state = pool.state.lock().unwrap_or_else(|e| e.into_inner());
            state.live = 1;
            state.idle.push(first);
        }
        Ok(pool)
    }

    /// Ready `store` for a call into the guest that may use `budget` of CPU time: its
    /// clock starts now, and the ticker watches the call until the returned guard is
    /// dropped.
    fn arm(&self, store: &mut Store<StoreData>, budget: Duration) -> Running<'_> {
        let running = self.ticker.running(budget);
        store.data_mut().budget = budget;
        restart_clock(store);
        running
    }

    /// The budget for creating and configuring an instance.
    fn start_budget(&self) -> Duration {
        self.settings.timeout.max(START_TIMEOUT)
    }

    /// A new instance, configured with the plugin's config.
    fn create(&self) -> Result<Instance, PluginError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.max_memory)
            .trap_on_grow_failure(true)
            .build();
        let data = StoreData {
            wasi: WasiCtx::builder()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
            table: ResourceTable::new(),
            limits,
            plugin: self.name.clone(),
            cpu_at_start: Duration::ZERO,
            budget: self.settings.timeout,
            current: CurrentRequest::default(),
        };
        let mut store = Store::new(self.pre.engine(), data);
        store.limiter(|d| &mut d.limits);
        store.epoch_deadline_callback(|store| {
            let data = store.data();
            Ok(on_tick(data.cpu_at_start, data.budget))
        });
        let budget = self.start_budget();
        let _running = self.arm(&mut store, budget);
        let instance_error = |e: wasmtime::Error| PluginError::ConfigureFailed {
            plugin: self.settings.name.clone(),
            cause: self.classify(e, budget),
        };
        let plugin = self.pre.instantiate(&mut store).map_err(instance_error)?;
        restart_clock(&mut store);
        let mut instance = Instance { store, plugin };
        match instance.configure(&self.settings.config_json) {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(message)) => Err(PluginError::Configure {
                plugin: self.settings.name.clone(),
                message,
            }),
            Err(e) => Err(instance_error(e)),
        }
    }

    /// Call `on-handshake` on a warm instance (a 0.1 plugin's record narrowed to the
    /// headers it wants).
    pub fn call(&self, request: &Handshake<'_>) -> Result<Verdict, CallError> {
        let mut instance = self.check_out()?;
        let running = self.arm(&mut instance.store, self.settings.timeout);
        // A host function can panic on the guest's behalf (wasmtime-wasi's blocking stream
        // calls do when a guest writes to stdout/stderr on a Tokio worker). Catch it here
        // so it costs this call, not the connection, and never reuse the instance.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            instance.on_handshake(request, self.keep_header())
        }));
        drop(running);
        match result {
            Ok(Ok(verdict)) => {
                self.check_in(instance);
                Ok(verdict)
            }
            Ok(Err(e)) => {
                self.discard(instance);
                Err(self.classify(e, self.settings.timeout))
            }
            Err(_) => {
                self.discard(instance);
                Err(CallError::Trap(
                    "a host call failed; plugins have no stdout or stderr (use the host log function)".into(),
                ))
            }
        }
    }

    pub fn call_fresh(&self, request: &Handshake<'_>) -> Result<Verdict, CallError> {
        let mut instance = self
            .create()
            .map_err(|e| CallError::Instantiate(e.to_string()))?;
        let _running = self.arm(&mut instance.store, self.settings.timeout);
        instance
            .on_handshake(request, self.keep_header())
            .map_err(|e| self.classify(e, self.settings.timeout))
    }

    /// Whether a 0.1 plugin's record carries header `name`: its `wanted-headers`.
    fn keep_header(&self) -> impl Fn(&str) -> bool {
        let wanted = self.wanted.as_deref();
        move |name: &str| wanted.is_none_or(|w| w.iter().any(|w| name.eq_ignore_ascii_case(w)))
    }

    /// What a failed call that had `budget` of CPU time ran into.
    fn classify(&self, e: wasmtime::Error, budget: Duration) -> CallError {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout(budget),
            _ => {
                let text = format!("{e:#}");
                if text.contains("forcing trap when growing memory")
                    || text.contains("memory allocation")
                {
                    CallError::OutOfMemory(self.max_memory)
                } else {
                    CallError::Trap(text)
                }
            }
        }
    }

    /// An idle instance, or a new one while under the limit; otherwise wait (bounded by
    /// the call timeout) for one to be returned.
    fn check_out(&self) -> Result<Instance, CallError> {
        let mut wait_until = None;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(instance) = state.idle.pop() {
                return Ok(instance);
            }
            if state.live < self.settings.instances {
                state.live += 1;
                drop(state);
                return self.create().map_err(|e| {
                    self.release_slot();
                    CallError::Instantiate(e.to_string())
                });
            }
            let now = Instant::now();
            let until = *wait_until
                .get_or_insert_with(|| now + self.settings.timeout.max(Duration::from_millis(10)));
            if now >= until {
                return Err(CallError::Busy(self.settings.timeout));
            }
            state.waiting += 1;
            state = self
                .freed
                .wait_timeout(state, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            state.waiting -= 1;
        }
    }

    fn check_in(&self, instance: Instance) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.idle.push(instance);
        self.wake_a_waiter(state);
    }

    /// Wake one call waiting for an instance, if any; `state` is unlocked first.
    fn wake_a_waiter(&self, state: std::sync::MutexGuard<'_, PoolState>) {
        let waiting = state.waiting > 0;
        drop(state);
        if waiting {
            self.freed.notify_one();
        }
    }

    fn discard(&self, instance: Instance) {
        drop(instance);
        self.release_slot();
    }

    /// How many instances exist, idle or in a call.
    pub fn live(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).live
    }

    /// Create instances until `n` exist (at most `instances`), all idle and configured.
    pub fn prewarm(&self, n: usize) -> Result<(), PluginError> {
        let wanted = n.min(self.settings.instances);
        loop {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.live >= wanted {
                return Ok(());
            }
            state.live += 1;
            drop(state);
            match self.create() {
                Ok(instance) => self.check_in(instance),
                Err(e) => {
                    self.release_slot();
                    return Err(e);
                }
            }
        }
    }

    fn release_slot(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.live = state.live.saturating_sub(1);
        self.wake_a_waiter(state);
    }
}

/// Start counting a call's time: the store's epoch callback, [`on_tick`], runs at the
/// next tick.
fn restart_clock(store: &mut Store<StoreData>) {
    store.data_mut().cpu_at_start = thread_cpu_time();
    store.set_epoch_deadline(1);
}

/// At each epoch tick a call meets: go on, or stop it once it has used `timeout`.
///
/// A call's `timeout` counts the calling thread's CPU time, not wall-clock time: on a
/// busy machine a thread can wait for a core for milliseconds in the middle of a call,
/// and that wait is not the plugin's doing. The ticker ([`crate::engine::Ticker`]) ticks
/// only once a call has run for its `timeout` in wall-clock time, and then every tick,
/// so a call is stopped within about a tick of using its `timeout`.
fn on_tick(cpu_at_start: Duration, timeout: Duration) -> UpdateDeadline {
    if thread_cpu_time().saturating_sub(cpu_at_start) >= timeout {
        UpdateDeadline::Interrupt
    } else {
        UpdateDeadline::Continue(1)
    }
}

/// The calling thread's CPU time. Through libc, not rustix: rustix's vDSO lookup
/// crashes under valgrind (rustix#1559), which then cannot profile plugin calls.
#[allow(unsafe_code)]
fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) } != 0 {
        // Only a kernel without the clock fails; wall-clock time still ends a call.
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        return START.get_or_init(Instant::now).elapsed();
    }
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_that_is_no_plugin_is_refused_naming_every_interface_version() {
        // The smallest valid component: a header, no imports, no exports.
        let empty = b"\0asm\x0d\0\x01\0";
        let host = PluginHost::new(1, 1 << 20, None).unwrap();
        let settings = PluginSettings {
            name: "empty".into(),
            timeout: Duration::from_millis(5),
            max_memory: Some(1 << 20),
            instances: 1,
            on_error: crate::OnError::Deny,
            config_json: "{}".into(),
        };
        let Err(error) = InstancePool::from_bytes(&host, empty, &settings, 1 << 20) else {
            panic!("an empty component loaded as a plugin");
        };
        let text = error.to_string();
        assert!(matches!(error, PluginError::Compile { .. }), "{text}");
        for part in [
            "plugin `empty`",
            "airlock:plugin@0.3.0",
            "0.2.0 (",
            "and 0.1.0 (",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
    }

    /// Use `ms` milliseconds of this thread's CPU time.
    fn burn(ms: u64) {
        let until = thread_cpu_time() + Duration::from_millis(ms);
        while thread_cpu_time() < until {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn a_call_is_stopped_once_it_has_used_its_timeout_of_cpu_time() {
        let timeout = Duration::from_millis(20);
        let start = thread_cpu_time();
        burn(5);
        assert!(matches!(
            on_tick(start, timeout),
            UpdateDeadline::Continue(1)
        ));
        burn(16);
        assert!(matches!(on_tick(start, timeout), UpdateDeadline::Interrupt));
    }

    #[test]
    fn time_spent_off_the_cpu_is_not_charged() {
        let timeout = Duration::from_millis(20);
        let start = thread_cpu_time();
        std::thread::sleep(Duration::from_millis(50));
        assert!(matches!(
            on_tick(start, timeout),
            UpdateDeadline::Continue(1)
        ));
    }
}
