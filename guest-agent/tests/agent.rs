//! The agent binary over a real socketpair, as its owner (the shim) talks to it: handshake,
//! exec with output, stdin, signals and a terminal, files, hostile frames, orphan reaping, and
//! ending everything when its owner goes away. No root needed: the agent runs as a plain child
//! (outside a PID namespace it reaps as a child subreaper).

use guest_agent::protocol::{
    self, AgentRequest, ErrorCode, ExecRequest, ExitStatus, Frame, Response, TtySize, PROTOCOL_VERSION,
};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_orchestrator-agent");

struct Agent {
    child: Child,
    stream: UnixStream,
}

impl Agent {
    fn start() -> Agent {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(AGENT);
        cmd.args(["--fd", "3"]);
        // SAFETY: dup2/fcntl between fork and exec on an fd we own.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(theirs);
        ours.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut a = Agent { child, stream: ours };
        match a.call(1, AgentRequest::Hello { version: PROTOCOL_VERSION, client: "test".into() }) {
            Response::Hello { version, .. } => assert_eq!(version, PROTOCOL_VERSION),
            other => panic!("handshake: {other:?}"),
        }
        a
    }

    fn send(&mut self, id: u64, body: AgentRequest) {
        protocol::write_frame(&mut self.stream, &Frame { id, body }).unwrap();
    }

    fn recv(&mut self) -> Frame<Response> {
        protocol::read_frame(&mut self.stream).unwrap()
    }

    fn call(&mut self, id: u64, body: AgentRequest) -> Response {
        self.send(id, body);
        loop {
            let f = self.recv();
            if f.id == id {
                return f.body;
            }
        }
    }

