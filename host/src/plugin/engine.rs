//! One wasmtime engine per process, the linker every plugin is instantiated against, the epoch
//! ticker that enforces call deadlines, and the on-disk cache of compiled components.
//!
//! Invariants:
//! - Every store created from this engine has an epoch deadline before it runs guest code, and
//!   the ticker advances the epoch every `TICK`, so no guest runs unbounded.
//! - A cached artefact is only used when its key matches the component's SHA-256, this
//!   wasmtime's version and the engine's compatibility hash; anything else is recompiled.
//! - The linker offers WASI 0.2 and `wasi:http` (no preopens, environment, sockets or HTTP hosts
//!   unless granted) and the `host` interface; nothing else, so a component importing more fails
//!   to load.

use super::loaded::{LoadInfo, LoadedPlugin, TICK};
use super::state::StoreState;
use super::PluginError;
use crate::spec::PluginSpec;
use crate::ids::hex;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};

const WASMTIME_VERSION: &str = "48";

pub struct PluginHost {
    engine: Engine,
    linker: Linker<StoreState>,
    cache_dir: Option<PathBuf>,
}


impl PluginHost {
    /// `cache_dir`: where compiled code is kept (`DATA_DIR/plugins/cache`); `None` compiles
    /// every time.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Arc<PluginHost>, PluginError> {
        let link_error = |e: wasmtime::Error| PluginError::Link { plugin: "(host)".into(), message: format!("{e:#}") };
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(link_error)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(link_error)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker).map_err(link_error)?;
        super::bindings::AllKinds::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s).map_err(link_error)?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(|e| PluginError::Link { plugin: "(host)".into(), message: format!("starting the epoch thread: {e}") })?;
        if let Some(dir) = &cache_dir {
            let _ = create_private_dir(dir);
        }
        Ok(Arc::new(PluginHost { engine, linker, cache_dir }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles (or loads from the cache) and pre-instantiates the component of `spec`.
    pub fn load(&self, name: &str, spec: &PluginSpec) -> Result<LoadedPlugin, PluginError> {
        let started = Instant::now();
        let path = Path::new(&spec.component);
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read { plugin: name.into(), path: spec.component.clone(), source })?;
        let digest = hex(&Sha256::digest(&bytes));
        let (component, cached) = self.component(name, &spec.component, &bytes, &digest)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| PluginError::Link {
            plugin: name.into(),
            message: format!("{e:#}; this host provides WASI 0.2, wasi:http 0.2 and {} (see docs/plugins.md)", super::ABI_PACKAGE),
        })?;
        LoadedPlugin::new(name, spec, digest, pre, LoadInfo { cached, elapsed: started.elapsed() })
    }

    /// Compiles a component without linking it (for `plugin check`).
    pub fn compile_only(&self, path: &Path) -> Result<(Component, LoadInfo), PluginError> {
        let started = Instant::now();
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read { plugin: shown.clone(), path: shown.clone(), source })?;
        let (component, cached) = self.component(&shown, &shown, &bytes, &hex(&Sha256::digest(&bytes)))?;
        Ok((component, LoadInfo { cached, elapsed: started.elapsed() }))
    }

    /// Whether `component` links against this host (every import provided).
    pub fn link_check(&self, component: &Component) -> Result<(), String> {
        self.linker.instantiate_pre(component).map(|_| ()).map_err(|e| format!("{e:#}"))
    }

    /// `digest`: the hex SHA-256 of `bytes` (hashed once by the caller; 18 MiB takes ~10 ms).
    fn component(&self, name: &str, path: &str, bytes: &[u8], digest: &str) -> Result<(Component, bool), PluginError> {
        let compile_error = |message: String| PluginError::Compile { plugin: name.into(), path: path.into(), message };
        if !wasmparser::Parser::is_component(bytes) {
            let what = if wasmparser::Parser::is_core_wasm(bytes) { "a core WebAssembly module, not a component" } else { "not WebAssembly" };
            return Err(compile_error(format!("{what}; build it with a component toolchain or `wasm-tools component new` (docs/plugins.md)")));
        }
        let cache_file = self.cache_dir.as_ref().map(|dir| dir.join(format!("{digest}-{}.cwasm", self.compatibility())));
        if let Some(file) = &cache_file {
            if file.exists() {
                // SAFETY: the file was written by `Component::serialize` of this same engine
                // configuration (the key says so) into our private data directory.
                match unsafe { Component::deserialize_file(&self.engine, file) } {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => tracing::warn!("plugin cache {}: {e:#}; recompiling", file.display()),
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| compile_error(format!("{e:#}")))?;
        if let Some(file) = &cache_file {
            match component.serialize() {
                Ok(code) => {
                    if let Err(e) = crate::paths::write_atomic(file, &code) {
                        tracing::warn!("caching compiled plugin in {}: {e}", file.display());
                    }
                }
                Err(e) => tracing::warn!("serialising compiled plugin {name}: {e:#}"),
            }
        }
        Ok((component, false))
    }

    /// The part of the cache key that changes with wasmtime and its settings.
    fn compatibility(&self) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        WASMTIME_VERSION.hash(&mut h);
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}
