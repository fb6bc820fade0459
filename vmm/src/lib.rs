//! The orchestrator's microVM monitor: one KVM virtual machine per sandbox, on the rust-vmm
//! crates (kvm-ioctls, vm-memory, virtio-queue, linux-loader, vm-superio, acpi_tables,
//! seccompiler). It boots a stock kernel through PVH with ACPI tables that describe COM1 and
//! the virtio-mmio devices (block disks, vsock for the agent, rng, net), and reports how the guest
//! ended: power-off, reboot, kernel panic, triple fault or a VMM-side failure.
//!
//! It runs inside the sandbox's shim (one VMM per sandbox), so the VM lives exactly as long as
//! its shim. Every vCPU and device thread runs under a seccomp filter once it is set up.

pub mod acpi;
pub mod bus;
mod cpu;
pub mod device_manager;
pub mod devices;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod kernel;
pub mod layout;
mod linux64;
pub mod seccomp;

use bus::Bus;
use devices::virtio::MmioTransport;
use kvm_ioctls::{Kvm, VmFd};
use layout::*;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    #[error("/dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    #[error("kernel: {0}")]
    Kernel(String),
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
    let what = what.into();
    move |source| VmmError::Io { what, source }
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitReason {
    /// The guest powered off (ACPI S5), or its agent ended the sandbox by closing its channel.
    PowerOff,
    /// The guest asked for a reset; a sandbox does not reboot, so this ends it too.
    Reboot,
    /// The guest kernel panicked (the console line that said so).
    Panic(String),
    /// A vCPU hit a triple fault.
    TripleFault,
    /// The VMM stopped the VM (`Vm::stop`).
    Stopped,
    /// Something failed on the VMM side.
    Crashed(String),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "the guest powered off"),
            ExitReason::Reboot => write!(f, "the guest rebooted (a sandbox VM ends on reboot)"),
            ExitReason::Panic(line) => write!(f, "the guest kernel panicked: {line}"),
            ExitReason::TripleFault => write!(f, "a vCPU triple-faulted (guest crash)"),
            ExitReason::Stopped => write!(f, "stopped by the host"),
            ExitReason::Crashed(why) => write!(f, "the VMM failed: {why}"),
        }
    }
}

/// A disk the guest sees as /dev/vdX, in order.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub vcpus: u8,
    pub mem_bytes: u64,
    /// A bzImage or an ELF vmlinux: entered through PVH when it has the note (the bzImage's LZ4
    /// vmlinux is unpacked here), else through the Linux 64-bit entry (see `boot`).
    pub kernel: PathBuf,
    pub boot: kernel::BootProtocol,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub disks: Vec<DiskConfig>,
    /// Where COM1's output goes (at most `console_limit` bytes).
    pub console_log: Option<PathBuf>,
    pub console_limit: u64,
    pub guest_cid: u64,
    /// The guest's network link: virtio-net over this fd (a non-blocking SOCK_SEQPACKET
    /// socket carrying one Ethernet frame per message); None: no network device.
    pub net: Option<NetConfig>,
    /// File systems the guest mounts with virtio-fs (`mount -t virtiofs TAG`), each served by a
    /// vhost-user daemon (virtiofsd) listening on `socket`. With any, guest memory is backed by
    /// memfds the daemons map.
    pub shares: Vec<ShareConfig>,
}

#[derive(Debug, Clone)]
pub struct ShareConfig {
    pub tag: String,
    pub socket: PathBuf,
}

#[derive(Debug, Clone)]
pub struct NetConfig {
    pub link: Arc<std::os::fd::OwnedFd>,
    pub mac: [u8; 6],
    pub mtu: u16,
}

/// Shared between the vCPUs, the devices and the owner: the first exit reason wins.
pub struct VmControl {
    reason: Mutex<Option<ExitReason>>,
    /// Every device worker watches this; written once when the VM ends.
    ended: Arc<EventFd>,
    changed: Condvar,
    stop: AtomicBool,
    running_vcpus: AtomicUsize,
    vcpu_threads: Mutex<Vec<libc::pthread_t>>,
}

