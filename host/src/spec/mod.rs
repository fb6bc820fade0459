//! The resource model (`apiVersion: orchestrator/v1`, kinds Sandbox, Volume, Plugin) and loading
//! it from a file or a directory tree, with every error located by file, line, column and field.

pub mod quantity;
mod validate;
mod volumes;
pub use volumes::*;
pub use validate::{normalise_image, normalise_kernel};
pub mod yaml;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub const API_VERSION: &str = "orchestrator/v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Kind {
    Sandbox,
    Volume,
    Plugin,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Sandbox, Kind::Volume, Kind::Plugin];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sandbox => "Sandbox",
            Kind::Volume => "Volume",
            Kind::Plugin => "Plugin",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    #[default]
    Auto,
    Microvm,
    Namespace,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Auto => "auto",
            Isolation::Microvm => "microvm",
            Isolation::Namespace => "namespace",
        }
    }
}

/// Where a sandbox's writable layer (what it writes over its image) lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WritableLayer {
    /// A sparse ext4 disk of the sandbox's own, `spec.disk` in size: kept when the sandbox
    /// stops and starts again, gone when it is deleted.
    #[default]
    Disk,
    /// A tmpfs of at most `spec.disk` and at most three quarters of `spec.memory` (its pages
    /// are the sandbox's memory; see [`SandboxSpec::memory_layer_bytes`]): nothing of the layer touches the host's disk, so a sandbox
    /// starts and is removed faster, and its writes are gone when the sandbox stops (a stop and
    /// start begins from the image again; a main process's restart keeps them). For sandboxes used once: `/run`, warm pools, `run --rm`.
    /// Namespace sandboxes only; `isolation: auto` picks one.
    Memory,
}

impl WritableLayer {
    pub fn is_disk(&self) -> bool {
        *self == WritableLayer::Disk
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// Whether a main process (or sandbox) that ended with `failed` should be started again.
    pub fn restarts(self, failed: bool) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failed,
            RestartPolicy::Never => false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    pub pids: Option<u64>,
    pub nofile: Option<u64>,
    pub fsize: Option<u64>,
    pub cpu_time_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// Normalised reference: `dir:/abs`, `oci-layout:/abs[:TAG]`, `oci-archive:/abs[:TAG]` or a
    /// registry reference.
    pub image: String,
    pub isolation: Isolation,
    pub cpus: Option<f64>,
    pub memory: Option<u64>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub command: Option<Vec<String>>,
    pub user: Option<String>,
    pub tty: bool,
    pub limits: Limits,
    pub restart_policy: RestartPolicy,
    pub user_namespace: bool,
    #[serde(default)]
    pub pull_policy: crate::image::PullPolicy,
    /// Secrets resolved by provider plugins at start; the sandbox sees placeholders.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretRef>,
    /// Declarative root filesystem patches, applied before the rootfs-patch plugins' ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<guest_agent::protocol::PatchOp>,
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    #[serde(default, skip_serializing_if = "NetworkSpec::is_empty")]
    pub network: NetworkSpec,
    /// MicroVMs: the guest kernel, as an absolute path (an extracted package directory or a
    /// kernel image file) or the name of a kernel in `DATA/kernels`; None: the configured one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The bound on the writable layer, bytes; None: [`DEFAULT_DISK`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u64>,
    /// Where the writable layer lives: a disk of its own (kept across stop and start) or memory.
    #[serde(default, skip_serializing_if = "WritableLayer::is_disk")]
    pub writable_layer: WritableLayer,
    /// Published ports: host sockets the shim listens on, forwarded into the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// Named volumes, host paths and tmpfs mounted into the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
}

/// One `spec.ports` entry (`run -p [ADDR:]HOST:GUEST[/udp]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host: u16,
    pub guest: u16,
    #[serde(default)]
    pub protocol: PortProtocol,
    /// The host address to listen on; default 127.0.0.1 (loopback only).
    #[serde(default = "loopback", skip_serializing_if = "is_loopback")]
    pub address: std::net::IpAddr,
}

fn loopback() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
}

