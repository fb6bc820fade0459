//! Volumes in the control loop: declaring one (`volume create`, `POST /v1/volumes`), making,
//! growing and deleting disks as applied Volumes change, and refusing to delete one that
//! declared sandboxes mount (the data would go from under them).

use super::{sandbox_spec, Orchestrator, ReconcileError, Result};
use crate::spec::{Kind, Manifest, Resource, ResourceSpec, VolumeSpec};
use crate::store::{Store, StoreError};
use crate::view::{Action, ActionResult, Change, Plan};

pub(super) fn volume_in_use(name: &str, users: &[String]) -> ReconcileError {
    let them = if users.len() == 1 { "it" } else { "them" };
    ReconcileError::Conflict(format!("volume {name:?} is mounted by sandbox {}; delete {them} first, or delete the volume with --force", users.join(", ")))
}

/// Volumes a plan would delete while sandboxes of the resulting desired state still mount
/// them: each is a conflict (the data would go from under them).
pub(super) fn volumes_still_mounted(existing: &[crate::store::StoredResource], manifests: &[Manifest], plan: &Plan) -> Vec<String> {
    let deleted = |kind: Kind, name: &str| plan.items.iter().any(|i| i.change == Change::Delete && i.kind == kind && i.name == name);
    let after: Vec<&Resource> = manifests
        .iter()
        .map(|m| &m.resource)
        .chain(existing.iter().map(|e| &e.resource).filter(|r| !deleted(r.kind(), &r.name) && !manifests.iter().any(|m| m.resource.kind() == r.kind() && m.resource.name == r.name)))
        .collect();
    plan.items
        .iter()
        .filter(|i| i.change == Change::Delete && i.kind == Kind::Volume)
        .filter_map(|i| {
            let users: Vec<&str> =
                after.iter().filter_map(|r| sandbox_spec(r).filter(|s| crate::volume::mounts_volume(&s.volumes, &i.name)).map(|_| r.name.as_str())).collect();
            (!users.is_empty()).then(|| {
                format!("Volume/{} ({}) would be deleted while sandbox {} mount{} it; remove those mounts first", i.name, i.origin, users.join(", "), if users.len() == 1 { "s" } else { "" })
            })
        })
        .collect()
}

impl Orchestrator {
    /// Declares volume `name` (a new name only) under `source` and makes its disk; a disk that
    /// cannot be made leaves nothing declared.
    pub fn create_volume(&mut self, name: &str, spec: VolumeSpec, source: &str, origin: &str) -> Result<()> {
        if !crate::spec::is_valid_name(name) {
            return Err(ReconcileError::Invalid(format!("{name:?} is not a volume name: lowercase letters, digits and '-', at most 63")));
        }
        crate::spec::check_volume_size(spec.size_bytes()).map_err(|e| ReconcileError::Invalid(format!("size: {e}")))?;
        {
            let _desired = self.lock()?;
            if let Some(existing) = self.store.resource(Kind::Volume, name)? {
                return Err(ReconcileError::Conflict(format!("a volume named {name:?} already exists (source {}); pick another name", existing.source)));
            }
            let tx = self.store.transaction()?;
            let resource = Resource { name: name.into(), labels: Default::default(), spec: ResourceSpec::Volume(spec.clone()) };
            Store::upsert_resource(&tx, &resource, source, origin)?;
            tx.commit()?;
        }
        if let Err(e) = crate::volume::ensure(self.data.root(), name, &spec) {
            let _ = self.delete_volume(name, true);
            return Err(e.into());
        }
        self.store.event(&format!("Volume/{name}"), "Created", &format!("{} ({source})", crate::volume::human(spec.size_bytes())))?;
        Ok(())
    }

    /// Deletes volume `name` and its data; refused while declared sandboxes mount it, unless
    /// `force` (a running one keeps its mount until it ends).
    pub fn delete_volume(&mut self, name: &str, force: bool) -> Result<()> {
        if self.store.resource(Kind::Volume, name)?.is_none() {
            return Err(ReconcileError::NoVolume(name.into()));
        }
        let users = crate::volume::users(&self.store, name)?;
        if !users.is_empty() && !force {
            return Err(volume_in_use(name, &users));
        }
        let tx = self.store.transaction()?;
        tx.execute("DELETE FROM resources WHERE kind = ?1 AND name = ?2", rusqlite::params![Kind::Volume.as_str(), name]).map_err(StoreError::from)?;
        tx.commit()?;
        crate::volume::remove(self.data.root(), name)?;
        self.store.event(&format!("Volume/{name}"), "Deleted", "its data was deleted")?;
        Ok(())
    }

    /// Makes the disks of new Volumes, grows grown ones and deletes deleted ones' data; an
    /// action for each that grew or failed.
    pub(super) fn converge_volumes(&mut self, manifests: &[Manifest], plan: &Plan) -> Result<Vec<Action>> {
        let mut actions = Vec::new();
        for item in plan.items.iter().filter(|i| i.kind == Kind::Volume && i.change != Change::Unchanged) {
            let result = if item.change == Change::Delete {
                crate::volume::remove(self.data.root(), &item.name).map(|()| ActionResult::Removed)
            } else {
                let Some(ResourceSpec::Volume(spec)) = manifests.iter().find(|m| m.resource.kind() == Kind::Volume && m.resource.name == item.name).map(|m| &m.resource.spec) else { continue };
                crate::volume::ensure(self.data.root(), &item.name, spec).map(|e| match e {
                    crate::volume::Ensured::Created => ActionResult::Created,
                    crate::volume::Ensured::Grown => ActionResult::Resized,
                    crate::volume::Ensured::Unchanged => ActionResult::Unchanged,
                })
            };
            let result = result.unwrap_or_else(|e| ActionResult::Failed { message: e.to_string() });
            if let ActionResult::Failed { message } = &result {
                self.store.event(&format!("Volume/{}", item.name), "Failed", message)?;
            }
            // Created and deleted are the plan's own lines already.
            if matches!(result, ActionResult::Resized | ActionResult::Failed { .. }) {
                actions.push(Action { kind: Kind::Volume, name: item.name.clone(), result });
            }
        }
        Ok(actions)
    }
}