    /// Collects an exec's output until it exits.
    fn finish(&mut self, id: u64) -> (Vec<u8>, Vec<u8>, ExitStatus) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            let f = self.recv();
            if f.id != id {
                continue;
            }
            match f.body {
                Response::Started { .. } => {}
                Response::Stdout { data } => out.extend(data),
                Response::Stderr { data } => err.extend(data),
                Response::Exited(st) => return (out, err, st),
                other => panic!("exec {id}: {other:?}"),
            }
        }
    }

    fn exec(&mut self, id: u64, argv: &[&str], tweak: impl FnOnce(&mut ExecRequest)) {
        let mut req = ExecRequest { argv: argv.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        tweak(&mut req);
        self.send(id, AgentRequest::Exec(Box::new(req)));
    }

    /// Reads output of `id` until `needle` shows up.
    fn read_until(&mut self, id: u64, needle: &str) -> String {
        let mut seen = String::new();
        while !seen.contains(needle) {
            let f = self.recv();
            if let (true, Response::Stdout { data }) = (f.id == id, &f.body) {
                seen.push_str(&String::from_utf8_lossy(data));
            }
        }
        seen
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_version_mismatch_is_refused() {
    let mut a = Agent::start();
    match a.call(2, AgentRequest::Hello { version: PROTOCOL_VERSION + 1, client: "future".into() }) {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::VersionMismatch),
        other => panic!("{other:?}"),
    }
}

#[test]
fn exec_streams_output_env_cwd_and_exit_codes() {
    let mut a = Agent::start();
    a.exec(2, &["sh", "-c", "echo out; echo err >&2; echo $FOO; pwd; exit 9"], |r| {
        r.env.insert("FOO".into(), "bar".into());
        r.cwd = Some("/tmp".into());
    });
    let (out, err, st) = a.finish(2);
    assert_eq!(String::from_utf8_lossy(&out), "out\nbar\n/tmp\n");
    assert_eq!(String::from_utf8_lossy(&err), "err\n");
    assert_eq!(st.code, Some(9));

    match a.call(3, AgentRequest::Exec(Box::new(ExecRequest { argv: vec!["definitely-not-a-command".into()], ..Default::default() }))) {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::SpawnFailed);
            assert!(message.contains("not found"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn stdin_signals_and_timeouts() {
    let mut a = Agent::start();
    a.exec(2, &["sh", "-c", "tr a-z A-Z"], |r| r.stdin = true);
    a.send(2, AgentRequest::Stdin { data: b"hello\n".to_vec() });
    a.send(2, AgentRequest::CloseStdin);
    let (out, _, st) = a.finish(2);
    assert_eq!((String::from_utf8_lossy(&out).as_ref(), st.code), ("HELLO\n", Some(0)));

    a.exec(3, &["sleep", "100"], |_| {});
    assert!(matches!(a.recv().body, Response::Started { .. }));
    a.send(3, AgentRequest::Signal { signal: libc::SIGTERM });
    let (_, _, st) = a.finish(3);
    assert_eq!((st.signal, st.shell_code()), (Some(libc::SIGTERM), 143));

    let start = Instant::now();
    a.exec(4, &["sleep", "100"], |r| r.timeout_ms = Some(300));
    let (_, _, st) = a.finish(4);
    assert!(st.timed_out && st.signal == Some(libc::SIGKILL), "{st:?}");
    assert!(start.elapsed() < Duration::from_secs(5));

    match a.call(9, AgentRequest::Stdin { data: vec![1] }) {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
}

/// Sessions run side by side on their own: each gets all of its output, in order, before its
/// exit, and a background grandchild that keeps stdout open holds its exec for the drain
/// timeout (2 s) only, not for the grandchild's life.
#[test]
fn concurrent_sessions_keep_their_output_and_a_grandchild_does_not_hold_the_exit() {
    let mut a = Agent::start();
    let start = Instant::now();
    a.exec(1, &["sh", "-c", "echo first; sleep 30 & echo done"], |_| {});
    for id in 10..30u64 {
        a.exec(id, &["sh", "-c", &format!("i=0; while [ $i -lt 200 ]; do echo {id}-$i; i=$((i+1)); done; echo oops >&2; exit {}", id % 7)], |_| {});
    }
    let mut outputs: std::collections::HashMap<u64, (String, String)> = Default::default();
    let mut exits = std::collections::HashMap::new();
    while exits.len() < 21 {
        let f = a.recv();
        assert!(!exits.contains_key(&f.id), "exec {}: a frame after its exit: {:?}", f.id, f.body);
        let entry = outputs.entry(f.id).or_default();
        match f.body {
            Response::Started { .. } => assert!(entry.0.is_empty() && entry.1.is_empty(), "Started comes first"),
            Response::Stdout { data } => entry.0.push_str(&String::from_utf8_lossy(&data)),
            Response::Stderr { data } => entry.1.push_str(&String::from_utf8_lossy(&data)),
            Response::Exited(st) => {
                exits.insert(f.id, (st, start.elapsed()));
            }
            other => panic!("exec {}: {other:?}", f.id),
        }
    }
    for id in 10..30u64 {
        let expected: String = (0..200).map(|i| format!("{id}-{i}\n")).collect();
        assert_eq!(outputs[&id], (expected, "oops\n".to_string()), "exec {id}");
        assert_eq!(exits[&id].0.code, Some((id % 7) as i32));
    }
    let (st, took) = &exits[&1];
    assert_eq!(outputs[&1].0, "first\ndone\n");
    assert_eq!(st.code, Some(0));
    assert!(*took >= Duration::from_millis(1900) && *took < Duration::from_secs(10), "the drain timeout bounds the wait: {took:?}");
}

#[test]
fn a_terminal_has_its_size_and_follows_resizes() {
    let mut a = Agent::start();
    a.exec(2, &["sh"], |r| {
        r.tty = Some(TtySize { rows: 24, cols: 80 });
        r.stdin = true;
    });
    a.send(2, AgentRequest::Stdin { data: b"stty size; tty\n".to_vec() });
    let seen = a.read_until(2, "/dev/pts/");
    assert!(seen.contains("24 80"), "{seen:?}");
    a.send(2, AgentRequest::Resize { rows: 40, cols: 100 });
    a.send(2, AgentRequest::Stdin { data: b"stty size\n".to_vec() });
    let seen = a.read_until(2, "40 100");
    assert!(seen.contains("40 100"));
    a.send(2, AgentRequest::Stdin { data: b"exit 3\n".to_vec() });
    let (_, _, st) = a.finish(2);
    assert_eq!(st.code, Some(3));
}

#[test]
fn files_are_chunked_and_binary_safe() {
    let mut a = Agent::start();
    let dir = tempfile_dir();
    let path = format!("{dir}/sub/blob");
    assert_eq!(a.call(2, AgentRequest::Mkdir { path: format!("{dir}/sub"), parents: true, mode: None }), Response::Done);
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    for (i, chunk) in data.chunks(protocol::CHUNK_LEN).enumerate() {
        let offset = (i * protocol::CHUNK_LEN) as u64;
        let r = a.call(3 + i as u64, AgentRequest::WriteFile { path: path.clone(), offset, data: chunk.to_vec(), truncate: i == 0, mode: Some(0o640) });
        assert_eq!(r, Response::Done);
    }
    a.send(20, AgentRequest::ReadFile { path: path.clone(), offset: 0, len: None });
    let mut back = Vec::new();
    loop {
        match a.recv().body {
            Response::Data { data, eof } => {
                assert!(data.len() <= protocol::CHUNK_LEN);
                back.extend(data);
                if eof {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(back, data);
    match a.call(21, AgentRequest::Stat { path: path.clone(), follow_symlinks: false }) {
        Response::Stat(s) => assert_eq!((s.size, s.mode), (data.len() as u64, 0o640)),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.call(22, AgentRequest::Rename { from: path.clone(), to: format!("{dir}/moved") }), Response::Done);
    match a.call(23, AgentRequest::ListDir { path: dir.clone() }) {
        Response::Entries(e) => assert_eq!(e.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["moved", "sub"]),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.recv().body, Response::Done);
    assert_eq!(a.call(24, AgentRequest::Remove { path: dir.clone(), recursive: true }), Response::Done);
    match a.call(25, AgentRequest::Stat { path: dir, follow_symlinks: false }) {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
}

fn tempfile_dir() -> String {
    let d = std::env::temp_dir().join(format!("agent-test-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&d).unwrap();
    d.to_string_lossy().into_owned()
}

#[test]
fn hostile_frames_get_errors_and_the_agent_keeps_serving() {
    let mut a = Agent::start();
    // Undecodable payload: answered with BadRequest for the id we can read.
    a.stream.write_all(&6u32.to_le_bytes()).unwrap();
    a.stream.write_all(&[4, 250, 250, 250, 250, 250]).unwrap();
    let f = a.recv();
    assert_eq!(f.id, 4);
    assert!(matches!(f.body, Response::Error { code: ErrorCode::BadRequest, .. }), "{f:?}");
    // Oversized frame: skipped, answered with TooLarge.
    let n = protocol::MAX_FRAME_LEN + 100;
    a.stream.write_all(&(n as u32).to_le_bytes()).unwrap();
    a.stream.write_all(&vec![7u8; n]).unwrap();
    assert!(matches!(a.recv().body, Response::Error { code: ErrorCode::TooLarge, .. }));
    // Empty argv. (Shim-only requests cannot reach the agent: `AgentRequest` has none.)
    assert!(matches!(a.call(5, AgentRequest::Exec(Box::default())), Response::Error { code: ErrorCode::SpawnFailed, .. }));
    // Still serving.
    a.exec(7, &["echo", "alive"], |_| {});
    assert_eq!(a.finish(7).0, b"alive\n");
}

fn children_of(pid: u32) -> Vec<(u32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r.to_string()) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            out.push((e.file_name().to_string_lossy().parse().unwrap_or(0), f[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

#[test]
fn orphans_are_reaped_and_a_lost_owner_ends_everything() {
    let mut a = Agent::start();
    let agent_pid = a.child.id();
    // The shell exits at once, leaving a background child to the agent.
    a.exec(2, &["sh", "-c", "sleep 0.3 & exit 0"], |_| {});
    a.finish(2);
    std::thread::sleep(Duration::from_millis(800));
    let zombies: Vec<_> = children_of(agent_pid).into_iter().filter(|(_, s)| *s == 'Z').collect();
    assert!(zombies.is_empty(), "orphans reaped: {zombies:?}");

    a.exec(3, &["sleep", "100"], |_| {});
    assert!(matches!(a.recv().body, Response::Started { .. }));
    let sleeper = children_of(agent_pid).into_iter().map(|(p, _)| p).next().expect("sleep runs");
    // The owner disappears: the agent ends its processes and exits.
    a.stream.shutdown(std::net::Shutdown::Both).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if a.child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "agent exited after losing its owner");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!std::path::Path::new(&format!("/proc/{sleeper}")).exists(), "its processes ended too");
}
