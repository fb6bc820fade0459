//! Devices: the legacy pair (COM1, the ACPI power port) on the port bus, and virtio devices
//! behind the virtio-mmio transport. Each virtio device runs its queues on a worker thread of
//! its own, woken by KVM ioeventfds, and interrupts the guest through an irqfd.

pub mod block;
pub mod fs;
pub mod net;
pub mod power;
pub mod rng;
pub mod serial;
pub mod virtio;
pub mod vsock;
