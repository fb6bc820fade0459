//! The Sandbox fields that involve plugins: `secrets`, `patches` and the plugin names of
//! `hooks` and `network`, read with the same located, collect-every-error rules as the rest.

use super::{Ctx, Node, Value};
use crate::spec::SecretRef;
use guest_agent::protocol::PatchOp;

/// A list of Plugin resource names.
pub(super) fn plugin_names(ctx: &mut Ctx<'_>, node: &Node, field: &str) -> Option<Vec<String>> {
    let names = ctx.string_list(node, field)?;
    for (i, name) in names.iter().enumerate() {
        if !crate::spec::is_valid_name(name) {
            ctx.err(node, &format!("{field}[{i}]"), format!("{name:?} is not a plugin name"), Some("the metadata.name of a `kind: Plugin` resource".into()));
        }
    }
    Some(names)
}

fn env_name_ok(k: &str) -> bool {
    k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn secrets(ctx: &mut Ctx<'_>, node: &Node) -> Vec<SecretRef> {
    let Value::Seq(items) = &node.value else {
        ctx.wrong_type(node, "spec.secrets", "a list of { env, provider, key }");
        return Vec::new();
    };
    let mut out: Vec<SecretRef> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("spec.secrets[{i}]");
        let Some(f) = ctx.map(item, &field, super::SECRET_FIELDS) else { continue };
        let required = |ctx: &mut Ctx<'_>, key: &str, hint: &str| match f.get(key) {
            Some(n) => ctx.nonempty_string(n, &format!("{field}.{key}")),
            None => {
                ctx.err(item, &format!("{field}.{key}"), "missing", Some(hint.into()));
                None
            }
        };
        let env = required(ctx, "env", "the environment variable that receives the placeholder, e.g. API_KEY");
        let given = match f.get("value") {
            Some(n) if !ctx.values_allowed => {
                ctx.err(n, &format!("{field}.value"), "a secret's value does not belong in a file", Some("use provider env (a host variable) or file (a host file), or a secret-provider Plugin; values are given through the library or POST /v1/sandboxes".into()));
                continue;
            }
            Some(n) => match ctx.string(n, &format!("{field}.value")) {
                Some(v) => Some(crate::spec::GivenValue(v)),
                None => continue,
            },
            None => None,
        };
        let (provider, key) = if given.is_some() {
            if f.get("provider").is_some() || f.get("key").is_some() {
                ctx.err(item, &field, "a secret has a value or a provider and key, not both", None);
                continue;
            }
            (Some(crate::spec::VALUE_PROVIDER.to_string()), Some(String::new()))
        } else {
            (required(ctx, "provider", "the name of a secret-provider Plugin, or a built-in provider: env or file"), required(ctx, "key", "what the provider is asked for"))
        };
        let allow_hosts = f.get("allowHosts").map(|n| super::network_fields::host_patterns(ctx, n, &format!("{field}.allowHosts"))).unwrap_or_default();
        let mut inject_into = vec![crate::spec::InjectInto::Headers];
        if let Some(n) = f.get("injectInto") {
            if let Some(list) = ctx.string_list(n, &format!("{field}.injectInto")) {
                inject_into.clear();
                for (j, place) in list.iter().enumerate() {
                    match crate::spec::InjectInto::parse(place) {
                        Some(p) if !inject_into.contains(&p) => inject_into.push(p),
                        Some(_) => {}
                        None => ctx.err(n, &format!("{field}.injectInto[{j}]"), format!("{place:?} is not a part of a request"), Some(format!("one of {}", crate::spec::InjectInto::NAMES.join(", ")))),
                    }
                }
            }
        }
        let on_violation = match f.get("onViolation").map(|n| (n, ctx.string(n, &format!("{field}.onViolation")))) {
            Some((_, Some(v))) if v == "block" => crate::spec::OnViolation::Block,
            Some((_, Some(v))) if v == "block-and-stop" => crate::spec::OnViolation::BlockAndStop,
            Some((n, Some(v))) => {
                ctx.err(n, &format!("{field}.onViolation"), format!("{v:?} is not a choice"), Some("block (the default) or block-and-stop".into()));
                crate::spec::OnViolation::Block
            }
            _ => crate::spec::OnViolation::Block,
        };
        let (Some(env), Some(provider), Some(key)) = (env, provider, key) else { continue };
        if !env_name_ok(&env) {
            ctx.err(item, &format!("{field}.env"), format!("{env:?} is not an environment variable name"), Some("letters, digits and '_', not starting with a digit".into()));
        }
        if out.iter().any(|s| s.env == env) {
            ctx.err(item, &format!("{field}.env"), format!("{env} is given two secrets"), Some("one secret per variable".into()));
        }
        if given.is_none() && provider == crate::spec::VALUE_PROVIDER {
            ctx.err(item, &format!("{field}.provider"), "provider value takes the secret's value, which does not belong in a file", Some("use provider env or file, or a secret-provider Plugin".into()));
        }
        if !crate::spec::is_valid_name(&provider) {
            ctx.err(item, &format!("{field}.provider"), format!("{provider:?} is not a plugin name"), Some("a secret-provider Plugin's name, or a built-in provider: env (key: a host variable) or file (key: a host path)".into()));
        }
        if provider == "file" && !key.starts_with('/') {
            ctx.err(item, &format!("{field}.key"), format!("{key:?} is not an absolute path"), Some("the built-in file provider reads the host file at key, e.g. /run/secrets/api-token".into()));
        }
        out.push(SecretRef { env, provider, key, allow_hosts, inject_into, on_violation, value: given });
    }
    out
}

