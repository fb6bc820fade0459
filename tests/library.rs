//! The orchestrator as a Rust library, for real: the Quick Start example program in examples/
//! (built by `cargo test`) against an OCI image, and each error kind where a caller expects it,
//! from in-process calls on real namespace sandboxes.

mod common;

use common::*;
use orchestrator::{ErrorKind, ExecEvent, ExecOptions, Orchestrator, Sandbox};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn example(name: &str) -> PathBuf {
    // target/debug/deps/library-HASH -> target/debug/examples/NAME
    let exe = std::env::current_exe().expect("current exe");
    let path = exe.parent().and_then(|d| d.parent()).expect("target dir").join("examples").join(name);
    assert!(path.exists(), "{} is missing: `cargo test` builds the examples (or `cargo build --example {name}`)", path.display());
    path
}

#[test]
fn the_quickstart_example_runs_against_an_oci_image() {
    let env = Env::new();
    let image = format!("oci-layout:{}:busybox", layouts().display());
    let out = std::process::Command::new(example("quickstart"))
        .arg(&image)
        .env("ORCHESTRATOR_DATA_DIR", env.data_dir())
        .env("ORCHESTRATOR_PLUGIN_CACHE", plugin_cache())
        .output()
        .expect("running the quickstart example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "quickstart failed ({}):\nstdout: {stdout}\nstderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    for line in [
        "shell: Hello from the orchestrator!",
        "stream: STREAMED",
        "second process: reconnected to quickstart-",
        "stopped: status Stopped",
        "removed: no sandbox",
        "quickstart: ok",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    // What it made is gone, and nothing is left running.
    assert!(env.get().is_empty(), "{:?}", env.get());
}

#[test]
fn a_library_sandbox_is_a_resource_the_cli_sees_and_file_sources_never_prune() {
    let env = Env::new();
    let rt = runtime();
    let sandbox = rt
        .block_on(Sandbox::builder("libbox").config(library_config(&env)).image(rootfs().display().to_string()).isolation(orchestrator::spec::Isolation::Namespace).label("made-by", "test").create())
        .expect("create");
    let view = env.sandbox("libbox");
    assert_eq!(view["source"], "library");
    assert_eq!(view["status"], "Running");
    assert_eq!(view["labels"]["made-by"], "test");
    // A directory source that declares nothing else prunes its own only.
    let file = env.file("src/other.yaml", &sandbox_yaml("other", ""));
    env.ok(&["apply", "-f", file.to_str().unwrap()]);
    std::fs::write(&file, "").unwrap();
    env.ok(&["apply", "-f", file.to_str().unwrap(), "--prune-empty"]);
    assert_eq!(env.status("libbox"), "Running");
    // The CLI drives it as any other sandbox.
    assert_eq!(env.ok(&["exec", "libbox", "--", "echo", "from the cli"]), "from the cli\n");
    rt.block_on(sandbox.remove()).unwrap();
    assert!(env.run(&["inspect", "libbox"]).status.code() == Some(1));
}

#[test]
fn streamed_execs_take_stdin_signals_and_report_their_status() {
    let env = Env::new();
    let rt = runtime();
    rt.block_on(async {
        let sandbox = Sandbox::builder("streams").config(library_config(&env)).image(rootfs().display().to_string()).create().await.expect("create");
        // A signal ends a command that would run forever.
        let mut sleeper = sandbox.exec_stream("sleep", ["600"]).await.unwrap();
        assert!(matches!(sleeper.recv().await, Some(ExecEvent::Started { pid }) if pid > 0));
        sleeper.signal(libc::SIGTERM).unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), sleeper.wait()).await.expect("the signal ended it").unwrap();
        assert_eq!(status.signal, Some(libc::SIGTERM));
        // A timeout kills; the status says so.
        let started = Instant::now();
        let out = sandbox.exec_with(ExecOptions::new("sleep").args(["600"]).timeout(Duration::from_millis(300))).await.unwrap();
        assert!(out.status.timed_out && started.elapsed() < Duration::from_secs(10), "{out:?}");
        // Options reach the process: env, cwd, user.
        let out = sandbox.exec_with(ExecOptions::new("sh").args(["-c", "echo $A $(pwd) $(id -u)"]).env("A", "a").cwd("/tmp").user("65534")).await.unwrap();
        assert_eq!(out.stdout_lossy(), "a /tmp 65534\n");
        // A big stdin passes whole, in order.
        let mut wc = sandbox.exec_stream("wc", ["-c"]).await.unwrap();
        wc.write_stdin(vec![b'x'; 3 << 20]).await.unwrap();
        wc.close_stdin().unwrap();
        let mut text = Vec::new();
        while let Some(e) = wc.recv().await {
            if let ExecEvent::Stdout(d) = e {
                text.extend(d);
            }
        }
        assert_eq!(String::from_utf8_lossy(&text).trim(), (3 << 20).to_string());
        // Two handles drive one sandbox at once.
        let other = Sandbox::get_in(library_config(&env), "streams").await.unwrap();
        let (a, b) = tokio::join!(sandbox.shell("echo a"), other.shell("echo b"));
        assert_eq!((a.unwrap().stdout_lossy().into_owned(), b.unwrap().stdout_lossy().into_owned()), ("a\n".into(), "b\n".into()));
        sandbox.remove().await.unwrap();
    });
}

