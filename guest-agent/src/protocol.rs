//! The host<->agent wire protocol: message types and the frame codec.
//!
//! One byte stream carries length-prefixed frames (`u32` little-endian length, then a postcard
//! payload). Every frame carries a request id chosen by the side that opened the request; all
//! responses and follow-up messages of that request (stdin, resize, signals, streamed output) use
//! the same id, so any number of requests share one stream. The same protocol runs over a
//! socketpair (namespace sandboxes) and vsock (microVMs), and between the CLI and a sandbox's shim.
//!
//! Everything read here may come from a hostile peer: frame lengths are bounded, a malformed
//! payload is reported as an error for that frame only, and the stream stays usable.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};

/// Bumped on every incompatible change; the handshake refuses a mismatch.
pub const PROTOCOL_VERSION: u32 = 3;
/// Largest payload accepted in one frame.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Oversized frames up to this size are skipped (the stream stays in sync); beyond it the
/// connection is closed because skipping would let a peer make us read without end.
pub const MAX_SKIPPABLE_LEN: usize = 64 << 20;
/// Data chunks (file contents, process output) are split to at most this many bytes.
pub const CHUNK_LEN: usize = 256 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Frame<T> {
    pub id: u64,
    pub body: T,
}

/// What the agent serves: the shim's requests to the sandbox's PID 1.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum AgentRequest {
    Hello { version: u32, client: String },
    /// Sent once by the shim before anything else: how to build the sandbox's root.
    Init(Box<SandboxInit>),
    Exec(Box<ExecRequest>),
    Stdin { data: Vec<u8> },
    CloseStdin,
    Resize { rows: u16, cols: u16 },
    Signal { signal: i32 },
    ReadFile { path: String, offset: u64, len: Option<u64> },
    WriteFile { path: String, offset: u64, data: Vec<u8>, truncate: bool, mode: Option<u32> },
    ListDir { path: String },
    Stat { path: String, follow_symlinks: bool },
    Mkdir { path: String, parents: bool, mode: Option<u32> },
    Remove { path: String, recursive: bool },
    Rename { from: String, to: String },
    /// Terminate every process (SIGTERM, then SIGKILL after the grace period) and exit.
    Shutdown { grace_ms: u64 },
    /// SIGKILL every process but the agent: the sandbox stays, running nothing (a used
    /// sandbox waiting for its removal). Last, so the variants before it keep their numbers.
    KillOthers,
}

/// What the shim serves: a client's requests (the CLI, the library). Its own, and those it
/// forwards to the agent (`Agent`), which never include `Init`, `Shutdown` or `Hello` (the
/// shim refuses them: they are the shim's to send).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum ShimRequest {
    Hello { version: u32, client: String },
    /// The sandbox's current status.
    Status,
    /// Stream the main process's output and feed it stdin / resize (PTY sandboxes).
    Attach,
    /// Stop the sandbox (graceful, then forced) and exit the shim.
    Stop { grace_ms: u64 },
    /// Apply a changed `network` section to the running sandbox (the host's JSON: the section
    /// and the Plugin resources it names).
    UpdateNetwork { config: String },
    /// New values for the sandbox's secrets (the host's JSON: `[{env, value}]`, a provider's
    /// rotated value), used by requests from now on; the placeholders stay.
    UpdateSecrets { values: String },
    /// The sandbox takes another name (a warm pool's sandbox handed out under a client's
    /// name): its hostname, `HOSTNAME` in its commands, the object its events name. Refused
    /// for sandboxes whose identity plugins have seen, and for microVMs.
    SetIdentity { name: String },
    /// The sandbox's resource figures now (`Response::Sample`): what `/metrics`, `top` and
    /// metrics sinks report.
    Sample,
    /// For the agent: exec, stdin, resize, signals, the file API.
    Agent(AgentRequest),
    /// The host pid of a namespace sandbox's init while it runs (`Response::InitPid`), so that
    /// the host can reach its root through `/proc/PID/root`; refused for microVMs. Last, so
    /// that the variants before it keep their wire numbers.
    InitPid,
}

