//! Strict, typed reading of located YAML trees into resources. Every problem is collected
//! (never just the first): unknown fields (with a "did you mean"), wrong types, bad quantities,
//! invalid and duplicate names, missing required fields, fields not supported yet.

mod network_fields;
mod plugin_fields;
mod volume_fields;

use plugin_fields::{patches, plugin_names, secrets};
use super::quantity::{parse_bytes, parse_millis, parse_seconds};
use super::yaml::{parse_documents, Node, Value};
use super::*;
use std::collections::HashMap;

struct Ctx<'f> {
    file: &'f Path,
    errors: Vec<SpecError>,
    /// A secret may carry its `value` (an API request creating one sandbox; never a file).
    values_allowed: bool,
}

/// The fields of a mapping, first occurrence of each key.
struct Fields<'a> {
    entries: Vec<(&'a str, &'a Node)>,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).filter(|v| v.value != Value::Null)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca.to_ascii_lowercase() != cb.to_ascii_lowercase());
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn closest<'a>(word: &str, options: &[&'a str]) -> Option<&'a str> {
    options
        .iter()
        .map(|o| (edit_distance(word, o), *o))
        .filter(|(d, o)| *d <= 2.max(o.len() / 4))
        .min()
        .map(|(_, o)| o)
}

impl<'f> Ctx<'f> {
    fn err(&mut self, node: &Node, field: &str, message: impl Into<String>, hint: Option<String>) {
        self.errors.push(SpecError {
            file: self.file.to_path_buf(),
            line: node.line,
            col: node.col,
            field: field.to_string(),
            message: message.into(),
            hint,
        });
    }

    fn wrong_type(&mut self, node: &Node, field: &str, expected: &str) {
        let got = node.type_name();
        self.err(node, field, format!("expected {expected}, got {got}"), None);
    }

    /// Reads a mapping, reporting unknown and duplicate keys.
    fn map<'a>(&mut self, node: &'a Node, field: &str, allowed: &[&str]) -> Option<Fields<'a>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, field, "a mapping");
            return None;
        };
        let mut fields = Fields { entries: Vec::new() };
        for (k, v) in entries {
            let Value::Scalar { text: key, .. } = &k.value else {
                self.err(k, field, "mapping keys must be plain strings", None);
                continue;
            };
            let path = join(field, key);
            if fields.entries.iter().any(|(seen, _)| seen == key) {
                self.err(k, &path, "duplicate field", Some("each field may appear once; remove one".into()));
                continue;
            }
            if !allowed.is_empty() && !allowed.contains(&key.as_str()) {
                let hint = match closest(key, allowed) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => format!("allowed fields here: {}", allowed.join(", ")),
                };
                self.err(k, &path, "unknown field", Some(hint));
                continue;
            }
            fields.entries.push((key.as_str(), v));
        }
        Some(fields)
    }

    fn string(&mut self, node: &Node, field: &str) -> Option<String> {
        match &node.value {
            Value::Scalar { text, .. } => Some(text.clone()),
            _ => {
                self.wrong_type(node, field, "a string");
                None
            }
        }
    }

    fn nonempty_string(&mut self, node: &Node, field: &str) -> Option<String> {
        let s = self.string(node, field)?;
        if s.is_empty() {
            self.err(node, field, "must not be empty", None);
            return None;
        }
        Some(s)
    }

    fn bool(&mut self, node: &Node, field: &str) -> Option<bool> {
        match &node.value {
            Value::Scalar { text, plain: true } if text == "true" => Some(true),
            Value::Scalar { text, plain: true } if text == "false" => Some(false),
            _ => {
                self.wrong_type(node, field, "true or false");
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, field: &str, min: u64, max: u64) -> Option<u64> {
        match &node.value {
            Value::Scalar { text, plain: true } => match text.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Some(n),
                Ok(n) => {
                    self.err(node, field, format!("{n} is out of range"), Some(format!("use a value from {min} to {max}")));
                    None
                }
                Err(_) => {
                    self.wrong_type(node, field, "a whole number");
                    None
                }
            },
            _ => {
                self.wrong_type(node, field, "a whole number");
                None
            }
        }
    }

    /// A positive number read by `parse`; `expected` names the type, `what` the value in errors.
    fn positive(&mut self, node: &Node, field: &str, parse: fn(&str) -> Result<u64, String>, expected: &str, what: &str, hint: &str) -> Option<u64> {
        let Value::Scalar { text, .. } = &node.value else {
            self.wrong_type(node, field, expected);
            return None;
        };
        match parse(text) {
            Ok(0) => {
                self.err(node, field, "must be greater than zero", None);
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                self.err(node, field, format!("invalid {what}: {e}"), Some(hint.into()));
                None
            }
        }
    }

    fn bytes(&mut self, node: &Node, field: &str) -> Option<u64> {
        let hint = "use a number with an optional unit: Ki, Mi, Gi, Ti (binary) or k, M, G, T (decimal), e.g. 512Mi";
        self.positive(node, field, parse_bytes, "a quantity such as 512Mi or 1G", "quantity", hint)
    }

    fn seconds(&mut self, node: &Node, field: &str) -> Option<u64> {
        self.positive(node, field, parse_seconds, "a duration such as 60s or 5m", "duration", "e.g. 30s, 5m, 1h30m")
    }

    fn millis(&mut self, node: &Node, field: &str) -> Option<u64> {
        self.positive(node, field, parse_millis, "a duration such as 500ms or 2s", "duration", "e.g. 200ms, 2s, 1m")
    }

    fn string_list(&mut self, node: &Node, field: &str) -> Option<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            self.wrong_type(node, field, "a list of strings");
            return None;
        };
        let before = self.errors.len();
        let out: Vec<String> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.string(item, &format!("{field}[{i}]")))
            .collect();
        (self.errors.len() == before).then_some(out)
    }

    fn string_map(&mut self, node: &Node, field: &str) -> Option<BTreeMap<String, String>> {
        let fields = self.map(node, field, &[])?;
        let before = self.errors.len();
        let mut out = BTreeMap::new();
        for (k, v) in fields.entries {
            let path = join(field, k);
            if v.value == Value::Null {
                out.insert(k.to_string(), String::new());
            } else if let Some(s) = self.string(v, &path) {
                out.insert(k.to_string(), s);
            }
        }
        (self.errors.len() == before).then_some(out)
    }

    fn one_of<T: Copy>(&mut self, node: &Node, field: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(node, field)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = match closest(&s, &names) {
            Some(c) => format!("did you mean `{c}`?"),
            None => format!("one of: {}", names.join(", ")),
        };
        self.err(node, field, format!("{s:?} is not a valid value"), Some(hint));
        None
    }
}

