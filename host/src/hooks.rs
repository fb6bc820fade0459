//! The plugin hooks of a sandbox's start, run by the reconciler before the shim launches:
//! rootfs patches (declarative `spec.patches`, then each `hooks.rootfsPatch` plugin in order)
//! on an instance's first start, and `spec.secrets` through their providers on every start.
//! Any failure refuses the start with the plugin's message: secrets and patches fail closed.
//! (Network-policy plugins are called per flow through `plugin::policy`; metrics sinks by
//! `serve`'s loop in `plugin::metrics`.)

use crate::image::ResolvedImage;
use crate::plugin::secrets::ResolvedSecret;
use crate::plugin::{ImageInfo, LoadedPlugin, Registry, SandboxInfo};
use crate::spec::{PluginSpec, Resource, SandboxSpec};
use guest_agent::protocol::{check_patches, PatchOp};
use std::sync::Arc;

/// What the hooks produced for one start.
#[derive(Debug, Default)]
pub struct Prepared {
    pub patches: Vec<PatchOp>,
    pub secrets: Vec<ResolvedSecret>,
}

/// The identity plugins see.
pub fn sandbox_info(resource: &Resource, spec: &SandboxSpec, isolation: &str) -> SandboxInfo {
    SandboxInfo { name: resource.name.clone(), labels: resource.labels.clone(), image: spec.image.clone(), isolation: isolation.to_string() }
}

fn image_info(spec: &SandboxSpec, image: &ResolvedImage) -> ImageInfo {
    let c = &image.config;
    ImageInfo {
        reference: spec.image.clone(),
        digest: image.digest.clone(),
        env: c.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        working_dir: c.workdir.clone().unwrap_or_default(),
        user: c.user.clone().unwrap_or_default(),
    }
}

/// Loads every plugin the sandbox names, so a missing or broken one is reported before
/// anything starts.
pub fn plugins_for(
    registry: &Registry,
    spec: &SandboxSpec,
    lookup: &dyn Fn(&str) -> Option<PluginSpec>,
) -> Result<std::collections::HashMap<String, Arc<LoadedPlugin>>, String> {
    let mut out = std::collections::HashMap::new();
    for (field, name) in spec.plugin_refs() {
        if out.contains_key(name) {
            continue;
        }
        let plugin_spec = lookup(name).ok_or_else(|| {
            format!("spec.{field} names plugin {name:?}, which is not declared; apply a `kind: Plugin` resource named {name}")
        })?;
        let plugin = registry.get(name, &plugin_spec).map_err(|e| format!("spec.{field}: {e}"))?;
        out.insert(name.to_string(), plugin);
    }
    Ok(out)
}

fn loaded<'a>(plugins: &'a std::collections::HashMap<String, Arc<LoadedPlugin>>, name: &str) -> Result<&'a Arc<LoadedPlugin>, String> {
    plugins.get(name).ok_or_else(|| format!("plugin {name} was not loaded"))
}

/// Runs the start hooks. `first_start`: the writable layer is new, so patches apply.
pub fn prepare(
    registry: &Registry,
    lookup: &dyn Fn(&str) -> Option<PluginSpec>,
    info: &SandboxInfo,
    spec: &SandboxSpec,
    image: &ResolvedImage,
    first_start: bool,
) -> Result<Prepared, String> {
    let plugins = plugins_for(registry, spec, lookup)?;
    let mut prepared = Prepared::default();
    if first_start {
        prepared.patches = spec.patches.clone();
        let image = image_info(spec, image);
        for name in &spec.hooks.rootfs_patch {
            let ops = loaded(&plugins, name)?.patch(info, &image).map_err(|e| format!("rootfs patch: {e}"))?;
            tracing::info!(sandbox = %info.name, plugin = %name, "{} patch operations", ops.len());
            prepared.patches.extend(ops);
        }
        check_patches(&prepared.patches).map_err(|e| format!("rootfs patches: {e}"))?;
    }
    for secret in &spec.secrets {
        let value = resolve_secret(&plugins, info, secret)?;
        prepared.secrets.push(ResolvedSecret::new(secret, value));
    }
    Ok(prepared)
}

