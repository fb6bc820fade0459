//! What an intercepted request may carry, decided from its head alone: each secret whose
//! placeholder it holds either may go to this destination (then the placeholder is replaced
//! where the secret allows: headers, the query) or may not (then the request is refused before
//! a byte of it leaves). Pure functions over `http` types, so every rule is unit-tested here.
//!
//! A destination is allowed for a secret only when all three names match one of the secret's
//! `allowHosts`: the TLS server name, the request's `Host`/`:authority`, and a name the
//! sandbox's own DNS resolved to the address the flow goes to (so a guest cannot send a
//! request named `api.allowed` to an address of its choosing).

use crate::plugin::secrets::ResolvedSecret;
use crate::spec::{host_matches, InjectInto, OnViolation};
use base64::Engine;
use http::header::HeaderValue;

/// Where an intercepted flow goes, as far as secrets care.
#[derive(Debug, Clone)]
pub struct Destination<'a> {
    pub server_name: &'a str,
    /// Names the sandbox's DNS resolved to the flow's address.
    pub resolved: &'a [String],
}

/// A request refused because it carried a secret's placeholder somewhere it may not go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub secret: String,
    pub reason: String,
    pub stop: bool,
}

/// The head was rewritten; `body_secrets` are the secrets to substitute in the body too, and
/// `watch` the placeholders the body must not carry (secrets that may not go here).
#[derive(Debug, Default)]
pub struct Rewritten<'s> {
    pub body_secrets: Vec<&'s ResolvedSecret>,
    pub watch: Vec<&'s ResolvedSecret>,
}

fn host_of_authority(authority: &str) -> &str {
    // [v6]:port, host:port, host
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map(|(h, _)| h).unwrap_or(authority)
}

/// The request's host: `:authority` (HTTP/2, absolute URIs) or the `Host` header.
pub fn request_host(parts: &http::request::Parts) -> Option<String> {
    let authority = parts.uri.authority().map(|a| a.as_str().to_string()).or_else(|| parts.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))?;
    Some(host_of_authority(&authority).trim_end_matches('.').to_ascii_lowercase())
}

/// Why `secret` may not go to this destination, or None when it may.
pub fn refusal(secret: &ResolvedSecret, dest: &Destination<'_>, host: Option<&str>) -> Option<String> {
    let allowed = |name: &str| secret.allow_hosts.iter().any(|p| host_matches(p, name));
    if secret.allow_hosts.is_empty() {
        return Some("the secret names no allowHosts".into());
    }
    if !allowed(dest.server_name) {
        return Some(format!("{} is not among the secret's allowHosts", dest.server_name));
    }
    match host {
        None => return Some("the request names no host".into()),
        Some(h) if !allowed(h) => return Some(format!("the request's host {h} is not among the secret's allowHosts")),
        Some(_) => {}
    }
    if !dest.resolved.iter().any(|n| allowed(n)) {
        return Some(format!("the address was not resolved from an allowed name by the sandbox's DNS (it resolved {:?})", dest.resolved));
    }
    None
}

fn contains(hay: &[u8], needle: &str) -> bool {
    memchr::memmem::find(hay, needle.as_bytes()).is_some()
}

fn replace_bytes(hay: &[u8], needle: &str, with: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len() + with.len());
    let mut rest = hay;
    while let Some(i) = memchr::memmem::find(rest, needle.as_bytes()) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(with.as_bytes());
        rest = &rest[i + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The credentials of a `Basic` authorization value, decoded.
fn basic_credentials(value: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, token) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()
}

/// Where in the head the placeholder of `secret` shows.
struct Seen {
    headers: bool,
    uri: bool,
}

fn seen(parts: &http::request::Parts, placeholder: &str) -> Seen {
    let headers = parts.headers.iter().any(|(_, v)| contains(v.as_bytes(), placeholder) || basic_credentials(v.as_bytes()).is_some_and(|c| contains(&c, placeholder)));
    let uri = parts.uri.path_and_query().is_some_and(|pq| contains(pq.as_str().as_bytes(), placeholder));
    Seen { headers, uri }
}

