//! The secrets' tripwire: placeholders (the stand-ins a sandbox sees for its secrets) found in
//! traffic that no interceptor inspects. A placeholder is only ever substituted inside an
//! intercepted request to one of its secret's hosts (the shim's job); seen anywhere else
//! (plain TCP, a spliced TLS flow's bytes, a UDP datagram, a DNS query) it means code in the
//! sandbox is sending its secret somewhere it may not go, so the flow is ended and reported.
//!
//! Invariants:
//! - A stream is scanned across its chunk boundaries: the last `longest - 1` bytes of what was
//!   passed on are kept and looked at together with the next chunk, so a placeholder split
//!   between two segments is still found.
//! - DNS names are compared without case (resolvers and clients fold it); streams exactly.
//! - The guard holds placeholders and secret names only, never values.

use memchr::memmem;

/// The placeholders of one sandbox's secrets.
#[derive(Debug, Clone, Default)]
pub struct SecretGuard {
    /// (placeholder, the secret's name as events show it)
    entries: Vec<(Vec<u8>, String)>,
    /// The placeholders in lower case, in the same order (for `find_ignore_case`).
    lower: Vec<Vec<u8>>,
    longest: usize,
}

impl SecretGuard {
    /// `entries`: (placeholder, secret name); empty placeholders are ignored.
    pub fn new(entries: impl IntoIterator<Item = (String, String)>) -> SecretGuard {
        let entries: Vec<(Vec<u8>, String)> = entries.into_iter().filter(|(p, _)| !p.is_empty()).map(|(p, n)| (p.into_bytes(), n)).collect();
        let longest = entries.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
        let lower = entries.iter().map(|(p, _)| p.to_ascii_lowercase()).collect();
        SecretGuard { entries, lower, longest }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The secret whose placeholder `haystack` holds, if any.
    pub fn find(&self, haystack: &[u8]) -> Option<&str> {
        self.entries.iter().find(|(p, _)| memmem::find(haystack, p).is_some()).map(|(_, n)| n.as_str())
    }

    /// Like `find`, ignoring ASCII case (DNS names).
    pub fn find_ignore_case(&self, haystack: &[u8]) -> Option<&str> {
        if self.entries.is_empty() {
            return None;
        }
        let haystack = haystack.to_ascii_lowercase();
        self.lower.iter().zip(&self.entries).find(|(p, _)| memmem::find(&haystack, p).is_some()).map(|(_, (_, n))| n.as_str())
    }

    /// Scans `chunk`, the next bytes of a stream whose earlier bytes ended with `tail`.
    pub fn scan_stream(&self, tail: &[u8], chunk: &[u8]) -> Option<&str> {
        if self.entries.is_empty() {
            return None;
        }
        if let Some(n) = self.find(chunk) {
            return Some(n);
        }
        if tail.is_empty() {
            return None;
        }
        let mut seam = Vec::with_capacity(tail.len() + self.longest);
        seam.extend_from_slice(tail);
        seam.extend_from_slice(&chunk[..chunk.len().min(self.longest.saturating_sub(1))]);
        self.find(&seam)
    }

    /// Keeps in `tail` what the next `scan_stream` needs of the bytes just passed on.
    pub fn advance(&self, tail: &mut Vec<u8>, passed: &[u8]) {
        let keep = self.longest.saturating_sub(1);
        if keep == 0 {
            return;
        }
        if passed.len() >= keep {
            tail.clear();
            tail.extend_from_slice(&passed[passed.len() - keep..]);
        } else {
            tail.extend_from_slice(passed);
            let excess = tail.len().saturating_sub(keep);
            tail.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> SecretGuard {
        SecretGuard::new([("ORCHESTRATOR_SECRET_0123456789ab".to_string(), "API_TOKEN".to_string())])
    }

    #[test]
    fn finds_a_placeholder_split_across_chunks_and_nothing_in_clean_streams() {
        let g = guard();
        let stream = b"GET / HTTP/1.1\r\nAuthorization: Bearer ORCHESTRATOR_SECRET_0123456789ab\r\n\r\n";
        for cut in 1..stream.len() {
            let (a, b) = stream.split_at(cut);
            let mut tail = Vec::new();
            let first = g.scan_stream(&tail, a);
            g.advance(&mut tail, a);
            let second = g.scan_stream(&tail, b);
            assert_eq!(first.or(second), Some("API_TOKEN"), "cut at {cut}");
        }
        let mut tail = Vec::new();
        for chunk in [&b"ORCHESTRATOR_SECRET_"[..], b"0123456789a", b"c and more"] {
            assert_eq!(g.scan_stream(&tail, chunk), None);
            g.advance(&mut tail, chunk);
        }
    }

    #[test]
    fn dns_names_match_without_case_and_an_empty_guard_finds_nothing() {
        assert_eq!(guard().find_ignore_case(b"\x20orchestrator_secret_0123456789AB\x04evil\x03com"), Some("API_TOKEN"));
        assert_eq!(SecretGuard::default().scan_stream(b"x", b"ORCHESTRATOR_SECRET_0123456789ab"), None);
        assert_eq!(guard().find(b"orchestrator_secret_0123456789ab"), None);
    }
}
