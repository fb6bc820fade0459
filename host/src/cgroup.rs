//! Per-sandbox cgroups for memory, CPU, pids and devices on both cgroup v2 (unified, most
//! hosts) and cgroup v1 (one hierarchy per controller, as on these machines; when such a host
//! also mounts a v2 hierarchy at `unified/`, the sandbox gets a group there too, for the v2
//! device program). Owns creating them with limits, putting the sandbox's init in, killing what
//! is left and removing them.

pub mod devices;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROOT: &str = "/sys/fs/cgroup";
/// Parent group of every sandbox's cgroup.
pub const PARENT: &str = "orchestrator";
/// `cpuacct` may be the same directory as `cpu` (co-mounted) or its own hierarchy; either works.
const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids", "devices", "blkio"];
/// Where a hybrid host mounts its v2 hierarchy beside the v1 controllers.
const HYBRID_UNIFIED: &str = "unified";
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

pub fn detect() -> Version {
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        Version::V2
    } else {
        Version::V1
    }
}

#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// Only [`devices::SANDBOX_DEVICES`] may be opened (namespace sandboxes; a microVM's VMM
    /// needs /dev/kvm, and its guest's devices are the guest kernel's own).
    pub restrict_devices: bool,
}

/// The cgroup(s) of one sandbox instance.
#[derive(Debug, Clone)]
pub struct Cgroup {
    version: Version,
    /// The cgroup filesystem root (`/sys/fs/cgroup`).
    root: PathBuf,
    /// One directory per controller on v1, a single one on v2.
    dirs: Vec<PathBuf>,
    /// A hybrid host's v2 group (v1 only).
    unified: Option<PathBuf>,
}

pub(crate) fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {}: {e}", path.display())))
}

impl Cgroup {
    /// The cgroup of `instance`, whether or not it exists.
    pub fn of(instance: &str) -> Cgroup {
        Cgroup::at(Path::new(ROOT), detect(), instance)
    }

    /// The cgroup of `instance` under a given cgroup filesystem root and version.
    pub fn at(root: &Path, version: Version, instance: &str) -> Cgroup {
        let (dirs, unified) = match version {
            Version::V2 => (vec![root.join(PARENT).join(instance)], None),
            Version::V1 => {
                let unified = root.join(HYBRID_UNIFIED);
                let unified = unified.join("cgroup.procs").exists().then(|| unified.join(PARENT).join(instance));
                (V1_CONTROLLERS.iter().map(|c| root.join(c).join(PARENT).join(instance)).chain(unified.clone()).collect(), unified)
            }
        };
        Cgroup { version, root: root.to_path_buf(), dirs, unified }
    }

