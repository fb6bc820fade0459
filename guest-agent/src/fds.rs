//! File-descriptor hygiene at the sandbox boundary: nothing but what a process was given on
//! purpose (0, 1, 2 and, for the agent, its stream) may cross an execve into the sandbox.
//! Close-on-exec everywhere is the rule; [`cloexec_from`] is the final sweep that makes a fd
//! someone forgot (a library, a future change) harmless anyway.

/// `close_range(2)`'s flag: mark the range close-on-exec instead of closing it (Linux 5.11),
/// so a pipe the caller still needs until execve (its error pipe) keeps working.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// Marks every fd from `lowest` up close-on-exec. Async-signal-safe (raw syscalls only): call
/// it between fork and execve.
///
/// # Safety
/// Only changes fd flags; safe in a forked child of a multi-threaded process.
pub unsafe fn cloexec_from(lowest: libc::c_uint) {
    // SAFETY: close_range with a valid range and flag; on kernels before 5.11 it fails with
    // EINVAL and the loop below does the same one fd at a time.
    if unsafe { libc::syscall(libc::SYS_close_range, lowest, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC) } == 0 {
        return;
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills a valid struct.
    let top = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur.min(1 << 20) as libc::c_int } else { 1 << 16 };
    for fd in lowest as libc::c_int..top {
        // SAFETY: fcntl on any number; EBADF for fds that are not open.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// The fds open in this process, from /proc/self/fd (for tests and the agent's start-up check).
pub fn open_fds() -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok())).collect())
        .unwrap_or_default();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn the_sweep_marks_every_inherited_fd_close_on_exec() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let fd = file.as_raw_fd();
        // SAFETY: clearing FD_CLOEXEC on our own fd, as a careless library might.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        // SAFETY: a child that only runs the sweep and reports the flag of `fd`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                cloexec_from(3);
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::_exit(if flags & libc::FD_CLOEXEC != 0 { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "fd {fd} survived the sweep");
    }
}
