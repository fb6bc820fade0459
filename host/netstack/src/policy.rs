//! Who may go where: the sandbox's preset, its rules and domain blocks, decided here, and the
//! policy plugins behind the `FlowPolicy` trait (the stack knows nothing of wasmtime).
//!
//! The order, for every new flow:
//! 1. `rules`, first match wins: a deny is final; an allow skips the preset and the plugins
//!    (but not the domain blocks).
//! 2. Domain blocks (`blockDomains`, `blockDomainSuffixes`) against every name the sandbox
//!    resolved to this address, and the TLS SNI once seen.
//! 3. The preset, when no rule matched: `public-only` denies every group but public,
//!    `allow-all` denies only unspecified addresses and loopback, `none` denies everything.
//! 4. The plugins, when nothing above denied: first deny wins, a failing plugin denies.
//!
//! Names are matched case-insensitively without a trailing dot. A domain rule matches only
//! names the sandbox itself resolved through the gateway (its pin set) or sent as SNI: an
//! address it never looked up has no name.

use crate::addr::{self, Group};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Preset {
    #[default]
    PublicOnly,
    None,
    AllowAll,
}

impl Preset {
    pub fn parse(s: &str) -> Option<Preset> {
        Some(match s {
            "public-only" => Preset::PublicOnly,
            "none" => Preset::None,
            "allow-all" => Preset::AllowAll,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Preset::PublicOnly => "public-only",
            Preset::None => "none",
            Preset::AllowAll => "allow-all",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        Some(match s {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/n`, `x::y/n`, or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = s.split_once('/').map(|(a, p)| (a, Some(p))).unwrap_or((s, None));
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr: addr::canonical(addr), prefix: if addr::canonical(addr) != addr { prefix.saturating_sub(96) } else { prefix } })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, addr::canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                (u32::from(net) & mask) == (u32::from(ip) & mask)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                (u128::from(net) & mask) == (u128::from(ip) & mask)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One `network.rules` entry; every selector given must match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub action: Option<Action>,
    pub host: Option<String>,
    pub host_suffix: Option<String>,
    pub cidr: Option<Cidr>,
    pub group: Option<Group>,
    /// Inclusive port ranges; empty means every port.
    pub ports: Vec<(u16, u16)>,
    pub protocol: Option<Protocol>,
}

impl Rule {
    fn matches_address(&self, ip: IpAddr, group: Group, names: &[String]) -> bool {
        if let Some(h) = &self.host {
            if !names.iter().any(|n| n == h) {
                return false;
            }
        }
        if let Some(s) = &self.host_suffix {
            if !names.iter().any(|n| suffix_matches(n, s)) {
                return false;
            }
        }
        if let Some(c) = &self.cidr {
            if !c.contains(ip) {
                return false;
            }
        }
        if let Some(g) = self.group {
            if g != group {
                return false;
            }
        }
        true
    }

    fn matches(&self, flow: &FlowQuery<'_>, group: Group) -> bool {
        if let Some(p) = self.protocol {
            if p != flow.protocol {
                return false;
            }
        }
        if !self.ports.is_empty() && !self.ports.iter().any(|(lo, hi)| (*lo..=*hi).contains(&flow.port)) {
            return false;
        }
        self.matches_address(flow.ip, group, flow.names)
    }

    /// How events name this rule: `rule 2 (deny cidr 0.0.0.0/0 ports 25 tcp)`.
    pub fn describe(&self, index: usize) -> String {
        let mut parts = vec![if self.action == Some(Action::Deny) { "deny".to_string() } else { "allow".to_string() }];
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        if let Some(s) = &self.host_suffix {
            parts.push(format!("hostSuffix {s}"));
        }
        if let Some(c) = &self.cidr {
            parts.push(format!("cidr {c}"));
        }
        if let Some(g) = self.group {
            parts.push(format!("group {}", g.as_str()));
        }
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(|(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
            parts.push(format!("ports {}", ports.join(",")));
        }
        if let Some(p) = self.protocol {
            parts.push(p.as_str().to_string());
        }
        format!("rule {index} ({})", parts.join(" "))
    }
}

/// Lower-cased, without a trailing dot: the form names are compared in.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `suffix` (with or without its leading dot) matches the name itself and every name below it.
fn suffix_matches(name: &str, suffix: &str) -> bool {
    let s = suffix.trim_start_matches('.');
    name == s || (name.len() > s.len() && name.ends_with(s) && name.as_bytes()[name.len() - s.len() - 1] == b'.')
}

/// A sandbox's `network` section, as the stack applies it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkPolicy {
    pub preset: Preset,
    pub rules: Vec<Rule>,
    pub block_domains: Vec<String>,
    pub block_domain_suffixes: Vec<String>,
}

impl NetworkPolicy {
    /// The block entry that covers `name`, if any.
    pub fn blocked_name(&self, name: &str) -> Option<String> {
        let name = normalize_name(name);
        if let Some(b) = self.block_domains.iter().find(|b| **b == name) {
            return Some(format!("blockDomains {b}"));
        }
        self.block_domain_suffixes.iter().find(|s| suffix_matches(&name, s)).map(|s| format!("blockDomainSuffixes {s}"))
    }

    /// Whether a DNS answer holding `ip` for `name` may reach a sandbox under rebinding
    /// protection: public addresses, and others only when the first rule matching the address
    /// (ports and protocol aside) allows it.
    pub fn answer_allowed(&self, ip: IpAddr, name: &str, host: &[IpAddr]) -> bool {
        let group = addr::classify(ip, host);
        if self.preset != Preset::PublicOnly || group == Group::Public {
            return true;
        }
        let names = [normalize_name(name)];
        self.rules.iter().find(|r| r.matches_address(ip, group, &names)).map(|r| r.action == Some(Action::Allow)).unwrap_or(false)
    }
}

/// A new flow, as asked about.
#[derive(Debug, Clone, Copy)]
pub struct FlowQuery<'a> {
    pub protocol: Protocol,
    pub ip: IpAddr,
    pub port: u16,
    /// Names the sandbox resolved to `ip` (most recent first) and the SNI once seen.
    pub names: &'a [String],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow { intercept_tls: bool },
    Deny { reason: String },
}

/// A decision and what made it: `rule 2 (...)`, `blockDomains x`, `preset public-only`,
/// `plugin NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub decided_by: String,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self.verdict, Verdict::Allow { .. })
    }

    /// Allowed, with a plugin's `intercept-tls`.
    pub fn intercept_requested(&self) -> bool {
        matches!(self.verdict, Verdict::Allow { intercept_tls: true })
    }
}

/// What a plugin said about a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginVerdict {
    Allow,
    InterceptTls,
    Deny { plugin: String, reason: String },
}

/// The policy plugins, asked for what the rules leave open. Implementations fail closed: a
/// plugin that traps or times out answers `Deny`.
pub trait FlowPolicy: Send {
    /// True when no plugin is configured (the stack then skips the call).
    fn is_empty(&self) -> bool;
    /// ICMP is never asked: the plugin interface knows only TCP and UDP.
    fn decide_flow(&mut self, protocol: Protocol, ip: IpAddr, port: u16, domain: Option<&str>) -> PluginVerdict;
    /// `Err((plugin, reason))` refuses the query (the sandbox gets NXDOMAIN).
    fn decide_dns(&mut self, name: &str, record_type: &str) -> Result<(), (String, String)>;
    /// (decisions asked for, decisions answered wholly from the cache) so far.
    fn counts(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// No plugins: every flow the rules leave open is allowed.
pub struct NoPlugins;

impl FlowPolicy for NoPlugins {
    fn is_empty(&self) -> bool {
        true
    }
    fn decide_flow(&mut self, _: Protocol, _: IpAddr, _: u16, _: Option<&str>) -> PluginVerdict {
        PluginVerdict::Allow
    }
    fn decide_dns(&mut self, _: &str, _: &str) -> Result<(), (String, String)> {
        Ok(())
    }
}

fn deny(reason: impl Into<String>, by: impl Into<String>) -> Decision {
    Decision { verdict: Verdict::Deny { reason: reason.into() }, decided_by: by.into() }
}

/// Decides one new flow (module docs give the order). `host` holds the gateway and the host's
/// own addresses.
pub fn decide(policy: &NetworkPolicy, flow: &FlowQuery<'_>, host: &[IpAddr], plugins: &mut dyn FlowPolicy) -> Decision {
    let group = addr::classify(flow.ip, host);
    if group == Group::Unspecified {
        return deny(format!("{} is not a destination", flow.ip), "address check");
    }
    let mut allowed_by_rule = None;
    for (i, rule) in policy.rules.iter().enumerate() {
        if rule.matches(flow, group) {
            if rule.action == Some(Action::Deny) {
                return deny("denied by a rule", rule.describe(i + 1));
            }
            allowed_by_rule = Some(rule.describe(i + 1));
            break;
        }
    }
    for name in flow.names {
        if let Some(block) = policy.blocked_name(name) {
            return deny(format!("{name} is blocked"), block);
        }
    }
    if let Some(by) = allowed_by_rule {
        return Decision { verdict: Verdict::Allow { intercept_tls: false }, decided_by: by };
    }
    let preset = format!("preset {}", policy.preset.as_str());
    match policy.preset {
        Preset::None => return deny("the sandbox has no network", preset),
        Preset::PublicOnly if group != Group::Public => return deny(format!("{} is a {} address", flow.ip, group.as_str()), preset),
        Preset::AllowAll if group == Group::Loopback => return deny(format!("{} is a loopback address", flow.ip), preset),
        _ => {}
    }
    if flow.protocol == Protocol::Icmp || plugins.is_empty() {
        return Decision { verdict: Verdict::Allow { intercept_tls: false }, decided_by: preset };
    }
    let proto = flow.protocol;
    match plugins.decide_flow(proto, addr::canonical(flow.ip), flow.port, flow.names.first().map(String::as_str)) {
        PluginVerdict::Allow => Decision { verdict: Verdict::Allow { intercept_tls: false }, decided_by: "plugins".into() },
        PluginVerdict::InterceptTls => Decision { verdict: Verdict::Allow { intercept_tls: true }, decided_by: "plugins".into() },
        PluginVerdict::Deny { plugin, reason } => deny(reason, format!("plugin {plugin}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: Action) -> Rule {
        Rule { action: Some(action), ..Rule::default() }
    }

    fn ask(policy: &NetworkPolicy, proto: Protocol, ip: &str, port: u16, names: &[&str]) -> Decision {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let host = ["10.0.2.2".parse().unwrap()];
        decide(policy, &FlowQuery { protocol: proto, ip: ip.parse().unwrap(), port, names: &names }, &host, &mut NoPlugins)
    }

    #[test]
    fn public_only_denies_every_non_public_group_and_names_the_preset() {
        let p = NetworkPolicy::default();
        assert!(ask(&p, Protocol::Tcp, "203.0.113.10", 80, &[]).allowed());
        for ip in ["10.1.2.3", "127.0.0.1", "169.254.169.254", "10.0.2.2", "::ffff:127.0.0.1", "fd00:ec2::254", "0.0.0.0"] {
            let d = ask(&p, Protocol::Tcp, ip, 80, &[]);
            assert!(!d.allowed(), "{ip}");
        }
        assert_eq!(ask(&p, Protocol::Tcp, "10.1.2.3", 80, &[]).decided_by, "preset public-only");
    }

    #[test]
    fn first_matching_rule_wins_and_domain_blocks_beat_allow_rules() {
        let mut deny25 = rule(Action::Deny);
        deny25.cidr = Cidr::parse("0.0.0.0/0");
        deny25.ports = vec![(25, 25)];
        deny25.protocol = Some(Protocol::Tcp);
        let mut host8080 = rule(Action::Allow);
        host8080.group = Some(Group::Host);
        host8080.ports = vec![(8080, 8080)];
        let mut packages = rule(Action::Allow);
        packages.host = Some("packages.example".into());
        let p = NetworkPolicy { rules: vec![deny25, host8080, packages], block_domain_suffixes: vec![".tracking.example".into()], ..Default::default() };
        let d = ask(&p, Protocol::Tcp, "203.0.113.10", 25, &[]);
        assert_eq!(d.decided_by, "rule 1 (deny cidr 0.0.0.0/0 ports 25 tcp)");
        assert!(ask(&p, Protocol::Udp, "203.0.113.10", 25, &[]).allowed());
        assert!(ask(&p, Protocol::Tcp, "10.0.2.2", 8080, &[]).allowed());
        assert!(!ask(&p, Protocol::Tcp, "10.0.2.2", 8081, &[]).allowed());
        assert!(!ask(&p, Protocol::Tcp, "203.0.113.10", 443, &["a.tracking.example"]).allowed());
        assert!(!ask(&p, Protocol::Tcp, "203.0.113.10", 443, &["tracking.example"]).allowed());
        assert!(ask(&p, Protocol::Tcp, "203.0.113.10", 443, &["nottracking.example"]).allowed());
    }

    #[test]
    fn allow_all_opens_private_but_not_loopback_and_none_closes_everything() {
        let p = NetworkPolicy { preset: Preset::AllowAll, ..Default::default() };
        assert!(ask(&p, Protocol::Tcp, "10.1.2.3", 80, &[]).allowed());
        assert!(!ask(&p, Protocol::Tcp, "127.0.0.1", 80, &[]).allowed());
        let p = NetworkPolicy { preset: Preset::None, ..Default::default() };
        assert!(!ask(&p, Protocol::Tcp, "203.0.113.10", 80, &[]).allowed());
    }

    #[test]
    fn rebinding_protection_allows_private_answers_only_by_rule() {
        let host = ["10.0.2.2".parse().unwrap()];
        let mut p = NetworkPolicy::default();
        assert!(p.answer_allowed("203.0.113.1".parse().unwrap(), "a.example", &host));
        assert!(!p.answer_allowed("10.1.2.3".parse().unwrap(), "a.example", &host));
        let mut r = rule(Action::Allow);
        r.cidr = Cidr::parse("10.1.0.0/16");
        p.rules.push(r);
        assert!(p.answer_allowed("10.1.2.3".parse().unwrap(), "a.example", &host));
        assert!(!p.answer_allowed("10.2.2.3".parse().unwrap(), "a.example", &host));
    }

    #[test]
    fn cidrs_parse_and_contain() {
        assert!(Cidr::parse("10.0.0.0/8").unwrap().contains("10.9.9.9".parse().unwrap()));
        assert!(!Cidr::parse("10.0.0.0/8").unwrap().contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("::ffff:1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains("2001:db8:1::1".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert_eq!(Cidr::parse("10.0.0.0/33"), None);
        assert_eq!(Cidr::parse("nope"), None);
    }
}
