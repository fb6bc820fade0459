//! virtio-rng: fills the guest's buffers from the host's getrandom(2), at most 64 KiB per
//! request, so the guest has entropy from its first second.

use super::virtio::{Activation, Poller, VirtioDevice, TOKEN_STOP, VIRTIO_F_VERSION_1};
use std::io::Write;
use std::thread::JoinHandle;
use virtio_queue::{QueueT, Writer};
use vm_memory::GuestMemoryMmap;

const TYPE_RNG: u32 = 4;
const MAX_PER_REQUEST: usize = 64 << 10;

pub struct Rng;

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn queue_sizes(&self) -> &[u16] {
        &[64]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, ctx: Activation) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name("virtio-rng".into()).spawn(move || serve(ctx))
    }
}

fn serve(mut ctx: Activation) {
    crate::seccomp::apply_device_filter();
    let Ok(poller) = Poller::for_activation(&ctx) else { return };
    let mut buf = vec![0u8; MAX_PER_REQUEST];
    loop {
        let Some(used) = process(&mut ctx.queues[0], &ctx.mem, &mut buf) else { return };
        if used {
            ctx.interrupt.signal_used();
        }
        let Ok(tokens) = poller.wait(-1) else { return };
        if tokens.contains(&TOKEN_STOP) {
            return;
        }
        let _ = ctx.queue_events[0].read();
    }
}

/// Fills every buffer the guest queued; Some(whether any was used), None when the used ring is
/// not writable (the device then stops).
pub(crate) fn process(queue: &mut virtio_queue::Queue, mem: &GuestMemoryMmap, buf: &mut [u8]) -> Option<bool> {
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut written = 0;
        if let Ok(mut w) = Writer::new(mem, chain) {
            let n = w.available_bytes().min(MAX_PER_REQUEST).min(buf.len());
            // SAFETY: getrandom fills at most n bytes of our buffer.
            let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), n, 0) };
            if got > 0 && w.write_all(&buf[..got as usize]).is_ok() {
                written = got as u32;
            }
        }
        if queue.add_used(mem, head, written).is_err() {
            return None;
        }
        used = true;
    }
    Some(used)
}
