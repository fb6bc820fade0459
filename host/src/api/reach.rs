//! What of the host a client's sandbox may reach. The default network (`public-only`: the
//! public internet, nothing private, nothing of the host) is what API and MCP clients get;
//! widening it (`allow-all`, allow rules for address ranges or the host group) or publishing
//! ports on the host's addresses is the operator's call: `serve --allow-client-network`.
//! Without it a sandbox an API client made could reach the server's own loopback port, or the
//! host's private services, from inside.

use super::problem::Problem;
use crate::spec::{NetworkPreset, Resource, ResourceSpec, RuleAction};

/// Refuses a resource whose sandbox would reach beyond the public internet, or bind host
/// ports, unless the operator allowed clients that.
pub fn check(resource: &Resource, allowed: bool) -> Result<(), Problem> {
    let ResourceSpec::Sandbox(s) = &resource.spec else { return Ok(()) };
    if allowed {
        return Ok(());
    }
    let refuse = |what: &str| {
        Err(Problem::forbidden(format!(
            "{what}: API clients get the public internet only; ask the operator to start `serve` with --allow-client-network"
        )))
    };
    if s.network.policy == NetworkPreset::AllowAll {
        return refuse("spec.network.policy: allow-all");
    }
    if s.network.rules.iter().any(|r| r.action == RuleAction::Allow && (r.cidr.is_some() || r.group.is_some())) {
        return refuse("spec.network.rules: an allow rule for an address range or group");
    }
    if !s.ports.is_empty() {
        return refuse("spec.ports: publishing ports on the host");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(edit: impl FnOnce(&mut crate::spec::SandboxSpec)) -> Resource {
        let mut s = crate::spec::SandboxSpec::new("busybox".into());
        edit(&mut s);
        Resource { name: "s".into(), labels: Default::default(), spec: ResourceSpec::Sandbox(s) }
    }

    #[test]
    fn clients_get_the_public_internet_unless_the_operator_allows_more() {
        assert!(check(&sandbox(|_| {}), false).is_ok());
        assert!(check(&sandbox(|s| s.network.policy = NetworkPreset::None), false).is_ok());
        let wide = sandbox(|s| s.network.policy = NetworkPreset::AllowAll);
        assert_eq!(check(&wide, false).unwrap_err().status, 403);
        assert!(check(&wide, true).is_ok());
        let ports = sandbox(|s| s.ports.push(crate::spec::PortMapping::parse("8080:80").unwrap()));
        assert_eq!(check(&ports, false).unwrap_err().status, 403);
    }
}
