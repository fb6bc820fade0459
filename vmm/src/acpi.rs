//! ACPI tables for a hardware-reduced machine: RSDP → XSDT → FADT (sleep control/status and
//! reset registers on one I/O port, see `devices::power`), MADT (one local APIC per vCPU and the
//! IOAPIC) and a DSDT that describes COM1 and every virtio-mmio device as `LNRO0005` with its
//! window and interrupt. That is how a stock kernel without `virtio_mmio.device=` support finds
//! its devices, and how it learns to power off (`_S5_`).

use crate::layout::*;
use crate::VmmError;
use acpi_tables::{aml, madt, rsdp::Rsdp, sdt::GenericAddress, sdt::Sdt, xsdt::XSDT, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const OEM_ID: [u8; 6] = *b"ORCHVM";
const OEM_TABLE: [u8; 8] = *b"ORCHVMM ";
/// FADT flags: RESET_REG_SUP (10), HW_REDUCED_ACPI (20).
const FADT_FLAGS: u32 = (1 << 10) | (1 << 20);
/// FADT IA-PC boot architecture flags: no VGA (2), no MSI (3), no ASPM control (4), and no CMOS
/// RTC (5); the 8042 bit (1) stays clear, so there is no keyboard controller either. Without
/// "no CMOS RTC", Linux registers rtc_cmos and probes ports 0x70/0x71 for seconds of guest time
/// (4.9 s of an 8 s boot, measured with initcall_debug in the nested harness); the guest's wall
/// clock comes from kvmclock instead.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5);
/// What the guest writes to the power port: the reset value, and S5 with SLP_EN.
pub const RESET_VALUE: u8 = 1;
pub const S5_SLEEP_TYPE: u8 = 5;
pub const SLEEP_ENABLE: u8 = 1 << 5;

/// One virtio-mmio device as the DSDT describes it.
#[derive(Debug, Clone, Copy)]
pub struct MmioDeviceInfo {
    pub base: u64,
    pub irq: u32,
}

struct Placer {
    next: u64,
}

impl Placer {
    fn place(&mut self, len: usize) -> Result<u64, VmmError> {
        let at = self.next;
        let end = at + len as u64;
        if end > ACPI_END {
            return Err(VmmError::Config("ACPI tables do not fit below 1 MiB (too many devices)".into()));
        }
        self.next = (end + 7) & !7;
        Ok(at)
    }
}

fn dsdt(devices: &[MmioDeviceInfo]) -> Vec<u8> {
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_irq, &com1_io]);
    let com1_hid = aml::EISAName::new("PNP0501");
    let (hid_name, uid_name, crs_name) = (aml::Name::new("_HID".into(), &com1_hid), aml::Name::new("_UID".into(), &aml::ZERO), aml::Name::new("_CRS".into(), &com1_crs));
    let com1 = aml::Device::new("COM1".into(), vec![&hid_name, &uid_name, &crs_name]);
    let names: Vec<String> = (0..devices.len()).map(|i| format!("V{i:03}")).collect();
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let mem = aml::Memory32Fixed::new(true, d.base as u32, VIRTIO_MMIO_SIZE as u32);
        let irq = aml::Interrupt::new(true, true, false, false, d.irq);
        let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
        let uid = i as u32;
        let hid: aml::AmlStr = "LNRO0005";
        let (hid_name, uid_name, crs_name) = (aml::Name::new("_HID".into(), &hid), aml::Name::new("_UID".into(), &uid), aml::Name::new("_CRS".into(), &crs));
        let dev = aml::Device::new(names[i].as_str().into(), vec![&hid_name, &uid_name, &crs_name]);
        let mut bytes = Vec::new();
        dev.to_aml_bytes(&mut bytes);
        bodies.push(bytes);
    }
    struct Raw<'a>(&'a [u8]);
    impl Aml for Raw<'_> {
        fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
            sink.vec(self.0);
        }
    }
    let raws: Vec<Raw> = bodies.iter().map(|b| Raw(b)).collect();
    let mut children: Vec<&dyn Aml> = vec![&com1];
    children.extend(raws.iter().map(|r| r as &dyn Aml));
    let sb = aml::Scope::new("_SB_".into(), children);
    sb.to_aml_bytes(&mut table);
    // \_S5_: the sleep type for soft-off; Linux offers ACPI power-off only when it exists.
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE])).to_aml_bytes(&mut table);
    table.update_checksum();
    table.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut t = Sdt::new(*b"FACP", 276, 6, OEM_ID, OEM_TABLE, 1);
    t.write(40, dsdt_addr as u32);
    t.write(109, IAPC_BOOT_ARCH);
    t.write(112, FADT_FLAGS);
    t.write(116, GenericAddress::io_port_address::<u8>(ACPI_POWER_PORT)); // RESET_REG
    t.write(128, RESET_VALUE);
    t.write(131, 3u8); // minor version
    t.write(140, dsdt_addr); // X_DSDT
    t.write(244, GenericAddress::io_port_address::<u8>(ACPI_POWER_PORT)); // SLEEP_CONTROL_REG
    t.write(256, GenericAddress::io_port_address::<u8>(ACPI_POWER_PORT)); // SLEEP_STATUS_REG
    t.write_bytes(268, b"ORCHVMM\0"); // hypervisor vendor identity
    t.update_checksum();
    t.as_slice().to_vec()
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut m = madt::MADT::new(OEM_ID, OEM_TABLE, 1, madt::LocalInterruptController::Address(LAPIC_ADDR));
    for id in 0..vcpus {
        m.add_structure(madt::ProcessorLocalApic::new(id, id, madt::EnabledStatus::Enabled));
    }
    m.add_structure(madt::IoApic::new(0, IOAPIC_ADDR, 0));
    let mut out = Vec::new();
    m.to_aml_bytes(&mut out);
    out
}

