//! What one plugin call costs: each example plugin on a warm instance (p50/p99/p99.9) and
//! on a fresh one (instantiate + configure + call), and whole chains as the proxy runs
//! them. A benchmark, not a test: it prints figures and asserts nothing about speed.
//!
//!     cargo bench -p airlock --bench plugin_call
//!
//! Set `PLUGIN_BENCH_CALLS` to change the number of warm calls per row (default 20000),
//! and `PLUGIN_BENCH_ONLY` to run only the rows whose label contains its text.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_plugins::{
    Chain, ChainOutcome, Handshake, OnError, Plugin, PluginHost, PluginSettings, Verdict,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac as _};

const SECRET: &str = "bench-secret-that-is-32-bytes-ok";
const FRESH_CALLS: usize = 300;

fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("AIRLOCK_PLUGIN_DIR"))
}

fn token() -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = format!(r#"{{"sub":"alice","aud":"chat","exp":{exp}}}"#);
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// A Socket.IO WebSocket handshake as Chromium sends it, with a bearer token; every
/// example plugin admits it.
fn browser_handshake() -> Handshake<'static> {
    let headers = [
        ("host", "chat.example.com"),
        ("connection", "Upgrade"),
        ("pragma", "no-cache"),
        ("cache-control", "no-cache"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36",
        ),
        ("upgrade", "websocket"),
        ("origin", "https://app.example.com"),
        ("sec-websocket-version", "13"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("cookie", "theme=dark; io=lv_VI97HAXpY6yYWAAAC"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        (
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        ),
        ("authorization", &format!("Bearer {}", token())),
    ];
    Handshake {
        id: "0123456789abcdef".into(),
        method: "GET".into(),
        scheme: "http".into(),
        authority: "chat.example.com".into(),
        path: "/socket.io/".into(),
        query: Some("EIO=4&transport=websocket&sid=lv_VI97HAXpY6yYWAAAC".into()),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string().into(), v.to_string().into()))
            .collect(),
        client_addr: "203.0.113.7".into(),
        tls: None,
        route: "chat".into(),
        upgrade: Some("websocket".into()),
        subprotocols: Vec::new(),
    }
}

struct Example {
    label: &'static str,
    file: &'static str,
    config: String,
}

fn examples() -> Vec<Example> {
    vec![
        Example {
            label: "no-op (test-guest)",
            file: "test_guest.wasm",
            config: "{}".into(),
        },
        Example {
            label: "origin-allowlist",
            file: "origin_allowlist.wasm",
            config: r#"{"allow":["https://app.example.com","https://*.example.org"]}"#.into(),
        },
        Example {
            label: "socketio",
            file: "socketio.wasm",
            config: "{}".into(),
        },
        Example {
            label: "token-auth",
            file: "token_auth.wasm",
            config: format!(r#"{{"secret":"{SECRET}","audience":"chat"}}"#),
        },
    ]
}

fn load(host: &PluginHost, example: &Example) -> Arc<Plugin> {
    let settings = PluginSettings {
        name: example.label.into(),
        timeout: Duration::from_millis(50),
        max_memory: Some(16 << 20),
        instances: 2,
        on_error: OnError::Deny,
        config_json: example.config.clone(),
    };
    let plugin = Plugin::load(host, &plugin_dir().join(example.file), settings)
        .unwrap_or_else(|e| panic!("{}: {e}", example.label));
    Arc::new(plugin)
}

/// One line of the table: a labelled call, timed in rounds interleaved with the other
/// rows so that a noisy moment on the machine does not land on one row only.
struct Row<'a> {
    label: String,
    per_round: usize,
    call: Box<dyn FnMut() + 'a>,
    times: Vec<Duration>,
}

impl<'a> Row<'a> {
    fn new(label: impl Into<String>, calls: usize, call: impl FnMut() + 'a) -> Self {
        Self {
            label: label.into(),
            per_round: calls.div_ceil(ROUNDS),
            call: Box::new(call),
            times: Vec::new(),
        }
    }

    fn round(&mut self) {
        for _ in 0..self.per_round / 20 {
            (self.call)();
        }
        for _ in 0..self.per_round {
            let started = Instant::now();
            (self.call)();
            self.times.push(started.elapsed());
        }
    }
}

const ROUNDS: usize = 5;

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn print(row: &mut Row) {
    let times = &mut row.times;
    times.sort_unstable();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        row.label,
        times.len(),
        us(quantile(times, 0.5)),
        us(quantile(times, 0.99)),
        us(quantile(times, 0.999)),
        us(mean),
    );
}

