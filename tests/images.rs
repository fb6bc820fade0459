//! Images from a real registry (Debian's docker-registry on a free loopback port, images pushed
//! with skopeo from OCI layouts the project builds itself): files, whiteouts, Docker defaults,
//! digests, multi-arch indexes, the store's sharing, and every failure a user can meet:
//! unknown tags, a registry that is down, a corrupted blob, hostile layers, plain HTTP that
//! was not allowed, pullPolicy Never.

mod common;
#[path = "common/registry.rs"]
mod registry;

use registry::Registry;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn with_registry(env: &Env, reg: &Registry, args: &[&str]) -> std::process::Output {
    env.cmd(args).env("ORCHESTRATOR_INSECURE_REGISTRIES", reg.host()).output().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn sandboxes_from_a_registry_image_see_what_docker_would_give() {
    let env = Env::new();
    let reg = Registry::start();
    let image = reg.push("busybox", "tests/busybox:1", false);
    let out = with_registry(&env, &reg, &["image", "pull", &image]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The image's Entrypoint + Cmd, Env, WorkingDir and User, as docker run would use them.
    let out = with_registry(&env, &reg, &["run", "--rm", &image]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from /app as app\n", "{}", stderr(&out));
    // Whiteouts, replacements, opaque directories, modes and owners from the two layers.
    let script = "test -e /etc/motd && echo motd-present; cat /etc/replaced; ls /opt/data; stat -c '%a %U' /usr/local/bin/suid-tool /app/hello.txt; echo $GREETING";
    let out = with_registry(&env, &reg, &["run", "--rm", &image, "--", "sh", "-c", script]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "second\nnew.txt\n4755 root\n640 app\nhello\n", "{}", stderr(&out));

    // By digest, and a YAML sandbox from the registry reference.
    let digest = serde_json::from_str::<serde_json::Value>(&env.ok(&["image", "inspect", &image])).unwrap()["manifestDigest"].as_str().unwrap().to_string();
    let by_digest = format!("{}/tests/busybox@{digest}", reg.host());
    let out = with_registry(&env, &reg, &["image", "pull", "-q", &by_digest]);
    assert!(out.status.success(), "{}", stderr(&out));
    let yaml = format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: {{ name: from-registry }}\nspec:\n  image: {image}\n  isolation: namespace\n  command: [sleep, '100000']\n");
    let f = env.file("s.yaml", &yaml);
    let out = with_registry(&env, &reg, &["apply", "-f", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.sh("from-registry", "pwd; id -un; cat /app/hello.txt").1, "/app\napp\nhello from the image\n");
}

#[test]
fn the_second_sandbox_needs_no_download_and_no_unpacking() {
    let env = Env::new();
    let mut reg = Registry::start();
    let image = reg.push("busybox", "tests/shared:1", false);
    let started = Instant::now();
    assert!(with_registry(&env, &reg, &["image", "pull", "-q", &image]).status.success());
    let first_pull = started.elapsed();
    let layers = env.data_dir().join("images/layers/sha256");
    let stamp = |p: &Path| std::fs::read_dir(p).unwrap().map(|e| { let e = e.unwrap(); (e.file_name(), e.metadata().unwrap().modified().unwrap()) }).collect::<Vec<_>>();
    let before = stamp(&layers);
    // The registry is gone: a second and third sandbox must still start, from the store.
    let _ = reg.child.kill();
    let _ = reg.child.wait();
    let yaml = ["a", "b"].map(|n| format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: {{ name: {n} }}\nspec: {{ image: '{image}', isolation: namespace, command: [sleep, '100000'] }}\n")).join("---\n");
    let f = env.file("s.yaml", &yaml);
    let started = Instant::now();
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let two_sandboxes = started.elapsed();
    assert_eq!(stamp(&layers), before, "no layer was unpacked again");
    assert_eq!(env.status("a"), "Running");
    assert_eq!(env.status("b"), "Running");
    eprintln!("first pull {first_pull:?}; two sandboxes from the store (no registry) {two_sandboxes:?}");
}

#[test]
fn multi_arch_indexes_resolve_to_this_host() {
    let env = Env::new();
    let reg = Registry::start();
    let image = reg.push("multi", "tests/multi:1", true);
    let out = with_registry(&env, &reg, &["run", "--rm", &image, "--", "cat", "/arch"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "amd64\n", "{}", stderr(&out));
}

#[test]
fn failures_are_clear_and_keep_nothing() {
    let env = Env::new();
    let reg = Registry::start();
    let image = reg.push("busybox", "tests/fail:1", false);

    let out = with_registry(&env, &reg, &["image", "pull", &format!("{}/tests/fail:nope", reg.host())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no such image or tag"), "{}", stderr(&out));

    let out = with_registry(&env, &reg, &["image", "pull", "127.0.0.1:1/tests/fail:1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("reachable"), "{}", stderr(&out));

    // Plain HTTP only where allowed: without the setting, the pull fails over TLS.
    let out = env.run(&["image", "pull", &image]);
    assert!(!out.status.success(), "plain HTTP must not be used silently");

    // pullPolicy Never with nothing local.
    let yaml = format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: {{ name: never }}\nspec: {{ image: '{image}', isolation: namespace, pullPolicy: Never }}\n");
    let f = env.file("never.yaml", &yaml);
    let out = with_registry(&env, &reg, &["apply", "-f", f.to_str().unwrap()]);
    assert!(stderr(&out).contains("pullPolicy is Never") || String::from_utf8_lossy(&out.stdout).contains("pullPolicy is Never"), "{}", stderr(&out));

    // A corrupted blob in the registry: refused, and nothing kept.
    let manifest: serde_json::Value = serde_json::from_slice(
        &Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{image}")]).output().unwrap().stdout,
    )
    .unwrap();
    let layer = manifest["layers"][1]["digest"].as_str().unwrap().to_string();
    let blob = reg.blob_file(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = with_registry(&env, &reg, &["image", "pull", &image]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not match its digest"), "{}", stderr(&out));
    let hex = layer.trim_start_matches("sha256:");
    assert!(!env.data_dir().join("images/blobs/sha256").join(hex).exists(), "the corrupted blob was not kept");
    assert_eq!(std::fs::read_dir(env.data_dir().join("images/tmp")).unwrap().count(), 0, "no partial files");
}

#[test]
fn hostile_layers_are_rejected_and_nothing_is_written_outside() {
    let env = Env::new();
    let reg = Registry::start();
    for (tag, why) in [("evil-dotdot", "`..`"), ("evil-symlink", "symlink"), ("evil-hardlink", "`..`")] {
        let image = reg.push(tag, &format!("tests/{tag}:1"), false);
        let out = with_registry(&env, &reg, &["image", "pull", &image]);
        assert!(!out.status.success(), "{tag} must be refused");
        assert!(stderr(&out).contains("hostile") && stderr(&out).contains(why), "{tag}: {}", stderr(&out));
    }
    for escaped in ["escaped-dotdot", "escaped-symlink"] {
        assert!(!Path::new("/tmp").join(escaped).exists());
        assert!(!env.data_dir().join("images").join(escaped).exists());
        assert!(!env.data_dir().join(escaped).exists());
    }
    assert_eq!(std::fs::read_dir(env.data_dir().join("images/tmp")).unwrap().count(), 0, "no half-unpacked layer left");
    assert!(env.ok(&["image", "ls", "-o", "json"]).trim() == "[]");
}

#[test]
fn import_ls_rm_and_prune() {
    let env = Env::new();
    let out = env.ok(&["image", "import", rootfs().to_str().unwrap(), "local/busybox:dev"]);
    assert!(out.contains("docker.io/local/busybox:dev"), "{out}");
    let out = env.run(&["run", "--rm", "local/busybox:dev", "--", "cat", "/etc/motd"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "busybox sandbox\n", "{}", stderr(&out));
    let ls = env.ok(&["image", "ls"]);
    assert!(ls.contains("docker.io/local/busybox:dev"));
    // In use by a sandbox: prune keeps it even after the reference is gone.
    let f = env.file("s.yaml", "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: user }\nspec: { image: 'local/busybox:dev', isolation: namespace, command: [sleep, '100000'] }\n");
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    env.ok(&["image", "rm", "local/busybox:dev"]);
    env.ok(&["image", "prune"]);
    let layers = || std::fs::read_dir(env.data_dir().join("images/layers/sha256")).unwrap().count();
    assert_eq!(layers(), 1, "the running sandbox's layer is kept");
    env.ok(&["delete", "user"]);
    let out = env.ok(&["image", "prune"]);
    assert!(out.contains("removed 1 layer"), "{out}");
    assert_eq!(layers(), 0);
}

#[test]
fn oci_archives_as_skopeo_writes_them() {
    let env = Env::new();
    let archive = env.dir.path().join("busybox.tar");
    let st = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:busybox", layouts().display()))
        .arg(format!("oci-archive:{}:v1", archive.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let reference = format!("oci-archive:{}:v1", archive.display());
    let out = env.run(&["run", "--rm", &reference, "--", "cat", "/etc/replaced"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "second\n", "{}", stderr(&out));
    let out = env.run(&["image", "pull", &format!("oci-archive:{}:nope", archive.display())]);
    assert!(stderr(&out).contains("no image tagged"), "{}", stderr(&out));
}

/// Runs a shell script in a private mount namespace (mounts vanish with it).
fn in_private_mounts(script: &str) -> String {
    let out = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn microvm_disks_are_built_once_per_image_and_hold_the_merged_layers() {
    let env = Env::new();
    let reg = Registry::start();
    let image = reg.push("busybox", "tests/disk:1", false);
    assert!(with_registry(&env, &reg, &["image", "pull", "-q", &image]).status.success());
    let started = Instant::now();
    let disk = env.ok(&["image", "disk", &image]).trim().to_string();
    let built_in = started.elapsed();
    let mtime = std::fs::metadata(&disk).unwrap().modified().unwrap();
    assert_eq!(env.ok(&["image", "disk", &image]).trim(), disk, "cached");
    assert_eq!(std::fs::metadata(&disk).unwrap().modified().unwrap(), mtime, "built once");
    let mnt = env.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = mnt.display();
    let seen = in_private_mounts(&format!(
        "mount -t erofs -o loop,ro {disk} {m} && (test -e {m}/etc/motd && echo motd-present; cat {m}/etc/replaced; ls {m}/opt/data; stat -c '%a %u' {m}/usr/local/bin/suid-tool {m}/app/hello.txt; test -x {m}/bin/busybox && echo busybox)"
    ));
    assert_eq!(seen, "second\nnew.txt\n4755 0\n640 1000\nbusybox\n");
    eprintln!("EROFS disk of the busybox image built in {built_in:?}");
}

#[test]
fn writable_disks_are_sparse_ext4_copies_of_one_template_owned_as_asked() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("images");
    use std::os::unix::fs::MetadataExt;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for (name, owner) in [("a.ext4", 0u32), ("b.ext4", 0), ("c.ext4", 100_000)] {
        let disk = dir.path().join(name);
        let started = Instant::now();
        orchestrator::image::disk::writable_disk(&store, &disk, 256 << 20, owner).unwrap();
        eprintln!("{name}: made in {:?}", started.elapsed());
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), 256 << 20);
        assert!(meta.blocks() * 512 < 8 << 20, "sparse: {} bytes allocated", meta.blocks() * 512);
        let (d, m) = (disk.display(), mnt.display());
        let seen = in_private_mounts(&format!("mount -o loop {d} {m} && echo data > {m}/f && cat {m}/f && stat -c %u {m}"));
        assert_eq!(seen, format!("data\n{owner}\n"), "{name}");
    }
    let templates: Vec<_> = std::fs::read_dir(store.join("disks")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(templates.len(), 2, "one template per size and owner, no partial files: {templates:?}");
}

#[test]
fn basic_auth_from_the_environment_or_docker_config() {
    let env = Env::new();
    let reg = Registry::start_with(Some(("alice", "s3cret")));
    let image = reg.push_from(&layouts(), "busybox", "private/busybox:1", false, Some("alice:s3cret"));
    let out = with_registry(&env, &reg, &["image", "pull", "-q", &image]);
    assert!(!out.status.success(), "anonymous pulls are refused by this registry");
    let out = env
        .cmd(&["image", "pull", "-q", &image])
        .env("ORCHESTRATOR_INSECURE_REGISTRIES", reg.host())
        .env("ORCHESTRATOR_REGISTRY_USERNAME", "alice")
        .env("ORCHESTRATOR_REGISTRY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(out.status.success(), "env credentials: {}", stderr(&out));
    env.ok(&["image", "rm", &image]);
    env.ok(&["image", "prune"]);
    use base64::Engine;
    let docker = env.dir.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let token = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    std::fs::write(docker.join("config.json"), format!("{{\"auths\": {{\"{}\": {{\"auth\": \"{token}\"}}}}}}", reg.host())).unwrap();
    let out = env.cmd(&["image", "pull", "-q", &image]).env("ORCHESTRATOR_INSECURE_REGISTRIES", reg.host()).env("DOCKER_CONFIG", &docker).output().unwrap();
    assert!(out.status.success(), "docker config.json credentials: {}", stderr(&out));
}

#[test]
fn concurrent_pulls_of_one_image_do_the_work_once() {
    let env = Env::new();
    let reg = Registry::start();
    let image = reg.push("busybox", "tests/concurrent:1", false);
    let children: Vec<Child> = (0..3)
        .map(|_| env.cmd(&["image", "pull", "-q", &image]).env("ORCHESTRATOR_INSECURE_REGISTRIES", reg.host()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let count = |d: &str| std::fs::read_dir(env.data_dir().join(d)).unwrap().count();
    assert_eq!(count("images/layers/sha256"), 2, "each layer unpacked once");
    assert_eq!(count("images/tmp"), 0, "nothing left half-done");
    assert_eq!(env.ok(&["image", "ls", "-o", "json"]).matches("reference").count(), 1);
}

#[test]
fn a_debian_image_with_python3_runs_python() {
    let env = Env::new();
    let reg = Registry::start();
    let cache = PathBuf::from("/var/cache/orchestrator-dev");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/debian-python.sh");
    let st = Command::new("bash").arg(&script).arg(&cache).status().unwrap();
    assert!(st.success(), "building the Debian + python3 image (debootstrap)");
    let image = reg.push_from(&cache.join("oci-debian-python/layout"), "python", "tests/python:3", false, None);
    let out = with_registry(&env, &reg, &["run", "--rm", &image, "--", "python3", "-c", "import sys; print(6 * 7, sys.version_info.major)"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42 3\n", "{}", stderr(&out));
    let out = with_registry(&env, &reg, &["run", "--rm", &image, "--", "sh", "-c", "grep -o 'Debian GNU/Linux 12' /etc/os-release | head -1"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Debian GNU/Linux 12\n");
}

#[test]
fn an_interrupted_pull_leaves_nothing_half_used() {
    let env = Env::new();
    let reg = Registry::start();
    let cache = PathBuf::from("/var/cache/orchestrator-dev");
    let st = Command::new("bash").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/debian-python.sh")).arg(&cache).status().unwrap();
    assert!(st.success());
    let image = reg.push_from(&cache.join("oci-debian-python/layout"), "python", "tests/interrupted:1", false, None);
    for delay in [Duration::from_millis(300), Duration::from_millis(1200)] {
        let mut child = env.cmd(&["image", "pull", "-q", &image]).env("ORCHESTRATOR_INSECURE_REGISTRIES", reg.host()).spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        // Whatever it got to, nothing unfinished is visible as an image or a layer.
        let recorded = env.ok(&["image", "ls", "-o", "json"]);
        let layers = std::fs::read_dir(env.data_dir().join("images/layers/sha256")).map(|d| d.count()).unwrap_or(0);
        assert!(recorded.trim() == "[]" || layers == 1, "after {delay:?}: record {recorded} with {layers} layers");
    }
    // The next pull completes and the image runs.
    let out = with_registry(&env, &reg, &["run", "--rm", &image, "--", "python3", "-c", "print('ok')"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{}", stderr(&out));
    env.ok(&["image", "prune"]);
    assert_eq!(std::fs::read_dir(env.data_dir().join("images/tmp")).unwrap().count(), 0, "prune clears what interrupted pulls left");
}

#[test]
fn images_with_many_layers_run_with_and_without_a_user_namespace() {
    let env = Env::new();
    let reference = format!("oci-layout:{}:many", layouts().display());
    let out = env.run(&["run", "--rm", &reference, "--", "sh", "-c", "ls /layers | wc -l; cat /layers/1 /layers/60"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "60\nlayer 1\nlayer 60\n", "{}", stderr(&out));
    let yaml = format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: {{ name: many }}\nspec: {{ image: '{reference}', isolation: namespace, userNamespace: true }}\n");
    let f = env.file("many.yaml", &yaml);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(env.sh("many", "cat /layers/30; id -u").1, "layer 30\n0\n");
}
