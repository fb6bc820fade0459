//! What an API client may name on the host: nothing, unless the operator started the server
//! with a root (`--allow-host-paths DIR`), and then only paths that resolve, links followed,
//! inside it. Images (`dir:`, `oci-layout:`, `oci-archive:`), kernels given as paths, plugin
//! components and `hostPath` volumes are host paths; a client must never get the host's `/` as its root filesystem.
//!
//! The check runs on the raw document before the spec is parsed, so that not even the
//! parser's "does not exist" answers tell a client what the host has.

use super::problem::Problem;
use crate::spec::yaml::{Node, Value};
use std::path::{Path, PathBuf};

const PATH_IMAGES: [&str; 3] = ["dir:", "oci-layout:", "oci-archive:"];

/// A scalar at `path` (map keys) in a document, if there is one.
fn scalar<'a>(node: &'a Node, path: &[&str]) -> Option<&'a str> {
    let mut node = node;
    for key in path {
        let Value::Map(entries) = &node.value else { return None };
        node = entries.iter().find(|(k, _)| matches!(&k.value, Value::Scalar { text, .. } if text == key)).map(|(_, v)| v)?;
    }
    match &node.value {
        Value::Scalar { text, .. } => Some(text),
        _ => None,
    }
}

/// Where the values that name host paths sit in a document, with the value.
fn host_path_fields(doc: &Node) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(image) = scalar(doc, &["spec", "image"]) {
        if PATH_IMAGES.iter().any(|p| image.starts_with(p)) || image.starts_with(['/', '.']) {
            out.push(("spec.image", image.to_string()));
        }
    }
    if let Some(kernel) = scalar(doc, &["spec", "kernel"]).filter(|k| k.contains('/')) {
        out.push(("spec.kernel", kernel.to_string()));
    }
    if let Some(component) = scalar(doc, &["spec", "component"]) {
        out.push(("spec.component", component.to_string()));
    }
    let volumes = match &doc.value {
        Value::Map(_) => scalar_seq(doc, &["spec", "volumes"]),
        _ => &[],
    };
    for v in volumes {
        if let Some(path) = scalar(v, &["hostPath"]) {
            out.push(("spec.volumes[].hostPath", path.to_string()));
        }
    }
    out
}

/// The items of a sequence at `path` (map keys), or none.
fn scalar_seq<'a>(node: &'a Node, path: &[&str]) -> &'a [Node] {
    let mut node = node;
    for key in path {
        let Value::Map(entries) = &node.value else { return &[] };
        match entries.iter().find(|(k, _)| matches!(&k.value, Value::Scalar { text, .. } if text == key)) {
            Some((_, v)) => node = v,
            None => return &[],
        }
    }
    match &node.value {
        Value::Seq(items) => items,
        _ => &[],
    }
}

/// Refuses a request body that names host paths when `root` is None. With a root, the paths
/// are checked after parsing ([`check_resolved`]). The body is read with the spec's own YAML
/// reader, which bounds what aliases may expand to (a hostile body cannot balloon here).
pub fn screen(text: &str, root: Option<&Path>) -> Result<(), Problem> {
    if root.is_some() {
        return Ok(());
    }
    // A body that does not parse is the parser's to report (it names no host path).
    let Ok(docs) = crate::spec::yaml::parse_documents(text) else { return Ok(()) };
    for doc in &docs {
        if let Some((field, value)) = host_path_fields(doc).into_iter().next() {
            return Err(Problem::forbidden(format!(
                "{field}: {value:?} names a path on the server's host, which API clients may not do; use a registry image, or ask the operator to start `serve` with --allow-host-paths DIR"
            )));
        }
    }
    Ok(())
}

fn inside(path: &Path, root: &Path) -> bool {
    match (std::fs::canonicalize(path), std::fs::canonicalize(root)) {
        (Ok(p), Ok(r)) => p.starts_with(r),
        _ => false,
    }
}

/// The host path a normalised image reference names, if it names one.
fn image_path(image: &str) -> Option<PathBuf> {
    let rest = PATH_IMAGES.iter().find_map(|p| image.strip_prefix(p))?;
    if image.starts_with("dir:") {
        return Some(PathBuf::from(rest));
    }
    // oci-layout:/abs[:TAG]: the path is what exists.
    let whole = PathBuf::from(rest);
    if whole.exists() {
        return Some(whole);
    }
    Some(PathBuf::from(rest.rsplit_once(':').map_or(rest, |(p, _)| p)))
}

/// A normalised image reference a client names: a host path only with a root, and inside it.
pub fn check_image(image: &str, root: Option<&Path>) -> Result<(), Problem> {
    let Some(path) = image_path(image) else { return Ok(()) };
    match root {
        Some(root) if inside(&path, root) => Ok(()),
        Some(root) => Err(Problem::forbidden(format!("{} is outside the host paths this server allows ({})", path.display(), root.display()))),
        None => Err(Problem::forbidden("the image names a path on the server's host, which clients may not do; use a registry image")),
    }
}

/// For resources built in code from a client's words (the MCP tools): no host path without a
/// root; with one, inside it.
pub fn check_built(resource: &crate::spec::Resource, root: Option<&Path>) -> Result<(), Problem> {
    use crate::spec::ResourceSpec;
    if root.is_none() {
        let names_one = match &resource.spec {
            ResourceSpec::Sandbox(s) => {
                image_path(&s.image).is_some() || s.kernel.as_deref().is_some_and(|k| k.contains('/')) || s.volumes.iter().any(|v| matches!(v.source, crate::spec::MountSource::HostPath(_)))
            }
            ResourceSpec::Plugin(_) => true,
            _ => false,
        };
        if names_one {
            return Err(Problem::forbidden("the image or kernel names a path on the server's host, which clients may not do; use a registry image"));
        }
        return Ok(());
    }
    check_resolved(resource, root)
}

