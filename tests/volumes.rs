//! Volumes as a user meets them in namespace sandboxes: a named volume that outlives its
//! writer and is read by others at once (read-only enforced, one writer at a time, `shared`),
//! its quota, host paths (directory and single file) and tmpfs, and the refusals (a hostPath
//! reaching the data directory, a mount point through a symlink, deleting a volume in use).
//! Real namespaces, loop devices, ext4 and shims. The microVM side waits for virtio-fs.

mod common;

use common::*;
use std::path::Path;

fn yaml_with(name: &str, image: &Path, extra: &str) -> String {
    format!("apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: dir:{}\n  isolation: namespace\n{extra}", image.display())
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn volume_view(env: &Env, name: &str) -> serde_json::Value {
    serde_json::from_str(&env.ok(&["volume", "inspect", name])).unwrap()
}

#[test]
fn a_named_volume_outlives_its_writer_and_is_read_by_others_at_once() {
    let env = Env::new();
    env.ok(&["volume", "create", "data", "--size", "64Mi"]);
    assert!(env.ok(&["volume", "ls"]).contains("data  64Mi"), "{}", env.ok(&["volume", "ls"]));

    // A Python program writes to it in one sandbox, which is then deleted.
    let writer = env.file(
        "writer.yaml",
        &yaml_with("writer", &debian_rootfs(), "  command: [python3, -c, \"open('/data/result.txt','w').write('42 from python\\\\n'); import os; os.symlink('/', '/data/escape'); os.mkdir('/data/sub')\"]\n  restartPolicy: Never\n  volumes:\n    - { name: data, mountPath: /data }\n"),
    );
    env.ok(&["apply", "-f", writer.to_str().unwrap()]);
    env.wait_for("the writer to finish", std::time::Duration::from_secs(20), || env.status("writer") == "Exited");
    assert_eq!(env.sandbox("writer")["exitCode"], 0, "{}", env.ok(&["logs", "writer"]));
    env.ok(&["delete", "-f", writer.to_str().unwrap()]);
    let view = volume_view(&env, "data");
    assert_eq!(view["size"], 64 << 20);
    assert!(view["allocated"].as_u64().unwrap() > 0);
    assert_eq!(view["mounted"], false, "nothing holds it once its sandbox is gone: {view}");

    // Two readers at once, one of them user-namespaced; writes there fail with EROFS.
    let marker = env.dir.path().join("host-only-marker");
    std::fs::write(&marker, "host").unwrap();
    let readers = format!(
        "{}---\n{}",
        yaml_with("reader-a", &rootfs(), "  volumes:\n    - { name: data, mountPath: /data, readOnly: true }\n"),
        yaml_with("reader-b", &debian_rootfs(), "  userNamespace: true\n  volumes:\n    - { name: data, mountPath: /mnt/data, readOnly: true }\n")
    );
    let readers = env.file("readers.yaml", &readers);
    env.ok(&["apply", "-f", readers.to_str().unwrap()]);
    for (name, path) in [("reader-a", "/data"), ("reader-b", "/mnt/data")] {
        let (code, out, _) = env.sh(name, &format!("cat {path}/result.txt"));
        assert_eq!((code, out.as_str()), (0, "42 from python\n"), "{name}");
        let (code, _, err) = env.sh(name, &format!("echo x > {path}/result.txt"));
        assert!(code != 0 && err.contains("Read-only file system"), "{name}: {err}");
        // The link the writer left resolves inside each reader, never on the host.
        let (code, _, _) = env.sh(name, &format!("test -e {path}/escape{}", marker.display()));
        assert_ne!(code, 0, "{name}: a symlink in the volume reached the host's {}", marker.display());
        let (code, out, _) = env.sh(name, &format!("ls {path}/escape/ | grep -c -x -e proc -e sys"));
        assert_eq!((code, out.trim()), (0, "2"), "{name}: the link leads to the sandbox's own root");
    }
    let (_, out, _) = env.sh("reader-b", "stat -c '%u %g' /mnt/data/result.txt");
    assert_eq!(out.trim(), "0 0", "idmapped: host root's files are the user-namespaced root's");
    assert_eq!(volume_view(&env, "data")["mounted"], true);

    // One writer at a time; a second is refused naming the first; readers never wait.
    env.ok(&["run", "-d", "--name", "w1", "--isolation", "namespace", "-v", "data:/data", &format!("dir:{}", rootfs().display()), "--", "sleep", "1000"]);
    let out = env.run(&["run", "--rm", "--isolation", "namespace", "-v", "data:/data", &format!("dir:{}", rootfs().display()), "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mounted writable by sandbox \"w1\"") && err.contains("shared: true"), "{err}");
    assert_eq!(err.matches("one writer at a time").count(), 1, "said once: {err}");
    let (_, out, _) = env.sh("w1", "echo fresh > /data/new.txt; sync");
    assert_eq!(out, "");
    let (_, out, _) = env.sh("reader-a", "cat /data/new.txt");
    assert_eq!(out, "fresh\n", "readers see the writer's writes at once (one filesystem)");

    // The volume cannot go while declared sandboxes mount it.
    let out = env.run(&["volume", "rm", "data"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("reader-a") && err.contains("--force"), "{err}");
    let table = env.ok(&["get", "volumes"]);
    assert!(table.contains("reader-a,reader-b,w1") && table.contains("yes"), "{table}");

    env.ok(&["delete", "-f", readers.to_str().unwrap()]);
    env.ok(&["rm", "--force", "w1"]);
    env.ok(&["volume", "rm", "data"]);
    assert!(!env.data_dir().join("volumes/data").exists());
    assert!(loop_devices_backed_by(&env.data_dir().join("volumes").display().to_string()).is_empty(), "no loop device is left");
}

#[test]
fn a_shared_volume_takes_several_writers_and_a_declared_one_is_made_by_apply() {
    let env = Env::new();
    let file = env.file(
        "shared.yaml",
        &format!(
            "apiVersion: orchestrator/v1\nkind: Volume\nmetadata: {{ name: scratch }}\nspec: {{ size: 32Mi, shared: true }}\n---\n{}---\n{}",
            yaml_with("one", &rootfs(), "  volumes: [{ name: scratch, mountPath: /s }]\n"),
            yaml_with("two", &rootfs(), "  volumes: [{ name: scratch, mountPath: /s }]\n")
        ),
    );
    let out = env.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.contains("volume/scratch created"), "{out}");
    env.sh("one", "echo from-one > /s/a");
    env.sh("two", "echo from-two > /s/b");
    assert_eq!(env.sh("one", "cat /s/b").1, "from-two\n");
    assert_eq!(env.sh("two", "cat /s/a").1, "from-one\n");

    // Pruning the volume while its sandboxes stay declared is a conflict; nothing changes.
    let only_sandboxes = std::fs::read_to_string(&file).unwrap().split_once("---\n").unwrap().1.to_string();
    std::fs::write(&file, &only_sandboxes).unwrap();
    let out = env.run(&["apply", "-f", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Volume/scratch") && err.contains("one, two"), "{err}");
    assert_eq!(env.sh("one", "cat /s/a").1, "from-one\n");
}

#[test]
fn the_quota_is_enospc_inside_and_nothing_outside() {
    let env = Env::new();
    env.ok(&["volume", "create", "small", "--size", "32Mi"]);
    env.ok(&["run", "-d", "--name", "filler", "--isolation", "namespace", "-v", "small:/v", &format!("dir:{}", rootfs().display()), "--", "sleep", "1000"]);
    let (code, _, err) = env.sh("filler", "dd if=/dev/zero of=/v/big bs=1M count=64");
    assert!(code != 0 && err.contains("No space left on device"), "{err}");
    let disk = env.data_dir().join("volumes/small/disk.ext4");
    assert!(allocated(&disk) <= 33 << 20, "the host's disk holds at most the quota: {}", allocated(&disk));
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 32 << 20);
    // Deleted files give their blocks back to the host once the sandbox ends (one trim, not a
    // discard per file).
    env.sh("filler", "rm /v/big; sync");
    env.ok(&["rm", "--force", "filler"]);
    assert!(allocated(&disk) < 8 << 20, "trimmed: {}", allocated(&disk));
}

#[test]
fn host_paths_and_tmpfs_mount_with_their_bounds() {
    let env = Env::new();
    let share = env.dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("input.txt"), "from the host\n").unwrap();
    std::fs::write(env.dir.path().join("app.conf"), "debug=false\n").unwrap();
    // hostPath is relative to the YAML file's directory.
    let file = env.file(
        "host.yaml",
        &yaml_with(
            "hp",
            &rootfs(),
            "  userNamespace: true\n  volumes:\n    - { hostPath: ./share, mountPath: /in, readOnly: true }\n    - { hostPath: app.conf, mountPath: /etc/app.conf }\n    - { tmpfs: /scratch, size: 2Mi }\n",
        ),
    );
    env.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(env.sh("hp", "cat /in/input.txt").1, "from the host\n");
    let (code, _, err) = env.sh("hp", "touch /in/new");
    assert!(code != 0 && err.contains("Read-only file system"), "{err}");
    assert!(!share.join("new").exists());
    let (code, _, _) = env.sh("hp", "echo debug=true > /etc/app.conf");
    assert_eq!(code, 0);
    assert_eq!(std::fs::read_to_string(env.dir.path().join("app.conf")).unwrap(), "debug=true\n", "a single file, written through");
    let (code, _, err) = env.sh("hp", "dd if=/dev/zero of=/scratch/f bs=1k count=4096");
    assert!(code != 0 && err.contains("No space left on device"), "tmpfs size enforced: {err}");
    let (_, mounts, _) = env.sh("hp", "grep -E ' /(in|scratch|etc/app.conf) ' /proc/mounts");
    assert_eq!(mounts.lines().count(), 3, "{mounts}");
    assert!(mounts.lines().all(|l| l.contains("nosuid") && l.contains("nodev")), "{mounts}");

    // Refusals, each saying what to do: the data directory, a missing path, a mount point
    // that the image (here a patch) made a symlink.
    for (volumes, expect) in [
        (format!("    - {{ hostPath: {}, mountPath: /x }}\n", env.data_dir().join("sandboxes").display()), "data directory"),
        ("    - { hostPath: /, mountPath: /x, readOnly: true }\n".to_string(), "data directory"),
        ("    - { hostPath: ./missing, mountPath: /x }\n".to_string(), "create it first"),
        ("    - { name: nope, mountPath: /x }\n".to_string(), "orchestrator volume create nope"),
    ] {
        let f = env.file("bad.yaml", &yaml_with("bad", &rootfs(), &format!("  volumes:\n{volumes}")));
        let out = env.run(&["apply", "-f", f.to_str().unwrap()]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success() && text.contains(expect), "{volumes}: {text}");
        env.ok(&["delete", "bad"]);
    }
    let f = env.file(
        "link.yaml",
        &yaml_with("link", &rootfs(), &format!("  patches: [{{ op: symlink, path: /data, target: /etc }}]\n  volumes:\n    - {{ hostPath: {}, mountPath: /data/x }}\n", share.display())),
    );
    let out = env.run(&["apply", "-f", f.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("/data is a symlink"), "{text}");
}
