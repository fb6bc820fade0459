//! The virtio-mmio (version 2) transport and what every virtio device shares: feature
//! negotiation, queue set-up, the interrupt status register and activation. A device gets its
//! validated queues, the guest memory, one ioeventfd per queue and an `Interrupt` when the
//! driver sets DRIVER_OK, and serves them on a thread of its own until reset or VM end.

use crate::bus::BusDevice;
use crate::ExitReason;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const MAGIC: u32 = 0x7472_6976;
const VENDOR: u32 = 0x4843_524f; // "ORCH"
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;
pub const INT_USED_RING: u32 = 1;

/// Raises the device's interrupt: sets the status bit the driver reads, then kicks the irqfd.
#[derive(Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

impl Interrupt {
    /// An interrupt that only records its status (the fuzz targets drive devices without a VM).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn detached() -> std::io::Result<Interrupt> {
        Ok(Interrupt { status: Arc::new(AtomicU32::new(0)), irqfd: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?) })
    }

    pub fn signal_used(&self) {
        self.status.fetch_or(INT_USED_RING, Ordering::SeqCst);
        let _ = self.irqfd.write(1);
    }
}

/// What a device is, and how it serves its queues once the driver is ready.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn features(&self) -> u64;
    fn queue_sizes(&self) -> &[u16];
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts serving. `stop` is signalled on reset or VM end; the thread must then return.
    fn activate(&mut self, ctx: Activation) -> std::io::Result<JoinHandle<()>>;
}

pub struct Activation {
    pub mem: Arc<GuestMemoryMmap>,
    pub queues: Vec<Queue>,
    pub queue_events: Vec<Arc<EventFd>>,
    pub interrupt: Interrupt,
    pub stop: Arc<EventFd>,
    /// Signalled once when the VM ends, for every device: workers return and drop their host
    /// ends (the agent stream closes, so the shim learns at once).
    pub vm_ended: Arc<EventFd>,
    pub acked_features: u64,
}

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: Arc<GuestMemoryMmap>,
    queues: Vec<Queue>,
    queue_events: Vec<Arc<EventFd>>,
    interrupt: Interrupt,
    status: u32,
    features_sel: u32,
    acked_sel: u32,
    acked: u64,
    queue_sel: u32,
    config_generation: u32,
    worker: Option<(Arc<EventFd>, JoinHandle<()>)>,
    vm_ended: Arc<EventFd>,
    name: String,
}

impl MmioTransport {
    pub fn new(name: String, device: Box<dyn VirtioDevice>, mem: Arc<GuestMemoryMmap>, irqfd: Arc<EventFd>, vm_ended: Arc<EventFd>) -> std::io::Result<MmioTransport> {
        let queues = device.queue_sizes().iter().map(|s| Queue::new(*s).map_err(|e| std::io::Error::other(format!("{e:?}")))).collect::<Result<Vec<_>, _>>()?;
        let queue_events = (0..queues.len()).map(|_| EventFd::new(libc::EFD_NONBLOCK).map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            queues,
            queue_events,
            interrupt: Interrupt { status: Arc::new(AtomicU32::new(0)), irqfd },
            status: 0,
            features_sel: 0,
            acked_sel: 0,
            acked: 0,
            queue_sel: 0,
            config_generation: 0,
            worker: None,
            vm_ended,
            name,
        })
    }

    /// The eventfds KVM signals on writes of each queue index to QueueNotify.
    pub fn queue_events(&self) -> &[Arc<EventFd>] {
        &self.queue_events
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_writable(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0
    }

    pub fn stop_worker(&mut self) {
        if let Some((stop, handle)) = self.worker.take() {
            let _ = stop.write(1);
            let _ = handle.join();
        }
    }

    fn reset(&mut self) {
        self.stop_worker();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.acked = 0;
        self.features_sel = 0;
        self.acked_sel = 0;
        self.queue_sel = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
    }

    fn activate(&mut self) {
        // Once per reset: a driver that clears DRIVER_OK and sets it again without a reset must
        // not get a second worker beside the first (found by the `mmio_transport` fuzz target: a
        // guest could make the host run any number of device threads, each serving queues).
        if self.worker.is_some() {
            tracing::warn!("{}: DRIVER_OK again without a reset; the device is already active", self.name);
            return;
        }
        let ready: Vec<bool> = self.queues.iter().map(|q| q.ready()).collect();
        if let Some(i) = self.queues.iter().position(|q| q.ready() && !q.is_valid(&*self.mem)) {
            tracing::warn!("{}: queue {i} is invalid (addresses outside guest memory or misaligned); device needs reset", self.name);
            self.status |= STATUS_NEEDS_RESET;
            return;
        }
        if !ready.iter().any(|r| *r) {
            return;
        }
        let stop = match EventFd::new(libc::EFD_NONBLOCK) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                tracing::error!("{}: {e}", self.name);
                self.status |= STATUS_NEEDS_RESET;
                return;
            }
        };
        // The worker owns the live queues; ours keep only what the driver may read back.
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &mut self.queues {
            let mut shadow = match Queue::new(q.max_size()) {
                Ok(s) => s,
                Err(_) => return,
            };
            shadow.set_size(q.size());
            shadow.set_ready(q.ready());
            queues.push(std::mem::replace(q, shadow));
        }
        let ctx = Activation {
            mem: self.mem.clone(),
            queues,
            queue_events: self.queue_events.clone(),
            interrupt: self.interrupt.clone(),
            stop: stop.clone(),
            vm_ended: self.vm_ended.clone(),
            acked_features: self.acked,
        };
        match self.device.activate(ctx) {
            Ok(handle) => self.worker = Some((stop, handle)),
            Err(e) => {
                tracing::error!("{}: activation failed: {e}", self.name);
                self.status |= STATUS_NEEDS_RESET;
            }
        }
    }
}

