//! The HTTP API of `orchestrator serve`, driven as its users drive it: a real server process,
//! real sandboxes, requests over its Unix socket (raw HTTP/1.1) and, for OpenSandbox's
//! clients, curl on a loopback port with the exact calls of OpenSandbox's README.

mod common;
#[path = "common/registry.rs"]
mod registry;
#[path = "common/testnet.rs"]
mod testnet;

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `serve`; killed on drop.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(env: &Env, args: &[&str]) -> Server {
        let log = env.dir.path().join(format!("serve-{}.log", std::process::id() ^ rand_u32()));
        let file = std::fs::File::create(&log).unwrap();
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        let child = env.cmd(&all).stderr(file).stdout(Stdio::null()).spawn().unwrap();
        let server = Server { child, log };
        env.wait_for("the API to listen", Duration::from_secs(20), || server.log_text().contains("API on unix:"));
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The TCP address the log announced.
    fn tcp(&self) -> String {
        let text = self.log_text();
        let line = text.lines().find(|l| l.contains("API on http://") || l.contains("API on https://")).unwrap_or_else(|| panic!("no TCP address in the log:\n{text}"));
        line.rsplit("://").next().unwrap().trim().to_string()
    }
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut b).unwrap();
    u32::from_ne_bytes(b)
}

/// One HTTP/1.1 exchange over the Unix socket: (status, content type, body).
fn http(socket: &Path, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!("{method} {path} HTTP/1.1\r\nHost: orchestrator\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before it reads the whole body, and close.
    let _ = s.write_all(body);
    // After an early answer the server closes with our body unread: the reset comes after
    // its answer, which is what counts.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => panic!("{method} {path}: {e} after {} bytes", raw.len()),
        }
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut rest = raw[split + 4..].to_vec();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let header = |name: &str| {
        head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim().to_string()))
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
            rest = rest[nl + 2 + size + 2..].to_vec();
        }
        rest = out;
    }
    (status, header("content-type").unwrap_or_default(), rest)
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

struct Client {
    socket: PathBuf,
    token: String,
}

impl Client {
    fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        let (status, kind, body) = http(&self.socket, method, path, Some(&self.token), body);
        let v = if body.is_empty() { Value::Null } else { json_of(&body) };
        if status >= 400 {
            assert_eq!(kind, "application/problem+json", "{method} {path}: {v}");
        }
        (status, v)
    }

    fn exec(&self, name: &str, body: Value) -> Value {
        let (status, v) = self.call("POST", &format!("/v1/sandboxes/{name}/exec"), body.to_string().as_bytes());
        assert_eq!(status, 200, "{v}");
        v
    }
}

fn manifest(name: &str, image: &str) -> Vec<u8> {
    json!({"apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": {"name": name}, "spec": {"image": image, "isolation": "namespace"}})
        .to_string()
        .into_bytes()
}

