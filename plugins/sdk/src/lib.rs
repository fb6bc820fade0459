//! Write orchestrator plugins in Rust: one trait per hook kind (generated from `wit/` by
//! wit-bindgen), an export macro per kind, and helpers for what every plugin needs (its
//! config, logging, address checks).
//!
//! ```ignore
//! use orchestrator_plugin_sdk::network_policy::{self, Decision, DnsDecision, DnsQuery, Flow};
//!
//! struct Guard;
//! impl network_policy::Guest for Guard {
//!     fn decide_flow(flow: Flow) -> Decision { ... }
//!     fn decide_dns(query: DnsQuery) -> DnsDecision { ... }
//! }
//! orchestrator_plugin_sdk::export_network_policy!(Guard);
//! ```
//!
//! Build with `cargo rustc --target wasm32-wasip2 --release --crate-type cdylib`; the `.wasm`
//! is a component.
//! On other targets the crate compiles too, so a plugin's logic can be unit-tested natively;
//! there the host functions are replaced by [`testing`] (config from a thread-local, logs to
//! stderr).

/// Bindings of the `network-policy-plugin` world.
pub mod network_policy_world {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "network-policy-plugin",
        default_bindings_module: "orchestrator_plugin_sdk::network_policy_world",
        pub_export_macro: true,
        export_macro_name: "export_network_policy",
    });
}

/// Bindings of the `rootfs-patch-plugin` world.
pub mod rootfs_patch_world {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "rootfs-patch-plugin",
        default_bindings_module: "orchestrator_plugin_sdk::rootfs_patch_world",
        pub_export_macro: true,
        export_macro_name: "export_rootfs_patch",
    });
}

/// Bindings of the `secret-provider-plugin` world.
pub mod secret_provider_world {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "secret-provider-plugin",
        default_bindings_module: "orchestrator_plugin_sdk::secret_provider_world",
        pub_export_macro: true,
        export_macro_name: "export_secret_provider",
    });
}

/// Bindings of the `metrics-sink-plugin` world.
pub mod metrics_sink_world {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "metrics-sink-plugin",
        default_bindings_module: "orchestrator_plugin_sdk::metrics_sink_world",
        pub_export_macro: true,
        export_macro_name: "export_metrics_sink",
    });
}

/// Bindings of the `metrics-sink-v2-plugin` world (WIT 0.1.1).
pub mod metrics_sink_v2_world {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "metrics-sink-v2-plugin",
        default_bindings_module: "orchestrator_plugin_sdk::metrics_sink_v2_world",
        pub_export_macro: true,
        export_macro_name: "export_metrics_sink_v2",
    });
}

pub use metrics_sink_v2_world::export_metrics_sink_v2;
pub use metrics_sink_world::export_metrics_sink;
pub use network_policy_world::export_network_policy;
pub use rootfs_patch_world::export_rootfs_patch;
pub use secret_provider_world::export_secret_provider;

/// The network-policy kind: implement `Guest` (decide-flow, decide-dns).
pub mod network_policy {
    pub use crate::network_policy_world::exports::orchestrator::plugin::network_policy::*;
    pub use crate::network_policy_world::orchestrator::plugin::types::{IpAddress, SandboxInfo};
}

/// The rootfs-patch kind: implement `Guest` (patch).
pub mod rootfs_patch {
    pub use crate::rootfs_patch_world::exports::orchestrator::plugin::rootfs_patch::*;
    pub use crate::rootfs_patch_world::orchestrator::plugin::types::SandboxInfo;
}

/// The secret-provider kind: implement `Guest` (resolve).
pub mod secret_provider {
    pub use crate::secret_provider_world::exports::orchestrator::plugin::secret_provider::*;
    pub use crate::secret_provider_world::orchestrator::plugin::types::SandboxInfo;
}

/// The metrics-sink kind as 0.1.0 defined it: implement `Guest` (receive).
pub mod metrics_sink {
    pub use crate::metrics_sink_world::exports::orchestrator::plugin::metrics_sink::*;
}

/// The metrics-sink kind with memory peak, disk and network counters (0.1.1): implement
/// `Guest` (receive). A new sink should use this one.
pub mod metrics_sink_v2 {
    pub use crate::metrics_sink_v2_world::exports::orchestrator::plugin::metrics_sink_v2::*;
}

/// Log levels of the host's `log` function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Writes a line to the orchestrator's log, tagged with this plugin's name.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use network_policy_world::orchestrator::plugin::host;
        let level = match level {
            Level::Trace => host::Level::Trace,
            Level::Debug => host::Level::Debug,
            Level::Info => host::Level::Info,
            Level::Warn => host::Level::Warn,
            Level::Error => host::Level::Error,
        };
        host::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    testing::log(level, message);
}

/// This plugin's `spec.config` from its Plugin resource.
pub fn config() -> std::collections::BTreeMap<String, String> {
    #[cfg(target_arch = "wasm32")]
    {
        network_policy_world::orchestrator::plugin::host::config().into_iter().collect()
    }
    #[cfg(not(target_arch = "wasm32"))]
    testing::config()
}

/// Address checks policy authors keep rewriting.
pub mod ip {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// The WIT address as a std address.
    pub fn to_std(ip: &crate::network_policy::IpAddress) -> IpAddr {
        use crate::network_policy::IpAddress;
        match *ip {
            IpAddress::Ipv4((a, b, c, d)) => IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
        }
    }

    /// Loopback, private (RFC 1918, ULA), link-local (cloud metadata lives there), CGNAT,
    /// "this network", unspecified, and IPv4-mapped forms of those.
    pub fn is_private(ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                a == 0 || a == 10 || a == 127 || (a == 100 && (64..128).contains(&b)) || (a == 169 && b == 254) || (a == 172 && (16..32).contains(&b)) || (a == 192 && b == 168)
            }
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    return is_private(IpAddr::V4(v4));
                }
                let first = v6.segments()[0];
                v6.is_loopback() || v6.is_unspecified() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
            }
        }
    }
}

/// Stand-ins for the host functions when a plugin's logic runs natively (unit tests).
#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    thread_local! {
        static CONFIG: RefCell<BTreeMap<String, String>> = const { RefCell::new(BTreeMap::new()) };
        static LOGS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    /// Sets what `config()` returns on this thread.
    pub fn set_config(pairs: &[(&str, &str)]) {
        CONFIG.with(|c| *c.borrow_mut() = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    }

    pub(crate) fn config() -> BTreeMap<String, String> {
        CONFIG.with(|c| c.borrow().clone())
    }

    pub(crate) fn log(level: super::Level, message: &str) {
        LOGS.with(|l| l.borrow_mut().push(format!("{level:?}: {message}")));
    }

    /// Lines logged on this thread so far (and clears them).
    pub fn take_logs() -> Vec<String> {
        LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::ip::is_private;

    #[test]
    fn private_ranges() {
        for private in ["10.1.2.3", "127.0.0.1", "169.254.169.254", "172.31.0.1", "192.168.0.1", "100.64.0.1", "0.0.0.0", "::1", "fd00::1", "fe80::1", "::ffff:10.0.0.1"] {
            assert!(is_private(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "172.32.0.1", "100.128.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!is_private(public.parse().unwrap()), "{public}");
        }
    }
}
