//! `vmm-run`: boots one VM from the command line and reports how it ended; for trying a kernel
//! and initramfs by hand and for the boot benchmark. The orchestrator itself runs VMs inside
//! shims, not through this.
//!
//!   vmm-run --kernel K [--boot auto|pvh|linux64] [--initrd I] [--cmdline S] [--mem MiB] [--cpus N] [--disk PATH[:ro]]...
//!           [--console FILE]

use std::time::{Duration, Instant};
use vmm::{DiskConfig, Vm, VmConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut cfg = VmConfig {
        vcpus: 1,
        mem_bytes: 256 << 20,
        kernel: Default::default(),
        boot: Default::default(),
        initrd: None,
        cmdline: "console=ttyS0 panic=-1 reboot=acpi quiet".into(),
        disks: Vec::new(),
        console_log: Some("/dev/stdout".into()),
        console_limit: u64::MAX,
        guest_cid: 3,
        net: None,
        shares: Vec::new(),
    };
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| fail(&format!("{a} needs a value")));
        match a.as_str() {
            "--kernel" => cfg.kernel = val().into(),
            "--initrd" => cfg.initrd = Some(val().into()),
            "--cmdline" => cfg.cmdline = val(),
            "--boot" => cfg.boot = val().parse().unwrap_or_else(|e: String| fail(&e)),
            "--mem" => cfg.mem_bytes = val().parse::<u64>().unwrap_or_else(|_| fail("--mem takes MiB")) << 20,
            "--cpus" => cfg.vcpus = val().parse().unwrap_or_else(|_| fail("--cpus takes a number")),
            "--disk" => {
                let v = val();
                let (path, ro) = match v.strip_suffix(":ro") {
                    Some(p) => (p.to_string(), true),
                    None => (v, false),
                };
                cfg.disks.push(DiskConfig { path: path.into(), read_only: ro });
            }
            "--console" => cfg.console_log = Some(val().into()),
            other => fail(&format!("unknown argument {other}")),
        }
    }
    let t0 = Instant::now();
    let started = Vm::start(&cfg).unwrap_or_else(|e| fail(&e.to_string()));
    eprintln!("vmm-run: booting through {} ({:?} after start)", started.entry, t0.elapsed());
    let reason = started.vm.wait(Duration::from_secs(3600));
    eprintln!("vmm-run: {} after {:?}", reason.map(|r| r.to_string()).unwrap_or_else(|| "still running".into()), t0.elapsed());
}

fn fail(msg: &str) -> ! {
    eprintln!("vmm-run: {msg}");
    std::process::exit(2);
}
