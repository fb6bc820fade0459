//! Lock files of names nothing has any more. Every name ever locked leaves `DATA/locks/NAME.lock`
//! behind, and some names are used once: a warm pool's sandboxes and each `/run` or `run --rm`
//! take a new one. Without a sweep the directory grows by a file or two per request, for ever.
//!
//! A lock file is removed only by whoever holds its lock (`paths::remove_lock`); a process that
//! waited on a removed file notices once it gets it and takes the lock from the path again
//! (`paths::lock`), so removing one never lets two holders in, whatever the name is used for.

use super::{Orchestrator, ReconcileError, Result};
use std::collections::HashSet;

impl Orchestrator {
    /// Removes the lock files of names that no resource and no sandbox has, each one only
    /// while this process holds its lock (a lock in use is left alone). Returns how many went.
    pub fn sweep_object_locks(&self) -> Result<usize> {
        let dir = self.data.object_locks();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(ReconcileError::DataDir { path: dir.display().to_string(), source: e }),
        };
        // Listed once: a name given out after this is either locked (and skipped) or, once its
        // lock is free, harmless to remove too (its next user makes the file again).
        let mut in_use: HashSet<String> = self.store.resources(None)?.into_iter().map(|r| r.resource.name).collect();
        in_use.extend(self.store.sandboxes()?.into_iter().map(|row| row.name));
        let mut removed = 0;
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(".lock")) else { continue };
            if in_use.contains(name) {
                continue;
            }
            let path = entry.path();
            let Ok(Some(held)) = crate::paths::try_lock(&path) else { continue };
            match crate::paths::remove_lock(&path, held) {
                Ok(()) => removed += 1,
                Err(e) => tracing::debug!("removing {}: {e}", path.display()),
            }
        }
        Ok(removed)
    }
}
