//! Shared test fixtures: a fresh data directory per test, the real `orchestrator` binary, and
//! the busybox root filesystem built from Debian's busybox-static by the project's own script.
//! Everything runs for real: real namespaces, cgroups, shims and agents.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

/// The configuration a test's library calls use: the test's own data directory, the real
/// binary for shims (a test binary cannot be one).
pub fn library_config(env: &Env) -> orchestrator::Config {
    let mut c = orchestrator::Config::new(env.data_dir());
    c.binary = Some(PathBuf::from(BIN));
    c.plugin_cache = Some(plugin_cache());
    c
}

/// A runtime for a test's library calls.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

/// The busybox rootfs, built on first use (cached outside the work tree).
pub fn rootfs() -> PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            let path = std::env::var_os("ORCHESTRATOR_TEST_ROOTFS")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/orchestrator-dev/rootfs/busybox"));
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/busybox-rootfs.sh");
            let st = Command::new("bash").arg(&script).arg(&path).status().expect("running busybox-rootfs.sh");
            assert!(st.success(), "building the busybox rootfs failed; is busybox-static installed? (`just setup-test`)");
            path
        })
        .clone()
}

/// Debian 12 with python3, curl and the CA bundle (tests/images/debian-python.sh; cached).
pub fn debian_rootfs() -> PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            let cache = PathBuf::from("/var/cache/orchestrator-dev");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/debian-python.sh");
            let st = Command::new("bash").arg(&script).arg(&cache).stdout(Stdio::null()).status().expect("running debian-python.sh");
            assert!(st.success(), "building the Debian rootfs failed (`just setup-test`)");
            cache.join("rootfs/debian-python")
        })
        .clone()
}

/// The test OCI layouts (built once per machine by tests/images/oci-images.py from the busybox
/// rootfs): tags busybox, multi and the hostile images.
pub fn layouts() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from("/var/cache/orchestrator-dev/oci-test");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/oci-images.py");
        let st = Command::new("python3").arg(&script).arg(rootfs()).arg(&out).status().expect("python3");
        assert!(st.success(), "building the test OCI layouts failed");
        out.join("layout")
    })
    .clone()
}

/// Compiled plugin code shared by all tests (compiling a 12-18 MB interpreter component takes
/// seconds; every test has its own data directory).
pub fn plugin_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-cache")
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "these tests create namespaces and cgroups: run them as root (`just test`)");
}

pub struct Env {
    pub dir: tempfile::TempDir,
    /// Run the orchestrator inside this network namespace (`nsenter --net=`), with these extra
    /// variables: network tests keep every packet on this machine (tests/common/testnet.rs).
    pub netns: Option<String>,
    pub extra_env: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Env {
        require_root();
        let _ = rootfs();
        let dir = tempfile::Builder::new().prefix("orch-test-").tempdir_in("/tmp").expect("tempdir");
        Env { dir, netns: None, extra_env: Vec::new() }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={ns}")).arg("--").arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        c.envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c.args(args).env("ORCHESTRATOR_DATA_DIR", self.data_dir()).env("ORCHESTRATOR_PLUGIN_CACHE", plugin_cache()).stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("running orchestrator")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "orchestrator {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a file under the test directory and returns its path.
    pub fn file(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn get(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["get", "-o", "json"])).expect("get -o json is JSON")
    }

    pub fn sandbox(&self, name: &str) -> serde_json::Value {
        self.get().into_iter().find(|o| o["name"] == name).unwrap_or_else(|| panic!("no sandbox {name}"))
    }

    pub fn status(&self, name: &str) -> String {
        self.sandbox(name)["status"].as_str().unwrap_or("").to_string()
    }

    pub fn instance_dir(&self, name: &str) -> PathBuf {
        let inst = self.sandbox(name)["instance"].as_str().expect("instance").to_string();
        self.data_dir().join("sandboxes").join(inst)
    }

    /// The shim's pid, or None while the sandbox or its shim does not exist yet (for polling).
    pub fn try_shim_pid(&self, name: &str) -> Option<i32> {
        let objs = self.get();
        let inst = objs.iter().find(|o| o["name"] == name)?["instance"].as_str()?.to_string();
        let pid = std::fs::read_to_string(self.data_dir().join("sandboxes").join(inst).join("shim.pid")).ok()?;
        pid.trim().parse().ok()
    }

    pub fn shim_pid(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.instance_dir(name).join("shim.pid")).unwrap().trim().parse().unwrap()
    }

    /// Runs `sh -c SCRIPT` in a sandbox: (exit code, stdout, stderr).
    pub fn sh(&self, name: &str, script: &str) -> (i32, String, String) {
        let out = self.run(&["exec", name, "--", "sh", "-c", script]);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Leave nothing running: delete every sandbox this test created.
        if let Ok(out) = self.cmd(&["get", "all", "-o", "json"]).output() {
            if let Ok(objs) = serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout) {
                let names: Vec<String> = objs.iter().filter_map(|o| o["name"].as_str().map(String::from)).collect();
                if !names.is_empty() {
                    let mut args = vec!["delete"];
                    args.extend(names.iter().map(String::as_str));
                    let _ = self.cmd(&args).output();
                }
            }
        }
    }
}

pub fn sandbox_yaml(name: &str, extra: &str) -> String {
    format!(
        "apiVersion: orchestrator/v1\nkind: Sandbox\nmetadata:\n  name: {name}\nspec:\n  image: dir:{}\n  isolation: namespace\n{extra}",
        rootfs().display()
    )
}

pub fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true)
}

/// Whether anything of an instance is left on the host: processes, mounts, cgroups.
pub fn leftovers(instance: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mounts.contains(instance) {
        found.push(format!("a mount of {instance}"));
    }
    for ctrl in ["memory", "cpu", "cpuacct", "pids", "devices", "blkio", "unified", ""] {
        let p = Path::new("/sys/fs/cgroup").join(ctrl).join("orchestrator").join(instance);
        if p.exists() {
            found.push(format!("cgroup {}", p.display()));
        }
    }
    // A loop device still backed by the instance's writable disk.
    for dev in loop_devices_backed_by(instance) {
        found.push(format!("loop device {dev}"));
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(instance) {
                found.push(format!("process {name}"));
            }
        }
    }
    found
}

/// Loop devices whose backing file's path contains `needle` (an instance id, a file name).
pub fn loop_devices_backed_by(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
            if backing.contains(needle) {
                out.push(format!("/dev/{name} ({})", backing.trim()));
            }
        }
    }
    out
}
