//! A running sandbox's filesystem, through its agent: read, write, list, stat, mkdir, remove,
//! rename, and copies of files and trees between the host and the sandbox. Paths are the
//! sandbox's own (absolute, resolved inside its root: a link cannot lead out of it). Whole
//! reads and writes of a regular file in a namespace sandbox take a short path from the host
//! through the sandbox's root when they can (`direct`), the same in what they do.

use super::copy::{self, Copied};
use super::{blocking, Sandbox};
use crate::error::Result;
use guest_agent::protocol::{DirEntry, FileStat};
use std::path::{Path, PathBuf};

/// The filesystem of one sandbox ([`Sandbox::fs`]).
///
/// ```no_run
/// # async fn demo(sandbox: orchestrator::Sandbox) -> orchestrator::Result<()> {
/// let fs = sandbox.fs();
/// fs.write("/tmp/config.json", b"{\"debug\": true}").await?;
/// assert_eq!(fs.read("/tmp/config.json").await?, b"{\"debug\": true}");
/// for entry in fs.list("/etc").await? {
///     println!("{} ({:?})", entry.name, entry.kind);
/// }
/// fs.copy_out("/etc/os-release", "/tmp/os-release").await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SandboxFs {
    sandbox: Sandbox,
}

impl SandboxFs {
    pub(super) fn new(sandbox: Sandbox) -> SandboxFs {
        SandboxFs { sandbox }
    }