impl From<AgentRequest> for ShimRequest {
    fn from(r: AgentRequest) -> ShimRequest {
        ShimRequest::Agent(r)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Response {
    Hello { version: u32, agent: String },
    Ready,
    Started { pid: u32 },
    Stdout { data: Vec<u8> },
    Stderr { data: Vec<u8> },
    Exited(ExitStatus),
    Data { data: Vec<u8>, eof: bool },
    Entries(Vec<DirEntry>),
    Stat(FileStat),
    Done,
    Status(ShimStatus),
    Sample(ResourceSample),
    Error { code: ErrorCode, message: String },
    InitPid { pid: u32 },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    NotFound,
    PermissionDenied,
    AlreadyExists,
    Unsupported,
    TooLarge,
    Io,
    SpawnFailed,
    VersionMismatch,
    Internal,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// `name`, `uid` or `uid:gid`, resolved against the sandbox's own /etc/passwd and /etc/group.
    pub user: Option<String>,
    pub tty: Option<TtySize>,
    pub stdin: bool,
    pub rlimits: Rlimits,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rlimits {
    pub nofile: Option<u64>,
    pub nproc: Option<u64>,
    pub fsize: Option<u64>,
    pub cpu_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

impl ExitStatus {
    /// The shell convention: the exit code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct DirEntry {
    pub name: String,
    pub kind: FileKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct FileStat {
    pub kind: FileKind,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_secs: i64,
    pub symlink_target: Option<String>,
}

/// What the sandbox's init needs to build its root (namespace sandboxes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SandboxInit {
    pub hostname: String,
    /// The overlay is mounted from this directory, so the directories below can be short
    /// relative names: the whole overlay option must fit in one page (4 KiB), and absolute
    /// store paths would cap an image at about 35 layers.
    pub base_dir: String,
    /// Read-only lower directories, topmost first (relative to `base_dir` or absolute).
    pub lower_dirs: Vec<String>,
    pub upper_dir: String,
    pub work_dir: String,
    /// Where the overlay is assembled before pivot_root.
    pub mount_point: String,
    pub seccomp: bool,
    /// Root filesystem patches (declarative `spec.patches` and rootfs-patch plugins), applied
    /// in order to the writable layer before anything runs; empty when the sandbox restarts
    /// on a layer that already has them.
    pub patches: Vec<PatchOp>,
    /// Namespace sandboxes: the bounded writable disk arrives as a detached mount, an fd sent
    /// with this frame (SCM_RIGHTS, see [`send_with_fds`]), first; the agent attaches it here
    /// (relative to `base_dir`) before the overlay, whose `upper_dir` and `work_dir` are below
    /// it. None: no such disk (a microVM's scratch disk is a block device of its own; an
    /// instance older than bounded disks).
    #[serde(default)]
    pub writable_mount: Option<String>,
    /// The writable layer is a tmpfs of at most this many bytes, which the agent mounts at
    /// `writable_mount` itself (no fd comes with the Init for it): its pages are charged to the
    /// sandbox's memory cgroup, and nothing of it reaches the host's disk. (Postcard frames
    /// are positional: no field here may be skipped when serialized.)
    #[serde(default)]
    pub writable_tmpfs: Option<u64>,
    /// The sandbox's link (`eth0`), when it has one; None: loopback only.
    #[serde(default)]
    pub network: Option<NetworkInit>,
    /// The PEM certificate of this start's TLS interception CA, installed into the root's
    /// trust stores (see `trust`); None removes a previous start's.
    #[serde(default)]
    pub trust_anchor: Option<String>,
    /// Volumes, host paths and tmpfs to mount into the root (`spec.volumes`), parents first.
    #[serde(default)]
    pub mounts: Vec<MountInit>,
}

/// One mount the agent makes in the sandbox's root (see `crate::mounts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInit {
    /// Absolute, normalised path inside the sandbox (no `.`, `..` or empty components).
    pub target: String,
    pub source: MountInitSource,
    /// The target is a file (a single host file); otherwise a directory.
    #[serde(default)]
    pub file: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountInitSource {
    /// A detached mount the shim made (a volume, a host path), already with its final flags
    /// (read-only, nosuid, nodev, idmapped): the index of its fd among those the Init carried.
    Fd(usize),
    /// A fresh tmpfs of this many bytes, mode 1777, nosuid and nodev.
    Tmpfs { size: u64 },
    /// MicroVMs: a virtio-fs share by its tag.
    Virtiofs { tag: String, read_only: bool },
}

/// How the agent configures the sandbox's link: addresses, routes via the gateway, and the
/// gateway as its resolver (see `crate::net`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInit {
    pub interface: String,
    pub mtu: u32,
    pub ipv4: Option<LinkAddress<std::net::Ipv4Addr>>,
    pub ipv6: Option<LinkAddress<std::net::Ipv6Addr>>,
    pub nameservers: Vec<std::net::IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkAddress<A> {
    pub address: A,
    pub prefix: u8,
    pub gateway: A,
}

/// The most fds one frame carries: the writable disk and one per mount (`spec.volumes` allows
/// 64), well below the kernel's 253 per message.
pub const MAX_FRAME_FDS: usize = 72;

/// Writes `frame` with `fds` riding on its first bytes (SCM_RIGHTS), for a unix stream.
pub fn send_with_fds<T: Serialize>(stream: &std::os::unix::net::UnixStream, frame: &Frame<T>, fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<(), FrameError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let buf = encode(frame)?;
    if fds.is_empty() {
        let mut w = stream;
        w.write_all(&buf)?;
        return Ok(());
    }
    if fds.len() > MAX_FRAME_FDS {
        return Err(FrameError::Io(io::Error::new(io::ErrorKind::InvalidInput, format!("{} fds in one frame; at most {MAX_FRAME_FDS}", fds.len()))));
    }
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    // The length prefix carries the fds; the rest follows as plain bytes.
    let sent = sendmsg::<UnixAddr>(stream.as_raw_fd(), &[std::io::IoSlice::new(&buf[..4])], &cmsg, MsgFlags::empty(), None).map_err(io::Error::from)?;
    let mut w = stream;
    w.write_all(&buf[sent..])?;
    Ok(())
}

/// Reads one frame, and the fds that came with it, in order (see [`send_with_fds`]); each fd
/// is close-on-exec. Fds beyond [`MAX_FRAME_FDS`] make the message's control data truncated,
/// which is refused.
pub fn read_frame_with_fds<T: for<'de> Deserialize<'de>>(stream: &std::os::unix::net::UnixStream) -> Result<(Frame<T>, Vec<std::os::fd::OwnedFd>), FrameError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut len = [0u8; 4];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_FRAME_FDS]);
    let (got, fds, truncated) = {
        let mut iov = [std::io::IoSliceMut::new(&mut len)];
        let msg = recvmsg::<UnixAddr>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: the kernel just installed this fd in our table; we own it.
                    fds.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(r) });
                }
            }
        }
        (msg.bytes, fds, msg.flags.contains(MsgFlags::MSG_CTRUNC))
    };
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if truncated {
        return Err(FrameError::Io(io::Error::new(io::ErrorKind::InvalidData, format!("more than {MAX_FRAME_FDS} fds came with one frame"))));
    }
    let mut r = stream;
    r.read_exact(&mut len[got..])?;
    let frame = decode(&payload_of_len(&mut r, u32::from_le_bytes(len) as usize)?)?;
    Ok((frame, fds))
}

