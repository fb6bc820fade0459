//! What the host and the agent agree on besides the wire protocol (`protocol`): where a
//! microVM's agent listens, the order of a microVM's disks, and the PATH a process gets when
//! nothing sets one. One definition each, linked by both sides.

/// The guest's vsock context id (the host is 2, as vsock fixes it).
pub const GUEST_CID: u64 = 3;
/// The host's vsock context id.
pub const HOST_CID: u32 = 2;
/// The vsock port the agent connects to on the host; the VMM bridges it to the shim.
pub const AGENT_PORT: u32 = 1024;
/// A microVM's disks, in the order the host attaches them: the image (read-only EROFS), then
/// the sandbox's scratch disk (ext4, its writable layer).
pub const IMAGE_DISK: &str = "/dev/vda";
pub const SCRATCH_DISK: &str = "/dev/vdb";
/// The PATH of a process whose environment sets none (and of the shim's own children).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
