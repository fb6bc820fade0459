//! `orchestrator plugin check|eval|ls`: inspect a component, ask a network policy for a
//! decision, list the applied plugins.

use crate::plugin::policy::{self, DecisionCache};
use crate::plugin::{inspect, FlowAction, Kind as PluginKind, Protocol, Registry, SandboxInfo};
use crate::reconcile::Orchestrator;
use crate::spec::{Kind, ResourceSpec};
use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// Print the kinds a component implements and the capabilities it asks for; fails for a
    /// component of no known world or one this host cannot link.
    Check { file: PathBuf },
    /// Ask an applied network-policy plugin for a decision.
    Eval {
        name: String,
        /// A new flow to HOST:PORT (HOST is an IP address, or a name resolved here and also
        /// passed to the plugin as the flow's domain).
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "dns", required_unless_present = "dns")]
        connect: Option<String>,
        /// A DNS query for NAME.
        #[arg(long, value_name = "NAME")]
        dns: Option<String>,
        /// The domain the sandbox used for this address (DNS answer or TLS SNI).
        #[arg(long)]
        domain: Option<String>,
        /// A UDP flow instead of TCP.
        #[arg(long)]
        udp: bool,
        /// DNS record type.
        #[arg(long = "type", default_value = "A")]
        record_type: String,
        /// Decide as this applied sandbox (its name, labels and image); default: an anonymous one.
        #[arg(long)]
        sandbox: Option<String>,
        /// Ask this many times and print the latency (the decision cache is bypassed).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// List applied plugins and what they implement.
    Ls,
}

pub fn run(orch: &Orchestrator, command: PluginCommand) -> Result<i32> {
    match command {
        PluginCommand::Check { file } => check(&orch.plugins, &file),
        PluginCommand::Eval { name, connect, dns, domain, udp, record_type, sandbox, repeat } => {
            eval(orch, &name, connect.as_deref(), dns.as_deref(), domain.as_deref(), udp, &record_type, sandbox.as_deref(), repeat)
        }
        PluginCommand::Ls => list(orch),
    }
}

