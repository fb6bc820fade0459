//! Escape probes for the file API's short path (host/src/sandbox/direct.rs): the host process,
//! root on the host, reads and writes a namespace sandbox's files through the sandbox's root
//! while a root process inside has prepared links, `..` chains, procfs paths and files it may
//! not read. Each probe asserts what a user sees: the sandbox's own files, never the host's,
//! and the same owner, mode and errors the agent gives. Real sandboxes (with and without a
//! user namespace), real shims; which path is taken is shown by freezing the shim: a sandbox
//! without a user namespace still answers (the short path), a user-namespaced one waits for
//! its agent (its files never take the short path).

mod common;

use common::*;
use orchestrator::Sandbox;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn status_field(pid: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default().lines().find(|l| l.starts_with(key)).map(|l| l.split_whitespace().last().unwrap_or("").to_string())
}

/// The sandbox's init as the host sees it (pid 1 inside its cgroup).
fn init_pid(instance: &str) -> String {
    let procs = ["pids", "memory", ""]
        .iter()
        .find_map(|c| std::fs::read_to_string(std::path::Path::new("/sys/fs/cgroup").join(c).join("orchestrator").join(instance).join("cgroup.procs")).ok())
        .expect("the sandbox's cgroup");
    procs.lines().map(str::trim).find(|pid| status_field(pid, "NSpid:").as_deref() == Some("1")).expect("the sandbox's init").to_string()
}

/// The shim's host pid: the parent of the sandbox's init.
fn shim_pid(instance: &str) -> i32 {
    status_field(&init_pid(instance), "PPid:").and_then(|p| p.parse().ok()).expect("its parent")
}