/// Rewrites the head for `secrets`, or refuses it. `parts` is changed only on success.
pub fn rewrite<'s>(parts: &mut http::request::Parts, secrets: &'s [ResolvedSecret], dest: &Destination<'_>) -> Result<Rewritten<'s>, Blocked> {
    let host = request_host(parts);
    let mut out = Rewritten::default();
    let mut substitute = Vec::new();
    for secret in secrets {
        let refused = refusal(secret, dest, host.as_deref());
        let where_ = seen(parts, &secret.placeholder);
        if let Some(reason) = refused {
            if where_.headers || where_.uri {
                return Err(Blocked { secret: secret.env.clone(), reason, stop: secret.on_violation == OnViolation::BlockAndStop });
            }
            out.watch.push(secret);
            continue;
        }
        if where_.headers && secret.inject_into.contains(&InjectInto::Headers) {
            substitute.push((secret, true, false));
        }
        if where_.uri && secret.inject_into.contains(&InjectInto::Query) {
            substitute.push((secret, false, true));
        }
        if secret.inject_into.contains(&InjectInto::Body) {
            out.body_secrets.push(secret);
        }
    }
    if substitute.is_empty() {
        return Ok(out);
    }
    // Built aside and applied at the end, so a refusal leaves the head as it came.
    let mut headers = parts.headers.clone();
    let mut uri = parts.uri.clone();
    for (secret, in_headers, in_query) in substitute {
        let blocked = |reason: String| Blocked { secret: secret.env.clone(), reason, stop: false };
        if in_headers {
            for value in headers.values_mut() {
                let bytes = value.as_bytes();
                let replaced = if contains(bytes, &secret.placeholder) {
                    Some(replace_bytes(bytes, &secret.placeholder, &secret.value()))
                } else if let Some(creds) = basic_credentials(bytes).filter(|c| contains(c, &secret.placeholder)) {
                    let creds = replace_bytes(&creds, &secret.placeholder, &secret.value());
                    Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(creds)).into_bytes())
                } else {
                    None
                };
                if let Some(r) = replaced {
                    let sensitive = HeaderValue::from_bytes(&r).map_err(|_| blocked("the value cannot be put in a header (it holds a line break or control character)".into()))?;
                    *value = sensitive;
                    value.set_sensitive(true);
                }
            }
        }
        if in_query {
            let pq = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
            if let Some((path, query)) = pq.split_once('?') {
                let encoded = percent_encode_query(&secret.value());
                let query = String::from_utf8(replace_bytes(query.as_bytes(), &secret.placeholder, &encoded)).unwrap_or_default();
                let mut p = uri.clone().into_parts();
                p.path_and_query = Some(format!("{path}?{query}").parse().map_err(|_| blocked("the query could not be rebuilt".into()))?);
                uri = http::Uri::from_parts(p).map_err(|_| blocked("the query could not be rebuilt".into()))?;
            }
        }
    }
    parts.headers = headers;
    parts.uri = uri;
    Ok(out)
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a query value.
fn percent_encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `body` with every placeholder of `secrets` replaced by its value.
pub fn substitute_body(body: &[u8], secrets: &[&ResolvedSecret]) -> Vec<u8> {
    let mut out = body.to_vec();
    for s in secrets {
        if contains(&out, &s.placeholder) {
            out = replace_bytes(&out, &s.placeholder, &s.value());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SecretRef;

    fn secret(hosts: &[&str], inject: &[InjectInto]) -> ResolvedSecret {
        let spec = SecretRef {
            env: "API_TOKEN".into(),
            provider: "env".into(),
            key: "X".into(),
            allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            inject_into: inject.to_vec(),
            on_violation: OnViolation::Block,
            value: None,
        };
        ResolvedSecret::new(&spec, "s3cr3t value".into())
    }

    fn head(uri: &str, headers: &[(&str, String)]) -> http::request::Parts {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        b.body(()).unwrap().into_parts().0
    }

    const RESOLVED: &[String] = &[];

    #[test]
    fn headers_and_basic_auth_are_substituted_only_for_an_allowed_destination() {
        let s = secret(&["api.example"], &[InjectInto::Headers]);
        let p = s.placeholder.clone();
        let resolved = vec!["api.example".to_string()];
        let dest = Destination { server_name: "api.example", resolved: &resolved };
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("user:{p}")));
        let mut parts = head("/v1?q=1", &[("host", "API.example:443".into()), ("authorization", format!("Bearer {p}")), ("proxy-authorization", basic)]);
        let out = rewrite(&mut parts, std::slice::from_ref(&s), &dest).unwrap();
        assert!(out.watch.is_empty() && out.body_secrets.is_empty());
        assert_eq!(parts.headers["authorization"], "Bearer s3cr3t value");
        assert!(parts.headers["authorization"].is_sensitive());
        let creds = basic_credentials(parts.headers["proxy-authorization"].as_bytes()).unwrap();
        assert_eq!(creds, b"user:s3cr3t value");

        // Another server name, another Host, an address not resolved from the name: refused,
        // the head untouched.
        for (sni, host, resolved) in [("evil.example", "api.example", vec!["api.example".to_string()]), ("api.example", "evil.example", vec!["api.example".to_string()]), ("api.example", "api.example", vec!["evil.example".to_string()])] {
            let mut parts = head("/", &[("host", host.into()), ("authorization", format!("Bearer {p}"))]);
            let err = rewrite(&mut parts, std::slice::from_ref(&s), &Destination { server_name: sni, resolved: &resolved }).unwrap_err();
            assert_eq!(err.secret, "API_TOKEN");
            assert_eq!(parts.headers["authorization"], format!("Bearer {p}").as_str(), "{sni} {host}");
        }
    }

    #[test]
    fn query_and_body_only_when_asked_and_clean_requests_watch_the_body() {
        let s = secret(&["*.example"], &[InjectInto::Query, InjectInto::Body]);
        let p = s.placeholder.clone();
        let resolved = vec!["api.example".to_string()];
        let dest = Destination { server_name: "api.example", resolved: &resolved };
        let mut parts = head(&format!("https://api.example/x?key={p}&b=2"), &[("x-key", p.clone())]);
        let out = rewrite(&mut parts, std::slice::from_ref(&s), &dest).unwrap();
        assert_eq!(parts.uri.query(), Some("key=s3cr3t%20value&b=2"));
        assert_eq!(parts.headers["x-key"], p.as_str(), "headers were not asked for");
        assert_eq!(out.body_secrets.len(), 1);
        assert_eq!(substitute_body(format!("{{\"k\":\"{p}\"}}").as_bytes(), &out.body_secrets), b"{\"k\":\"s3cr3t value\"}");

        // A request elsewhere without the placeholder in its head goes, its body watched.
        let mut parts = head("https://other.test/", &[]);
        let out = rewrite(&mut parts, std::slice::from_ref(&s), &Destination { server_name: "other.test", resolved: RESOLVED }).unwrap();
        assert_eq!(out.watch.len(), 1);
        // ...and with it in the query, refused.
        let mut parts = head(&format!("https://other.test/?k={p}"), &[]);
        assert!(rewrite(&mut parts, std::slice::from_ref(&s), &Destination { server_name: "other.test", resolved: RESOLVED }).is_err());
    }

    #[test]
    fn a_value_that_cannot_be_a_header_is_refused() {
        let spec = SecretRef { env: "T".into(), provider: "env".into(), key: "X".into(), allow_hosts: vec!["a.example".into()], inject_into: vec![InjectInto::Headers], on_violation: OnViolation::Block, value: None };
        let s = ResolvedSecret::new(&spec, "line\r\nInjected: yes".into());
        let resolved = vec!["a.example".to_string()];
        let mut parts = head("https://a.example/", &[("authorization", s.placeholder.clone())]);
        assert!(rewrite(&mut parts, std::slice::from_ref(&s), &Destination { server_name: "a.example", resolved: &resolved }).is_err());
    }
}
