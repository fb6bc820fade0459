//! `orchestrator plugin check|eval|ls`: inspect a component, ask a network policy for a
//! decision, list the applied plugins.

use crate::plugin::evaluate::{Evaluator, Question};
use crate::plugin::{inspect, Kind as PluginKind, Protocol, Registry};
use crate::reconcile::Orchestrator;
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
    let evaluator = Evaluator::new(orch, name, sandbox).map_err(|e| match e.kind() {
        crate::ErrorKind::NotFound if orch.plugin_spec(name).is_none() => anyhow!("no plugin named {name:?} is applied (see `orchestrator plugin ls`)"),
        crate::ErrorKind::NotFound => anyhow!("no sandbox named {:?} is applied", sandbox.unwrap_or_default()),
        _ => anyhow!("{e}"),
    })?;
    let question = match (dns, connect) {
        (Some(query), _) => Question::Dns { name: query.to_string(), record_type: record_type.to_string() },
        (None, Some(target)) => {
            let (ip, port, resolved_domain) = parse_target(target)?;
            Question::Flow { protocol: if udp { Protocol::Udp } else { Protocol::Tcp }, ip, port, domain: domain.map(str::to_string).or(resolved_domain) }
        }
        (None, None) => bail!("give --connect HOST:PORT or --dns NAME"),
    };
    let mut timings = Vec::new();
    let mut verdict = None;
    for _ in 0..repeat.max(1) {
        let started = Instant::now();
        verdict = Some(evaluator.ask(&question));
        timings.push(started.elapsed());
    }
    let verdict = verdict.ok_or_else(|| anyhow!("no decision"))?;
    println!("{}", verdict.summary);
    if repeat > 1 {
        timings.sort();
        let pct = |p: f64| timings[((timings.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
        println!("{} decisions: p50 {:.1} us, p99 {:.1} us", timings.len(), pct(0.5), pct(0.99));
    }
    Ok(if verdict.allowed { 0 } else { 1 })
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
    for p in orch.plugin_views()? {
        let implements = match &p.error {
            Some(e) => format!("error: {e}"),
            None => p.implements.join(","),
        };
        println!("{:<24} {:<40} {}", p.name, implements, p.component);
    }
    Ok(0)
}