fn probes(userns: bool) {
    let env = Env::new();
    let name = if userns { "short-userns" } else { "short" };
    // A host directory, mounted read-only, with a file only the host's root may read.
    let share = env.dir.path().join("share");
    // The test's directory is private to root: the sandbox's ids must reach the share.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(&share).unwrap();
    let secret = share.join("secret");
    std::fs::write(&secret, "host secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Owned by an id outside the range a user-namespaced sandbox's mounts map.
    std::os::unix::fs::chown(&secret, Some(70_000), Some(70_000)).unwrap();
    let yaml = format!(
        "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: dir:{}\n  isolation: namespace\n  userNamespace: {userns}\n  memory: 64Mi\n  disk: 64Mi\n  command: [sleep, '1000000']\n  volumes:\n    - {{ hostPath: {}, mountPath: /share, readOnly: true }}\n",
        rootfs().display(),
        share.display()
    );
    let f = env.file("s.yaml", &yaml);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let rt = runtime();
    let sandbox = rt.block_on(Sandbox::get_in(library_config(&env), name)).unwrap();
    let fs = sandbox.fs();
    let host_hostname = std::fs::read("/etc/hostname").unwrap_or_default();
    let planted = "mkdir -p /x && ln -s / /x/rootlink && ln -s ../../../../../.. /x/dotdot && ln -s /etc/hostname /x/abs \
                   && echo inside > /x/plain && echo ok";
    assert_eq!(env.sh(name, planted).1, "ok\n");
    let inside_hostname = env.sh(name, "cat /etc/hostname").1;

    // A plain write and read: the sandbox's root owns the new file, mode 0644, as from the agent.
    rt.block_on(fs.write("/tmp/new", b"written from the host".to_vec())).unwrap();
    assert_eq!(env.sh(name, "stat -c '%u %g %a' /tmp/new; cat /tmp/new").1, "0 0 644\nwritten from the host");
    assert_eq!(rt.block_on(fs.read("/x/plain")).unwrap(), b"inside\n");
    assert_eq!(rt.block_on(fs.read_range("/x/plain", 2, 3)).unwrap(), b"sid");
    // Replacing keeps the owner; a mode given is applied.
    rt.block_on(fs.write_with_mode("/tmp/new", b"again".to_vec(), Some(0o600))).unwrap();
    assert_eq!(env.sh(name, "stat -c '%u %g %a' /tmp/new; cat /tmp/new").1, "0 0 600\nagain");
    // A new file's mode is the one given, whole, whatever the server's umask cuts from a create.
    rt.block_on(fs.write_with_mode("/tmp/open", b"#!/bin/sh\n".to_vec(), Some(0o777))).unwrap();
    rt.block_on(fs.write_with_mode("/tmp/setuid", b"#!/bin/sh\n".to_vec(), Some(0o4755))).unwrap();
    assert_eq!(env.sh(name, "stat -c '%u %g %a' /tmp/open /tmp/setuid").1, "0 0 777\n0 0 4755\n");

    // `..` chains and links to `/` resolve inside the sandbox's root.
    for path in ["/x/dotdot/tmp/escaped", "/x/rootlink/tmp/escaped2", "/../../../../tmp/escaped3"] {
        rt.block_on(fs.write(path, b"kept inside".to_vec())).unwrap();
        let file = path.rsplit('/').next().unwrap();
        assert!(!std::path::Path::new("/tmp").join(file).exists(), "{path} reached the host's /tmp");
        assert_eq!(env.sh(name, &format!("cat /tmp/{file}")).1, "kept inside", "{path}");
    }
    for path in ["/x/dotdot/etc/hostname", "/x/rootlink/etc/hostname", "/x/abs", "/proc/self/root/etc/hostname", "/proc/1/root/etc/hostname"] {
        let got = rt.block_on(fs.read(path));
        if let Ok(data) = &got {
            assert_eq!(String::from_utf8_lossy(data), inside_hostname, "{path} read something other than the sandbox's own file");
        }
    }
    // A write through a link as the last component changes the sandbox's file, not the host's.
    rt.block_on(fs.write("/x/abs", b"sandbox-name\n".to_vec())).unwrap();
    assert_eq!(env.sh(name, "cat /etc/hostname").1, "sandbox-name\n");
    assert_eq!(std::fs::read("/etc/hostname").unwrap_or_default(), host_hostname, "the host's hostname file is untouched");

    // procfs: not written by the host's root (the sandbox's own root may not either).
    let before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(rt.block_on(fs.write("/proc/sys/kernel/hostname", b"pwned".to_vec())).is_err(), "a procfs write went through");
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(), before, "the host's hostname");

    // Device nodes in the sandbox's root (planted by the host: the sandbox may not mknod) open
    // neither on the short path nor through the agent: the root's mount is `nodev`. Were one
    // opened, the read would give zeros and the write would vanish into the host's null device.
    let root = format!("/proc/{}/root", init_pid(env.sandbox(name)["instance"].as_str().unwrap()));
    for (node, dev) in [("/x/zero", libc::makedev(1, 5)), ("/x/null", libc::makedev(1, 3))] {
        let host_path = std::ffi::CString::new(format!("{root}{node}")).unwrap();
        // SAFETY: mknod with a NUL-terminated path.
        if unsafe { libc::mknod(host_path.as_ptr(), libc::S_IFCHR | 0o666, dev) } != 0 {
            // A user namespace's overlay is made by its root, who may not make device nodes
            // in it, the host's root through it included: nothing is there to open.
            assert!(userns, "planting {node}: {}", std::io::Error::last_os_error());
            continue;
        }
        let read = rt.block_on(fs.read_range(node, 0, 16));
        assert!(read.is_err(), "{node} opened for a read: {read:?}");
        let written = rt.block_on(fs.write(node, b"into a device".to_vec()));
        assert!(written.is_err(), "{node} opened for a write: {written:?}");
    }
    // A pipe is refused at once, whether or not anything holds its other end (a blocking open
    // would wait for ever): both ways, reading and writing.
    assert_eq!(env.sh(name, "mkfifo /x/fifo && echo ok").1, "ok\n");
    let fifo = rt.block_on(async {
        let read = tokio::time::timeout(Duration::from_secs(20), fs.read("/x/fifo")).await.expect("a read of a pipe waited");
        let write = tokio::time::timeout(Duration::from_secs(20), fs.write("/x/fifo", b"x".to_vec())).await.expect("a write to a pipe waited");
        (read, write)
    });
    assert!(fifo.0.is_err() && fifo.1.is_err(), "a pipe was read or written: {fifo:?}");
    // A file of the image (a lower layer) is replaced in the sandbox only: the write moves it
    // to the sandbox's own layer, and the new content is what the sandbox sees.
    rt.block_on(fs.write("/etc/motd", b"changed in the sandbox\n".to_vec())).unwrap();
    assert_eq!(env.sh(name, "cat /etc/motd").1, "changed in the sandbox\n");
    assert_eq!(rt.block_on(fs.read("/etc/motd")).unwrap(), b"changed in the sandbox\n");
    assert_ne!(std::fs::read(rootfs().join("etc/motd")).unwrap(), b"changed in the sandbox\n", "the image's own file");

    // A file the host's root may read but the sandbox's root may not stays unread (a user
    // namespace's root has no power over ids its mounts do not map).
    let got = rt.block_on(fs.read("/share/secret"));
    if userns {
        assert!(got.is_err(), "the sandbox's root read a host-only file: {got:?}");
        assert!(env.sh(name, "cat /share/secret").0 != 0, "nor through the agent");
    } else {
        assert_eq!(got.unwrap(), b"host secret", "root without a user namespace reads it, as inside");
    }

    // Which path is taken: with the shim frozen, a read of a sandbox without a user namespace
    // still answers (the short path); a user-namespaced sandbox's files always go through its
    // agent, so the read waits until the shim runs again.
    let shim = shim_pid(env.sandbox(name)["instance"].as_str().unwrap());
    // SAFETY: stopping and continuing the test's own shim process.
    unsafe { libc::kill(shim, libc::SIGSTOP) };
    let read = rt.block_on(async {
        let read = fs.read("/tmp/new");
        tokio::pin!(read);
        let early = tokio::time::timeout(Duration::from_secs(if userns { 1 } else { 5 }), &mut read).await;
        // SAFETY: as above.
        unsafe { libc::kill(shim, libc::SIGCONT) };
        match early {
            Ok(r) => (true, r),
            Err(_) => (false, read.await),
        }
    });
    assert_eq!((read.0, read.1.unwrap()), (!userns, b"again".to_vec()), "answered with the shim frozen: the short path");

    // After a restart, writes land in the new sandbox's root, not the ended one's.
    rt.block_on(sandbox.stop_and_wait()).unwrap();
    rt.block_on(sandbox.start()).unwrap();
    rt.block_on(fs.write("/tmp/after-restart", b"new root".to_vec())).unwrap();
    assert_eq!(env.sh(name, "cat /tmp/after-restart").1, "new root");
    rt.block_on(sandbox.remove()).unwrap();
}

#[test]
fn the_file_short_path_stays_inside_a_namespace_sandbox() {
    probes(false);
}

#[test]
fn a_user_namespaced_sandboxs_files_go_through_its_agent_and_stay_inside() {
    probes(true);
}
