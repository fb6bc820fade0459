//! Secrets of a sandbox (`spec.secrets`): resolved through their provider plugin when the
//! sandbox starts, kept in memory only. The sandbox gets a placeholder in the named
//! environment variable; the real value goes to the sandbox's shim over a pipe (for the network
//! proxy to substitute into requests to the secret's allowed hosts) and is wiped from memory
//! when dropped. It is never written to the store, a file, a log line or an event.

use serde::{Deserialize, Serialize};

/// One resolved secret.
#[derive(Serialize, Deserialize)]
pub struct ResolvedSecret {
    /// The environment variable that carries the placeholder.
    pub env: String,
    /// What the sandbox sees instead of the value.
    pub placeholder: String,
    /// Host patterns the value may be sent to (see `spec::host_matches`); the shim's TLS
    /// interception substitutes it there only.
    pub allow_hosts: Vec<String>,
    #[serde(default)]
    pub inject_into: Vec<crate::spec::InjectInto>,
    #[serde(default)]
    pub on_violation: crate::spec::OnViolation,
    value: String,
}

impl ResolvedSecret {
    pub fn new(spec: &crate::spec::SecretRef, value: String) -> ResolvedSecret {
        ResolvedSecret {
            placeholder: placeholder(),
            env: spec.env.clone(),
            allow_hosts: spec.allow_hosts.clone(),
            inject_into: spec.inject_into.clone(),
            on_violation: spec.on_violation,
            value,
        }
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

impl std::fmt::Debug for ResolvedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedSecret").field("env", &self.env).field("placeholder", &self.placeholder).field("value", &"<redacted>").finish()
    }
}

impl Drop for ResolvedSecret {
    fn drop(&mut self) {
        wipe(&mut self.value);
    }
}

/// Overwrites a string's bytes before its memory is freed.
pub fn wipe(s: &mut String) {
    // SAFETY: zero bytes are valid UTF-8; volatile writes are not optimised away.
    unsafe {
        for b in s.as_bytes_mut() {
            std::ptr::write_volatile(b, 0);
        }
    }
    s.clear();
}

/// A random token that is safe inside headers, URLs and shell words.
fn placeholder() -> String {
    format!("ORCHESTRATOR_SECRET_{}", crate::ids::random_hex(12))
}

/// Serialises secrets for the shim's stdin; the buffer is the caller's to wipe.
pub fn encode(secrets: &[ResolvedSecret]) -> String {
    serde_json::to_string(secrets).unwrap_or_default()
}

/// Reads what `encode` wrote (in the shim), at most `limit` bytes.
pub fn decode(text: &str) -> Vec<ResolvedSecret> {
    serde_json::from_str(text).unwrap_or_default()
}
