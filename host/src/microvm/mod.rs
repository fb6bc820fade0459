//! The host side of microVM sandboxes, apart from the VMM itself (`vmm` crate): finding the
//! guest kernel and the static guest agent, building the per-kernel initramfs, and telling
//! whether this host's KVM can boot a guest at all (`doctor`).

pub mod initramfs;
pub mod kernel;
pub mod probe;
