//! `cargo bench -p orchestrator --bench plugins` (part of `just bench`): the egress-guard
//! policy written in C, JavaScript and Python, run as components in our wasmtime host, beside
//! the same rule compiled natively from the Rust example, in one run on one machine.
//!
//! Measures per decision (no decision cache: every call enters the component) p50 and p99,
//! cold load (compile, empty cache) and warm load (compiled code from the cache).

use orchestrator::plugin::{Protocol, Registry, SandboxInfo};
use orchestrator::spec::{PluginGrants, PluginSpec};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CONFIG: &[(&str, &str)] = &[("ports", "80,443"), ("allow-domains", "example.com,example.org")];

fn flows() -> Vec<(IpAddr, u16, Option<&'static str>)> {
    vec![
        ("93.184.216.34".parse().unwrap(), 443, Some("api.example.com")),
        ("10.1.2.3".parse().unwrap(), 443, Some("example.com")),
        ("93.184.216.34".parse().unwrap(), 22, Some("example.com")),
        ("93.184.216.34".parse().unwrap(), 443, Some("tracker.test")),
        ("2001:db8::1".parse().unwrap(), 80, Some("www.example.org")),
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
}

fn spec(path: &PathBuf) -> PluginSpec {
    PluginSpec {
        component: path.to_string_lossy().into_owned(),
        config: CONFIG.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        memory: None,
        timeout_ms: None,
        grants: PluginGrants::default(),
        interval_secs: None,
    }
}

fn main() {
    let dir = std::env::var_os("ORCHESTRATOR_TEST_PLUGINS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let sandbox = SandboxInfo { name: "bench".into(), labels: Default::default(), image: "dir:/x".into(), isolation: "namespace".into() };
    let flows = flows();
    println!("| implementation | size | cold load (compile) | warm load (cache) | decision p50 | decision p99 | calls |");
    println!("|---|---|---|---|---|---|---|");

    // Native Rust: the same rule, no Wasm.
    let rule = egress_guard::Rule::from_config(&CONFIG.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let mut times = Vec::new();
    let mut allowed = 0;
    for i in 0..200_000 {
        let (ip, port, domain) = flows[i % flows.len()];
        let t = Instant::now();
        let r = std::hint::black_box(rule.decide(&[], std::hint::black_box(ip), port, domain));
        times.push(t.elapsed());
        allowed += r.is_ok() as usize;
    }
    times.sort();
    println!("| native Rust (same rule) | - | - | - | {:.3} us | {:.3} us | {} ({allowed} allowed) |", percentile(&times, 0.5), percentile(&times, 0.99), times.len());

    let mut fresh_rows = Vec::new();
    for (lang, calls) in [("c", 100_000), ("js", 20_000), ("py", 20_000)] {
        let path = dir.join(format!("egress-guard-{lang}.wasm"));
        if !path.exists() {
            println!("| {lang} | skipped: {} missing (`just plugins`) | | | | | |", path.display());
            continue;
        }
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let cache = tempfile::tempdir().unwrap();
        let cold = Registry::new(Some(cache.path().to_path_buf())).get(lang, &spec(&path)).unwrap();
        assert!(!cold.load.cached);
        let mut warm_times: Vec<Duration> = (0..5)
            .map(|_| {
                let p = Registry::new(Some(cache.path().to_path_buf())).get(lang, &spec(&path)).unwrap();
                assert!(p.load.cached);
                p.load.elapsed
            })
            .collect();
        warm_times.sort();
        let plugin = Registry::new(Some(cache.path().to_path_buf())).get(lang, &spec(&path)).unwrap();
        for i in 0..200 {
            let (ip, port, domain) = flows[i % flows.len()];
            plugin.decide_flow(&sandbox, Protocol::Tcp, ip, port, domain).unwrap();
        }
        let mut times = Vec::with_capacity(calls);
        let mut allowed = 0;
        for i in 0..calls {
            let (ip, port, domain) = flows[i % flows.len()];
            let t = Instant::now();
            let v = plugin.decide_flow(&sandbox, Protocol::Tcp, ip, port, domain).unwrap();
            times.push(t.elapsed());
            allowed += matches!(v.action, orchestrator::plugin::FlowAction::Allow) as usize;
        }
        times.sort();
        // The same calls, each in a fresh instance (no pool): what pooling saves.
        plugin.disable_pooling();
        let fresh_calls = (calls / 20).max(200);
        let mut fresh = Vec::with_capacity(fresh_calls);
        for i in 0..fresh_calls {
            let (ip, port, domain) = flows[i % flows.len()];
            let t = Instant::now();
            plugin.decide_flow(&sandbox, Protocol::Tcp, ip, port, domain).unwrap();
            fresh.push(t.elapsed());
        }
        fresh.sort();
        fresh_rows.push(format!("| {lang} component, fresh instance per call | {:.1} us | {:.1} us | {fresh_calls} |", percentile(&fresh, 0.5), percentile(&fresh, 0.99)));
        println!(
            "| {lang} component | {:.1} MiB | {:.0} ms | {:.1} ms | {:.2} us | {:.2} us | {calls} ({allowed} allowed) |",
            size as f64 / 1048576.0,
            cold.load.elapsed.as_secs_f64() * 1000.0,
            warm_times[warm_times.len() / 2].as_secs_f64() * 1000.0,
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
    }
    println!();
    println!("| without the instance pool | decision p50 | decision p99 | calls |");
    println!("|---|---|---|---|");
    for row in fresh_rows {
        println!("{row}");
    }
}