impl Drop for MmioTransport {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let value = match offset {
            0x00 => MAGIC,
            0x04 => 2,
            0x08 => self.device.device_type(),
            0x0c => VENDOR,
            0x10 => match self.features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self.queues.get(self.queue_sel as usize).map(|q| u32::from(q.max_size())).unwrap_or(0),
            0x44 => self.queues.get(self.queue_sel as usize).map(|q| u32::from(q.ready())).unwrap_or(0),
            0x60 => self.interrupt.status.load(Ordering::SeqCst),
            0x70 => self.status,
            // No shared memory regions: their length reads as -1 (virtio 1.2, 4.2.2), which
            // drivers that look for one (virtio-fs's DAX window) take as "none"; 0 would be a
            // region of length 0, which virtio-fs fails to probe on.
            0xb0 | 0xb4 | 0xb8 | 0xbc => u32::MAX,
            0xfc => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        if offset >= 0x100 {
            self.device.write_config(offset - 0x100, data);
            return None;
        }
        if data.len() != 4 {
            return None;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let writable = self.queue_writable();
        match offset {
            0x14 => self.features_sel = v,
            0x20 => {
                if self.status & STATUS_FEATURES_OK == 0 && self.acked_sel < 2 {
                    let shift = 32 * self.acked_sel;
                    let offered = self.device.features();
                    self.acked = (self.acked & !(0xffff_ffffu64 << shift)) | ((u64::from(v) << shift) & offered);
                }
            }
            0x24 => self.acked_sel = v,
            0x30 => self.queue_sel = v,
            0x38 if writable => {
                if let Some(q) = self.selected() {
                    q.set_size(v as u16);
                }
            }
            0x44 if writable => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            0x50 => {
                // Normally caught by the ioeventfd before it reaches us.
                if let Some(e) = self.queue_events.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            0x64 => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            0x70 => {
                if v == 0 {
                    self.reset();
                } else {
                    let newly_ok = v & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
                    if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 && self.acked & VIRTIO_F_VERSION_1 == 0 {
                        // A legacy driver: refuse FEATURES_OK, as the spec says.
                        self.status = v & !STATUS_FEATURES_OK;
                        return None;
                    }
                    self.status = v;
                    if v & STATUS_FAILED != 0 {
                        self.stop_worker();
                    } else if newly_ok && self.status & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK) == (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK) {
                        self.activate();
                    }
                }
            }
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 if writable => {
                if let Some(q) = self.selected() {
                    match offset {
                        0x80 => q.set_desc_table_address(Some(v), None),
                        0x84 => q.set_desc_table_address(None, Some(v)),
                        0x90 => q.set_avail_ring_address(Some(v), None),
                        0x94 => q.set_avail_ring_address(None, Some(v)),
                        0xa0 => q.set_used_ring_address(Some(v), None),
                        _ => q.set_used_ring_address(None, Some(v)),
                    }
                }
            }
            _ => {}
        }
        None
    }
}

/// The token `Poller::with_stop` gives the stop and VM-ended events.
pub const TOKEN_STOP: u64 = u64::MAX;

/// An epoll set for a device worker: each token is an index the worker matches on.
pub struct Poller {
    epoll: vmm_sys_util::epoll::Epoll,
}

impl Poller {
    pub fn new() -> std::io::Result<Poller> {
        Ok(Poller { epoll: vmm_sys_util::epoll::Epoll::new()? })
    }

