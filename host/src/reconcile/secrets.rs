//! Secret rotation under `serve`: the values of running sandboxes' secrets are resolved again
//! from their providers (plugins, the built-in env and file providers) and handed to each
//! shim, which uses them for requests from then on. Placeholders stay; nothing restarts.
//!
//! A provider that fails keeps the value the shim has (an event says so); secrets given by value
//! are not refreshed (no provider holds them).

use super::{object, Orchestrator};
use crate::spec::{Resource, ResourceSpec};
use crate::store::Status;

impl Orchestrator {
    /// Resolves and sends every running sandbox's provider secrets once; returns how many
    /// sandboxes were updated.
    pub fn refresh_secrets(&self) -> crate::store::Result<usize> {
        let mut updated = 0;
        for row in self.store.sandboxes()? {
            if row.status != Status::Running {
                continue;
            }
            let Ok(resource) = serde_json::from_str::<Resource>(&row.spec) else { continue };
            let ResourceSpec::Sandbox(spec) = &resource.spec else { continue };
            let refreshable: Vec<_> = spec.secrets.iter().filter(|s| s.provider != crate::spec::VALUE_PROVIDER).collect();
            if refreshable.is_empty() {
                continue;
            }
            let lookup = |name: &str| self.plugin_spec(name);
            let info = crate::hooks::sandbox_info(&resource, spec, &row.isolation);
            let outcome = crate::hooks::plugins_for(&self.plugins, spec, &lookup).and_then(|plugins| {
                refreshable
                    .iter()
                    .map(|s| crate::hooks::resolve_secret(&plugins, &info, s).map(|value| crate::plugin::secrets::SecretValue { env: s.env.clone(), value }))
                    .collect::<Result<Vec<_>, String>>()
            });
            let sent = outcome.and_then(|values| {
                let mut text = serde_json::to_string(&values).map_err(|e| e.to_string())?;
                let reply = crate::client::ShimClient::connect(&self.instance_dir(&row).socket())
                    .map_err(|e| format!("reaching the shim: {e}"))
                    .and_then(|mut c| c.call(guest_agent::protocol::ShimRequest::UpdateSecrets { values: text.clone() }).map_err(|e| e.to_string()));
                crate::plugin::secrets::wipe(&mut text);
                match reply? {
                    guest_agent::protocol::Response::Done => Ok(()),
                    guest_agent::protocol::Response::Error { message, .. } => Err(message),
                    other => Err(format!("unexpected answer {other:?}")),
                }
            });
            match sent {
                Ok(()) => updated += 1,
                Err(e) => {
                    tracing::warn!(sandbox = %row.name, "refreshing secrets: {e}");
                    let _ = self.store.event(&object(&row.name), "SecretRefreshFailed", &format!("the running sandbox keeps its values: {e}"));
                }
            }
        }
        Ok(updated)
    }
}
