//! What one plugin store holds, and the `host` interface a plugin imports.
//!
//! A store starts with nothing: no environment, no preopened directory, no network, no HTTP,
//! stdin closed; stdout and stderr go to a bounded buffer whose tail is shown when a call fails.
//! Grants from the Plugin resource add exactly the environment variables, read-only
//! directories and HTTP hosts named there.

use super::bindings::orchestrator::plugin::{host, types};
use super::PluginError;
use crate::spec::PluginSpec;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Default memory per instance when the Plugin resource sets none (interpreters such as
/// componentize-py's need tens of MiB).
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// stdout + stderr kept per instance; an instance that filled half of it is not reused.
pub(super) const OUTPUT_CAPACITY: usize = 256 * 1024;
const MAX_LOG_LINE: usize = 4096;
const MAX_LOG_LINES_PER_CALL: u32 = 1000;
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
const MAX_INSTANCES: usize = 1_000;
const MAX_TABLES_OR_MEMORIES: usize = 1_000;

pub struct StoreState {
    plugin: Arc<str>,
    config: Arc<Vec<(String, String)>>,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    http_grant: super::http::HttpGrant,
    table: ResourceTable,
    pub(super) limiter: Limiter,
    pub(super) output: MemoryOutputPipe,
    log_lines: u32,
}

/// Memory and table limits; remembers that it refused, so the error can say why.
pub(super) struct Limiter {
    pub memory_limit: u64,
    pub memory_refused: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_limit {
            self.memory_refused = true;
            // A trap rather than a failed grow: guests rarely handle `memory.grow` failing.
            wasmtime::bail!("memory limit of {} bytes exceeded (wanted {desired})", self.memory_limit);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES_OR_MEMORIES
    }

    fn memories(&self) -> usize {
        MAX_TABLES_OR_MEMORIES
    }
}

impl StoreState {
    pub(super) fn new(plugin: Arc<str>, spec: &PluginSpec, config: Arc<Vec<(String, String)>>) -> Result<StoreState, PluginError> {
        let output = MemoryOutputPipe::new(OUTPUT_CAPACITY);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(output.clone()).stderr(output.clone());
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        for name in &spec.grants.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        for grant in &spec.grants.read_only_dirs {
            let (host_dir, guest_dir) = grant_paths(grant);
            wasi.preopened_dir(host_dir, guest_dir, FsPerms::ReadOnly).map_err(|e| PluginError::Grant {
                plugin: plugin.to_string(),
                dir: host_dir.to_string(),
                source: std::io::Error::other(format!("{e:#}")),
            })?;
        }
        let http_grant = super::http::HttpGrant {
            plugin: plugin.clone(),
            hosts: Arc::new(spec.grants.http_hosts.clone()),
            timeout: std::time::Duration::from_millis(spec.timeout_ms.unwrap_or(super::loaded::DEFAULT_TIMEOUT_MS)),
        };
        Ok(StoreState {
            plugin,
            config,
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            http_grant,
            table: ResourceTable::new(),
            limiter: Limiter { memory_limit: spec.memory.unwrap_or(DEFAULT_MEMORY), memory_refused: false },
            output,
            log_lines: 0,
        })
    }

    /// Called before every guest call.
    pub(super) fn begin_call(&mut self) {
        self.log_lines = 0;
    }

    /// The last `max` bytes the plugin printed, for error messages.
    pub(super) fn output_tail(&self, max: usize) -> String {
        let all = self.output.contents();
        let start = all.len().saturating_sub(max);
        String::from_utf8_lossy(&all[start..]).trim().to_string()
    }

    pub(super) fn output_len(&self) -> usize {
        self.output.contents().len()
    }
}

/// A grant is `HOST_DIR` (seen at the same path) or `HOST_DIR:GUEST_DIR`.
pub(super) fn grant_paths(grant: &str) -> (&str, &str) {
    match grant.split_once(':') {
        Some((host, guest)) if !guest.is_empty() => (host, guest),
        _ => (grant, grant),
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { hooks: &mut self.http_grant, table: &mut self.table, ctx: &mut self.http }
    }
}

impl types::Host for StoreState {}

impl host::Host for StoreState {
    fn log(&mut self, level: host::Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            if self.log_lines == MAX_LOG_LINES_PER_CALL + 1 {
                tracing::warn!(plugin = %self.plugin, "more than {MAX_LOG_LINES_PER_CALL} log lines in one call; the rest of this call's lines are dropped");
            }
            return;
        }
        let message = super::bounded(&message, MAX_LOG_LINE);
        let plugin = &*self.plugin;
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, "{message}"),
            host::Level::Info => tracing::info!(plugin, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, "{message}"),
            host::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn config(&mut self) -> Vec<(String, String)> {
        self.config.as_ref().clone()
    }
}
