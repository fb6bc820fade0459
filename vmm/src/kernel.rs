//! Loading a stock kernel: the ELF `vmlinux` inside a bzImage (LZ4-compressed in Debian's
//! kernels) is unpacked in memory and loaded at its physical addresses through its PVH entry
//! note; the initramfs goes at the top of low RAM, and `hvm_start_info` tells the kernel where
//! its command line, initramfs, memory map and ACPI RSDP are.

use crate::layout::*;
use crate::VmmError;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// bzImage fields (Documentation/arch/x86/boot.rst).
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
/// The LZ4 legacy frame magic and its block size.
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// A decompressed kernel larger than this is refused (Debian's is ~60 MiB).
const VMLINUX_MAX: usize = 512 << 20;
const PVH_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

/// The ELF image to load: the file itself when it is ELF, else unpacked from a bzImage.
pub fn vmlinux_from(image: &[u8]) -> Result<Vec<u8>, VmmError> {
    if image.starts_with(b"\x7fELF") {
        return Ok(image.to_vec());
    }
    let bad = |why: &str| VmmError::Kernel(format!("not an ELF kernel nor a bzImage with an LZ4 payload: {why}"));
    if image.len() < 0x250 || &image[HEADER_MAGIC..HEADER_MAGIC + 4] != b"HdrS" {
        return Err(bad("no bzImage header"));
    }
    let setup_sects = match image[SETUP_SECTS] {
        0 => 4,
        n => n as usize,
    };
    let pm_start = (setup_sects + 1) * 512;
    let word = |at: usize| u32::from_le_bytes([image[at], image[at + 1], image[at + 2], image[at + 3]]) as usize;
    let start = pm_start.checked_add(word(PAYLOAD_OFFSET)).ok_or_else(|| bad("payload offset overflows"))?;
    let end = start.checked_add(word(PAYLOAD_LENGTH)).ok_or_else(|| bad("payload length overflows"))?;
    let payload = image.get(start..end).ok_or_else(|| bad("payload outside the file"))?;
    if !payload.starts_with(&LZ4_LEGACY_MAGIC) {
        return Err(bad("payload is not LZ4 (legacy frame); pass an uncompressed vmlinux instead"));
    }
    lz4_legacy(&payload[4..]).map_err(|e| bad(&e))
}

/// The LZ4 legacy format: blocks of `u32 length` + data, each up to 8 MiB decompressed. The
/// kernel build appends the decompressed size (4 bytes) after the last block.
fn lz4_legacy(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64 << 20);
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while data.len() > 4 {
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if data[..4] == LZ4_LEGACY_MAGIC {
            data = &data[4..];
            continue;
        }
        let compressed = data.get(4..4 + len).ok_or("truncated LZ4 block")?;
        let n = lz4_flex::block::decompress_into(compressed, &mut block).map_err(|e| format!("LZ4: {e}"))?;
        if out.len() + n > VMLINUX_MAX {
            return Err("decompressed kernel larger than 512 MiB".into());
        }
        out.extend_from_slice(&block[..n]);
        data = &data[4 + len..];
    }
    Ok(out)
}

/// Where the kernel starts and what it told us about itself.
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub end: u64,
}

/// Loads the vmlinux ELF through its PVH note (the 32-bit entry that takes `hvm_start_info`).
pub fn load(mem: &GuestMemoryMmap, vmlinux: &[u8]) -> Result<LoadedKernel, VmmError> {
    let mut cursor = std::io::Cursor::new(vmlinux);
    let loaded = Elf::load(mem, None, &mut cursor, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| VmmError::Kernel(format!("loading the kernel ELF: {e}")))?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel { entry, end: loaded.kernel_end }),
        _ => Err(VmmError::Kernel("the kernel has no PVH entry note (CONFIG_PVH); Debian's kernels have one".into())),
    }
}

/// RAM regions as (start, length), with the hole below 4 GiB for devices.
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem_bytes - MMIO_GAP_START)]
    }
}

