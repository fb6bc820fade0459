//! virtio-blk over a host file: the image's read-only disk (VIRTIO_BLK_F_RO; writes fail with
//! IOERR) and the sandbox's writable scratch disk (FLUSH is fdatasync). Requests stream through
//! a 64 KiB bounce buffer, so no guest-chosen length decides an allocation; every request is
//! range-checked against the disk size.

use super::virtio::{Activation, Poller, VirtioDevice, TOKEN_STOP, VIRTIO_F_VERSION_1};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread::JoinHandle;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

const TYPE_BLOCK: u32 = 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const SECTOR: u64 = 512;
const CHUNK: usize = 64 << 10;
const QUEUE_SIZE: u16 = 256;

pub struct Block {
    file: Arc<File>,
    read_only: bool,
    size: u64,
    id: [u8; 20],
    config: [u8; 24],
    io: Arc<DiskIo>,
}

/// What the guest read and wrote through a disk: bytes and requests that completed.
#[derive(Debug, Default)]
pub struct DiskIo {
    read_bytes: std::sync::atomic::AtomicU64,
    write_bytes: std::sync::atomic::AtomicU64,
    read_ops: std::sync::atomic::AtomicU64,
    write_ops: std::sync::atomic::AtomicU64,
}

/// A reading of [`DiskIo`] counters (summed over disks by the VM).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiskIoTotals {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

impl DiskIo {
    fn count(bytes: &std::sync::atomic::AtomicU64, ops: &std::sync::atomic::AtomicU64, n: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        bytes.fetch_add(n as u64, Relaxed);
        ops.fetch_add(1, Relaxed);
    }

    pub fn totals(&self) -> DiskIoTotals {
        use std::sync::atomic::Ordering::Relaxed;
        DiskIoTotals { read_bytes: self.read_bytes.load(Relaxed), write_bytes: self.write_bytes.load(Relaxed), read_ops: self.read_ops.load(Relaxed), write_ops: self.write_ops.load(Relaxed) }
    }
}

impl Block {
    pub fn new(file: File, read_only: bool, id: &str) -> std::io::Result<Block> {
        let size = file.metadata()?.len() & !(SECTOR - 1);
        let mut ident = [0u8; 20];
        let n = id.len().min(20);
        ident[..n].copy_from_slice(&id.as_bytes()[..n]);
        let mut config = [0u8; 24];
        config[..8].copy_from_slice(&(size / SECTOR).to_le_bytes());
        config[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes()); // blk_size
        Ok(Block { file: Arc::new(file), read_only, size, id: ident, config, io: Arc::default() })
    }

    /// This disk's I/O counters, shared with its worker.
    pub fn io(&self) -> Arc<DiskIo> {
        self.io.clone()
    }

    /// The request server a driver's activation starts (the fuzz targets drive it directly).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn disk(&self) -> Disk {
        Disk { file: self.file.clone(), read_only: self.read_only, size: self.size, id: self.id, io: self.io.clone() }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_BLK_SIZE | if self.read_only { F_RO } else { F_FLUSH }
    }

    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }

    fn activate(&mut self, ctx: Activation) -> std::io::Result<JoinHandle<()>> {
        let disk = Disk { file: self.file.clone(), read_only: self.read_only, size: self.size, id: self.id, io: self.io.clone() };
        std::thread::Builder::new().name("virtio-blk".into()).spawn(move || disk.serve(ctx))
    }
}

/// Copies the part of a config space that `offset..offset+len` covers; the rest reads as 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else { return };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}

pub(crate) struct Disk {
    file: Arc<File>,
    read_only: bool,
    size: u64,
    id: [u8; 20],
    io: Arc<DiskIo>,
}

