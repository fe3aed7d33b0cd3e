//! The process's one Wasm engine, its linker, and the epoch ticker behind call deadlines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::HandshakePlugin;
use crate::cache::DiskCache;
use crate::error::PluginError;
use crate::instance::StoreData;

/// How often the epoch advances; deadlines are counted in these ticks.
pub(crate) const TICK: Duration = Duration::from_millis(1);

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
        HandshakePlugin::add_to_linker::<_, HasSelf<StoreData>>(&mut linker, |data| data)
            .map_err(engine_error)?;

        spawn_ticker(&engine);
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            compiled: Arc::default(),
            disk,
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

/// Advance the epoch every tick for as long as the engine lives.
fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("airlock-wasm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })
        .expect("spawn the epoch thread");
}