/// One change to a sandbox's root filesystem. Paths are absolute inside the sandbox and are
/// checked with [`check_patch_path`] on both sides of the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum PatchOp {
    Write { path: String, contents: Vec<u8>, mode: u32 },
    Append { path: String, contents: Vec<u8> },
    Mkdir { path: String, mode: u32 },
    Symlink { path: String, target: String },
    Chmod { path: String, mode: u32 },
    Remove { path: String },
}

impl PatchOp {
    pub fn path(&self) -> &str {
        match self {
            PatchOp::Write { path, .. }
            | PatchOp::Append { path, .. }
            | PatchOp::Mkdir { path, .. }
            | PatchOp::Symlink { path, .. }
            | PatchOp::Chmod { path, .. }
            | PatchOp::Remove { path } => path,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            PatchOp::Write { .. } => "write",
            PatchOp::Append { .. } => "append",
            PatchOp::Mkdir { .. } => "mkdir",
            PatchOp::Symlink { .. } => "symlink",
            PatchOp::Chmod { .. } => "chmod",
            PatchOp::Remove { .. } => "remove",
        }
    }

    /// Bytes this operation puts on the wire (path and contents), for the size bound.
    pub fn payload_len(&self) -> usize {
        let data = match self {
            PatchOp::Write { contents, .. } | PatchOp::Append { contents, .. } => contents.len(),
            PatchOp::Symlink { target, .. } => target.len(),
            _ => 0,
        };
        self.path().len() + data
    }
}

