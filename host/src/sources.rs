//! YAML sources through the library: load a file or directory (every problem located), then
//! diff or apply it as one source. A source that does not load changes nothing and is recorded
//! as failing, so `get` and `serve` can say why.

use crate::error::{Error, Result};
use crate::reconcile::Orchestrator;
use crate::spec::{self, Manifest};
use crate::view::{ApplyReport, Plan};
use std::path::Path;

/// The identity of a source: its canonical path.
pub fn source_id(path: &Path) -> Result<String> {
    let canon = std::fs::canonicalize(path).map_err(|e| Error::io(format!("{}", path.display()), e))?;
    Ok(canon.to_string_lossy().into_owned())
}

impl Orchestrator {
    /// Loads and validates a source without touching state.
    pub fn load(&self, path: &Path) -> Result<Vec<Manifest>> {
        spec::load_source(path).map_err(Error::InvalidSpec)
    }

    /// What applying `path` would change (conflicts with other sources included).
    pub fn diff(&self, path: &Path) -> Result<Plan> {
        let manifests = self.load(path)?;
        Ok(self.plan(&source_id(path)?, &manifests, false)?)
    }

    /// Applies a file or directory as one source: creates, updates and (with `prune_empty`,
    /// or when it declares anything) prunes its resources, then converges its sandboxes.
    /// Invalid sources are [`crate::ErrorKind::InvalidSpec`] with every diagnostic, and change
    /// nothing; a resource another source manages is [`crate::ErrorKind::Conflict`].
    pub fn apply_path(&mut self, path: &Path, prune_empty: bool) -> Result<ApplyReport> {
        let manifests = match spec::load_source(path) {
            Ok(m) => m,
            Err(errors) => {
                if let Ok(source) = source_id(path) {
                    let summary = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n");
                    let _lock = self.lock()?;
                    self.record_source_error(&source, &summary)?;
                }
                return Err(Error::InvalidSpec(errors));
            }
        };
        let source = source_id(path)?;
        self.adopt_all()?;
        Ok(self.apply(&source, &manifests, prune_empty)?)
    }
}
