//! The library's exec round trip on a running namespace sandbox, side by side with the CLI's
//! `exec NAME -- true` on the same sandbox in the same run: what a program embedding the
//! library pays per command, against what a shell script pays.
//!
//!   cargo bench -p orchestrator --bench library -- ROOTFS [RUNS]
//!
//! ORCHESTRATOR_BIN (default target/release/orchestrator) runs the shims and is the CLI timed.
//! Prints p50 / p95 / p99 in milliseconds, as docs/BENCHMARKS.md records them.

use orchestrator::{Config, Sandbox};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    let mean = times.iter().map(Duration::as_secs_f64).sum::<f64>() / times.len() as f64 * 1000.0;
    println!("| {what} | {mean:.3} | {:.3} | {:.3} | {:.3} |", percentile(&times, 50.0), percentile(&times, 95.0), percentile(&times, 99.0));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let Some(rootfs) = args.first() else {
        eprintln!("usage: library ROOTFS [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(1000);
    let bin = std::env::var_os("ORCHESTRATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/orchestrator")));
    let data = tempfile::Builder::new().prefix("orch-bench-lib-").tempdir_in("/tmp").expect("tempdir");
    let mut config = Config::new(data.path().join("data"));
    config.binary = Some(bin.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let sandbox = rt
        .block_on(Sandbox::builder("bench").config(config).image(format!("dir:{rootfs}")).isolation(orchestrator::spec::Isolation::Namespace).create())
        .expect("creating the bench sandbox");
    let library = |runs: usize| {
        rt.block_on(async {
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                let out = sandbox.exec("true", Vec::<String>::new()).await.expect("exec");
                times.push(t.elapsed());
                assert!(out.success());
            }
            times
        })
    };
    let cli = |runs: usize| {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let st = std::process::Command::new(&bin)
                .args(["exec", "bench", "--", "true"])
                .env("ORCHESTRATOR_DATA_DIR", data.path().join("data"))
                .status()
                .expect("running the CLI");
            times.push(t.elapsed());
            assert!(st.success());
        }
        times
    };
    // Warm both paths, then interleave them in rounds so neither gets a quieter machine.
    library(50);
    cli(20);
    let (mut lib_times, mut cli_times) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        lib_times.extend(library(runs / 10));
        cli_times.extend(cli(runs / 50));
    }
    println!("| command | mean ms | p50 ms | p95 ms | p99 ms |\n|---|---|---|---|---|");
    report(&format!("library `sandbox.exec(\"true\")` ({} runs)", lib_times.len()), lib_times);
    report(&format!("CLI `{} exec bench -- true` ({} runs)", bin.display(), cli_times.len()), cli_times);
    rt.block_on(sandbox.remove()).expect("removing the bench sandbox");
}
