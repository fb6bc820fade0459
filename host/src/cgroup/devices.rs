//! The device policy of a namespace sandbox's cgroup: only the nodes the agent provides may be
//! opened (null, zero, full, random, urandom, tty, ptmx and the pty slaves), whatever node a
//! process inside makes or finds. On cgroup v1 the `devices` controller (`devices.deny a`,
//! then the allow list); on cgroup v2 a BPF_PROG_TYPE_CGROUP_DEVICE program attached to the
//! group, as runc and crun do. On a hybrid host (v1 controllers plus a v2 mount) both apply.
//!
//! Invariant: the program and the v1 list are generated from one table, [`SANDBOX_DEVICES`],
//! and anything not in it is refused (the program's last instruction answers "deny").

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Char,
    Block,
}

/// One allowed device: a major, a minor (None: any) and read/write access (never mknod).
#[derive(Debug, Clone, Copy)]
pub struct DeviceRule {
    pub kind: Kind,
    pub major: u32,
    pub minor: Option<u32>,
}

const fn chr(major: u32, minor: u32) -> DeviceRule {
    DeviceRule { kind: Kind::Char, major, minor: Some(minor) }
}

/// What a sandbox may open: the agent's /dev (guest_agent::init) and its devpts instance.
pub const SANDBOX_DEVICES: &[DeviceRule] = &[
    chr(1, 3), // null
    chr(1, 5), // zero
    chr(1, 7), // full
    chr(1, 8), // random
    chr(1, 9), // urandom
    chr(5, 0), // tty
    chr(5, 2), // ptmx
    // pty slaves (/dev/pts/N)
    DeviceRule { kind: Kind::Char, major: 136, minor: None },
];

/// The v1 `devices.allow` lines for `rules`.
pub fn v1_allow_lines(rules: &[DeviceRule]) -> Vec<String> {
    rules
        .iter()
        .map(|r| {
            let kind = if r.kind == Kind::Char { 'c' } else { 'b' };
            let minor = r.minor.map_or("*".to_string(), |m| m.to_string());
            format!("{kind} {}:{minor} rw", r.major)
        })
        .collect()
}

/// Writes the v1 policy into a group's `devices` directory: deny all, then allow the table.
pub fn apply_v1(dir: &Path, rules: &[DeviceRule]) -> io::Result<()> {
    super::write(&dir.join("devices.deny"), "a")?;
    for line in v1_allow_lines(rules) {
        super::write(&dir.join("devices.allow"), &line)?;
    }
    Ok(())
}

// eBPF opcodes (linux/bpf_common.h, linux/bpf.h).
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_X: u8 = 0xbc;
const ALU64_MOV_K: u8 = 0xb7;
const JNE_K: u8 = 0x55;
const JNE_X: u8 = 0x5d;
const EXIT: u8 = 0x95;
// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
const DEVCG_DEV_BLOCK: i32 = 1;
const DEVCG_DEV_CHAR: i32 = 2;
const DEVCG_ACC_READ: i32 = 2;
const DEVCG_ACC_WRITE: i32 = 4;

