//! ext4 images on loop devices as detached mounts, for namespace sandboxes: their bounded
//! writable layers and named volumes (`mount_shared`, one superblock for every sandbox that
//! mounts the volume).
//!
//! A namespace sandbox's bounded writable layer is mounted without the host ever seeing it: the
//! instance's sparse ext4 disk (`disk.ext4`, made by the runtime) goes on an autoclear loop
//! device and is mounted with the new mount API (`fsopen`/`fsmount`) as a *detached* mount,
//! `nodev` and `nosuid`. The shim hands the mount's fd to the agent, which attaches it inside its
//! own mount namespace and puts the overlay's upper and work directories on it.
//!
//! Invariants:
//! - No mount of the disk exists in the host's mount table at any moment.
//! - The loop device lives exactly as long as the filesystem on it: autoclear detaches it
//!   when the sandbox's mount namespace (the last user of the superblock) goes away, so a
//!   killed shim leaks no loop device either.
//! - The disk's size is the bound: a full disk is ENOSPC inside, and nothing outside grows.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
pub(super) const MOUNT_ATTR_RDONLY: libc::c_uint = 0x1;
pub(super) const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
pub(super) const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;

/// `struct loop_info64` (linux/loop.h).
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` (linux/loop.h, Linux 5.8+).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// Attaches `image` to a free loop device with autoclear set; returns the device's open fd and
/// path (std opens every file close-on-exec). Another process may take the same free device
/// between the two calls: then retry.
fn attach_loop(image: &Path) -> Result<(OwnedFd, String), String> {
    let backing = std::fs::OpenOptions::new().read(true).write(true).open(image).map_err(|e| format!("opening {}: {e}", image.display()))?;
    let control = std::fs::OpenOptions::new().read(true).write(true).open("/dev/loop-control").map_err(|e| {
        format!("opening /dev/loop-control: {e} (the writable layer needs loop devices: `modprobe loop`)")
    })?;
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(os_err("finding a free loop device"));
        }
        let path = format!("/dev/loop{n}");
        let dev = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("opening {path}: {e}")),
        };
        // SAFETY: a zeroed plain-data struct.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = backing.as_raw_fd() as u32;
        config.info.flags = LO_FLAGS_AUTOCLEAR;
        let name = image.as_os_str().as_encoded_bytes();
        let keep = name.len().min(config.info.file_name.len() - 1);
        config.info.file_name[..keep].copy_from_slice(&name[name.len() - keep..]);
        // SAFETY: LOOP_CONFIGURE with a fully initialised loop_config.
        if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config as *const LoopConfig) } == 0 {
            return Ok((OwnedFd::from(dev), path));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(format!("attaching {} to {path}: {e}", image.display()));
        }
    }
    Err("no free loop device after 16 tries".into())
}

/// What the kernel logged into a filesystem context (the reason behind a failed mount).
fn context_log(fs: &OwnedFd) -> String {
    let mut out = String::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: reading messages from our own fs-context fd into a local buffer.
        let n = unsafe { libc::read(fs.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.push_str(String::from_utf8_lossy(&buf[..n as usize]).trim());
        out.push_str("; ");
    }
    out.trim_end_matches("; ").to_string()
}

/// A mounted writable disk: the detached mount the agent attaches, and the loop device under it.
pub struct WritableDisk {
    pub mount: OwnedFd,
    pub loop_device: String,
}

/// Waits (bounded) until the loop device has let go of its file: the kernel releases the
/// superblock, then autoclear, shortly after the sandbox's last process is gone. `delete`
/// returning means nothing of the sandbox is left, loop devices included.
pub fn wait_released(loop_device: &str, image: &Path, timeout: std::time::Duration) -> bool {
    let name = loop_device.trim_start_matches("/dev/");
    let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
    // Another sandbox may take the same device once it is free: compare the file, not the name.
    let image = std::fs::canonicalize(image).unwrap_or_else(|_| image.to_path_buf());
    let ours = || std::fs::read_to_string(&backing).is_ok_and(|f| Path::new(f.trim()) == image.as_path());
    let deadline = std::time::Instant::now() + timeout;
    while ours() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    true
}

/// The instance's writable disk as a detached `nodev,nosuid` ext4 mount.
pub fn mount_detached(image: &Path) -> Result<WritableDisk, String> {
    let (loop_dev, path) = attach_loop(image)?;
    // The inode tables stay lazily initialised: the kernel would otherwise zero them in the
    // background, writing hundreds of MiB into a file that is meant to stay sparse.
    let mount = fsmount_ext4(&path, image, &["noinit_itable"], MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID)?;
    // The superblock holds the loop device open now; autoclear ends it with the mount.
    drop(loop_dev);
    Ok(WritableDisk { mount, loop_device: path })
}

/// A shared image (a named volume) as a detached ext4 mount with `attrs` (MOUNT_ATTR_*): the
/// loop device that already backs it when there is one, so every mount of the image shares
/// one superblock, else a new autoclear one. The caller holds the image's attach lock.
/// No online `discard` (it punches a hole per freed extent as files go, fragmenting the image
/// on the host); the shim trims in one batch when the sandbox ends instead (`trim`).
pub fn mount_shared(image: &Path, attrs: libc::c_uint) -> Result<OwnedFd, String> {
    if let Some(dev) = crate::volume::backing_loop(image) {
        // Held open across the mount, so autoclear cannot free it in between; then checked:
        // it may have been freed and taken for another file before the open.
        if let Ok(held) = std::fs::OpenOptions::new().read(true).write(true).open(&dev) {
            if crate::volume::backing_loop(image).as_deref() == Some(dev.as_str()) {
                let mount = fsmount_ext4(&dev, image, &["noinit_itable"], attrs);
                drop(held);
                return mount;
            }
        }
    }
    let (loop_dev, path) = attach_loop(image)?;
    let mount = fsmount_ext4(&path, image, &["noinit_itable"], attrs);
    drop(loop_dev);
    mount
}

/// `struct fstrim_range` (linux/fs.h).
#[repr(C)]
struct FstrimRange {
    start: u64,
    len: u64,
    minlen: u64,
}
const FITRIM: libc::c_ulong = 0xC018_5879;

/// Gives the blocks of deleted files on the filesystem of `dir` (an fd opened on it) back to the
/// image's host file (FITRIM through the loop device punches holes in it).
pub fn trim(dir: &OwnedFd) -> Result<u64, String> {
    let mut range = FstrimRange { start: 0, len: u64::MAX, minlen: 0 };
    // SAFETY: FITRIM with a valid fstrim_range on an fd of ours.
    if unsafe { libc::ioctl(dir.as_raw_fd(), FITRIM, &mut range as *mut FstrimRange) } != 0 {
        return Err(os_err("FITRIM"));
    }
    Ok(range.len)
}

/// fsopen/fsconfig/fsmount of the ext4 on block device `dev` with the flag options `flags`.
fn fsmount_ext4(dev: &str, image: &Path, flags: &[&str], attrs: libc::c_uint) -> Result<OwnedFd, String> {
    let ext4 = cstring("ext4")?;
    // SAFETY: fsopen with a NUL-terminated filesystem name.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, ext4.as_ptr(), FSOPEN_CLOEXEC) };
    if fd < 0 {
        return Err(os_err("fsopen(ext4)"));
    }
    // SAFETY: fsopen returned a new fd we own.
    let fs = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let config = |cmd: libc::c_uint, key: Option<&CString>, value: Option<&CString>| -> Result<(), String> {
        // SAFETY: fsconfig on our context with NUL-terminated key and value (or null).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs.as_raw_fd(),
                cmd,
                key.map_or(std::ptr::null(), |k| k.as_ptr()),
                value.map_or(std::ptr::null(), |v| v.as_ptr()),
                0,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("mounting the disk {} ({dev}): {e} {}", image.display(), context_log(&fs)));
        }
        Ok(())
    };
    config(FSCONFIG_SET_STRING, Some(&cstring("source")?), Some(&cstring(dev)?))?;
    for flag in flags {
        config(FSCONFIG_SET_FLAG, Some(&cstring(flag)?), None)?;
    }
    config(FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: fsmount of a created context; returns a new fd we own.
    let mfd = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) };
    if mfd < 0 {
        return Err(os_err(&format!("fsmount of {}", image.display())));
    }
    // SAFETY: fsmount returned a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(mfd as i32) })
}
