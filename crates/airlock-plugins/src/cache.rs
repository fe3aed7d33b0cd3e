//! Compiled plugins on disk, so that a restart does not compile them again. An entry is
//! keyed by the engine's compatibility hash (wasmtime version and every setting that
//! changes the machine code) and the plugin file's SHA-256; a file that does not match
//! the engine is refused by wasmtime, and then recompiled. The cache is an optimisation:
//! every problem with it is a warning, and the plugin is compiled as if it were off.

use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The cache directory when the configuration does not name one.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".cache"))
        })?;
    Some(base.join("airlock"))
}

#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// Use (and create, readable by this user only) `dir`. Refused when others may
    /// write to it: whoever can write a cache entry can run code inside airlock.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let meta = std::fs::metadata(dir)
                .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            if meta.permissions().mode() & 0o022 != 0 {
                return Err(format!(
                    "{} is writable by other users; not using it (chmod go-w to fix)",
                    dir.display()
                ));
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The component compiled from `wasm`: from the cache when it holds a usable entry,
    /// else compiled now and stored.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        plugin: &str,
        wasm: &[u8],
    ) -> wasmtime::Result<Component> {
        let path = self.dir.join(format!("{}.cwasm", key(engine, wasm)));
        if path.exists() {
            let started = Instant::now();
            match load(engine, &path) {
                Ok(component) => {
                    // Mark it used, for `prune`.
                    let _ = std::fs::File::open(&path)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                    tracing::info!(plugin, path = %path.display(), load_ms = started.elapsed().as_millis() as u64, "compiled plugin loaded from the cache");
                    return Ok(component);
                }
                Err(e) => {
                    tracing::warn!(plugin, path = %path.display(), error = %format!("{e:#}"), "cached compiled plugin is unusable; compiling again");
                }
            }
        }
        let started = Instant::now();
        let component = Component::new(engine, wasm)?;
        let compile_ms = started.elapsed().as_millis() as u64;
        match component
            .serialize()
            .map_err(|e| format!("{e:#}"))
            .and_then(|bytes| store(&path, &bytes).map_err(|e| format!("{e}")))
        {
            Ok(()) => {
                tracing::info!(plugin, compile_ms, path = %path.display(), "plugin compiled and cached");
                self.prune();
            }
            Err(error) => {
                tracing::warn!(plugin, compile_ms, path = %path.display(), error, "plugin compiled, but could not be cached")
            }
        }
        Ok(component)
    }

    /// Keep the cache from growing without bound (every rebuilt plugin adds an entry):
    /// beyond `MAX_ENTRIES`, remove the entries used least recently.
    fn prune(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<_> = dir
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if entries.len() <= MAX_ENTRIES {
            return;
        }
        entries.sort();
        for (_, path) in &entries[..entries.len() - MAX_ENTRIES] {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Entries kept in the cache directory.
const MAX_ENTRIES: usize = 64;

#[allow(unsafe_code)]
fn load(engine: &Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: deserializing runs machine code from the file, so the file must have been
    // written by `Component::serialize`. Only airlock writes into this directory: it is
    // created for this user alone (0700), refused when others may write to it, and
    // entries are written whole (temporary file, then rename). wasmtime itself checks
    // that the entry was compiled by this wasmtime version with these engine settings.
    unsafe { Component::deserialize_file(engine, path) }
}

/// Write `bytes` to `path` so that readers see either no file or all of it.
fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match result.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Hex SHA-256 of the engine's compatibility hash and the plugin's bytes.
fn key(engine: &Engine, wasm: &[u8]) -> String {
    struct Feed(Sha256);
    impl Hasher for Feed {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0 // unused: the digest is read from the SHA-256 state
        }
    }
    let mut feed = Feed(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut feed);
    feed.0.update(wasm);
    feed.0
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
