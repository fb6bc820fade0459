//! virtio-net: moves Ethernet frames between the guest's two queues and a host fd (a
//! `SOCK_SEQPACKET` socket whose other end is the shim's network stack), knowing nothing of
//! what the frames mean. No offloads are offered, so every frame is whole and every header
//! the device writes is zero but `num_buffers`; the MTU is offered (VIRTIO_NET_F_MTU), so a
//! 65520-byte link needs no segmentation.
//!
//! Invariants: a guest chain is read or written only within what its descriptors name
//! (virtio-queue's Reader and Writer); a frame longer than `MAX_FRAME` or than the buffer the
//! guest offered is dropped, never truncated or split; the link fd is watched only while the
//! guest has receive buffers, so a guest that stops taking frames costs nothing but the
//! socket's own bounded buffer.

use super::virtio::{Activation, Poller, VirtioDevice, TOKEN_STOP, VIRTIO_F_VERSION_1};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

const TYPE_NET: u32 = 1;
const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
/// `struct virtio_net_hdr_v1`.
pub const HEADER: usize = 12;
/// The largest frame: a 65535-byte IP packet and its Ethernet header.
pub const MAX_FRAME: usize = 65_535 + 14;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const TOKEN_LINK: u64 = 1 << 32;
/// Frames moved per queue per wake-up before the other direction gets a turn.
const BATCH: usize = 256;

pub struct Net {
    link: Arc<OwnedFd>,
    config: [u8; 12],
}

impl Net {
    /// `link` must be non-blocking.
    pub fn new(link: Arc<OwnedFd>, mac: [u8; 6], mtu: u16) -> Net {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac);
        // status (6..8) and max_virtqueue_pairs (8..10) are not offered; mtu is.
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
        Net { link, config }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MAC | F_MTU
    }
    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| self.config.get(o + i)).copied().unwrap_or(0);
        }
    }
    fn activate(&mut self, ctx: Activation) -> std::io::Result<JoinHandle<()>> {
        let link = self.link.clone();
        std::thread::Builder::new().name("virtio-net".into()).spawn(move || serve(ctx, link))
    }
}

fn serve(mut ctx: Activation, link: Arc<OwnedFd>) {
    crate::seccomp::apply_device_filter();
    let Ok(poller) = Poller::for_activation(&ctx) else { return };
    let mut watching = false;
    let mut buf = vec![0u8; HEADER + MAX_FRAME];
    let mem = ctx.mem.clone();
    loop {
        let tx = transmit(&mut ctx.queues[TX], &mem, &link, &mut buf);
        let (rx, starved) = receive(&mut ctx.queues[RX], &mem, &link, &mut buf);
        if tx.unwrap_or(false) || rx.unwrap_or(false) {
            ctx.interrupt.signal_used();
        }
        if tx.is_none() || rx.is_none() {
            tracing::warn!("virtio-net: a used ring is not writable; the device stops");
            return;
        }
        // Watch the link only while the guest has buffers for what it brings.
        if starved && watching {
            poller.remove(link.as_raw_fd());
            watching = false;
        } else if !starved && !watching {
            if poller.add(link.as_raw_fd(), TOKEN_LINK, vmm_sys_util::epoll::EventSet::IN).is_err() {
                return;
            }
            watching = true;
        }
        let Ok(tokens) = poller.wait(-1) else { return };
        if tokens.contains(&TOKEN_STOP) {
            return;
        }
        for q in [RX, TX] {
            if tokens.contains(&(q as u64)) {
                let _ = ctx.queue_events[q].read();
            }
        }
    }
}

/// Sends every frame the guest queued; Some(whether a buffer was used), None when the used
/// ring is not writable.
pub(crate) fn transmit(queue: &mut Queue, mem: &GuestMemoryMmap, link: &OwnedFd, buf: &mut [u8]) -> Option<bool> {
    let mut used = false;
    for _ in 0..BATCH {
        let Some(chain) = queue.pop_descriptor_chain(mem) else { break };
        let head = chain.head_index();
        if let Ok(mut r) = Reader::new(mem, chain) {
            let n = r.available_bytes();
            if (HEADER..=HEADER + MAX_FRAME).contains(&n) && n <= buf.len() && r.read_exact(&mut buf[..n]).is_ok() {
                // A full socket drops the frame: TCP retransmits, as after a busy switch.
                // SAFETY: writing a live slice to the link fd.
                let _ = unsafe { libc::write(link.as_raw_fd(), buf[HEADER..n].as_ptr().cast(), n - HEADER) };
            }
        }
        if queue.add_used(mem, head, 0).is_err() {
            return None;
        }
        used = true;
    }
    Some(used)
}

/// Delivers waiting frames into the guest's buffers. Returns (Some(whether a buffer was
/// used) or None when the used ring is not writable, whether the link should not be watched:
/// the guest ran out of buffers, or the stack closed its end).
pub(crate) fn receive(queue: &mut Queue, mem: &GuestMemoryMmap, link: &OwnedFd, buf: &mut [u8]) -> (Option<bool>, bool) {
    let mut used = false;
    for _ in 0..BATCH {
        let Some(chain) = queue.pop_descriptor_chain(mem) else { return (Some(used), true) };
        let head = chain.head_index();
        // SAFETY: reading into our own buffer, after the header's room.
        let n = unsafe { libc::read(link.as_raw_fd(), buf[HEADER..].as_mut_ptr().cast(), buf.len() - HEADER) };
        if n <= 0 {
            // Nothing waiting, or the stack is gone: the chain stays the guest's.
            queue.go_to_previous_position();
            return (Some(used), n == 0);
        }
        let frame = n as usize;
        buf[..HEADER].fill(0);
        buf[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
        let mut written = 0;
        if let Ok(mut w) = Writer::new(mem, chain) {
            if w.available_bytes() >= HEADER + frame && w.write_all(&buf[..HEADER + frame]).is_ok() {
                written = (HEADER + frame) as u32;
            }
        }
        if queue.add_used(mem, head, written).is_err() {
            return (None, false);
        }
        used = true;
    }
    (Some(used), false)
}