/// All patches of one sandbox travel in its `Init` frame, so their contents are bounded well
/// below [`MAX_FRAME_LEN`].
pub const MAX_PATCH_BYTES: usize = 768 * 1024;
/// At most this many operations per sandbox.
pub const MAX_PATCH_OPS: usize = 4096;
/// Kernel file systems that a patch must never reach.
const PATCH_FORBIDDEN_ROOTS: &[&str] = &["/proc", "/sys", "/dev"];

/// Why a patch path is refused, or `Ok` for an absolute, normalised path inside the root that
/// is not the root itself and not under a kernel file system.
pub fn check_patch_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if path.contains('\0') {
        return Err(format!("{path:?} contains a NUL byte"));
    }
    if path.len() > 4096 {
        return Err("the path is longer than 4096 bytes".into());
    }
    let mut components = 0;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{path:?} leaves the root filesystem (`..`)")),
            _ => components += 1,
        }
    }
    if components == 0 {
        return Err("the root directory itself cannot be patched".into());
    }
    for root in PATCH_FORBIDDEN_ROOTS {
        let normalised: String = path.split('/').filter(|p| !p.is_empty() && *p != ".").fold(String::new(), |acc, p| acc + "/" + p);
        if normalised == *root || normalised.starts_with(&format!("{root}/")) {
            return Err(format!("{path:?} is under {root}, which is the kernel's, not the image's"));
        }
    }
    Ok(())
}

/// Checks a whole list: every path, the operation count and the total payload.
pub fn check_patches(ops: &[PatchOp]) -> Result<(), String> {
    if ops.len() > MAX_PATCH_OPS {
        return Err(format!("{} operations; at most {MAX_PATCH_OPS} are allowed", ops.len()));
    }
    let mut total = 0usize;
    for (i, op) in ops.iter().enumerate() {
        check_patch_path(op.path()).map_err(|e| format!("operation {} ({}): {e}", i + 1, op.name()))?;
        if let PatchOp::Symlink { target, .. } = op {
            if target.is_empty() || target.contains('\0') {
                return Err(format!("operation {} (symlink): the target is empty or contains a NUL byte", i + 1));
            }
        }
        total = total.saturating_add(op.payload_len());
    }
    if total > MAX_PATCH_BYTES {
        return Err(format!("the patches carry {total} bytes; at most {MAX_PATCH_BYTES} are allowed (put large files in the image or a volume)"));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShimStatus {
    pub state: SandboxState,
    pub shim_pid: u32,
    pub main_pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<ExitStatus>,
    /// Why the sandbox is in this state, when that is worth telling (a failure, a stop).
    pub message: Option<String>,
}

/// A sandbox's resource figures as its shim reads them: its cgroup's CPU, memory and tasks, and
/// its disk I/O (a microVM's virtio-blk counters; a namespace sandbox's io.stat, or on cgroup
/// v1 its writable disk's loop device).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResourceSample {
    pub cpu_usage_us: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: Option<u64>,
    pub pids: u64,
    pub disk: Option<DiskSample>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskSample {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum SandboxState {
    Starting,
    Running,
    Exited,
    Stopped,
    Failed,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

impl FrameError {
    /// Whether the stream is still in sync after this error (the next frame can be read).
    pub fn recoverable(&self) -> bool {
        matches!(self, FrameError::Malformed(_))
            || matches!(self, FrameError::TooLarge(n) if *n <= MAX_SKIPPABLE_LEN)
    }
}

pub fn encode<T: Serialize>(frame: &Frame<T>) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; 4];
    let payload =
        postcard::to_extend(frame, Vec::new()).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(payload.len()));
    }
    buf.extend_from_slice(&payload);
    let len = (payload.len() as u32).to_le_bytes();
    buf[..4].copy_from_slice(&len);
    Ok(buf)
}

