//! How an orchestrator is configured: one value, built by whoever embeds the library. The
//! library reads no process environment on its own; [`Config::from_env`] is the command line's
//! mapping of its variables onto these fields, and a program may use it or fill the fields itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where state lives and how the orchestrator reaches registries, kernels and DNS.
///
/// ```no_run
/// use orchestrator::{Config, Orchestrator};
///
/// let mut config = Config::new("/var/lib/my-app/sandboxes");
/// config.registries.insecure.push("127.0.0.1:5000".into());
/// let orchestrator = Orchestrator::open(config)?;
/// # Ok::<(), orchestrator::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// State, images, kernels and sandboxes (`--data-dir`).
    pub data_dir: PathBuf,
    pub registries: RegistryConfig,
    /// Compiled plugin components; None: `DATA/plugins/cache`.
    pub plugin_cache: Option<PathBuf>,
    /// The guest kernel microVMs boot when a sandbox names none (an extracted Debian package
    /// directory); None: `DATA/kernels/current`.
    pub kernel_dir: Option<PathBuf>,
    /// The DNS servers sandboxes' queries go to (`IP:PORT,...`); None: the host's
    /// /etc/resolv.conf.
    pub dns_upstream: Option<String>,
    /// How long a microVM may take from launch to its agent's `Ready`.
    pub vm_ready_timeout: Duration,
    /// The program that runs shims (`BINARY __shim DIR`). None: this process's own executable,
    /// which must then call [`crate::run_internal_command`] first thing in `main`.
    pub binary: Option<PathBuf>,
    /// The static guest agent microVM initramfs images carry; None: beside the binary.
    pub guest_agent: Option<PathBuf>,
    /// Appended to the guest kernel's command line (e.g. `initcall_debug`).
    pub guest_cmdline_append: Option<String>,
}

/// How images are pulled.
///
/// ```
/// let mut config = orchestrator::Config::new("/tmp/sandboxes");
/// config.registries.insecure.push("127.0.0.1:5000".into());
/// config.registries.credentials = Some(orchestrator::config::Credentials { username: "ci".into(), password: "token".into() });
/// assert!(!format!("{:?}", config.registries).contains("token"), "a password never reaches a log");
/// ```
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Registries reached over plain HTTP (`host:port`); every other one uses TLS.
    pub insecure: Vec<String>,
    /// Credentials for every registry; None: Docker's config.json, else anonymous.
    pub credentials: Option<Credentials>,
    /// Docker's configuration directory (its `config.json` holds `auths`); None: none is read.
    pub docker_config: Option<PathBuf>,
}

/// A registry user name and password (basic auth).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<hidden>").finish()
    }
}

/// Boot to `Ready`: generous, because the nested test harness emulates the outer VM.
pub const DEFAULT_VM_READY_TIMEOUT: Duration = Duration::from_secs(120);

impl Config {
    /// A configuration with every default and the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            registries: RegistryConfig::default(),
            plugin_cache: None,
            kernel_dir: None,
            dns_upstream: None,
            vm_ready_timeout: DEFAULT_VM_READY_TIMEOUT,
            binary: None,
            guest_agent: None,
            guest_cmdline_append: None,
        }
    }

    /// What the command line reads: `ORCHESTRATOR_DATA_DIR` (else `$XDG_DATA_HOME/orchestrator`
    /// or `~/.local/share/orchestrator`), `ORCHESTRATOR_INSECURE_REGISTRIES`,
    /// `ORCHESTRATOR_REGISTRY_USERNAME` / `_PASSWORD`, `DOCKER_CONFIG` (else `~/.docker`),
    /// `ORCHESTRATOR_PLUGIN_CACHE`, `ORCHESTRATOR_KERNEL_DIR`, `ORCHESTRATOR_DNS_UPSTREAM`,
    /// `ORCHESTRATOR_VM_READY_TIMEOUT` (seconds), `ORCHESTRATOR_BIN`, `ORCHESTRATOR_GUEST_AGENT`
    /// and `ORCHESTRATOR_GUEST_CMDLINE_APPEND`.
    pub fn from_env() -> Config {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let path = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let mut config = Config::new(path("ORCHESTRATOR_DATA_DIR").unwrap_or_else(crate::paths::default_data_dir));
        config.registries.insecure = split_list(&var("ORCHESTRATOR_INSECURE_REGISTRIES").unwrap_or_default());
        if let (Some(username), Some(password)) = (var("ORCHESTRATOR_REGISTRY_USERNAME"), var("ORCHESTRATOR_REGISTRY_PASSWORD")) {
            config.registries.credentials = Some(Credentials { username, password });
        }
        config.registries.docker_config =
            path("DOCKER_CONFIG").or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")));
        config.plugin_cache = path("ORCHESTRATOR_PLUGIN_CACHE");
        config.kernel_dir = path("ORCHESTRATOR_KERNEL_DIR");
        config.dns_upstream = var("ORCHESTRATOR_DNS_UPSTREAM");
        if let Some(secs) = var("ORCHESTRATOR_VM_READY_TIMEOUT").and_then(|s| s.parse::<u64>().ok()) {
            config.vm_ready_timeout = Duration::from_secs(secs);
        }
        config.binary = path("ORCHESTRATOR_BIN");
        config.guest_agent = path("ORCHESTRATOR_GUEST_AGENT");
        config.guest_cmdline_append = var("ORCHESTRATOR_GUEST_CMDLINE_APPEND");
        config
    }

    /// The program shims run from. The `orchestrator` front hands `__shim` to the core beside
    /// it, so a configured front is replaced by that core (one exec fewer per sandbox start).
    pub fn binary(&self) -> PathBuf {
        let binary = self.binary.clone().unwrap_or_else(|| std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")));
        let core = binary.with_file_name("orchestrator-core");
        if binary.file_name().is_some_and(|n| n == "orchestrator") && core.exists() {
            core
        } else {
            binary
        }
    }

    /// Where compiled plugin components are cached.
    pub fn plugin_cache(&self) -> PathBuf {
        self.plugin_cache.clone().unwrap_or_else(|| self.data_dir.join("plugins").join("cache"))
    }

    /// The DNS servers sandboxes' queries go to.
    pub fn dns_upstreams(&self) -> Result<Vec<std::net::SocketAddr>, String> {
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        netstack::dns::upstreams(self.dns_upstream.as_deref(), &resolv)
    }
}

/// A comma-separated list, trimmed, empty entries dropped.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_print_their_password() {
        let c = Credentials { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn lists_drop_blanks() {
        assert_eq!(split_list(" a:1, ,b:2,"), ["a:1", "b:2"]);
    }
}
