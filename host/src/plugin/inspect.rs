//! `orchestrator plugin check FILE`: what a component implements and what it asks for, before
//! anyone points a Plugin resource at it.

use super::engine::PluginHost;
use super::loaded::{Kind, LoadInfo};
use super::PluginError;
use std::path::Path;

/// What a component's import means for its operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub import: String,
    pub meaning: &'static str,
}

#[derive(Debug)]
pub struct Report {
    pub kinds: Vec<Kind>,
    /// Exports of the orchestrator package at a version this host does not implement.
    pub wrong_version: Vec<String>,
    pub other_exports: Vec<String>,
    pub capabilities: Vec<Capability>,
    /// Why it cannot be loaded here, if it cannot (an import this host does not provide).
    pub link_error: Option<String>,
    pub load: LoadInfo,
    pub size: u64,
}

impl Report {
    /// A component that implements some kind and links.
    pub fn usable(&self) -> bool {
        !self.kinds.is_empty() && self.link_error.is_none()
    }
}

fn meaning(import: &str) -> &'static str {
    let interface = import.split('@').next().unwrap_or(import);
    match interface {
        "orchestrator:plugin/host" => "logging and its own config (always available)",
        "orchestrator:plugin/types" => "shared types (always available)",
        i if i.starts_with("wasi:filesystem/") => "files: none unless spec.grants.readOnlyDirs names directories",
        "wasi:cli/environment" => "environment variables: none unless spec.grants.env names them",
        i if i.starts_with("wasi:sockets/") => "network sockets: always denied to plugins",
        i if i.starts_with("wasi:http/") => "outgoing HTTP: only to hosts in spec.grants.httpHosts",
        i if i.starts_with("wasi:clocks/") => "clocks (always available)",
        i if i.starts_with("wasi:random/") => "random numbers (always available)",
        "wasi:cli/stdout" | "wasi:cli/stderr" => "output, kept for error messages",
        "wasi:cli/stdin" => "standard input (always empty)",
        "wasi:cli/exit" => "exit (ends the call as a failure)",
        i if i.starts_with("wasi:io/") || i.starts_with("wasi:cli/terminal") => "I/O plumbing (always available)",
        _ => "unknown to this host (the plugin will not load)",
    }
}

pub fn check(host: &PluginHost, path: &Path) -> Result<Report, PluginError> {
    let (component, load) = host.compile_only(path)?;
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let ty = component.component_type();
    let engine = host.engine();
    let (package, version) = super::ABI_PACKAGE.split_once('@').unwrap_or((super::ABI_PACKAGE, ""));
    let compatible_prefix = version.rsplit_once('.').map(|(major_minor, _)| format!("{major_minor}.")).unwrap_or_default();
    let mut report = Report { kinds: Vec::new(), wrong_version: Vec::new(), other_exports: Vec::new(), capabilities: Vec::new(), link_error: None, load, size };
    for (name, _) in ty.exports(engine) {
        let (interface, export_version) = name.split_once('@').unwrap_or((name, ""));
        let short = interface.strip_prefix(package).and_then(|i| i.strip_prefix('/'));
        let kind = Kind::ALL.into_iter().find(|k| short.is_some_and(|i| k.interfaces().contains(&i)));
        match kind {
            Some(k) if export_version.starts_with(&compatible_prefix) => {
                if !report.kinds.contains(&k) {
                    report.kinds.push(k);
                }
            }
            Some(_) => report.wrong_version.push(name.to_string()),
            None => report.other_exports.push(name.to_string()),
        }
    }
    for (name, _) in ty.imports(engine) {
        report.capabilities.push(Capability { import: name.to_string(), meaning: meaning(name) });
    }
    report.link_error = host.link_check(&component).err();
    Ok(report)
}