pub fn write_frame<T: Serialize>(w: &mut impl Write, frame: &Frame<T>) -> Result<(), FrameError> {
    let buf = encode(frame)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Reads one raw frame payload. An oversized frame is skipped (when small enough to skip) and
/// reported, so the caller can answer with an error and keep reading.
pub fn read_payload(r: &mut impl Read) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    if let Err(e) = r.read_exact(&mut len) {
        return Err(if e.kind() == io::ErrorKind::UnexpectedEof { FrameError::Closed } else { e.into() });
    }
    payload_of_len(r, u32::from_le_bytes(len) as usize)
}

/// The payload after a length prefix that was read already.
fn payload_of_len(r: &mut impl Read, len: usize) -> Result<Vec<u8>, FrameError> {
    if len > MAX_FRAME_LEN {
        if len <= MAX_SKIPPABLE_LEN {
            io::copy(&mut r.take(len as u64), &mut io::sink())?;
        }
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof { FrameError::Closed } else { e.into() }
    })?;
    Ok(payload)
}

pub fn decode<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<Frame<T>, FrameError> {
    postcard::from_bytes(payload).map_err(|e| FrameError::Malformed(e.to_string()))
}

pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> Result<Frame<T>, FrameError> {
    decode(&read_payload(r)?)
}

/// Best-effort request id of a payload that failed to decode, so the error can be addressed.
pub fn peek_id(payload: &[u8]) -> u64 {
    postcard::take_from_bytes::<u64>(payload).map(|(id, _)| id).unwrap_or(0)
}

pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error { code, message: message.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_binary_data() {
        let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let f = Frame { id: 7, body: AgentRequest::Stdin { data: data.clone() } };
        let bytes = encode(&f).unwrap();
        let back: Frame<AgentRequest> = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn oversized_frame_is_skipped_and_stream_stays_usable() {
        let mut stream = ((MAX_FRAME_LEN + 10) as u32).to_le_bytes().to_vec();
        stream.extend(std::iter::repeat(0xAA).take(MAX_FRAME_LEN + 10));
        stream.extend(encode(&Frame { id: 3, body: ShimRequest::Status }).unwrap());
        let mut r = &stream[..];
        let err = read_frame::<ShimRequest>(&mut r).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)) && err.recoverable());
        assert_eq!(read_frame::<ShimRequest>(&mut r).unwrap().id, 3);
    }

    #[test]
    fn malformed_payload_is_an_error_not_a_panic() {
        let mut stream = 5u32.to_le_bytes().to_vec();
        stream.extend([9, 0xff, 0xff, 0xff, 0xff]);
        stream.extend(encode(&Frame { id: 4, body: ShimRequest::Status }).unwrap());
        let mut r = &stream[..];
        let payload = read_payload(&mut r).unwrap();
        assert_eq!(peek_id(&payload), 9);
        assert!(decode::<ShimRequest>(&payload).is_err());
        assert_eq!(read_frame::<ShimRequest>(&mut r).unwrap().id, 4);
    }

    #[test]
    fn truncated_stream_reports_closed() {
        let bytes = encode(&Frame { id: 1, body: ShimRequest::Status }).unwrap();
        let err = read_frame::<ShimRequest>(&mut &bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, FrameError::Closed));
    }

    #[test]
    fn shell_code_convention() {
        assert_eq!(ExitStatus { code: Some(3), signal: None, timed_out: false }.shell_code(), 3);
        assert_eq!(ExitStatus { code: None, signal: Some(9), timed_out: false }.shell_code(), 137);
    }
}