/// Places the initramfs at the top of low RAM (page aligned, above the kernel).
pub fn load_initrd(mem: &GuestMemoryMmap, mem_bytes: u64, kernel_end: u64, initrd: &[u8]) -> Result<GuestAddress, VmmError> {
    let low_end = mem_bytes.min(MMIO_GAP_START);
    let size = initrd.len() as u64;
    let addr = low_end.checked_sub(size).map(|a| a & !0xfff).filter(|a| *a > kernel_end).ok_or_else(|| {
        VmmError::Config(format!("the initramfs ({} KiB) does not fit in guest memory above the kernel; give the sandbox more memory", size >> 10))
    })?;
    mem.write_slice(initrd, GuestAddress(addr)).map_err(|e| VmmError::Kernel(format!("writing the initramfs: {e}")))?;
    Ok(GuestAddress(addr))
}

/// Writes the command line, module list (the initramfs), memory map and `hvm_start_info`.
pub fn write_start_info(mem: &GuestMemoryMmap, mem_bytes: u64, cmdline: &str, initrd: Option<(GuestAddress, usize)>, rsdp: u64) -> Result<(), VmmError> {
    let w = |bytes: &[u8], at: u64| mem.write_slice(bytes, GuestAddress(at)).map_err(|e| VmmError::Kernel(format!("writing boot data at {at:#x}: {e}")));
    if cmdline.len() + 1 > CMDLINE_MAX {
        return Err(VmmError::Config(format!("kernel command line is {} bytes; the limit is {}", cmdline.len(), CMDLINE_MAX - 1)));
    }
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    w(&line, CMDLINE_ADDR)?;

    let mut memmap = Vec::new();
    let mut entry = |addr: u64, size: u64| {
        memmap.extend_from_slice(&addr.to_le_bytes());
        memmap.extend_from_slice(&size.to_le_bytes());
        memmap.extend_from_slice(&E820_RAM.to_le_bytes());
        memmap.extend_from_slice(&0u32.to_le_bytes());
    };
    entry(0, EBDA_START);
    for (start, len) in ram_regions(mem_bytes) {
        let start_hi = start.max(HIMEM_START);
        if start + len > start_hi {
            entry(start_hi, start + len - start_hi);
        }
    }
    let entries = (memmap.len() / 24) as u32;
    w(&memmap, MEMMAP_ADDR)?;

    let mut nr_modules = 0u32;
    if let Some((addr, size)) = initrd {
        let mut m = Vec::new();
        m.extend_from_slice(&addr.0.to_le_bytes());
        m.extend_from_slice(&(size as u64).to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        w(&m, MODLIST_ADDR)?;
        nr_modules = 1;
    }
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&PVH_MAGIC.to_le_bytes());
    info.extend_from_slice(&1u32.to_le_bytes()); // version
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&nr_modules.to_le_bytes());
    info.extend_from_slice(&MODLIST_ADDR.to_le_bytes());
    info.extend_from_slice(&CMDLINE_ADDR.to_le_bytes());
    info.extend_from_slice(&rsdp.to_le_bytes());
    info.extend_from_slice(&MEMMAP_ADDR.to_le_bytes());
    info.extend_from_slice(&entries.to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    w(&info, START_INFO_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_passes_through_and_garbage_is_refused() {
        let elf = b"\x7fELF rest".to_vec();
        assert_eq!(vmlinux_from(&elf).unwrap(), elf);
        let err = vmlinux_from(&[0u8; 4096]).unwrap_err().to_string();
        assert!(err.contains("no bzImage header"), "{err}");
    }

    #[test]
    fn lz4_legacy_blocks_round_trip() {
        let original: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut data = Vec::new();
        for chunk in original.chunks(LZ4_LEGACY_BLOCK) {
            let c = lz4_flex::block::compress(chunk);
            data.extend_from_slice(&(c.len() as u32).to_le_bytes());
            data.extend_from_slice(&c);
        }
        data.extend_from_slice(&(original.len() as u32).to_le_bytes());
        assert_eq!(lz4_legacy(&data).unwrap(), original);
        // A block length past the end is an error, not a panic.
        let mut bad = data.clone();
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(lz4_legacy(&bad).is_err());
    }

    #[test]
    fn memory_above_3g_is_split_around_the_device_hole() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_regions(4 << 30), vec![(0, MMIO_GAP_START), (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)]);
    }
}
