//! Loading a stock kernel: the ELF `vmlinux` inside a bzImage (LZ4-compressed in Debian's
//! kernels) is unpacked in memory and loaded at its physical addresses through its PVH entry
//! note; the initramfs goes at the top of low RAM, and `hvm_start_info` tells the kernel where
//! its command line, initramfs, memory map and ACPI RSDP are.

use crate::layout::*;
use crate::VmmError;
use linux_loader::loader::bootparam;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, KernelLoader};
use std::io::{Read, Seek};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, ReadVolatile};

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
pub(crate) const E820_RAM: u32 = 1;

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

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// PVH when the kernel has the entry note, else the Linux 64-bit boot protocol.
    #[default]
    Auto,
    /// The 32-bit PVH entry with `hvm_start_info` (skips the bzImage decompressor).
    Pvh,
    /// The Linux/x86 64-bit boot protocol: long mode, `boot_params` (the zero page) in RSI.
    Linux64,
}

impl std::str::FromStr for BootProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BootProtocol::Auto),
            "pvh" => Ok(BootProtocol::Pvh),
            "linux64" => Ok(BootProtocol::Linux64),
            other => Err(format!("unknown boot protocol {other:?}: auto, pvh or linux64")),
        }
    }
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Pvh(GuestAddress),
    Linux64(GuestAddress),
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Pvh(a) => write!(f, "the PVH entry at {:#x}", a.0),
            Entry::Linux64(a) => write!(f, "the Linux 64-bit entry at {:#x}", a.0),
        }
    }
}

/// Where the kernel starts, the highest address it occupies while booting, and (for a
/// bzImage) its setup header, which goes into `boot_params`.
pub struct LoadedKernel {
    pub entry: Entry,
    pub end: u64,
    pub setup_header: Option<bootparam::setup_header>,
}

/// The 64-bit entry of a bzImage's protected-mode code (`startup_64`), and the header flag
/// saying it exists.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1;
/// The first boot protocol version with the 64-bit entry.
const BOOT_PROTOCOL_64BIT: u16 = 0x20c;

/// Loads a kernel image (an ELF vmlinux, or a bzImage) and picks how to enter it: PVH when the
/// vmlinux (given, or unpacked from the bzImage's LZ4 payload) has the PVH note, else the
/// 64-bit Linux boot protocol (the vmlinux's `startup_64`, or the bzImage's own decompressor).
/// An ELF is read straight into guest memory; only a bzImage booted through PVH is read whole
/// (to unpack it), so hosts should hand the VMM the unpacked vmlinux.
pub fn load_kernel<R: Read + ReadVolatile + Seek>(mem: &GuestMemoryMmap, image: &mut R, protocol: BootProtocol) -> Result<LoadedKernel, VmmError> {
    let io = |e: std::io::Error| VmmError::Kernel(format!("reading the kernel: {e}"));
    let mut magic = [0u8; 4];
    image.read_exact(&mut magic).map_err(io)?;
    image.rewind().map_err(io)?;
    let loaded = if &magic == b"\x7fELF" {
        load_elf(mem, image, protocol != BootProtocol::Linux64)?
    } else if protocol == BootProtocol::Linux64 {
        return load_bzimage(mem, image);
    } else {
        let mut whole = Vec::new();
        image.read_to_end(&mut whole).map_err(io)?;
        image.rewind().map_err(io)?;
        let unpacked = vmlinux_from(&whole);
        drop(whole);
        match unpacked.and_then(|v| load_elf(mem, &mut std::io::Cursor::new(v.as_slice()), true)) {
            Ok(k) => k, // with the note: PVH; without: its startup_64
            Err(e) if protocol == BootProtocol::Pvh => return Err(e),
            Err(e) => {
                tracing::debug!("no PVH boot for this bzImage ({e}); using its 64-bit entry");
                return load_bzimage(mem, image);
            }
        }
    };
    if protocol == BootProtocol::Pvh && !matches!(loaded.entry, Entry::Pvh(_)) {
        return Err(VmmError::Kernel("PVH boot was asked for, but the kernel has no PVH entry note (CONFIG_PVH)".into()));
    }
    Ok(loaded)
}

