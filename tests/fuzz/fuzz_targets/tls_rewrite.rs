//! What an intercepted request's head may carry (`shim::tls::rewrite`), on any head a guest can
//! send: header names and values, the request target, a server name and the names its DNS
//! resolved, with the secrets' placeholders spliced in where the input says (`\x00` followed
//! by 'A' or 'B'). Invariants: no panic; a head that is let through holds no placeholder of a
//! secret that may not go to its destination (not in a value, not inside Basic credentials,
//! not in the target); a refused head is left exactly as it came.
#![no_main]

use arbitrary::Arbitrary;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use orchestrator::plugin::secrets::ResolvedSecret;
use orchestrator::shim::tls::rewrite::{refusal, request_host, rewrite, Destination};
use orchestrator::spec::{InjectInto, OnViolation, SecretRef};

#[derive(Arbitrary, Debug)]
struct Input {
    target: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    basic: Option<Vec<u8>>,
    server_name: String,
    resolved: Vec<String>,
    hosts_a: Vec<String>,
    inject_a: u8,
}

fn splice(bytes: &[u8], a: &str, b: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1)) {
            (0, Some(b'A')) => {
                out.extend_from_slice(a.as_bytes());
                i += 2;
            }
            (0, Some(b'B')) => {
                out.extend_from_slice(b.as_bytes());
                i += 2;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

fn secret(env: &str, hosts: Vec<String>, inject: u8) -> ResolvedSecret {
    let inject_into = [InjectInto::Headers, InjectInto::Query, InjectInto::Body].into_iter().enumerate().filter(|(i, _)| inject & (1 << i) != 0).map(|(_, p)| p).collect();
    let spec = SecretRef { env: env.into(), provider: "env".into(), key: "K".into(), allow_hosts: hosts, inject_into, on_violation: OnViolation::Block, value: None };
    ResolvedSecret::new(&spec, format!("value-of-{env}"))
}

fn carries(parts: &http::request::Parts, placeholder: &str) -> bool {
    let p = placeholder.as_bytes();
    let has = |h: &[u8]| h.windows(p.len()).any(|w| w == p);
    parts.headers.values().any(|v| {
        has(v.as_bytes())
            || std::str::from_utf8(v.as_bytes()).ok().and_then(|t| t.trim().split_once(' ')).filter(|(s, _)| s.eq_ignore_ascii_case("basic")).and_then(|(_, t)| base64::engine::general_purpose::STANDARD.decode(t.trim()).ok()).is_some_and(|c| has(&c))
    }) || parts.uri.path_and_query().is_some_and(|pq| has(pq.as_str().as_bytes()))
}

fuzz_target!(|input: Input| {
    let secrets = [secret("A", input.hosts_a.clone(), input.inject_a), secret("B", vec!["b.example".into()], 1)];
    let (pa, pb) = (secrets[0].placeholder.clone(), secrets[1].placeholder.clone());
    let target = splice(&input.target, &pa, &pb);
    let Ok(target) = std::str::from_utf8(&target) else { return };
    let mut builder = http::Request::builder().uri(target);
    for (name, value) in &input.headers {
        builder = builder.header(name.as_str(), splice(value, &pa, &pb));
    }
    if let Some(creds) = &input.basic {
        builder = builder.header("authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(splice(creds, &pa, &pb))));
    }
    let Ok(request) = builder.body(()) else { return };
    let (mut parts, ()) = request.into_parts();
    let before = (parts.uri.clone(), parts.headers.clone());
    let dest = Destination { server_name: &input.server_name, resolved: &input.resolved };
    let host = request_host(&parts);
    match rewrite(&mut parts, &secrets, &dest) {
        Ok(_) => {
            for s in &secrets {
                if refusal(s, &dest, host.as_deref()).is_some() {
                    assert!(!carries(&parts, &s.placeholder), "secret {} let through to {:?}", s.env, input.server_name);
                }
            }
        }
        Err(blocked) => {
            assert!(blocked.secret == "A" || blocked.secret == "B");
            assert_eq!((parts.uri, parts.headers), before, "a refused head was changed");
        }
    }
});