fn check(registry: &Registry, file: &std::path::Path) -> Result<i32> {
    let host = registry.host()?;
    let report = inspect::check(&host, file)?;
    println!("component: {} ({} bytes, {} in {:.1} ms)", file.display(), report.size, if report.load.cached { "from cache" } else { "compiled" }, report.load.elapsed.as_secs_f64() * 1000.0);
    if report.kinds.is_empty() {
        println!("implements: nothing this host knows");
    } else {
        println!("implements: {}", report.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "));
    }
    for w in &report.wrong_version {
        println!("  {w}: a version this host does not implement (it implements {})", crate::plugin::ABI_PACKAGE);
    }
    for other in &report.other_exports {
        println!("  also exports {other} (ignored)");
    }
    println!("asks for:");
    for c in &report.capabilities {
        println!("  {:<44} {}", c.import, c.meaning);
    }
    if let Some(e) = &report.link_error {
        println!("cannot be loaded here: {e}");
    }
    if report.kinds.is_empty() {
        bail!(
            "{} implements none of the orchestrator's plugin worlds ({}); build it against wit/plugin.wit",
            file.display(),
            PluginKind::ALL.map(|k| k.export_name()).join(", ")
        );
    }
    if report.link_error.is_some() {
        bail!("{} imports something this host does not provide", file.display());
    }
    Ok(0)
}

fn sandbox_identity(orch: &Orchestrator, name: Option<&str>) -> Result<SandboxInfo> {
    let Some(name) = name else {
        return Ok(SandboxInfo { name: "(none)".into(), labels: Default::default(), image: String::new(), isolation: String::new() });
    };
    let stored = orch.store.resource(Kind::Sandbox, name)?.ok_or_else(|| anyhow!("no sandbox named {name:?} is applied"))?;
    let ResourceSpec::Sandbox(spec) = &stored.resource.spec else { bail!("{name} is not a sandbox") };
    let isolation = orch.store.sandbox(name)?.map(|r| r.isolation).unwrap_or_else(|| spec.isolation.as_str().to_string());
    Ok(crate::hooks::sandbox_info(&stored.resource, spec, &isolation))
}

#[allow(clippy::too_many_arguments)]
fn eval(
    orch: &Orchestrator,
    name: &str,
    connect: Option<&str>,
    dns: Option<&str>,
    domain: Option<&str>,
    udp: bool,
    record_type: &str,
    sandbox: Option<&str>,
    repeat: u32,
) -> Result<i32> {
    let spec = orch.plugin_spec(name).ok_or_else(|| anyhow!("no plugin named {name:?} is applied (see `orchestrator plugin ls`)"))?;
    let plugin = orch.plugins.get(name, &spec)?;
    let info = sandbox_identity(orch, sandbox)?;
    let plugins = [plugin.clone()];
    let mut timings = Vec::new();
    let mut verdict_line = String::new();
    let mut allowed = false;
    for _ in 0..repeat.max(1) {
        let cache = DecisionCache::default();
        let started = Instant::now();
        if let Some(query) = dns {
            match policy::decide_dns(&plugins, &cache, &info, query, record_type) {
                Ok(()) => {
                    allowed = true;
                    verdict_line = format!("allow dns {query} {record_type}");
                }
                Err((by, reason)) => {
                    allowed = false;
                    verdict_line = format!("deny dns {query} {record_type}: {reason} (by {by})");
                }
            }
        } else if let Some(target) = connect {
            let (ip, port, resolved_domain) = parse_target(target)?;
            let domain = domain.map(str::to_string).or(resolved_domain);
            let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
            let decision = policy::decide_flow(&plugins, &cache, &info, protocol, ip, port, domain.as_deref());
            let shown = match &domain {
                Some(d) => format!("{} {d} ({ip}) port {port}", if udp { "udp" } else { "tcp" }),
                None => format!("{} {ip} port {port}", if udp { "udp" } else { "tcp" }),
            };
            (allowed, verdict_line) = match decision.action {
                FlowAction::Allow => (true, format!("allow {shown}")),
                FlowAction::InterceptTls => (true, format!("intercept-tls {shown}")),
                FlowAction::Deny(reason) => (false, format!("deny {shown}: {reason}")),
            };
        }
        timings.push(started.elapsed());
    }
    println!("{verdict_line}");
    if repeat > 1 {
        timings.sort();
        let pct = |p: f64| timings[((timings.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
        println!("{} decisions: p50 {:.1} us, p99 {:.1} us", timings.len(), pct(0.5), pct(0.99));
    }
    Ok(if allowed { 0 } else { 1 })
}

/// `1.2.3.4:443`, `[::1]:53` or `name:443` (resolved here; the name becomes the domain).
fn parse_target(target: &str) -> Result<(IpAddr, u16, Option<String>)> {
    if let Ok(addr) = target.parse::<std::net::SocketAddr>() {
        return Ok((addr.ip(), addr.port(), None));
    }
    let (host, port) = target.rsplit_once(':').ok_or_else(|| anyhow!("{target:?}: expected HOST:PORT"))?;
    let port: u16 = port.parse().with_context(|| format!("{target:?}: {port:?} is not a port"))?;
    let addr = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}; pass an address and --domain {host} instead"))?
        .next()
        .ok_or_else(|| anyhow!("{host} has no address; pass an address and --domain {host}"))?;
    Ok((addr.ip(), port, Some(host.to_ascii_lowercase())))
}

fn list(orch: &Orchestrator) -> Result<i32> {
    println!("{:<24} {:<40} COMPONENT", "NAME", "IMPLEMENTS");
    for stored in orch.store.resources(Some(Kind::Plugin))? {
        let ResourceSpec::Plugin(spec) = &stored.resource.spec else { continue };
        let implements = match orch.plugins.get(&stored.resource.name, spec) {
            Ok(p) => p.kinds().iter().map(|k| k.as_str()).collect::<Vec<_>>().join(","),
            Err(e) => format!("error: {e}"),
        };
        println!("{:<24} {:<40} {}", stored.resource.name, implements, spec.component);
    }
    Ok(0)
}