/// An octal permission string: `0644`, `0o644` or `644`.
fn mode(ctx: &mut Ctx<'_>, node: &Node, field: &str) -> Option<u32> {
    let text = ctx.string(node, field)?;
    let digits = text.strip_prefix("0o").unwrap_or(&text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Some(m),
        _ => {
            ctx.err(node, field, format!("{text:?} is not a file mode"), Some("octal permission bits, e.g. 0644 or 0755".into()));
            None
        }
    }
}

pub(super) fn patches(ctx: &mut Ctx<'_>, node: &Node) -> Vec<PatchOp> {
    let Value::Seq(items) = &node.value else {
        ctx.wrong_type(node, "spec.patches", "a list of { op, path, ... }");
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("spec.patches[{i}]");
        let Some(f) = ctx.map(item, &field, super::PATCH_FIELDS) else { continue };
        let Some(op_node) = f.get("op") else {
            ctx.err(item, &format!("{field}.op"), "missing", Some("one of write, append, mkdir, symlink, chmod, remove".into()));
            continue;
        };
        let ops = [("write", 0), ("append", 1), ("mkdir", 2), ("symlink", 3), ("chmod", 4), ("remove", 5)];
        let Some(op) = ctx.one_of(op_node, &format!("{field}.op"), &ops) else { continue };
        let Some(path_node) = f.get("path") else {
            ctx.err(item, &format!("{field}.path"), "missing", Some("an absolute path inside the sandbox".into()));
            continue;
        };
        let Some(path) = ctx.nonempty_string(path_node, &format!("{field}.path")) else { continue };
        if let Err(e) = guest_agent::protocol::check_patch_path(&path) {
            ctx.err(path_node, &format!("{field}.path"), e, Some("an absolute path inside the sandbox, without `..`, outside /proc, /sys and /dev".into()));
            continue;
        }
        let content = f.get("content").and_then(|n| ctx.string(n, &format!("{field}.content"))).unwrap_or_default().into_bytes();
        let mode_of = |ctx: &mut Ctx<'_>, default: Option<u32>| match f.get("mode") {
            Some(n) => mode(ctx, n, &format!("{field}.mode")),
            None => default,
        };
        let allowed_extra: &[&str] = match op {
            0 => &["content", "mode"],
            1 => &["content"],
            2 => &["mode"],
            3 => &["target"],
            4 => &["mode"],
            _ => &[],
        };
        for (key, n) in &f.entries {
            if !["op", "path"].contains(key) && !allowed_extra.contains(key) {
                ctx.err(n, &format!("{field}.{key}"), format!("not used by op {}", ops[op].0), Some(format!("op {} takes: path{}", ops[op].0, allowed_extra.iter().map(|k| format!(", {k}")).collect::<String>())));
            }
        }
        let patch = match op {
            0 => mode_of(ctx, Some(0o644)).map(|mode| PatchOp::Write { path, contents: content, mode }),
            1 => Some(PatchOp::Append { path, contents: content }),
            2 => mode_of(ctx, Some(0o755)).map(|mode| PatchOp::Mkdir { path, mode }),
            3 => match f.get("target").and_then(|n| ctx.nonempty_string(n, &format!("{field}.target"))) {
                Some(target) => Some(PatchOp::Symlink { path, target }),
                None => {
                    if f.get("target").is_none() {
                        ctx.err(item, &format!("{field}.target"), "missing", Some("what the link points to".into()));
                    }
                    None
                }
            },
            4 => match mode_of(ctx, None) {
                Some(mode) => Some(PatchOp::Chmod { path, mode }),
                None => {
                    if f.get("mode").is_none() {
                        ctx.err(item, &format!("{field}.mode"), "missing", Some("e.g. 0600".into()));
                    }
                    None
                }
            },
            _ => Some(PatchOp::Remove { path }),
        };
        out.extend(patch);
    }
    if let Err(e) = guest_agent::protocol::check_patches(&out) {
        ctx.err(node, "spec.patches", e, None);
    }
    out
}