    /// The instance's cgroup, created with `limits` after removing whatever a previous shim of
    /// this instance left behind when it died.
    pub fn fresh(instance: &str, limits: &Limits) -> io::Result<Cgroup> {
        let cgroup = Cgroup::of(instance);
        cgroup.destroy().map_err(|e| io::Error::new(e.kind(), format!("removing a stale cgroup: {e}")))?;
        cgroup.create(limits)?;
        Ok(cgroup)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn create(&self, limits: &Limits) -> io::Result<()> {
        if self.version == Version::V2 {
            // Controllers must be enabled on every ancestor's subtree_control.
            let parent = self.root.join(PARENT);
            fs::create_dir_all(&parent)?;
            for dir in [self.root.as_path(), parent.as_path()] {
                let _ = fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids +io");
            }
        }
        for dir in &self.dirs {
            fs::create_dir_all(dir).map_err(|e| io::Error::new(e.kind(), format!("creating cgroup {}: {e}", dir.display())))?;
        }
        let file = |ctrl: &str, name: &str| -> PathBuf {
            match self.version {
                Version::V2 => self.dirs[0].join(name),
                Version::V1 => self.dirs[V1_CONTROLLERS.iter().position(|c| *c == ctrl).unwrap_or(0)].join(name),
            }
        };
        if let Some(mem) = limits.memory {
            match self.version {
                Version::V2 => {
                    write(&file("memory", "memory.max"), &mem.to_string())?;
                    let _ = write(&file("memory", "memory.swap.max"), "0");
                }
                Version::V1 => write(&file("memory", "memory.limit_in_bytes"), &mem.to_string())?,
            }
        }
        if let Some(cpus) = limits.cpus {
            let quota = ((cpus * CPU_PERIOD_US as f64) as u64).max(1000);
            match self.version {
                Version::V2 => write(&file("cpu", "cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?,
                Version::V1 => {
                    write(&file("cpu", "cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&file("cpu", "cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
        }
        if let Some(pids) = limits.pids {
            write(&file("pids", "pids.max"), &pids.to_string())?;
        }
        if limits.restrict_devices {
            self.restrict_devices()?;
        }
        Ok(())
    }

    /// The device policy, before any process joins. Fails closed: a group whose policy could
    /// not be set is an error, except the extra v2 program of a hybrid host, whose v1 list
    /// already holds the line (a kernel without cgroup BPF there gets a warning).
    fn restrict_devices(&self) -> io::Result<()> {
        let rules = devices::SANDBOX_DEVICES;
        match self.version {
            Version::V2 => devices::apply_v2(&self.dirs[0], rules),
            Version::V1 => {
                let dir = self.controller("devices").ok_or_else(|| io::Error::other("no devices controller"))?;
                let v1_applied = self.root.join("devices").join("devices.deny").exists();
                if v1_applied {
                    devices::apply_v1(dir, rules)?;
                }
                match (&self.unified, v1_applied) {
                    (Some(unified), true) => {
                        if let Err(e) = devices::apply_v2(unified, rules) {
                            tracing::warn!("the v2 device program (besides the v1 device list): {e}");
                        }
                        Ok(())
                    }
                    // The v2 program is the only policy then: its failure is the group's.
                    (Some(unified), false) => devices::apply_v2(unified, rules),
                    (None, true) => Ok(()),
                    (None, false) => Err(io::Error::other("this host mounts no cgroup devices controller and no cgroup v2: device access cannot be restricted")),
                }
            }
        }
    }

    pub fn add(&self, pid: i32) -> io::Result<()> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Moves the calling process back to the root cgroup(s), so a process that put itself in
    /// (a microVM's shim) can then remove its group without being killed with it.
    pub fn leave(&self) -> io::Result<()> {
        let me = std::process::id().to_string();
        match self.version {
            Version::V2 => write(&self.root.join("cgroup.procs"), &me),
            Version::V1 => {
                let hybrid = self.unified.as_ref().map(|_| HYBRID_UNIFIED);
                for ctrl in V1_CONTROLLERS.iter().copied().chain(hybrid) {
                    let procs = self.root.join(ctrl).join("cgroup.procs");
                    if procs.exists() {
                        write(&procs, &me)?;
                    }
                }
                Ok(())
            }
        }
    }

    pub fn exists(&self) -> bool {
        self.dirs.iter().any(|d| d.exists())
    }

    pub fn pids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for dir in &self.dirs {
            if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Kills every process still in the cgroup and removes it. Safe to call repeatedly.
    pub fn destroy(&self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = self.pids();
            if pids.is_empty() {
                break;
            }
            if self.version == Version::V2 {
                let _ = fs::write(self.dirs[0].join("cgroup.kill"), "1");
            }
            for pid in pids {
                // SAFETY: SIGKILL to processes that the kernel says are in this sandbox's cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("processes in the sandbox's cgroup would not die"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for dir in &self.dirs {
            let mut tries = 0;
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // EBUSY while the last exited tasks are being released.
                    Err(_) if tries < 200 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(io::Error::new(e.kind(), format!("removing cgroup {}: {e}", dir.display()))),
                }
            }
        }
        Ok(())
    }

    /// Memory in use, bytes (for status and metrics).
    pub fn memory_usage(&self) -> Option<u64> {
        let (dir, name) = match self.version {
            Version::V2 => (&self.dirs[0], "memory.current"),
            Version::V1 => (&self.dirs[0], "memory.usage_in_bytes"),
        };
        fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
    }

    /// The most memory in use at once since the group was made, bytes (kernels before 5.19
    /// have no `memory.peak` on v2: then `None`).
    pub fn memory_peak(&self) -> Option<u64> {
        let name = match self.version {
            Version::V2 => "memory.peak",
            Version::V1 => "memory.max_usage_in_bytes",
        };
        fs::read_to_string(self.dirs[0].join(name)).ok()?.trim().parse().ok()
    }

    /// The directory of a v1 controller (`memory`, `cpu`, `cpuacct`, `pids`) or the v2 group.
    fn controller(&self, v1_name: &str) -> Option<&PathBuf> {
        match self.version {
            Version::V2 => self.dirs.first(),
            Version::V1 => V1_CONTROLLERS.iter().position(|c| *c == v1_name).and_then(|i| self.dirs.get(i)),
        }
    }

    /// CPU time used by the group, microseconds.
    pub fn cpu_usage_us(&self) -> Option<u64> {
        match self.version {
            Version::V2 => {
                let stat = fs::read_to_string(self.controller("cpu")?.join("cpu.stat")).ok()?;
                stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok())
            }
            Version::V1 => {
                let ns: u64 = fs::read_to_string(self.controller("cpuacct")?.join("cpuacct.usage")).ok()?.trim().parse().ok()?;
                Some(ns / 1000)
            }
        }
    }

    /// Block I/O the group's tasks issued, summed over devices: v2's `io.stat` (buffered writes
    /// included, through cgroup writeback). None on v1: its blkio throttle counters stay at 0
    /// unless a throttle is set on the device (measured here: 8 MiB of direct writes, `Total
    /// 0`), so the caller reads the sandbox's own loop device instead ([`loop_device_io`]).
    pub fn io_counters(&self) -> Option<IoCounters> {
        match self.version {
            Version::V2 => parse_io_stat(&fs::read_to_string(self.dirs[0].join("io.stat")).ok()?),
            Version::V1 => None,
        }
    }

    /// Tasks in the group now.
    pub fn pids_current(&self) -> Option<u64> {
        fs::read_to_string(self.controller("pids")?.join("pids.current")).ok()?.trim().parse().ok()
    }
}

/// Block I/O counters of a group (the shape a shim reports them in).
pub type IoCounters = guest_agent::protocol::DiskSample;

/// v2 `io.stat`: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N` per device.
fn parse_io_stat(text: &str) -> Option<IoCounters> {
    let mut c = IoCounters::default();
    for field in text.split_whitespace() {
        let Some((k, v)) = field.split_once('=') else { continue };
        let v: u64 = v.parse().unwrap_or(0);
        match k {
            "rbytes" => c.read_bytes += v,
            "wbytes" => c.write_bytes += v,
            "rios" => c.read_ops += v,
            "wios" => c.write_ops += v,
            _ => {}
        }
    }
    Some(c)
}

/// The I/O of loop device `dev` (`/dev/loopN`) since its counters were `base` (the device's
/// `stat` line then), while it still backs `image`: a namespace sandbox's writable disk is its
/// own device, so these are its disk reads and writes as they reach the disk (after the page
/// cache).
pub fn loop_device_io(dev: &str, base: &str, image: &Path) -> Option<IoCounters> {
    let sys = Path::new("/sys/block").join(dev.trim().trim_start_matches("/dev/"));
    let backing = fs::read_to_string(sys.join("loop/backing_file")).ok()?;
    let image = fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
    if Path::new(backing.trim()) != image {
        return None;
    }
    let now = parse_block_stat(&fs::read_to_string(sys.join("stat")).ok()?)?;
    let base = parse_block_stat(base).unwrap_or_default();
    Some(IoCounters {
        read_bytes: now.read_bytes.saturating_sub(base.read_bytes),
        write_bytes: now.write_bytes.saturating_sub(base.write_bytes),
        read_ops: now.read_ops.saturating_sub(base.read_ops),
        write_ops: now.write_ops.saturating_sub(base.write_ops),
    })
}

/// `/sys/block/DEV/stat`: reads completed, merged, sectors read, ms, writes completed, merged,
/// sectors written, ... (sectors of 512 bytes whatever the device's own).
fn parse_block_stat(text: &str) -> Option<IoCounters> {
    let f: Vec<u64> = text.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect();
    (f.len() >= 7).then(|| IoCounters { read_ops: f[0], read_bytes: f[2] * 512, write_ops: f[4], write_bytes: f[6] * 512 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_counters_parse_on_both_versions() {
        let v2 = "7:0 rbytes=4096 wbytes=1048576 rios=1 wios=16 dbytes=0 dios=0\n8:0 rbytes=100 wbytes=0 rios=2 wios=0 dbytes=0 dios=0\n";
        assert_eq!(parse_io_stat(v2), Some(IoCounters { read_bytes: 4196, write_bytes: 1048576, read_ops: 3, write_ops: 16 }));
        let stat = "     120        0     4096       12      300       10    16384      200        0      250      212        0        0        0        0";
        assert_eq!(parse_block_stat(stat), Some(IoCounters { read_ops: 120, read_bytes: 4096 * 512, write_ops: 300, write_bytes: 16384 * 512 }));
    }

    /// The v2 layout written into a plain directory (these machines run cgroup v1, so the real
    /// v2 path is exercised only on v2 hosts); checks file names and value formats.
    #[test]
    fn v2_limits_use_the_unified_file_names() {
        let root = tempfile::tempdir().unwrap();
        let cg = Cgroup::at(root.path(), Version::V2, "sb-1");
        cg.create(&Limits { memory: Some(64 << 20), cpus: Some(1.5), pids: Some(99), restrict_devices: false }).unwrap();
        let dir = root.path().join("orchestrator/sb-1");
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(read("pids.max"), "99");
        assert_eq!(fs::read_to_string(root.path().join("orchestrator/cgroup.subtree_control")).unwrap(), "+memory +cpu +pids +io");
    }

    #[test]
    fn v1_limits_go_to_each_controller() {
        let root = tempfile::tempdir().unwrap();
        let cg = Cgroup::at(root.path(), Version::V1, "sb-2");
        cg.create(&Limits { memory: Some(1 << 30), cpus: Some(0.25), pids: None, restrict_devices: false }).unwrap();
        let read = |c: &str, f: &str| fs::read_to_string(root.path().join(c).join("orchestrator/sb-2").join(f)).unwrap();
        assert_eq!(read("memory", "memory.limit_in_bytes"), (1u64 << 30).to_string());
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert!(!root.path().join("pids/orchestrator/sb-2/pids.max").exists());
    }
}
