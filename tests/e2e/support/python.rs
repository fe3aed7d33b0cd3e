//! Real Python tools for the tests: a virtual environment under `target/` with the
//! packages pinned in `tests/python/requirements.txt`, made once (per machine, when it is
//! missing) with the machine's `python3`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use serde_json::Value;

use super::run;

fn tests_python() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python"))
}

/// The environment's `python`, with the requirements installed.
pub fn python() -> PathBuf {
    static READY: Mutex<bool> = Mutex::new(false);
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-python");
    let python = venv.join("bin/python");
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if *ready {
        return python;
    }
    let installed = || {
        Command::new(&python)
            .args([
                "-c",
                "import prometheus_client, websockets, opentelemetry.proto",
            ])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !installed() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
        run(Command::new(&python)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(["--require-hashes", "-r"])
            .arg(tests_python().join("requirements.txt")));
        assert!(installed(), "the Python packages did not install");
    }
    *ready = true;
    python
}

/// Run `tests/python/SCRIPT` with `args` in the environment (off the async runtime's
/// threads), require success, and read the JSON it prints.
pub async fn run_script(script: &str, args: &[String]) -> Value {
    let script = tests_python().join(script);
    let mut command = Command::new(python());
    command.arg(&script).args(args);
    let out = super::output(command).await;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Start `tests/python/SCRIPT` with `args` in the environment.
pub fn spawn_script(script: &str, args: &[&str]) -> std::process::Child {
    Command::new(python())
        .arg(tests_python().join(script))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// One sample of a metric family, as `prometheus_client`'s OpenMetrics parser read it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

/// Parse an OpenMetrics text with `prometheus_client`'s parser; panics with the parser's
/// error when the text is not valid OpenMetrics.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut child = Command::new(python())
        .arg(tests_python().join("parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition:\n{}\n--- text ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|s| Sample {
            name: s["name"].as_str().unwrap().to_string(),
            labels: s["labels"].as_object().unwrap().clone(),
            value: s["value"].as_f64().unwrap(),
        })
        .collect()
}

/// The sum of the samples called `name` whose labels include every pair of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}
