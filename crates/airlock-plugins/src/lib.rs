//! airlock's WebAssembly plugin host.
//!
//! Loads handshake plugins (components of the `airlock:plugin` world in `wit/`), keeps a
//! pool of warm, configured instances per plugin, and calls them under a deadline (epoch
//! interruption) and a memory cap (`StoreLimits`). A plugin that traps, loops or runs
//! out of memory costs one call an error; the instance is thrown away, never reused.
//!
//! [`chain`] runs a route's plugins in order, each seeing the request as changed by the
//! ones before it. It knows nothing about HTTP; the proxy turns requests into
//! [`Handshake`] records and applies the outcome.

// One exception, in `cache`: loading a precompiled component (see its SAFETY note).
#![deny(unsafe_code)]

mod bindings;
mod cache;
pub mod chain;
mod engine;
mod error;
mod handshake;
mod instance;
mod language;
mod request;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use bindings::v0_3::airlock::plugin::types::{Mutations, Rejection, Verdict};
pub use cache::DiskCache;
pub use chain::{Chain, ChainOutcome};
use engine::Capacity;
pub use engine::PluginHost;
pub use error::{CallError, PluginError};
pub use handshake::{Handshake, TlsInfo};
use instance::InstancePool;
pub use language::Language;
use language::{Footprint, Inspected};

/// What to do with a handshake when a plugin call fails.
pub use airlock_config::OnError;

/// One loaded, configured plugin with its pool of warm instances.
pub struct Plugin {
    pub name: Arc<str>,
    pub on_error: OnError,
    pool: InstancePool,
    /// What it was loaded from: a reload keeps the plugin when this is the same.
    source: Source,
}

/// A plugin's settings and the SHA-256 of its component file.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    settings: PluginSettings,
    wasm_sha256: [u8; 32],
    /// What the component was written in (its producers sections).
    language: Language,
    /// What one of its instances takes from the engine's pools.
    footprint: Footprint,
    /// The starting size of its memory, in bytes: the image instances share.
    memory_starts_at: u64,
}

impl Source {
    fn read(wasm: &Path, settings: PluginSettings) -> Result<Self, PluginError> {
        use sha2::Digest as _;
        let bytes = std::fs::read(wasm).map_err(|source| PluginError::Read {
            plugin: settings.name.clone(),
            path: wasm.to_path_buf(),
            source,
        })?;
        let inspected = Inspected::read(&bytes);
        let source = Self {
            settings,
            wasm_sha256: sha2::Sha256::digest(&bytes).into(),
            language: inspected.language,
            footprint: inspected.footprint,
            memory_starts_at: inspected.memory_starts_at,
        };
        // The engine would refuse it too, but only after compiling it, and in its words.
        let starts_at = usize::try_from(inspected.memory_starts_at).unwrap_or(usize::MAX);
        if starts_at > source.max_memory() {
            return Err(PluginError::MemoryTooSmall {
                plugin: source.settings.name.clone(),
                starts_at,
                max_memory: source.max_memory(),
                language: source.language,
            });
        }
        Ok(source)
    }