/// One `struct bpf_insn`, as the kernel reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// The device program for `rules`: r2 = type, r3 = access, r4 = major, r5 = minor; one block
/// per rule that jumps to the next block on any mismatch and otherwise returns 1 (allow);
/// after the last block, 0 (deny).
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        let mut block = vec![
            insn(JNE_K, 2, 0, 0, if rule.kind == Kind::Char { DEVCG_DEV_CHAR } else { DEVCG_DEV_BLOCK }),
            // (access & allowed) != access: something beyond read/write (mknod) was asked.
            insn(ALU32_MOV_X, 1, 3, 0, 0),
            insn(ALU32_AND_K, 1, 0, 0, DEVCG_ACC_READ | DEVCG_ACC_WRITE),
            insn(JNE_X, 1, 3, 0, 0),
            insn(JNE_K, 4, 0, 0, rule.major as i32),
        ];
        if let Some(minor) = rule.minor {
            block.push(insn(JNE_K, 5, 0, 0, minor as i32));
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        block.push(insn(EXIT, 0, 0, 0, 0));
        // Every jump in the block lands on the first instruction after it.
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K || ins.code == JNE_X {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<i64> {
    // SAFETY: bpf(2) with an attr struct of the stated size, zero beyond the fields we set.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>() as u32) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Loads the program for `rules` and attaches it to the v2 group at `dir` (allow-multi, so it
/// runs beside what systemd attaches to ancestors: every program must allow). The group keeps
/// the program alive; no fd is held afterwards.
pub fn apply_v2(dir: &Path, rules: &[DeviceRule]) -> io::Result<()> {
    let insns = program(rules);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: c"Apache-2.0".as_ptr() as u64,
        ..Default::default()
    };
    let prog = match bpf(BPF_PROG_LOAD, &attr) {
        // SAFETY: BPF_PROG_LOAD returned a new fd we own.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as i32) },
        Err(e) => {
            // Once more with the verifier's log (a log that does not fit fails with ENOSPC,
            // so it is only asked for to explain a failure).
            let mut log = vec![0u8; 1 << 16];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &attr);
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]);
            return Err(io::Error::new(e.kind(), format!("loading the device BPF program: {e} {}", verifier.trim())));
        }
    };
    let group = std::fs::File::open(dir).map_err(|e| io::Error::new(e.kind(), format!("opening cgroup {}: {e}", dir.display())))?;
    let attach = ProgAttachAttr {
        target_fd: group.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &attach).map_err(|e| io::Error::new(e.kind(), format!("attaching the device program to {}: {e}", dir.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program the way the kernel would, on one (type, access, major, minor).
    fn interpret(p: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [((access as u32) << 16) | kind as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                ALU32_MOV_X => r[dst] = r[src] as u32 as u64,
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JNE_K | JNE_X => {}
                EXIT => return r[0],
                other => panic!("unknown opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_program_allows_exactly_the_table_for_read_and_write() {
        let p = program(SANDBOX_DEVICES);
        let rw = DEVCG_ACC_READ | DEVCG_ACC_WRITE;
        for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2), (136, 0), (136, 77)] {
            assert_eq!(interpret(&p, DEVCG_DEV_CHAR, rw, major, minor), 1, "c {major}:{minor}");
            assert_eq!(interpret(&p, DEVCG_DEV_CHAR, DEVCG_ACC_READ, major, minor), 1, "c {major}:{minor} r");
        }
        // /dev/kvm, /dev/mem, tty1, loop-control, a loop disk, sda, /dev/null as a block device.
        for (kind, major, minor) in [(DEVCG_DEV_CHAR, 10, 232), (DEVCG_DEV_CHAR, 1, 1), (DEVCG_DEV_CHAR, 4, 1), (DEVCG_DEV_CHAR, 10, 237), (DEVCG_DEV_BLOCK, 7, 0), (DEVCG_DEV_BLOCK, 8, 0), (DEVCG_DEV_BLOCK, 1, 3)] {
            assert_eq!(interpret(&p, kind, rw, major, minor), 0, "{kind} {major}:{minor}");
        }
        // mknod of an allowed node is still refused (the sandbox has no CAP_MKNOD either).
        assert_eq!(interpret(&p, DEVCG_DEV_CHAR, 1, 1, 3), 0);
    }

    /// Forks a child, puts it into the group(s) `join` names (written to their cgroup.procs by
    /// the parent), and reports which of `paths` it could open read-write.
    fn opens_in_group(join: &[std::path::PathBuf], paths: &[&str]) -> Vec<bool> {
        let c_paths: Vec<std::ffi::CString> = paths.iter().map(|p| std::ffi::CString::new(*p).unwrap()).collect();
        let mut fds = [0; 2];
        // SAFETY: a fresh pipe; the child below makes raw syscalls only.
        unsafe { libc::pipe(fds.as_mut_ptr()) };
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                let mut b = 0u8;
                libc::read(fds[0], (&mut b as *mut u8).cast(), 1);
                let mut bits = 0;
                for (i, p) in c_paths.iter().enumerate() {
                    let fd = libc::open(p.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOCTTY);
                    if fd >= 0 {
                        bits |= 1 << i;
                        libc::close(fd);
                    }
                }
                libc::_exit(bits);
            }
        }
        for dir in join {
            std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        }
        // SAFETY: releasing and reaping our child.
        unsafe { libc::write(fds[1], [1u8].as_ptr().cast(), 1) };
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let bits = libc::WEXITSTATUS(status);
        (0..paths.len()).map(|i| bits & (1 << i) != 0).collect()
    }

    /// The real kernel, on each policy alone: the v1 list (when the host has the controller)
    /// and the v2 program (on a v2 host or a hybrid host's unified mount).
    #[test]
    fn the_kernel_refuses_host_devices_under_each_policy() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: creating cgroups needs root (`just test`)");
            return;
        }
        let probes = ["/dev/null", "/dev/urandom", "/dev/loop-control", "/dev/mem"];
        let expected = [true, true, false, false];
        let root = Path::new("/sys/fs/cgroup");
        let v2_root = if root.join("cgroup.controllers").exists() { root.to_path_buf() } else { root.join("unified") };
        let name = format!("orchestrator-devtest-{}", std::process::id());
        let mut tried = 0;
        if v2_root.join("cgroup.procs").exists() {
            let dir = v2_root.join(&name);
            std::fs::create_dir(&dir).unwrap();
            apply_v2(&dir, SANDBOX_DEVICES).unwrap();
            let seen = opens_in_group(std::slice::from_ref(&dir), &probes);
            std::fs::remove_dir(&dir).unwrap();
            assert_eq!(seen, expected, "v2 program, {probes:?}");
            tried += 1;
        }
        let v1 = root.join("devices");
        if v1.join("devices.deny").exists() {
            let dir = v1.join(&name);
            std::fs::create_dir(&dir).unwrap();
            apply_v1(&dir, SANDBOX_DEVICES).unwrap();
            let seen = opens_in_group(std::slice::from_ref(&dir), &probes);
            std::fs::remove_dir(&dir).unwrap();
            assert_eq!(seen, expected, "v1 list, {probes:?}");
            tried += 1;
        }
        assert!(tried > 0, "this host has neither a cgroup v2 mount nor a v1 devices controller");
    }

    #[test]
    fn v1_lines_name_every_rule() {
        assert_eq!(v1_allow_lines(SANDBOX_DEVICES), ["c 1:3 rw", "c 1:5 rw", "c 1:7 rw", "c 1:8 rw", "c 1:9 rw", "c 5:0 rw", "c 5:2 rw", "c 136:* rw"]);
    }
}
