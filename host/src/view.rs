//! The typed views of the orchestrator's state that every front end renders: the CLI's
//! `get -o json|yaml` and tables, `serve`'s log, and (later) the HTTP API and the SDKs. One
//! definition each; the JSON a user sees is these types serialised, never built by hand.

use crate::net_counters::NetworkCounters;
use crate::spec::{Kind, ResourceSpec};
use crate::store::{SandboxRow, StoredResource};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A declared resource and, for a sandbox with an instance, how that instance is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceView {
    pub name: String,
    /// `Sandbox`, `Volume` or `Plugin`.
    pub kind: String,
    /// A sandbox's status (`Pending` until it has an instance); `Pending` for other kinds.
    pub status: String,
    /// `namespace` or `microvm` once a sandbox has an instance; what was asked for before.
    pub isolation: String,
    pub image: String,
    /// Who declared it: a file's or directory's source id, `cli` for `run`.
    pub source: String,
    /// Where it was declared (file and line).
    pub origin: String,
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceView>,
}

/// A sandbox's current instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// The instance id (a new one each time the sandbox is re-created); absent, with every
    /// field below, while the sandbox has no instance.
    #[schema(required = false)]
    pub instance: String,
    #[schema(required = false)]
    pub restarts: i64,
    /// The main process's last exit code, shell style (128 + signal for a kill).
    pub exit_code: Option<i64>,
    /// Why it is in its status, when that is worth telling.
    pub message: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Its network counters, while it runs with a network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkCounters>,
}

impl ResourceView {
    /// `row` is the sandbox's instance, if it has one; `network` its counters.
    pub fn new(r: &StoredResource, row: Option<&SandboxRow>, network: Option<NetworkCounters>) -> ResourceView {
        let (status, isolation, image) = match &r.resource.spec {
            ResourceSpec::Sandbox(s) => (
                row.map(|x| x.status.as_str()).unwrap_or("Pending"),
                row.map(|x| x.isolation.clone()).unwrap_or_else(|| s.isolation.as_str().to_string()),
                s.image.clone(),
            ),
            _ => ("Pending", String::new(), String::new()),
        };
        ResourceView {
            name: r.resource.name.clone(),
            kind: r.resource.kind().as_str().to_string(),
            status: status.to_string(),
            isolation,
            image,
            source: r.source.clone(),
            origin: r.origin.clone(),
            created_at: r.created_at.clone(),
            labels: r.resource.labels.clone(),
            instance: row.map(|row| InstanceView {
                instance: row.instance.clone(),
                restarts: row.restarts,
                exit_code: row.exit_code,
                message: row.message.clone(),
                started_at: row.started_at.clone(),
                finished_at: row.finished_at.clone(),
                network,
            }),
        }
    }
}

/// A local image, as `image ls -o json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageView {
    /// The normalised reference (`docker.io/library/alpine:3.20`).
    pub reference: String,
    /// `sha256:...` of the manifest it was pulled as.
    pub digest: String,
    pub layers: usize,
    /// Compressed bytes of all layers.
    pub size: u64,
    pub pulled_at: String,
}

impl From<&crate::image::store::ImageRecord> for ImageView {
    fn from(r: &crate::image::store::ImageRecord) -> ImageView {
        ImageView { reference: r.reference.clone(), digest: r.manifest_digest.clone(), layers: r.diff_ids.len(), size: r.size, pulled_at: r.pulled_at.clone() }
    }
}

/// An applied plugin, as `plugin ls` and `GET /v1/plugins` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginView {
    pub name: String,
    /// The hook kinds it implements (`network-policy`, `rootfs-patch`, `secret-provider`,
    /// `metrics-sink`).
    pub implements: Vec<String>,
    /// The component file, as its Plugin resource names it.
    pub component: String,
    pub source: String,
    /// Why it cannot be loaded, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A named volume, as `volume ls`, `get volumes` and `GET /v1/volumes` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    pub name: String,
    /// Its quota, bytes: writes past it fail with ENOSPC inside the sandbox.
    pub size: u64,
    /// Bytes its data (and the filesystem's metadata) takes on the host's disk so far.
    pub allocated: u64,
    /// Some sandbox has it mounted now.
    pub mounted: bool,
    /// Several sandboxes may mount it writable at once.
    pub shared: bool,
    /// Declared sandboxes that mount it.
    pub users: Vec<String>,
    pub source: String,
    pub origin: String,
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    /// Why it has no disk, when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a plan does to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum Change {
    Create,
    Update,
    Delete,
    Unchanged,
}

/// One object of a plan: what changes, and where it was declared.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PlanItem {
    pub kind: Kind,
    pub name: String,
    pub change: Change,
    pub origin: String,
}

/// What `apply` would do (`diff`, `apply --dry-run`), and what stops it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Plan {
    pub items: Vec<PlanItem>,
    pub conflicts: Vec<String>,
    /// The desired set was empty and pruning was not asked for: these were kept.
    pub prune_skipped: Vec<String>,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        self.items.iter().any(|i| i.change != Change::Unchanged)
    }
}

/// What `apply` did: the plan it committed, then what happened to each object it touched.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    pub plan: Plan,
    pub actions: Vec<Action>,
}

