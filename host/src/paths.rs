//! The data directory: where everything the orchestrator writes lives, and the names of the
//! files inside a sandbox instance's directory (shared by the host side and the shim).

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// `/var/lib/orchestrator` as root, else `$XDG_DATA_HOME/orchestrator` (or ~/.local/share).
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/orchestrator");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("orchestrator");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/share/orchestrator")
}

impl DataDir {
    pub fn open(root: &Path) -> std::io::Result<DataDir> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(root.join("sandboxes"))?;
        let root = std::fs::canonicalize(root)?;
        // Directories are traversable (a user-namespaced sandbox's root, an unprivileged host
        // uid, must reach its writable layer) but not listable; every file below is 0600, the
        // shim sockets included, so no other user can read state or reach a sandbox.
        for dir in [root.clone(), root.join("sandboxes")] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
        }
        Ok(DataDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db(&self) -> PathBuf {
        self.root.join("state.db")
    }

    /// Held while desired state changes (a source's plan and commit, a new name): briefly.
    pub fn reconcile_lock(&self) -> PathBuf {
        self.root.join("reconcile.lock")
    }

    /// `DATA/locks`: the objects' lock files.
    pub fn object_locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Held by whoever changes one object's instance (converge, start, stop, delete), so one
    /// object is never reconciled twice at once while others proceed.
    pub fn object_lock(&self, name: &str) -> std::io::Result<PathBuf> {
        let dir = self.object_locks();
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir).or_else(|e| if dir.is_dir() { Ok(()) } else { Err(e) })?;
        }
        // Names are validated; anything else (a typo on the command line, a client's junk) is
        // its SHA-256 in hex: never a path, never longer than a file name may be.
        let file = if crate::spec::is_valid_name(name) {
            format!("{name}.lock")
        } else {
            use sha2::Digest;
            format!("x-{}.lock", sha2::Sha256::digest(name.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>())
        };
        Ok(dir.join(file))
    }

    pub fn instance(&self, instance: &str) -> InstanceDir {
        InstanceDir(self.root.join("sandboxes").join(instance))
    }

    /// `DATA/sockets/NAME`: a link to the running instance's shim socket, so that `exec` reaches
    /// a sandbox by name without opening the state database. Only a cache: whoever finds it
    /// missing or dead asks the store.
    pub fn socket_link(&self, name: &str) -> PathBuf {
        socket_link(&self.root, name)
    }

    /// Points `name`'s link at `instance`'s socket (atomically replacing an older one).
    pub fn link_socket(&self, name: &str, instance: &InstanceDir) -> std::io::Result<()> {
        let link = self.socket_link(name);
        {
            use std::os::unix::fs::DirBuilderExt;
            // Traversable, not listable: other users cannot learn the sandboxes' names.
            let dir = self.root.join("sockets");
            if !dir.is_dir() {
                std::fs::DirBuilder::new().mode(0o711).create(&dir).or_else(|e| if dir.is_dir() { Ok(()) } else { Err(e) })?;
            }
        }
        let tmp = link.with_file_name(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(instance.socket(), &tmp)?;
        std::fs::rename(&tmp, &link)
    }

    /// Removes `name`'s link if it still points at `instance` (a newer instance keeps its own).
    pub fn unlink_socket(&self, name: &str, instance: &InstanceDir) {
        let link = self.socket_link(name);
        if std::fs::read_link(&link).is_ok_and(|t| t == instance.socket()) {
            let _ = std::fs::remove_file(&link);
        }
    }
}

/// [`DataDir::socket_link`] for a data directory not opened (the fast path of `exec`).
pub fn socket_link(data_root: &Path, name: &str) -> PathBuf {
    data_root.join("sockets").join(name)
}

/// One sandbox instance's directory: its writable layer, logs, shim socket and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDir(pub PathBuf);