    /// A poller that already watches the activation's stop and VM-ended events
    /// (`TOKEN_STOP`) and each queue's event (token = queue index).
    pub fn for_activation(ctx: &Activation) -> std::io::Result<Poller> {
        use std::os::fd::AsRawFd;
        let p = Poller::new()?;
        p.add(ctx.stop.as_raw_fd(), TOKEN_STOP, vmm_sys_util::epoll::EventSet::IN)?;
        p.add(ctx.vm_ended.as_raw_fd(), TOKEN_STOP, vmm_sys_util::epoll::EventSet::IN)?;
        for (i, e) in ctx.queue_events.iter().enumerate() {
            p.add(e.as_raw_fd(), i as u64, vmm_sys_util::epoll::EventSet::IN)?;
        }
        Ok(p)
    }

    pub fn add(&self, fd: std::os::fd::RawFd, token: u64, events: vmm_sys_util::epoll::EventSet) -> std::io::Result<()> {
        use vmm_sys_util::epoll::{ControlOperation, EpollEvent};
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    pub fn remove(&self, fd: std::os::fd::RawFd) {
        use vmm_sys_util::epoll::{ControlOperation, EpollEvent};
        let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Waits for events; returns the ready tokens.
    pub fn wait(&self, timeout_ms: i32) -> std::io::Result<Vec<u64>> {
        let mut events = vec![vmm_sys_util::epoll::EpollEvent::default(); 16];
        match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => Ok(events[..n].iter().map(|e| e.data()).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Idle {
        activations: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl VirtioDevice for Idle {
        fn device_type(&self) -> u32 {
            4
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn queue_sizes(&self) -> &[u16] {
            &[128]
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn activate(&mut self, ctx: Activation) -> std::io::Result<JoinHandle<()>> {
            self.activations.fetch_add(1, Ordering::SeqCst);
            // Like a real worker: serves until stopped.
            std::thread::Builder::new().spawn(move || {
                let _ = ctx.stop.read();
            })
        }
    }

    fn transport(device: Idle) -> MmioTransport {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap());
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let ended = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        MmioTransport::new("test".into(), Box::new(device), mem, irq, ended).unwrap()
    }

    fn write(t: &mut MmioTransport, offset: u64, v: u32) {
        t.write(offset, &v.to_le_bytes());
    }

    fn read(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut v = [0u8; 4];
        t.read(offset, &mut v);
        u32::from_le_bytes(v)
    }

    /// Found by the `mmio_transport` fuzz target (its reproducer is
    /// tests/fuzz/corpus/mmio_transport/regress-reset-clears-queue-select): after a reset the
    /// driver sees queue 0 selected again, whatever it selected before.
    #[test]
    fn a_reset_selects_queue_zero_again() {
        let mut t = transport(Idle::default());
        assert_eq!(read(&mut t, 0x34), 128);
        t.write(0x30, &0x131u32.to_le_bytes());
        assert_eq!(read(&mut t, 0x34), 0, "no such queue");
        t.write(0x70, &0u32.to_le_bytes());
        assert_eq!(read(&mut t, 0x34), 128);
        assert_eq!((read(&mut t, 0x70), read(&mut t, 0x60)), (0, 0));
    }

    /// Found by the `mmio_transport` fuzz target (reproducer
    /// tests/fuzz/corpus/mmio_transport/regress-driver-ok-twice): DRIVER_OK cleared and set
    /// again without a reset activates nothing more; after a reset the device activates anew.
    #[test]
    fn driver_ok_twice_without_a_reset_starts_one_worker() {
        let device = Idle::default();
        let count = device.activations.clone();
        let mut t = transport(device);
        let bring_up = |t: &mut MmioTransport| {
            write(t, 0x70, 1);
            write(t, 0x70, 3);
            write(t, 0x24, 1);
            write(t, 0x20, 1);
            write(t, 0x70, 0xb);
            write(t, 0x30, 0);
            write(t, 0x38, 128);
            write(t, 0x80, 0);
            write(t, 0x90, 0x1000);
            write(t, 0xa0, 0x2000);
            write(t, 0x44, 1);
            write(t, 0x70, 0xf);
        };
        bring_up(&mut t);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        for _ in 0..5 {
            write(&mut t, 0x70, 0xb);
            write(&mut t, 0x70, 0xf);
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "one worker, however often DRIVER_OK is toggled");
        write(&mut t, 0x70, 0);
        bring_up(&mut t);
        assert_eq!(count.load(Ordering::SeqCst), 2, "a reset, then a fresh activation");
    }
}
