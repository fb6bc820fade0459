//! Read-only operations every front end shares: the views of resources (`get`, `ps`,
//! `inspect`), one sandbox's view with its events (`describe`), the event log, and naming a
//! sandbox by a unique prefix of its instance id. What they return is `view`'s types.

use crate::error::{Error, Result};
use crate::net_counters::NetworkCounters;
use crate::reconcile::Orchestrator;
use crate::spec::Kind;
use crate::store::{Event, SandboxRow, Status, StoredResource};
use crate::view::{PluginView, ResourceView, VolumeView};
use serde::Serialize;

/// One sandbox in detail: its view and its newest events, oldest first.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Description {
    #[serde(flatten)]
    pub view: ResourceView,
    pub events: Vec<Event>,
}


impl Orchestrator {
    /// Current sandbox rows: each refreshed and stored when its lock is free, else observed
    /// without writing (someone is changing it; they own the writes).
    pub fn sandbox_rows(&mut self) -> Result<Vec<SandboxRow>> {
        let rows = self.store.sandboxes()?;
        rows.iter()
            .map(|r| match self.try_lock_object(&r.name) {
                Some(_lock) => self.refresh(r).map_err(Error::from),
                None => Ok(self.observe(r)),
            })
            .collect()
    }

    /// The network counters its shim last wrote, for a running sandbox with a link.
    pub fn network_counters(&self, row: &SandboxRow) -> Option<NetworkCounters> {
        if row.status != Status::Running {
            return None;
        }
        NetworkCounters::read(&self.instance_dir(row))
    }

    fn view_of(&self, r: &StoredResource, rows: &[SandboxRow]) -> ResourceView {
        let row = (r.resource.kind() == Kind::Sandbox).then(|| rows.iter().find(|x| x.name == r.resource.name)).flatten();
        ResourceView::new(r, row, row.and_then(|row| self.network_counters(row)))
    }

    /// Every resource of `kind` (all kinds for None), as `get -o json` shows them.
    pub fn views(&mut self, kind: Option<Kind>) -> Result<Vec<ResourceView>> {
        let rows = self.sandbox_rows()?;
        let resources = self.store.resources(kind)?;
        Ok(resources.iter().map(|r| self.view_of(r, &rows)).collect())
    }

    /// Every declared volume with its size, use on the host's disk, and users.
    pub fn volume_views(&self) -> Result<Vec<VolumeView>> {
        let sandboxes = self.store.resources(Some(Kind::Sandbox))?;
        let mut out = Vec::new();
        for stored in self.store.resources(Some(Kind::Volume))? {
            let crate::spec::ResourceSpec::Volume(spec) = &stored.resource.spec else { continue };
            let name = &stored.resource.name;
            let usage = crate::volume::usage(self.data.root(), name);
            let users = sandboxes
                .iter()
                .filter(|s| matches!(&s.resource.spec, crate::spec::ResourceSpec::Sandbox(sb) if crate::volume::mounts_volume(&sb.volumes, name)))
                .map(|s| s.resource.name.clone())
                .collect();
            out.push(VolumeView {
                name: name.clone(),
                size: usage.map_or(spec.size_bytes(), |u| u.size),
                allocated: usage.map_or(0, |u| u.allocated),
                mounted: usage.is_some_and(|u| u.mounted),
                shared: spec.shared,
                users,
                source: stored.source.clone(),
                origin: stored.origin.clone(),
                created_at: stored.created_at.clone(),
                labels: stored.resource.labels.clone(),
                error: usage.is_none().then(|| "no disk yet: it is made at the next apply or at the first start of a sandbox that mounts it".to_string()),
            });
        }
        Ok(out)
    }

    /// Every applied plugin, loaded (compiled once, then from the cache) to tell what it
    /// implements; one that cannot load says why instead.
    pub fn plugin_views(&self) -> Result<Vec<PluginView>> {
        let mut out = Vec::new();
        for stored in self.store.resources(Some(Kind::Plugin))? {
            let crate::spec::ResourceSpec::Plugin(spec) = &stored.resource.spec else { continue };
            let (implements, error) = match self.plugins.get(&stored.resource.name, spec) {
                Ok(p) => (p.kinds().iter().map(|k| k.as_str().to_string()).collect(), None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            out.push(PluginView { name: stored.resource.name.clone(), implements, component: spec.component.clone(), source: stored.source.clone(), error });
        }
        Ok(out)
    }

    /// Every sandbox, whatever its status.
    pub fn list(&mut self) -> Result<Vec<ResourceView>> {
        self.views(Some(Kind::Sandbox))
    }

    /// One sandbox's view.
    pub fn get(&mut self, name: &str) -> Result<ResourceView> {
        let r = self.store.resource(Kind::Sandbox, name)?.ok_or_else(|| Error::no_sandbox(name))?;
        let rows = match self.store.sandbox(name)? {
            Some(row) => vec![match self.try_lock_object(name) {
                Some(_lock) => self.refresh(&row)?,
                None => self.observe(&row),
            }],
            None => Vec::new(),
        };
        Ok(self.view_of(&r, &rows))
    }

    /// One sandbox's view and its newest `limit` events.
    pub fn describe(&mut self, name: &str, limit: usize) -> Result<Description> {
        let view = self.get(name)?;
        let events = self.store.events(Some(&format!("Sandbox/{name}")), limit.max(1))?;
        Ok(Description { view, events })
    }

    /// The newest `limit` events of one sandbox, or of every object; oldest first.
    pub fn events(&self, sandbox: Option<&str>, limit: usize) -> Result<Vec<Event>> {
        if let Some(n) = sandbox {
            if self.store.resource(Kind::Sandbox, n)?.is_none() {
                return Err(Error::no_sandbox(n));
            }
        }
        let object = sandbox.map(|n| format!("Sandbox/{n}"));
        Ok(self.store.events(object.as_deref(), limit.max(1))?)
    }

    /// A sandbox by its name, or by a unique prefix of its instance id (as `ps` shows it).
    pub fn resolve_name(&self, text: &str) -> Result<String> {
        if self.store.sandbox(text)?.is_some() || self.store.resource(Kind::Sandbox, text)?.is_some() {
            return Ok(text.to_string());
        }
        let rows = self.store.sandboxes()?;
        let matches: Vec<String> = rows.into_iter().filter(|r| !text.is_empty() && r.instance.starts_with(text)).map(|r| r.name).collect();
        match matches.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::NotFound { what: "sandbox (or instance id prefix)", name: text.to_string() }),
            many => Err(Error::Conflict(format!("{text:?} starts the instance ids of {}; give more of it, or the name", many.join(", ")))),
        }
    }
}

