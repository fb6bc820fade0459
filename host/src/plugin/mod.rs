//! The plugin host: WebAssembly components implementing the WIT package in `wit/`
//! (`orchestrator:plugin@0.1.1`), run in wasmtime with no ambient authority.
//!
//! - `engine`: one wasmtime engine per process, the linker, the epoch ticker and the on-disk
//!   cache of compiled code.
//! - `state`: what one store holds (WASI context with only granted capabilities, limits, the
//!   plugin's config) and the `host` imports (log, config); `http`: outgoing HTTP limited to
//!   the granted hosts.
//! - `loaded`: a compiled, pre-instantiated plugin; calls with deadlines, a pool of instances
//!   that is never refilled from a trapped store, and error messages that say what happened.
//! - `kinds`: the typed calls of the four hook kinds, converting to and from WIT types and
//!   validating everything a plugin returns.
//! - `registry`: plugins by name from the applied Plugin resources, reloaded when their
//!   component file or resource changes.
//! - `policy`: network-policy decisions for a sandbox, combined over its plugins, cached.
//! - `secrets`, `metrics`, `inspect`: secret resolution with placeholders, the metrics-sink
//!   loop of `serve`, and `plugin check`.

mod engine;
pub mod evaluate;
pub mod http;
pub mod inspect;
mod kinds;
mod loaded;
pub mod metrics;
pub mod policy;
mod registry;
pub mod secrets;
mod state;

pub use engine::PluginHost;
pub use kinds::{lower_cache_seconds, lower_reason, lower_secret, DiskCounters, DnsVerdict, FlowAction, FlowVerdict, ImageInfo, Protocol, Sample, SandboxInfo};
pub use loaded::{Kind, LoadedPlugin};
pub use registry::Registry;

/// wasmtime's generated bindings for the `all-kinds` world: every interface's types, the
/// `host` import trait and, per exported interface, `GuestIndices` to load just that export.
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "all-kinds",
    });
}

/// The WIT package and version this host implements.
pub const ABI_PACKAGE: &str = "orchestrator:plugin@0.1.1";

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin {plugin}: reading {path}: {source}")]
    Read { plugin: String, path: String, source: std::io::Error },
    #[error("plugin {plugin}: {path} is not a WebAssembly component this host can load: {message}")]
    Compile { plugin: String, path: String, message: String },
    #[error("plugin {plugin}: {message}")]
    Link { plugin: String, message: String },
    #[error("plugin {plugin} does not implement {kind} (it implements: {implemented})")]
    WrongKind { plugin: String, kind: &'static str, implemented: String },
    #[error("plugin {plugin}: {call} timed out after {timeout_ms} ms (spec.limits.timeout)")]
    Timeout { plugin: String, call: &'static str, timeout_ms: u64 },
    #[error("plugin {plugin}: {call} exceeded its memory limit of {limit} bytes (spec.limits.memory)")]
    Memory { plugin: String, call: &'static str, limit: u64 },
    #[error("plugin {plugin}: {call} trapped: {message}")]
    Trap { plugin: String, call: &'static str, message: String },
    #[error("plugin {plugin}: {call} returned an error: {message}")]
    Refused { plugin: String, call: &'static str, message: String },
    #[error("plugin {plugin}: {call} returned something invalid: {message}")]
    Invalid { plugin: String, call: &'static str, message: String },
    #[error("plugin {0} is not declared: apply a `kind: Plugin` resource with that name")]
    NotFound(String),
    #[error("plugin {plugin}: the granted directory {dir}: {source}")]
    Grant { plugin: String, dir: String, source: std::io::Error },
}

/// Cuts a message a plugin produced to a size fit for logs and errors.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}