impl Disk {
    fn serve(self, mut ctx: Activation) {
        crate::seccomp::apply_device_filter();
        let Ok(poller) = Poller::for_activation(&ctx) else { return };
        // Requests the driver queued before we started.
        let mem = ctx.mem.clone();
        self.process(&mut ctx.queues[0], &mem, &ctx.interrupt);
        loop {
            let Ok(tokens) = poller.wait(-1) else { return };
            if tokens.contains(&TOKEN_STOP) {
                return;
            }
            let _ = ctx.queue_events[0].read();
            self.process(&mut ctx.queues[0], &mem, &ctx.interrupt);
        }
    }

    pub(crate) fn process(&self, queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &super::virtio::Interrupt) {
        let mut used_any = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = self.handle(mem, chain);
            if queue.add_used(mem, head, written).is_err() {
                tracing::warn!("virtio-blk: the used ring is not writable");
                return;
            }
            used_any = true;
        }
        if used_any {
            interrupt.signal_used();
        }
    }

    /// Serves one request; returns the bytes written into the chain (used length).
    pub(crate) fn handle(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) = (Reader::new(mem, chain.clone()), Writer::new(mem, chain)) else {
            return 0;
        };
        let avail = writer.available_bytes();
        if avail == 0 {
            return 0;
        }
        let Ok(mut status_writer) = writer.split_at(avail - 1) else { return 0 };
        let mut header = [0u8; 16];
        let status = if reader.read_exact(&mut header).is_err() {
            S_IOERR
        } else {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let sector = u64::from_le_bytes(header[8..16].try_into().unwrap_or([0; 8]));
            match kind {
                T_IN => self.read(sector, &mut writer),
                T_OUT if self.read_only => S_IOERR,
                T_OUT => self.write(sector, &mut reader),
                T_FLUSH if !self.read_only => match self.file.sync_data() {
                    Ok(()) => S_OK,
                    Err(_) => S_IOERR,
                },
                T_FLUSH => S_OK,
                T_GET_ID => {
                    let n = writer.available_bytes().min(20);
                    match writer.write_all(&self.id[..n]) {
                        Ok(()) => S_OK,
                        Err(_) => S_IOERR,
                    }
                }
                _ => S_UNSUPP,
            }
        };
        let _ = status_writer.write_all(&[status]);
        (writer.bytes_written() + status_writer.bytes_written()) as u32
    }

    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR)?;
        let end = offset.checked_add(len as u64)?;
        (end <= self.size).then_some(offset)
    }

    fn read(&self, sector: u64, writer: &mut Writer<'_>) -> u8 {
        let len = writer.available_bytes();
        let Some(mut offset) = self.range(sector, len) else { return S_IOERR };
        let mut buf = vec![0u8; CHUNK.min(len)];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK);
            if self.file.read_exact_at(&mut buf[..n], offset).is_err() || writer.write_all(&buf[..n]).is_err() {
                return S_IOERR;
            }
            offset += n as u64;
            left -= n;
        }
        DiskIo::count(&self.io.read_bytes, &self.io.read_ops, len);
        S_OK
    }

    fn write(&self, sector: u64, reader: &mut Reader<'_>) -> u8 {
        let len = reader.available_bytes();
        let Some(mut offset) = self.range(sector, len) else { return S_IOERR };
        let mut buf = vec![0u8; CHUNK.min(len)];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK);
            if reader.read_exact(&mut buf[..n]).is_err() || self.file.write_all_at(&buf[..n], offset).is_err() {
                return S_IOERR;
            }
            offset += n as u64;
            left -= n;
        }
        DiskIo::count(&self.io.write_bytes, &self.io.write_ops, len);
        S_OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    fn disk(read_only: bool) -> (Disk, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("vmm-blk-{}-{read_only}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::write(&path, (0..8192u32).map(|i| (i / 512) as u8).collect::<Vec<u8>>()).unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        (Disk { file: Arc::new(file), read_only, size: 8192, id: *b"scratch-disk-0000000", io: Arc::default() }, path)
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// Builds a chain in a mock queue and runs it through the device.
    fn run(d: &Disk, mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> (u32, Option<u8>) {
        let vq = MockSplitQueue::new(mem, 16);
        vq.build_desc_chain(descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(mem).unwrap();
        let used = d.handle(mem, chain);
        // The status byte is the last writable byte of the chain.
        let last = descs.iter().rev().find(|r| SplitDescriptor::from(**r).flags() & F_WRITE != 0).and_then(|r| {
            let s = SplitDescriptor::from(*r);
            mem.read_obj::<u8>(GuestAddress((s.addr().0 + u64::from(s.len())).checked_sub(1)?)).ok()
        });
        (used, last)
    }

    fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(at)).unwrap();
        mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    #[test]
    fn reads_writes_and_refuses_out_of_range() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (d, path) = disk(false);
        header(&mem, 0x8000, T_IN, 2);
        let (used, status) = run(&d, &mem, &[desc(0x8000, 16, F_NEXT, 1), desc(0x9000, 512, F_NEXT | F_WRITE, 2), desc(0xa000, 1, F_WRITE, 0)]);
        assert_eq!((used, status), (513, Some(S_OK)));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x9000)).unwrap(), 2);

        mem.write_slice(&[0xab; 512], GuestAddress(0x9000)).unwrap();
        header(&mem, 0x8000, T_OUT, 1);
        let (_, status) = run(&d, &mem, &[desc(0x8000, 16, F_NEXT, 1), desc(0x9000, 512, F_NEXT, 2), desc(0xa000, 1, F_WRITE, 0)]);
        assert_eq!(status, Some(S_OK));
        assert_eq!(std::fs::read(&path).unwrap()[512..1024], [0xab; 512]);

        // Past the end, and a sector number that overflows when multiplied.
        for sector in [16, u64::MAX / 2] {
            header(&mem, 0x8000, T_IN, sector);
            let (_, status) = run(&d, &mem, &[desc(0x8000, 16, F_NEXT, 1), desc(0x9000, 512, F_NEXT | F_WRITE, 2), desc(0xa000, 1, F_WRITE, 0)]);
            assert_eq!(status, Some(S_IOERR), "sector {sector}");
        }
        header(&mem, 0x8000, 99, 0);
        assert_eq!(run(&d, &mem, &[desc(0x8000, 16, F_NEXT, 1), desc(0xa000, 1, F_WRITE, 0)]).1, Some(S_UNSUPP));
        // Only completed requests count: one read and one write of 512 bytes.
        assert_eq!(d.io.totals(), DiskIoTotals { read_bytes: 512, write_bytes: 512, read_ops: 1, write_ops: 1 });
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn read_only_disk_refuses_writes() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (d, path) = disk(true);
        header(&mem, 0x8000, T_OUT, 0);
        let (_, status) = run(&d, &mem, &[desc(0x8000, 16, F_NEXT, 1), desc(0x9000, 512, F_NEXT, 2), desc(0xa000, 1, F_WRITE, 0)]);
        assert_eq!(status, Some(S_IOERR));
        assert_eq!(std::fs::read(&path).unwrap()[0..512], [0; 512]);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn hostile_chains_never_panic() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (d, path) = disk(false);
        header(&mem, 0x8000, T_IN, 0);
        // Data outside guest memory, a zero-length status, a header-only chain, a huge length.
        let cases: Vec<Vec<RawDescriptor>> = vec![
            vec![desc(0x8000, 16, F_NEXT, 1), desc(0xfff_0000, 512, F_NEXT | F_WRITE, 2), desc(0xa000, 1, F_WRITE, 0)],
            vec![desc(0x8000, 16, F_NEXT, 1), desc(0xa000, 0, F_WRITE, 0)],
            vec![desc(0x8000, 16, 0, 0)],
            vec![desc(0x8000, 16, F_NEXT, 1), desc(0x1000, u32::MAX, F_WRITE, 0)],
            vec![desc(0x8000, 4, F_NEXT, 1), desc(0xa000, 1, F_WRITE, 0)],
        ];
        for c in cases {
            let _ = run(&d, &mem, &c);
        }
        let _ = std::fs::remove_file(path);
    }
}