/// One `NAME=value` string: the kernel's MAX_ARG_STRLEN.
const MAX_ENV_ENTRY: usize = 128 << 10;
/// The whole environment: half of the 2 MiB an 8 MiB stack gives execve for arguments and
/// environment together.
const MAX_ENV_TOTAL: usize = 1 << 20;

const TOP_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA_FIELDS: &[&str] = &["name", "labels", "annotations"];
const SANDBOX_FIELDS: &[&str] = &[
    "image", "isolation", "cpus", "memory", "env", "workdir", "command", "user", "tty", "limits",
    "restartPolicy", "userNamespace", "pullPolicy", "secrets", "patches", "hooks", "network",
    "kernel", "disk", "writableLayer", "ports", "volumes",
];
/// Fields of the design that later work adds; refused for now rather than silently ignored
/// (a user relying on one must not get a sandbox without it).
const SANDBOX_FIELDS_NOT_YET: &[&str] = &[];
const SECRET_FIELDS: &[&str] = &["env", "provider", "key", "value", "allowHosts", "injectInto", "onViolation"];
const HOOK_FIELDS: &[&str] = &["rootfsPatch", "metricsSinks"];
const PATCH_FIELDS: &[&str] = &["op", "path", "content", "mode", "target"];
const LIMIT_FIELDS: &[&str] = &["pids", "nofile", "fsize", "cpuTime"];
const PLUGIN_FIELDS: &[&str] = &["component", "config", "limits", "grants", "interval"];
const PLUGIN_LIMIT_FIELDS: &[&str] = &["memory", "timeout"];
const PLUGIN_GRANT_FIELDS: &[&str] = &["env", "readOnlyDirs", "httpHosts"];

pub(super) fn validate_file(file: &Path, text: &str) -> Result<Vec<Manifest>, Vec<SpecError>> {
    validate_text(file, text, false)
}

/// `values_allowed`: secrets may carry a `value` (see `spec::parse_request`).
pub(super) fn validate_text(file: &Path, text: &str, values_allowed: bool) -> Result<Vec<Manifest>, Vec<SpecError>> {
    let docs = parse_documents(text).map_err(|e| {
        vec![SpecError {
            file: file.to_path_buf(),
            line: e.line,
            col: e.col,
            field: String::new(),
            message: format!("YAML syntax error: {}", e.message),
            hint: Some("check indentation and quoting around this place".into()),
        }]
    })?;
    let mut ctx = Ctx { file, errors: Vec::new(), values_allowed };
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let manifests: Vec<Manifest> = docs.iter().filter_map(|d| document(&mut ctx, d, &base_dir)).collect();
    if ctx.errors.is_empty() {
        Ok(manifests)
    } else {
        Err(ctx.errors)
    }
}

