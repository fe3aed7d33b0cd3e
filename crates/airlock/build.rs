//! Build the example plugins and test guests for wasm32-wasip2, so that `cargo build` and
//! `cargo test` on a fresh clone need no extra step. They land in
//! `target/wasm-plugins/wasm32-wasip2/plugin/*.wasm`; the binary embeds the demo's plugin
//! and the tests find the rest through `AIRLOCK_PLUGIN_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The plugin crates to build (workspace members under `plugins/`).
const PLUGINS: [&str; 6] = [
    "origin-allowlist",
    "socketio",
    "token-auth",
    "test-guest",
    "compat-v0-1",
    "compat-v0-2",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    for watched in [
        "plugins",
        "crates/airlock-plugin-sdk",
        "wit",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = root.join("target/wasm-plugins");
    ensure_wasm_target();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&root)
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for plugin in PLUGINS {
        build.args(["-p", plugin]);
    }
    // The outer build's settings are for the host; none of them apply to the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        build.env_remove(var);
    }
    let status = build.status().expect("run cargo to build the Wasm plugins");
    if !status.success() {
        panic!(
            "building the Wasm plugins failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
    }
    let out = target_dir.join("wasm32-wasip2/plugin");
    for plugin in PLUGINS {
        let file = out.join(format!("{}.wasm", plugin.replace('-', "_")));
        assert!(file.exists(), "{} was not built", file.display());
    }
    println!("cargo:rustc-env=AIRLOCK_PLUGIN_DIR={}", out.display());
}

/// rustup installs the targets `rust-toolchain.toml` lists only when it installs the
/// toolchain; a toolchain that was already there may lack wasm32-wasip2. Add it then, so
/// the README's two commands work as they are. If this fails, the plugin build below
/// fails with a message naming the command.
fn ensure_wasm_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", "wasm32-wasip2"])
        .output();
    if let Ok(out) = libdir
        && out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim()).exists()
    {
        return;
    }
    let _ = Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .status();
}
