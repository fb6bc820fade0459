//! Handles of the sandboxes that `/v1` requests name, kept from one request to the next. A
//! handle keeps its connection to the sandbox's shim and the file API's short path
//! (`sandbox/direct.rs`); one made for each request opened the store, the shim's socket and the
//! sandbox's root again, which took longer than a small file read or a command itself.
//!
//! Invariants:
//! - A handle stands for a name, not an instance: each request through it reaches whatever
//!   instance runs under that name then (a dead connection is replaced, a dead init's root is
//!   never used), so a kept handle answers as a new one would: a removed sandbox is a 404, a
//!   stopped one a 409.
//! - Only names that named a sandbox when first asked for are kept (an instance-id prefix is
//!   resolved every time), at most [`MAX_KEPT`] of them: past it the set starts again.

use crate::sandbox::Sandbox;
use crate::Config;
use std::collections::HashMap;
use std::sync::Mutex;

/// Handles kept at most (each holds up to three descriptors); more names than this in use at
/// once cost a store lookup each.
pub const MAX_KEPT: usize = 1024;

#[derive(Default)]
pub struct Handles {
    kept: Mutex<HashMap<String, Sandbox>>,
}

impl Handles {
    /// The sandbox `name` (or a unique prefix of its instance id).
    pub async fn get(&self, config: &Config, name: &str) -> crate::Result<Sandbox> {
        if let Some(kept) = self.lock().get(name) {
            return Ok(kept.clone());
        }
        let sandbox = Sandbox::get_in(config.clone(), name).await?;
        if sandbox.name() == name {
            let mut kept = self.lock();
            if kept.len() >= MAX_KEPT {
                kept.clear();
            }
            kept.entry(name.to_string()).or_insert_with(|| sandbox.clone());
        }
        Ok(sandbox)
    }

    /// Drops the handle of a sandbox that was removed (the next request looks it up again).
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sandbox>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}