fn document(ctx: &mut Ctx<'_>, doc: &Node, base_dir: &Path) -> Option<Manifest> {
    let top = ctx.map(doc, "", TOP_FIELDS)?;
    let before = ctx.errors.len();
    match top.get("apiVersion") {
        None => ctx.err(doc, "apiVersion", "missing", Some(format!("add `apiVersion: {API_VERSION}`"))),
        Some(n) => {
            if let Some(v) = ctx.string(n, "apiVersion") {
                if v != API_VERSION {
                    ctx.err(n, "apiVersion", format!("unsupported apiVersion {v:?}"), Some(format!("use `{API_VERSION}`")));
                }
            }
        }
    }
    let kind_names: Vec<(&str, Kind)> = Kind::ALL.iter().map(|k| (k.as_str(), *k)).collect();
    let kind = match top.get("kind") {
        None => {
            ctx.err(doc, "kind", "missing", Some("add `kind: Sandbox` (or Volume, Plugin)".into()));
            None
        }
        Some(n) => ctx.one_of(n, "kind", &kind_names),
    };
    let (name, labels) = match top.get("metadata") {
        None => {
            ctx.err(doc, "metadata", "missing", Some("add `metadata: { name: my-sandbox }`".into()));
            (None, BTreeMap::new())
        }
        Some(m) => metadata(ctx, m),
    };
    let spec_node = top.get("spec");
    let spec = match (kind, spec_node) {
        (Some(Kind::Sandbox), None) => {
            ctx.err(doc, "spec", "missing", Some("a Sandbox needs at least `spec: { image: ... }`".into()));
            None
        }
        (Some(Kind::Sandbox), Some(n)) => sandbox(ctx, n, base_dir).map(ResourceSpec::Sandbox),
        (Some(Kind::Volume), n) => volume_fields::volume(ctx, n).map(ResourceSpec::Volume),
        (Some(Kind::Plugin), None) => {
            ctx.err(doc, "spec", "missing", Some("a Plugin needs `spec: { component: path/to/plugin.wasm }`".into()));
            None
        }
        (Some(Kind::Plugin), Some(n)) => plugin(ctx, n, base_dir).map(ResourceSpec::Plugin),
        (None, _) => None,
    };
    if ctx.errors.len() != before {
        return None;
    }
    Some(Manifest {
        resource: Resource { name: name?, labels, spec: spec? },
        origin: Origin { file: ctx.file.to_path_buf(), line: doc.line },
    })
}

fn metadata(ctx: &mut Ctx<'_>, node: &Node) -> (Option<String>, BTreeMap<String, String>) {
    let Some(m) = ctx.map(node, "metadata", METADATA_FIELDS) else { return (None, BTreeMap::new()) };
    let name = match m.get("name") {
        None => {
            ctx.err(node, "metadata.name", "missing", Some("every resource needs a name".into()));
            None
        }
        Some(n) => ctx.string(n, "metadata.name").and_then(|s| {
            if is_valid_name(&s) {
                Some(s)
            } else {
                ctx.err(n, "metadata.name", format!("invalid name {s:?}"), Some("use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit".into()));
                None
            }
        }),
    };
    let labels = m.get("labels").and_then(|l| ctx.string_map(l, "metadata.labels")).unwrap_or_default();
    if let Some(a) = m.get("annotations") {
        ctx.string_map(a, "metadata.annotations");
    }
    (name, labels)
}

fn resolve_path(base_dir: &Path, p: &str) -> PathBuf {
    let path = Path::new(p);
    let joined = if path.is_absolute() { path.to_path_buf() } else { base_dir.join(path) };
    std::fs::canonicalize(&joined).unwrap_or(joined)
}

/// Validates an image reference and normalises it: `dir:`, `oci-layout:` and `oci-archive:`
/// paths become absolute (relative to the YAML file); registry references are checked.
pub fn normalise_image(image: &str, base_dir: &Path) -> Result<String, (String, String)> {
    if let Some(dir) = image.strip_prefix("dir:") {
        if dir.is_empty() {
            return Err(("`dir:` needs a path".into(), "e.g. dir:./rootfs".into()));
        }
        let path = resolve_path(base_dir, dir);
        if !path.is_dir() {
            return Err((
                format!("root filesystem directory {} does not exist", path.display()),
                "build it first (`just rootfs` builds the example one), or fix the path; relative paths start at the YAML file's directory".into(),
            ));
        }
        let s = path.to_string_lossy().into_owned();
        if s.contains([',', ':']) {
            return Err(("the rootfs path must not contain ',' or ':' (overlayfs option syntax)".into(), "move or link it elsewhere".into()));
        }
        return Ok(format!("dir:{s}"));
    }
    for prefix in ["oci-layout:", "oci-archive:"] {
        if let Some(rest) = image.strip_prefix(prefix) {
            let (path, tag) = match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') && !resolve_path(base_dir, rest).exists() => (p, Some(t)),
                _ => (rest, None),
            };
            let abs = resolve_path(base_dir, path);
            if !abs.exists() {
                return Err((format!("{} does not exist", abs.display()), format!("{prefix}PATH[:TAG], PATH relative to the YAML file")));
            }
            let tag = tag.map(|t| format!(":{t}")).unwrap_or_default();
            return Ok(format!("{prefix}{}{tag}", abs.display()));
        }
    }
    match image.parse::<oci_client::Reference>() {
        Ok(r) => Ok(r.whole()),
        Err(e) => Err((
            format!("{image:?} is not an image reference: {e}"),
            "use a registry reference (alpine:3.20, host:port/name@sha256:...), oci-layout:DIR[:TAG], oci-archive:FILE[:TAG] or dir:PATH".into(),
        )),
    }
}