fn is_loopback(a: &std::net::IpAddr) -> bool {
    *a == loopback()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

impl PortMapping {
    /// `[ADDR:]HOST:GUEST[/udp|/tcp]`; ADDR may be `[v6]`.
    pub fn parse(text: &str) -> Result<PortMapping, String> {
        let (rest, protocol) = match text.rsplit_once('/') {
            Some((r, "tcp")) => (r, PortProtocol::Tcp),
            Some((r, "udp")) => (r, PortProtocol::Udp),
            Some((_, p)) => return Err(format!("{p:?} is not a protocol (tcp or udp)")),
            None => (text, PortProtocol::Tcp),
        };
        let (front, guest) = rest.rsplit_once(':').ok_or("expected [ADDR:]HOST:GUEST")?;
        let (address, host) = match front.rsplit_once(':') {
            Some((a, h)) => {
                let a = a.trim_start_matches('[').trim_end_matches(']');
                (a.parse().map_err(|_| format!("{a:?} is not an IP address"))?, h)
            }
            None => (loopback(), front),
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{p:?} is not a port (1-65535)"));
        Ok(PortMapping { host: port(host)?, guest: port(guest)?, protocol, address })
    }

    pub fn host_addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.address, self.host)
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.protocol {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        };
        write!(f, "{} -> {}/{proto}", self.host_addr(), self.guest)
    }
}

/// The writable layer's bound when `spec.disk` gives none: 10 GiB, the size Docker's
/// devicemapper driver gave every container. Room for a Python ML stack or a node_modules
/// tree; small enough that one runaway sandbox cannot fill a host's disk by surprise. The file
/// behind it is sparse, so the bound costs nothing until it is written.
pub const DEFAULT_DISK: u64 = 10 << 30;
/// The smallest writable layer: ext4's journal and metadata need a few MiB of it.
pub const MIN_DISK: u64 = 64 << 20;
/// The largest: beyond this a sandbox should mount a volume.
pub const MAX_DISK: u64 = 16 << 40;

impl SandboxSpec {
    /// The bound on the writable layer that applies to this sandbox.
    pub fn disk_bytes(&self) -> u64 {
        self.disk.unwrap_or(DEFAULT_DISK)
    }

    /// The size of a memory layer's tmpfs: `disk`, but at most three quarters of `memory`, so
    /// that a full layer is ENOSPC for the writer while the sandbox's processes keep room to
    /// run (its pages are the sandbox's memory and, without swap, cannot be reclaimed: a layer
    /// allowed all of it would leave every later command to the OOM killer).
    pub fn memory_layer_bytes(&self) -> u64 {
        let disk = self.disk_bytes();
        self.memory.map_or(disk, |m| disk.min(m - m / 4))
    }
}

/// One entry of `spec.secrets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Environment variable that receives the placeholder.
    pub env: String,
    /// Plugin (secret-provider) that resolves it.
    pub provider: String,
    /// What the provider is asked for.
    pub key: String,
    /// Hosts the real value may be sent to (enforced by the network proxy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
    /// Where in a request to an allowed host the placeholder is replaced (headers by default).
    #[serde(default = "default_inject_into", skip_serializing_if = "is_default_inject_into")]
    pub inject_into: Vec<InjectInto>,
    /// What a placeholder seen going elsewhere does.
    #[serde(default, skip_serializing_if = "OnViolation::is_default")]
    pub on_violation: OnViolation,
    /// A value given directly (provider `value`: the library and the API). Never serialized:
    /// the creator moves it to `hooks::given` before the resource is stored.
    #[serde(skip)]
    pub value: Option<GivenValue>,
}

/// A secret's value on its way from the creator to the shim: redacted in debug output and
/// wiped when dropped. Equal to any other (a value is not part of the desired state).
#[derive(Clone, Default)]
pub struct GivenValue(pub String);

impl std::fmt::Debug for GivenValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl PartialEq for GivenValue {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Drop for GivenValue {
    fn drop(&mut self) {
        crate::plugin::secrets::wipe(&mut self.0);
    }
}

/// The provider of a secret given by value (never named in a file).
pub const VALUE_PROVIDER: &str = "value";

/// Providers built into the orchestrator (no Plugin resource): `env` reads the host
/// environment variable named by `key`, `file` the host file at `key`, when the sandbox starts.
pub const BUILTIN_SECRET_PROVIDERS: &[&str] = &["env", "file", VALUE_PROVIDER];

impl SecretRef {
    pub fn builtin_provider(&self) -> bool {
        BUILTIN_SECRET_PROVIDERS.contains(&self.provider.as_str())
    }
}

/// A part of an HTTP request a secret's placeholder may be replaced in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InjectInto {
    Headers,
    Query,
    /// Identity-encoded bodies up to a bound (see the shim's `tls` module).
    Body,
}

