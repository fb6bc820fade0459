//! Outgoing HTTP for plugins (`wasi:http`), limited to the hosts their Plugin resource grants
//! (`spec.grants.httpHosts`). Every plugin links `wasi:http`, so components built with an HTTP
//! client load; without a grant every request is refused with `HTTP-request-denied` before any
//! connection is made.
//!
//! A grant is `HOST` (any port), `HOST:PORT`, or `*.DOMAIN` (any subdomain, not DOMAIN itself).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Why a grant entry is not usable, for validation.
pub fn check_grant(entry: &str) -> Result<(), String> {
    let (host, port) = split_port(entry);
    let host = host.strip_prefix("*.").unwrap_or(host);
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        return Err(format!("{entry:?} is not a host name, `host:port` or `*.domain`"));
    }
    if let Some(p) = port {
        p.parse::<u16>().map_err(|_| format!("{entry:?}: {p:?} is not a port"))?;
    }
    Ok(())
}

fn split_port(entry: &str) -> (&str, Option<&str>) {
    match entry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (entry, None),
    }
}

/// Whether `host:port` is covered by one of `grants`.
pub fn allowed(grants: &[String], host: &str, port: u16) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    grants.iter().any(|grant| {
        let grant = grant.to_ascii_lowercase();
        let (pattern, grant_port) = split_port(&grant);
        if grant_port.is_some_and(|p| p.parse::<u16>() != Ok(port)) {
            return false;
        }
        match pattern.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == pattern,
        }
    })
}

/// The `wasi:http` hooks of one plugin store.
pub(super) struct HttpGrant {
    pub plugin: Arc<str>,
    pub hosts: Arc<Vec<String>>,
    /// The plugin's call deadline. A guest blocked in an HTTP wait sits in a host call that the
    /// epoch deadline cannot interrupt, so every network wait is bounded by it too.
    pub timeout: Duration,
}

type Sent = Box<dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>)>> + Send>;

impl WasiHttpHooks for HttpGrant {
    fn send_request(&mut self, request: http::Request<WasiBody>, options: Option<RequestOptions>, fut: Box<dyn Future<Output = Result<(), Error>> + Send>) -> Sent {
        let uri = request.uri();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = uri.host().unwrap_or_default().to_string();
        if !allowed(&self.hosts, &host, port) {
            tracing::warn!(plugin = %self.plugin, "HTTP request to {host}:{port} denied: not in spec.grants.httpHosts");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        tracing::debug!(plugin = %self.plugin, "HTTP request to {host}:{port}");
        let asked = options.unwrap_or_default();
        let cap = |t: Option<Duration>| Some(t.map_or(self.timeout, |t| t.min(self.timeout)));
        let options = RequestOptions {
            connect_timeout: cap(asked.connect_timeout),
            first_byte_timeout: cap(asked.first_byte_timeout),
            between_bytes_timeout: cap(asked.between_bytes_timeout),
        };
        wasmtime_wasi_http::default_hooks().send_request(request, Some(options), fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_hosts_ports_and_subdomains() {
        let grants: Vec<String> = ["vault.internal", "127.0.0.1:18080", "*.example.com"].iter().map(|s| s.to_string()).collect();
        assert!(allowed(&grants, "vault.internal", 443));
        assert!(allowed(&grants, "VAULT.internal.", 80));
        assert!(allowed(&grants, "127.0.0.1", 18080));
        assert!(!allowed(&grants, "127.0.0.1", 18081));
        assert!(allowed(&grants, "api.example.com", 443));
        assert!(!allowed(&grants, "example.com", 443));
        assert!(!allowed(&grants, "evil.com", 443));
        assert!(!allowed(&grants, "vault.internal.evil.com", 443));
        assert!(!allowed(&[], "vault.internal", 443));
        assert!(check_grant("a.b:80").is_ok() && check_grant("*.b").is_ok());
        assert!(check_grant("http://x").is_err() && check_grant("x:port").is_err() && check_grant("").is_err());
    }
}