#[test]
fn logs_stream_the_main_process_and_following_ends_with_the_sandbox() {
    let env = Env::new();
    let rt = runtime();
    rt.block_on(async {
        let sandbox = Sandbox::builder("talker")
            .config(library_config(&env))
            .image(rootfs().display().to_string())
            .command(["sh", "-c", "echo one; sleep 0.5; echo two >&2"])
            .restart(orchestrator::spec::RestartPolicy::Never)
            .create()
            .await
            .expect("create");
        let started = Instant::now();
        let followed = tokio::time::timeout(Duration::from_secs(20), sandbox.logs(true).await.unwrap().read_all()).await.expect("following ends").unwrap();
        assert_eq!(String::from_utf8_lossy(&followed), "one\ntwo\n");
        assert!(started.elapsed() >= Duration::from_millis(300), "it followed the second line as it came");
        assert_eq!(sandbox.logs(false).await.unwrap().read_all().await.unwrap(), followed);
        assert_eq!(sandbox.view().await.unwrap().status, "Exited");
        sandbox.remove().await.unwrap();
    });
}

#[test]
fn each_error_kind_is_returned_where_a_caller_expects_it() {
    let env = Env::new();
    let rt = runtime();
    let cfg = library_config(&env);
    let image = rootfs().display().to_string();
    rt.block_on(async {
        // Unknown sandbox.
        let e = Sandbox::get_in(cfg.clone(), "nobody").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        let mut orch = Orchestrator::open(cfg.clone()).unwrap();
        assert_eq!(orch.get("nobody").unwrap_err().kind(), ErrorKind::NotFound);

        // A name already in use, by the library or by a file source.
        let first = Sandbox::builder("taken").config(cfg.clone()).image(&image).create().await.unwrap();
        let e = Sandbox::builder("taken").config(cfg.clone()).image(&image).create().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        let file = env.file("conflict.yaml", &sandbox_yaml("taken", ""));
        let e = orch.apply_path(&file, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert!(e.to_string().contains("already managed by library"), "{e}");

        // An invalid spec, located to the line and column.
        let bad = env.file("bad.yaml", "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata: { name: bad }\nspec:\n  image: dir:/\n  cpus: -1\n");
        let e = orch.apply_path(&bad, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidSpec, "{e}");
        let d = &e.diagnostics()[0];
        assert_eq!((d.line, d.field.as_str()), (6, "spec.cpus"), "{e}");
        assert!(e.to_string().contains("bad.yaml:6:"), "{e}");
        let e = Sandbox::builder("x").config(cfg.clone()).create().await.unwrap_err();
        assert_eq!((e.kind(), e.diagnostics()[0].field.as_str()), (ErrorKind::InvalidSpec, "spec.image"));

        // A missing image: a registry that is not there (a closed loopback port).
        let mut insecure = cfg.clone();
        insecure.registries.insecure.push("127.0.0.1:9".into());
        let e = Sandbox::builder("noimage").config(insecure).image("127.0.0.1:9/nothing:1").isolation(orchestrator::spec::Isolation::Namespace).create().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ImageUnavailable, "{e}");
        assert!(orch.get("noimage").is_err(), "a failed create leaves nothing behind");

        // A microVM where this host's KVM cannot boot one.
        match orchestrator::microvm::probe::ready(&cfg, None) {
            Ok(()) => println!("SKIPPED the microVM case: this host can boot microVMs (the nested harness covers them)"),
            Err(why) => {
                let e = Sandbox::builder("vm").config(cfg.clone()).image(&image).isolation(orchestrator::spec::Isolation::Microvm).create().await.unwrap_err();
                assert_eq!(e.kind(), ErrorKind::IsolationUnavailable, "{e}");
                assert!(e.to_string().contains(&why), "{e} / {why}");
            }
        }

        // A command that cannot start; a path that is not there; a stopped sandbox.
        let e = first.exec("/no/such/program", Vec::<String>::new()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::SpawnFailed, "{e}");
        let e = first.exec_stream("/no/such/program", Vec::<String>::new()).await.err().expect("a spawn failure");
        assert_eq!(e.kind(), ErrorKind::SpawnFailed, "{e}");
        assert_eq!(first.fs().read("/no/such/file").await.unwrap_err().kind(), ErrorKind::NotFound);
        let mut events = first.events(5).await.unwrap();
        let started = tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("its history").unwrap().unwrap();
        assert_eq!(started.reason, "Started", "{started:?}");
        first.stop_and_wait().await.unwrap();
        assert_eq!(first.shell("true").await.unwrap_err().kind(), ErrorKind::NotRunning);
        // The stop arrives on the stream as it is recorded.
        let stopped = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let e = events.next().await.expect("the stream stays open").unwrap();
                if e.reason == "Stopped" {
                    return e;
                }
            }
        })
        .await
        .expect("the Stopped event within 5 s");
        assert_eq!(stopped.object, "Sandbox/taken");
        first.start().await.unwrap();
        assert_eq!(first.shell("echo again").await.unwrap().stdout_lossy(), "again\n");
        first.remove().await.unwrap();
    });
}

