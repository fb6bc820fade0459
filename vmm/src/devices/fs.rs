//! virtio-fs (device type 26) as a vhost-user frontend: `virtiofsd`, a process of its own,
//! serves the file system over a Unix socket; this device tells it where the guest's memory and
//! queues are and turns its "used" notifications into this transport's interrupt. The guest's
//! requests never pass through the VMM: the daemon reads the queues in the shared memory.
//!
//! Invariants:
//! - The socket is connected, and the daemon's features read, when the device is made (before
//!   any seccomp filter); activation only sends messages on it.
//! - Guest memory is shared with the daemon through memfds (the VMM backs guest RAM with them
//!   when a VM has a share), never through a path.
//! - Every used-buffer notification sets the interrupt status before the irq, as the mmio
//!   transport's driver reads the status first and ignores an interrupt without it.

use super::virtio::{Activation, Poller, VirtioDevice, TOKEN_STOP, VIRTIO_F_VERSION_1};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

const TYPE_FS: u32 = 26;
/// hiprio and one request queue.
const QUEUE_SIZES: [u16; 2] = [256, 256];
const TAG_LEN: usize = 36;

pub struct Fs {
    tag: String,
    config: [u8; TAG_LEN + 4],
    frontend: Arc<std::sync::Mutex<Frontend>>,
    backend_features: u64,
    regions: Vec<VhostUserMemoryRegionInfo>,
}

fn vhost_err(what: &str) -> impl FnOnce(vhost::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::other(format!("virtiofsd {what}: {e}"))
}

impl Fs {
    /// Connects to the daemon at `socket` for the share `tag` over guest memory `mem` (which
    /// must be backed by files: see `Vm::start`).
    pub fn new(socket: &Path, tag: &str, mem: &GuestMemoryMmap) -> std::io::Result<Fs> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(std::io::Error::other(format!("the share tag {tag:?} must be 1 to {TAG_LEN} bytes")));
        }
        let mut regions = Vec::new();
        for region in mem.iter() {
            let file = region.file_offset().ok_or_else(|| std::io::Error::other("guest memory is not file-backed; virtio-fs needs it shared"))?;
            let host = mem.get_host_address(region.start_addr()).map_err(|e| std::io::Error::other(format!("guest memory: {e}")))?;
            regions.push(VhostUserMemoryRegionInfo {
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
                mmap_offset: file.start(),
                mmap_handle: file.file().as_raw_fd(),
            });
        }
        // The daemon's socket file appears at bind(), a moment before it listens: retry briefly.
        let mut tries = 0;
        let mut frontend = loop {
            match Frontend::connect(socket, QUEUE_SIZES.len() as u64) {
                Ok(f) => break f,
                Err(_) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(vhost_err("connect")(e)),
            }
        };
        frontend.set_owner().map_err(vhost_err("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(vhost_err("GET_FEATURES"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(std::io::Error::other("virtiofsd does not offer VIRTIO_F_VERSION_1"));
        }
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if backend_features & protocol_bit != 0 {
            // Protocol features are set before the virtio ones are known: advertise the bit now.
            frontend.set_features(protocol_bit).map_err(vhost_err("SET_FEATURES"))?;
            let offered = frontend.get_protocol_features().map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
            frontend.set_protocol_features(offered & VhostUserProtocolFeatures::MQ).map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
        }
        let mut config = [0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs { tag: tag.to_string(), config, frontend: Arc::new(std::sync::Mutex::new(frontend)), backend_features, regions })
    }

    fn set_up(&self, ctx: &Activation, calls: &[EventFd]) -> std::io::Result<()> {
        let mut fe = self.frontend.lock().unwrap_or_else(|p| p.into_inner());
        let protocol = self.backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        fe.set_features(ctx.acked_features | protocol).map_err(vhost_err("SET_FEATURES"))?;
        fe.set_mem_table(&self.regions).map_err(vhost_err("SET_MEM_TABLE"))?;
        let host = |a: vm_memory::GuestAddress| ctx.mem.get_host_address(a).map(|p| p as u64).map_err(|e| std::io::Error::other(format!("queue address: {e}")));
        for (i, q) in ctx.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            fe.set_vring_num(i, q.size()).map_err(vhost_err("SET_VRING_NUM"))?;
            let addrs = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(vm_memory::GuestAddress(q.desc_table()))?,
                used_ring_addr: host(vm_memory::GuestAddress(q.used_ring()))?,
                avail_ring_addr: host(vm_memory::GuestAddress(q.avail_ring()))?,
                log_addr: None,
            };
            fe.set_vring_addr(i, &addrs).map_err(vhost_err("SET_VRING_ADDR"))?;
            fe.set_vring_base(i, 0).map_err(vhost_err("SET_VRING_BASE"))?;
            fe.set_vring_call(i, &calls[i]).map_err(vhost_err("SET_VRING_CALL"))?;
            fe.set_vring_kick(i, &ctx.queue_events[i]).map_err(vhost_err("SET_VRING_KICK"))?;
            if protocol != 0 {
                fe.set_vring_enable(i, true).map_err(vhost_err("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn features(&self) -> u64 {
        // Only what this frontend handles; the ring features stay off.
        VIRTIO_F_VERSION_1
    }

    fn queue_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::block::read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, ctx: Activation) -> std::io::Result<JoinHandle<()>> {
        let calls = (0..ctx.queues.len()).map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<Result<Vec<_>, _>>()?;
        self.set_up(&ctx, &calls)?;
        let poller = Poller::new()?;
        poller.add(ctx.stop.as_raw_fd(), TOKEN_STOP, vmm_sys_util::epoll::EventSet::IN)?;
        poller.add(ctx.vm_ended.as_raw_fd(), TOKEN_STOP, vmm_sys_util::epoll::EventSet::IN)?;
        for (i, c) in calls.iter().enumerate() {
            poller.add(c.as_raw_fd(), i as u64, vmm_sys_util::epoll::EventSet::IN)?;
        }
        let frontend = self.frontend.clone();
        let tag = self.tag.clone();
        std::thread::Builder::new().name(format!("virtio-fs {tag}")).spawn(move || {
            crate::seccomp::apply_device_filter();
            // Holds the connection for as long as the device serves.
            let _frontend = frontend;
            loop {
                let tokens = match poller.wait(-1) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!("virtio-fs {tag}: {e}");
                        return;
                    }
                };
                for t in tokens {
                    if t == TOKEN_STOP {
                        return;
                    }
                    if let Some(c) = calls.get(t as usize) {
                        let _ = c.read();
                        ctx.interrupt.signal_used();
                    }
                }
            }
        })
    }
}