/// `spec.kernel`: a path (with a `/`, relative to the YAML file) to an extracted kernel package
/// or a kernel image file, made absolute and checked to exist; or the name of a kernel in the
/// data directory's `kernels/`, checked when the sandbox starts.
pub fn normalise_kernel(kernel: &str, base_dir: &Path) -> Result<String, (String, String)> {
    if !kernel.contains('/') {
        let ok = kernel.chars().all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c)) && !kernel.starts_with('.');
        if !ok {
            return Err((format!("{kernel:?} is not a kernel name"), "the name of a kernel under DATA/kernels (as `orchestrator kernel fetch` provisions, e.g. linux-image-6.1.0-57-cloud-amd64), or a path such as ./kernels/vmlinux".into()));
        }
        return Ok(kernel.to_string());
    }
    let path = resolve_path(base_dir, kernel);
    if !path.exists() {
        return Err((format!("kernel {} does not exist", path.display()), "an extracted kernel package directory (boot/vmlinuz-V, lib/modules/V) or a kernel image file; relative paths start at the YAML file's directory".into()));
    }
    Ok(path.to_string_lossy().into_owned())
}

fn sandbox(ctx: &mut Ctx<'_>, node: &Node, base_dir: &Path) -> Option<SandboxSpec> {
    let mut allowed: Vec<&str> = SANDBOX_FIELDS.to_vec();
    allowed.extend(SANDBOX_FIELDS_NOT_YET);
    let f = ctx.map(node, "spec", &allowed)?;
    let before = ctx.errors.len();
    for key in SANDBOX_FIELDS_NOT_YET {
        if let Some((_, n)) = f.entries.iter().find(|(k, _)| k == key) {
            ctx.err(n, &format!("spec.{key}"), "not supported by this version yet", Some("remove it; this field is planned (see README: YAML reference)".into()));
        }
    }
    let image = match f.get("image") {
        None => {
            ctx.err(node, "spec.image", "missing", Some("e.g. `image: dir:./rootfs`".into()));
            None
        }
        Some(n) => ctx.nonempty_string(n, "spec.image").and_then(|s| match normalise_image(&s, base_dir) {
            Ok(v) => Some(v),
            Err((msg, hint)) => {
                ctx.err(n, "spec.image", msg, Some(hint));
                None
            }
        }),
    };
    let mut spec = SandboxSpec::new(image.unwrap_or_default());
    if let Some(n) = f.get("isolation") {
        let opts = [("auto", Isolation::Auto), ("microvm", Isolation::Microvm), ("namespace", Isolation::Namespace)];
        spec.isolation = ctx.one_of(n, "spec.isolation", &opts).unwrap_or_default();
    }
    if let Some(n) = f.get("cpus") {
        match &n.value {
            Value::Scalar { text, plain: true } => match text.parse::<f64>() {
                Ok(c) if c > 0.0 && c <= 1024.0 => spec.cpus = Some(c),
                _ => ctx.err(n, "spec.cpus", format!("{text:?} is not a CPU count"), Some("a positive number such as 1, 2 or 0.5".into())),
            },
            _ => ctx.wrong_type(n, "spec.cpus", "a number of CPUs"),
        }
    }
    if let Some(n) = f.get("memory") {
        spec.memory = ctx.bytes(n, "spec.memory");
        if let Some(m) = spec.memory {
            if m < 4 << 20 {
                ctx.err(n, "spec.memory", "below the 4Mi minimum", Some("sandboxes need at least a few MiB; e.g. 64Mi".into()));
            }
        }
    }
    if let Some(n) = f.get("disk") {
        spec.disk = ctx.bytes(n, "spec.disk");
        if let Some(d) = spec.disk {
            if let Err(msg) = super::check_disk(d) {
                ctx.err(n, "spec.disk", msg, Some("e.g. 1Gi; without `disk` the bound is 10Gi".into()));
                spec.disk = None;
            }
        }
    }
    if let Some(n) = f.get("writableLayer") {
        let opts = [("disk", WritableLayer::Disk), ("memory", WritableLayer::Memory)];
        spec.writable_layer = ctx.one_of(n, "spec.writableLayer", &opts).unwrap_or_default();
        if spec.writable_layer == WritableLayer::Memory && spec.isolation == Isolation::Microvm {
            ctx.err(n, "spec.writableLayer", "a microVM's writable layer is its scratch disk", Some("remove `writableLayer`, or use `isolation: namespace` (or auto)".into()));
        }
    }
    if let Some(n) = f.get("volumes") {
        spec.volumes = volume_fields::mounts(ctx, n, base_dir);
    }
    if let Some(n) = f.get("ports") {
        spec.ports = network_fields::published_ports(ctx, n);
        if !spec.ports.is_empty() && f.get("network").is_some_and(|net| matches!(&net.value, Value::Map(entries) if entries.iter().any(|(k, v)| matches!(&k.value, Value::Scalar { text, .. } if text == "policy") && matches!(&v.value, Value::Scalar { text, .. } if text == "none")))) {
            ctx.err(n, "spec.ports", "a sandbox with `network.policy: none` has no link to publish ports on", Some("remove spec.ports or choose another policy".into()));
        }
    }
    if let Some(n) = f.get("env") {
        if let Some(env) = ctx.string_map(n, "spec.env") {
            for k in env.keys() {
                let ok = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    ctx.err(n, &format!("spec.env.{k}"), "invalid environment variable name", Some("letters, digits and '_', not starting with a digit".into()));
                }
            }
            // Linux refuses to execve with a variable longer than MAX_ARG_STRLEN (32 pages) or
            // an environment beyond a fraction of the stack: better here than as E2BIG later.
            for (k, v) in &env {
                if k.len() + v.len() + 1 > MAX_ENV_ENTRY {
                    let msg = format!("the value is {} bytes; the kernel passes at most {} KiB per variable", v.len(), MAX_ENV_ENTRY >> 10);
                    ctx.err(n, &format!("spec.env.{k}"), msg, Some("put large data in a file (spec.patches) instead".into()));
                }
            }
            let total: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
            if total > MAX_ENV_TOTAL {
                let msg = format!("{total} bytes of variables; at most {} KiB fit beside the command line", MAX_ENV_TOTAL >> 10);
                ctx.err(n, "spec.env", msg, Some("put large data in a file (spec.patches) instead".into()));
            }
            spec.env = env;
        }
    }
    if let Some(n) = f.get("workdir") {
        spec.workdir = ctx.nonempty_string(n, "spec.workdir");
        if spec.workdir.as_deref().is_some_and(|w| !w.starts_with('/')) {
            ctx.err(n, "spec.workdir", "must be an absolute path", Some("e.g. /app".into()));
        }
    }
    if let Some(n) = f.get("command") {
        spec.command = ctx.string_list(n, "spec.command");
        if spec.command.as_ref().is_some_and(|c| c.is_empty()) {
            ctx.err(n, "spec.command", "must not be empty", Some("omit it to run no main process".into()));
        }
    }
    if let Some(n) = f.get("user") {
        spec.user = ctx.nonempty_string(n, "spec.user");
    }
    if let Some(n) = f.get("tty") {
        spec.tty = ctx.bool(n, "spec.tty").unwrap_or(false);
    }
    if let Some(n) = f.get("userNamespace") {
        spec.user_namespace = ctx.bool(n, "spec.userNamespace").unwrap_or(false);
    }
    if let Some(n) = f.get("pullPolicy") {
        use crate::image::PullPolicy;
        let opts = [("IfNotPresent", PullPolicy::IfNotPresent), ("Always", PullPolicy::Always), ("Never", PullPolicy::Never)];
        spec.pull_policy = ctx.one_of(n, "spec.pullPolicy", &opts).unwrap_or_default();
    }
    if let Some(n) = f.get("restartPolicy") {
        let opts = [("Always", RestartPolicy::Always), ("OnFailure", RestartPolicy::OnFailure), ("Never", RestartPolicy::Never)];
        spec.restart_policy = ctx.one_of(n, "spec.restartPolicy", &opts).unwrap_or_default();
    }
    if let Some(n) = f.get("limits") {
        if let Some(l) = ctx.map(n, "spec.limits", LIMIT_FIELDS) {
            spec.limits = Limits {
                pids: l.get("pids").and_then(|n| ctx.integer(n, "spec.limits.pids", 1, 4_194_304)),
                nofile: l.get("nofile").and_then(|n| ctx.integer(n, "spec.limits.nofile", 16, 1_048_576)),
                fsize: l.get("fsize").and_then(|n| ctx.bytes(n, "spec.limits.fsize")),
                cpu_time_secs: l.get("cpuTime").and_then(|n| ctx.seconds(n, "spec.limits.cpuTime")),
            };
        }
    }
    if let Some(n) = f.get("secrets") {
        spec.secrets = secrets(ctx, n);
    }
    if let Some(n) = f.get("patches") {
        spec.patches = patches(ctx, n);
    }
    if let Some(n) = f.get("hooks") {
        if let Some(h) = ctx.map(n, "spec.hooks", HOOK_FIELDS) {
            spec.hooks.rootfs_patch = h.get("rootfsPatch").and_then(|n| plugin_names(ctx, n, "spec.hooks.rootfsPatch")).unwrap_or_default();
            spec.hooks.metrics_sinks = h.get("metricsSinks").and_then(|n| plugin_names(ctx, n, "spec.hooks.metricsSinks")).unwrap_or_default();
        }
    }
    if let Some(n) = f.get("network") {
        spec.network = network_fields::network(ctx, n);
    }
    if let Some(n) = f.get("kernel") {
        spec.kernel = ctx.nonempty_string(n, "spec.kernel").and_then(|k| match normalise_kernel(&k, base_dir) {
            Ok(k) => Some(k),
            Err((msg, hint)) => {
                ctx.err(n, "spec.kernel", msg, Some(hint));
                None
            }
        });
        if spec.isolation == Isolation::Namespace {
            ctx.err(n, "spec.kernel", "a namespace sandbox runs on the host's kernel", Some("remove `kernel`, or use `isolation: microvm` (or auto)".into()));
        }
    }
    if spec.tty && spec.command.is_none() && spec.image.starts_with("dir:") && ctx.errors.len() == before {
        ctx.err(node, "spec.tty", "a terminal needs a main process", Some("add `command`, or drop `tty`".into()));
    }
    (ctx.errors.len() == before).then_some(spec)
}

