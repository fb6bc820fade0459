//! `serve --config DIR`: sandboxes follow the directory within seconds (files added, edited with
//! an editor-style temp-file-and-rename save, removed, subdirectories removed), a broken file
//! keeps what runs, and the periodic resync restarts a sandbox that died.

mod common;

use common::*;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn names(env: &Env) -> Vec<String> {
    env.get().iter().filter(|o| o["status"] == "Running").map(|o| o["name"].as_str().unwrap().to_string()).collect()
}

/// Waits until the running set is `want`; returns how long that took.
fn until_running(env: &Env, want: &[&str]) -> Duration {
    let start = Instant::now();
    env.wait_for(&format!("running sandboxes {want:?}"), Duration::from_secs(10), || names(env) == want);
    start.elapsed()
}

#[test]
fn serve_follows_the_directory() {
    let env = Env::new();
    let cfg = env.dir.path().join("config");
    std::fs::create_dir_all(cfg.join("team")).unwrap();
    std::fs::write(cfg.join("a.yaml"), sandbox_yaml("web", "  command: [sleep, '100000']\n")).unwrap();
    let child = env.cmd(&["serve", "--config", cfg.to_str().unwrap(), "--resync", "1"]).stderr(Stdio::null()).spawn().unwrap();
    let _serve = Serve(child);
    until_running(&env, &["web"]);

    // Add a file in a subdirectory.
    std::fs::write(cfg.join("team/b.yaml"), sandbox_yaml("worker", "")).unwrap();
    let took = until_running(&env, &["web", "worker"]);
    assert!(took < Duration::from_secs(3), "added file reconciled in {took:?}");

    // Editor-style save: write a temp file, rename over the original.
    let web_shim = env.shim_pid("web");
    std::fs::write(cfg.join(".a.yaml.swp"), sandbox_yaml("web", "  command: [sleep, '200000']\n")).unwrap();
    std::fs::rename(cfg.join(".a.yaml.swp"), cfg.join("a.yaml")).unwrap();
    env.wait_for("web to be recreated", Duration::from_secs(5), || {
        names(&env).contains(&"web".to_string()) && env.try_shim_pid("web").is_some_and(|p| p != web_shim)
    });
    assert_eq!(env.sh("web", "ps -o args | grep '^sleep'").1, "sleep 200000\n");

    // A broken file keeps what runs, and is reported.
    let worker_shim = env.shim_pid("worker");
    std::fs::write(cfg.join("broken.yaml"), "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: x }\nspec: { imgae: nope }\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(names(&env), ["web", "worker"]);
    assert_eq!(env.shim_pid("worker"), worker_shim);
    std::fs::remove_file(cfg.join("broken.yaml")).unwrap();

    // Removing a directory removes what it declared.
    std::fs::remove_dir_all(cfg.join("team")).unwrap();
    let took = until_running(&env, &["web"]);
    assert!(took < Duration::from_secs(3), "removal reconciled in {took:?}");
    assert_eq!(env.get().len(), 1);

    // A sandbox that dies is restarted by the resync (restartPolicy Always).
    let killed = env.shim_pid("web");
    // SAFETY: killing the shim as a crash would.
    unsafe { libc::kill(killed, libc::SIGKILL) };
    env.wait_for("web restarted by resync", Duration::from_secs(10), || {
        // The new shim writes its pid before it is ready: wait until it answers, too.
        env.status("web") == "Running" && env.try_shim_pid("web").is_some_and(|p| p != killed) && env.sh("web", "true").0 == 0
    });
    assert_eq!(env.sh("web", "echo back").1, "back\n");

    // The controller's own figures: how long each converge took, by outcome.
    let token = std::fs::read_to_string(env.data_dir().join("api.token")).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--unix-socket", env.data_dir().join("api.sock").to_str().unwrap(), "-H", &format!("Authorization: Bearer {}", token.trim()), "http://o/metrics"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for outcome in ["created", "recreated", "removed"] {
        let line = format!("orchestrator_reconcile_duration_seconds_count{{outcome=\"{outcome}\"}} ");
        assert!(text.lines().any(|l| l.starts_with(&line)), "{line}in:\n{text}");
    }
}

#[test]
fn serve_and_cli_apply_never_make_two_sandboxes_for_one_name() {
    let env = Env::new();
    let cfg = env.dir.path().join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("a.yaml"), sandbox_yaml("shared", "")).unwrap();
    let child = env.cmd(&["serve", "--config", cfg.to_str().unwrap(), "--resync", "1"]).stderr(Stdio::null()).spawn().unwrap();
    let _serve = Serve(child);
    // The same name applied from another source at the same time is refused, not duplicated.
    let other = env.file("other.yaml", &sandbox_yaml("shared", "  command: [sleep, '9']\n"));
    for _ in 0..5 {
        let _ = env.run(&["apply", "-f", other.to_str().unwrap()]);
        let dirs = std::fs::read_dir(env.data_dir().join("sandboxes")).unwrap().count();
        assert!(dirs <= 1, "never two instances for one name");
        std::thread::sleep(Duration::from_millis(100));
    }
    until_running(&env, &["shared"]);
    let objs = env.get();
    assert_eq!(objs.len(), 1);
    // Whichever source got there first owns it; the other one was refused, not obeyed.
    let out = env.run(&["apply", "-f", other.to_str().unwrap()]);
    let owner = objs[0]["source"].as_str().unwrap();
    if owner.ends_with("config") {
        assert!(String::from_utf8_lossy(&out.stderr).contains("already managed by"));
    } else {
        assert!(out.status.success());
    }
}