/// The token guards every route but /health; the native routes make, run, read and remove a
/// sandbox; errors are problems with the library's kinds; host paths stay out of clients'
/// reach; hostile bodies and paths get clear errors and the server keeps serving.
#[test]
fn the_native_api_needs_its_token_and_drives_a_sandbox_through_its_life() {
    let env = Env::new();
    let rootfs = rootfs();
    let root = rootfs.parent().unwrap().to_str().unwrap().to_string();
    let server = Server::start(&env, &["--allow-host-paths", &root, "--max-body", "1048576", "--max-file-body", "4194304"]);
    let socket = env.data_dir().join("api.sock");
    let token_file = env.data_dir().join("api.token");
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert!(token.len() >= 32 && !server.log_text().contains(&token), "the token never reaches the log");

    // Only /health is open.
    assert_eq!(http(&socket, "GET", "/health", None, b""), (200, "text/plain; charset=utf-8".into(), b"OK".to_vec()));
    for (method, path) in [("GET", "/v1/sandboxes"), ("POST", "/v1/sandboxes"), ("GET", "/sessions"), ("POST", "/run"), ("GET", "/no/such/route")] {
        for t in [None, Some("wrong-token-0123456789abcdef")] {
            let (status, kind, body) = http(&socket, method, path, t, b"{}");
            assert_eq!((status, kind.as_str()), (401, "application/problem+json"), "{method} {path} with {t:?}");
            assert_eq!(json_of(&body)["kind"], "unauthorized");
        }
    }
    let api = Client { socket: socket.clone(), token };

    // Create, list, show.
    let image = format!("dir:{}", rootfs.display());
    let (status, view) = api.call("POST", "/v1/sandboxes", &manifest("box", &image));
    assert_eq!(status, 201, "{view}");
    assert_eq!((view["name"].as_str(), view["status"].as_str(), view["source"].as_str()), (Some("box"), Some("Running"), Some("api")));
    let (_, list) = api.call("GET", "/v1/sandboxes", b"");
    assert_eq!(list.as_array().unwrap().iter().filter(|v| v["name"] == "box").count(), 1);
    assert_eq!(api.call("POST", "/v1/sandboxes", &manifest("box", &image)).0, 409, "a name in use");
    // A bad spec: every problem, located in the body.
    let bad = b"{\"apiVersion\": \"orchestrator/v1\", \"kind\": \"Sandbox\", \"metadata\": {\"name\": \"Bad_Name\"},\n \"spec\": {\"image\": \"busybox\", \"cpus\": -1}}";
    let (status, problem) = api.call("POST", "/v1/sandboxes", bad);
    assert_eq!((status, problem["kind"].as_str()), (422, Some("invalid-spec")), "{problem}");
    let fields: Vec<&str> = problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"metadata.name") && fields.contains(&"spec.cpus"), "{problem}");
    assert!(problem["errors"].as_array().unwrap().iter().any(|e| e["line"] == 2), "located on the body's line 2: {problem}");
    assert_eq!(api.call("POST", "/v1/sandboxes", b"{not json").0, 422);
    // Host paths outside the allowed root.
    let (status, problem) = api.call("POST", "/v1/sandboxes", &manifest("root", "dir:/"));
    assert_eq!((status, problem["kind"].as_str()), (403, Some("host-path-forbidden")), "{problem}");
    // Nor does a client's sandbox reach past the public internet, or bind host ports.
    for (what, spec) in [
        ("allow-all", json!({"image": image, "network": {"policy": "allow-all"}})),
        ("a host allow rule", json!({"image": image, "network": {"rules": [{"action": "allow", "group": "host", "ports": [8080]}]}})),
        ("a published port", json!({"image": image, "ports": [{"host": 18080, "guest": 80, "address": "127.0.0.1"}]})),
    ] {
        let body = json!({"apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": {"name": "wide"}, "spec": spec}).to_string();
        let (status, problem) = api.call("POST", "/v1/sandboxes", body.as_bytes());
        assert_eq!(status, 403, "{what}: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains("--allow-client-network"), "{what}: {problem}");
    }

    // Commands: exit codes, both streams, stdin, bytes that are not UTF-8, a timeout.
    let out = api.exec("box", json!({"command": ["sh", "-c", "echo hi; echo err >&2; exit 3"]}));
    assert_eq!((out["exitCode"].as_i64(), out["stdout"].as_str(), out["stderr"].as_str()), (Some(3), Some("hi\n"), Some("err\n")), "{out}");
    let out = api.exec("box", json!({"command": ["cat"], "stdin": "from stdin", "env": {"A": "1"}}));
    assert_eq!(out["stdout"], "from stdin");
    let out = api.exec("box", json!({"command": ["sh", "-c", "printf '\\377\\376'"]}));
    assert_eq!((out["stdoutEncoding"].as_str(), out["stdout"].as_str()), (Some("base64"), Some("//4=")));
    let out = api.exec("box", json!({"command": ["sleep", "30"], "timeoutMs": 300}));
    assert_eq!((out["timedOut"].as_bool(), out["signal"].as_i64()), (Some(true), Some(9)), "{out}");
    let (status, problem) = api.call("POST", "/v1/sandboxes/box/exec", json!({"command": ["/no/such/program"]}).to_string().as_bytes());
    assert_eq!((status, problem["kind"].as_str()), (422, Some("spawn-failed")), "{problem}");
    assert_eq!(api.call("POST", "/v1/sandboxes/nope/exec", json!({"command": ["true"]}).to_string().as_bytes()).0, 404);
    assert_eq!(api.call("POST", "/v1/sandboxes/box/exec", b"{\"command\": \"not a list\"}").0, 400);

    // Streamed: NDJSON lines (or server-sent events) as the command runs, the exit last.
    let stream_exec = |accept: &str, body: Value| {
        let mut s = UnixStream::connect(&socket).unwrap();
        let body = body.to_string();
        write!(s, "POST /v1/sandboxes/box/exec HTTP/1.1\r\nHost: o\r\nAuthorization: Bearer {}\r\nAccept: {accept}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", api.token, body.len()).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        raw
    };
    let raw = stream_exec("application/x-ndjson", json!({"command": ["sh", "-c", "echo a; sleep 0.2; echo b >&2; exit 4"]}));
    assert!(raw.contains("content-type: application/x-ndjson"), "{raw}");
    let lines: Vec<Value> = raw.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["started", "stdout", "stderr", "exited"], "{raw}");
    assert_eq!((lines[1]["data"].as_str(), lines[2]["data"].as_str(), lines[3]["exitCode"].as_i64()), (Some("a\n"), Some("b\n"), Some(4)));
    let raw = stream_exec("text/event-stream", json!({"command": ["cat"], "stdin": "piped"}));
    assert!(raw.contains("event: started\n") && raw.contains("event: stdout\ndata: {\"data\":\"piped\",\"type\":\"stdout\"}") && raw.contains("event: exited"), "{raw}");
    // A client that stops reading a stream holds its own command, nobody else's; when it goes,
    // its command goes.
    let mut stalled = UnixStream::connect(&socket).unwrap();
    let body = json!({"command": ["yes", "stalled"]}).to_string();
    write!(stalled, "POST /v1/sandboxes/box/exec HTTP/1.1\r\nHost: o\r\nAuthorization: Bearer {}\r\nAccept: application/x-ndjson\r\nContent-Length: {}\r\n\r\n{body}", api.token, body.len()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(api.exec("box", json!({"command": ["echo", "others go on"]}))["stdout"], "others go on\n");
    assert_eq!(api.call("GET", "/v1/sandboxes", b"").0, 200);
    assert_eq!(api.exec("box", json!({"command": ["sh", "-c", "pidof yes >/dev/null && echo running"]}))["stdout"], "running\n");
    drop(stalled);
    env.wait_for("the stalled client's command to be killed", Duration::from_secs(10), || {
        api.exec("box", json!({"command": ["sh", "-c", "pidof yes >/dev/null && echo running || echo gone"]}))["stdout"] == "gone\n"
    });

    // The event log of the sandbox, and its (empty: no main process) log.
    let (status, _, events) = http(&socket, "GET", "/v1/sandboxes/box/events", Some(&api.token), b"");
    assert_eq!(status, 200);
    let reasons: Vec<String> = String::from_utf8_lossy(&events).lines().map(|l| json_of(l.as_bytes())["reason"].as_str().unwrap().to_string()).collect();
    assert!(reasons.contains(&"Started".to_string()), "{reasons:?}");
    assert_eq!(http(&socket, "GET", "/v1/sandboxes/box/logs", Some(&api.token), b"").0, 200);
    assert_eq!(http(&socket, "GET", "/v1/sandboxes/nope/events", Some(&api.token), b"").0, 404);

    // Files: binary-safe both ways, list, stat, remove; paths stay inside the sandbox.
    let bytes: Vec<u8> = (0..=255u8).collect();
    assert_eq!(api.call("PUT", "/v1/sandboxes/box/files?path=/tmp/all.bin&mode=600", &bytes).0, 204);
    let (status, _, back) = http(&socket, "GET", "/v1/sandboxes/box/files?path=/tmp/all.bin", Some(&api.token), b"");
    assert_eq!((status, back), (200, bytes.clone()));
    let (_, st) = api.call("GET", "/v1/sandboxes/box/files/stat?path=/tmp/all.bin", b"");
    assert_eq!((st["size"].as_u64(), st["mode"].as_u64().map(|m| m & 0o777)), (Some(256), Some(0o600)), "{st}");
    let (_, listing) = api.call("GET", "/v1/sandboxes/box/files/list?path=/tmp", b"");
    assert!(listing.as_array().unwrap().iter().any(|e| e["name"] == "all.bin"), "{listing}");
    let marker = format!("escape-{}", rand_u32());
    let climbing = format!("/v1/sandboxes/box/files?path=/../../../../../tmp/{marker}");
    assert_eq!(api.call("PUT", &climbing, b"inside").0, 204);
    assert!(!Path::new("/tmp").join(&marker).exists(), "a climbing path never reaches the host");
    assert_eq!(api.exec("box", json!({"command": ["cat", format!("/tmp/{marker}")]}))["stdout"], "inside");
    assert_eq!(api.call("PUT", "/v1/sandboxes/box/files?path=tmp/relative", b"x").0, 400);
    assert_eq!(api.call("GET", "/v1/sandboxes/box/files", b"").0, 400, "a missing path is a problem, not a crash");
    assert_eq!(api.call("GET", "/v1/sandboxes/box/files?path=/no/such/file", b"").0, 404);
    assert_eq!(api.call("DELETE", "/v1/sandboxes/box/files?path=/tmp/all.bin", b"").0, 204);
    assert_eq!(api.call("GET", "/v1/sandboxes/box/files/stat?path=/tmp/all.bin", b"").0, 404);

    // Files stream both ways: above --max-body (1 MiB here) up to --max-file-body (4 MiB).
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    assert_eq!(api.call("PUT", "/v1/sandboxes/box/files?path=/tmp/big", &big).0, 204);
    let (status, _, back) = http(&socket, "GET", "/v1/sandboxes/box/files?path=/tmp/big", Some(&api.token), b"");
    assert!(status == 200 && back == big, "3 MiB back byte for byte ({status}, {} bytes)", back.len());
    let too_big = vec![b'x'; 5 << 20];
    let (status, kind, _) = http(&socket, "PUT", "/v1/sandboxes/box/files?path=/tmp/too-big", Some(&api.token), &too_big);
    assert_eq!((status, kind.as_str()), (413, "application/problem+json"));
    assert_eq!(api.call("GET", "/v1/sandboxes/box/files/stat?path=/tmp/too-big", b"").0, 404, "a refused body leaves no partial file");
    // Chunked, with no length announced: cut off at the bound as it streams, nothing left.
    let chunked = env.dir.path().join("chunked.bin");
    std::fs::write(&chunked, &too_big).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket"])
        .arg(&socket)
        .args(["-X", "PUT", "-H", &format!("Authorization: Bearer {}", api.token), "-H", "Transfer-Encoding: chunked", "--data-binary"])
        .arg(format!("@{}", chunked.display()))
        .arg("http://o/v1/sandboxes/box/files?path=/tmp/chunked")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "413");
    assert_eq!(api.call("GET", "/v1/sandboxes/box/files/stat?path=/tmp/chunked", b"").0, 404, "a body cut at the bound leaves no partial file");
    assert_eq!(api.call("GET", "/v1/sandboxes/box/files?path=/tmp", b"").0, 400, "a directory is listed, not read");
    // The device nodes bound in from the host are not the client's to chmod.
    use std::os::unix::fs::MetadataExt;
    let host_null = std::fs::metadata("/dev/null").unwrap().mode();
    let (status, problem) = api.call("PUT", "/v1/sandboxes/box/files?path=/dev/null&mode=600", b"");
    assert_eq!((status, problem["kind"].as_str()), (403, Some("permission-denied")), "{problem}");
    assert_eq!(std::fs::metadata("/dev/null").unwrap().mode(), host_null, "the host's /dev/null is untouched");
    // Bodies read whole stay under --max-body.
    let (status, kind, _) = http(&socket, "POST", "/v1/sandboxes/box/exec", Some(&api.token), &big);
    assert_eq!((status, kind.as_str()), (413, "application/problem+json"));

    // The OpenAPI document: what docs/openapi.json holds, behind the token like every route.
    let (status, kind, doc) = http(&socket, "GET", "/openapi.json", Some(&api.token), b"");
    assert_eq!((status, kind.as_str()), (200, "application/json"));
    let committed = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")).unwrap();
    assert!(doc == committed, "/openapi.json is the committed document");
    assert_eq!(http(&socket, "GET", "/openapi.json", None, b"").0, 401);

    // Many requests at once: every one answered.
    let threads: Vec<_> = (0..1000)
        .map(|i| {
            let (socket, token) = (socket.clone(), api.token.clone());
            std::thread::spawn(move || {
                let path = if i % 2 == 0 { "/v1/sandboxes/box".to_string() } else { "/v1/sandboxes/box/files/stat?path=/etc/passwd".to_string() };
                http(&socket, "GET", &path, Some(&token), b"").0
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "1000 concurrent requests all answered: {statuses:?}");

    // Stop, start, and a sandbox the API did not make. The server keeps a handle per name
    // between requests: across a stop and a start its answers are a new handle's, and files go
    // to the running instance.
    assert_eq!(api.call("PUT", "/v1/sandboxes/box/files?path=/tmp/kept", b"before").0, 204);
    assert_eq!(api.call("POST", "/v1/sandboxes/box/stop", b"").0, 204);
    assert_eq!(api.call("GET", "/v1/sandboxes/box", b"").1["status"], "Stopped");
    for path in ["/v1/sandboxes/box/files?path=/tmp/kept", "/v1/sandboxes/box/files/stat?path=/tmp/kept"] {
        let (status, problem) = api.call("GET", path, b"");
        assert_eq!((status, problem["kind"].as_str()), (409, Some("not-running")), "{path} of a stopped sandbox: {problem}");
    }
    assert_eq!(api.call("POST", "/v1/sandboxes/box/start", b"").0, 204);
    assert_eq!(api.call("GET", "/v1/sandboxes/box", b"").1["status"], "Running");
    std::thread::sleep(Duration::from_millis(1100)); // past the handle's wait before it looks for a short path again
    let (status, _, back) = http(&socket, "GET", "/v1/sandboxes/box/files?path=/tmp/kept", Some(&api.token), b"");
    assert_eq!((status, back.as_slice()), (200, &b"before"[..]), "the writable layer outlives a restart");
    assert_eq!(api.call("PUT", "/v1/sandboxes/box/files?path=/tmp/after", b"after the restart").0, 204);
    let (status, out) = api.call("POST", "/v1/sandboxes/box/exec", json!({"command": ["cat", "/tmp/after"]}).to_string().as_bytes());
    assert_eq!((status, out["stdout"].as_str()), (200, Some("after the restart")), "written into the running instance: {out}");
    let f = env.file("cli.yaml", &sandbox_yaml("from-file", ""));
    env.ok(&["apply", "-f", f.to_str().unwrap()]);
    let (status, problem) = api.call("DELETE", "/v1/sandboxes/from-file", b"");
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("declared by"), "{problem}");

    // A whole manifest, as its own source: applied again, it prunes what it no longer declares.
    let two = format!("{}---\n{}", sandbox_yaml("team-a", ""), sandbox_yaml("team-b", ""));
    let (status, plan) = api.call("POST", "/v1/apply?source=team&dryRun=true", two.as_bytes());
    assert_eq!((status, plan["items"].as_array().map(|i| i.len())), (200, Some(2)), "{plan}");
    assert!(env.get().iter().all(|v| v["name"] != "team-a"), "a dry run changes nothing");
    let (status, report) = api.call("POST", "/v1/apply?source=team", two.as_bytes());
    assert_eq!(status, 200, "{report}");
    let results = |r: &Value| r["actions"].as_array().unwrap().iter().map(|a| (a["name"].as_str().unwrap().to_string(), a["result"].as_str().unwrap().to_string())).collect::<Vec<_>>();
    assert_eq!(results(&report), [("team-a".to_string(), "created".to_string()), ("team-b".into(), "created".into())], "{report}");
    let (_, report) = api.call("POST", "/v1/apply?source=team", sandbox_yaml("team-a", "").as_bytes());
    assert!(results(&report).contains(&("team-b".to_string(), "removed".to_string())), "{report}");
    assert_eq!(api.call("GET", "/v1/sandboxes/team-b", b"").0, 404);
    assert_eq!(api.call("POST", "/v1/apply?source=other", sandbox_yaml("team-a", "").as_bytes()).0, 409, "another source's sandbox");
    assert_eq!(api.call("POST", "/v1/apply?source=Bad/Name", b"").0, 400);
    assert_eq!(api.call("DELETE", "/v1/sandboxes/team-a", b"").0, 204);

    // Removed behind the server's back (by the CLI): its kept handle answers 404; made again
    // under the same name, requests reach the new sandbox.
    env.ok(&["rm", "--force", "box"]);
    for (method, path) in [("GET", "/v1/sandboxes/box/files?path=/tmp/kept"), ("POST", "/v1/sandboxes/box/exec")] {
        let (status, problem) = api.call(method, path, json!({"command": ["true"]}).to_string().as_bytes());
        assert_eq!((status, problem["kind"].as_str()), (404, Some("not-found")), "{method} {path} after rm: {problem}");
    }
    assert_eq!(api.call("POST", "/v1/sandboxes", &manifest("box", &image)).0, 201);
    assert_eq!(api.call("GET", "/v1/sandboxes/box/files/stat?path=/tmp/kept", b"").0, 404, "a new sandbox, not the old one's files");
    assert_eq!(api.call("PUT", "/v1/sandboxes/box/files?path=/tmp/kept", b"new").0, 204);
    let (_, out) = api.call("POST", "/v1/sandboxes/box/exec", json!({"command": ["cat", "/tmp/kept"]}).to_string().as_bytes());
    assert_eq!(out["stdout"].as_str(), Some("new"), "{out}");

    assert_eq!(api.call("DELETE", "/v1/sandboxes/box", b"").0, 204);
    let (status, problem) = api.call("GET", "/v1/sandboxes/box", b"");
    assert_eq!((status, problem["kind"].as_str()), (404, Some("not-found")));
    assert!(env.get().iter().all(|v| v["name"] != "box"), "nothing left behind: {:?}", env.get());
}

/// Without --allow-host-paths a client names no host path at all, and the parser's answers do
/// not tell it what exists; without a token the API refuses to listen beyond loopback.
#[test]
fn host_paths_and_unauthenticated_tcp_are_refused() {
    let mut env = Env::new();
    let token = "a-token-from-the-environment-0123";
    env.extra_env.push(("ORCHESTRATOR_API_TOKEN".into(), token.into()));
    let _server = Server::start(&env, &[]);
    let api = Client { socket: env.data_dir().join("api.sock"), token: token.into() };
    assert!(!env.data_dir().join("api.token").exists(), "a token from the environment writes no file");
    for image in ["dir:/", "dir:/no/such/dir", "oci-layout:/etc", "./rootfs"] {
        let (status, problem) = api.call("POST", "/v1/sandboxes", &manifest("x", image));
        assert_eq!((status, problem["kind"].as_str()), (403, Some("host-path-forbidden")), "{image}: {problem}");
        assert!(!problem["detail"].as_str().unwrap().contains("does not exist"), "{problem}");
    }
    let with_host_volume = json!({"apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": {"name": "x"}, "spec": {"image": "busybox:1", "volumes": [{"hostPath": "/etc", "mountPath": "/h", "readOnly": true}]}});
    let (status, problem) = api.call("POST", "/v1/sandboxes", with_host_volume.to_string().as_bytes());
    assert_eq!((status, problem["kind"].as_str()), (403, Some("host-path-forbidden")), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("hostPath"), "{problem}");

    let out = env.run(&["serve", "--listen", "0.0.0.0:0", "--insecure-no-auth", "--socket", env.dir.path().join("other.sock").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing --insecure-no-auth on 0.0.0.0:0"), "{out:?}");
    let out = env.run(&["serve"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already listens"), "one server per socket: {out:?}");
}

fn curl(addr: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "-w", "\n%{http_code}"]).args(args.iter().map(|a| a.replace("http://localhost:8080", &format!("http://{addr}")))).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

fn curl_json(addr: &str, args: &[&str]) -> Value {
    let (status, body) = curl(addr, args);
    assert_eq!(status, 200, "{args:?}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// OpenSandbox's README calls, unchanged but for the address, against `serve --listen
/// 127.0.0.1:PORT --insecure-no-auth`: `/run`, a session whose files persist between runs,
/// env and cwd set between runs, the file routes, and a DELETE (and an idle expiry) that
/// leave nothing behind.
#[test]
fn opensandbox_readme_calls_work_unchanged() {
    let env = Env::new();
    let image = format!("dir:{}", rootfs().display());
    let server = Server::start(&env, &["--listen", "127.0.0.1:0", "--insecure-no-auth", "--default-image", &image, "--session-idle", "3", "--max-sessions", "1"]);
    assert!(server.log_text().contains("without authentication"), "{}", server.log_text());
    let a = server.tcp();
    let post = |path: &str, body: &str| curl_json(&a, &["-X", "POST", &format!("http://localhost:8080{path}"), "-H", "Content-Type: application/json", "-d", body]);

    assert_eq!(curl(&a, &["http://localhost:8080/health"]), (200, "OK".into()));
    let out = post("/run", r#"{"command": ["/bin/echo", "Hello from sandbox!"]}"#);
    assert_eq!(out, json!({"stdout": "Hello from sandbox!\n", "stderr": "", "exit_code": 0, "signal": null}));
    let out = post("/run", r#"{"command": ["/bin/sh", "-c", "ulimit -n; ulimit -f; kill -9 $$"], "time": 5000, "mem": 2097152, "fsize": 10240, "nofile": 64}"#);
    assert_eq!((out["stdout"].as_str(), out["exit_code"].as_i64(), out["signal"].as_i64()), (Some("64\n20480\n"), None, Some(9)), "{out}");

    let id = post("/sessions", r#"{"env": {"MY_VAR": "hello"}}"#)["session_id"].as_str().unwrap().to_string();
    post(&format!("/sessions/{id}/run"), r#"{"command": ["/bin/sh", "-c", "echo hello > /tmp/test.txt"]}"#);
    let out = post(&format!("/sessions/{id}/run"), r#"{"command": ["/bin/cat", "/tmp/test.txt"]}"#);
    assert_eq!(out["stdout"], "hello\n", "the file persists across runs");
    assert_eq!(curl(&a, &["-X", "POST", &format!("http://localhost:8080/sessions/{id}/env"), "-H", "Content-Type: application/json", "-d", r#"{"env": {"GH_TOKEN": "abc"}}"#]).0, 200);
    assert_eq!(curl(&a, &["-X", "POST", &format!("http://localhost:8080/sessions/{id}/cwd"), "-H", "Content-Type: application/json", "-d", r#"{"cwd": "/tmp"}"#]).0, 200);
    let out = post(&format!("/sessions/{id}/run"), r#"{"command": ["/bin/sh", "-c", "echo $MY_VAR $GH_TOKEN; pwd"]}"#);
    assert_eq!(out["stdout"], "hello abc\n/tmp\n");

    let content = base64::engine::general_purpose::STANDARD.encode(b"print('hi')\n");
    let w = post(&format!("/sessions/{id}/files/write"), &json!({"path": "/work/app.py", "content": content}).to_string());
    assert_eq!(w, json!({"success": true}));
    let r = curl_json(&a, &[&format!("http://localhost:8080/sessions/{id}/files/read?path=/work/app.py")]);
    assert_eq!(r["content"], content.as_str());
    let l = curl_json(&a, &[&format!("http://localhost:8080/sessions/{id}/files/list?path=/work")]);
    assert_eq!(l, json!({"files": [{"name": "app.py", "path": "/work/app.py", "is_directory": false, "size": 12}]}));
    let escape = curl(&a, &[&format!("http://localhost:8080/sessions/{id}/files/read?path=../../../../etc/hostname")]);
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert!(escape.0 == 404 || !escape.1.contains(&base64::engine::general_purpose::STANDARD.encode(hostname.as_bytes())), "the host's files stay out of reach: {escape:?}");

    // The wrong kind of path is the client's mistake, not the server's.
    assert_eq!(curl(&a, &[&format!("http://localhost:8080/sessions/{id}/files/read?path=/")]).0, 400, "a directory read as a file");
    assert_eq!(curl(&a, &[&format!("http://localhost:8080/sessions/{id}/files/list?path=/work/app.py")]).0, 400, "a file listed as a directory");

    let info = curl_json(&a, &[&format!("http://localhost:8080/sessions/{id}")]);
    assert_eq!((info["id"].as_str(), info["cwd"].as_str(), info["env"]["MY_VAR"].as_str()), (Some(id.as_str()), Some("/tmp"), Some("hello")));
    assert!(curl_json(&a, &["http://localhost:8080/sessions"]).as_array().unwrap().iter().any(|s| s["id"] == id.as_str()));
    assert_eq!(curl(&a, &["-X", "DELETE", &format!("http://localhost:8080/sessions/{id}")]).0, 204);
    assert_eq!(curl(&a, &[&format!("http://localhost:8080/sessions/{id}")]).0, 404);
    assert_eq!(curl(&a, &["-X", "POST", &format!("http://localhost:8080/sessions/{id}/run"), "-d", r#"{"command": ["true"]}"#]).0, 404);
    env.wait_for("/run's used sandboxes to go (removed after the answer)", Duration::from_secs(20), || env.get().is_empty());

    // An idle session expires (3 s here) and takes its sandbox with it.
    let idle = post("/sessions", "{}")["session_id"].as_str().unwrap().to_string();
    assert_eq!(env.get().len(), 1);
    // Sessions are sandboxes: no more than --max-sessions (1 here) at once.
    let (status, body) = curl(&a, &["-X", "POST", "http://localhost:8080/sessions", "-d", "{}"]);
    assert_eq!(status, 429, "{body}");
    assert_eq!(env.get().len(), 1, "the refused session made no sandbox");
    env.wait_for("the idle session to expire", Duration::from_secs(20), || curl(&a, &[&format!("http://localhost:8080/sessions/{idle}")]).0 == 404 && env.get().is_empty());
}

/// The Python SDK (host/sdk/python), installed with pip from the checkout into a fresh
/// virtual environment, runs its pytest suite against a real server: create, exec (and
/// streamed), files, stop and start, typed errors, the asyncio client, remove.
#[test]
fn the_python_sdk_installs_from_the_checkout_and_drives_a_real_server() {
    let env = Env::new();
    let rootfs = rootfs();
    let root = rootfs.parent().unwrap().to_str().unwrap().to_string();
    let _server = Server::start(&env, &["--allow-host-paths", &root]);
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/python");
    // Debian's python3 with its httpx and pytest (tests/setup.sh installs them); the venv
    // sees them, pip installs only our package, offline.
    let venv = env.dir.path().join("venv");
    let st = Command::new("/usr/bin/python3").args(["-m", "venv", "--system-site-packages"]).arg(&venv).status().unwrap();
    assert!(st.success(), "python3 -m venv (python3-venv is in tests/setup.sh's packages)");
    let out = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"])
        .arg(&sdk)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "pip install from the checkout: {}", String::from_utf8_lossy(&out.stderr));
    let token = std::fs::read_to_string(env.data_dir().join("api.token")).unwrap();
    let out = Command::new(venv.join("bin/python"))
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(sdk.join("tests"))
        .current_dir(env.dir.path())
        .env("ORCHESTRATOR_API_SOCKET", env.data_dir().join("api.sock"))
        .env("ORCHESTRATOR_API_TOKEN", token.trim())
        .env("ORCHESTRATOR_TEST_IMAGE", format!("dir:{}", rootfs.display()))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success() && text.contains("5 passed"), "the SDK's tests:\n{text}");
    assert!(env.get().is_empty(), "the SDK's sandboxes are gone: {:?}", env.get());
}

/// The MCP server, driven by the official Python MCP client (tests/mcp/client.py) as an agent
/// would, both ways it is offered: `orchestrator mcp` on stdio, and `/mcp` on the API
/// (streamable HTTP, behind the token). Tools list, create, run a command and code, files,
/// refusals (a host path, a relative path, an unknown sandbox), delete.
#[test]
fn an_mcp_client_drives_sandboxes_over_stdio_and_http() {
    let env = Env::new();
    let python = PathBuf::from("/var/cache/orchestrator-dev/mcp-client/bin/python");
    assert!(python.exists(), "the MCP client is missing: run `bash tests/mcp/venv.sh /var/cache/orchestrator-dev` (tests/setup.sh test does)");
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/mcp/client.py");
    let image = format!("dir:{}", rootfs().display());
    let root = rootfs().parent().unwrap().to_str().unwrap().to_string();

    let out = Command::new(&python)
        .arg(&client)
        .args(["stdio", BIN, "mcp", "--default-image", &image, "--allow-host-paths", &root])
        .env("ORCHESTRATOR_DATA_DIR", env.data_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "stdio: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    let server = Server::start(&env, &["--listen", "127.0.0.1:0", "--default-image", &image, "--allow-host-paths", &root]);
    let token = std::fs::read_to_string(env.data_dir().join("api.token")).unwrap();
    let url = format!("http://{}/mcp", server.tcp());
    let out = Command::new(&python).arg(&client).args(["http", &url, token.trim()]).output().unwrap();
    assert!(out.status.success(), "http: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The token guards /mcp like every other route.
    let (status, body) = curl(&server.tcp(), &["-X", "POST", &url, "-H", "Content-Type: application/json", "-d", "{}"]);
    assert_eq!(status, 401, "{body}");
    assert!(env.get().is_empty(), "the agent's sandboxes are gone: {:?}", env.get());
}

/// A warm pool (`--warm-pool IMAGE=N`) hands `/run` a ready sandbox, removes it after the
/// answer and refills; `POST /v1/sandboxes` of the pool's spec gets a pooled sandbox under the
/// name it asked for; a request the pool cannot serve (other memory) is a counted miss that
/// still runs; a new server removes what an earlier one's pool left.
#[test]
fn a_warm_pool_serves_run_and_refills() {
    let env = Env::new();
    let image = format!("dir:{}", rootfs().display());
    let socket = env.data_dir().join("api.sock");
    let pools = || json_of(&http(&socket, "GET", "/v1/pools", None, b"").2);
    let root = rootfs().parent().unwrap().to_str().unwrap().to_string();
    let server = Server::start(&env, &["--insecure-no-auth", "--default-image", &image, "--warm-pool", &format!("{image}=2"), "--allow-host-paths", &root]);
    env.wait_for("the pool to fill", Duration::from_secs(30), || pools()[0]["ready"] == 2);
    let run = |body: &str| {
        let (status, _, out) = http(&socket, "POST", "/run", None, body.as_bytes());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
        json_of(&out)
    };
    for i in 0..3 {
        let out = run(&format!(r#"{{"command": ["/bin/sh", "-c", "echo run {i}; ls /tmp | wc -l"]}}"#));
        assert_eq!(out["stdout"], format!("run {i}\n0\n"), "each run gets a clean sandbox: {out}");
    }
    // POST /v1/sandboxes takes a pooled sandbox when its spec is the pool's (the image, 2 GiB
    // and a memory layer): it becomes the sandbox asked for, under its name everywhere.
    env.wait_for("the pool to refill", Duration::from_secs(30), || pools()[0]["ready"] == 2);
    let hits = pools()[0]["hits"].as_u64().unwrap();
    let manifest = |name: &str, memory: &str| json!({"apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": {"name": name, "labels": {"team": "a"}}, "spec": {"image": image, "memory": memory, "isolation": "namespace", "writableLayer": "memory"}}).to_string();
    let (status, _, out) = http(&socket, "POST", "/v1/sandboxes", None, manifest("fast", "2Gi").as_bytes());
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&out));
    let view = json_of(&out);
    assert_eq!((view["name"].as_str(), view["source"].as_str(), view["labels"]["team"].as_str(), view["status"].as_str()), (Some("fast"), Some("api"), Some("a"), Some("Running")), "{view}");
    assert_eq!(pools()[0]["hits"].as_u64(), Some(hits + 1), "served from the pool");
    let exec = |name: &str, script: &str| {
        let (status, _, out) = http(&socket, "POST", &format!("/v1/sandboxes/{name}/exec"), None, json!({"command": ["sh", "-c", script]}).to_string().as_bytes());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
        json_of(&out)["stdout"].as_str().unwrap().to_string()
    };
    assert_eq!(exec("fast", "hostname; echo $HOSTNAME; ls /tmp | wc -l"), "fast\nfast\n0\n", "its hostname, its commands' HOSTNAME, a clean /tmp");
    assert_eq!(env.ok(&["exec", "fast", "--", "hostname"]), "fast\n", "the CLI finds it by its new name");
    assert!(env.ok(&["events", "fast"]).contains("from the warm pool"));
    let instance = env.sandbox("fast")["instance"].clone();
    env.ok(&["get"]);
    assert_eq!(env.sandbox("fast")["instance"], instance, "a reconcile leaves it as it is");
    assert_eq!(http(&socket, "POST", "/v1/sandboxes", None, manifest("fast", "2Gi").as_bytes()).0, 409, "a name in use, before a pooled sandbox is spent");
    // Another spec gets a fresh sandbox: other memory, or the pool's but on a disk.
    let on_disk = json!({"apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": {"name": "disk"}, "spec": {"image": image, "memory": "2Gi", "isolation": "namespace"}}).to_string();
    assert_eq!(http(&socket, "POST", "/v1/sandboxes", None, on_disk.as_bytes()).0, 201);
    assert_eq!(pools()[0]["hits"].as_u64(), Some(hits + 1), "a disk layer is not the pool's");
    assert_eq!(http(&socket, "DELETE", "/v1/sandboxes/disk", None, b"").0, 204);
    let (status, _, out) = http(&socket, "POST", "/v1/sandboxes", None, manifest("slow", "64Mi").as_bytes());
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&out));
    assert_eq!(pools()[0]["hits"].as_u64(), Some(hits + 1), "not from the pool");
    assert_eq!(exec("slow", "hostname"), "slow\n");
    for name in ["fast", "slow"] {
        assert_eq!(http(&socket, "DELETE", &format!("/v1/sandboxes/{name}"), None, b"").0, 204);
    }

    let out = run(r#"{"command": ["/bin/echo", "small"], "mem": 65536}"#);
    assert_eq!(out["stdout"], "small\n");
    env.wait_for("the pool to refill", Duration::from_secs(30), || pools()[0]["ready"] == 2);
    let v = pools();
    assert!(v[0]["hits"].as_u64().unwrap() >= 2 && v[0]["misses"].as_u64().unwrap() >= 1, "{v}");
    env.wait_for("used sandboxes to go", Duration::from_secs(20), || env.get().len() == 2);
    assert!(env.get().iter().all(|s| s["source"] == "api-pool"), "{:?}", env.get());
    let old: Vec<String> = env.get().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
    drop(server);
    // A new server removes what the old pool left, and only that: its own pool fills beside.
    let _again = Server::start(&env, &["--insecure-no-auth", "--default-image", &image, "--warm-pool", &format!("{image}=2")]);
    env.wait_for("the old pool's sandboxes to go and the new pool to fill", Duration::from_secs(30), || {
        let names: Vec<String> = env.get().iter().map(|s| s["name"].as_str().unwrap().to_string()).collect();
        names.len() == 2 && names.iter().all(|n| !old.contains(n)) && pools()[0]["ready"] == 2
    });
    assert_eq!(run(r#"{"command": ["/bin/echo", "again"]}"#)["stdout"], "again\n");
}

/// Removals of used sandboxes wait for a gap between requests, but what a `/run` left running
/// ends at once: with the server kept busy (a request every few milliseconds, never a gap), a
/// background process a `/run` started is gone within seconds while its sandbox still waits;
/// once the requests stop, the sandbox goes too.
#[test]
fn what_a_run_leaves_running_ends_while_its_sandbox_waits_for_removal() {
    let env = Env::new();
    let image = format!("dir:{}", rootfs().display());
    let socket = env.data_dir().join("api.sock");
    let _server = Server::start(&env, &["--insecure-no-auth", "--default-image", &image]);
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let (busy, socket) = (busy.clone(), socket.clone());
        std::thread::spawn(move || {
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                http(&socket, "GET", "/health", None, b"");
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let (status, _, out) = http(&socket, "POST", "/run", None, br#"{"command": ["/bin/sh", "-c", "sleep 987654 >/dev/null 2>&1 & echo started"]}"#);
    assert_eq!((status, json_of(&out)["stdout"].as_str()), (200, Some("started\n")), "{}", String::from_utf8_lossy(&out));
    let leftover = || {
        std::fs::read_dir("/proc").unwrap().filter_map(Result::ok).any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == b"sleep\0987654\0"))
    };
    env.wait_for("the process the run left to end", Duration::from_secs(10), || !leftover());
    assert_eq!(env.get().len(), 1, "its sandbox still waits for a gap between requests: {:?}", env.get());
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    poller.join().unwrap();
    env.wait_for("the used sandbox to go once the requests stop", Duration::from_secs(20), || env.get().is_empty());
}

impl Client {
    /// The client of a server started with its generated token.
    fn of(env: &Env) -> Client {
        let token = std::fs::read_to_string(env.data_dir().join("api.token")).unwrap().trim().to_string();
        Client { socket: env.data_dir().join("api.sock"), token }
    }
}

/// A WebSocket conversation with `GET /v1/sandboxes/{name}/exec/ws` over the Unix socket.
mod ws {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use std::path::Path;
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;

    pub type Socket = tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>;

    /// The upgrade, or the HTTP status that refused it.
    pub async fn connect(socket: &Path, token: &str, sandbox: &str) -> Result<Socket, u16> {
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let mut req = format!("ws://orchestrator/v1/sandboxes/{sandbox}/exec/ws").into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        match tokio_tungstenite::client_async(req, stream).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(e) => panic!("upgrade: {e}"),
        }
    }

    pub async fn start(socket: &Path, token: &str, sandbox: &str, command: Value) -> Socket {
        let mut ws = connect(socket, token, sandbox).await.expect("upgrade");
        ws.send(Message::Text(command.to_string().into())).await.unwrap();
        let started = next_json(&mut ws).await;
        assert_eq!(started["type"], "started", "{started}");
        ws
    }

    pub async fn send_json(ws: &mut Socket, v: Value) {
        ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    pub async fn send_bytes(ws: &mut Socket, data: &[u8]) {
        ws.send(Message::Binary(data.to_vec().into())).await.unwrap();
    }

    /// What the conversation gave until the server closed: (stdout, stderr, JSON messages,
    /// the close code).
    pub struct Transcript {
        pub stdout: Vec<u8>,
        pub stderr: Vec<u8>,
        pub messages: Vec<Value>,
        pub close: Option<u16>,
    }

    impl Transcript {
        pub fn exited(&self) -> &Value {
            self.messages.iter().find(|m| m["type"] == "exited").unwrap_or_else(|| panic!("no exit in {:?}", self.messages))
        }
    }

    /// Reads until the server closes (or `until` says the output so far is enough).
    pub async fn read(ws: &mut Socket, until: impl Fn(&[u8]) -> bool) -> Transcript {
        let mut t = Transcript { stdout: Vec::new(), stderr: Vec::new(), messages: Vec::new(), close: None };
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(60), ws.next()).await.expect("a message within 60 s");
            match msg {
                Some(Ok(Message::Binary(b))) => match b.first() {
                    Some(1) => t.stdout.extend_from_slice(&b[1..]),
                    Some(2) => t.stderr.extend_from_slice(&b[1..]),
                    other => panic!("output on stream {other:?}"),
                },
                Some(Ok(Message::Text(s))) => t.messages.push(serde_json::from_str(s.as_str()).unwrap()),
                Some(Ok(Message::Close(frame))) => {
                    t.close = frame.map(|f| u16::from(f.code));
                    return t;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return t,
            }
            if until(&t.stdout) {
                return t;
            }
        }
    }

    pub async fn next_json(ws: &mut Socket) -> Value {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("a message within 30 s") {
                Some(Ok(Message::Text(s))) => return serde_json::from_str(s.as_str()).unwrap(),
                Some(Ok(Message::Close(f))) => return json!({"type": "closed", "code": f.map(|f| u16::from(f.code))}),
                Some(Ok(_)) => {}
                other => panic!("expected a JSON message, got {other:?}"),
            }
        }
    }
}

/// Interactive commands over a WebSocket, as a browser terminal or an agent's shell tool
/// drives them: stdin as typed, binary output per stream, a terminal that resizes, signals,
/// end of input, the exit; megabytes both ways without a stall; a client that leaves kills
/// its command; bad first messages and controls get clear errors.
#[test]
fn interactive_commands_run_over_a_websocket() {
    let env = Env::new();
    let rootfs = rootfs();
    let root = rootfs.parent().unwrap().to_str().unwrap().to_string();
    let _server = Server::start(&env, &["--allow-host-paths", &root]);
    let api = Client::of(&env);
    let image = format!("dir:{}", rootfs.display());
    assert_eq!(api.call("POST", "/v1/sandboxes", &manifest("term", &image)).0, 201);
    let (socket, token) = (api.socket.clone(), api.token.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // stdin as binary and as text, end of input, the exit and a normal close.
        let mut w = ws::start(&socket, &token, "term", json!({"command": ["cat"]})).await;
        ws::send_bytes(&mut w, b"hello\n").await;
        let t = ws::read(&mut w, |out| out.ends_with(b"hello\n")).await;
        assert_eq!(t.stdout, b"hello\n");
        ws::send_json(&mut w, json!({"type": "bogus"})).await;
        let problem = ws::next_json(&mut w).await;
        assert_eq!((problem["type"].as_str(), problem["kind"].as_str()), (Some("error"), Some("bad-request")), "a bad control is answered, the session goes on: {problem}");
        ws::send_json(&mut w, json!({"type": "stdin", "data": "two\n"})).await;
        ws::send_json(&mut w, json!({"type": "eof"})).await;
        let t = ws::read(&mut w, |_| false).await;
        assert_eq!((t.stdout.as_slice(), t.exited()["exitCode"].as_i64(), t.close), (&b"two\n"[..], Some(0), Some(1000)));

        // A terminal: its size from the start message, then resized; stderr is the terminal.
        let mut w = ws::start(&socket, &token, "term", json!({"command": ["sh"], "tty": true, "rows": 33, "cols": 101, "env": {"PS1": "$ "}})).await;
        ws::send_bytes(&mut w, b"stty size\n").await;
        ws::read(&mut w, |out| String::from_utf8_lossy(out).contains("33 101")).await;
        ws::send_json(&mut w, json!({"type": "resize", "rows": 40, "cols": 120})).await;
        ws::send_bytes(&mut w, b"stty size; echo oops >&2; exit 7\n").await;
        let t = ws::read(&mut w, |_| false).await;
        let shown = String::from_utf8_lossy(&t.stdout);
        assert!(shown.contains("40 120") && shown.contains("oops") && t.stderr.is_empty(), "{shown:?}");
        assert_eq!(t.exited()["exitCode"], 7);

        // Signals, by name.
        let mut w = ws::start(&socket, &token, "term", json!({"command": ["sleep", "30"]})).await;
        ws::send_json(&mut w, json!({"type": "signal", "signal": "TERM"})).await;
        let t = ws::read(&mut w, |_| false).await;
        assert_eq!(t.exited()["signal"], 15, "{:?}", t.messages);

        // Megabytes both ways: 4 MiB in (64 KiB messages) while output flows, 3 MB out.
        let mut w = ws::start(&socket, &token, "term", json!({"command": ["wc", "-c"]})).await;
        let chunk = vec![b'z'; 64 << 10];
        for _ in 0..64 {
            ws::send_bytes(&mut w, &chunk).await;
        }
        ws::send_json(&mut w, json!({"type": "eof"})).await;
        let t = ws::read(&mut w, |_| false).await;
        assert_eq!(String::from_utf8_lossy(&t.stdout).trim(), "4194304");
        let mut w = ws::start(&socket, &token, "term", json!({"command": ["sh", "-c", "head -c 3000000 /dev/zero; echo done >&2"]})).await;
        let t = ws::read(&mut w, |_| false).await;
        assert_eq!((t.stdout.len(), t.stderr.as_slice()), (3_000_000, &b"done\n"[..]));

        // A client that leaves kills its command.
        let w = ws::start(&socket, &token, "term", json!({"command": ["sh", "-c", "echo $$ > /tmp/ws.pid; exec sleep 300"]})).await;
        let alive = |want: &str| api.exec("term", json!({"command": ["sh", "-c", "test -s /tmp/ws.pid && kill -0 $(cat /tmp/ws.pid) 2>/dev/null && echo alive || echo gone"]}))["stdout"] == want;
        for _ in 0..50 {
            if alive("alive\n") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(alive("alive\n"), "the command runs while its client is connected");
        drop(w);
        let mut gone = false;
        for _ in 0..50 {
            if alive("gone\n") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "the command of a client that left was killed");

        // Refusals: before the upgrade (no sandbox, no token), and a bad first message.
        assert_eq!(ws::connect(&socket, &token, "nope").await.err(), Some(404));
        assert_eq!(ws::connect(&socket, "wrong-token-0123456789abcdef", "term").await.err(), Some(401));
        let mut w = ws::connect(&socket, &token, "term").await.unwrap();
        ws::send_json(&mut w, json!({"command": []})).await;
        let problem = ws::next_json(&mut w).await;
        assert!(problem["type"] == "error" && problem["detail"].as_str().unwrap().contains("empty"), "{problem}");
        assert_eq!(ws::next_json(&mut w).await["code"], 1008);
        let mut w = ws::connect(&socket, &token, "term").await.unwrap();
        ws::send_json(&mut w, json!({"command": ["/no/such/program"]})).await;
        assert_eq!(ws::next_json(&mut w).await["kind"], "spawn-failed");
    });
    assert_eq!(http(&socket, "GET", "/v1/sandboxes/term/exec/ws", Some(&api.token), b"").0, 400, "a plain GET is told to upgrade");

    // A file streamed out of a sandbox that goes away mid-transfer ends as a failed transfer
    // (no final chunk), never as a short body that looks whole.
    let mut s = UnixStream::connect(&socket).unwrap();
    write!(s, "GET /v1/sandboxes/term/files?path=/dev/zero HTTP/1.1\r\nHost: o\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", api.token).unwrap();
    let mut raw = vec![0u8; 2 << 20];
    s.read_exact(&mut raw).unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&raw[..64]));
    assert_eq!(api.call("DELETE", "/v1/sandboxes/term", b"").0, 204);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(!rest.ends_with(b"0\r\n\r\n"), "the body must not end as if complete ({} more bytes)", rest.len());
}

/// Where `just plugins` put the test components.
fn component(name: &str) -> PathBuf {
    let dir = std::env::var_os("ORCHESTRATOR_TEST_PLUGINS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} is missing: build the test plugins with `just plugins` (tests/setup.sh test does)", path.display());
    path
}

/// Images through the API: a pull from a real registry with its progress streamed, the list,
/// a sandbox from the pulled image; host paths and unknown images refused clearly. Plugins:
/// the list, and a network policy's decisions (allow, deny with its reason, DNS), as `plugin
/// eval` gives them; the server resolves no names for clients.
#[test]
fn images_pull_with_progress_and_plugins_decide_through_the_api() {
    let mut env = Env::new();
    let reg = registry::Registry::start();
    let reference = reg.push("busybox", "api/busybox:1", false);
    env.extra_env.push(("ORCHESTRATOR_INSECURE_REGISTRIES".into(), reg.host()));
    let guard = env.file(
        "guard.yaml",
        &format!("apiVersion: orchestrator/v1\nkind: Plugin\nmetadata: {{ name: guard }}\nspec:\n  component: {}\n  config: {{ ports: '443', allow-domains: example.com }}\n", component("egress-guard-c").display()),
    );
    env.ok(&["apply", "-f", guard.to_str().unwrap()]);
    let _server = Server::start(&env, &[]);
    let api = Client::of(&env);

    // A pull with its progress as NDJSON: per-layer progress, then the image.
    let body = json!({"reference": reference}).to_string();
    let mut s = UnixStream::connect(&api.socket).unwrap();
    write!(s, "POST /v1/images/pull HTTP/1.1\r\nHost: o\r\nAuthorization: Bearer {}\r\nAccept: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", api.token, body.len()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let events: Vec<Value> = raw.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = events.last().unwrap_or_else(|| panic!("no events: {raw}"));
    assert_eq!((last["type"].as_str(), last["image"]["reference"].as_str()), (Some("pulled"), Some(reference.as_str())), "{raw}");
    let progress: Vec<&Value> = events.iter().filter(|e| e["type"] == "progress").collect();
    assert!(!progress.is_empty() && progress.iter().all(|p| p["layer"].as_str().unwrap().starts_with("sha256:")), "{raw}");
    assert!(progress.iter().any(|p| p["done"] == p["total"]), "each layer's progress ends complete: {raw}");
    let (_, images) = api.call("GET", "/v1/images", b"");
    assert!(images.as_array().unwrap().iter().any(|i| i["reference"] == reference.as_str() && i["layers"].as_u64() >= Some(1)), "{images}");
    // Pulled again, collected: the image itself.
    let (status, view) = api.call("POST", "/v1/images/pull", body.as_bytes());
    assert_eq!((status, view["digest"].as_str()), (200, last["image"]["digest"].as_str()), "{view}");
    // A sandbox from it.
    assert_eq!(api.call("POST", "/v1/sandboxes", &manifest("pulled", &reference)).0, 201);
    assert_eq!(api.exec("pulled", json!({"command": ["echo", "from the registry"]}))["stdout"], "from the registry\n");
    assert_eq!(api.call("DELETE", "/v1/sandboxes/pulled", b"").0, 204);
    // Refusals: host paths (no root allowed), an image that does not exist, an empty reference.
    let layouts = format!("oci-layout:{}:busybox", layouts().display());
    for r in [layouts.as_str(), "oci-archive:/etc/passwd", "./here"] {
        let (status, problem) = api.call("POST", "/v1/images/pull", json!({"reference": r}).to_string().as_bytes());
        assert_eq!((status, problem["kind"].as_str()), (403, Some("host-path-forbidden")), "{r}: {problem}");
    }
    let (status, problem) = api.call("POST", "/v1/images/pull", json!({"reference": format!("{}/api/busybox:no-such-tag", reg.host())}).to_string().as_bytes());
    assert_eq!((status, problem["kind"].as_str()), (422, Some("image-unavailable")), "{problem}");
    assert_eq!(api.call("POST", "/v1/images/pull", br#"{"reference": ""}"#).0, 400);

    // Plugins: the list, and decisions as `plugin eval` makes them.
    let (_, plugins) = api.call("GET", "/v1/plugins", b"");
    assert_eq!((plugins[0]["name"].as_str(), plugins[0]["implements"].clone()), (Some("guard"), json!(["network-policy"])), "{plugins}");
    let eval = |q: Value| api.call("POST", "/v1/plugins/guard/eval", q.to_string().as_bytes());
    let (status, v) = eval(json!({"connect": "93.184.216.34:443", "domain": "example.com"}));
    assert_eq!((status, v["allowed"].as_bool(), v["action"].as_str()), (200, Some(true), Some("allow")), "{v}");
    let (_, v) = eval(json!({"connect": "10.0.0.1:443"}));
    assert!(v["allowed"] == false && v["reason"].as_str().unwrap().contains("private address"), "{v}");
    let (_, v) = eval(json!({"dns": "evil.test"}));
    assert_eq!(v["allowed"], false, "{v}");
    assert_eq!(eval(json!({"connect": "example.com:443"})).0, 400, "no name resolution for clients");
    assert_eq!(api.call("POST", "/v1/plugins/nope/eval", br#"{"dns": "x.test"}"#).0, 404);

    // The server's own figures count both: image bytes pulled, and the plugin's calls.
    let (_, _, body) = http(&api.socket, "GET", "/metrics", Some(&api.token), b"");
    let text = String::from_utf8_lossy(&body);
    // Summed over the label sets that start so (one per plugin call kind).
    let value = |prefix: &str| -> f64 { text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum() };
    assert!(value("orchestrator_image_pull_bytes_total ") > 0.0);
    assert!(value("orchestrator_plugin_call_duration_seconds_count{plugin=\"guard\",call=\"") >= 3.0);
}

/// `--listen` with `--tls-cert/--tls-key`: HTTPS that a client verifies with the operator's
/// certificate; plain HTTP and unverified clients fail while the server keeps serving; bad key
/// files stop `serve` with the file and the reason.
#[test]
fn https_on_listen_is_verified_with_the_operators_certificate() {
    let env = Env::new();
    let (cert, key) = (env.dir.path().join("cert.pem"), env.dir.path().join("key.pem"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=orchestrator-test", "-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl (Debian's openssl, which ca-certificates depends on)");
    assert!(st.success());
    let server = Server::start(&env, &["--listen", "127.0.0.1:0", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert!(server.log_text().contains("API on https://127.0.0.1:"), "{}", server.log_text());
    let addr = server.tcp();
    let token = Client::of(&env).token;
    let curl_code = |args: &[&str]| {
        let out = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let cacert = cert.to_str().unwrap();
    let auth = format!("Authorization: Bearer {token}");
    assert_eq!(curl_code(&["--cacert", cacert, "-H", &auth, &format!("https://{addr}/v1/sandboxes")]), (Some(0), "200".into()));
    assert_eq!(curl_code(&["--cacert", cacert, &format!("https://{addr}/v1/sandboxes")]), (Some(0), "401".into()));
    assert_eq!(curl_code(&[&format!("https://{addr}/health")]).0, Some(60), "an unverified certificate is refused by the client");
    assert_ne!(curl_code(&[&format!("http://{addr}/health")]), (Some(0), "200".into()), "no plain HTTP on the TLS port");
    // A client that connects and says nothing does not hold the listener.
    let _silent = std::net::TcpStream::connect(&addr).unwrap();
    assert_eq!(curl_code(&["--cacert", cacert, &format!("https://{addr}/health")]), (Some(0), "200".into()), "still serving");

    let other = env.dir.path().join("other.sock");
    let out = env.run(&["serve", "--socket", other.to_str().unwrap(), "--listen", "127.0.0.1:0", "--tls-cert", cert.to_str().unwrap(), "--tls-key", cert.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--tls-key") && err.contains("cert.pem"), "{err}");
    let out = env.run(&["serve", "--socket", other.to_str().unwrap(), "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--listen"), "TLS without --listen: {out:?}");
}

/// Schemathesis (PyPI, pinned), pointed at the committed OpenAPI document, sends generated and
/// mutated requests to every documented operation but those that pull images or follow a
/// stream forever: no answer is a server error, and the server keeps serving its sandboxes.
/// The server runs in a test-made network namespace whose only route leads to the test's own
/// internet, so nothing a generated `/run` command does reaches past this machine.
#[test]
fn generated_requests_from_the_openapi_document_get_no_server_error() {
    let st = PathBuf::from("/var/cache/orchestrator-dev/schemathesis/bin/st");
    assert!(st.exists(), "schemathesis is missing: run `bash tests/api/schemathesis-venv.sh /var/cache/orchestrator-dev` (tests/setup.sh test does)");
    let net = testnet::TestNet::new("stapi");
    let mut env = Env::new();
    env.netns = Some(net.orch_ns());
    let rootfs = rootfs();
    let root = rootfs.parent().unwrap().to_str().unwrap().to_string();
    let image = format!("dir:{}", rootfs.display());
    let server = Server::start(&env, &["--listen", "127.0.0.1:8080", "--default-image", &image, "--session-idle", "5", "--allow-host-paths", &root]);
    let api = Client::of(&env);
    assert_eq!(api.call("POST", "/v1/sandboxes", &manifest("box", &image)).0, 201);
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    // Image pulls, manifests (they may name registry images) and follow-streams are covered by
    // the tests above; here they would only wait on timeouts.
    let excluded = "^/v1/images/pull$|^/v1/apply$|^/v1/sandboxes$|^/v1/events$|/events$|/logs$";
    let out = Command::new("nsenter")
        .arg(format!("--net={}", net.orch_ns()))
        .arg("--")
        .arg(&st)
        .arg("run")
        .arg(&doc)
        .args(["--url", "http://127.0.0.1:8080", "-H", &format!("Authorization: Bearer {}", api.token)])
        .args(["--checks", "not_a_server_error", "--exclude-path-regex", excluded])
        .args(["--max-time", "60", "--seed", "1", "--request-timeout", "30", "--workers", "1", "--no-color"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "schemathesis found problems:\n{text}\nserver log:\n{}", server.log_text());
    assert!(text.contains("passed") && !text.contains("Server error"), "{text}");
    assert_eq!(http(&api.socket, "GET", "/health", None, b"").0, 200, "still serving");
    assert_eq!(api.call("GET", "/v1/sandboxes/box", b"").1["status"], "Running", "its sandboxes untouched");
}

/// `GET /metrics` parses with the Prometheus client library's own OpenMetrics parser and holds
/// a running sandbox's series, with its labels, that move when the sandbox works.
#[test]
fn metrics_parse_with_a_real_prometheus_parser_and_hold_the_sandbox_series() {
    let env = Env::new();
    let _server = Server::start(&env, &[]);
    let socket = env.data_dir().join("api.sock");
    let token = std::fs::read_to_string(env.data_dir().join("api.token")).unwrap().trim().to_string();
    let yaml = sandbox_yaml("metered", "  memory: 64Mi\n  command: [sleep, '3600']\n").replace("metadata:\n  name: metered\n", "metadata:\n  name: metered\n  labels: { team: ml, app.kubernetes.io/name: agent }\n");
    let path = env.file("metered.yaml", &yaml);
    env.ok(&["apply", "-f", path.to_str().unwrap()]);
    // Some CPU time and memory of its own.
    env.ok(&["exec", "metered", "--", "sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; head -c 8000000 /dev/zero | tail -c 1 >/dev/null"]);
    let parse = |text: &[u8]| -> Value {
        let script = "import json, sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\nout = {}\nfor fam in parse(sys.stdin.read()):\n    for s in fam.samples:\n        if s.labels.get('sandbox') == 'metered' or s.name == 'orchestrator_sandboxes':\n            out[s.name + ('/' + s.labels.get('status') if 'status' in s.labels else '')] = {'value': s.value, 'labels': s.labels}\nprint(json.dumps(out))";
        let mut child = Command::new("/usr/bin/python3").args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(text).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "the Prometheus parser refused the exposition: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(text));
        json_of(&out.stdout)
    };
    let (status, kind, body) = http(&socket, "GET", "/metrics", Some(&token), b"");
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let m = parse(&body);
    let cpu = &m["orchestrator_sandbox_cpu_seconds_total"];
    assert!(cpu["value"].as_f64().unwrap() > 0.0, "{m}");
    assert_eq!(cpu["labels"]["isolation"], "namespace");
    assert_eq!(cpu["labels"]["label_team"], "ml");
    assert_eq!(cpu["labels"]["label_app_kubernetes_io_name"], "agent");
    assert!(m["orchestrator_sandbox_memory_bytes"]["value"].as_f64().unwrap() > 0.0, "{m}");
    assert_eq!(m["orchestrator_sandbox_memory_limit_bytes"]["value"].as_f64().unwrap(), 64.0 * 1024.0 * 1024.0);
    assert!(m["orchestrator_sandbox_tasks"]["value"].as_f64().unwrap() >= 1.0, "{m}");
    assert_eq!(m["orchestrator_sandboxes/running"]["value"].as_f64().unwrap(), 1.0, "{m}");
    // The counter moves with work.
    let before = cpu["value"].as_f64().unwrap();
    env.ok(&["exec", "metered", "--", "sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"]);
    let (_, _, body) = http(&socket, "GET", "/metrics", Some(&token), b"");
    let after = parse(&body)["orchestrator_sandbox_cpu_seconds_total"]["value"].as_f64().unwrap();
    assert!(after > before, "{before} -> {after}");
    // Disk bytes grow with a write that reaches the disk.
    let written = |m: &Value| m["orchestrator_sandbox_disk_write_bytes_total"]["value"].as_f64().unwrap_or_else(|| panic!("no disk series: {m}"));
    let before = written(&parse(&body));
    env.ok(&["exec", "metered", "--", "dd", "if=/dev/zero", "of=/tmp/ballast", "bs=1M", "count=8", "conv=fsync"]);
    let (_, _, body) = http(&socket, "GET", "/metrics", Some(&token), b"");
    let after = written(&parse(&body));
    assert!(after - before >= 8.0 * 1024.0 * 1024.0, "disk writes {before} -> {after}");
    // Like every route but /health, it needs the token.
    assert_eq!(http(&socket, "GET", "/metrics", None, b"").0, 401);
    // The orchestrator's own: API requests by route template (reconcile and plugin-call
    // histograms appear once this process has done either; tests/gitops.rs sees them).
    let (_, _, body) = http(&socket, "GET", "/metrics", Some(&token), b"");
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("orchestrator_api_requests_total{method=\"GET\",route=\"/metrics\",code=\"4xx\"} 1"), "{text}");
    assert!(text.contains("orchestrator_api_request_duration_seconds_bucket{"), "{text}");
    assert!(text.contains("# TYPE orchestrator_image_pull_bytes counter"), "{text}");

    // `top`: the same figures from the CLI, CPU as a share over its interval.
    let rows: Value = serde_json::from_str(&env.ok(&["top", "--once", "-o", "json", "-n", "0.3"])).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["name"] == "metered").unwrap_or_else(|| panic!("{rows}"));
    assert!(row["memoryBytes"].as_u64().unwrap() > 0 && row["pids"].as_u64().unwrap() >= 1, "{row}");
    assert_eq!(row["memoryLimitBytes"].as_u64(), Some(64 << 20));
    assert!(row["cpuPercent"].as_f64().unwrap() >= 0.0);
    let table = env.ok(&["top", "--once", "-n", "0.2"]);
    assert!(table.starts_with("NAME") && table.contains("metered") && table.contains("64.0 MiB") && table.contains("DISK WRITE"), "{table}");
    assert!(row["diskWriteBytes"].as_u64().unwrap() >= 8 << 20, "{row}");
}

/// Named volumes over the API: made, mounted by an API sandbox, listed with their users, and
/// not deleted from under it without `force`.
#[test]
fn volumes_are_made_listed_and_guarded_through_the_api() {
    let env = Env::new();
    let root = rootfs();
    let allowed = root.parent().unwrap().to_str().unwrap().to_string();
    let _server = Server::start(&env, &["--allow-host-paths", &allowed]);
    let token = std::fs::read_to_string(env.data_dir().join("api.token")).unwrap();
    let api = Client { socket: env.data_dir().join("api.sock"), token: token.trim().into() };
    let (status, v) = api.call("POST", "/v1/volumes", json!({"name": "cache", "size": "48Mi"}).to_string().as_bytes());
    assert_eq!(status, 201, "{v}");
    assert_eq!((v["size"].as_u64(), v["shared"].as_bool()), (Some(48 << 20), Some(false)), "{v}");
    let (status, v) = api.call("POST", "/v1/volumes", json!({"name": "cache"}).to_string().as_bytes());
    assert_eq!((status, v["kind"].as_str()), (409, Some("conflict")), "{v}");
    for size in ["1Mi", "16Ti", "17Ti"] {
        let (status, v) = api.call("POST", "/v1/volumes", json!({"name": "odd", "size": size}).to_string().as_bytes());
        assert_eq!(status, 400, "{size}: {v}");
    }
    assert_eq!(api.call("GET", "/v1/volumes/odd", b"").0, 404, "a refused volume leaves nothing");

    let spec = json!({"apiVersion": "orchestrator/v1", "kind": "Sandbox", "metadata": {"name": "user"}, "spec": {"image": format!("dir:{}", root.display()), "isolation": "namespace", "volumes": [{"name": "cache", "mountPath": "/cache"}, {"tmpfs": "/fast", "size": "4Mi"}]}});
    let (status, v) = api.call("POST", "/v1/sandboxes", spec.to_string().as_bytes());
    assert_eq!(status, 201, "{v}");
    let out = api.exec("user", json!({"command": ["sh", "-c", "echo kept > /cache/f && cat /cache/f && df -k /fast | tail -1"]}));
    assert!(out["stdout"].as_str().unwrap().starts_with("kept\n"), "{out}");
    let (_, list) = api.call("GET", "/v1/volumes", b"");
    assert_eq!(list[0]["users"], json!(["user"]), "{list}");
    assert_eq!(list[0]["mounted"], true, "{list}");

    let (status, v) = api.call("DELETE", "/v1/volumes/cache", b"");
    assert_eq!((status, v["kind"].as_str()), (409, Some("conflict")), "{v}");
    assert!(v["detail"].as_str().unwrap().contains("user"), "{v}");
    let (status, _) = api.call("DELETE", "/v1/volumes/nope", b"");
    assert_eq!(status, 404);
    let (status, _) = api.call("DELETE", "/v1/sandboxes/user", b"");
    assert_eq!(status, 204);
    let (status, _) = api.call("DELETE", "/v1/volumes/cache", b"");
    assert_eq!(status, 204);
    let (status, _) = api.call("GET", "/v1/volumes/cache", b"");
    assert_eq!(status, 404);
}
