//! TLS interception's cost, side by side in one run: the same HTTPS requests from Python in a
//! Debian namespace sandbox to the same server of a test internet, once intercepted (the
//! sandbox's CA, the proxy in the shim, a secret substituted on the way) and once spliced (a
//! `tls.bypass` name, the test CA pinned by the client). Request latency on a kept-alive
//! connection and with a new connection per request (p50 / p99), and the throughput of one
//! download.
//!
//!   cargo bench -p orchestrator --bench tls -- [REQUESTS] [DOWNLOAD_MB]
//!
//! Every packet stays in the namespaces this bench creates (tests/common/testnet.rs). Prints
//! the table docs/BENCHMARKS.md records.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/https.rs"]
mod https;
#[path = "../common/testnet.rs"]
mod testnet;

use common::*;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Run {
    keepalive: Vec<f64>,
    fresh: Vec<f64>,
    mbps: f64,
}

fn measure(env: &Env, host: &str, cafile: &str, requests: usize, bytes: usize) -> Run {
    let out = env.ok(&["exec", "bench", "--", "python3", "/bench/client.py", host, cafile, &requests.to_string(), &bytes.to_string()]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output {out:?}: {e}"));
    let list = |k: &str| {
        let mut l: Vec<f64> = v[k].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        l.sort_by(f64::total_cmp);
        l
    };
    Run { keepalive: list("keepalive"), fresh: list("fresh"), mbps: v["mbps"].as_f64().unwrap() }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let requests: usize = args.first().and_then(|r| r.parse().ok()).unwrap_or(1000);
    let mb: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(100);
    let net = testnet::TestNet::new("tlsbench");
    let servers = https::HttpsServers::start(&net);
    let mut env = Env::new();
    env.netns = Some(net.orch_ns());
    let ca = env.file("upstream-ca.pem", &servers.ca_pem);
    env.extra_env.push(("ORCHESTRATOR_DNS_UPSTREAM".into(), format!("{}:53", testnet::DNS)));
    env.extra_env.push(("ORCHESTRATOR_UPSTREAM_CA".into(), ca.display().to_string()));
    env.extra_env.push(("BENCH_TOKEN".into(), "bench-token-value".into()));
    let client = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/bench/tls/client.py")).unwrap();
    let yaml = format!(
        "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata:\n  name: bench\nspec:\n  image: dir:{}\n  isolation: namespace\n  cpus: 2\n  command: [sleep, infinity]\n  secrets:\n    - {{ env: TOKEN, provider: env, key: BENCH_TOKEN, allowHosts: [web.test] }}\n  network:\n    tls: {{ bypass: [pinned.test] }}\n  patches:\n    - {{ op: write, path: /bench/client.py, content: {} }}\n    - {{ op: write, path: /bench/testca.pem, content: {} }}\n",
        debian_rootfs().display(),
        serde_json::to_string(&client).unwrap(),
        serde_json::to_string(&servers.ca_pem).unwrap()
    );
    let path = env.file("bench.yaml", &yaml);
    env.ok(&["apply", "-f", path.to_str().unwrap()]);
    let bytes = mb * 1_000_000;
    // Alternated, twice each, so neither side has the machine's better minute.
    let mut runs: Vec<(&str, Run)> = Vec::new();
    for _ in 0..2 {
        runs.push(("intercepted", measure(&env, "web.test", "-", requests, bytes)));
        runs.push(("spliced", measure(&env, "pinned.test", "/bench/testca.pem", requests, bytes)));
    }
    println!("| path | request p50 ms | request p99 ms | new connection p50 ms | new connection p99 ms | {mb} MB download MB/s |");
    println!("|---|---|---|---|---|---|");
    for (name, r) in &runs {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} |",
            percentile(&r.keepalive, 50.0),
            percentile(&r.keepalive, 99.0),
            percentile(&r.fresh, 50.0),
            percentile(&r.fresh, 99.0),
            r.mbps
        );
    }
}