/// Writes every table; returns the RSDP's address for `hvm_start_info`.
pub fn write_tables(mem: &GuestMemoryMmap, vcpus: u8, devices: &[MmioDeviceInfo]) -> Result<u64, VmmError> {
    let mut placer = Placer { next: ACPI_START };
    let rsdp_addr = placer.place(Rsdp::len())?;
    let write = |bytes: &[u8], at: u64| mem.write_slice(bytes, GuestAddress(at)).map_err(|e| VmmError::Config(format!("writing ACPI tables: {e}")));

    let dsdt = dsdt(devices);
    let dsdt_addr = placer.place(dsdt.len())?;
    write(&dsdt, dsdt_addr)?;
    let fadt = fadt(dsdt_addr);
    let fadt_addr = placer.place(fadt.len())?;
    write(&fadt, fadt_addr)?;
    let madt = madt(vcpus);
    let madt_addr = placer.place(madt.len())?;
    write(&madt, madt_addr)?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = placer.place(xsdt_bytes.len())?;
    write(&xsdt_bytes, xsdt_addr)?;

    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    write(&rsdp, rsdp_addr)?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_name_every_device() {
        let devices = [MmioDeviceInfo { base: VIRTIO_MMIO_BASE, irq: 5 }, MmioDeviceInfo { base: VIRTIO_MMIO_BASE + 0x1000, irq: 6 }];
        let d = dsdt(&devices);
        assert!(checksum_ok(&d));
        assert_eq!(u32::from_le_bytes(d[4..8].try_into().unwrap()) as usize, d.len());
        let text = String::from_utf8_lossy(&d);
        assert_eq!(text.matches("LNRO0005").count(), 2);
        assert!(text.contains("_S5_") && text.contains("V001") && text.contains("COM1"));
        let f = fadt(0x1234);
        assert!(checksum_ok(&f) && f.len() == 276);
        // No CMOS RTC, no 8042: the guest must not probe for either.
        let boot_arch = u16::from_le_bytes([f[109], f[110]]);
        assert_eq!((boot_arch & (1 << 5), boot_arch & (1 << 1)), (1 << 5, 0));
        assert!(checksum_ok(&madt(2)));
    }

    #[test]
    fn rsdp_points_at_the_xsdt_in_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let at = write_tables(&mem, 1, &[MmioDeviceInfo { base: VIRTIO_MMIO_BASE, irq: 5 }]).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(at)).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[..20]) && checksum_ok(&rsdp));
        let xsdt = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(xsdt)).unwrap();
        assert_eq!(&sig, b"XSDT");
    }
}