/// Loads a vmlinux ELF. Entered through its PVH note (the 32-bit entry that takes
/// `hvm_start_info`) when it has one and `pvh` is asked for, else through its ELF entry point
/// (`startup_64`, in long mode with `boot_params`).
fn load_elf<R: Read + ReadVolatile + Seek>(mem: &GuestMemoryMmap, vmlinux: &mut R, pvh: bool) -> Result<LoadedKernel, VmmError> {
    let loaded = Elf::load(mem, None, vmlinux, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| VmmError::Kernel(format!("loading the kernel ELF: {e}")))?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) if pvh => Entry::Pvh(entry),
        _ => Entry::Linux64(loaded.kernel_load),
    };
    Ok(LoadedKernel { entry, end: loaded.kernel_end, setup_header: None })
}

/// Loads a bzImage's protected-mode part at 1 MiB; the guest runs its decompressor.
fn load_bzimage<R: Read + ReadVolatile + Seek>(mem: &GuestMemoryMmap, image: &mut R) -> Result<LoadedKernel, VmmError> {
    let loaded = BzImage::load(mem, None, image, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| VmmError::Kernel(format!("loading the bzImage: {e}")))?;
    let header = loaded.setup_header.ok_or_else(|| VmmError::Kernel("the bzImage has no setup header".into()))?;
    let (version, xloadflags) = (header.version, header.xloadflags);
    if version < BOOT_PROTOCOL_64BIT || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(VmmError::Kernel(format!(
            "the bzImage (boot protocol {}.{:02}) has neither a PVH note in an LZ4 payload nor a 64-bit entry; use a 64-bit kernel built with CONFIG_PVH",
            version >> 8,
            version & 0xff
        )));
    }
    // The decompressor unpacks to `pref_address` and needs `init_size` bytes there.
    let (pref, init_size) = (header.pref_address, u64::from(header.init_size));
    let end = loaded.kernel_end.max(pref.saturating_add(init_size));
    Ok(LoadedKernel { entry: Entry::Linux64(GuestAddress(loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET)), end, setup_header: Some(header) })
}

/// RAM regions as (start, length), with the hole below 4 GiB for devices.
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem_bytes - MMIO_GAP_START)]
    }
}

/// Places the initramfs at the top of low RAM (page aligned, above the kernel), read straight
/// from `file` into guest memory.
pub fn load_initrd<R: ReadVolatile>(mem: &GuestMemoryMmap, mem_bytes: u64, kernel_end: u64, file: &mut R, size: u64) -> Result<GuestAddress, VmmError> {
    let low_end = mem_bytes.min(MMIO_GAP_START);
    let addr = low_end.checked_sub(size).map(|a| a & !0xfff).filter(|a| *a > kernel_end).ok_or_else(|| {
        VmmError::Config(format!("the initramfs ({} KiB) does not fit in guest memory above the kernel; give the sandbox more memory", size >> 10))
    })?;
    let len = usize::try_from(size).map_err(|_| VmmError::Config("initramfs too large".into()))?;
    mem.read_exact_volatile_from(GuestAddress(addr), file, len).map_err(|e| VmmError::Kernel(format!("reading the initramfs into guest memory: {e}")))?;
    Ok(GuestAddress(addr))
}

/// Writes the kernel command line (both boot protocols read it from `CMDLINE_ADDR`).
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), VmmError> {
    if cmdline.len() + 1 > CMDLINE_MAX {
        return Err(VmmError::Config(format!("kernel command line is {} bytes; the limit is {}", cmdline.len(), CMDLINE_MAX - 1)));
    }
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    write(mem, &line, CMDLINE_ADDR)
}

pub(crate) fn write(mem: &GuestMemoryMmap, bytes: &[u8], at: u64) -> Result<(), VmmError> {
    mem.write_slice(bytes, GuestAddress(at)).map_err(|e| VmmError::Kernel(format!("writing boot data at {at:#x}: {e}")))
}

/// The guest's RAM as the firmware would report it (E820 type 1): conventional memory below
/// the EBDA, then everything from 1 MiB, split around the device hole below 4 GiB.
pub fn e820_ram(mem_bytes: u64) -> Vec<(u64, u64)> {
    let mut map = vec![(0, EBDA_START)];
    for (start, len) in ram_regions(mem_bytes) {
        let start_hi = start.max(HIMEM_START);
        if start + len > start_hi {
            map.push((start_hi, start + len - start_hi));
        }
    }
    map
}