fn plugin(ctx: &mut Ctx<'_>, node: &Node, base_dir: &Path) -> Option<PluginSpec> {
    let f = ctx.map(node, "spec", PLUGIN_FIELDS)?;
    let before = ctx.errors.len();
    let component = match f.get("component") {
        None => {
            ctx.err(node, "spec.component", "missing", Some("path to the plugin's .wasm component".into()));
            None
        }
        Some(n) => ctx.nonempty_string(n, "spec.component").map(|c| resolve_path(base_dir, &c).to_string_lossy().into_owned()),
    };
    let config = f.get("config").and_then(|n| ctx.string_map(n, "spec.config")).unwrap_or_default();
    let (mut memory, mut timeout_ms) = (None, None);
    if let Some(n) = f.get("limits") {
        if let Some(l) = ctx.map(n, "spec.limits", PLUGIN_LIMIT_FIELDS) {
            memory = l.get("memory").and_then(|n| ctx.bytes(n, "spec.limits.memory"));
            timeout_ms = l.get("timeout").and_then(|n| ctx.millis(n, "spec.limits.timeout"));
        }
    }
    let mut grants = PluginGrants::default();
    if let Some(n) = f.get("grants") {
        if let Some(g) = ctx.map(n, "spec.grants", PLUGIN_GRANT_FIELDS) {
            grants.env = g.get("env").and_then(|n| ctx.string_list(n, "spec.grants.env")).unwrap_or_default();
            grants.read_only_dirs = g
                .get("readOnlyDirs")
                .and_then(|n| ctx.string_list(n, "spec.grants.readOnlyDirs"))
                .unwrap_or_default()
                .iter()
                .map(|d| resolve_path(base_dir, d).to_string_lossy().into_owned())
                .collect();
            grants.http_hosts = g.get("httpHosts").and_then(|n| ctx.string_list(n, "spec.grants.httpHosts")).unwrap_or_default();
            if let Some(n) = g.get("httpHosts") {
                for (i, host) in grants.http_hosts.iter().enumerate() {
                    if let Err(e) = crate::plugin::http::check_grant(host) {
                        ctx.err(n, &format!("spec.grants.httpHosts[{i}]"), e, Some("e.g. vault.internal, 127.0.0.1:8200 or *.example.com".into()));
                    }
                }
            }
        }
    }
    if ctx.errors.len() != before {
        return None;
    }
    let interval_secs = f.get("interval").and_then(|n| ctx.seconds(n, "spec.interval"));
    Some(PluginSpec { component: component?, config, memory, timeout_ms, grants, interval_secs })
}

