//! MicroVM boot benchmark: our VMM vs QEMU `-M microvm,acpi=on`, side by side in one run, with
//! the same kernel, the same initramfs (our static agent as init), the same two virtio-blk
//! disks, vsock and rng. Ours boots what the orchestrator boots: the vmlinux it unpacks once
//! from Debian's bzImage, through PVH. QEMU runs twice per round: as its users run it (the
//! bzImage: the guest decompresses the kernel; microvm's default devices), and at its best: the
//! same vmlinux through QEMU's PVH boot, with `initcall_blacklist=cmos_init` added to the command
//! line so the guest skips probing QEMU's RTC (seconds of guest time; our VMM tells the guest
//! through ACPI that there is no CMOS RTC). For all, the same driver measures:
//! - agent-ready: from launching the VM to the agent's vsock connection being accepted;
//! - full: launch, agent Init (disks mounted, overlay root), `exec true`, shutdown, VM gone.
//! Ours runs in this process through the `vmm` crate (as in a shim); QEMU runs as a process
//! with vhost-vsock, and the agent connects to our AF_VSOCK listener.
//! Also: `orchestrator run --rm --isolation microvm ... true` end to end, and the resident
//! memory of each VMM excluding guest RAM.
//!
//! Needs a KVM that boots guests: `just bench` runs it in the nested-KVM harness.
//!   ORCHESTRATOR_BENCH_RUNS (default 5), ORCHESTRATOR_BIN (default target/release/orchestrator)

use guest_agent::protocol::{self, AgentRequest, ExecRequest, Frame, Response};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CACHE: &str = "/var/cache/orchestrator-dev";
const MEM_MIB: u64 = 256;

fn orchestrator() -> PathBuf {
    std::env::var_os("ORCHESTRATOR_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/orchestrator")))
}

