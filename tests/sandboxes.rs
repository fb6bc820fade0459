//! What a user sees inside and around a namespace sandbox: isolation, exec, the file API,
//! security settings, limits, `run`, logs and cleanup. Real namespaces, cgroups, shims, agents.

mod common;

use common::*;
use guest_agent::protocol::{ExecRequest, FileKind};
use orchestrator::client::ShimClient;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn two_sandboxes(env: &Env) -> std::path::PathBuf {
    let yaml = format!(
        "{}---\n{}",
        sandbox_yaml("alpha", "  env: { GREETING: hello }\n  workdir: /tmp\n  memory: 64Mi\n  cpus: 0.5\n  limits: { pids: 50, nofile: 200 }\n  command: [sh, -c, 'echo main-started; exec sleep 100000']\n"),
        sandbox_yaml("beta", "")
    );
    env.file("two.yaml", &yaml)
}

#[test]
fn two_sandboxes_run_isolated_and_exec_works() {
    let env = Env::new();
    let file = two_sandboxes(&env);
    env.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(env.status("alpha"), "Running");
    assert_eq!(env.status("beta"), "Running");

    // exec returns output and the exit code.
    let (code, out, _) = env.sh("alpha", "echo $GREETING from $(pwd); exit 42");
    assert_eq!(code, 42);
    assert_eq!(out, "hello from /tmp\n");
    let (code, _, _) = env.sh("alpha", "kill -9 $$");
    assert_eq!(code, 137, "killed by signal 9 -> 128+9");

    // PID 1 is the agent; no host process is visible.
    let (_, out, _) = env.sh("beta", "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("orchestrator-agent __agent "));
    let visible: usize = lines.next().unwrap().parse().unwrap();
    assert!(visible <= 4, "only the agent and this exec's processes are visible, saw {visible}");
    let (_, out, _) = env.sh("beta", &format!("test -e /proc/{} && echo leak || echo hidden", std::process::id()));
    assert_eq!(out.trim(), "hidden");

    // Its own link (the shim's stack behind eth0) and loopback, none of the host's
    // interfaces; the hostname is the name.
    let (_, out, _) = env.sh("beta", "ls /sys/class/net; hostname");
    assert_eq!(out, "eth0\nlo\nbeta\n");
    let (_, out, _) = env.sh("alpha", "cat /sys/class/net/lo/operstate; hostname");
    assert!(out.ends_with("alpha\n"), "{out}");

    // The sandboxes do not see each other's files.
    env.sh("alpha", "echo secret > /tmp/only-alpha");
    let (code, _, _) = env.sh("beta", "test -e /tmp/only-alpha");
    assert_eq!(code, 1);

    // No other user can read the state or reach a sandbox's socket.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(env.instance_dir("alpha").join("shim.sock")), 0o600);
    assert_eq!(mode(env.data_dir().join("state.db")), 0o600);
    assert_eq!(mode(env.instance_dir("alpha").join("main.log")), 0o600);
    assert_eq!(mode(env.data_dir()), 0o711);

    // The main process's output is in the logs.
    env.wait_for("main process output", Duration::from_secs(5), || env.ok(&["logs", "alpha"]).contains("main-started"));
    // Only microVMs have a console; asking a namespace sandbox for one says so.
    let out = env.run(&["logs", "--console", "alpha"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("only microVMs have a console"), "{err}");
}

#[test]
fn limits_security_and_users() {
    let env = Env::new();
    let file = two_sandboxes(&env);
    env.ok(&["apply", "-f", file.to_str().unwrap()]);
    let inst = env.sandbox("alpha")["instance"].as_str().unwrap().to_string();

    // cgroup limits on the host side (v1 here, v2 on most hosts).
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let read = |ctrl: &str, v1: &str, v2f: &str| {
        let p = if v2 { format!("/sys/fs/cgroup/orchestrator/{inst}/{v2f}") } else { format!("/sys/fs/cgroup/{ctrl}/orchestrator/{inst}/{v1}") };
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")).trim().to_string()
    };
    assert_eq!(read("memory", "memory.limit_in_bytes", "memory.max"), (64u64 << 20).to_string());
    assert_eq!(read("pids", "pids.max", "pids.max"), "50");
    if !v2 {
        assert_eq!(read("cpu", "cpu.cfs_quota_us", "cpu.max"), "50000");
    }
    // A fork bomb stops at the pids limit instead of taking the host down.
    let pids_current = if v2 { format!("/sys/fs/cgroup/orchestrator/{inst}/pids.current") } else { format!("/sys/fs/cgroup/pids/orchestrator/{inst}/pids.current") };
    let mut bomb = env
        .cmd(&["exec", "alpha", "--", "sh", "-c", "i=0; while [ $i -lt 100 ]; do sleep 2 & i=$((i+1)); done 2>/dev/null; wait"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut peak = 0u64;
    for _ in 0..30 {
        let now: u64 = std::fs::read_to_string(&pids_current).unwrap().trim().parse().unwrap();
        peak = peak.max(now);
        std::thread::sleep(Duration::from_millis(30));
    }
    bomb.wait().unwrap();
    assert_eq!(env.sh("alpha", "echo alive").1, "alive\n", "the agent (PID 1) survives a fork bomb in its sandbox");
    assert!(peak <= 50, "pids limit holds: peak {peak}");
    assert!(peak >= 45, "the bomb really reached the limit: peak {peak}");

    // rlimits from spec.limits apply to exec.
    let (_, out, _) = env.sh("alpha", "ulimit -n");
    assert_eq!(out.trim(), "200");

    // Capabilities cut to the container default set less CAP_MKNOD, no_new_privs, seccomp filtering.
    let (_, out, _) = env.sh("beta", "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status");
    assert!(out.contains("CapEff:\t00000000a00425fb"), "{out}");
    assert!(out.contains("CapBnd:\t00000000a00425fb"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("Seccomp:\t2"), "{out}");
    let (code, _, err) = env.sh("beta", "mount -t tmpfs none /mnt");
    assert_ne!(code, 0, "mount must be refused: {err}");
    let (code, _, _) = env.sh("beta", "unshare -n true");
    assert_ne!(code, 0, "unshare must be refused");
    // PID 1 cannot be inspected or traced from inside (it is not dumpable).
    let (_, out, _) = env.sh("beta", "cat /proc/1/environ >/dev/null 2>&1 && echo readable || echo denied; ls -l /proc/1/exe 2>&1 | grep -c denied");
    assert_eq!(out, "denied\n1\n");
    // Kernel files are masked, /proc/sys is read-only.
    let masked: Vec<&str> = ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug"]
        .into_iter()
        .filter(|p| std::path::Path::new(p).exists())
        .collect();
    assert!(!masked.is_empty(), "the host has at least one of the masked files");
    for p in masked {
        assert_eq!(env.sh("beta", &format!("wc -c < {p}")).1.trim(), "0", "{p} is masked");
    }
    let (_, out, _) = env.sh("beta", "echo 1 > /proc/sys/kernel/panic 2>/dev/null && echo writable || echo ro");
    assert_eq!(out, "ro\n");

    // Users from the image's /etc/passwd.
    let out = env.ok(&["exec", "-u", "app", "beta", "--", "id"]);
    assert_eq!(out.trim(), "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)");
    let out = env.ok(&["exec", "-u", "app", "beta", "--", "sh", "-c", "echo $HOME; pwd"]);
    assert_eq!(out, "/home/app\n/home/app\n");
    let out = env.ok(&["exec", "-w", "/etc", "-e", "X=1", "beta", "--", "sh", "-c", "pwd; echo $X"]);
    assert_eq!(out, "/etc\n1\n");
}

#[test]
fn exec_streams_stdin_timeouts_and_missing_commands() {
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("gamma", ""));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);

    // stdin is forwarded and closed at EOF.
    let mut child = env.cmd(&["exec", "-i", "gamma", "--", "sh", "-c", "tr a-z A-Z; echo done"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"streamed input\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "STREAMED INPUT\ndone\n");

    // Output arrives as it is produced, before the command ends.
    let mut child = env.cmd(&["exec", "gamma", "--", "sh", "-c", "echo first; sleep 2; echo second"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut stdout, &mut buf).unwrap();
    assert_eq!(&buf, b"first\n");
    assert!(started.elapsed() < Duration::from_millis(1500), "first line streamed early");
    child.wait().unwrap();

    let out = env.run(&["exec", "--timeout", "1", "gamma", "--", "sleep", "30"]);
    assert_eq!(out.status.code(), Some(137));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));

    let out = env.run(&["exec", "gamma", "--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    let out = env.run(&["exec", "no-such-sandbox", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sandbox named"));
}

#[test]
fn file_api_is_chunked_and_binary_safe() {
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("files", ""));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let mut c = ShimClient::connect(&env.instance_dir("files").join("shim.sock")).unwrap();

    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    c.mkdir("/data/deep/er", true).unwrap();
    c.write_file("/data/deep/er/blob.bin", &data, Some(0o600)).unwrap();
    assert_eq!(c.read_file("/data/deep/er/blob.bin").unwrap(), data);
    let st = c.stat("/data/deep/er/blob.bin").unwrap();
    assert_eq!((st.kind, st.size, st.mode), (FileKind::File, data.len() as u64, 0o600));
    c.rename("/data/deep/er/blob.bin", "/data/moved.bin").unwrap();
    let names: Vec<String> = c.list_dir("/data").unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["deep", "moved.bin"]);
    // What the API wrote is what processes inside see: size and the last bytes.
    let script = "wc -c < /data/moved.bin; tail -c 4 /data/moved.bin | od -An -tu1";
    let (st, out, _) = c.exec(ExecRequest { argv: vec!["sh".into(), "-c".into(), script.into()], ..Default::default() }).unwrap();
    assert_eq!(st.code, Some(0));
    let tail: Vec<String> = data[data.len() - 4..].iter().map(|b| b.to_string()).collect();
    let out = String::from_utf8_lossy(&out);
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words[0], data.len().to_string());
    assert_eq!(words[1..], tail.iter().map(String::as_str).collect::<Vec<_>>()[..]);
    c.remove("/data", true).unwrap();
    let err = c.stat("/data").unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");
    let err = c.read_file("/etc/nonexistent").unwrap_err();
    assert!(err.to_string().contains("/etc/nonexistent"), "{err}");
}

#[test]
fn malformed_frames_are_rejected_without_killing_anything() {
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("frames", ""));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let sock = env.instance_dir("frames").join("shim.sock");
    let mut raw = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    // Garbage payload, then an oversized length (skipped), then a valid request.
    raw.write_all(&7u32.to_le_bytes()).unwrap();
    raw.write_all(&[5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).unwrap();
    let big = guest_agent::protocol::MAX_FRAME_LEN + 1;
    raw.write_all(&(big as u32).to_le_bytes()).unwrap();
    raw.write_all(&vec![0u8; big]).unwrap();
    guest_agent::protocol::write_frame(&mut raw, &guest_agent::protocol::Frame { id: 9, body: guest_agent::protocol::ShimRequest::Status }).unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        let f: guest_agent::protocol::Frame<guest_agent::protocol::Response> = guest_agent::protocol::read_frame(&mut raw).unwrap();
        got.push(f);
    }
    assert!(matches!(got[0].body, guest_agent::protocol::Response::Error { code: guest_agent::protocol::ErrorCode::BadRequest, .. }));
    assert_eq!(got[0].id, 5);
    assert!(matches!(got[1].body, guest_agent::protocol::Response::Error { code: guest_agent::protocol::ErrorCode::TooLarge, .. }));
    assert!(matches!(got[2].body, guest_agent::protocol::Response::Status(_)));
    drop(raw);
    assert_eq!(env.sh("frames", "echo alive").1, "alive\n");
}

