//! Reconciliation as users rely on it: idempotent apply, broken files that tear nothing down,
//! diff, pruning only what a source created, restart policies, stop/start, adoption of live
//! shims and cleanup after dead ones, and a CLI killed at any moment during apply.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn apply_is_idempotent_and_a_broken_file_tears_nothing_down() {
    let env = Env::new();
    let good = format!("{}---\n{}", sandbox_yaml("one", "  command: [sleep, '100000']\n"), sandbox_yaml("two", ""));
    let file = env.file("s.yaml", &good);
    let f = file.to_str().unwrap();
    env.ok(&["apply", "-f", f]);
    let (shim1, shim2) = (env.shim_pid("one"), env.shim_pid("two"));
    let main_pid = env.sh("one", "pgrep -x sleep").1;

    // Again: nothing restarts (same shims, same main process).
    let out = env.ok(&["apply", "-f", f]);
    assert!(out.contains("sandbox/one unchanged") && out.contains("sandbox/two unchanged"), "{out}");
    assert_eq!((env.shim_pid("one"), env.shim_pid("two")), (shim1, shim2));
    assert_eq!(env.sh("one", "pgrep -x sleep").1, main_pid);
    assert_eq!(env.run(&["diff", "-f", f]).status.code(), Some(0));

    // Break the file: apply fails naming file:line:column, and both keep running.
    std::fs::write(&file, good.replace("command: [sleep, '100000']", "command: [sleep, '100000']\n  cpus: lots\n  restartPolicy: Sometimes")).unwrap();
    let out = env.run(&["apply", "-f", f]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{f}:9:9: spec.cpus")), "{err}");
    assert!(err.contains(&format!("{f}:10:18: spec.restartPolicy")), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!((env.shim_pid("one"), env.shim_pid("two")), (shim1, shim2));
    assert_eq!(env.status("one"), "Running");
    assert_eq!(env.run(&["diff", "-f", f]).status.code(), Some(2));

    // A real change: diff says so (exit 1), apply recreates only that sandbox.
    std::fs::write(&file, good.replace("'100000'", "'200000'")).unwrap();
    let out = env.run(&["diff", "-f", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("~ Sandbox/one"));
    let out = env.ok(&["apply", "-f", f]);
    assert!(out.contains("sandbox/one recreated"), "{out}");
    assert_ne!(env.shim_pid("one"), shim1);
    assert_eq!(env.shim_pid("two"), shim2);
}

#[test]
fn sources_prune_only_their_own_resources() {
    let env = Env::new();
    let a = env.file("a.yaml", &format!("{}---\n{}", sandbox_yaml("a1", ""), sandbox_yaml("a2", "")));
    let b = env.file("b.yaml", &sandbox_yaml("b1", ""));
    env.ok(&["apply", "-f", a.to_str().unwrap()]);
    env.ok(&["apply", "-f", b.to_str().unwrap()]);

    // Another source may not take over a name.
    let c = env.file("c.yaml", &sandbox_yaml("a1", "  command: [sleep, '5']\n"));
    let out = env.run(&["apply", "-f", c.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already managed by"));

    // Removing a2 from a.yaml prunes a2 only; b1 (another source) stays.
    std::fs::write(&a, sandbox_yaml("a1", "")).unwrap();
    let out = env.ok(&["apply", "-f", a.to_str().unwrap()]);
    assert!(out.contains("sandbox/a2 removed"), "{out}");
    let names: BTreeSet<String> = env.get().iter().map(|o| o["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["a1", "b1"].map(String::from).into());

    // An empty desired set prunes nothing unless asked.
    std::fs::write(&a, "# nothing here\n").unwrap();
    let out = env.run(&["apply", "-f", a.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--prune-empty"));
    assert_eq!(env.status("a1"), "Running");
    env.ok(&["apply", "--prune-empty", "-f", a.to_str().unwrap()]);
    assert_eq!(env.get().len(), 1);

    // Dry run changes nothing.
    std::fs::write(&a, sandbox_yaml("a9", "")).unwrap();
    let out = env.ok(&["apply", "--dry-run", "-f", a.to_str().unwrap()]);
    assert!(out.contains("+ Sandbox/a9"), "{out}");
    assert_eq!(env.get().len(), 1);
}

#[test]
fn restart_policies() {
    let env = Env::new();
    let yaml = [
        sandbox_yaml("never", "  restartPolicy: Never\n  command: [sh, -c, 'exit 3']\n"),
        sandbox_yaml("onfail", "  restartPolicy: OnFailure\n  command: [sh, -c, 'echo run >> /tmp/count; n=$(wc -l < /tmp/count); [ $n -ge 3 ] && exit 0; exit 1']\n"),
        sandbox_yaml("always", "  restartPolicy: Always\n  command: [sh, -c, 'echo tick; exit 0']\n"),
    ]
    .join("---\n");
    let f = env.file("p.yaml", &yaml);
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    env.wait_for("never to exit", Duration::from_secs(10), || env.status("never") == "Exited");
    assert_eq!(env.sandbox("never")["exitCode"], 3);
    env.wait_for("onfail to succeed after 2 restarts", Duration::from_secs(10), || env.status("onfail") == "Exited");
    let s = env.sandbox("onfail");
    assert_eq!((s["exitCode"].as_i64(), s["restarts"].as_i64()), (Some(0), Some(2)));
    env.wait_for("always to restart", Duration::from_secs(10), || env.sandbox("always")["restarts"].as_i64().unwrap_or(0) >= 2);
    assert_eq!(env.status("always"), "Running");
    assert!(env.ok(&["logs", "always"]).matches("tick").count() >= 2);
    // Exited sandboxes are not restarted by apply (their policy said no).
    let out = env.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(out.contains("sandbox/never unchanged"), "{out}");
}

#[test]
fn stop_and_start_keep_the_writable_layer() {
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("st", "  command: [sleep, '100000']\n"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    env.sh("st", "echo kept > /root/file");
    let inst = env.sandbox("st")["instance"].as_str().unwrap().to_string();
    env.ok(&["stop", "st"]);
    assert_eq!(env.status("st"), "Stopped");
    assert!(leftovers(&inst).is_empty(), "{:?}", leftovers(&inst));
    // A stopped sandbox stays stopped across apply.
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert_eq!(env.status("st"), "Stopped");
    let out = env.run(&["exec", "st", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    env.ok(&["start", "st"]);
    assert_eq!(env.status("st"), "Running");
    assert_eq!(env.sh("st", "cat /root/file").1, "kept\n");
}

#[test]
fn dead_shims_are_reported_cleaned_up_and_restarted_live_ones_adopted() {
    let env = Env::new();
    let f = env.file("s.yaml", &format!("{}---\n{}", sandbox_yaml("live", ""), sandbox_yaml("doomed", "  command: [sleep, '100000']\n")));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let live_shim = env.shim_pid("live");
    let inst = env.sandbox("doomed")["instance"].as_str().unwrap().to_string();
    let lock = env.instance_dir("doomed").join("shim.lock");
    // SAFETY: killing the shim we just started, as a crash or host restart would.
    unsafe { libc::kill(env.shim_pid("doomed"), libc::SIGKILL) };
    env.wait_for("the sandbox to die with its shim", Duration::from_secs(5), || {
        leftovers(&inst).iter().all(|l| !l.starts_with("process"))
    });
    // A dying process loses its command line before its files: wait for the lock itself.
    env.wait_for("the dead shim's lock to be released", Duration::from_secs(5), || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&lock).unwrap();
        // SAFETY: flock on a file we opened; the lock goes with the file.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    });
    // The next command notices, reports and cleans up; the live one is untouched.
    let out = env.run(&["stop", "live"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sandbox doomed is Failed"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(leftovers(&inst).is_empty(), "{:?}", leftovers(&inst));
    assert_eq!(env.status("doomed"), "Failed");
    env.ok(&["start", "live"]);
    assert_ne!(env.shim_pid("live"), live_shim);
    // Apply restarts it (restartPolicy Always).
    let out = env.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(out.contains("sandbox/doomed restarted"), "{out}");
    assert_eq!(env.status("doomed"), "Running");
    let events = env.ok(&["describe", "doomed"]);
    assert!(events.contains("shim died"), "{events}");
}

#[test]
fn killing_apply_at_any_moment_never_duplicates_or_leaks() {
    let env = Env::new();
    let yaml = (0..3).map(|i| sandbox_yaml(&format!("k{i}"), "  command: [sleep, '100000']\n")).collect::<Vec<_>>().join("---\n");
    let f = env.file("k.yaml", &yaml);
    for delay_ms in [0u64, 3, 8, 15, 25, 40] {
        let mut child = env.cmd(&["apply", "-f", f.to_str().unwrap()]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        env.ok(&["apply", "-f", f.to_str().unwrap()]);
        let objs = env.get();
        assert_eq!(objs.len(), 3, "delay {delay_ms}ms");
        for o in &objs {
            assert_eq!(o["status"], "Running", "delay {delay_ms}ms: {o}");
        }
        // Exactly one instance directory (and live shim) per sandbox.
        let instances: BTreeSet<String> = objs.iter().map(|o| o["instance"].as_str().unwrap().to_string()).collect();
        let dirs: BTreeSet<String> = std::fs::read_dir(env.data_dir().join("sandboxes"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(dirs, instances, "delay {delay_ms}ms");
        let shims = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                cmd.contains("__shim") && cmd.contains(env.data_dir().to_str().unwrap())
            })
            .count();
        assert_eq!(shims, 3, "delay {delay_ms}ms: one shim per sandbox");
        // Start over for the next delay.
        env.ok(&["delete", "k0", "k1", "k2"]);
    }
}

#[test]
fn a_killed_sandbox_init_fails_the_sandbox_and_apply_restarts_it() {
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("victim", "  command: [sleep, '100000']\n"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let shim = env.shim_pid("victim");
    let inst = env.sandbox("victim")["instance"].as_str().unwrap().to_string();
    // The agent is the shim's only child.
    let children = std::fs::read_to_string(format!("/proc/{shim}/task/{shim}/children")).unwrap();
    let agent: i32 = children.split_whitespace().next().expect("the agent").parse().unwrap();
    // SAFETY: killing the sandbox's init from the host, as the OOM killer or an operator might.
    unsafe { libc::kill(agent, libc::SIGKILL) };
    env.wait_for("the shim to notice and exit", Duration::from_secs(5), || !pid_alive(shim));
    let s = env.sandbox("victim");
    assert_eq!(s["status"], "Failed");
    assert!(s["message"].as_str().unwrap_or("").contains("exited unexpectedly"), "{s}");
    assert!(leftovers(&inst).is_empty(), "{:?}", leftovers(&inst));
    let out = env.ok(&["apply", "-f", f.to_str().unwrap()]);
    assert!(out.contains("sandbox/victim restarted"), "{out}");
    assert_eq!(env.status("victim"), "Running");
}

#[test]
fn a_command_on_one_sandbox_never_waits_for_the_reconcile_of_another() {
    use std::os::fd::AsRawFd;
    let env = Env::new();
    let file = env.file("two.yaml", &format!("{}---\n{}", sandbox_yaml("a", ""), sandbox_yaml("b", "")));
    env.ok(&["apply", "-f", file.to_str().unwrap()]);
    // Someone is reconciling `a` (as serve's controller does, for as long as a start takes).
    let held = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(env.data_dir().join("locks/a.lock")).unwrap();
    // SAFETY: flock on a file this test owns.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let started = std::time::Instant::now();
    env.ok(&["stop", "b"]);
    env.ok(&["start", "b"]);
    assert_eq!(env.ok(&["run", "--rm", &format!("dir:{}", rootfs().display()), "--", "echo", "not waiting"]), "not waiting\n");
    assert_eq!(env.status("a"), "Running", "get observes a without waiting for it");
    assert!(started.elapsed() < Duration::from_secs(20), "commands on other sandboxes took {:?}", started.elapsed());
    // A command on `a` itself waits for that reconcile, then runs.
    let mut stop_a = env.cmd(&["stop", "a"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(stop_a.try_wait().unwrap().is_none(), "stop a must wait while a is being reconciled");
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = stop_a.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "stop a did not finish once the lock was free");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert_eq!(env.status("a"), "Stopped");
}