fn orch(data: &Path, args: &[&str]) -> String {
    let out = Command::new(orchestrator()).arg("--data-dir").arg(data).args(args).output().expect("running orchestrator");
    assert!(out.status.success(), "orchestrator {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Setup {
    /// Debian's bzImage, and the vmlinux unpacked from it (`kernel show`'s `boot:`).
    bzimage: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    image: PathBuf,
    scratch_template: PathBuf,
    cmdline: String,
    work: PathBuf,
}

/// The agent session both VMMs get: Init, `exec true`, shutdown.
fn session(stream: &mut UnixStream) -> Result<(), String> {
    stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
    let init = guest_agent::vm::sandbox_init("bench", Vec::new());
    protocol::write_frame(stream, &Frame { id: 1, body: AgentRequest::Init(Box::new(init)) }).map_err(|e| e.to_string())?;
    match protocol::read_frame::<Response>(stream).map_err(|e| e.to_string())?.body {
        Response::Ready => {}
        other => return Err(format!("init: {other:?}")),
    }
    let exec = ExecRequest {
        argv: vec!["true".into()],
        env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into_iter().collect(),
        cwd: None,
        user: None,
        tty: None,
        stdin: false,
        rlimits: Default::default(),
        timeout_ms: None,
    };
    protocol::write_frame(stream, &Frame { id: 2, body: AgentRequest::Exec(Box::new(exec)) }).map_err(|e| e.to_string())?;
    loop {
        let f = protocol::read_frame::<Response>(stream).map_err(|e| e.to_string())?;
        match f.body {
            Response::Exited(_) if f.id == 2 => break,
            Response::Error { message, .. } => return Err(message),
            _ => {}
        }
    }
    protocol::write_frame(stream, &Frame { id: 3, body: AgentRequest::Shutdown { grace_ms: 0 } }).map_err(|e| e.to_string())?;
    Ok(())
}

/// Progress on stderr when ORCHESTRATOR_BENCH_VERBOSE is set (diagnosing a stuck run).
fn progress(what: &str) {
    if std::env::var_os("ORCHESTRATOR_BENCH_VERBOSE").is_some() {
        eprintln!("bench: {what}");
    }
}

fn fresh_scratch(s: &Setup, name: &str) -> PathBuf {
    let p = s.work.join(name);
    let st = Command::new("cp").arg("--sparse=always").arg(&s.scratch_template).arg(&p).status().unwrap();
    assert!(st.success());
    p
}

fn ours(s: &Setup) -> (Duration, Duration) {
    let scratch = fresh_scratch(s, "scratch-ours.ext4");
    let cfg = vmm::VmConfig {
        vcpus: 1,
        mem_bytes: MEM_MIB << 20,
        kernel: s.kernel.clone(),
        boot: vmm::kernel::BootProtocol::Auto,
        initrd: Some(s.initrd.clone()),
        cmdline: s.cmdline.clone(),
        disks: vec![vmm::DiskConfig { path: s.image.clone(), read_only: true }, vmm::DiskConfig { path: scratch, read_only: false }],
        console_log: Some(s.work.join("console-ours.log")),
        console_limit: 1 << 20,
        guest_cid: 3,
        net: None,
        shares: Vec::new(),
    };
    let t0 = Instant::now();
    progress("ours: starting");
    let started = vmm::Vm::start(&cfg).expect("starting our VM");
    let connected = started.agent_connected.recv_timeout(Duration::from_secs(120)).expect("our agent connected");
    let ready = connected - t0;
    progress("ours: agent connected");
    let mut agent = started.agent;
    session(&mut agent).expect("session with our VM");
    progress("ours: session done");
    let reason = started.vm.wait(Duration::from_secs(60)).expect("our VM ended");
    assert_eq!(reason, vmm::ExitReason::PowerOff);
    let full = t0.elapsed();
    drop(started.vm);
    (ready, full)
}

/// An AF_VSOCK listener on the host's agent port (QEMU's vhost-vsock guest connects here).
fn vsock_listener() -> i32 {
    // SAFETY: socket/bind/listen on a fresh fd with a zeroed sockaddr_vm.
    unsafe {
        let fd = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "AF_VSOCK socket: {} (is vhost_vsock loaded?)", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        addr.svm_port = guest_agent::vm::AGENT_PORT;
        assert_eq!(libc::bind(fd, (&addr as *const libc::sockaddr_vm).cast(), std::mem::size_of::<libc::sockaddr_vm>() as u32), 0, "bind vsock: {}", std::io::Error::last_os_error());
        assert_eq!(libc::listen(fd, 4), 0);
        fd
    }
}

/// QEMU at its best: the unpacked vmlinux, and no RTC probe.
const QEMU_TUNED_APPEND: &str = "initcall_blacklist=cmos_init";

fn qemu(s: &Setup, kernel: &Path, extra_append: &str, listener: i32) -> (Duration, Duration) {
    let cmdline = format!("{} {extra_append}", s.cmdline);
    let scratch = fresh_scratch(s, "scratch-qemu.ext4");
    let drive = |id: &str, path: &Path, ro: bool| format!("id={id},file={},format=raw,if=none{}", path.display(), if ro { ",readonly=on" } else { "" });
    let t0 = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "host", "-m", &MEM_MIB.to_string(), "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-display", "none"])
        .arg("-serial").arg(format!("file:{}", s.work.join("console-qemu.log").display()))
        .arg("-kernel").arg(kernel).arg("-initrd").arg(&s.initrd).arg("-append").arg(cmdline.trim())
        .arg("-drive").arg(drive("img", &s.image, true)).args(["-device", "virtio-blk-device,drive=img"])
        .arg("-drive").arg(drive("scr", &scratch, false)).args(["-device", "virtio-blk-device,drive=scr"])
        .args(["-device", "vhost-vsock-device,guest-cid=3", "-device", "virtio-rng-device"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("starting qemu-system-x86_64");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut pfd = libc::pollfd { fd: listener, events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on our listener.
        if unsafe { libc::poll(&mut pfd, 1, 50) } == 1 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("qemu exited with {status} before its guest agent connected");
        }
        assert!(Instant::now() < deadline, "QEMU's guest agent did not connect within 120 s");
    }
    // SAFETY: accept on our listener; the new fd is owned by the UnixStream below.
    let fd = unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    assert!(fd >= 0);
    let ready = t0.elapsed();
    progress("qemu: agent connected");
    // SAFETY: a connected stream socket we own (vsock supports what UnixStream uses).
    let mut agent = unsafe { UnixStream::from_raw_fd(fd) };
    session(&mut agent).expect("session with the QEMU VM");
    progress("qemu: session done");
    // As our VMM does: when the agent closes its channel (its power-off), the host ends the VM.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut agent, &mut rest);
    let _ = child.kill();
    let _ = child.wait();
    (ready, t0.elapsed())
}