impl ApplyReport {
    /// Actions that failed; the desired state is committed anyway (the next reconcile retries).
    pub fn failures(&self) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(|a| matches!(a.result, ActionResult::Failed { .. }))
    }
}

/// One object `apply` acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    pub kind: Kind,
    pub name: String,
    #[serde(flatten)]
    pub result: ActionResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "result")]
pub enum ActionResult {
    /// A sandbox already as declared.
    Unchanged,
    Created,
    /// Removed and made again (its spec changed, or it had ended).
    Recreated,
    /// Started again in place (the same instance).
    Restarted,
    Removed,
    /// Only its network section changed: applied live, nothing restarted.
    NetworkUpdated,
    /// A volume grew to its new size.
    Resized,
    /// A plugin compiled; the hook kinds it implements.
    Loaded { kinds: Vec<String> },
    Failed { message: String },
}

impl ActionResult {
    /// Anything but "already as declared".
    pub fn changed(&self) -> bool {
        *self != ActionResult::Unchanged
    }
}

/// The line `apply` prints and `serve` logs: `sandbox/web created`.
impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ", self.kind.as_str().to_lowercase(), self.name)?;
        match &self.result {
            ActionResult::Unchanged => write!(f, "unchanged"),
            ActionResult::Created => write!(f, "created"),
            ActionResult::Recreated => write!(f, "recreated"),
            ActionResult::Restarted => write!(f, "restarted"),
            ActionResult::Removed => write!(f, "removed"),
            ActionResult::NetworkUpdated => write!(f, "network updated (not restarted)"),
            ActionResult::Resized => write!(f, "resized"),
            ActionResult::Loaded { kinds } => write!(f, "loaded ({})", kinds.join(", ")),
            ActionResult::Failed { message } => write!(f, "failed: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Resource;
    use crate::store::Status;

    fn stored() -> StoredResource {
        let yaml = "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: web, labels: { team: a } }\nspec: { image: alpine }\n";
        let m = crate::spec::parse_str(std::path::Path::new("/srv/web.yaml"), yaml).expect("a valid sandbox").remove(0);
        let resource: Resource = m.resource;
        StoredResource { resource, source: "file:web.yaml".into(), origin: "web.yaml:1".into(), created_at: "2026-12-02T10:00:00Z".into(), updated_at: String::new() }
    }

    #[test]
    fn a_pending_sandbox_shows_no_instance_fields() {
        let v = serde_json::to_value(ResourceView::new(&stored(), None, None)).unwrap();
        assert_eq!(v["name"], "web");
        assert_eq!(v["kind"], "Sandbox");
        assert_eq!(v["status"], "Pending");
        assert_eq!(v["createdAt"], "2026-12-02T10:00:00Z");
        assert_eq!(v["labels"]["team"], "a");
        assert!(v.get("instance").is_none() && v.get("exitCode").is_none(), "{v}");
    }

    #[test]
    fn an_instance_is_flattened_into_the_view_and_reads_back() {
        let row = SandboxRow {
            name: "web".into(),
            instance: "web-1a2b".into(),
            spec: String::new(),
            status: Status::Running,
            isolation: "namespace".into(),
            shim_pid: Some(10),
            exit_code: None,
            restarts: 2,
            message: None,
            user_stopped: false,
            created_at: String::new(),
            started_at: Some("2026-12-02T10:00:01Z".into()),
            finished_at: None,
        };
        let network = NetworkCounters { rx_bytes: 5, ..Default::default() };
        let view = ResourceView::new(&stored(), Some(&row), Some(network));
        let v = serde_json::to_value(&view).unwrap();
        assert_eq!((v["status"].as_str(), v["isolation"].as_str(), v["instance"].as_str()), (Some("Running"), Some("namespace"), Some("web-1a2b")));
        assert_eq!(v["restarts"], 2);
        assert!(v["exitCode"].is_null() && v.get("exitCode").is_some(), "a running sandbox has no exit code yet: {v}");
        assert_eq!(v["network"]["rxBytes"], 5);
        let back: ResourceView = serde_json::from_value(v).unwrap();
        assert_eq!(back, view);
    }

    #[test]
    fn actions_print_as_apply_always_printed_them() {
        let a = |kind, result| Action { kind, name: "x".into(), result };
        assert_eq!(a(Kind::Sandbox, ActionResult::Unchanged).to_string(), "sandbox/x unchanged");
        assert_eq!(a(Kind::Sandbox, ActionResult::Recreated).to_string(), "sandbox/x recreated");
        assert_eq!(a(Kind::Sandbox, ActionResult::NetworkUpdated).to_string(), "sandbox/x network updated (not restarted)");
        assert_eq!(a(Kind::Plugin, ActionResult::Loaded { kinds: vec!["network-policy".into()] }).to_string(), "plugin/x loaded (network-policy)");
        assert_eq!(a(Kind::Sandbox, ActionResult::Failed { message: "boom".into() }).to_string(), "sandbox/x failed: boom");
        assert!(!ActionResult::Unchanged.changed() && ActionResult::Removed.changed());
        let json = serde_json::to_value(a(Kind::Plugin, ActionResult::Failed { message: "m".into() })).unwrap();
        assert_eq!((json["kind"].as_str(), json["result"].as_str(), json["message"].as_str()), (Some("Plugin"), Some("failed"), Some("m")));
    }
}
