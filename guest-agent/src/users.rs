//! Resolves `user` strings (`name`, `uid`, `uid:gid`, `name:group`) against the sandbox's own
//! /etc/passwd and /etc/group. Read directly: NSS would load libraries from the image.

use std::fs;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
    pub name: Option<String>,
}

impl Identity {
    pub fn root() -> Self {
        Identity { uid: 0, gid: 0, groups: vec![0], home: "/root".into(), name: Some("root".into()) }
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// (name, gid, members) of every well-formed /etc/group line.
fn groups(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let members = f[3].split(',').filter(|m| !m.is_empty()).map(String::from).collect();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

pub fn resolve(spec: Option<&str>) -> Result<Identity, String> {
    let passwd_text = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group_text = fs::read_to_string("/etc/group").unwrap_or_default();
    resolve_in(spec, &passwd_text, &group_text)
}

pub fn resolve_in(spec: Option<&str>, passwd_text: &str, group_text: &str) -> Result<Identity, String> {
    // No user asked for: whoever the agent runs as (root inside a sandbox).
    // SAFETY: getuid has no preconditions.
    let current = unsafe { libc::getuid() }.to_string();
    let spec = match spec {
        None | Some("") => current.as_str(),
        Some(s) => s,
    };
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = passwd(passwd_text);
    let all_groups = groups(group_text);
    let (uid, mut gid, home, name) = if let Ok(uid) = user_part.parse::<u32>() {
        match users.iter().find(|u| u.uid == uid) {
            Some(u) => (uid, u.gid, u.home.clone(), Some(u.name.clone())),
            None => (uid, uid, "/".to_string(), None),
        }
    } else {
        let u = users
            .iter()
            .find(|u| u.name == user_part)
            .ok_or_else(|| format!("user {user_part:?} not found in the sandbox's /etc/passwd"))?;
        (u.uid, u.gid, u.home.clone(), Some(u.name.clone()))
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => all_groups
                .iter()
                .find(|(n, _, _)| n == g)
                .map(|(_, id, _)| *id)
                .ok_or_else(|| format!("group {g:?} not found in the sandbox's /etc/group"))?,
        };
    }
    let mut supplementary = vec![gid];
    if let Some(n) = &name {
        for (_, id, members) in &all_groups {
            if members.iter().any(|m| m == n) && !supplementary.contains(id) {
                supplementary.push(*id);
            }
        }
    }
    Ok(Identity { uid, gid, groups: supplementary, home, name })
}

#[cfg(test)]
mod tests {
    use super::*;
    const PW: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GR: &str = "root:x:0:\nstaff:x:50:app\napp:x:1000:\n";

    #[test]
    fn by_name_with_supplementary_groups() {
        let id = resolve_in(Some("app"), PW, GR).unwrap();
        assert_eq!((id.uid, id.gid, id.home.as_str()), (1000, 1000, "/home/app"));
        assert_eq!(id.groups, vec![1000, 50]);
    }

    #[test]
    fn numeric_and_group_forms() {
        assert_eq!(resolve_in(Some("1234"), PW, GR).unwrap().gid, 1234);
        assert_eq!(resolve_in(Some("app:staff"), PW, GR).unwrap().gid, 50);
        assert_eq!(resolve_in(Some("0:7"), PW, GR).unwrap().gid, 7);
        // SAFETY: getuid has no preconditions.
        assert_eq!(resolve_in(None, PW, GR).unwrap().uid, unsafe { libc::getuid() });
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(resolve_in(Some("ghost"), PW, GR).unwrap_err().contains("ghost"));
        assert!(resolve_in(Some("app:ghosts"), PW, GR).is_err());
    }
}
