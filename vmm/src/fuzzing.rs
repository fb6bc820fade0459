//! Entry points for the fuzz targets (`tests/fuzz`, feature `fuzzing`): one device's queue
//! handling on guest memory the fuzzer wrote, with no VM, no KVM and no threads, and the
//! check every target makes afterwards: the device wrote only where the guest let it (the
//! buffers of write-only descriptors, direct or in indirect tables, and the used ring).
//! Returning at all is the other half: a cyclic or overlong chain must end.

use std::fs::File;
use std::os::unix::net::UnixStream;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM the fuzzer fills, from address 0.
pub const MEM_SIZE: usize = 64 << 10;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

/// Guest memory and one ready queue whose rings sit at fixed addresses in it.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    size: u16,
    before: Vec<u8>,
}

impl Guest {
    /// `bytes` become guest RAM (zero beyond them); `size` is the queue size (a power of two,
    /// at most 256 so the table fits below the rings). None for a queue the transport would
    /// refuse to make ready.
    pub fn new(bytes: &[u8], size: u16) -> Option<Guest> {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
        mem.write_slice(&bytes[..bytes.len().min(MEM_SIZE)], GuestAddress(0)).ok()?;
        let mut queue = Queue::new(256).ok()?;
        queue.set_size(size);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        if !queue.is_valid(&mem) {
            return None;
        }
        let mut before = vec![0u8; MEM_SIZE];
        mem.read_slice(&mut before, GuestAddress(0)).ok()?;
        Some(Guest { mem, queue, size, before })
    }

    fn read_desc(mem: &[u8], at: u64) -> Option<(u64, u32, u16)> {
        let at = usize::try_from(at).ok()?;
        let d = mem.get(at..at.checked_add(16)?)?;
        let addr = u64::from_le_bytes(d[0..8].try_into().ok()?);
        let len = u32::from_le_bytes(d[8..12].try_into().ok()?);
        let flags = u16::from_le_bytes(d[12..14].try_into().ok()?);
        Some((addr, len, flags))
    }

    /// Address ranges the device may write, as the guest laid memory out before the call.
    fn writable_ranges(&self) -> Vec<(u64, u64)> {
        let used_len = 4 + 8 * u64::from(self.size) + 2;
        let mut ranges = vec![(USED_RING, USED_RING + used_len)];
        for i in 0..u64::from(self.size) {
            let Some((addr, len, flags)) = Self::read_desc(&self.before, DESC_TABLE + 16 * i) else { continue };
            if flags & DESC_F_WRITE != 0 {
                ranges.push((addr, addr.saturating_add(u64::from(len))));
            }
            // An indirect table is at most what guest memory holds (the check must not be
            // slower than the device it checks).
            if flags & DESC_F_INDIRECT != 0 && addr < MEM_SIZE as u64 {
                for j in 0..u64::from(len / 16).min(MEM_SIZE as u64 / 16) {
                    if let Some((a, l, f)) = Self::read_desc(&self.before, addr.saturating_add(16 * j)) {
                        if f & DESC_F_WRITE != 0 {
                            ranges.push((a, a.saturating_add(u64::from(l))));
                        }
                    }
                }
            }
        }
        ranges
    }

    /// Every byte that changed lies in a range the guest made writable; Err names the first
    /// that does not.
    pub fn check_writes(&self) -> Result<(), String> {
        let mut after = vec![0u8; MEM_SIZE];
        self.mem.read_slice(&mut after, GuestAddress(0)).map_err(|e| e.to_string())?;
        let mut allowed = vec![false; MEM_SIZE];
        for (lo, hi) in self.writable_ranges() {
            let (lo, hi) = (lo.min(MEM_SIZE as u64) as usize, hi.min(MEM_SIZE as u64) as usize);
            allowed[lo..hi.max(lo)].fill(true);
        }
        for (i, (a, b)) in self.before.iter().zip(&after).enumerate() {
            if a != b && !allowed[i] {
                return Err(format!("the device wrote guest address {i:#x}, which no write-only descriptor names"));
            }
        }
        Ok(())
    }
}

/// One pass of virtio-blk over the queue, against `disk`.
pub fn block(guest: &mut Guest, disk: File, read_only: bool) -> std::io::Result<()> {
    let dev = crate::devices::block::Block::new(disk, read_only, "fuzz")?;
    let interrupt = crate::devices::virtio::Interrupt::detached()?;
    dev.disk().process(&mut guest.queue, &guest.mem, &interrupt);
    Ok(())
}

/// One pass of virtio-rng over the queue.
pub fn rng(guest: &mut Guest) {
    let mut buf = vec![0u8; 64 << 10];
    let _ = crate::devices::rng::process(&mut guest.queue, &guest.mem, &mut buf);
}

/// The vsock muxer: the guest's tx queue (packets from the guest, the agent's peer), then its
/// rx queue (what the muxer answers), with `host_end` as the agent's host stream.
pub fn vsock(tx: &mut Guest, rx: &mut Guest, host_end: UnixStream) {
    let mut muxer = crate::devices::vsock::Muxer::detached(3, host_end);
    for _ in 0..2 {
        muxer.process_tx(&tx.mem, &mut tx.queue);
        muxer.flush();
        muxer.process_rx(&rx.mem, &mut rx.queue);
    }
}

/// virtio-net: the guest's tx queue (frames out to the link), then frames waiting on the link
/// into its rx queue. The link is a real SOCK_SEQPACKET pair: `frames` are written to its far
/// end first; what the device sent comes back as the returned frames.
pub fn net(tx: &mut Guest, rx: &mut Guest, frames: &[&[u8]]) -> std::io::Result<Vec<Vec<u8>>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two fds we then own.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    let (link, far) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for f in frames {
        // SAFETY: writing a live slice.
        unsafe { libc::write(far.as_raw_fd(), f.as_ptr().cast(), f.len()) };
    }
    let mut buf = vec![0u8; crate::devices::net::HEADER + crate::devices::net::MAX_FRAME];
    let _ = crate::devices::net::transmit(&mut tx.queue, &tx.mem, &link, &mut buf);
    let _ = crate::devices::net::receive(&mut rx.queue, &rx.mem, &link, &mut buf);
    let mut sent = Vec::new();
    loop {
        // SAFETY: reading into our own buffer.
        let n = unsafe { libc::read(far.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        sent.push(buf[..n as usize].to_vec());
    }
    Ok(sent)
}