/// With a root, every host path a parsed resource names must resolve inside it.
pub fn check_resolved(resource: &crate::spec::Resource, root: Option<&Path>) -> Result<(), Problem> {
    use crate::spec::ResourceSpec;
    // The built-in secret providers read the server's own environment and files: a client
    // naming them could send the server's variables (its API token) or any host file to a host
    // of its choosing, through its sandbox.
    if let ResourceSpec::Sandbox(s) = &resource.spec {
        for (i, secret) in s.secrets.iter().enumerate() {
            match secret.provider.as_str() {
                "env" => return Err(Problem::forbidden(format!("spec.secrets[{i}].provider: env reads the server's own environment, which API clients may not; give the secret's value (`value`) or name a secret-provider Plugin"))),
                "file" if !root.is_some_and(|r| inside(Path::new(&secret.key), r)) => {
                    return Err(Problem::forbidden(format!("spec.secrets[{i}].key: {} is a host path outside those this server allows (--allow-host-paths)", secret.key)));
                }
                _ => {}
            }
        }
    }
    let Some(root) = root else { return Ok(()) };
    let mut paths: Vec<(&str, PathBuf)> = Vec::new();
    match &resource.spec {
        ResourceSpec::Sandbox(s) => {
            if let Some(p) = image_path(&s.image) {
                paths.push(("spec.image", p));
            }
            if let Some(k) = s.kernel.as_deref().filter(|k| k.contains('/')) {
                paths.push(("spec.kernel", PathBuf::from(k)));
            }
            for v in &s.volumes {
                if let crate::spec::MountSource::HostPath(p) = &v.source {
                    paths.push(("spec.volumes[].hostPath", PathBuf::from(p)));
                }
            }
        }
        ResourceSpec::Plugin(p) => paths.push(("spec.component", PathBuf::from(&p.component))),
        _ => {}
    }
    for (field, path) in paths {
        if !inside(&path, root) {
            return Err(Problem::forbidden(format!("{field}: {} is outside the host paths this server allows ({})", path.display(), root.display())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_refused_before_parsing_without_a_root() {
        for body in [
            r#"{"kind":"Sandbox","spec":{"image":"dir:/"}}"#,
            "kind: Sandbox\nspec:\n  image: oci-layout:/etc\n",
            "kind: Sandbox\nspec:\n  image: busybox:1\n  kernel: /boot/vmlinuz\n",
            "kind: Plugin\nspec:\n  component: /srv/p.wasm\n",
            "kind: Sandbox\nspec:\n  image: busybox:1\n  volumes: [{ name: v, mountPath: /v }, { hostPath: /etc, mountPath: /h }]\n",
        ] {
            let e = screen(body, None).unwrap_err();
            assert_eq!((e.status, e.kind.as_str()), (403, "host-path-forbidden"), "{body}");
        }
        assert!(screen(r#"{"kind":"Sandbox","spec":{"image":"127.0.0.1:5000/demo/busybox:1"}}"#, None).is_ok());
        // The built-in secret providers read the server's environment and files.
        let with_secret = |provider: &str, key: &str| {
            let yaml = format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: {{ name: s }}\nspec:\n  image: busybox\n  secrets:\n    - {{ env: T, provider: {provider}, key: {key}, allowHosts: [a.example] }}\n");
            crate::spec::parse_str(Path::new("/nonexistent/request"), &yaml).unwrap().remove(0).resource
        };
        for (provider, key, root) in [("env", "ORCHESTRATOR_API_TOKEN", Some(Path::new("/srv"))), ("file", "/etc/shadow", None), ("file", "/etc/shadow", Some(Path::new("/srv")))] {
            let e = check_resolved(&with_secret(provider, key), root).unwrap_err();
            assert_eq!(e.status, 403, "{provider} {key}");
        }
        let allowed = tempfile::tempdir().unwrap();
        std::fs::write(allowed.path().join("token"), "t").unwrap();
        let token = allowed.path().join("token");
        assert!(check_resolved(&with_secret("file", token.to_str().unwrap()), Some(allowed.path())).is_ok());
        assert!(check_resolved(&with_secret("vault", "db"), None).is_ok());
        assert!(screen("kind: Sandbox\nspec:\n  image: busybox\n  kernel: linux-image-6\n", None).is_ok());
        assert!(screen(r#"{"kind":"Sandbox","spec":{"image":"dir:/"}}"#, Some(Path::new("/srv"))).is_ok(), "checked after parsing");
    }

    #[test]
    fn an_alias_bomb_does_not_balloon_the_screen() {
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            bomb.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n", p = i - 1));
        }
        bomb.push_str("spec: { image: dir:/ }\n");
        let started = std::time::Instant::now();
        // Refused by the reader's alias bound (then left to the parser's error), quickly.
        assert!(screen(&bomb, None).is_ok());
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn with_a_root_only_paths_inside_it_pass_links_followed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("rootfs")).unwrap();
        std::os::unix::fs::symlink("/", root.path().join("escape")).unwrap();
        let sandbox = |image: String| crate::spec::Resource {
            name: "s".into(),
            labels: Default::default(),
            spec: crate::spec::ResourceSpec::Sandbox(crate::spec::SandboxSpec::new(image)),
        };
        let r = Some(root.path());
        assert!(check_resolved(&sandbox(format!("dir:{}", root.path().join("rootfs").display())), r).is_ok());
        assert!(check_resolved(&sandbox(format!("dir:{}", root.path().join("escape").display())), r).is_err(), "a link out of the root");
        assert!(check_resolved(&sandbox("dir:/".into()), r).is_err());
        assert!(check_resolved(&sandbox("busybox:1".into()), r).is_ok());
    }
}
