//! A running sandbox handed out under another name: a warm pool's sandbox becoming the sandbox
//! a client asked for (`POST /v1/sandboxes` when its spec is the pool's), so that the client
//! pays for a rename, not for building a sandbox.
//!
//! Invariants:
//! - Only what nothing but the store has seen may change: the shim refuses a sandbox whose
//!   identity plugins were told (network-policy plugins, metrics sinks) and microVMs (whose
//!   hostname only the guest could change); the caller checks that the specs are equal.
//! - The shim takes the name first (hostname, `HOSTNAME`, the object of its events), then its
//!   config on disk (for a restart or an adopting host), then the store in one transaction: a
//!   failure before the store leaves the old name's rows, which the caller removes.
//! - Both names' locks and the desired-state lock are held throughout: nobody converges either
//!   name meanwhile, and the new name cannot be claimed twice.

use super::{blocking, Sandbox};
use crate::client::ShimClient;
use crate::error::{Error, Result};
use crate::reconcile::Orchestrator;
use crate::spec::{Kind, Resource};
use crate::store::{Status, Store};
use guest_agent::protocol::{Response, ShimRequest};

impl Sandbox {
    /// Makes this running sandbox `resource` (its name, labels and spec, which the caller has
    /// found equal to this sandbox's spec), declared by `source` at `origin`. Returns the handle
    /// under the new name, keeping this one's connection to the shim.
    pub(crate) async fn take_over(self, resource: Resource, source: &'static str, origin: String) -> Result<Sandbox> {
        let this = self.clone();
        let (new, new_name) = (resource.name.clone(), resource.name.clone());
        blocking(move || {
            let mut orch = Orchestrator::open((*this.config).clone())?;
            let old = this.name.clone();
            let _old_lock = orch.lock_object(&old)?;
            let _new_lock = orch.lock_object(&new)?;
            let _desired = orch.lock()?;
            if let Some(existing) = orch.store.resource(Kind::Sandbox, &new)? {
                return Err(Error::Conflict(format!("a sandbox named {new:?} already exists (source {}); remove it first", existing.source)));
            }
            let row = orch.store.sandbox(&old)?.ok_or_else(|| Error::no_sandbox(&old))?;
            if row.status != Status::Running {
                return Err(Error::NotRunning { name: old, status: row.status.as_str().to_string() });
            }
            let dir = orch.instance_dir(&row);
            let mut shim = ShimClient::connect(&dir.socket())?;
            match shim.call(ShimRequest::SetIdentity { name: new.clone() })? {
                Response::Done => {}
                Response::Error { message, .. } => return Err(Error::Conflict(format!("sandbox {old:?} cannot be renamed: {message}"))),
                other => return Err(Error::Protocol(format!("renaming {old:?}: unexpected answer {other:?}"))),
            }
            let mut cfg = crate::shim::ShimConfig::load(dir.path()).map_err(Error::Protocol)?;
            cfg.name = new.clone();
            cfg.labels = resource.labels.clone();
            let json = serde_json::to_vec_pretty(&cfg).map_err(|e| Error::Protocol(e.to_string()))?;
            crate::paths::write_atomic(&dir.config(), &json).map_err(|e| Error::io(format!("writing {}", dir.config().display()), e))?;
            let tx = orch.store.transaction()?;
            Store::rename_sandbox(&tx, &old, &resource, source, &origin)?;
            tx.commit()?;
            if let Err(e) = orch.data.link_socket(&new, &dir) {
                tracing::warn!("linking {new}'s socket: {e}");
            }
            orch.data.unlink_socket(&old, &dir);
            orch.store.event(&format!("Sandbox/{new}"), "Created", &format!("from the warm pool (it was {old}, instance {})", row.instance))?;
            Ok(())
        })
        .await?;
        Ok(Sandbox { name: new_name, config: self.config, connection: self.connection, direct: self.direct })
    }
}
