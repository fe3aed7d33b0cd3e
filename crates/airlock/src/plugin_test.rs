//! `airlock plugin test`: run one plugin, or a route's chain, on a request given on the
//! command line, and print what it decided as JSON with the time it took.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use airlock_plugins::chain::{Allowed, offered_subprotocols};
use airlock_plugins::{Chain, ChainOutcome, Handshake, Plugin, PluginSettings};
use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::cli::PluginTestArgs;

pub fn run(args: &PluginTestArgs) -> anyhow::Result<()> {
    let (chain, route) = match &args.wasm {
        Some(wasm) => (
            single_plugin(wasm, args.config.as_deref().unwrap_or("{}"))?,
            "test".to_string(),
        ),
        None => route_chain(args)?,
    };
    let request = handshake(args, &route)?;
    // The calls run inside a Tokio runtime, as the proxy runs them, so that a plugin
    // that works here works there: WASI's blocking writes (a `print` to stdout) cannot
    // run on a runtime's thread and fail the call in both.
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let (outcome, first_us, warm_us) = runtime.block_on(async {
        let started = Instant::now();
        let outcome = chain.run(request.clone());
        let first_us = started.elapsed().as_secs_f64() * 1e6;
        // Again on the now-warm instances: what a handshake costs in steady state.
        let started = Instant::now();
        let _ = chain.run(request);
        (outcome, first_us, started.elapsed().as_secs_f64() * 1e6)
    });
    let mut out = outcome_json(outcome);
    out["first_call_us"] = json!(round(first_us));
    out["warm_call_us"] = json!(round(warm_us));
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn round(us: f64) -> f64 {
    (us * 10.0).round() / 10.0
}

fn single_plugin(wasm: &std::path::Path, config: &str) -> anyhow::Result<Chain> {
    serde_json::from_str::<Value>(config).context("--config is not valid JSON")?;
    let settings = PluginSettings {
        name: wasm
            .file_stem()
            .map_or("plugin".into(), |s| s.to_string_lossy().into_owned()),
        timeout: airlock_config::DEFAULT_PLUGIN_TIMEOUT.get(),
        max_memory: None,
        instances: 1,
        on_error: airlock_config::OnError::Deny,
        config_json: config.to_string(),
    };
    let plugin = Plugin::load_alone(wasm, settings)?;
    Ok(Chain::new(vec![Arc::new(plugin)]))
}

fn route_chain(args: &PluginTestArgs) -> anyhow::Result<(Chain, String)> {
    let (Some(config), Some(route)) = (&args.config, &args.route) else {
        bail!("give --wasm FILE, or --config airlock.toml with --route NAME");
    };
    let loaded = airlock_config::load_file(std::path::Path::new(config))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(r) = loaded
        .config
        .routes
        .iter()
        .find(|r| r.name.get_ref() == route)
    else {
        let names: Vec<_> = loaded
            .config
            .routes
            .iter()
            .map(|r| r.name.get_ref().as_str())
            .collect();
        bail!(
            "no route named `{route}` in {config} (routes: {})",
            names.join(", ")
        );
    };
    let plugins = airlock_plugins::load_all(&loaded)?;
    let chain = Chain::new(
        r.plugins
            .iter()
            .map(|p| plugins[p.get_ref()].clone())
            .collect(),
    );
    Ok((chain, route.clone()))
}

fn handshake(args: &PluginTestArgs, route: &str) -> anyhow::Result<Handshake<'static>> {
    let uri: http::Uri = args
        .url
        .parse()
        .with_context(|| format!("{:?} is not a URL", args.url))?;
    let mut headers = Vec::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("header {h:?} is not `Name: value`"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let find = |headers: &[(String, String)], name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| find(&headers, "host"))
        .unwrap_or_default();
    if find(&headers, "host").is_none() && !authority.is_empty() {
        headers.insert(0, ("host".into(), authority.clone()));
    }
    let find = |name: &str| find(&headers, name);
    let offer = find("sec-websocket-protocol");
    let subprotocols = offered_subprotocols(offer.as_deref().into_iter())
        .into_iter()
        .map(|s| Cow::Owned(s.to_string()))
        .collect();
    Ok(Handshake {
        id: "plugin-test".into(),
        method: args.method.to_ascii_uppercase().into(),
        scheme: uri.scheme_str().unwrap_or("http").to_string().into(),
        authority: authority.into(),
        path: uri.path().to_string().into(),
        query: uri.query().map(|q| q.to_string().into()),
        upgrade: find("upgrade").map(|u| u.to_ascii_lowercase().into()),
        headers: headers
            .into_iter()
            .map(|(n, v)| (n.into(), v.into()))
            .collect(),
        client_addr: args.client.clone().into(),
        tls: None,
        route: route.to_string().into(),
        subprotocols,
    })
}

fn pairs<K: AsRef<str>, V: AsRef<str>>(list: &[(K, V)]) -> Value {
    Value::Array(
        list.iter()
            .map(|(k, v)| json!([k.as_ref(), v.as_ref()]))
            .collect(),
    )
}

fn outcome_json(outcome: ChainOutcome) -> Value {
    match outcome {
        ChainOutcome::Allowed(allowed) => allowed_json(&allowed),
        ChainOutcome::Rejected { plugin, rejection } => json!({
            "verdict": "reject",
            "plugin": &*plugin,
            "status": rejection.status,
            "body": rejection.body,
            "headers": pairs(&rejection.headers),
        }),
        ChainOutcome::Failed { plugin, error } => json!({
            "verdict": "error",
            "plugin": &*plugin,
            "error": error.to_string(),
        }),
    }
}

fn allowed_json(a: &Allowed) -> Value {
    let failed: Vec<_> = a
        .failed_open
        .iter()
        .map(|(p, e)| json!({ "plugin": &**p, "error": e.to_string() }))
        .collect();
    json!({
        "verdict": "allow",
        "request": {
            "path": a.request.path,
            "query": a.request.query,
            "headers": pairs(&a.request.headers),
        },
        "upstream": a.upstream,
        "affinity_key": a.affinity_key,
        "subprotocol": a.subprotocol,
        "response_headers": pairs(&a.response_headers),
        "attributes": pairs(&a.attributes),
        "failed_open": failed,
    })
}