    async fn run<T: Send + 'static>(&self, f: impl FnMut(&mut crate::client::ShimClient) -> std::result::Result<T, crate::client::ClientError> + Send + 'static) -> Result<T> {
        let sandbox = self.sandbox.clone();
        blocking(move || sandbox.with_client(f)).await
    }

    /// `direct` on the sandbox's root when the short path takes the request (`direct.rs`),
    /// else `agent` through the shim.
    async fn direct_or_agent<T: Send + 'static>(
        &self,
        direct: impl FnOnce(&super::direct::DirectRoot, &str) -> Option<T> + Send + 'static,
        mut agent: impl FnMut(&mut crate::client::ShimClient, &str) -> std::result::Result<T, crate::client::ClientError> + Send + 'static,
        path: String,
    ) -> Result<T> {
        let sandbox = self.sandbox.clone();
        blocking(move || match sandbox.direct_root().and_then(|root| direct(&root, &path)) {
            Some(done) => Ok(done),
            None => sandbox.with_client(|c| agent(c, &path)),
        })
        .await
    }

    /// A whole file.
    pub async fn read(&self, path: impl Into<String>) -> Result<Vec<u8>> {
        let path = path.into();
        self.direct_or_agent(move |root, path| root.read_range(path, 0, u64::MAX), move |c, path| c.read_file(path), path).await
    }

    /// At most `len` bytes of a file from `offset` (fewer at its end).
    pub async fn read_range(&self, path: impl Into<String>, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = path.into();
        self.direct_or_agent(move |root, path| root.read_range(path, offset, len), move |c, path| c.read_range(path, offset, Some(len)), path).await
    }

    /// A whole file as text (invalid UTF-8 replaced).
    pub async fn read_to_string(&self, path: impl Into<String>) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.read(path).await?).into_owned())
    }

    /// Creates or replaces a file (mode 0644 for a new one).
    pub async fn write(&self, path: impl Into<String>, data: impl Into<Vec<u8>>) -> Result<()> {
        self.write_with_mode(path, data, None).await
    }

    /// Creates or replaces a file with `mode` (e.g. 0o755).
    pub async fn write_with_mode(&self, path: impl Into<String>, data: impl Into<Vec<u8>>, mode: Option<u32>) -> Result<()> {
        let (path, data) = (path.into(), data.into());
        let shared = std::sync::Arc::new(data);
        let for_agent = shared.clone();
        self.direct_or_agent(move |root, path| root.write(path, &shared, mode), move |c, path| c.write_file(path, &for_agent, mode), path).await
    }

    /// Streams a file from `offset` to its end into `out` chunk by chunk as the agent sends it
    /// (nothing buffered past one chunk); returns the bytes written. A failing `out` ends the
    /// read (on a connection of its own, so nothing is left half-read on the shared one).
    pub async fn read_to(&self, path: impl Into<String>, offset: u64, mut out: impl std::io::Write + Send + 'static) -> Result<u64> {
        let path = path.into();
        let sandbox = self.sandbox.clone();
        blocking(move || sandbox.with_copy(|c| Ok(c.read_from_to(&path, offset, &mut out)?))).await
    }

    /// Creates or replaces a file from `input`, written chunk by chunk as it is read (the first
    /// chunk truncates and sets `mode`); returns its size. A failing `input` ends the write
    /// with the file cut where it stopped.
    pub async fn write_from(&self, path: impl Into<String>, mut input: impl std::io::Read + Send + 'static, mode: Option<u32>) -> Result<u64> {
        let path = path.into();
        let sandbox = self.sandbox.clone();
        blocking(move || sandbox.with_copy(|c| Ok(c.write_file_from(&path, &mut input, mode)?))).await
    }

    /// A directory's entries (names as the sandbox gave them: print them escaped).
    pub async fn list(&self, path: impl Into<String>) -> Result<Vec<DirEntry>> {
        let path = path.into();
        self.run(move |c| c.list_dir(&path)).await
    }

    /// A path's kind, size, mode, owner and mtime (a link itself, not its target).
    pub async fn stat(&self, path: impl Into<String>) -> Result<FileStat> {
        let path = path.into();
        self.run(move |c| c.stat(&path)).await
    }

    /// Whether `path` exists.
    pub async fn exists(&self, path: impl Into<String>) -> Result<bool> {
        match self.stat(path).await {
            Ok(_) => Ok(true),
            Err(crate::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates a directory and its missing parents.
    pub async fn mkdir(&self, path: impl Into<String>) -> Result<()> {
        let path = path.into();
        self.run(move |c| c.mkdir(&path, true)).await
    }

    /// Removes a file or an empty directory.
    pub async fn remove(&self, path: impl Into<String>) -> Result<()> {
        let path = path.into();
        self.run(move |c| c.remove(&path, false)).await
    }

    /// Removes a file or a whole tree.
    pub async fn remove_all(&self, path: impl Into<String>) -> Result<()> {
        let path = path.into();
        self.run(move |c| c.remove(&path, true)).await
    }

    pub async fn rename(&self, from: impl Into<String>, to: impl Into<String>) -> Result<()> {
        let (from, to) = (from.into(), to.into());
        self.run(move |c| c.rename(&from, &to)).await
    }

    /// Copies a host file or tree into the sandbox (into `path` under its own name when `path`
    /// is a directory there). Returns the path written and what was copied.
    pub async fn copy_in(&self, host: impl AsRef<Path>, path: impl Into<String>) -> Result<(String, Copied)> {
        let (host, path) = (host.as_ref().to_path_buf(), path.into());
        let sandbox = self.sandbox.clone();
        blocking(move || sandbox.with_copy(|c| copy::copy_to_sandbox(c, &host, &path))).await
    }

    /// Copies a file or tree out of the sandbox to the host, treating everything the sandbox
    /// says as hostile (see `sandbox::copy`). Returns the host path written.
    pub async fn copy_out(&self, path: impl Into<String>, host: impl AsRef<Path>) -> Result<(PathBuf, Copied)> {
        let (path, host) = (path.into(), host.as_ref().to_path_buf());
        let sandbox = self.sandbox.clone();
        blocking(move || sandbox.with_copy(|c| copy::copy_from_sandbox(c, &path, &host))).await
    }

    /// Writes the sandbox's file or tree `path` to `out` as a tar stream (what
    /// `orchestrator cp NAME:/path -` prints), treating everything the sandbox says as hostile
    /// (see `sandbox::tarball`).
    pub async fn export_tar(&self, path: impl Into<String>, mut out: impl std::io::Write + Send + 'static) -> Result<Copied> {
        let path = path.into();
        let sandbox = self.sandbox.clone();
        blocking(move || sandbox.with_copy(|c| super::tarball::export(c, &path, &mut out))).await
    }

    /// Unpacks the tar stream `input` into the sandbox directory `path`.
    pub async fn import_tar(&self, mut input: impl std::io::Read + Send + 'static, path: impl Into<String>) -> Result<Copied> {
        let path = path.into();
        let sandbox = self.sandbox.clone();
        blocking(move || sandbox.with_copy(|c| super::tarball::import(c, &mut input, &path))).await
    }
}

impl Sandbox {
    /// A copy runs many requests on one connection of its own.
    fn with_copy<T>(&self, f: impl FnOnce(&mut crate::client::ShimClient) -> Result<T>) -> Result<T> {
        let mut conn = self.connect()?;
        f(&mut conn.client)
    }
}
