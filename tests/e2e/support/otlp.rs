//! A real OTLP/HTTP receiver (`tests/python/otlp_receiver.py`, decoding with the
//! OpenTelemetry project's `opentelemetry-proto` package): what it received, as JSON.

use std::io::{BufRead as _, BufReader};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::python::spawn_script;

pub struct Receiver {
    child: Child,
    pub port: u16,
    exports: Arc<Mutex<Vec<Value>>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    /// Start one: `ok` answers 200, `fail` 500, `hang` never.
    pub fn start(mode: &str) -> Self {
        let mut child = spawn_script("otlp_receiver.py", &[mode]);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        let port = u16::try_from(first["port"].as_u64().unwrap()).unwrap();
        let exports = Arc::new(Mutex::new(Vec::new()));
        let sink = exports.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let record: Value = serde_json::from_str(&line).unwrap();
                sink.lock().unwrap().push(record["export"].clone());
            }
        });
        Self {
            child,
            port,
            exports,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every export request received so far.
    pub fn exports(&self) -> Vec<Value> {
        self.exports.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        self.exports()
            .iter()
            .flat_map(|e| e["spans"].as_array().unwrap().clone())
            .collect()
    }

    /// Wait (at most 10 s) until the spans received satisfy `done`; the spans.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        for _ in 0..200 {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the receiver never got {what}; it has {:#?}", self.spans());
    }
}
