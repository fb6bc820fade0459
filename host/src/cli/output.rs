//! Read-only commands: `get` (table, JSON, YAML), `describe` and `logs`.

use super::{Format, KindArg};
use crate::paths::shim_alive;
use crate::reconcile::Orchestrator;
use crate::spec::quantity::format_bytes;
use crate::spec::{self, Kind, ResourceSpec};

use crate::view::ResourceView;
use anyhow::{bail, Result};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

pub fn get(orch: &mut Orchestrator, kind: Option<KindArg>, name: Option<&str>, format: Format) -> Result<i32> {
    let kind = match kind.unwrap_or(KindArg::Sandboxes) {
        KindArg::Sandboxes => Some(Kind::Sandbox),
        KindArg::Volumes if name.is_none() => return super::volumes::list(orch, format),
        KindArg::Volumes => Some(Kind::Volume),
        KindArg::Plugins => Some(Kind::Plugin),
        KindArg::All => None,
    };
    let views: Vec<ResourceView> = orch.views(kind)?.into_iter().filter(|v| name.is_none_or(|n| v.name == n)).collect();
    if let (Some(n), true) = (name, views.is_empty()) {
        bail!("no resource named {n:?}");
    }
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&views)?),
        Format::Yaml => print!("{}", to_yaml(&serde_json::to_value(&views)?)),
        Format::Table => {
            let mut lines = vec![["NAME", "KIND", "STATUS", "ISOLATION", "IMAGE", "SOURCE", "CREATED"].map(String::from).to_vec()];
            for v in views {
                lines.push(vec![v.name, v.kind, v.status, v.isolation, v.image, v.source, v.created_at]);
            }
            print_table(&lines);
        }
    }
    Ok(0)
}

/// `ps`: sandboxes, running (and starting) ones unless `all`.
pub fn ps(orch: &mut Orchestrator, all: bool, format: Format) -> Result<i32> {
    let views: Vec<ResourceView> =
        orch.list()?.into_iter().filter(|v| all || matches!(v.status.as_str(), "Running" | "Pending")).collect();
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&views)?),
        Format::Yaml => print!("{}", to_yaml(&serde_json::to_value(&views)?)),
        Format::Table => {
            let mut lines = vec![["NAME", "STATUS", "ISOLATION", "IMAGE", "INSTANCE", "RESTARTS", "SOURCE"].map(String::from).to_vec()];
            for v in views {
                let (instance, restarts) = v.instance.map(|i| (i.instance, i.restarts.to_string())).unwrap_or_else(|| ("-".into(), "-".into()));
                lines.push(vec![v.name, v.status, v.isolation, v.image, instance, restarts, v.source]);
            }
            print_table(&lines);
        }
    }
    Ok(0)
}

/// `inspect NAME`: the sandbox's view as one JSON object.
pub fn inspect(orch: &mut Orchestrator, name: &str) -> Result<i32> {
    let v = match orch.get(name) {
        Err(crate::Error::NotFound { .. }) => bail!("no sandbox named {name:?} (see `orchestrator ps -a`)"),
        other => other?,
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(0)
}

pub(super) fn print_table(lines: &[Vec<String>]) {
    let cols = lines.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..cols).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = std::io::stdout().lock();
    for l in lines {
        let cells: Vec<String> = l.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
}

/// JSON to YAML for `-o yaml` (the same document `-o json` prints).
pub(super) fn to_yaml(v: &Value) -> String {
    fn conv(v: &Value) -> yaml_rust2::Yaml {
        use yaml_rust2::Yaml;
        match v {
            Value::Null => Yaml::Null,
            Value::Bool(b) => Yaml::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Integer(i),
                None => Yaml::Real(n.to_string()),
            },
            Value::String(s) => Yaml::String(s.clone()),
            Value::Array(a) => Yaml::Array(a.iter().map(conv).collect()),
            Value::Object(o) => Yaml::Hash(o.iter().map(|(k, v)| (Yaml::String(k.clone()), conv(v))).collect()),
        }
    }
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    let _ = emitter.dump(&conv(v));
    out.push('\n');
    out
}

