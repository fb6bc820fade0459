//! Writes the seed corpus of the `agent_frames` fuzz target (tests/fuzz/corpus/agent_frames):
//! real frames of each kind the shim and the agent exchange, one stream per file.
//!
//!   cargo run -p guest-agent --example fuzz_seeds -- tests/fuzz/corpus/agent_frames

use guest_agent::protocol::*;
use std::collections::BTreeMap;

fn main() {
    let dir = std::env::args().nth(1).expect("usage: fuzz_seeds DIR");
    std::fs::create_dir_all(&dir).expect("creating the corpus directory");
    let init = SandboxInit {
        hostname: "web".into(),
        base_dir: "/var/lib/orchestrator/sandboxes/x".into(),
        lower_dirs: vec!["l0".into(), "l1".into()],
        upper_dir: "disk/upper".into(),
        work_dir: "disk/work".into(),
        mount_point: "/var/lib/orchestrator/sandboxes/x/rootfs".into(),
        seccomp: true,
        patches: vec![PatchOp::Write { path: "/etc/motd".into(), contents: b"hi\n".to_vec(), mode: 0o644 }, PatchOp::Symlink { path: "/usr/local/bin/py".into(), target: "/usr/bin/python3".into() }],
        writable_mount: Some("disk".into()),
        network: None,
    };
    let exec = ExecRequest {
        argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
        env: BTreeMap::from([("PATH".into(), "/bin".into())]),
        cwd: Some("/tmp".into()),
        user: Some("app".into()),
        tty: Some(TtySize { rows: 24, cols: 80 }),
        stdin: true,
        rlimits: Rlimits { nofile: Some(1024), ..Default::default() },
        timeout_ms: Some(1000),
    };
    let requests = vec![
        Request::Hello { version: PROTOCOL_VERSION, client: "shim".into() },
        Request::Init(Box::new(init)),
        Request::Exec(Box::new(exec)),
        Request::Stdin { data: b"input\n".to_vec() },
        Request::Resize { rows: 50, cols: 120 },
        Request::Signal { signal: 15 },
        Request::ReadFile { path: "/etc/passwd".into(), offset: 0, len: Some(4096) },
        Request::WriteFile { path: "/tmp/f".into(), offset: 0, data: vec![0, 1, 2, 255], truncate: true, mode: Some(0o600) },
        Request::ListDir { path: "/".into() },
        Request::Stat { path: "/bin/sh".into(), follow_symlinks: false },
        Request::Rename { from: "/a".into(), to: "/b".into() },
        Request::Shutdown { grace_ms: 5000 },
        Request::Status,
    ];
    let responses = vec![
        Response::Hello { version: PROTOCOL_VERSION, agent: "guest-agent".into() },
        Response::Ready,
        Response::Started { pid: 42 },
        Response::Stdout { data: b"out\n".to_vec() },
        Response::Stderr { data: b"err\n".to_vec() },
        Response::Exited(ExitStatus { code: Some(3), signal: None, timed_out: false }),
        error(ErrorCode::NotFound, "no such file"),
    ];
    let mut all = Vec::new();
    for (i, r) in requests.into_iter().enumerate() {
        let bytes = encode(&Frame { id: i as u64 + 1, body: r }).expect("encoding");
        std::fs::write(format!("{dir}/request-{i:02}"), &bytes).expect("writing a seed");
        all.extend(bytes);
    }
    for (i, r) in responses.into_iter().enumerate() {
        let bytes = encode(&Frame { id: i as u64 + 1, body: r }).expect("encoding");
        std::fs::write(format!("{dir}/response-{i:02}"), &bytes).expect("writing a seed");
        all.extend(bytes);
    }
    std::fs::write(format!("{dir}/stream"), all).expect("writing a seed");
}
