//! Seccomp filters for the VMM's threads, installed by each thread on itself once set-up is
//! done: a vCPU thread needs KVM_RUN and the bus; a device thread needs its queues' memory,
//! eventfds, epoll and its host file or socket. Nothing else (no open, no exec, no new
//! sockets, no clone): a guest that takes over a device thread finds little to call.
//!
//! `ORCHESTRATOR_VMM_SECCOMP=log` logs violations instead of killing (for developing a new
//! device); `off` disables the filters.

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};
use std::collections::BTreeMap;

/// Calls every VMM thread makes: memory, locks, signals, time, exit.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
    libc::SYS_getrandom,
];

/// Device threads: epoll, positioned file I/O, flush, their socket.
const DEVICE: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_ioctl,
    libc::SYS_fcntl,
];

/// vCPU threads additionally start device workers (the driver sets DRIVER_OK from a vCPU), and
/// filters stack: a worker started by a filtered vCPU keeps the vCPU filter, so the vCPU list
/// must include everything a device needs.
const VCPU_EXTRA: &[i64] = &[libc::SYS_eventfd2, libc::SYS_seccomp, libc::SYS_clone, libc::SYS_clone3, libc::SYS_set_robust_list, libc::SYS_sched_getaffinity, libc::SYS_prctl];

fn mode() -> Option<SeccompAction> {
    match std::env::var("ORCHESTRATOR_VMM_SECCOMP").as_deref() {
        Ok("off") => None,
        Ok("log") => Some(SeccompAction::Log),
        _ => Some(SeccompAction::KillProcess),
    }
}

fn build(extra: &[&[i64]], mismatch: SeccompAction) -> Result<BpfProgram, String> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON.iter().chain(extra.iter().flat_map(|l| l.iter())).map(|nr| (*nr, vec![])).collect();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64).map_err(|e| e.to_string())?;
    filter.try_into().map_err(|e: seccompiler::BackendError| e.to_string())
}

fn apply(extra: &[&[i64]], what: &str) {
    let Some(mismatch) = mode() else { return };
    match build(extra, mismatch) {
        Ok(prog) => {
            if let Err(e) = seccompiler::apply_filter(&prog) {
                tracing::error!("{what} seccomp filter: {e}");
            }
        }
        Err(e) => tracing::error!("{what} seccomp filter: {e}"),
    }
}

/// Called by each device worker thread before it touches guest data.
pub fn apply_device_filter() {
    apply(&[DEVICE], "device thread")
}

/// Called by each vCPU thread before its first KVM_RUN.
pub fn apply_vcpu_filter() {
    apply(&[DEVICE, VCPU_EXTRA], "vCPU thread")
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters_compile() {
        super::build(&[super::DEVICE], seccompiler::SeccompAction::KillProcess).unwrap();
        super::build(&[super::DEVICE, super::VCPU_EXTRA], seccompiler::SeccompAction::KillProcess).unwrap();
    }
}
