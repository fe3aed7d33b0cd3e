//! Plugins in JavaScript and Python, built for the tests with the toolchains the examples
//! pin: ComponentizeJS from `plugins/tenant-router-js/package-lock.json` (`npm ci`, once,
//! when its `node_modules` is missing) and componentize-py from
//! `plugins/signed-url-py/requirements.txt` (a virtual environment under `target/`).
//!
//! A built component is kept under `target/` by a hash of everything it is built from,
//! so a test run rebuilds only what changed; airlock's compile cache (shared by the tests)
//! then keeps its machine code.

use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::run;

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .canonicalize()
        .unwrap()
}

/// Builds run one at a time: each uses both cores.
static BUILDING: Mutex<()> = Mutex::new(());

/// The directory holding `node_modules/.bin/componentize-js`, installed.
pub fn componentize_js_project() -> PathBuf {
    let dir = repo().join("plugins/tenant-router-js");
    if !dir.join("node_modules/.bin/componentize-js").exists() {
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir));
    }
    dir
}

/// A virtual environment's `bin/` with componentize-py installed.
pub fn componentize_py_bin() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-componentize-py");
    let bin = venv.join("bin");
    if !bin.join("componentize-py").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        run(Command::new(bin.join("python"))
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(["--require-hashes", "-r"])
            .arg(repo().join("plugins/signed-url-py/requirements.txt")));
    }
    bin
}

/// `plugins/DIR/FILE.js`, built with ComponentizeJS (off the test's runtime: a build
/// takes seconds); the component's path.
pub async fn js_plugin(dir: &'static str, file: &'static str) -> PathBuf {
    tokio::task::spawn_blocking(move || build_js(dir, file))
        .await
        .unwrap()
}

fn build_js(dir: &str, file: &str) -> PathBuf {
    let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let project = componentize_js_project();
    let source = repo().join("plugins").join(dir);
    let out = output(
        file,
        &[
            &source.join(file),
            &project.join("package-lock.json"),
            &repo().join("wit/airlock-plugin.wit"),
        ],
    );
    if !out.exists() {
        run(
            Command::new(project.join("node_modules/.bin/componentize-js"))
                .arg(file)
                .arg("--wit")
                .arg(repo().join("wit/airlock-plugin.wit"))
                .args(["--world-name", "handshake-plugin"])
                .args(["--disable", "http", "fetch-event", "stdio", "-o"])
                .arg(&out)
                .current_dir(&source),
        );
    }
    out
}

/// The module `plugins/DIR/MODULE.py`, built with componentize-py (off the test's
/// runtime); the component's path.
pub async fn py_plugin(dir: &'static str, module: &'static str) -> PathBuf {
    tokio::task::spawn_blocking(move || build_py(dir, module))
        .await
        .unwrap()
}

fn build_py(dir: &str, module: &str) -> PathBuf {
    let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let bin = componentize_py_bin();
    let source = repo().join("plugins").join(dir);
    let out = output(
        &format!("{module}.py"),
        &[
            &source.join(format!("{module}.py")),
            &repo().join("plugins/signed-url-py/requirements.txt"),
            &repo().join("wit/airlock-plugin.wit"),
        ],
    );
    if !out.exists() {
        run(Command::new(bin.join("componentize-py"))
            .arg("-d")
            .arg(repo().join("wit/airlock-plugin.wit"))
            .args(["-w", "handshake-plugin", "componentize", module, "-o"])
            .arg(&out)
            .current_dir(&source));
    }
    out
}

/// Where the component built from `inputs` goes: named by their hash.
fn output(name: &str, inputs: &[&Path]) -> PathBuf {
    let mut hasher = std::hash::DefaultHasher::new();
    for input in inputs {
        std::fs::read(input)
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()))
            .hash(&mut hasher);
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-components");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}-{:016x}.wasm", hasher.finish()))
}
