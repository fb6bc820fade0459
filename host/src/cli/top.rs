//! `orchestrator top`: the running sandboxes' CPU, memory, tasks and network, refreshed (or
//! once with `--once`, as a table or `-o json`). CPU is a share of one CPU over the interval,
//! from two samples of each sandbox's cgroup.

use super::Format;
use crate::plugin::Sample;
use crate::plugin::metrics::{running_targets, sample_all};
use crate::Orchestrator;
use anyhow::{anyhow, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    name: String,
    isolation: String,
    cpu_percent: f64,
    memory_bytes: u64,
    memory_limit_bytes: Option<u64>,
    memory_peak_bytes: Option<u64>,
    pids: u32,
    rx_bytes: u64,
    tx_bytes: u64,
    /// Block I/O since the sandbox started (its cgroup's counters).
    disk_read_bytes: u64,
    disk_write_bytes: u64,
}

fn samples(orch: &Orchestrator) -> Result<HashMap<String, Sample>> {
    let targets = running_targets(&orch.store, &orch.data).map_err(|e| anyhow!(e))?;
    Ok(sample_all(&targets).into_iter().map(|s| (s.sandbox.clone(), s)).collect())
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn top(orch: &Orchestrator, once: bool, format: Format, interval: Duration) -> Result<i32> {
    let interval = interval.max(Duration::from_millis(200));
    let mut before = samples(orch)?;
    let mut at = Instant::now();
    let live = !once && std::io::stdout().is_terminal();
    loop {
        std::thread::sleep(interval);
        let now = samples(orch)?;
        let elapsed_us = at.elapsed().as_micros().max(1) as f64;
        at = Instant::now();
        let mut rows: Vec<Row> = now
            .values()
            .map(|s| {
                let used = before.get(&s.sandbox).map(|b| s.cpu_usage_us.saturating_sub(b.cpu_usage_us)).unwrap_or(0);
                Row {
                    name: s.sandbox.clone(),
                    isolation: s.isolation.clone(),
                    cpu_percent: (used as f64 / elapsed_us * 1000.0).round() / 10.0,
                    memory_bytes: s.memory_bytes,
                    memory_limit_bytes: s.memory_limit_bytes,
                    memory_peak_bytes: s.memory_peak_bytes,
                    pids: s.pids,
                    rx_bytes: s.network.map(|n| n.rx_bytes).unwrap_or(0),
                    tx_bytes: s.network.map(|n| n.tx_bytes).unwrap_or(0),
                    disk_read_bytes: s.disk.map(|d| d.read_bytes).unwrap_or(0),
                    disk_write_bytes: s.disk.map(|d| d.write_bytes).unwrap_or(0),
                }
            })
            .collect();
        rows.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent).then(a.name.cmp(&b.name)));
        let mut out = std::io::stdout().lock();
        match format {
            Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?,
            Format::Yaml => write!(out, "{}", super::output::to_yaml(&serde_json::to_value(&rows)?))?,
            Format::Table => {
                if live {
                    // Home and clear: the table redraws in place.
                    write!(out, "\x1b[H\x1b[2J")?;
                }
                let mut lines = vec![["NAME", "ISOLATION", "CPU%", "MEMORY", "LIMIT", "PEAK", "TASKS", "NET RX", "NET TX", "DISK READ", "DISK WRITE"].map(String::from).to_vec()];
                for r in &rows {
                    let opt = |v: Option<u64>| v.map(bytes).unwrap_or_else(|| "-".into());
                    lines.push(vec![r.name.clone(), r.isolation.clone(), format!("{:.1}", r.cpu_percent), bytes(r.memory_bytes), opt(r.memory_limit_bytes), opt(r.memory_peak_bytes), r.pids.to_string(), bytes(r.rx_bytes), bytes(r.tx_bytes), bytes(r.disk_read_bytes), bytes(r.disk_write_bytes)]);
                }
                drop(out);
                super::output::print_table(&lines);
            }
        }
        if once {
            return Ok(0);
        }
        before = now;
    }
}
