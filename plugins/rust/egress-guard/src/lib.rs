//! egress-guard: the example network policy, the same rule as the C, Python and JavaScript
//! versions beside it. Config (all optional):
//! - `block-private` (default `true`): deny loopback, private, link-local and CGNAT addresses;
//! - `ports`: comma-separated allowed ports (default: any);
//! - `allow-domains`: comma-separated domain suffixes (default: any domain); a sandbox labelled
//!   `egress: open` skips this check;
//! - `cache-seconds` (default 60).
//!
//! The rule is plain Rust ([`Rule`]) so it is tested natively and benchmarked beside the
//! components; the `Guest` impl below only adapts it to the WIT types.

use orchestrator_plugin_sdk::ip;
use orchestrator_plugin_sdk::network_policy::{self, Action, Decision, DnsAction, DnsDecision, DnsQuery, Flow};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::OnceLock;

#[derive(Debug, Clone)]
pub struct Rule {
    pub block_private: bool,
    pub ports: Vec<u16>,
    pub allow_domains: Vec<String>,
    pub cache_seconds: u32,
}

fn list(config: &BTreeMap<String, String>, key: &str) -> Vec<String> {
    config.get(key).map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect()).unwrap_or_default()
}

impl Rule {
    pub fn from_config(config: &BTreeMap<String, String>) -> Rule {
        Rule {
            block_private: config.get("block-private").map(|v| v != "false").unwrap_or(true),
            ports: list(config, "ports").iter().filter_map(|p| p.parse().ok()).collect(),
            allow_domains: list(config, "allow-domains"),
            cache_seconds: config.get("cache-seconds").and_then(|v| v.parse().ok()).unwrap_or(60),
        }
    }

    fn domain_allowed(&self, domain: &str) -> bool {
        self.allow_domains.is_empty() || self.allow_domains.iter().any(|s| domain == s || domain.ends_with(&format!(".{s}")))
    }

    /// `Err(reason)` to deny. Checks, in order: private address, port, domain.
    pub fn decide(&self, labels: &[(String, String)], ip: IpAddr, port: u16, domain: Option<&str>) -> Result<(), String> {
        if self.block_private && ip::is_private(ip) {
            return Err("private address".into());
        }
        if !self.ports.is_empty() && !self.ports.contains(&port) {
            return Err(format!("port {port} not allowed"));
        }
        let open = labels.iter().any(|(k, v)| k == "egress" && v == "open");
        if open || self.allow_domains.is_empty() {
            return Ok(());
        }
        match domain {
            None => Err("no domain known".into()),
            Some(d) if self.domain_allowed(&d.to_ascii_lowercase()) => Ok(()),
            Some(d) => Err(format!("domain {d} not allowed")),
        }
    }

    pub fn decide_dns(&self, name: &str) -> Result<(), String> {
        if self.domain_allowed(&name.to_ascii_lowercase()) {
            Ok(())
        } else {
            Err(format!("domain {name} not allowed"))
        }
    }
}

fn rule() -> &'static Rule {
    static RULE: OnceLock<Rule> = OnceLock::new();
    RULE.get_or_init(|| Rule::from_config(&orchestrator_plugin_sdk::config()))
}

struct EgressGuard;

impl network_policy::Guest for EgressGuard {
    fn decide_flow(flow: Flow) -> Decision {
        let rule = rule();
        let action = match rule.decide(&flow.sandbox.labels, ip::to_std(&flow.destination), flow.port, flow.domain.as_deref()) {
            Ok(()) => Action::Allow,
            Err(reason) => Action::Deny(reason),
        };
        Decision { action, cache_seconds: rule.cache_seconds }
    }

    fn decide_dns(query: DnsQuery) -> DnsDecision {
        let rule = rule();
        let action = match rule.decide_dns(&query.name) {
            Ok(()) => DnsAction::Allow,
            Err(reason) => DnsAction::Deny(reason),
        };
        DnsDecision { action, cache_seconds: rule.cache_seconds }
    }
}

orchestrator_plugin_sdk::export_network_policy!(EgressGuard);

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Rule {
        let config: BTreeMap<String, String> =
            [("ports", "80,443"), ("allow-domains", "example.com, Example.ORG")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Rule::from_config(&config)
    }

    #[test]
    fn the_rule() {
        let r = rule();
        let public: IpAddr = "93.184.216.34".parse().unwrap();
        assert_eq!(r.decide(&[], "10.0.0.1".parse().unwrap(), 443, Some("example.com")), Err("private address".into()));
        assert_eq!(r.decide(&[], "::ffff:127.0.0.1".parse().unwrap(), 443, None), Err("private address".into()));
        assert_eq!(r.decide(&[], public, 443, Some("api.example.com")), Ok(()));
        assert_eq!(r.decide(&[], public, 443, Some("www.example.org")), Ok(()));
        assert_eq!(r.decide(&[], public, 22, Some("example.com")), Err("port 22 not allowed".into()));
        assert_eq!(r.decide(&[], public, 443, Some("notexample.com")), Err("domain notexample.com not allowed".into()));
        assert_eq!(r.decide(&[], public, 443, None), Err("no domain known".into()));
        let open = [("egress".to_string(), "open".to_string())];
        assert_eq!(r.decide(&open, public, 443, Some("anything.test")), Ok(()));
        assert_eq!(r.decide_dns("evil.test"), Err("domain evil.test not allowed".into()));
        assert_eq!(r.cache_seconds, 60);
    }

    #[test]
    fn config_comes_from_the_host() {
        orchestrator_plugin_sdk::testing::set_config(&[("block-private", "false"), ("cache-seconds", "5")]);
        let r = Rule::from_config(&orchestrator_plugin_sdk::config());
        assert!(!r.block_private);
        assert_eq!(r.cache_seconds, 5);
        assert_eq!(r.decide(&[], "10.0.0.1".parse().unwrap(), 1, None), Ok(()));
    }
}