impl VmControl {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn finish(&self, reason: ExitReason) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason);
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.ended.write(1);
        self.changed.notify_all();
        drop(r);
        self.kick();
    }

    /// Interrupts every vCPU in KVM_RUN so it sees `stop`.
    fn kick(&self) {
        let threads = self.vcpu_threads.lock().unwrap_or_else(|p| p.into_inner());
        let me = unsafe { libc::pthread_self() };
        for t in threads.iter().filter(|t| **t != me) {
            // SAFETY: the thread ids belong to our vCPU threads, which are joined only after
            // `running_vcpus` reaches zero; a signal to an exited-but-unjoined thread is harmless.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }
}

/// The VMM owns its process (a shim, or `vmm-run`): one malloc arena for all of it, instead of
/// one per device thread, each holding its own freed request buffers. Part of keeping the
/// VMM's resident memory (guest RAM aside) at Firecracker's 5 MiB.
fn limit_allocator() {
    // SAFETY: mallopt only changes the allocator's tuning; it is thread-safe.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_: i32) {}

fn install_kick_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: an empty handler without SA_RESTART: it only makes KVM_RUN return EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

pub struct Vm {
    control: Arc<VmControl>,
    vcpus: Vec<JoinHandle<()>>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    panic: Arc<Mutex<Option<String>>>,
    /// Each virtio-blk disk's counters, in `VmConfig::disks` order.
    disk_io: Vec<Arc<devices::block::DiskIo>>,
    _vm: VmFd,
}

/// What `Vm::start` hands back: the VM, and the host end of the agent's vsock connection.
pub struct Started {
    pub vm: Vm,
    pub agent: UnixStream,
    /// Receives the moment the agent's vsock connection is accepted.
    pub agent_connected: std::sync::mpsc::Receiver<Instant>,
    /// How the kernel was entered.
    pub entry: kernel::Entry,
}

impl Vm {
    pub fn start(cfg: &VmConfig) -> Result<Started, VmmError> {
        if cfg.vcpus == 0 || cfg.vcpus > 32 {
            return Err(VmmError::Config(format!("{} vCPUs requested; 1 to 32 are supported", cfg.vcpus)));
        }
        if cfg.mem_bytes < (64 << 20) {
            return Err(VmmError::Config(format!("{} MiB of memory requested; a microVM needs at least 64 MiB", cfg.mem_bytes >> 20)));
        }
        install_kick_handler();
        limit_allocator();
        let kvm = Kvm::new().map_err(VmmError::Open)?;
        let vm = kvm.create_vm().map_err(|e| VmmError::Kvm("KVM_CREATE_VM", e))?;
        vm.set_tss_address(KVM_TSS_ADDR).map_err(|e| VmmError::Kvm("KVM_SET_TSS_ADDR", e))?;
        vm.create_irq_chip().map_err(|e| VmmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_bindings::kvm_pit_config { flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        vm.create_pit2(pit).map_err(|e| VmmError::Kvm("KVM_CREATE_PIT2", e))?;

        let ranges: Vec<(GuestAddress, usize)> = kernel::ram_regions(cfg.mem_bytes).into_iter().map(|(s, l)| (GuestAddress(s), l as usize)).collect();
        let mem = if cfg.shares.is_empty() {
            GuestMemoryMmap::<()>::from_ranges(&ranges)
        } else {
            let backed = ranges.iter().map(|(start, len)| shared_memory(*len).map(|f| (*start, *len, Some(vm_memory::FileOffset::new(f, 0))))).collect::<Result<Vec<_>, _>>()?;
            GuestMemoryMmap::<()>::from_ranges_with_files(backed)
        }
        .map_err(|e| VmmError::Config(format!("allocating {} MiB of guest memory: {e}", cfg.mem_bytes >> 20)))?;
        for (slot, region) in mem.iter().enumerate() {
            let host = mem.get_host_address(region.start_addr()).map_err(|e| VmmError::Config(format!("guest memory: {e}")))?;
            let r = kvm_bindings::kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region stays mapped for the VM's whole life (`mem` is kept in an Arc
            // by every device and dropped only after the vCPUs have been joined).
            unsafe { vm.set_user_memory_region(r) }.map_err(|e| VmmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        let mem = Arc::new(mem);

        let mut image = std::fs::File::open(&cfg.kernel).map_err(io(format!("opening the kernel {}", cfg.kernel.display())))?;
        let loaded = kernel::load_kernel(&mem, &mut image, cfg.boot).map_err(|e| match e {
            VmmError::Kernel(why) => VmmError::Kernel(format!("{}: {why}", cfg.kernel.display())),
            other => other,
        })?;
        drop(image);
        let initrd = match &cfg.initrd {
            Some(path) => {
                let mut file = std::fs::File::open(path).map_err(io(format!("opening the initramfs {}", path.display())))?;
                let size = file.metadata().map_err(io(format!("reading the initramfs {}", path.display())))?.len();
                Some((kernel::load_initrd(&mem, cfg.mem_bytes, loaded.end, &mut file, size)?, size as usize))
            }
            None => None,
        };
        let mut bus = Bus::default();
        let console_file = match &cfg.console_log {
            Some(p) => Some(std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(io(format!("opening {}", p.display())))?),
            None => None,
        };
        let sink = devices::serial::ConsoleSink::new(console_file, cfg.console_limit);
        let panic = sink.panic.clone();
        let com1_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?;
        vm.register_irqfd(&com1_irq, COM1_IRQ).map_err(|e| VmmError::Kvm("KVM_IRQFD", e))?;
        let serial = vm_superio::Serial::new(devices::serial::IrqTrigger(com1_irq), sink);
        bus.add_pio(COM1_PORT, 8, Arc::new(Mutex::new(devices::serial::SerialPort(serial))));
        bus.add_pio(ACPI_POWER_PORT, 1, Arc::new(Mutex::new(devices::power::PowerPort)));

        let mut virtio: Vec<(String, Box<dyn devices::virtio::VirtioDevice>)> = Vec::new();
        let mut disk_io = Vec::new();
        for (i, d) in cfg.disks.iter().enumerate() {
            let file = std::fs::OpenOptions::new().read(true).write(!d.read_only).open(&d.path).map_err(io(format!("opening disk {}", d.path.display())))?;
            let id = format!("disk{i}");
            let dev = devices::block::Block::new(file, d.read_only, &id).map_err(io(format!("disk {}", d.path.display())))?;
            disk_io.push(dev.io());
            virtio.push((format!("virtio-blk {}", d.path.display()), Box::new(dev)));
        }
        let (host_end, agent) = UnixStream::pair().map_err(io("socketpair"))?;
        let (connected_tx, agent_connected) = std::sync::mpsc::channel();
        let ended = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(io("eventfd"))?);
        let control = Arc::new(VmControl {
            reason: Mutex::new(None),
            ended: ended.clone(),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            running_vcpus: AtomicUsize::new(0),
            vcpu_threads: Mutex::new(Vec::new()),
        });
        let on_close = {
            let control = control.clone();
            Box::new(move || control.finish(ExitReason::PowerOff)) as Box<dyn FnOnce() + Send>
        };
        virtio.push(("virtio-vsock".into(), Box::new(devices::vsock::Vsock::new(cfg.guest_cid, host_end, connected_tx, on_close))));
        virtio.push(("virtio-rng".into(), Box::new(devices::rng::Rng)));
        if let Some(net) = &cfg.net {
            virtio.push(("virtio-net".into(), Box::new(devices::net::Net::new(net.link.clone(), net.mac, net.mtu))));
        }
        for share in &cfg.shares {
            let dev = devices::fs::Fs::new(&share.socket, &share.tag, &mem).map_err(io(format!("virtio-fs {}", share.tag)))?;
            virtio.push((format!("virtio-fs {}", share.tag), Box::new(dev)));
        }
        let mut devices = device_manager::MmioDeviceManager::default();
        for (name, dev) in virtio {
            devices.register(&vm, &mut bus, &mem, &ended, name, dev)?;
        }
        let device_manager::MmioDeviceManager { infos, transports } = devices;

        let rsdp = acpi::write_tables(&mem, cfg.vcpus, &infos)?;
        kernel::write_cmdline(&mem, &cfg.cmdline)?;
        let cr3 = match loaded.entry {
            kernel::Entry::Pvh(_) => {
                kernel::write_start_info(&mem, cfg.mem_bytes, initrd, rsdp)?;
                0
            }
            kernel::Entry::Linux64(_) => {
                linux64::write_boot_params(&mem, loaded.setup_header, cfg.mem_bytes, cfg.cmdline.len() + 1, initrd, rsdp)?;
                linux64::write_page_tables(&mem)?
            }
        };
        tracing::debug!("booting through {:?}", loaded.entry);
        cpu::write_boot_tables(&mem, loaded.entry)?;

        let bus = Arc::new(bus);
        let mut vcpus = Vec::new();
        for i in 0..cfg.vcpus {
            let fd = vm.create_vcpu(u64::from(i)).map_err(|e| VmmError::Kvm("KVM_CREATE_VCPU", e))?;
            cpu::configure(&kvm, &fd, i, cfg.vcpus, loaded.entry, cr3)?;
            let (bus, control2) = (bus.clone(), control.clone());
            control.running_vcpus.fetch_add(1, Ordering::SeqCst);
            let handle = std::thread::Builder::new().name(format!("vcpu{i}")).spawn(move || {
                seccomp::apply_vcpu_filter();
                cpu::run(fd, i, bus, control2.clone());
                control2.running_vcpus.fetch_sub(1, Ordering::SeqCst);
                control2.changed.notify_all();
            });
            match handle {
                Ok(h) => {
                    use std::os::unix::thread::JoinHandleExt;
                    control.vcpu_threads.lock().unwrap_or_else(|p| p.into_inner()).push(h.as_pthread_t());
                    vcpus.push(h);
                }
                Err(e) => {
                    control.running_vcpus.fetch_sub(1, Ordering::SeqCst);
                    control.finish(ExitReason::Crashed(format!("starting vCPU {i}: {e}")));
                    let vm = Vm { control, vcpus, transports, panic, disk_io, _vm: vm };
                    vm.stop();
                    return Err(io("starting a vCPU thread")(e));
                }
            }
        }
        // Set-up's temporaries (device tables, file metadata) go back to the system.
        // SAFETY: malloc_trim only releases free heap pages.
        unsafe { libc::malloc_trim(0) };
        Ok(Started { vm: Vm { control, vcpus, transports, panic, disk_io, _vm: vm }, agent, agent_connected, entry: loaded.entry })
    }

    /// Waits up to `timeout` for the VM to end; the reason, once it has.
    pub fn wait(&self, timeout: Duration) -> Option<ExitReason> {
        let deadline = Instant::now() + timeout;
        let mut r = self.control.reason.lock().unwrap_or_else(|p| p.into_inner());
        while r.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            r = self.control.changed.wait_timeout(r, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        let reason = r.clone()?;
        drop(r);
        Some(self.refine(reason))
    }

    /// A reset right after "Kernel panic" on the console is a panic, not a reboot.
    fn refine(&self, reason: ExitReason) -> ExitReason {
        match (reason, self.panic.lock().unwrap_or_else(|p| p.into_inner()).clone()) {
            (ExitReason::Reboot | ExitReason::TripleFault | ExitReason::PowerOff, Some(line)) => ExitReason::Panic(line),
            (r, _) => r,
        }
    }

    /// Stops the VM (if it still runs), joins every vCPU and device thread.
    pub fn stop(&self) {
        self.control.finish(ExitReason::Stopped);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.control.running_vcpus.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            self.control.kick();
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in &self.transports {
            t.lock().unwrap_or_else(|p| p.into_inner()).stop_worker();
        }
    }
}

impl Vm {
    /// What the guest has read and written through its virtio-blk disks, summed.
    pub fn disk_io(&self) -> devices::block::DiskIoTotals {
        self.disk_io.iter().map(|d| d.totals()).fold(devices::block::DiskIoTotals::default(), |a, b| devices::block::DiskIoTotals {
            read_bytes: a.read_bytes + b.read_bytes,
            write_bytes: a.write_bytes + b.write_bytes,
            read_ops: a.read_ops + b.read_ops,
            write_ops: a.write_ops + b.write_ops,
        })
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
        for h in self.vcpus.drain(..) {
            let _ = h.join();
        }
    }
}

/// One memfd of `len` bytes for a guest RAM range, shared with vhost-user daemons.
fn shared_memory(len: usize) -> Result<std::fs::File, VmmError> {
    use std::os::fd::FromRawFd;
    // SAFETY: memfd_create with a NUL-terminated name; returns a new fd we own.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(VmmError::Io { what: "memfd_create for guest memory".into(), source: std::io::Error::last_os_error() });
    }
    // SAFETY: just created.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(len as u64).map_err(io("sizing guest memory"))?;
    Ok(file)
}
