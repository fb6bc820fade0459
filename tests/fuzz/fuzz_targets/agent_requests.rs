//! What the agent does with requests a lying shim sends, short of running them: the user an
//! Exec names (`name`, `uid`, `name:group`, `uid:gid`, anything) resolved against the image's own
//! /etc/passwd and /etc/group (the image author's bytes), and the patches an Init carries
//! checked as the agent checks them before applying (applying them is `plugin_patches`).
//! Invariants: no panic; a resolved identity's primary group comes first in its groups, which
//! hold no duplicate; a numeric uid resolves to itself; a name resolves only to an entry of that
//! name; a refusal names what was not found.
#![no_main]

use arbitrary::Arbitrary;
use guest_agent::protocol::{check_patches, decode, AgentRequest};
use guest_agent::users::resolve_in;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    user: Option<&'a str>,
    passwd: &'a str,
    group: &'a str,
    /// A request frame's payload (postcard), as the shim would send it.
    frame: &'a [u8],
}

fn check(user: Option<&str>, passwd: &str, group: &str) {
    let Ok(id) = resolve_in(user, passwd, group) else { return };
    assert_eq!(id.groups.first(), Some(&id.gid), "the primary group comes first");
    let mut seen = id.groups.clone();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), id.groups.len(), "no duplicate group: {:?}", id.groups);
    let Some(spec) = user.filter(|s| !s.is_empty()) else { return };
    let user_part = spec.split_once(':').map(|(u, _)| u).unwrap_or(spec);
    match user_part.parse::<u32>() {
        Ok(uid) => assert_eq!(id.uid, uid),
        Err(_) => assert_eq!(id.name.as_deref(), Some(user_part)),
    }
}

fuzz_target!(|input: Input| {
    check(input.user, input.passwd, input.group);
    if let Ok(frame) = decode::<AgentRequest>(input.frame) {
        match frame.body {
            AgentRequest::Exec(req) => check(req.user.as_deref(), input.passwd, input.group),
            AgentRequest::Init(init) => {
                if let Err(e) = check_patches(&init.patches) {
                    assert!(!e.is_empty());
                }
            }
            _ => {}
        }
    }
});
