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

/// One register access of the MMIO transport, as a vCPU exit delivers it.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub write: bool,
    pub offset: u64,
    /// 1, 2, 4 or 8 bytes.
    pub width: usize,
    pub value: u64,
}

/// A device that checks what the transport hands it at activation, and serves nothing.
struct Probe {
    violations: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Feature bits the probe offers: VERSION_1 and two others, so acks of unoffered bits show.
const PROBE_FEATURES: u64 = crate::devices::virtio::VIRTIO_F_VERSION_1 | 1 | (1 << 5);
const PROBE_QUEUES: [u16; 2] = [256, 16];

impl crate::devices::virtio::VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        4
    }
    fn features(&self) -> u64 {
        PROBE_FEATURES
    }
    fn queue_sizes(&self) -> &[u16] {
        &PROBE_QUEUES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::block::read_config_bytes(&[7u8; 16], offset, data)
    }
    fn activate(&mut self, ctx: crate::devices::virtio::Activation) -> std::io::Result<std::thread::JoinHandle<()>> {
        let mut v = self.violations.lock().unwrap_or_else(|e| e.into_inner());
        if ctx.acked_features & !PROBE_FEATURES != 0 {
            v.push(format!("activated with features {:#x} that were never offered", ctx.acked_features & !PROBE_FEATURES));
        }
        if ctx.acked_features & crate::devices::virtio::VIRTIO_F_VERSION_1 == 0 {
            v.push("activated for a legacy driver (no VERSION_1)".into());
        }
        for (i, q) in ctx.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&*ctx.mem) {
                v.push(format!("queue {i} handed over ready but invalid for guest memory"));
            }
            if q.size() > PROBE_QUEUES[i] {
                v.push(format!("queue {i} handed over with size {} above its maximum {}", q.size(), PROBE_QUEUES[i]));
            }
        }
        std::thread::Builder::new().name("probe".into()).spawn(|| {})
    }
}

/// Drives the MMIO transport in front of the probe device with `accesses`, in order, checking
/// what each read returns against what the transport promises (magic, version, queue maxima,
/// a reset that clears status and interrupts). Err names the first broken promise.
pub fn mmio(accesses: &[Access]) -> Result<(), String> {
    use crate::bus::BusDevice;
    let mem = std::sync::Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).map_err(|e| e.to_string())?);
    let irq = std::sync::Arc::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?);
    let ended = std::sync::Arc::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?);
    let violations = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = Box::new(Probe { violations: violations.clone() });
    let mut t = crate::devices::virtio::MmioTransport::new("fuzz".into(), probe, mem, irq, ended).map_err(|e| e.to_string())?;
    let mut queue_sel = 0u64;
    let mut reset = false;
    for a in accesses {
        let width = a.width.clamp(1, 8);
        if a.write {
            let bytes = a.value.to_le_bytes();
            let _ = t.write(a.offset, &bytes[..width]);
            if a.offset == 0x30 && width == 4 {
                queue_sel = a.value & 0xffff_ffff;
            }
            reset = a.offset == 0x70 && width == 4 && a.value as u32 == 0;
            // A reset returns every register to its first value, QueueSel included.
            if reset {
                queue_sel = 0;
            }
            continue;
        }
        let mut data = vec![0xa5u8; width];
        t.read(a.offset, &mut data);
        if a.offset < 0x100 && width != 4 && data.iter().any(|b| *b != 0) {
            return Err(format!("a {width}-byte read of register {:#x} returned {data:?}, not zeros", a.offset));
        }
        if width != 4 || a.offset >= 0x100 {
            continue;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let expect = match a.offset {
            0x00 => Some(0x7472_6976),
            0x04 => Some(2),
            0x34 => Some(PROBE_QUEUES.get(queue_sel as usize).map(|s| u32::from(*s)).unwrap_or(0)),
            0x60 | 0x70 if reset => Some(0),
            _ => None,
        };
        if let Some(e) = expect {
            if v != e {
                return Err(format!("register {:#x} read {v:#x}, expected {e:#x}", a.offset));
            }
        }
    }
    t.stop_worker();
    let v = violations.lock().unwrap_or_else(|e| e.into_inner());
    match v.first() {
        Some(first) => Err(first.clone()),
        None => Ok(()),
    }
}

/// The real devices' config spaces read and written at any offset and width (as a vCPU exit
/// at `0x100 + offset` delivers them): no panic, reads past the end give zeros.
pub fn config_spaces(accesses: &[Access], disk: File) -> Result<(), String> {
    use crate::devices::virtio::VirtioDevice;
    let link = std::sync::Arc::new(std::os::fd::OwnedFd::from(File::open("/dev/null").map_err(|e| e.to_string())?));
    let (host_end, _guest_end) = UnixStream::pair().map_err(|e| e.to_string())?;
    let (connected, _) = std::sync::mpsc::channel();
    let mut devices: Vec<(Box<dyn VirtioDevice>, usize)> = vec![
        (Box::new(crate::devices::block::Block::new(disk, false, "fuzz").map_err(|e| e.to_string())?), 24),
        (Box::new(crate::devices::net::Net::new(link, [2, 0, 0, 0, 0, 1], 1500)), 12),
        (Box::new(crate::devices::vsock::Vsock::new(3, host_end, connected, Box::new(|| {}))), 8),
        (Box::new(crate::devices::rng::Rng), 0),
    ];
    for a in accesses {
        let width = a.width.clamp(1, 8);
        for (dev, size) in devices.iter_mut() {
            if a.write {
                dev.write_config(a.offset, &a.value.to_le_bytes()[..width]);
                continue;
            }
            let mut data = vec![0xa5u8; width];
            dev.read_config(a.offset, &mut data);
            let past_end = a.offset.saturating_add(width as u64) > *size as u64;
            if past_end && a.offset >= *size as u64 && data.iter().any(|b| *b != 0) {
                return Err(format!("device {} read {data:?} at config offset {:#x}, past its {size}-byte space", dev.device_type(), a.offset));
            }
        }
    }
    Ok(())
}
