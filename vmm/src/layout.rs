//! Guest physical memory layout: where the boot structures, ACPI tables, kernel, initramfs and
//! device windows live. One place, so the loader, the ACPI tables and the devices agree.

/// GDT and IDT for the 32-bit PVH entry.
pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`, then its module list and memory map.
pub const START_INFO_ADDR: u64 = 0x6000;
pub const MODLIST_ADDR: u64 = 0x6040;
pub const MEMMAP_ADDR: u64 = 0x7000;
/// Linux 64-bit boot protocol: `boot_params` (the zero page), then the identity-mapping page
/// tables (PML4, PDPT, four page directories: 0x9000-0xefff), and a boot stack below 0x6000.
pub const BOOT_PARAMS_ADDR: u64 = 0x8000;
pub const PML4_ADDR: u64 = 0x9000;
pub const BOOT_STACK_TOP: u64 = 0x5ff0;
/// Kernel command line and its capacity (the kernel's COMMAND_LINE_SIZE on x86 is 2048).
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 2048;
/// End of conventional memory below 1 MiB (the EBDA starts here).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables: RSDP first, then the rest, inside the BIOS area (not RAM in the memory map).
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x100000;
/// Start of RAM above the legacy hole; the kernel loads at its own physical address above it.
pub const HIMEM_START: u64 = 0x100000;
/// RAM above this goes to a second region at 4 GiB (below: device windows, IOAPIC, LAPIC).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio windows, one page each.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI handed to virtio devices (0-4 are legacy: PIT, keyboard, cascade, COM2, COM1).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// The IOAPIC KVM emulates has 24 pins.
pub const IRQ_MAX: u32 = 23;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// COM1 and its IRQ.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// The ACPI sleep control / status and reset register (hardware-reduced ACPI), one I/O port.
pub const ACPI_POWER_PORT: u16 = 0x3c0;
/// Where KVM's TSS and identity map pages go (must not overlap RAM or devices).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
