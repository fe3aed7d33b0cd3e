//! What language a plugin component was written in, read from the `producers` sections
//! its toolchain leaves in it, and what that means for its sandbox: how much linear
//! memory an instance needs by default, and how long creating one may take.
//!
//! A JavaScript or Python component carries a whole language runtime (SpiderMonkey, or
//! CPython with its standard library) whose memory image starts at 9–13 MiB, where a Rust
//! plugin's starts at about 1 MiB; one `max_memory` default cannot fit both well.

use wasmparser::{KnownCustom, Parser, Payload};

/// The language a plugin was built from, as far as its producers sections tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Rust,
    /// Built with ComponentizeJS (`@bytecodealliance/componentize-js`, or `jco
    /// componentize`): the StarlingMonkey engine with the plugin's code.
    JavaScript,
    /// Built with `componentize-py`: CPython, linked as a shared library, and the
    /// plugin's code.
    Python,
    /// Anything else (C, Go, a hand-written component, no producers section).
    Other,
}

/// What airlock reads from a component before compiling it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inspected {
    pub language: Language,
    /// The largest starting size of a linear memory it defines, in bytes: an instance
    /// cannot exist with a `max_memory` below this.
    pub memory_starts_at: u64,
    /// What one instance takes from the engine's pools.
    pub footprint: Footprint,
}

/// The core instances, memories and tables one instance of a component holds: a Rust
/// plugin instantiates 3 core modules, a ComponentizeJS one 4, a componentize-py one
/// 14 (CPython and its libraries are linked dynamically, a module each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Footprint {
    pub core_instances: u32,
    pub memories: u32,
    pub tables: u32,
}

impl Footprint {
    /// What an engine sized without reading the components allows per instance: a
    /// componentize-py plugin, with room.
    pub const LARGEST_EXPECTED: Self = Self {
        core_instances: 24,
        memories: 4,
        tables: 8,
    };
}

impl Inspected {
    /// Read `wasm`'s producers and memory sections (the component's own and its core
    /// modules'). What cannot be parsed is skipped: compiling it reports why.
    pub fn read(wasm: &[u8]) -> Self {
        let (mut rust, mut js, mut python) = (false, false, false);
        let mut memory_starts_at = 0;
        let mut footprint = Footprint::default();
        for payload in Parser::new(0).parse_all(wasm) {
            let section = match payload {
                Ok(Payload::CustomSection(section)) => section,
                Ok(Payload::InstanceSection(instances)) => {
                    let instantiations = instances
                        .into_iter()
                        .flatten()
                        .filter(|i| matches!(i, wasmparser::Instance::Instantiate { .. }))
                        .count();
                    footprint.core_instances += u32::try_from(instantiations).unwrap_or(u32::MAX);
                    continue;
                }
                Ok(Payload::TableSection(tables)) => {
                    footprint.tables += tables.count();
                    continue;
                }
                Ok(Payload::MemorySection(memories)) => {
                    footprint.memories += memories.count();
                    for memory in memories.into_iter().flatten() {
                        let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                        memory_starts_at =
                            memory_starts_at.max(memory.initial.saturating_mul(page));
                    }
                    continue;
                }
                // componentize-py links CPython as a shared library whose core module
                // the plugin's imports name (`libpython3.14.so`); its producers
                // sections say only Rust and wit-component.
                Ok(Payload::ImportSection(imports)) => {
                    python |= imports
                        .into_imports()
                        .flatten()
                        .any(|import| import.module.starts_with("libpython3"));
                    continue;
                }
                _ => continue,
            };
            let KnownCustom::Producers(producers) = section.as_known() else {
                continue;
            };
            for field in producers.into_iter().flatten() {
                for value in field.values.into_iter().flatten() {
                    match (field.name, value.name) {
                        ("processed-by", "componentize-py") => python = true,
                        ("processed-by", "ComponentizeJS") | ("language", "JavaScript") => {
                            js = true;
                        }
                        ("language", "Rust") => rust = true,
                        _ => {}
                    }
                }
            }
        }
        // Both runtimes are themselves partly Rust: the toolchain mark decides.
        let language = if python {
            Language::Python
        } else if js {
            Language::JavaScript
        } else if rust {
            Language::Rust
        } else {
            Language::Other
        };
        Self {
            language,
            memory_starts_at,
            footprint,
        }
    }
}

