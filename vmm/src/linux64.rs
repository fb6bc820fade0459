//! The Linux/x86 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit boot
//! protocol"): the fallback for kernels without a PVH note. The boot vCPU starts in long mode
//! with identity-mapped page tables, at the bzImage's 64-bit entry (its decompressor runs in the
//! guest) or a vmlinux's `startup_64`, with RSI pointing at `boot_params` (the "zero page"):
//! the setup header, the command line, the initramfs, the E820 memory map and the ACPI RSDP.

use crate::kernel::{e820_ram, write, E820_RAM};
use crate::layout::*;
use crate::VmmError;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

/// "HdrS", the boot flag and the loader id for "undefined" (boot.rst).
const HDRS_MAGIC: u32 = 0x5372_6448;
const BOOT_FLAG: u16 = 0xaa55;
const LOADER_UNDEFINED: u8 = 0xff;
/// A vmlinux has no setup header of its own; it is loaded where its ELF says, 16 MiB aligned.
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// Identity-mapped with 2 MiB pages: everything below 4 GiB, where the kernel, the zero page,
/// the command line and the initramfs live.
const IDENTITY_MAPPED_GIB: u64 = 4;
const PAGE_PRESENT_RW: u64 = 0x3;
const PAGE_PS: u64 = 0x80;

/// Fills in and writes `boot_params` at `BOOT_PARAMS_ADDR`.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    mem_bytes: u64,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, usize)>,
    rsdp: u64,
) -> Result<(), VmmError> {
    let mut params = boot_params::default();
    params.hdr = header.unwrap_or(setup_header { boot_flag: BOOT_FLAG, header: HDRS_MAGIC, kernel_alignment: KERNEL_ALIGNMENT, ..Default::default() });
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = u32::try_from(addr.0).map_err(|_| VmmError::Config("the initramfs must sit below 4 GiB".into()))?;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    let ram = e820_ram(mem_bytes);
    if ram.len() > params.e820_table.len() {
        return Err(VmmError::Config("too many memory map entries for boot_params".into()));
    }
    for (slot, (addr, size)) in params.e820_table.iter_mut().zip(&ram) {
        *slot = boot_e820_entry { addr: *addr, size: *size, r#type: E820_RAM };
    }
    params.e820_entries = ram.len() as u8;
    write(mem, params.as_slice(), BOOT_PARAMS_ADDR)
}

/// Writes page tables that identity-map the low 4 GiB (PML4 -> one PDPT -> four page
/// directories of 2 MiB pages); returns the PML4's address for CR3.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<u64, VmmError> {
    let pml4 = PML4_ADDR;
    let pdpt = pml4 + 0x1000;
    let first_pd = pdpt + 0x1000;
    write(mem, &(pdpt | PAGE_PRESENT_RW).to_le_bytes(), pml4)?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = first_pd + gib * 0x1000;
        write(mem, &(pd | PAGE_PRESENT_RW).to_le_bytes(), pdpt + gib * 8)?;
        let mut entries = Vec::with_capacity(4096);
        for i in 0..512u64 {
            let frame = (gib << 30) | (i << 21);
            entries.extend_from_slice(&(frame | PAGE_PRESENT_RW | PAGE_PS).to_le_bytes());
        }
        write(mem, &entries, pd)?;
    }
    Ok(pml4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    #[test]
    fn boot_params_carry_the_command_line_initramfs_rsdp_and_memory_map() {
        let m = mem();
        write_boot_params(&m, None, 256 << 20, 42, Some((GuestAddress(0x0f00_0000), 4096)), 0xe0000).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(BOOT_PARAMS_ADDR)).unwrap();
        let (magic, flag, loader, cmd, cmd_len, rd, rd_len) = (p.hdr.header, p.hdr.boot_flag, p.hdr.type_of_loader, p.hdr.cmd_line_ptr, p.hdr.cmdline_size, p.hdr.ramdisk_image, p.hdr.ramdisk_size);
        assert_eq!((magic, flag, loader), (HDRS_MAGIC, BOOT_FLAG, LOADER_UNDEFINED));
        assert_eq!((cmd, cmd_len, rd, rd_len), (CMDLINE_ADDR as u32, 42, 0x0f00_0000, 4096));
        let rsdp = p.acpi_rsdp_addr;
        assert_eq!(rsdp, 0xe0000);
        assert_eq!(p.e820_entries, 2);
        let (a0, s0, t0) = (p.e820_table[0].addr, p.e820_table[0].size, p.e820_table[0].r#type);
        let (a1, s1) = (p.e820_table[1].addr, p.e820_table[1].size);
        assert_eq!((a0, s0, t0), (0, EBDA_START, E820_RAM));
        assert_eq!((a1, s1), (HIMEM_START, (256 << 20) - HIMEM_START));
    }

    #[test]
    fn a_bzimage_header_is_kept_and_the_loader_fields_are_ours() {
        let m = mem();
        let header = setup_header { header: HDRS_MAGIC, version: 0x20f, xloadflags: 0x7f, init_size: 0x1234, ..Default::default() };
        write_boot_params(&m, Some(header), 128 << 20, 10, None, 0).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(BOOT_PARAMS_ADDR)).unwrap();
        let (version, xlf, init, loader, rd) = (p.hdr.version, p.hdr.xloadflags, p.hdr.init_size, p.hdr.type_of_loader, p.hdr.ramdisk_image);
        assert_eq!((version, xlf, init, loader, rd), (0x20f, 0x7f, 0x1234, LOADER_UNDEFINED, 0));
    }

    #[test]
    fn page_tables_identity_map_the_low_4_gib() {
        let m = mem();
        let cr3 = write_page_tables(&m).unwrap();
        let read = |at: u64| -> u64 { m.read_obj(GuestAddress(at)).unwrap() };
        // Walk a few addresses through the tables: each maps to itself.
        for va in [0u64, 0x10_0000, 0x0100_0000, 0x4000_0000 + 0x20_0000, 0xfee0_0000] {
            let pdpt = read(cr3) & !0xfff;
            let pd = read(pdpt + ((va >> 30) & 0x1ff) * 8);
            assert_eq!(pd & PAGE_PRESENT_RW, PAGE_PRESENT_RW);
            let pde = read((pd & !0xfff) + ((va >> 21) & 0x1ff) * 8);
            assert_eq!(pde & PAGE_PS, PAGE_PS, "2 MiB page for {va:#x}");
            assert_eq!((pde & !0x1f_ffff) | (va & 0x1f_ffff), va);
        }
    }
}
