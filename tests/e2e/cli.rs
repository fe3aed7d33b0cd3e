//! The command line: `check` exit codes and messages, `run` refusing bad configs.

use std::process::Command;

use crate::support::{TempDir, airlock_bin, config};

#[test]
fn check_accepts_a_valid_config() {
    let dir = TempDir::new();
    let path = dir.write("ok.toml", &config("[[route]]\nname = \"r\"\nupstream = \"u\"\n\n[upstream.u]\nservers = [\"127.0.0.1:9\"]\n"));
    let out = crate::support::airlock_command("check", &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("OK (1 listeners, 1 routes, 1 upstreams, 0 plugins)")
    );
}

#[test]
fn check_and_run_reject_a_bad_config_with_64_and_a_located_message() {
    let dir = TempDir::new();
    let path = dir.write(
        "bad.toml",
        &config("[[route]]\nname = \"r\"\nupstream = \"missing\"\n"),
    );
    for command in ["check", "run"] {
        let out = crate::support::airlock_command(command, &path);
        assert_eq!(out.status.code(), Some(64), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "bad.toml:12:12: route `r` uses upstream `missing`, which is not defined"
            ),
            "{command}: {stderr}"
        );
    }
}

#[test]
fn check_reports_a_missing_file() {
    let out = Command::new(airlock_bin())
        .args(["check", "--config", "/nonexistent/airlock.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the configuration file"));
}

#[test]
fn help_shows_examples_and_version_prints() {
    let out = Command::new(airlock_bin()).arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("airlock check --config airlock.toml"));
    let out = Command::new(airlock_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("airlock 0."));
}