impl InjectInto {
    pub const NAMES: &'static [&'static str] = &["headers", "query", "body"];

    pub fn parse(s: &str) -> Option<InjectInto> {
        match s {
            "headers" => Some(InjectInto::Headers),
            "query" => Some(InjectInto::Query),
            "body" => Some(InjectInto::Body),
            _ => None,
        }
    }
}

fn default_inject_into() -> Vec<InjectInto> {
    vec![InjectInto::Headers]
}

fn is_default_inject_into(v: &[InjectInto]) -> bool {
    v == [InjectInto::Headers]
}

/// What happens when a secret's placeholder is caught going where it may not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnViolation {
    /// The request (or flow) is refused and reported; the sandbox goes on.
    #[default]
    Block,
    /// Refused, reported, and the sandbox is stopped.
    BlockAndStop,
}

impl OnViolation {
    fn is_default(&self) -> bool {
        *self == OnViolation::Block
    }
}

/// Plugins run at points of the sandbox's life (`spec.hooks`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rootfs_patch: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_sinks: Vec<String>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.rootfs_patch.is_empty() && self.metrics_sinks.is_empty()
    }
}

/// `spec.network`: where the sandbox may connect (docs/networking.md). The default is
/// `public-only` with no rules: the public internet, nothing private, nothing of the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    #[serde(default, skip_serializing_if = "NetworkPreset::is_default")]
    pub policy: NetworkPreset,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<NetworkRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_domain_suffixes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// The link's MTU (default 65520: fewer, larger packets through the stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// TLS interception beyond what secrets ask for.
    #[serde(default, skip_serializing_if = "TlsSpec::is_empty")]
    pub tls: TlsSpec,
}

/// `spec.network.tls`: names whose TLS is intercepted (besides the hosts of the sandbox's
/// secrets and flows a policy plugin asks to intercept), and names never intercepted (pinned
/// clients). Entries are a host (`api.example`), a suffix (`*.example` or `.example`) or `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intercept: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bypass: Vec<String>,
}

impl TlsSpec {
    pub fn is_empty(&self) -> bool {
        self.intercept.is_empty() && self.bypass.is_empty()
    }
}

/// Whether host name `name` matches `pattern`: the exact name, `*.suffix` / `.suffix` (any name
/// below the suffix, not the suffix itself), or `*` (everything). No case, no trailing dot.
pub fn host_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.").or_else(|| pattern.strip_prefix('.')) {
        Some(suffix) => name.len() > suffix.len() + 1 && name.ends_with(suffix) && name.as_bytes()[name.len() - suffix.len() - 1] == b'.',
        None => name == pattern,
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkPreset {
    #[default]
    PublicOnly,
    /// No interface but loopback.
    None,
    AllowAll,
}

impl NetworkPreset {
    fn is_default(&self) -> bool {
        *self == NetworkPreset::PublicOnly
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkPreset::PublicOnly => "public-only",
            NetworkPreset::None => "none",
            NetworkPreset::AllowAll => "allow-all",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    Allow,
    Deny,
}

/// One `spec.network.rules` entry, as validated (every string here parses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkRule {
    pub action: RuleAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `[from, to]` inclusive ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<(u16, u16)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

impl NetworkSpec {
    pub fn is_empty(&self) -> bool {
        *self == NetworkSpec::default()
    }

    /// True when the sandbox gets an interface besides loopback.
    pub fn has_link(&self) -> bool {
        self.policy != NetworkPreset::None
    }