impl Language {
    /// How airlock names it in messages and the log.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Rust => "Rust",
            Self::JavaScript => "JavaScript (ComponentizeJS)",
            Self::Python => "Python (componentize-py)",
            Self::Other => "other",
        }
    }

    /// Whether creating an instance takes milliseconds (a JavaScript instance about 1 ms,
    /// a Python one about 3.5 ms; a Rust one 0.03 ms): airlock then creates all of a
    /// plugin's `instances` when it loads it, not when requests need them.
    pub fn starts_slowly(self) -> bool {
        matches!(self, Self::JavaScript | Self::Python)
    }

    /// `max_memory` when the plugin's table does not set it: room for the runtime's
    /// starting image and a plugin's own work (see `docs/plugins.md`, "What plugins
    /// cost", for what each measured).
    pub fn default_max_memory(self) -> usize {
        match self {
            Self::Rust | Self::Other => airlock_config::DEFAULT_PLUGIN_MAX_MEMORY.0 as usize,
            Self::JavaScript | Self::Python => 48 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memorys_starting_size_is_read_from_its_pages() {
        // One memory of 3 pages (no maximum).
        let wasm = b"\0asm\x01\0\0\0\x05\x03\x01\x00\x03";
        assert_eq!(Inspected::read(wasm).memory_starts_at, 3 << 16);
        assert_eq!(Inspected::read(b"\0asm\x01\0\0\0").memory_starts_at, 0);
    }

    fn language_of(wasm: &[u8]) -> Language {
        Inspected::read(wasm).language
    }

    /// A core module with one producers section holding `fields`.
    fn with_producers(fields: &[(&str, &[&str])]) -> Vec<u8> {
        fn name(out: &mut Vec<u8>, s: &str) {
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        let mut body = Vec::new();
        name(&mut body, "producers");
        body.push(fields.len() as u8);
        for (field, values) in fields {
            name(&mut body, field);
            body.push(values.len() as u8);
            for value in *values {
                name(&mut body, value);
                name(&mut body, "1.0");
            }
        }
        let mut wasm = b"\0asm\x01\0\0\0\0".to_vec();
        wasm.push(body.len() as u8);
        wasm.extend(body);
        wasm
    }

    #[test]
    fn the_toolchain_mark_decides_over_the_runtimes_own_rust() {
        let of = |fields: &[(&str, &[&str])]| language_of(&with_producers(fields));
        assert_eq!(of(&[("language", &["Rust"])]), Language::Rust);
        assert_eq!(
            of(&[
                ("language", &["C11", "Rust"]),
                ("processed-by", &["componentize-py"])
            ]),
            Language::Python
        );
        assert_eq!(
            of(&[
                ("language", &["Rust"]),
                ("processed-by", &["ComponentizeJS", "wit-component"])
            ]),
            Language::JavaScript
        );
        assert_eq!(of(&[("language", &["JavaScript"])]), Language::JavaScript);
        // A module importing from CPython's shared library, as componentize-py links it.
        let mut python = b"\0asm\x01\0\0\0\x02\x16\x01\x10libpython3.14.so\x01f\x00\x00".to_vec();
        python.extend(&with_producers(&[("language", &["Rust"])])[8..]);
        assert_eq!(language_of(&python), Language::Python);
        assert_eq!(of(&[("language", &["C11"])]), Language::Other);
        assert_eq!(of(&[]), Language::Other);
        assert_eq!(language_of(b"\0asm\x0d\0\x01\0"), Language::Other);
        assert_eq!(language_of(b"not wasm"), Language::Other);
    }

    #[test]
    fn language_runtimes_get_room_for_their_starting_image() {
        assert_eq!(Language::Rust.default_max_memory(), 16 << 20);
        assert_eq!(Language::Other.default_max_memory(), 16 << 20);
        assert!(Language::JavaScript.default_max_memory() >= 32 << 20);
        assert!(Language::Python.default_max_memory() >= 32 << 20);
    }
}
