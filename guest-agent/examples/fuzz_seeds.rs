//! Writes the seed corpora of the fuzz targets that read protocol frames, under the corpus
//! directory: `agent_frames` (real frames of each kind the shim and the agent exchange, one
//! stream per file) and `agent_responses` (an operation byte, then the answers a client of the
//! shim gets for that operation, honest and lying).
//!
//!   cargo run -p guest-agent --example fuzz_seeds -- tests/fuzz/corpus

use guest_agent::protocol::*;
use std::collections::BTreeMap;

fn main() {
    let corpus = std::env::args().nth(1).expect("usage: fuzz_seeds CORPUS_DIR");
    responses_seeds(&format!("{corpus}/agent_responses"));
    let dir = format!("{corpus}/agent_frames");
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
        writable_tmpfs: None,
        network: None,
        trust_anchor: None,
        mounts: vec![guest_agent::protocol::MountInit { target: "/data".into(), source: guest_agent::protocol::MountInitSource::Fd(1), file: false }, guest_agent::protocol::MountInit { target: "/scratch".into(), source: guest_agent::protocol::MountInitSource::Tmpfs { size: 1 << 20 }, file: false }],
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
        AgentRequest::Hello { version: PROTOCOL_VERSION, client: "shim".into() },
        AgentRequest::Init(Box::new(init)),
        AgentRequest::Exec(Box::new(exec)),
        AgentRequest::Stdin { data: b"input\n".to_vec() },
        AgentRequest::Resize { rows: 50, cols: 120 },
        AgentRequest::Signal { signal: 15 },
        AgentRequest::ReadFile { path: "/etc/passwd".into(), offset: 0, len: Some(4096) },
        AgentRequest::WriteFile { path: "/tmp/f".into(), offset: 0, data: vec![0, 1, 2, 255], truncate: true, mode: Some(0o600) },
        AgentRequest::ListDir { path: "/".into() },
        AgentRequest::Stat { path: "/bin/sh".into(), follow_symlinks: false },
        AgentRequest::Rename { from: "/a".into(), to: "/b".into() },
        AgentRequest::Shutdown { grace_ms: 5000 },
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
    let shim_requests = vec![
        ShimRequest::Hello { version: PROTOCOL_VERSION, client: "orchestrator".into() },
        ShimRequest::Status,
        ShimRequest::Attach,
        ShimRequest::Stop { grace_ms: 2000 },
        ShimRequest::UpdateNetwork { config: "{}".into() },
        ShimRequest::Agent(AgentRequest::Stat { path: "/".into(), follow_symlinks: true }),
    ];
    let mut all = Vec::new();
    for (i, r) in shim_requests.into_iter().enumerate() {
        let bytes = encode(&Frame { id: i as u64 + 50, body: r }).expect("encoding");
        std::fs::write(format!("{dir}/shim-request-{i:02}"), &bytes).expect("writing a seed");
        all.extend(bytes);
    }
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

/// One seed of `agent_responses`: the client operation (see the target), then its answers.
fn responses_seeds(dir: &str) {
    std::fs::create_dir_all(dir).expect("creating the corpus directory");
    let frames = |op: u8, answers: Vec<(u64, Response)>| {
        let mut out = vec![op];
        for (id, body) in answers {
            out.extend(encode(&Frame { id, body }).expect("encoding"));
        }
        out
    };
    let data = |d: &[u8], eof: bool| Response::Data { data: d.to_vec(), eof };
    let entry = |name: &str, kind: FileKind| DirEntry { name: name.into(), kind };
    let stat = FileStat { kind: FileKind::File, size: 12, mode: 0o644, uid: 0, gid: 0, mtime_secs: 1, symlink_target: None };
    let exited = |code| Response::Exited(ExitStatus { code: Some(code), signal: None, timed_out: false });
    let status = ShimStatus { state: SandboxState::Running, shim_pid: 10, main_pid: Some(42), restarts: 1, last_exit: None, message: Some("ok".into()) };
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("read-file", frames(0, vec![(2, data(b"web-1\n", false)), (2, data(b"", true))])),
        ("read-file-other-ids", frames(0, vec![(7, data(b"not yours", true)), (2, data(b"mine", true))])),
        ("read-file-error", frames(0, vec![(2, error(ErrorCode::NotFound, "no such file"))])),
        ("read-file-no-eof", frames(0, vec![(2, data(b"then the agent hangs up", false))])),
        ("list-dir", frames(1, vec![(2, Response::Entries(vec![entry("etc", FileKind::Dir), entry("bin", FileKind::Symlink)])), (2, Response::Done)])),
        ("stat", frames(2, vec![(2, Response::Stat(stat.clone()))])),
        ("stat-lie", frames(2, vec![(2, Response::Entries(vec![]))])),
        ("exec", frames(3, vec![(2, Response::Started { pid: 7 }), (2, Response::Stdout { data: b"out".to_vec() }), (2, Response::Stderr { data: b"err".to_vec() }), (2, exited(0))])),
        ("exec-no-start", frames(3, vec![(2, Response::Stdout { data: b"early".to_vec() }), (2, exited(1))])),
        ("status", frames(4, vec![(2, Response::Status(status))])),
        ("attach", frames(5, vec![(2, Response::Ready), (2, Response::Stdout { data: b"log".to_vec() }), (2, exited(0))])),
        ("write-file", frames(6, vec![(2, Response::Done), (3, Response::Done)])),
        ("write-file-refused", frames(6, vec![(2, error(ErrorCode::PermissionDenied, "read-only"))])),
        ("fs-ops", frames(7, vec![(2, Response::Done), (3, Response::Done), (4, Response::Done)])),
    ];
    for (name, bytes) in seeds {
        std::fs::write(format!("{dir}/{name}"), bytes).expect("writing a seed");
    }
}
