//! Where virtio devices live in the guest: one registration gives a device its MMIO window and
//! IRQ (handed out in order from `layout`), its transport on the bus, an irqfd for that IRQ,
//! one ioeventfd per queue on the window's QueueNotify register, and the entry the ACPI tables
//! describe it by (`LNRO0005`, see `acpi`). A new device is one `register` call; running out of
//! IRQ pins is a typed error, not a silent overlap.

use crate::acpi::MmioDeviceInfo;
use crate::bus::{Bus, BusDevice};
use crate::devices::virtio::{MmioTransport, VirtioDevice};
use crate::layout::{IRQ_MAX, VIRTIO_FIRST_IRQ, VIRTIO_MMIO_BASE, VIRTIO_MMIO_SIZE};
use crate::VmmError;
use kvm_ioctls::{IoEventAddress, VmFd};
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// The virtio-mmio QueueNotify register, relative to a device's window.
const QUEUE_NOTIFY: u64 = 0x50;

#[derive(Default)]
pub struct MmioDeviceManager {
    pub infos: Vec<MmioDeviceInfo>,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl MmioDeviceManager {
    pub fn register(&mut self, vm: &VmFd, bus: &mut Bus, mem: &Arc<GuestMemoryMmap>, vm_ended: &Arc<EventFd>, name: String, device: Box<dyn VirtioDevice>) -> Result<MmioDeviceInfo, VmmError> {
        let index = self.infos.len();
        let irq = VIRTIO_FIRST_IRQ + index as u32;
        if irq > IRQ_MAX {
            return Err(VmmError::Config(format!("{name}: no IRQ pin left for a {}th virtio device", index + 1)));
        }
        let base = VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(crate::io("eventfd"))?;
        vm.register_irqfd(&irqfd, irq).map_err(|e| VmmError::Kvm("KVM_IRQFD", e))?;
        let transport = MmioTransport::new(name, device, mem.clone(), Arc::new(irqfd), vm_ended.clone()).map_err(crate::io("virtio transport"))?;
        for (q, evt) in transport.queue_events().iter().enumerate() {
            vm.register_ioevent(evt.as_ref(), &IoEventAddress::Mmio(base + QUEUE_NOTIFY), q as u32).map_err(|e| VmmError::Kvm("KVM_IOEVENTFD", e))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        bus.add_mmio(base, VIRTIO_MMIO_SIZE, transport.clone() as Arc<Mutex<dyn BusDevice>>);
        self.transports.push(transport);
        let info = MmioDeviceInfo { base, irq };
        self.infos.push(info.clone());
        Ok(info)
    }
}