impl InstanceDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn config(&self) -> PathBuf {
        self.0.join("config.json")
    }
    pub fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }
    /// The sandbox's network counters, rewritten by its shim every few seconds.
    pub fn network_stats(&self) -> PathBuf {
        self.0.join("network.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.0.join("shim.lock")
    }
    pub fn socket(&self) -> PathBuf {
        self.0.join("shim.sock")
    }
    pub fn main_log(&self) -> PathBuf {
        self.0.join("main.log")
    }
    /// A microVM's serial console (its kernel's and guest agent's messages), bounded.
    pub fn console_log(&self) -> PathBuf {
        self.0.join("console.log")
    }
    pub fn shim_log(&self) -> PathBuf {
        self.0.join("shim.log")
    }
    /// Exists once the instance's writable layer has its rootfs patches.
    pub fn patched_marker(&self) -> PathBuf {
        self.0.join("patched")
    }

    /// A namespace sandbox's writable disk (sparse ext4; its size bounds the writable layer).
    pub fn writable_disk(&self) -> PathBuf {
        self.0.join("disk.ext4")
    }
    /// Where the agent attaches the writable disk inside its own mount namespace (on the host
    /// it stays an empty directory).
    pub fn writable_mount(&self) -> PathBuf {
        self.0.join("disk")
    }
    /// The overlay's upper directory of an instance made before writable layers were bounded.
    pub fn upper(&self) -> PathBuf {
        self.0.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.0.join("work")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.0.join("rootfs")
    }
}

/// Opens a file for appending, creating it readable by the owner only.
pub fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// Writes a file (owner-only) so that readers see the old or the new content, never a torn one.
/// Concurrent writers each use their own temporary file; the last rename wins.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let unique = format!(".{name}.{}.{}.tmp", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let tmp = path.with_file_name(unique);
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(data)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn private_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(path)
}

/// An exclusive advisory lock held for the life of the returned file; None when another holds
/// it. A lock file may be removed by whoever holds it (`remove_lock`): a file locked after its
/// removal is not the lock any more, and is opened again from its path.
pub fn try_lock(path: &Path) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    loop {
        let file = private_lock_file(path)?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            if still_at(&file, path) {
                return Ok(Some(file));
            }
            continue;
        }
        let err = std::io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(None) } else { Err(err) };
    }
}

/// Blocks until the lock is ours (see `try_lock` on removed lock files).
pub fn lock(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    loop {
        let file = private_lock_file(path)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            if still_at(&file, path) {
                return Ok(file);
            }
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Removes the lock file at `path`, whose lock `held` is, then lets the lock go. Whoever waits
/// for it wakes on a file no longer at `path` and takes the lock from the path again.
pub fn remove_lock(path: &Path, held: std::fs::File) -> std::io::Result<()> {
    let removed = if still_at(&held, path) { std::fs::remove_file(path) } else { Ok(()) };
    drop(held);
    removed
}

/// Whether `file` is still the file `path` names.
fn still_at(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Whether a shim holds the instance's lock (i.e. is alive), immune to pid reuse.
pub fn shim_alive(dir: &InstanceDir) -> bool {
    if !dir.lock().exists() {
        return false;
    }
    matches!(try_lock(&dir.lock()), Ok(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lock file removed by its holder while another process waits on it: the waiter gets
    /// the old file, sees it is not at the path any more, and takes the path's new file, which
    /// a third taker then finds held. Never two holders.
    #[test]
    fn a_waiter_on_a_removed_lock_file_takes_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let held = lock(&path).unwrap();
        let waiter_path = path.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let got = lock(&waiter_path).unwrap();
            tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(got);
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        remove_lock(&path, held).unwrap();
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the waiter got the lock");
        assert!(path.exists(), "the waiter made the file again");
        assert!(try_lock(&path).unwrap().is_none(), "the waiter holds the file at the path");
        waiter.join().unwrap();
        assert!(try_lock(&path).unwrap().is_some(), "free once the waiter lets go");
    }

    /// A name typed on the command line never becomes a path outside DATA/locks.
    #[test]
    fn object_locks_stay_in_their_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::open(tmp.path()).unwrap();
        let long = "\u{fffd}".repeat(200);
        for name in ["web", "../../etc/passwd", "/abs", "a/b", "", long.as_str()] {
            let lock = data.object_lock(name).unwrap();
            assert_eq!(lock.parent(), Some(data.root().join("locks").as_path()), "{name:?}");
            std::fs::File::create(&lock).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        assert_ne!(data.object_lock("a/b").unwrap(), data.object_lock("a/c").unwrap(), "other names, other locks");
        assert!(data.object_lock("web").unwrap().ends_with("web.lock"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(data.root().join("locks")).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
