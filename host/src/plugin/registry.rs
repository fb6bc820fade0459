//! Plugins by name, loaded on first use and reloaded when their Plugin resource or component
//! file changes. A reload replaces the entry; calls already running keep the old plugin (they
//! hold an `Arc`), new calls get the new one. The wasmtime engine is created on first use, so a
//! CLI command that touches no plugin pays nothing for this.

use super::engine::PluginHost;
use super::loaded::LoadedPlugin;
use super::PluginError;
use crate::spec::PluginSpec;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// What identifies one version of a plugin without reading its file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    spec: String,
    inode: u64,
    len: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(spec: &PluginSpec) -> Option<Stamp> {
        let meta = std::fs::metadata(&spec.component).ok()?;
        Some(Stamp {
            spec: serde_json::to_string(spec).unwrap_or_default(),
            inode: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }
}

pub struct Registry {
    cache_dir: Option<PathBuf>,
    host: OnceLock<Arc<PluginHost>>,
    loaded: Mutex<HashMap<String, (Stamp, Arc<LoadedPlugin>)>>,
    /// The version last tried by `refresh`, so a broken component is reported once.
    attempted: Mutex<HashMap<String, Stamp>>,
}

impl Registry {
    pub fn new(cache_dir: Option<PathBuf>) -> Registry {
        Registry { cache_dir, host: OnceLock::new(), loaded: Mutex::new(HashMap::new()), attempted: Mutex::new(HashMap::new()) }
    }

    pub fn host(&self) -> Result<Arc<PluginHost>, PluginError> {
        if let Some(h) = self.host.get() {
            return Ok(h.clone());
        }
        let host = PluginHost::new(self.cache_dir.clone())?;
        Ok(self.host.get_or_init(|| host).clone())
    }

    /// The plugin for this resource, loading or reloading it when needed.
    pub fn get(&self, name: &str, spec: &PluginSpec) -> Result<Arc<LoadedPlugin>, PluginError> {
        let stamp = Stamp::of(spec);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(stamp), Some((old, plugin))) = (&stamp, loaded.get(name)) {
            if old == stamp {
                return Ok(plugin.clone());
            }
        }
        let plugin = Arc::new(self.host()?.load(name, spec)?);
        match stamp {
            Some(stamp) => {
                if loaded.contains_key(name) {
                    tracing::info!(plugin = name, "reloaded (component {})", &plugin.digest[..12]);
                }
                loaded.insert(name.to_string(), (stamp, plugin.clone()));
            }
            None => {
                loaded.remove(name);
            }
        }
        Ok(plugin)
    }

    /// Loads the plugin if this version of it was not tried yet: `None` when nothing changed,
    /// else whether it loads. Lets apply and serve report a broken component once, at once.
    pub fn refresh(&self, name: &str, spec: &PluginSpec) -> Option<Result<Arc<LoadedPlugin>, PluginError>> {
        let stamp = Stamp::of(spec);
        {
            let mut attempted = self.attempted.lock().unwrap_or_else(|e| e.into_inner());
            if stamp.is_some() && attempted.get(name) == stamp.as_ref() {
                return None;
            }
            match &stamp {
                Some(s) => attempted.insert(name.to_string(), s.clone()),
                None => attempted.remove(name),
            };
        }
        Some(self.get(name, spec))
    }

    /// Drops plugins whose resources are gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).retain(|name, _| keep(name));
        self.attempted.lock().unwrap_or_else(|e| e.into_inner()).retain(|name, _| keep(name));
    }
}