    /// The policy the network stack applies. Fails only on a spec that bypassed validation.
    pub fn to_policy(&self) -> Result<netstack::NetworkPolicy, String> {
        use netstack::policy::{Action, Cidr, Rule};
        let mut rules = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let bad = |what: &str| format!("spec.network.rules[{i}].{what} does not parse");
            rules.push(Rule {
                action: Some(match r.action {
                    RuleAction::Allow => Action::Allow,
                    RuleAction::Deny => Action::Deny,
                }),
                host: r.host.as_deref().map(netstack::policy::normalize_name),
                host_suffix: r.host_suffix.as_deref().map(netstack::policy::normalize_name),
                cidr: r.cidr.as_deref().map(|c| Cidr::parse(c).ok_or_else(|| bad("cidr"))).transpose()?,
                group: r.group.as_deref().map(|g| netstack::addr::Group::parse(g).ok_or_else(|| bad("group"))).transpose()?,
                ports: r.ports.clone(),
                protocol: r.protocol.as_deref().map(|p| netstack::Protocol::parse(p).ok_or_else(|| bad("protocol"))).transpose()?,
            });
        }
        Ok(netstack::NetworkPolicy {
            preset: match self.policy {
                NetworkPreset::PublicOnly => netstack::Preset::PublicOnly,
                NetworkPreset::None => netstack::Preset::None,
                NetworkPreset::AllowAll => netstack::Preset::AllowAll,
            },
            rules,
            block_domains: self.block_domains.iter().map(|d| netstack::policy::normalize_name(d)).collect(),
            block_domain_suffixes: self.block_domain_suffixes.iter().map(|d| netstack::policy::normalize_name(d)).collect(),
        })
    }
}


impl SandboxSpec {
    pub fn new(image: String) -> Self {
        SandboxSpec {
            image,
            isolation: Isolation::Auto,
            cpus: None,
            memory: None,
            env: BTreeMap::new(),
            workdir: None,
            command: None,
            user: None,
            tty: false,
            limits: Limits::default(),
            restart_policy: RestartPolicy::Always,
            user_namespace: false,
            pull_policy: crate::image::PullPolicy::IfNotPresent,
            secrets: Vec::new(),
            patches: Vec::new(),
            hooks: Hooks::default(),
            network: NetworkSpec::default(),
            kernel: None,
            disk: None,
            writable_layer: WritableLayer::Disk,
            ports: Vec::new(),
            volumes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PluginGrants {
    pub env: Vec<String>,
    pub read_only_dirs: Vec<String>,
    /// Hosts the plugin may reach over `wasi:http`: `host`, `host:port` or `*.domain`.
    #[serde(default)]
    pub http_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginSpec {
    /// Absolute path of the component file.
    pub component: String,
    pub config: BTreeMap<String, String>,
    pub memory: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub grants: PluginGrants,
    /// How often a metrics sink receives samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_secs: Option<u64>,
}

impl SandboxSpec {
    /// Every plugin this sandbox names, with the field that names it.
    pub fn plugin_refs(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        out.extend(self.hooks.rootfs_patch.iter().map(|p| ("hooks.rootfsPatch".to_string(), p.as_str())));
        out.extend(self.hooks.metrics_sinks.iter().map(|p| ("hooks.metricsSinks".to_string(), p.as_str())));
        out.extend(self.network.plugins.iter().map(|p| ("network.plugins".to_string(), p.as_str())));
        out.extend(self.secrets.iter().filter(|s| !s.builtin_provider()).map(|s| (format!("secrets[{}].provider", s.env), s.provider.as_str())));
        out
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "spec")]
pub enum ResourceSpec {
    Sandbox(SandboxSpec),
    Volume(VolumeSpec),
    Plugin(PluginSpec),
}

impl ResourceSpec {
    pub fn kind(&self) -> Kind {
        match self {
            ResourceSpec::Sandbox(_) => Kind::Sandbox,
            ResourceSpec::Volume(_) => Kind::Volume,
            ResourceSpec::Plugin(_) => Kind::Plugin,
        }
    }
}

/// One validated resource: identity, labels and spec. Equality of two resources (as canonical
/// JSON) is what decides whether a sandbox must be recreated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub spec: ResourceSpec,
}

impl Resource {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Where a resource was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub resource: Resource,
    pub origin: Origin,
}

/// One problem in a source, located precisely enough to jump to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// Field path, e.g. `spec.limits.pids`; empty for file-level problems.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n    hint: {h}")?;
        }
        Ok(())
    }
}