/// One secret's value from its provider, with the secret named in the error.
pub fn resolve_secret(plugins: &std::collections::HashMap<String, Arc<LoadedPlugin>>, info: &SandboxInfo, secret: &crate::spec::SecretRef) -> Result<String, String> {
    if secret.provider == crate::spec::VALUE_PROVIDER {
        given_value(&info.name, &secret.env)
    } else if secret.builtin_provider() {
        builtin_secret(&secret.provider, &secret.key)
    } else {
        loaded(plugins, &secret.provider)?.resolve_secret(info, &secret.key).map_err(|e| e.to_string())
    }
    .map_err(|e| format!("secret {} (provider {}, key {:?}): {e}", secret.env, secret.provider, secret.key))
}

/// The largest secret the built-in providers read.
const MAX_SECRET: u64 = 64 << 10;

/// The built-in providers (`spec::BUILTIN_SECRET_PROVIDERS`), read where the orchestrator runs
/// when the sandbox starts. A file's one trailing newline is not part of the value.
fn builtin_secret(provider: &str, key: &str) -> Result<String, String> {
    match provider {
        "env" => std::env::var(key).map_err(|_| format!("the host environment variable {key} is not set where the orchestrator runs; set it, or use the file provider")),
        "file" => {
            use std::io::Read;
            let file = std::fs::File::open(key).map_err(|e| format!("reading {key}: {e}"))?;
            let mut text = String::new();
            file.take(MAX_SECRET + 1).read_to_string(&mut text).map_err(|e| format!("reading {key}: {e} (a secret file holds UTF-8 text)"))?;
            if text.len() as u64 > MAX_SECRET {
                crate::plugin::secrets::wipe(&mut text);
                return Err(format!("{key} is larger than {MAX_SECRET} bytes"));
            }
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Ok(text)
        }
        other => Err(format!("{other} is not a built-in provider")),
    }
}

/// Secret values given with a create (library `secret_value`, `POST /v1/sandboxes`), held
/// between the request and the start that hands them to the shim: keyed by sandbox and
/// variable, removed when that create ends (`GivenGuard`), never written anywhere.
static GIVEN: std::sync::Mutex<Vec<(String, String, crate::spec::GivenValue)>> = std::sync::Mutex::new(Vec::new());

/// Moves the values out of `resource`'s secrets (they stay `provider: value`, with no value).
pub fn take_given_values(resource: &mut Resource) -> Vec<(String, crate::spec::GivenValue)> {
    let crate::spec::ResourceSpec::Sandbox(spec) = &mut resource.spec else { return Vec::new() };
    spec.secrets.iter_mut().filter_map(|s| s.value.take().map(|v| (s.env.clone(), v))).collect()
}

/// The given values of one sandbox's create, available to its start while this lives.
pub struct GivenGuard {
    sandbox: String,
}

impl GivenGuard {
    pub fn hold(sandbox: &str, values: Vec<(String, crate::spec::GivenValue)>) -> GivenGuard {
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        given.retain(|(s, _, _)| s != sandbox);
        given.extend(values.into_iter().map(|(env, v)| (sandbox.to_string(), env, v)));
        GivenGuard { sandbox: sandbox.to_string() }
    }
}

impl Drop for GivenGuard {
    fn drop(&mut self) {
        GIVEN.lock().unwrap_or_else(|e| e.into_inner()).retain(|(s, _, _)| *s != self.sandbox);
    }
}

fn given_value(sandbox: &str, env: &str) -> Result<String, String> {
    let given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    given
        .iter()
        .find(|(s, e, _)| s == sandbox && e == env)
        .map(|(_, _, v)| v.0.clone())
        .ok_or_else(|| "the value was given when the sandbox was created and only its shim held it; that shim is gone, so this start cannot have it: delete and re-create the sandbox with the value".to_string())
}
