//! The namespace sandbox's end of the link: a TUN device (`IFF_TUN | IFF_NO_PI`, IP packets
//! without a header) created inside the sandbox's network namespace, whose fd stays with the
//! shim. The sandbox sees `eth0`; its packets come out of the fd, and nothing reaches a host
//! interface.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` with its union as a short (`ifr_flags`) or an int (`ifr_qlen`) in front.
#[repr(C)]
struct IfReq<T> {
    name: [libc::c_char; libc::IFNAMSIZ],
    value: T,
    // At least the kernel's 40 bytes whatever T is (it copies a whole ifreq).
    _pad: [u8; 24],
}

/// Creates TUN device `name` in the network namespace at `netns` (for instance
/// `/proc/PID/ns/net`) and returns its fd, non-blocking and close-on-exec. A helper thread
/// enters the namespace, so the caller's own namespace never changes.
pub fn create_in(netns: &Path, name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    let ns = std::fs::File::open(netns)?;
    let name = name.to_string();
    std::thread::Builder::new()
        .name("tun-create".into())
        .spawn(move || -> io::Result<OwnedFd> {
            // SAFETY: setns on this thread only, with an fd we opened.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: open with a constant path.
            let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut req = IfReq { name: [0; libc::IFNAMSIZ], value: IFF_TUN | IFF_NO_PI, _pad: [0; 24] };
            for (d, s) in req.name.iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            // SAFETY: TUNSETIFF reads an ifreq we own.
            if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
                return Err(io::Error::last_os_error());
            }
            set_tx_queue_len(&req.name)?;
            Ok(fd)
        })?
        .join()
        .map_err(|_| io::Error::other("the TUN thread panicked"))?
}

/// A burst of new connections (a crawler, a test) must not overflow the link's queue while
/// the stack catches up: the kernel's default is 500 packets. Set here, by the host: a
/// user-namespaced sandbox may not change it.
const TX_QUEUE_LEN: libc::c_int = 10_000;
const SIOCSIFTXQLEN: libc::c_ulong = 0x8943;

fn set_tx_queue_len(name: &[libc::c_char; libc::IFNAMSIZ]) -> io::Result<()> {
    // SAFETY: a socket for one interface ioctl, closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    let mut req = IfReq { name: *name, value: TX_QUEUE_LEN, _pad: [0; 24] };
    // SAFETY: SIOCSIFTXQLEN reads an ifreq whose union holds an int.
    if unsafe { libc::ioctl(s.as_raw_fd(), SIOCSIFTXQLEN, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads one frame into `buf`; `Ok(None)` when none is waiting.
pub fn read_frame(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: reading into a live buffer of its own length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}