fn expect_allow(label: &str, verdict: Verdict) {
    if let Verdict::Reject(r) = verdict {
        panic!(
            "{label} rejected the benchmark request: {} {}",
            r.status, r.body
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would too. Nothing to parse.
    let calls: usize = std::env::var("PLUGIN_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    if let Ok(list) = std::env::var("PLUGIN_BENCH_LANGS") {
        languages(&list, calls);
        return;
    }
    let host = PluginHost::new(16, 16 << 20, None).expect("engine");
    let request = browser_handshake();
    let mut examples = examples();
    // A plugin built for interface 0.1, which is sent the request as a record: with
    // every header, and with none (the fixed cost of a 0.1 call).
    examples.push(Example {
        label: "0.1 record, all headers (compat-v0-1)",
        file: "compat_v0_1.wasm",
        config: "{}".into(),
    });
    examples.push(Example {
        label: "0.1 record, no headers wanted (compat-v0-1)",
        file: "compat_v0_1.wasm",
        config: r#"{"wanted_headers":[]}"#.into(),
    });
    let plugins: Vec<_> = examples.iter().map(|e| (e.label, load(&host, e))).collect();
    for (label, plugin) in &plugins {
        expect_allow(label, plugin.call(&request).expect("call"));
    }

    let mut rows = Vec::new();
    for (label, plugin) in &plugins {
        let request = request.clone();
        rows.push(Row::new(format!("{label}, warm"), calls, move || {
            std::hint::black_box(plugin.call(&request).expect("call"));
        }));
    }
    for (label, plugin) in &plugins[..4] {
        let request = request.clone();
        rows.push(Row::new(
            format!("{label}, fresh instance"),
            FRESH_CALLS,
            move || {
                std::hint::black_box(plugin.call_fresh(&request).expect("call"));
            },
        ));
    }
    let pick = |names: &[&str]| {
        Chain::new(
            names
                .iter()
                .map(|n| plugins.iter().find(|(l, _)| l == n).unwrap().1.clone())
                .collect(),
        )
    };
    for names in [
        &["origin-allowlist", "socketio"][..],
        &["origin-allowlist", "socketio", "token-auth"][..],
    ] {
        let chain = pick(names);
        let request = request.clone();
        rows.push(Row::new(
            format!("chain: {}", names.join(" + ")),
            calls,
            move || {
                let outcome = chain.run(request.clone());
                assert!(matches!(outcome, ChainOutcome::Allowed(_)));
            },
        ));
    }

    // PLUGIN_BENCH_ONLY=text keeps the rows whose label contains it (for profiling).
    if let Ok(only) = std::env::var("PLUGIN_BENCH_ONLY") {
        rows.retain(|row| row.label.contains(&only));
    }
    for _ in 0..ROUNDS {
        for row in &mut rows {
            row.round();
        }
    }
    println!(
        "Plugin call times in µs: {calls} warm calls and {FRESH_CALLS} fresh ones per row, in {ROUNDS} interleaved rounds\n"
    );
    println!("| call | n | p50 | p99 | p99.9 | mean |");
    println!("|---|---|---|---|---|---|");
    for row in &mut rows {
        print(row);
    }
}

/// Instances created to weigh one (`PLUGIN_BENCH_LANGS`).
const WEIGHED: usize = 16;

/// The same plugin in several languages (`PLUGIN_BENCH_LANGS="rust=a.wasm,js=b.wasm"`, as
/// `bench/plugin-languages.sh` builds them from `airlock plugin new`): what each costs
/// to load, to hold and to call, with the admitted origin the template lists.
fn languages(list: &str, calls: usize) {
    let config = r#"{"allow":["https://app.example.com"]}"#;
    println!(
        "| plugin | component | compiled | load: compile + first instance | memory image (shared) | memory per instance | fresh instance: create, configure, call p50 | warm call p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let request = browser_handshake();
    for entry in list.split(',') {
        let (label, path) = entry.split_once('=').expect("LABEL=PATH");
        let path = PathBuf::from(path);
        let settings = PluginSettings {
            name: label.into(),
            timeout: Duration::from_secs(1),
            max_memory: None,
            instances: WEIGHED + 1,
            on_error: OnError::Deny,
            config_json: config.into(),
        };
        // Compiled afresh into an empty cache, whose entry is the machine code's size.
        let cache_dir =
            std::env::temp_dir().join(format!("airlock-bench-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache_dir);
        std::fs::create_dir_all(&cache_dir).unwrap();
        let cache = airlock_plugins::DiskCache::open(&cache_dir).expect("cache");
        let host = PluginHost::new(WEIGHED + 1, 64 << 20, Some(cache)).expect("engine");
        let started = Instant::now();
        let plugin =
            Plugin::load(&host, &path, settings).unwrap_or_else(|e| panic!("{label}: {e}"));
        let load = started.elapsed();
        let compiled: u64 = std::fs::read_dir(&cache_dir)
            .unwrap()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        let _ = std::fs::remove_dir_all(&cache_dir);
        expect_allow(label, plugin.call(&request).expect("call"));

        let before = private_dirty_kib();
        plugin.prewarm(WEIGHED + 1).expect("instances");
        let per_instance = (private_dirty_kib() - before) / WEIGHED as f64;

        let mut fresh = Row::new("fresh", FRESH_CALLS, || {
            std::hint::black_box(plugin.call_fresh(&request).expect("call"));
        });
        let mut warm = Row::new("warm", calls, || {
            std::hint::black_box(plugin.call(&request).expect("call"));
        });
        for _ in 0..ROUNDS {
            fresh.round();
            warm.round();
        }
        fresh.times.sort_unstable();
        warm.times.sort_unstable();
        println!(
            "| {label} | {:.1} MB | {:.1} MB | {:.2} s | {:.1} MiB | {:.2} MiB | {:.0} µs | {:.1} µs | {:.1} µs |",
            std::fs::metadata(&path).unwrap().len() as f64 / 1e6,
            compiled as f64 / 1e6,
            load.as_secs_f64(),
            plugin.memory_starts_at() as f64 / f64::from(1 << 20),
            per_instance / 1024.0,
            us(quantile(&fresh.times, 0.5)),
            us(quantile(&warm.times, 0.5)),
            us(quantile(&warm.times, 0.99)),
        );
    }
}

/// The process's private dirty memory, in KiB: what instances write (their heaps, the
/// pages of their memory images they change) and do not share.
fn private_dirty_kib() -> f64 {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").expect("Linux");
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Private_Dirty:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Private_Dirty")
}
