//! A writable layer in memory (`writableLayer: memory`, `run --writable-layer memory`) as a
//! user meets it in a namespace sandbox: what it writes reads back across commands; nothing
//! of it lands on the host's disk (no disk image, no loop device); `spec.disk` bounds it
//! (ENOSPC inside) and so does `spec.memory` (its pages are the sandbox's); a restart starts
//! from the image again; a one-shot `run --rm` leaves nothing. Real namespaces, tmpfs,
//! cgroups and shims.

mod common;

use common::*;

fn instance_of(env: &Env, name: &str) -> String {
    env.sandbox(name)["instance"].as_str().expect("instance").to_string()
}

#[test]
fn a_memory_layer_keeps_writes_bounded_by_disk_and_memory_and_touches_no_disk() {
    let env = Env::new();
    let yaml = env.file(
        "mem.yaml",
        &sandbox_yaml("mem", "  writableLayer: memory\n  disk: 96Mi\n  memory: 512Mi\n  patches:\n    - { op: write, path: /etc/patched, content: \"yes\\n\" }\n"),
    );
    env.ok(&["apply", "-f", yaml.to_str().unwrap()]);
    let (code, out, err) = env.sh("mem", "echo kept > /etc/note && cat /etc/note");
    assert_eq!((code, out.as_str()), (0, "kept\n"), "{err}");
    assert_eq!(env.sh("mem", "cat /etc/note").1, "kept\n", "a later command reads it back");
    assert!(env.ok(&["describe", "mem"]).contains("disk=96Mi (in memory)"), "{}", env.ok(&["describe", "mem"]));
    // The layer's tmpfs is the init's, outside the root: nothing inside sees or reaches it.
    let (_, out, _) = env.sh("mem", "grep -c size=98304k /proc/self/mountinfo");
    assert_eq!(out.trim(), "0", "the layer's own mount is not in the sandbox's mount table");

    let dir = env.instance_dir("mem");
    let instance = instance_of(&env, "mem");
    assert!(!dir.join("disk.ext4").exists(), "no disk image in {}", dir.display());
    assert!(loop_devices_backed_by(&instance).is_empty(), "no loop device: {:?}", loop_devices_backed_by(&instance));

    // spec.disk is the bound, as with a disk: ENOSPC inside, and the layer is usable after.
    let (code, _, err) = env.sh("mem", "dd if=/dev/zero of=/fill bs=1M count=150");
    assert!(code != 0 && err.contains("No space left"), "writing 150 MiB past a 96 MiB layer: {code} {err}");
    let (code, out, _) = env.sh("mem", "rm /fill && echo more >> /etc/note && cat /etc/note");
    assert_eq!((code, out.as_str()), (0, "kept\nmore\n"));

    // A stop and start begins from the image again (the layer lived in the init's mounts).
    env.ok(&["stop", "mem"]);
    env.ok(&["start", "mem"]);
    let (code, _, _) = env.sh("mem", "test -e /etc/note");
    assert_ne!(code, 0, "the memory layer is gone after a stop and start");
    assert_eq!(env.sh("mem", "cat /etc/patched").1, "yes\n", "the spec's patches are applied again");
    env.ok(&["delete", "-f", yaml.to_str().unwrap()]);
    assert!(leftovers(&instance).is_empty(), "{:?}", leftovers(&instance));
}

#[test]
fn a_memory_layer_is_charged_to_the_sandboxs_memory() {
    let env = Env::new();
    // A 1 GiB layer in a 64 MiB sandbox: the memory bound holds first, as ENOSPC at three
    // quarters of it, with room left for the sandbox's processes (not the OOM killer).
    let yaml = env.file("small.yaml", &sandbox_yaml("small", "  writableLayer: memory\n  disk: 1Gi\n  memory: 64Mi\n"));
    env.ok(&["apply", "-f", yaml.to_str().unwrap()]);
    let (code, _, err) = env.sh("small", "dd if=/dev/zero of=/fill bs=1M count=256");
    assert!(code != 0 && err.contains("No space left"), "filling the layer: {code} {err}");
    let (_, size, _) = env.sh("small", "wc -c < /fill");
    let written: u64 = size.trim().parse().unwrap_or(u64::MAX);
    assert!(written <= 48 << 20, "wrote {written} bytes into a 64 MiB sandbox's memory layer");
    assert_eq!(env.sh("small", "echo still running").1, "still running\n", "commands run with the layer full");
    assert_eq!(env.sh("small", "rm /fill && dd if=/dev/zero of=/again bs=1M count=16 2>/dev/null && echo freed").1, "freed\n", "the layer frees");
}

#[test]
fn a_user_namespaced_sandbox_owns_its_memory_layer() {
    let env = Env::new();
    let yaml = env.file("u.yaml", &sandbox_yaml("u", "  userNamespace: true\n  writableLayer: memory\n"));
    env.ok(&["apply", "-f", yaml.to_str().unwrap()]);
    let (code, out, err) = env.sh("u", "echo hi > /etc/x && mkdir /d && mv /etc/x /d/ && stat -c '%u %g' /d/x && cat /d/x");
    assert_eq!((code, out.as_str()), (0, "0 0\nhi\n"), "root inside owns what it writes: {err}");
    env.ok(&["delete", "-f", yaml.to_str().unwrap()]);
}

#[test]
fn run_rm_with_a_memory_layer_leaves_nothing() {
    let env = Env::new();
    let image = format!("dir:{}", rootfs().display());
    let out = env.ok(&["run", "--rm", "--isolation", "namespace", "--writable-layer", "memory", &image, "--", "sh", "-c", "echo x > /tmp/y && cat /tmp/y"]);
    assert_eq!(out, "x\n");
    assert!(env.get().is_empty(), "removed: {:?}", env.get());
    assert_eq!(std::fs::read_dir(env.data_dir().join("sandboxes")).map(|d| d.count()).unwrap_or(0), 0, "no instance directory left");
    let bad = env.run(&["run", "--rm", "--writable-layer", "ram", &image, "--", "true"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("neither disk nor memory"), "{}", String::from_utf8_lossy(&bad.stderr));
}
