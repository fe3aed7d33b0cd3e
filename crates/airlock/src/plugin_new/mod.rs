//! `airlock plugin new NAME --lang rust|js|python`: write a plugin project that builds
//! against this airlock's interface and passes its own test unchanged.
//!
//! Every project holds the interface (`wit/airlock-plugin.wit`, as `airlock plugin wit`
//! prints it), a plugin that admits listed origins (the same policy in each language, so
//! that they can be compared), a test, an `airlock.toml` that loads it, and a README with
//! the commands. The toolchain versions are the ones airlock's own examples pin:
//! ComponentizeJS from `plugins/tenant-router-js/package-lock.json`, componentize-py
//! from `plugins/signed-url-py/requirements.txt`, and for Rust the SDK's own source and
//! its wit-bindgen version.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::cli::PluginLang;

/// One file of a project: its path and text, with `{{...}}` placeholders.
type Template = (&'static str, &'static str);

const JS: [Template; 5] = [
    ("plugin.js", include_str!("js/plugin.js")),
    ("package.json", include_str!("js/package.json")),
    (
        "package-lock.json",
        include_str!("../../../../plugins/tenant-router-js/package-lock.json"),
    ),
    ("test.mjs", include_str!("js/test.mjs")),
    ("README.md", include_str!("js/README.md")),
];

const PYTHON: [Template; 5] = [
    ("app.py", include_str!("python/app.py")),
    ("build.sh", include_str!("python/build.sh")),
    (
        "requirements.txt",
        include_str!("../../../../plugins/signed-url-py/requirements.txt"),
    ),
    ("test_plugin.py", include_str!("python/test_plugin.py")),
    ("README.md", include_str!("python/README.md")),
];

const RUST: [Template; 5] = [
    ("Cargo.toml", include_str!("rust/Cargo.toml")),
    ("src/lib.rs", include_str!("rust/lib.rs")),
    (
        "airlock-plugin-sdk/Cargo.toml",
        include_str!("rust/sdk.Cargo.toml"),
    ),
    (
        "airlock-plugin-sdk/src/lib.rs",
        include_str!("../../../airlock-plugin-sdk/src/lib.rs"),
    ),
    ("README.md", include_str!("rust/README.md")),
];

/// The wit-bindgen the SDK is built with (the workspace's `Cargo.lock`); a test checks
/// that they agree.
pub const WIT_BINDGEN: &str = "0.61.1";

/// Write the project for `name` in `dir` (default `./NAME`), which must not exist or be
/// empty. Returns the directory.
pub fn run(name: &str, lang: PluginLang, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("{} exists and is not a directory", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} already exists and is not empty; pick another name or --dir",
            dir.display()
        );
    }
    let file = name.replace('-', "_");
    let (templates, wasm): (&[Template], String) = match lang {
        PluginLang::Rust => (&RUST, format!("target/wasm32-wasip2/release/{file}.wasm")),
        PluginLang::Js => (&JS, format!("{file}.wasm")),
        PluginLang::Python => (&PYTHON, format!("{file}.wasm")),
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{file}}", &file)
            .replace("{{type_name}}", &type_name(name))
            .replace("{{wasm}}", &wasm)
            .replace("{{airlock_version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{wit_bindgen}}", WIT_BINDGEN)
    };
    let mut files: Vec<(String, String)> = templates
        .iter()
        .map(|(path, text)| (path.to_string(), fill(text)))
        .collect();
    for (path, text) in &mut files {
        match path.as_str() {
            // The example's lock file, for a project of this name.
            "package-lock.json" => {
                *text = text.replace("\"airlock-tenant-router\"", &format!("\"{name}\""));
            }
            // The SDK's bindings, from the project's own copy of the interface.
            "airlock-plugin-sdk/src/lib.rs" => {
                *text = text.replace("path: \"../../wit\"", "path: \"../wit\"");
            }
            _ => {}
        }
    }
    files.push(("wit/airlock-plugin.wit".into(), crate::WIT[0].1.into()));
    files.push(("airlock.toml".into(), fill(include_str!("airlock.toml"))));
    for (path, text) in &files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if matches!(lang, PluginLang::Python) {
        make_executable(&dir.join("build.sh"))?;
    }
    Ok(dir)
}

/// A plugin name: lowercase letters, digits and dashes, starting with a letter; it
/// becomes a package name in every language and the component's file name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "{name:?} is not a plugin name: use lowercase letters, digits and dashes, starting with a letter (like `my-policy`)"
        );
    }
    Ok(())
}

/// `my-policy` -> `MyPolicy`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

#[cfg(unix)]
fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> anyhow::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_become_type_names() {
        assert!(check_name("my-policy").is_ok());
        assert!(check_name("p2").is_ok());
        for bad in ["", "My", "2x", "a_b", "a-", "a b", "ü"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(type_name("my-policy"), "MyPolicy");
        assert_eq!(type_name("p2"), "P2");
    }

    #[test]
    fn the_rust_template_pins_the_wit_bindgen_the_sdk_is_built_with() {
        let lock = include_str!("../../../../Cargo.lock");
        let wanted = format!("name = \"wit-bindgen\"\nversion = \"{WIT_BINDGEN}\"");
        assert!(lock.contains(&wanted), "Cargo.lock has no {wanted}");
        let sdk = include_str!("../../../airlock-plugin-sdk/Cargo.toml");
        let minor = WIT_BINDGEN.rsplit_once('.').unwrap().0;
        assert!(sdk.contains(&format!("wit-bindgen = {{ version = \"{minor}\"")));
        // The SDK's bindings path is rewritten to the project's copy of the interface.
        let sdk_src = include_str!("../../../airlock-plugin-sdk/src/lib.rs");
        assert_eq!(sdk_src.matches("path: \"../../wit\"").count(), 1);
    }

    #[test]
    fn the_js_template_builds_with_the_toolchain_its_lock_file_pins() {
        let package: serde_json::Value = serde_json::from_str(JS[1].1).unwrap();
        let lock: serde_json::Value = serde_json::from_str(JS[2].1).unwrap();
        let wanted = &package["devDependencies"];
        // ComponentizeJS 0.23 imports preview2-shim without depending on it: the project
        // has to.
        assert_eq!(wanted.as_object().unwrap().len(), 2);
        assert_eq!(&lock["packages"][""]["devDependencies"], wanted);
        for (name, version) in wanted.as_object().unwrap() {
            assert_eq!(
                &lock["packages"][format!("node_modules/{name}")]["version"],
                version
            );
        }
    }
}