/// Writes the PVH module list (the initramfs), memory map and `hvm_start_info`.
pub fn write_start_info(mem: &GuestMemoryMmap, mem_bytes: u64, initrd: Option<(GuestAddress, usize)>, rsdp: u64) -> Result<(), VmmError> {
    let mut memmap = Vec::new();
    for (addr, size) in e820_ram(mem_bytes) {
        memmap.extend_from_slice(&addr.to_le_bytes());
        memmap.extend_from_slice(&size.to_le_bytes());
        memmap.extend_from_slice(&E820_RAM.to_le_bytes());
        memmap.extend_from_slice(&0u32.to_le_bytes());
    }
    let entries = (memmap.len() / 24) as u32;
    write(mem, &memmap, MEMMAP_ADDR)?;

    let mut nr_modules = 0u32;
    if let Some((addr, size)) = initrd {
        let mut m = Vec::new();
        m.extend_from_slice(&addr.0.to_le_bytes());
        m.extend_from_slice(&(size as u64).to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        write(mem, &m, MODLIST_ADDR)?;
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
    write(mem, &info, START_INFO_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

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

    /// A minimal bzImage header: boot protocol 2.15, 64-bit entry, a gzip (not LZ4) payload.
    fn fake_bzimage(xloadflags: u16) -> Vec<u8> {
        let mut img = vec![0u8; 0x2000];
        img[SETUP_SECTS] = 1; // protected-mode code at 1024
        img[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        img[0x211] = 1; // LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0x100u32.to_le_bytes());
        img[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&0x100u32.to_le_bytes());
        img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        img[0x260..0x264].copy_from_slice(&0x80_0000u32.to_le_bytes());
        img[1024 + 0x100..1024 + 0x102].copy_from_slice(&[0x1f, 0x8b]);
        img
    }

    fn guest() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    #[test]
    fn a_bzimage_without_an_lz4_vmlinux_boots_through_its_64_bit_entry() {
        let k = load_kernel(&guest(), &mut Cursor::new(fake_bzimage(XLF_KERNEL_64).as_slice()), BootProtocol::Auto).unwrap();
        assert_eq!(k.entry, Entry::Linux64(GuestAddress(0x10_0200)));
        // The decompressor's working area counts as the kernel's: the initramfs goes above it.
        assert_eq!(k.end, 0x100_0000 + 0x80_0000);
        assert!(k.setup_header.is_some());
        let err = load_kernel(&guest(), &mut Cursor::new(fake_bzimage(XLF_KERNEL_64).as_slice()), BootProtocol::Pvh).err().unwrap().to_string();
        assert!(err.contains("LZ4"), "{err}");
        let err = load_kernel(&guest(), &mut Cursor::new(fake_bzimage(0).as_slice()), BootProtocol::Auto).err().unwrap().to_string();
        assert!(err.contains("neither a PVH note") && err.contains("2.15"), "{err}");
    }

    /// Debian's cloud kernel, when the test set-up has provisioned it (ORCHESTRATOR_KERNEL_DIR).
    #[test]
    fn debians_kernel_picks_pvh_and_can_be_forced_to_the_64_bit_entry() {
        let Some(dir) = std::env::var_os("ORCHESTRATOR_TEST_KERNEL_DIR") else {
            eprintln!("SKIPPED: ORCHESTRATOR_TEST_KERNEL_DIR is not set (tests/vm/kernels.sh provisions Debian's kernel)");
            return;
        };
        let boot = std::path::Path::new(&dir).join("boot");
        let image = std::fs::read_dir(&boot).unwrap().flatten().map(|e| e.path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with("vmlinuz-")).unwrap();
        let bytes = std::fs::read(image).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 256 << 20)]).unwrap();
        assert!(matches!(load_kernel(&mem, &mut Cursor::new(bytes.as_slice()), BootProtocol::Auto).unwrap().entry, Entry::Pvh(_)));
        let k = load_kernel(&mem, &mut Cursor::new(bytes.as_slice()), BootProtocol::Linux64).unwrap();
        assert_eq!(k.entry, Entry::Linux64(GuestAddress(0x10_0200)));
        // The unpacked vmlinux, too, has both entries.
        let vmlinux = vmlinux_from(&bytes).unwrap();
        assert!(matches!(load_kernel(&mem, &mut Cursor::new(vmlinux.as_slice()), BootProtocol::Linux64).unwrap().entry, Entry::Linux64(a) if a.0 >= 0x100_0000));
    }

    #[test]
    fn memory_above_3g_is_split_around_the_device_hole() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_regions(4 << 30), vec![(0, MMIO_GAP_START), (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)]);
    }
}
