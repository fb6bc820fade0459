//! Secrets of a sandbox (`spec.secrets`): resolved through their provider (a plugin, the
//! built-in env and file providers, or a value given at create; see `hooks`) when the sandbox
//! starts, kept in memory only. The sandbox gets a placeholder in the named environment
//! variable; the real value goes to the sandbox's shim over a pipe (its TLS interception,
//! `shim::tls`, substitutes it into requests to the secret's allowed hosts), may be replaced
//! there when the provider rotates it (`ShimRequest::UpdateSecrets`), and is wiped from memory
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
    /// Replaced when the provider's value rotates under a running sandbox.
    #[serde(with = "locked")]
    value: std::sync::RwLock<String>,
}

mod locked {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &std::sync::RwLock<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<std::sync::RwLock<String>, D::Error> {
        String::deserialize(d).map(std::sync::RwLock::new)
    }
}

impl ResolvedSecret {
    pub fn new(spec: &crate::spec::SecretRef, value: String) -> ResolvedSecret {
        ResolvedSecret {
            placeholder: placeholder(),
            env: spec.env.clone(),
            allow_hosts: spec.allow_hosts.clone(),
            inject_into: spec.inject_into.clone(),
            on_violation: spec.on_violation,
            value: std::sync::RwLock::new(value),
        }
    }

    /// The current value (a copy: the caller should not keep it longer than a request).
    pub fn value(&self) -> String {
        self.value.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the value (a rotation); the old one is wiped. True when it changed.
    pub fn set_value(&self, mut next: String) -> bool {
        let mut v = self.value.write().unwrap_or_else(|e| e.into_inner());
        if *v == next {
            wipe(&mut next);
            return false;
        }
        wipe(&mut v);
        *v = next;
        true
    }
}

impl std::fmt::Debug for ResolvedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedSecret").field("env", &self.env).field("placeholder", &self.placeholder).field("value", &"<redacted>").finish()
    }
}

impl Drop for ResolvedSecret {
    fn drop(&mut self) {
        wipe(self.value.get_mut().unwrap_or_else(|e| e.into_inner()));
    }
}

/// One rotated value, as `ShimRequest::UpdateSecrets` carries it.
#[derive(Serialize, Deserialize)]
pub struct SecretValue {
    pub env: String,
    pub value: String,
}

impl Drop for SecretValue {
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