/// Resident memory of a process excluding its largest anonymous mapping of at least
/// `guest_bytes` (guest RAM), in KiB.
fn rss_without_guest_kib(pid: u32, guest_bytes: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut total = 0;
    let mut guest = 0;
    let mut size_kib = 0;
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some("Size:"), Some(v)) => size_kib = v.parse::<u64>().unwrap_or(0),
            (Some("Rss:"), Some(v)) => {
                let rss = v.parse::<u64>().unwrap_or(0);
                total += rss;
                if size_kib * 1024 >= guest_bytes && rss > guest {
                    guest = rss;
                }
            }
            _ => {}
        }
    }
    total - guest
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("ORCHESTRATOR_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let work = tempfile::Builder::new().prefix("vm-bench-").tempdir_in("/tmp").unwrap();
    let data = work.path().join("data");
    let doctor = Command::new(orchestrator()).arg("--data-dir").arg(&data).arg("doctor").output().unwrap();
    if !doctor.status.success() {
        eprintln!("SKIPPED: this host cannot boot microVMs; run `just bench` (nested harness):\n{}", String::from_utf8_lossy(&doctor.stdout));
        std::process::exit(if std::env::var_os("ORCHESTRATOR_REQUIRE_MICROVM").is_some() { 1 } else { 0 });
    }
    let show = orch(&data, &["kernel", "show"]);
    let field = |name: &str| PathBuf::from(show.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim());
    let (bzimage, kernel) = (field("image:"), field("boot:"));
    let initrd = PathBuf::from(orch(&data, &["kernel", "initramfs"]).trim());
    let busybox = format!("oci-layout:{CACHE}/oci-test/layout:busybox");
    orch(&data, &["image", "pull", &busybox]);
    let image = PathBuf::from(orch(&data, &["image", "disk", &busybox]).trim());
    let scratch_template = work.path().join("scratch-template.ext4");
    let f = std::fs::File::create(&scratch_template).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    assert!(Command::new("mkfs.ext4").args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-m", "0"]).arg(&scratch_template).status().unwrap().success());
    let setup = Setup { bzimage, kernel, initrd, image, scratch_template, cmdline: orchestrator::microvm::kernel::GUEST_CMDLINE.into(), work: work.path().to_path_buf() };
    let listener = vsock_listener();

    let (mut our_ready, mut our_full, mut q_ready, mut q_full, mut p_ready, mut p_full) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        let (r, f) = ours(&setup);
        let (qr, qf) = qemu(&setup, &setup.bzimage, "", listener);
        let (pr, pf) = qemu(&setup, &setup.kernel, QEMU_TUNED_APPEND, listener);
        eprintln!("run {i}: ours ready {} full {} | qemu default ready {} full {} | qemu tuned ready {} full {}", ms(r), ms(f), ms(qr), ms(qf), ms(pr), ms(pf));
        our_ready.push(r);
        our_full.push(f);
        q_ready.push(qr);
        q_full.push(qf);
        p_ready.push(pr);
        p_full.push(pf);
    }

    // Memory: a running VM of each, measured from outside.
    let vmm_run = Path::new(&orchestrator()).with_file_name("vmm-run");
    let scratch = fresh_scratch(&setup, "scratch-mem.ext4");
    let mut ours_proc = Command::new(&vmm_run)
        .args(["--kernel", setup.kernel.to_str().unwrap(), "--initrd", setup.initrd.to_str().unwrap(), "--cmdline", &setup.cmdline, "--mem", &MEM_MIB.to_string(), "--console", "/dev/null"])
        .arg("--disk").arg(format!("{}:ro", setup.image.display())).arg("--disk").arg(&scratch)
        .stderr(Stdio::null())
        .spawn()
        .expect("vmm-run");
    let q_scratch = fresh_scratch(&setup, "scratch-qmem.ext4");
    let mut q_proc = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "host", "-m", &MEM_MIB.to_string(), "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-display", "none", "-serial", "null"])
        .arg("-kernel").arg(&setup.bzimage).arg("-initrd").arg(&setup.initrd).arg("-append").arg(&setup.cmdline)
        .arg("-drive").arg(format!("id=img,file={},format=raw,if=none,readonly=on", setup.image.display())).args(["-device", "virtio-blk-device,drive=img"])
        .arg("-drive").arg(format!("id=scr,file={},format=raw,if=none", q_scratch.display())).args(["-device", "virtio-blk-device,drive=scr"])
        .args(["-device", "vhost-vsock-device,guest-cid=3", "-device", "virtio-rng-device"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu");
    // Both boot until their agent is connected and waits for Init (we never send it).
    let mut pfd = libc::pollfd { fd: listener, events: libc::POLLIN, revents: 0 };
    // SAFETY: poll and accept on our listener; the accepted fd is closed below.
    let q_conn = unsafe {
        assert_eq!(libc::poll(&mut pfd, 1, 120_000), 1, "QEMU's agent did not connect for the memory measurement");
        libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
    };
    std::thread::sleep(Duration::from_secs(20));
    let our_rss = rss_without_guest_kib(ours_proc.id(), (MEM_MIB << 20) / 2);
    let q_rss = rss_without_guest_kib(q_proc.id(), (MEM_MIB << 20) / 2);
    let _ = ours_proc.kill();
    let _ = q_proc.kill();
    let _ = ours_proc.wait();
    let _ = q_proc.wait();
    // SAFETY: closing the connection we accepted.
    unsafe { libc::close(q_conn) };
    // SAFETY: closing our listener.
    unsafe { libc::close(listener.as_raw_fd()) };

    // The whole user-facing path: CLI, store, shim, VMM, agent, exec, teardown.
    let mut runs_full = Vec::new();
    for _ in 0..runs.min(3) {
        let t = Instant::now();
        orch(&data, &["run", "--rm", "--isolation", "microvm", &busybox, "--", "true"]);
        runs_full.push(t.elapsed());
    }

    println!("\nmicroVM boot, {runs} runs each, median (nested KVM under TCG: absolute times are slow, compare the ratios)");
    println!("| | ours (vmlinux, PVH) | QEMU microvm, bzImage | ours / QEMU | QEMU microvm tuned: same vmlinux (PVH), no RTC probe | ours / QEMU |");
    println!("|---|---|---|---|---|---|");
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let (a, b, c) = (median(our_ready), median(q_ready), median(p_ready));
    println!("| start → agent ready | {} | {} | {:.2} | {} | {:.2} |", ms(a), ms(b), ratio(a, b), ms(c), ratio(a, c));
    let (a, b, c) = (median(our_full), median(q_full), median(p_full));
    println!("| start → init, exec true, power-off | {} | {} | {:.2} | {} | {:.2} |", ms(a), ms(b), ratio(a, b), ms(c), ratio(a, c));
    println!("| VMM resident memory excluding guest RAM | {} KiB | {} KiB | {:.2} | | |", our_rss, q_rss, our_rss as f64 / q_rss.max(1) as f64);
    println!("| `orchestrator run --rm --isolation microvm busybox -- true` | {} | | | | |", ms(median(runs_full)));
}