    /// Linear memory one instance may grow to: `max_memory`, or the language's default.
    fn max_memory(&self) -> usize {
        self.settings
            .max_memory
            .unwrap_or(self.language.default_max_memory())
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Settings of one plugin, from its `[plugin.NAME]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSettings {
    pub name: String,
    pub timeout: Duration,
    /// `None`: the default for the component's language ([`Language::default_max_memory`]).
    pub max_memory: Option<usize>,
    pub instances: usize,
    pub on_error: OnError,
    /// The plugin's `config` table as JSON, handed to `configure`.
    pub config_json: String,
}

impl PluginSettings {
    /// Settings from a `[plugin.NAME]` table.
    pub fn from_config(name: &str, cfg: &airlock_config::Plugin) -> Self {
        Self {
            name: name.to_string(),
            timeout: cfg.timeout.get(),
            max_memory: cfg
                .max_memory
                .map(|m| usize::try_from(m.0).unwrap_or(usize::MAX)),
            instances: cfg
                .instances
                .as_ref()
                .map_or_else(default_instances, |n| *n.get_ref()),
            on_error: cfg.on_error,
            config_json: serde_json::to_string(&cfg.config).expect("a TOML table is valid JSON"),
        }
    }
}

/// Warm instances kept per plugin when `instances` is not set: enough for every worker
/// thread to call at once, with room for a replacement being created.
pub fn default_instances() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get() * 2)
        .max(4)
}

impl Plugin {
    /// Compile the component at `wasm`, link it, and create and configure one instance,
    /// so that a bad file or a refused configuration is reported now.
    pub fn load(
        host: &PluginHost,
        wasm: &Path,
        settings: PluginSettings,
    ) -> Result<Self, PluginError> {
        let source = Source::read(wasm, settings)?;
        Self::load_source(host, wasm, source)
    }

    /// [`Plugin::load`] into an engine of its own, sized for this plugin's instances and
    /// keeping its machine code in the default compile cache (for `airlock plugin test`,
    /// which loads one plugin: a JavaScript or Python one takes 10-15 s to compile).
    pub fn load_alone(wasm: &Path, settings: PluginSettings) -> Result<Self, PluginError> {
        let source = Source::read(wasm, settings)?;
        let mut capacity = Capacity::default();
        capacity.add(source.settings.instances, source.footprint);
        let disk = cache::default_dir().and_then(|dir| open_cache(&dir));
        let host = PluginHost::with_capacity(capacity, source.max_memory(), disk)?;
        Self::load_source(&host, wasm, source)
    }

    /// The size its linear memory starts at, in bytes: the memory image its instances
    /// map copy-on-write and share until they write to it.
    pub fn memory_starts_at(&self) -> u64 {
        self.source.memory_starts_at
    }

    fn load_source(host: &PluginHost, wasm: &Path, source: Source) -> Result<Self, PluginError> {
        let settings = &source.settings;
        let pool = InstancePool::new(host, wasm, settings, source.max_memory())?;
        // A language runtime takes milliseconds to start an instance: start them all now
        // rather than in the middle of a request when the pool grows.
        if source.language.starts_slowly() {
            pool.prewarm(settings.instances)?;
        }
        tracing::info!(
            plugin = settings.name,
            language = source.language.describe(),
            max_memory = source.max_memory(),
            instances_started = pool.live(),
            "plugin loaded"
        );
        Ok(Self {
            name: settings.name.as_str().into(),
            on_error: settings.on_error,
            pool,
            source,
        })
    }

    /// Call `on-handshake` on a warm instance. The plugin sees only the headers it
    /// asked for (`wanted-headers`).
    pub fn call(&self, request: &Handshake<'_>) -> Result<Verdict, CallError> {
        self.pool.call(request)
    }

    /// Create instances until `n` exist (at most `instances`), so that calls do not wait
    /// for one to start. For benchmarks that weigh instances.
    pub fn prewarm(&self, n: usize) -> Result<(), PluginError> {
        self.pool.prewarm(n)
    }

    /// Create and configure a new instance, call `on-handshake` on it once, and drop it:
    /// what a call costs when the pool has to grow or replace a discarded instance.
    /// For benchmarks; the proxy always goes through [`Plugin::call`].
    pub fn call_fresh(&self, request: &Handshake<'_>) -> Result<Verdict, CallError> {
        self.pool.call_fresh(request)
    }
}

/// Load and configure every `[plugin.NAME]` of a configuration, sharing one engine sized
/// for all of them.
pub fn load_all(
    loaded: &airlock_config::LoadedConfig,
) -> Result<HashMap<String, Arc<Plugin>>, PluginError> {
    load_all_reusing(loaded, &HashMap::new())
}

/// [`load_all`] for a reload: a plugin of `previous` whose name, settings and component
/// file are the same is kept as it is (compiled, its warm instances and their state);
/// the others are loaded, sharing one new engine sized for them.
pub fn load_all_reusing(
    loaded: &airlock_config::LoadedConfig,
    previous: &HashMap<String, Arc<Plugin>>,
) -> Result<HashMap<String, Arc<Plugin>>, PluginError> {
    let mut plugins = HashMap::new();
    let mut to_load = Vec::new();
    for (name, cfg) in &loaded.config.plugins {
        let path = loaded.resolve(cfg.wasm.get_ref());
        let source = Source::read(&path, PluginSettings::from_config(name, cfg))?;
        match previous.get(name) {
            Some(plugin) if plugin.source == source => {
                plugins.insert(name.clone(), plugin.clone());
            }
            _ => to_load.push((path, source)),
        }
    }
    if to_load.is_empty() {
        return Ok(plugins);
    }
    let mut capacity = Capacity::default();
    for (_, source) in &to_load {
        capacity.add(source.settings.instances, source.footprint);
    }
    let max_memory = to_load
        .iter()
        .map(|(_, s)| s.max_memory())
        .max()
        .unwrap_or(0);
    let host = PluginHost::with_capacity(capacity, max_memory, disk_cache(loaded))?;
    for (path, source) in to_load {
        let name = source.settings.name.clone();
        plugins.insert(name, Arc::new(Plugin::load_source(&host, &path, source)?));
    }
    Ok(plugins)
}

/// The disk cache a configuration asks for (`plugin_cache_dir`), if it can be used; a
/// cache that cannot be is a warning, never an error.
pub fn disk_cache(loaded: &airlock_config::LoadedConfig) -> Option<DiskCache> {
    let dir = match loaded.config.plugin_cache_dir.as_deref() {
        Some("") => return None,
        Some(dir) => loaded.resolve(dir),
        None => cache::default_dir()?,
    };
    open_cache(&dir)
}

/// The cache in `dir`; one that cannot be used is a warning, never an error.
fn open_cache(dir: &Path) -> Option<DiskCache> {
    DiskCache::open(dir)
        .inspect_err(|error| tracing::warn!(error, "plugin cache off"))
        .ok()
}