/// Files a directory source consists of: `*.yaml` / `*.yml`, recursively, sorted, skipping
/// hidden entries and editor temporaries (they appear and vanish during saves).
pub fn source_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with('~') || name.starts_with('#') {
                continue;
            }
            let path = entry.path();
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(path);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The largest manifest file read: far above any real one (Kubernetes stores objects of at
/// most 1.5 MB), and a bound on what one file in a watched directory can make `serve` hold.
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;

/// A manifest's text, read only up to [`MAX_MANIFEST_BYTES`]; errors are located.
fn read_manifest(file: &Path) -> Result<String, SpecError> {
    use std::io::Read;
    let error = |line: usize, col: usize, message: String, hint: Option<&str>| SpecError {
        file: file.to_path_buf(),
        line,
        col,
        field: String::new(),
        message,
        hint: hint.map(String::from),
    };
    let f = std::fs::File::open(file).map_err(|e| error(0, 0, format!("cannot read: {e}"), None))?;
    let mut bytes = Vec::new();
    f.take(MAX_MANIFEST_BYTES + 1).read_to_end(&mut bytes).map_err(|e| error(0, 0, format!("cannot read: {e}"), None))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        let message = format!("larger than the {} MiB a manifest file may be", MAX_MANIFEST_BYTES >> 20);
        return Err(error(0, 0, message, Some("split it into several files in a directory source")));
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(&e.as_bytes()[..at]);
        let line = text.matches('\n').count() + 1;
        let col = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        error(line, col, format!("not UTF-8 (an invalid byte at offset {at})"), Some("YAML files must be UTF-8 text; re-save it as UTF-8"))
    })
}

/// Loads and validates a file or a directory tree. All errors of all files are returned.
pub fn load_source(path: &Path) -> Result<Vec<Manifest>, Vec<SpecError>> {
    // Absolute paths in every error and origin, whatever directory the CLI ran in.
    let canonical = std::fs::canonicalize(path);
    let path = canonical.as_deref().unwrap_or(path);
    let file_error = |file: &Path, message: String, hint: Option<String>| SpecError {
        file: file.to_path_buf(),
        line: 0,
        col: 0,
        field: String::new(),
        message,
        hint,
    };
    let files = if path.is_dir() {
        source_files(path).map_err(|e| vec![file_error(path, format!("cannot read directory: {e}"), None)])?
    } else if path.exists() {
        vec![path.to_path_buf()]
    } else {
        return Err(vec![file_error(path, "no such file or directory".into(), Some("pass a YAML file or a directory of them to -f".into()))]);
    };
    let mut errors = Vec::new();
    let mut manifests = Vec::new();
    for file in &files {
        match read_manifest(file) {
            Ok(text) => match validate::validate_file(file, &text) {
                Ok(mut m) => manifests.append(&mut m),
                Err(mut e) => errors.append(&mut e),
            },
            Err(e) => errors.push(e),
        }
    }
    errors.extend(validate::duplicates(&manifests));
    errors.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

/// Parses a single YAML text (for tests and `run`-style callers); relative paths resolve
/// against `base_file`'s directory.
pub fn parse_str(base_file: &Path, text: &str) -> Result<Vec<Manifest>, Vec<SpecError>> {
    parse_text(base_file, text, false)
}

/// Like `parse_str`, for a request that creates sandboxes at once (`POST /v1/sandboxes`):
/// secrets may carry their `value`, which the creator hands to the shim and nothing stores.
pub fn parse_request(base_file: &Path, text: &str) -> Result<Vec<Manifest>, Vec<SpecError>> {
    parse_text(base_file, text, true)
}

fn parse_text(base_file: &Path, text: &str, values_allowed: bool) -> Result<Vec<Manifest>, Vec<SpecError>> {
    let manifests = validate::validate_text(base_file, text, values_allowed)?;
    let dups = validate::duplicates(&manifests);
    if dups.is_empty() {
        Ok(manifests)
    } else {
        Err(dups)
    }
}

/// Whether `bytes` can bound a writable layer (shared by `spec.disk` and `run --disk`).
pub fn check_disk(bytes: u64) -> Result<(), String> {
    if bytes < MIN_DISK {
        Err("below the 64Mi minimum (the filesystem's own journal and metadata need room)".into())
    } else if bytes > MAX_DISK {
        Err("above the 16Ti maximum".into())
    } else {
        Ok(())
    }
}

pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