#[test]
fn library_sandboxes_mount_volumes_host_paths_and_tmpfs() {
    let env = Env::new();
    let rt = runtime();
    let mut orch = Orchestrator::open(library_config(&env)).unwrap();
    orch.create_volume("libvol", orchestrator::spec::VolumeSpec { size: Some(32 << 20), shared: false }, "library", "test").unwrap();
    let err = orch.create_volume("libvol", orchestrator::spec::VolumeSpec { size: None, shared: false }, "library", "test").map_err(orchestrator::Error::from).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let host = env.dir.path().join("host-dir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in.txt"), "host data\n").unwrap();
    let builder = |name: &str, read_only: bool| {
        Sandbox::builder(name)
            .config(library_config(&env))
            .image(rootfs().display().to_string())
            .isolation(orchestrator::spec::Isolation::Namespace)
            .volume("libvol", "/vol", read_only)
            .host_path(&host, "/host", true)
            .tmpfs("/fast", 4)
    };
    let writer = rt.block_on(builder("libwriter", false).create()).expect("create");
    let out = rt.block_on(writer.shell("cat /host/in.txt; echo kept > /vol/f; df -k /fast | tail -1")).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("host data\n"), "{out:?}");
    rt.block_on(writer.remove()).unwrap();
    let reader = rt.block_on(builder("libreader", true).create()).expect("create");
    let out = rt.block_on(reader.shell("cat /vol/f; touch /vol/g")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n");
    assert_ne!(out.code(), 0, "read-only: {out:?}");
    rt.block_on(reader.remove()).unwrap();
    // A bad mount path is the builder's InvalidSpec, located.
    let err = Sandbox::builder("bad").image(rootfs().display().to_string()).volume("libvol", "/proc/x", false).resource().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
    orch.delete_volume("libvol", false).unwrap();
}