pub fn describe(orch: &mut Orchestrator, name: &str) -> Result<i32> {
    let Some(res) = orch.store.resource(Kind::Sandbox, name)? else {
        bail!("no sandbox named {name:?} (see `orchestrator get`)");
    };
    let row = match orch.store.sandbox(name)? {
        Some(r) => Some(match orch.try_lock_object(name) {
            Some(_l) => orch.refresh(&r)?,
            None => orch.observe(&r),
        }),
        None => None,
    };
    let ResourceSpec::Sandbox(spec) = &res.resource.spec else { bail!("{name} is not a sandbox") };
    let mut out = std::io::stdout().lock();
    writeln!(out, "Name:          {name}")?;
    writeln!(out, "Source:        {} ({})", res.source, res.origin)?;
    writeln!(out, "Created:       {}", res.created_at)?;
    writeln!(out, "Image:         {}", spec.image)?;
    writeln!(out, "Command:       {}", spec.command.as_ref().filter(|c| !c.is_empty()).map(|c| c.join(" ")).unwrap_or_else(|| "(none: the agent waits for exec)".into()))?;
    writeln!(out, "Restart:       {:?}", spec.restart_policy)?;
    writeln!(
        out,
        "Resources:     cpus={} memory={} pids={} disk={}",
        spec.cpus.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
        spec.memory.map(format_bytes).unwrap_or_else(|| "-".into()),
        spec.limits.pids.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        format_bytes(spec.disk_bytes()) + if spec.writable_layer.is_disk() { "" } else { " (in memory)" }
    )?;
    if !res.resource.labels.is_empty() {
        let labels: Vec<String> = res.resource.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "Labels:        {}", labels.join(", "))?;
    }
    for (i, v) in spec.volumes.iter().enumerate() {
        let source = match &v.source {
            spec::MountSource::Volume(n) => format!("volume {n}"),
            spec::MountSource::HostPath(p) => format!("host {p}"),
            spec::MountSource::Tmpfs(size) => format!("tmpfs {}", format_bytes(*size)),
        };
        writeln!(out, "{:<15}{} on {}{}", if i == 0 { "Volumes:" } else { "" }, source, v.mount_path, if v.read_only { " (read-only)" } else { "" })?;
    }
    match &row {
        Some(r) => {
            writeln!(out, "Status:        {}", r.status.as_str())?;
            writeln!(out, "Isolation:     {}", r.isolation)?;
            writeln!(out, "Instance:      {} (shim pid {})", r.instance, r.shim_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()))?;
            writeln!(out, "Started:       {}", r.started_at.as_deref().unwrap_or("-"))?;
            if let Some(f) = &r.finished_at {
                writeln!(out, "Finished:      {f}")?;
            }
            writeln!(out, "Restarts:      {}", r.restarts)?;
            if let Some(c) = r.exit_code {
                writeln!(out, "Last exit:     {c}")?;
            }
            if let Some(m) = &r.message {
                writeln!(out, "Message:       {m}")?;
            }
            if r.status == crate::store::Status::Running {
                let target = crate::plugin::metrics::Target {
                    sandbox: name.to_string(),
                    instance: r.instance.clone(),
                    dir: orch.instance_dir(r),
                    isolation: r.isolation.clone(),
                    labels: Default::default(),
                    memory_limit: spec.memory,
                };
                if let Some(s) = crate::plugin::metrics::sample(&target) {
                    let disk = s.disk.map(|d| format!("; disk read {}, written {}", format_bytes(d.read_bytes), format_bytes(d.write_bytes))).unwrap_or_default();
                    writeln!(out, "Usage:         cpu {:.2} s, memory {} (peak {}), {} tasks{disk}", s.cpu_usage_us as f64 / 1e6, format_bytes(s.memory_bytes), s.memory_peak_bytes.map(format_bytes).unwrap_or_else(|| "-".into()), s.pids)?;
                }
            }
            if let Some(n) = orch.network_counters(r) {
                writeln!(out, "Network:       policy {}; rx {} in {} packets, tx {} in {} packets", spec.network.policy.as_str(), format_bytes(n.rx_bytes), n.rx_packets, format_bytes(n.tx_bytes), n.tx_packets)?;
                writeln!(out, "Flows:         {} open, {} allowed, {} denied; DNS {} queries, {} NXDOMAIN", n.open_flows, n.flows_allowed, n.flows_denied, n.dns_queries, n.dns_nxdomain)?;
            }
        }
        None => writeln!(out, "Status:        Pending (no instance yet)")?,
    }
    writeln!(out, "Events:")?;
    for e in orch.store.events(Some(&format!("Sandbox/{name}")), 15)? {
        writeln!(out, "  {}  {:<14} {}", e.at, e.reason, e.message)?;
    }
    Ok(0)
}

/// `orchestrator events [NAME]`: the newest events, oldest first.
pub fn events(orch: &Orchestrator, name: Option<&str>, format: super::Format, limit: usize) -> Result<i32> {
    let events = match orch.events(name, limit) {
        Err(crate::Error::NotFound { name, .. }) => bail!("no sandbox named {name:?} (see `orchestrator get`)"),
        other => other?,
    };
    let mut out = std::io::stdout().lock();
    match format {
        super::Format::Table => {
            for e in &events {
                writeln!(out, "{}  {:<24} {:<14} {}", e.at, e.object, e.reason, e.message)?;
            }
        }
        super::Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(&events)?)?,
        super::Format::Yaml => write!(out, "{}", to_yaml(&serde_json::to_value(&events)?))?,
    }
    Ok(0)
}

/// The main process's output, or (`console`) a microVM's console log.
pub fn logs(orch: &Orchestrator, name: &str, follow: bool, tail: Option<usize>, console: bool) -> Result<i32> {
    let Some(row) = orch.store.sandbox(name)? else { bail!("no sandbox named {name:?}") };
    let dir = orch.instance_dir(&row);
    if console && row.isolation != "microvm" {
        bail!("{name} is a {} sandbox; only microVMs have a console (drop --console)", row.isolation);
    }
    let path = if console { dir.console_log() } else { dir.main_log() };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(_) if !follow => return Ok(0),
        Err(e) => bail!("{}: {e}", path.display()),
    };
    let mut out = std::io::stdout().lock();
    let mut data = Vec::new();
    file.read_to_end(&mut data)?;
    let start = match tail {
        Some(n) => {
            let body = data.strip_suffix(b"\n").unwrap_or(&data);
            let mut newlines = body.iter().enumerate().rev().filter(|(_, b)| **b == b'\n').map(|(i, _)| i);
            if n == 0 { data.len() } else { newlines.nth(n - 1).map(|i| i + 1).unwrap_or(0) }
        }
        None => 0,
    };
    out.write_all(&data[start..])?;
    out.flush()?;
    if !follow {
        return Ok(0);
    }
    let mut pos = data.len() as u64;
    loop {
        let alive = shim_alive(&dir);
        file.seek(SeekFrom::Start(pos))?;
        let mut chunk = Vec::new();
        file.read_to_end(&mut chunk)?;
        if !chunk.is_empty() {
            pos += chunk.len() as u64;
            out.write_all(&chunk)?;
            out.flush()?;
        } else if !alive {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