/// Two resources of one kind with one name in the same source.
pub(super) fn duplicates(manifests: &[Manifest]) -> Vec<SpecError> {
    let mut seen: HashMap<(Kind, &str), &Origin> = HashMap::new();
    let mut errors = Vec::new();
    for m in manifests {
        let key = (m.resource.kind(), m.resource.name.as_str());
        if let Some(first) = seen.get(&key) {
            errors.push(SpecError {
                file: m.origin.file.clone(),
                line: m.origin.line,
                col: 1,
                field: "metadata.name".into(),
                message: format!("duplicate {} name {:?}", key.0, key.1),
                hint: Some(format!("already declared at {first}; names are unique per kind")),
            });
        } else {
            seen.insert(key, &m.origin);
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_agent::protocol::PatchOp;

    fn errors(text: &str) -> Vec<SpecError> {
        validate_file(Path::new("/tmp/x.yaml"), text).unwrap_err()
    }

    #[test]
    fn a_writable_layer_is_disk_or_memory_and_memory_is_a_namespace_sandboxs() {
        let spec = |extra: &str| format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: {{ name: w }}\nspec:\n  image: dir:/\n{extra}");
        let m = validate_file(Path::new("/tmp/x.yaml"), &spec("  writableLayer: memory\n")).unwrap();
        let ResourceSpec::Sandbox(s) = &m[0].resource.spec else { panic!() };
        assert_eq!(s.writable_layer, WritableLayer::Memory);
        let m = validate_file(Path::new("/tmp/x.yaml"), &spec("")).unwrap();
        let ResourceSpec::Sandbox(s) = &m[0].resource.spec else { panic!() };
        assert_eq!(s.writable_layer, WritableLayer::Disk, "a disk unless asked");
        let e = errors(&spec("  writableLayer: ram\n"));
        assert_eq!((e[0].field.as_str(), e[0].line), ("spec.writableLayer", 6), "{e:?}");
        assert!(e[0].to_string().contains("disk") && e[0].to_string().contains("memory"), "the choices are named: {}", e[0]);
        let e = errors(&spec("  isolation: microvm\n  writableLayer: memory\n"));
        assert_eq!(e[0].field, "spec.writableLayer", "{e:?}");
        assert!(e[0].message.contains("scratch disk"), "{}", e[0].message);
    }

    #[test]
    fn a_full_sandbox_parses() {
        let text = "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: a-1, labels: { team: ml } }\nspec:\n  image: dir:/\n  cpus: 0.5\n  memory: 512Mi\n  env: { MODE: dev, PORT: 8080 }\n  workdir: /app\n  command: [sleep, '100']\n  restartPolicy: OnFailure\n  limits: { pids: 64, nofile: 1024, fsize: 1Mi, cpuTime: 1m }\n";
        let m = validate_file(Path::new("/tmp/x.yaml"), text).unwrap();
        let ResourceSpec::Sandbox(s) = &m[0].resource.spec else { panic!() };
        assert_eq!(s.memory, Some(512 << 20));
        assert_eq!(s.env["PORT"], "8080");
        assert_eq!(s.limits.cpu_time_secs, Some(60));
        assert_eq!(s.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(m[0].resource.labels["team"], "ml");
    }

    #[test]
    fn plugin_fields_parse_and_bad_ones_are_located() {
        let text = "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: a }\nspec:\n  image: dir:/\n  patches:\n    - { op: write, path: /etc/motd, content: hi, mode: '0600' }\n    - { op: symlink, path: /l, target: /etc/motd }\n  secrets: [ { env: API_KEY, provider: vault, key: k } ]\n  hooks: { rootfsPatch: [p1], metricsSinks: [m1] }\n  network: { plugins: [g1] }\n";
        let m = validate_file(Path::new("/tmp/x.yaml"), text).unwrap();
        let ResourceSpec::Sandbox(s) = &m[0].resource.spec else { panic!() };
        assert_eq!(s.patches[0], PatchOp::Write { path: "/etc/motd".into(), contents: b"hi".to_vec(), mode: 0o600 });
        assert_eq!(s.secrets[0].provider, "vault");
        assert_eq!(s.plugin_refs().len(), 4);

        let bad = "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: a }\nspec:\n  image: dir:/\n  patches:\n    - { op: write, path: /../etc/shadow, content: x }\n    - { op: chmod, path: /x }\n    - { op: remove, path: /proc/1 }\n    - { op: mkdir, path: /d, target: /x }\n  secrets: [ { env: 1BAD, provider: vault } ]\n  hooks: { rootfsPatch: [Not_A_Name] }\n";
        let errs = validate_file(Path::new("/tmp/x.yaml"), bad).unwrap_err();
        let fields: Vec<(&str, usize)> = errs.iter().map(|e| (e.field.as_str(), e.line)).collect();
        for expected in [("spec.patches[0].path", 7), ("spec.patches[1].mode", 8), ("spec.patches[2].path", 9), ("spec.patches[3].target", 10), ("spec.secrets[0].key", 11), ("spec.hooks.rootfsPatch[0]", 12)] {
            assert!(fields.contains(&expected), "{expected:?} not in {fields:?}");
        }
    }

    #[test]
    fn a_spec_without_plugin_fields_keeps_its_canonical_form() {
        // Stored specs from before these fields existed must compare equal, or every sandbox
        // would be recreated on upgrade.
        let text = "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: a }\nspec: { image: 'dir:/' }\n";
        let m = validate_file(Path::new("/tmp/x.yaml"), text).unwrap();
        let json = m[0].resource.canonical_json();
        for key in ["secrets", "patches", "hooks", "network"] {
            assert!(!json.contains(key), "{json}");
        }
    }

    #[test]
    fn every_error_is_reported_with_location_and_hint() {
        let text = "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: Bad_Name }\nspec:\n  image: dir:/\n  memroy: 1Gi\n  cpus: two\n  limits: { pids: '5', fsize: 12XB }\n";
        let errs = errors(text);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "spec.memroy", "spec.cpus", "spec.limits.pids", "spec.limits.fsize"]);
        assert_eq!((errs[1].line, errs[1].col), (6, 3));
        assert_eq!(errs[1].hint.as_deref(), Some("did you mean `memory`?"));
        assert!(errs[4].to_string().contains("/tmp/x.yaml:8:"));
    }

    #[test]
    fn wrong_kind_and_api_version() {
        let errs = errors("apiVersion: v2\nkind: Sandbx\nmetadata: { name: a }\n");
        assert!(errs[0].message.contains("unsupported apiVersion"));
        assert_eq!(errs[1].hint.as_deref(), Some("did you mean `Sandbox`?"));
    }

    #[test]
    fn duplicate_names_across_documents() {
        let text = "apiVersion: orchestrator/v1\nkind: Volume\nmetadata: { name: v }\n---\napiVersion: orchestrator/v1\nkind: Volume\nmetadata: { name: v }\n";
        let m = validate_file(Path::new("/tmp/x.yaml"), text).unwrap();
        let d = duplicates(&m);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].line, 5);
        assert!(d[0].hint.as_ref().unwrap().contains("/tmp/x.yaml:1"));
    }

    #[test]
    fn a_sandbox_kernel_is_a_path_made_absolute_or_a_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("k/boot")).unwrap();
        let yaml = dir.path().join("s.yaml");
        let doc = |kernel: &str, isolation: &str| format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: {{ name: a }}\nspec:\n  image: dir:/\n  isolation: {isolation}\n  kernel: {kernel}\n");
        let kernel_of = |text: &str| match &validate_file(&yaml, text).unwrap()[0].resource.spec {
            ResourceSpec::Sandbox(s) => s.kernel.clone(),
            _ => panic!(),
        };
        let abs = std::fs::canonicalize(dir.path().join("k")).unwrap();
        assert_eq!(kernel_of(&doc("./k", "microvm")), Some(abs.to_string_lossy().into_owned()));
        assert_eq!(kernel_of(&doc("linux-image-6.1.0-57-cloud-amd64", "auto")), Some("linux-image-6.1.0-57-cloud-amd64".into()));
        let errs = validate_file(&yaml, &doc("./missing", "microvm")).unwrap_err();
        assert_eq!((errs[0].field.as_str(), errs[0].line), ("spec.kernel", 7));
        assert!(errs[0].message.contains("does not exist"), "{}", errs[0].message);
        let errs = validate_file(&yaml, &doc("'bad name'", "microvm")).unwrap_err();
        assert!(errs[0].message.contains("not a kernel name"), "{}", errs[0].message);
        let errs = validate_file(&yaml, &doc("./k", "namespace")).unwrap_err();
        assert!(errs[0].message.contains("host's kernel"), "{}", errs[0].message);
    }

    #[test]
    fn volumes_parse_and_bad_mounts_are_located() {
        let ok = "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: a }\nspec:\n  image: 'dir:/'\n  volumes:\n    - { name: data, mountPath: /data/, readOnly: true }\n    - { hostPath: ./src, mountPath: /src }\n    - { tmpfs: /scratch, size: 8Mi }\n";
        let m = validate_file(Path::new("/work/a.yaml"), ok).unwrap();
        let ResourceSpec::Sandbox(s) = &m[0].resource.spec else { panic!() };
        assert_eq!(s.volumes[0], VolumeMount { source: MountSource::Volume("data".into()), mount_path: "/data".into(), read_only: true });
        assert_eq!(s.volumes[1].source, MountSource::HostPath("/work/src".into()));
        assert_eq!(s.volumes[2].source, MountSource::Tmpfs(8 << 20));
        let bad = "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: a }\nspec:\n  image: 'dir:/'\n  volumes:\n    - { name: data, hostPath: /x, mountPath: /d }\n    - { name: Bad, mountPath: /e }\n    - { name: v, mountPath: /proc/x }\n    - { name: v, mountPath: /f }\n    - { name: w, mountPath: /f }\n    - { tmpfs: /t, readOnly: true }\n";
        let errs = errors(bad);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.volumes[0]", "spec.volumes[1].name", "spec.volumes[2].mountPath", "spec.volumes[4]", "spec.volumes[5].readOnly"], "{errs:?}");
        assert!(errs.iter().all(|e| e.line > 0));
        let vol = errors("apiVersion: orchestrator/v1\nkind: Volume\nmetadata: { name: v }\nspec: { size: 1Mi, shared: maybe }\n");
        assert_eq!(vol.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(), ["spec.size", "spec.shared"]);
    }

    #[test]
    fn missing_rootfs_and_registry_images_are_explained() {
        let errs = errors("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: a }\nspec: { image: 'dir:./nope-not-here' }\n");
        assert!(errs[0].message.contains("does not exist"));
        let errs = errors("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: a }\nspec: { image: 'Not A Ref!' }\n");
        assert!(errs[0].message.contains("is not an image reference"), "{:?}", errs[0]);
        let ok = validate_file(Path::new("/tmp/x.yaml"), "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: a }\nspec: { image: 'alpine:3.20', pullPolicy: Never }\n").unwrap();
        let ResourceSpec::Sandbox(s) = &ok[0].resource.spec else { panic!() };
        assert_eq!(s.image, "docker.io/library/alpine:3.20");
        assert_eq!(s.pull_policy, crate::image::PullPolicy::Never);
    }

    #[test]
    fn network_sections_parse_into_policies_and_bad_entries_are_located() {
        let text = "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: a }\nspec:\n  image: dir:/\n  network:\n    policy: public-only\n    rules:\n      - { action: allow, host: Packages.Example }\n      - { action: deny, cidr: 0.0.0.0/0, ports: [25, '8000-8100'], protocol: tcp }\n      - { action: allow, group: host, ports: [8080] }\n    blockDomains: [ evil.example ]\n    blockDomainSuffixes: [ .tracking.example ]\n    maxConnections: 64\n";
        let ok = validate_file(Path::new("/tmp/x.yaml"), text).unwrap();
        let ResourceSpec::Sandbox(s) = &ok[0].resource.spec else { panic!() };
        assert_eq!(s.network.max_connections, Some(64));
        assert_eq!(s.network.rules[1].ports, vec![(25, 25), (8000, 8100)]);
        let policy = s.network.to_policy().unwrap();
        assert_eq!(policy.rules[0].host.as_deref(), Some("packages.example"));
        assert_eq!(policy.rules[2].group, Some(netstack::addr::Group::Host));
        let errs = errors("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: a }\nspec:\n  image: dir:/\n  network:\n    policy: open\n    rules:\n      - { action: permit, host: x.org }\n      - { action: deny, cidr: 10.0.0.0/40 }\n      - { action: allow, group: lan }\n      - { action: allow, ports: [0] }\n      - { action: deny }\n    blockDomains: [ 'not a name' ]\n    maxConnections: 0\n");
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in ["spec.network.policy", "spec.network.rules[0].action", "spec.network.rules[1].cidr", "spec.network.rules[2].group", "spec.network.rules[3].ports[0]", "spec.network.rules[4]", "spec.network.blockDomains[0]", "spec.network.maxConnections"] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
        assert!(errs.iter().all(|e| e.line > 0), "{errs:?}");
    }
}
