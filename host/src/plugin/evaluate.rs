//! Asking one applied network-policy plugin about a flow or a DNS query, outside any sandbox:
//! what `plugin eval` prints and `POST /v1/plugins/{name}/eval` answers. The decision is the
//! one a sandbox's shim would get (the same calls, fail-closed), without the decision cache.

use super::policy::{self, DecisionCache};
use super::{FlowAction, Protocol, SandboxInfo};
use crate::error::{Error, Result};
use crate::reconcile::Orchestrator;
use crate::spec::{Kind, ResourceSpec};
use serde::Serialize;
use std::net::IpAddr;

/// What to ask about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// A new flow to `ip:port`; `domain` is the name the sandbox used for it (DNS or SNI).
    Flow { protocol: Protocol, ip: IpAddr, port: u16, domain: Option<String> },
    /// A DNS query.
    Dns { name: String, record_type: String },
}

/// The plugin's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// True for allow and intercept-tls.
    pub allowed: bool,
    /// `allow`, `deny` or `intercept-tls`.
    pub action: String,
    /// Why, for a deny.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The plugin that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// One line, as `plugin eval` prints it.
    pub summary: String,
}

/// The identity a decision is made for: an applied sandbox's (name, labels, image,
/// isolation), or an anonymous one.
pub fn sandbox_identity(orch: &Orchestrator, name: Option<&str>) -> Result<SandboxInfo> {
    let Some(name) = name else {
        return Ok(SandboxInfo { name: "(none)".into(), labels: Default::default(), image: String::new(), isolation: String::new() });
    };
    let stored = orch.store.resource(Kind::Sandbox, name)?.ok_or_else(|| Error::no_sandbox(name))?;
    let ResourceSpec::Sandbox(spec) = &stored.resource.spec else { return Err(Error::no_sandbox(name)) };
    let isolation = orch.store.sandbox(name)?.map(|r| r.isolation).unwrap_or_else(|| spec.isolation.as_str().to_string());
    Ok(crate::hooks::sandbox_info(&stored.resource, spec, &isolation))
}

/// A prepared evaluation: the plugin loaded and the identity resolved, to ask once or many
/// times (each time uncached).
pub struct Evaluator {
    plugins: [std::sync::Arc<super::LoadedPlugin>; 1],
    info: SandboxInfo,
}

impl Evaluator {
    /// The applied plugin `name`, deciding as the applied sandbox `sandbox` (None: anonymous).
    pub fn new(orch: &Orchestrator, name: &str, sandbox: Option<&str>) -> Result<Evaluator> {
        let spec = orch.plugin_spec(name).ok_or_else(|| Error::NotFound { what: "plugin", name: name.to_string() })?;
        let plugin = orch.plugins.get(name, &spec).map_err(|e| Error::Protocol(format!("plugin {name}: {e}")))?;
        if !plugin.kinds().contains(&super::Kind::NetworkPolicy) {
            return Err(Error::Conflict(format!("plugin {name} is not a network policy (it implements {})", plugin.kinds().iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "))));
        }
        Ok(Evaluator { plugins: [plugin], info: sandbox_identity(orch, sandbox)? })
    }

    /// The plugin's answer to `question`.
    pub fn ask(&self, question: &Question) -> Verdict {
        let cache = DecisionCache::default();
        match question {
            Question::Dns { name, record_type } => match policy::decide_dns(&self.plugins, &cache, &self.info, name, record_type) {
                Ok(()) => Verdict { allowed: true, action: "allow".into(), reason: None, decided_by: Some(self.plugins[0].name.clone()), summary: format!("allow dns {name} {record_type}") },
                Err((by, reason)) => Verdict { allowed: false, action: "deny".into(), summary: format!("deny dns {name} {record_type}: {reason} (by {by})"), reason: Some(reason), decided_by: Some(by) },
            },
            Question::Flow { protocol, ip, port, domain } => {
                let decision = policy::decide_flow(&self.plugins, &cache, &self.info, *protocol, *ip, *port, domain.as_deref());
                let proto = if *protocol == Protocol::Udp { "udp" } else { "tcp" };
                let shown = match domain {
                    Some(d) => format!("{proto} {d} ({ip}) port {port}"),
                    None => format!("{proto} {ip} port {port}"),
                };
                let decided_by = decision.decided_by;
                match decision.action {
                    FlowAction::Allow => Verdict { allowed: true, action: "allow".into(), reason: None, decided_by, summary: format!("allow {shown}") },
                    FlowAction::InterceptTls => Verdict { allowed: true, action: "intercept-tls".into(), reason: None, decided_by, summary: format!("intercept-tls {shown}") },
                    FlowAction::Deny(reason) => Verdict { allowed: false, action: "deny".into(), summary: format!("deny {shown}: {reason}"), reason: Some(reason), decided_by },
                }
            }
        }
    }
}