#[test]
fn user_namespace_maps_root_to_an_unprivileged_range() {
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("userns", "  userNamespace: true\n"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let (_, out, _) = env.sh("userns", "cat /proc/self/uid_map; id -u; touch /tmp/x && echo write-ok");
    let fields: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(fields, ["0", "100000", "65536"]);
    assert!(out.contains("\n0\nwrite-ok\n"), "{out}");
    // Files root creates inside belong to the unprivileged host uid, on the sandbox's own
    // writable disk (looked at here once the sandbox is stopped, in a private mount namespace).
    env.ok(&["stop", "userns"]);
    let disk = env.instance_dir("userns").join("disk.ext4");
    let mnt = env.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!("mount -o loop,ro,noload {} {m} && stat -c %u {m} {m}/upper/tmp/x", disk.display(), m = mnt.display());
    let out = std::process::Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "100000\n100000\n", "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn run_returns_the_exit_code_and_rm_leaves_nothing() {
    let env = Env::new();
    let image = format!("dir:{}", rootfs().display());
    let out = env.run(&["run", "--rm", "--name", "once", &image, "--", "sh", "-c", "echo out; echo err >&2; exit 5"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert!(env.get().is_empty(), "--rm removed the sandbox");
    assert!(std::fs::read_dir(env.data_dir().join("sandboxes")).unwrap().next().is_none());

    // Without --rm the sandbox stays, Exited, with its logs.
    let out = env.run(&["run", "--name", "kept", &image, "--", "sh", "-c", "echo one; echo two; echo three"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(env.status("kept"), "Exited");
    assert_eq!(env.ok(&["logs", "--tail", "2", "kept"]), "two\nthree\n");
    let inst = env.sandbox("kept")["instance"].as_str().unwrap().to_string();
    assert!(leftovers(&inst).is_empty(), "an exited sandbox holds nothing: {:?}", leftovers(&inst));

    // stdin with -i.
    let mut child = env.cmd(&["run", "--rm", "-i", &image, "--", "wc", "-l"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"a\nb\nc\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
}

#[test]
fn delete_leaves_no_process_mount_cgroup_or_directory() {
    let env = Env::new();
    let file = two_sandboxes(&env);
    env.ok(&["apply", "-f", file.to_str().unwrap()]);
    let inst = env.sandbox("alpha")["instance"].as_str().unwrap().to_string();
    let shim = env.shim_pid("alpha");
    let dir = env.instance_dir("alpha");
    assert!(!leftovers(&inst).is_empty(), "a running sandbox has a cgroup and a shim");
    env.ok(&["delete", "alpha"]);
    assert!(!pid_alive(shim), "shim gone");
    assert!(leftovers(&inst).is_empty(), "left behind: {:?}", leftovers(&inst));
    assert!(!dir.exists(), "instance directory removed");
    assert_eq!(env.get().len(), 1);
    env.ok(&["delete", "-f", file.to_str().unwrap()]);
    assert!(env.get().is_empty());
}

#[test]
fn attach_to_a_terminal_sandbox_and_detach_without_stopping_it() {
    use guest_agent::protocol::{AgentRequest, Response};
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("term", "  tty: true\n  command: [sh]\n"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let sock = env.instance_dir("term").join("shim.sock");
    let mut c = ShimClient::connect(&sock).unwrap();
    let id = c.attach().unwrap();
    let s = c.sender(id);
    s.send(AgentRequest::Resize { rows: 30, cols: 90 });
    s.send(AgentRequest::Stdin { data: b"stty size; tty; echo marker-$((6*7))\n".to_vec() });
    let mut seen = String::new();
    while !seen.contains("marker-42") {
        let f = c.recv().unwrap();
        if let (true, Response::Stdout { data }) = (f.id == id, f.body) {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(seen.contains("30 90"), "{seen:?}");
    assert!(seen.contains("/dev/pts/0"), "{seen:?}");
    // Detaching (closing the connection) leaves the main process running.
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(env.status("term"), "Running");
    assert!(env.ok(&["logs", "term"]).contains("marker-42"));
    // A second client can attach again.
    let mut c = ShimClient::connect(&sock).unwrap();
    let id = c.attach().unwrap();
    c.sender(id).send(AgentRequest::Stdin { data: b"exit 4\n".to_vec() });
    loop {
        let f = c.recv().unwrap();
        if let (true, Response::Exited(st)) = (f.id == id, &f.body) {
            assert_eq!(st.code, Some(4));
            break;
        }
    }
}

#[test]
fn main_log_is_rotated_so_output_cannot_fill_the_disk() {
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("chatty", "  command: [sh, -c, 'yes 0123456789abcdef | head -c 20000000; echo; echo tail-marker; exec sleep 100000']\n"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    env.wait_for("all output logged", Duration::from_secs(30), || env.ok(&["logs", "--tail", "1", "chatty"]).contains("tail-marker"));
    let dir = env.instance_dir("chatty");
    let current = std::fs::metadata(dir.join("main.log")).unwrap().len();
    let rotated = std::fs::metadata(dir.join("main.log.1")).unwrap().len();
    assert!(current < 16 << 20 && rotated >= 16 << 20 && rotated < 17 << 20, "current {current}, rotated {rotated}");
}

#[test]
fn a_client_that_stops_reading_does_not_stall_the_others() {
    use guest_agent::protocol::AgentRequest;
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("busy", ""));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let sock = env.instance_dir("busy").join("shim.sock");
    let mut slow = ShimClient::connect(&sock).unwrap();
    let id = slow.start(AgentRequest::Exec(Box::new(ExecRequest { argv: vec!["yes".into()], ..Default::default() }))).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        let started = std::time::Instant::now();
        assert_eq!(env.sh("busy", "echo ok").1, "ok\n");
        assert!(started.elapsed() < Duration::from_secs(2), "other clients are served while one does not read");
    }
    // The one that never read is cut off once it falls too far behind; what was already in
    // flight drains, then its stream ends.
    let log = env.instance_dir("busy").join("shim.log");
    env.wait_for("the stalled client to be disconnected", Duration::from_secs(60), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("disconnecting it")
    });
    let cut_off = (0..10_000).any(|_| slow.recv().is_err());
    assert!(cut_off, "request {id}: the stalled client's stream ended");
    env.sh("busy", "pkill yes");
}

#[test]
fn logs_follow_a_running_sandbox_and_get_speaks_yaml() {
    use std::io::BufRead;
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("talker", "  restartPolicy: Never\n  command: [sh, -c, 'echo one; sleep 1; echo two; sleep 1; echo three']\n"));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let mut follow = env.cmd(&["logs", "-f", "talker"]).stdout(Stdio::piped()).spawn().unwrap();
    let lines: Vec<String> = std::io::BufReader::new(follow.stdout.take().unwrap()).lines().map(Result::unwrap).collect();
    // `-f` ends by itself once the sandbox has exited and everything was printed.
    assert!(follow.wait().unwrap().success());
    assert_eq!(lines, ["one", "two", "three"]);

    let yaml = env.ok(&["get", "sandboxes", "talker", "-o", "yaml"]);
    let docs = yaml_rust2::YamlLoader::load_from_str(&yaml).expect("get -o yaml is YAML");
    let obj = &docs[0][0];
    assert_eq!(obj["name"].as_str(), Some("talker"));
    assert_eq!(obj["status"].as_str(), Some("Exited"));
    assert_eq!(obj["kind"].as_str(), Some("Sandbox"));
}

/// `cp` both ways (files and trees, modes kept) and `fs ls|stat|cat|mkdir|rm`, as a user at a
/// shell would use them.
#[test]
fn cp_and_fs_move_files_and_trees_between_host_and_sandbox() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let f = env.file("s.yaml", &sandbox_yaml("box", ""));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let host = env.dir.path().join("tree");
    std::fs::create_dir_all(host.join("bin")).unwrap();
    std::fs::write(host.join("README"), b"read me\n").unwrap();
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(host.join("bin/tool"), &big).unwrap();
    std::fs::set_permissions(host.join("bin/tool"), std::fs::Permissions::from_mode(0o750)).unwrap();

    env.ok(&["fs", "mkdir", "-p", "box", "/srv"]);
    let out = env.run(&["cp", host.to_str().unwrap(), "box:/srv"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 file(s)"), "{out:?}");
    // Into an existing directory: under its own name, as cp does; content and mode inside.
    let (code, text, _) = env.sh("box", "cat /srv/tree/README; wc -c < /srv/tree/bin/tool");
    assert_eq!(code, 0);
    assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["read", "me", &big.len().to_string()]);

    let ls = env.ok(&["fs", "ls", "box", "/srv/tree"]);
    assert!(ls.contains("dir") && ls.contains(" bin") && ls.contains("README"), "{ls}");
    let stat: serde_json::Value = serde_json::from_str(&env.ok(&["fs", "stat", "box", "/srv/tree/bin/tool", "-o", "json"])).unwrap();
    assert_eq!((stat["kind"].as_str(), stat["mode"].as_str(), stat["size"].as_u64()), (Some("file"), Some("750"), Some(big.len() as u64)));
    assert_eq!(env.ok(&["fs", "cat", "box", "/srv/tree/README"]), "read me\n");
    env.ok(&["fs", "mkdir", "-p", "box", "/srv/a/b"]);
    env.sh("box", "echo inside > /srv/a/b/made-inside; ln -s made-inside /srv/a/b/link");

    // Out again: a tree with a link, to a new host path.
    let back = env.dir.path().join("back");
    env.ok(&["cp", "box:/srv", back.to_str().unwrap()]);
    assert_eq!(std::fs::read(back.join("tree/bin/tool")).unwrap(), big);
    assert_eq!(std::fs::metadata(back.join("tree/bin/tool")).unwrap().permissions().mode() & 0o7777, 0o750);
    assert_eq!(std::fs::read_to_string(back.join("a/b/made-inside")).unwrap(), "inside\n");
    assert_eq!(std::fs::read_link(back.join("a/b/link")).unwrap(), std::path::PathBuf::from("made-inside"));
    // A single file onto an existing host file replaces it.
    std::fs::write(env.dir.path().join("one"), b"old").unwrap();
    env.ok(&["cp", "box:/srv/tree/README", env.dir.path().join("one").to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(env.dir.path().join("one")).unwrap(), "read me\n");

    // `-` is a tar stream, both ways, read and written by the system's tar.
    let tarred = env.cmd(&["cp", "box:/srv/tree", "-"]).output().unwrap();
    assert!(tarred.status.success(), "{tarred:?}");
    let unpacked = env.dir.path().join("untarred");
    std::fs::create_dir(&unpacked).unwrap();
    let mut tar = Command::new("tar").arg("-x").arg("-C").arg(&unpacked).stdin(Stdio::piped()).spawn().unwrap();
    tar.stdin.take().unwrap().write_all(&tarred.stdout).unwrap();
    assert!(tar.wait().unwrap().success());
    assert_eq!(std::fs::read(unpacked.join("tree/bin/tool")).unwrap(), big);
    assert_eq!(std::fs::metadata(unpacked.join("tree/bin/tool")).unwrap().permissions().mode() & 0o7777, 0o750);
    assert_eq!(std::fs::read_to_string(unpacked.join("tree/README")).unwrap(), "read me\n");
    let stream = Command::new("tar").arg("-c").arg("-C").arg(env.dir.path()).arg("tree").output().unwrap();
    assert!(stream.status.success());
    env.ok(&["fs", "mkdir", "-p", "box", "/from-tar"]);
    let mut cp = env.cmd(&["cp", "-", "box:/from-tar"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    cp.stdin.take().unwrap().write_all(&stream.stdout).unwrap();
    let out = cp.wait_with_output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("2 file(s)"), "{out:?}");
    let (_, text, _) = env.sh("box", "stat -c %a /from-tar/tree/bin/tool; cmp /from-tar/tree/bin/tool /srv/tree/bin/tool && echo same");
    assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["750", "same"]);
    // An entry that climbs out of the target is refused, and nothing of it is written.
    let hostile = env.dir.path().join("hostile.tar");
    let made = Command::new("python3")
        .arg("-c")
        .arg("import io,sys,tarfile\nt=tarfile.open(sys.argv[1],'w')\nfor n in ['ok.txt','../escaped.txt']:\n  i=tarfile.TarInfo(n); i.size=2; t.addfile(i, io.BytesIO(b'hi'))\nt.close()")
        .arg(&hostile)
        .status()
        .unwrap();
    assert!(made.success());
    let mut cp = env.cmd(&["cp", "-", "box:/from-tar"]).stdin(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    cp.stdin.take().unwrap().write_all(&std::fs::read(&hostile).unwrap()).unwrap();
    let out = cp.wait_with_output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("would land outside /from-tar"), "{out:?}");
    let (_, text, _) = env.sh("box", "ls /from-tar; ls / | grep -c escaped");
    assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["ok.txt", "tree", "0"]);

    env.ok(&["fs", "rm", "-r", "box", "/srv/tree"]);
    let out = env.run(&["fs", "stat", "box", "/srv/tree"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("No such file"), "{out:?}");
    let out = env.run(&["cp", "./a", "./b"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NAME:/path"), "{out:?}");
}

/// The habits users bring: `run -d`, `ps` (and `-a`), `inspect`, `rm` (refusing a running one
/// without `--force`), and naming a sandbox by a prefix of its instance id.
#[test]
fn docker_habits_work_as_aliases() {
    let env = Env::new();
    let rootfs = common::rootfs();
    let image = format!("dir:{}", rootfs.display());
    let name = env.ok(&["run", "-d", "--name", "bg", "--isolation", "namespace", &image, "--", "sleep", "300"]);
    assert_eq!(name.trim(), "bg");
    env.wait_for("bg running", Duration::from_secs(20), || env.status("bg") == "Running");
    env.ok(&["run", "--name", "done", "--isolation", "namespace", &image, "--", "true"]);

    let ps = env.ok(&["ps"]);
    assert!(ps.contains("bg") && !ps.contains("done"), "ps shows running sandboxes only:\n{ps}");
    let all = env.ok(&["ls", "-a"]);
    assert!(all.contains("bg") && all.contains("done"), "{all}");
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["inspect", "bg"])).unwrap();
    assert_eq!((v["name"].as_str(), v["status"].as_str(), v["source"].as_str()), (Some("bg"), Some("Running"), Some("cli")));

    // By a unique prefix of its instance id.
    let instance = v["instance"].as_str().unwrap().to_string();
    let prefix = &instance[..instance.len() - 2];
    assert_eq!(env.ok(&["exec", prefix, "--", "hostname"]).trim(), "bg");

    let out = env.run(&["rm", "bg"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--force"), "{out:?}");
    assert_eq!(env.status("bg"), "Running");
    env.ok(&["remove", "--force", "bg"]);
    env.ok(&["rm", "done"]);
    assert!(env.get().is_empty(), "{:?}", env.get());
}
