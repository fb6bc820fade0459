//! vCPU set-up for the PVH entry (32-bit protected mode, flat segments, paging off, EBX =
//! `hvm_start_info`) or the Linux 64-bit entry (long mode, identity paging, RSI =
//! `boot_params`), CPUID from KVM's supported set (its own leaves kept, so the guest finds
//! kvmclock), boot MSRs, the LAPIC's LINT0/LINT1, and the run loop that dispatches exits.

use crate::bus::Bus;
use crate::layout::*;
use crate::kernel::Entry;
use crate::{ExitReason, VmControl, VmmError};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// CPUID for vCPU `index` of `count`: KVM's supported set with our topology and the
/// hypervisor bit.
pub fn cpuid_for(kvm: &Kvm, index: u8, count: u8) -> Result<CpuId, VmmError> {
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(|e| VmmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                entry.ecx |= 1 << 31; // running under a hypervisor
                if count > 1 {
                    entry.edx |= 1 << 28; // HTT: the logical count above is valid
                }
            }
            0xb | 0x1f => entry.edx = u32::from(index),
            // No power management leaf: nothing behind it is emulated.
            6 => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            _ => {}
        }
    }
    Ok(cpuid)
}

fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

fn segment(entry: u64, index: u8) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: if g == 1 { (raw_limit << 12) | 0xfff } else { raw_limit },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

/// Writes the boot GDT for `entry`'s mode and an empty IDT (shared by every vCPU).
pub fn write_boot_tables(mem: &GuestMemoryMmap, entry: Entry) -> Result<(), VmmError> {
    let gdt = boot_gdt(matches!(entry, Entry::Linux64(_)));
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64)).map_err(|e| VmmError::Config(format!("writing the GDT: {e}")))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR)).map_err(|e| VmmError::Config(format!("writing the IDT: {e}")))?;
    Ok(())
}

/// Flat segments over 4 GiB: 32-bit code for the PVH entry, 64-bit code (L set, D clear) for
/// the Linux 64-bit entry.
fn boot_gdt(long_mode: bool) -> [u64; 4] {
    [
        gdt_entry(0, 0, 0),
        gdt_entry(if long_mode { 0xa09b } else { 0xc09b }, 0, 0xffff_ffff),
        gdt_entry(0xc093, 0, 0xffff_ffff), // data, 4 GiB
        gdt_entry(0x008b, 0, 0x67),        // TSS
    ]
}

/// Puts a vCPU in the state its entry expects. Only the boot vCPU gets registers; the others
/// wait for INIT/SIPI from the guest. `cr3` is the identity map for the 64-bit entry.
pub fn configure(kvm: &Kvm, vcpu: &VcpuFd, index: u8, count: u8, entry: Entry, cr3: u64) -> Result<(), VmmError> {
    let k = |what: &'static str| move |e| VmmError::Kvm(what, e);
    vcpu.set_cpuid2(&cpuid_for(kvm, index, count)?).map_err(k("KVM_SET_CPUID2"))?;
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, 1), // fast strings
        (MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, write-back by default
    ]
    .iter()
    .map(|(index, data)| kvm_msr_entry { index: *index, data: *data, ..Default::default() })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| VmmError::Config(format!("MSR list: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(k("KVM_SET_MSRS"))?;
    if set != entries.len() {
        tracing::debug!("KVM accepted {set} of {} boot MSRs", entries.len());
    }
    let mut lapic = vcpu.get_lapic().map_err(k("KVM_GET_LAPIC"))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(k("KVM_SET_LAPIC"))?;
    vcpu.set_fpu(&kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }).map_err(k("KVM_SET_FPU"))?;
    if index != 0 {
        return Ok(());
    }
    let mut sregs = vcpu.get_sregs().map_err(k("KVM_GET_SREGS"))?;
    let long_mode = matches!(entry, Entry::Linux64(_));
    let gdt = boot_gdt(long_mode);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let code = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);
    let regs = match entry {
        Entry::Pvh(at) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
            kvm_regs { rflags: 0x2, rip: at.0, rbx: START_INFO_ADDR, ..Default::default() }
        }
        Entry::Linux64(at) => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = cr3;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
            kvm_regs { rflags: 0x2, rip: at.0, rsi: BOOT_PARAMS_ADDR, rsp: BOOT_STACK_TOP, rbp: BOOT_STACK_TOP, ..Default::default() }
        }
    };
    vcpu.set_sregs(&sregs).map_err(k("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(k("KVM_SET_REGS"))?;
    Ok(())
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut v = [0u8; 4];
    for i in 0..4 {
        v[i] = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(v) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

/// Runs a vCPU until the VM ends (any vCPU's exit, or `VmControl::stop`).
pub fn run(mut vcpu: VcpuFd, index: u8, bus: Arc<Bus>, control: Arc<VmControl>) {
    while !control.stopped() {
        match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => bus.pio_read(port, data),
            Ok(VcpuExit::IoOut(port, data)) => {
                if let Some(reason) = bus.pio_write(port, data) {
                    control.finish(reason);
                }
            }
            Ok(VcpuExit::MmioRead(addr, data)) => bus.mmio_read(addr, data),
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if let Some(reason) = bus.mmio_write(addr, data) {
                    control.finish(reason);
                }
            }
            Ok(VcpuExit::Hlt) => control.finish(ExitReason::Crashed(format!("vCPU {index} halted with interrupts off"))),
            Ok(VcpuExit::Shutdown) => control.finish(ExitReason::TripleFault),
            Ok(VcpuExit::SystemEvent(kind, _)) => control.finish(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => ExitReason::Reboot,
                other => ExitReason::Crashed(format!("system event {other}")),
            }),
            Ok(VcpuExit::FailEntry(reason, cpu)) => control.finish(ExitReason::Crashed(format!("KVM entry failed (reason {reason:#x}, cpu {cpu})"))),
            Ok(VcpuExit::InternalError) => control.finish(ExitReason::Crashed(format!("KVM internal error on vCPU {index}"))),
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                tracing::warn!("vCPU {index}: unhandled exit {other:?}");
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => control.finish(ExitReason::Crashed(format!("KVM_RUN on vCPU {index}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_segments_are_flat_32_or_64_bit() {
        let long = boot_gdt(true);
        let cs64 = segment(long[1], 1);
        assert_eq!((cs64.l, cs64.db, cs64.type_, cs64.limit), (1, 0, 0xb, 0xffff_ffff));
        let gdt = boot_gdt(false);
        let cs = segment(gdt[1], 1);
        assert_eq!((cs.base, cs.limit, cs.selector, cs.type_, cs.db, cs.l, cs.g, cs.present), (0, 0xffff_ffff, 8, 0xb, 1, 0, 1, 1));
        let ds = segment(gdt[2], 2);
        assert_eq!((ds.type_, ds.selector, ds.limit), (0x3, 16, 0xffff_ffff));
        let tr = segment(gdt[3], 3);
        assert_eq!((tr.type_, tr.limit, tr.g), (0xb, 0x67, 0));
        assert_eq!(segment(gdt[0], 0).unusable, 1);
    }

    #[test]
    fn lvt_mode_keeps_the_other_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0x30;
        regs[APIC_LVT0 + 2] = 0x01;
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(regs[APIC_LVT0] as u8, 0x30);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2] as u8, 0x01);
    }
}
