//! The sandbox's side of its network link: `eth0` (a TUN device the shim made in a namespace
//! sandbox, virtio-net in a microVM) gets its addresses, MTU and default routes from the Init,
//! and `/etc/resolv.conf` names the gateway. Plain interface ioctls: no netlink dependency for
//! a handful of settings.

use crate::protocol::NetworkInit;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const RTF_UP: u16 = 0x0001;
const RTF_GATEWAY: u16 = 0x0002;

/// `struct rtentry` (glibc does not export it to Rust's libc).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// `struct in6_rtmsg` (Rust's libc keeps its fields private).
#[repr(C)]
struct In6RtMsg {
    rtmsg_dst: libc::in6_addr,
    rtmsg_src: libc::in6_addr,
    rtmsg_gateway: libc::in6_addr,
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: libc::c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: libc::c_int,
}

struct Sock(i32);

impl Sock {
    fn new(family: i32) -> io::Result<Sock> {
        // SAFETY: a plain socket for interface ioctls.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Sock(fd))
    }

    fn ioctl<T>(&self, req: libc::c_ulong, arg: &mut T, what: &str) -> io::Result<()> {
        // SAFETY: `arg` is the structure this request reads or writes.
        if unsafe { libc::ioctl(self.0, req as _, arg as *mut T) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        Ok(())
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: closing the socket we opened.
        unsafe { libc::close(self.0) };
    }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name:?}")));
    }
    // SAFETY: ifreq is plain old data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr_v4(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in { sin_family: libc::AF_INET as libc::sa_family_t, sin_port: 0, sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() }, sin_zero: [0; 8] };
    // SAFETY: sockaddr_in and sockaddr have the same size; the family says which it is.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn in6(ip: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr { s6_addr: ip.octets() }
}

/// Configures the link and the resolver. Runs inside the sandbox's root and network
/// namespace, before anything of the sandbox's runs.
pub fn configure(init: &NetworkInit) -> io::Result<()> {
    // A microVM's virtio-net driver probes after its module loads: give it a moment.
    let sys = format!("/sys/class/net/{}", init.interface);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::path::Path::new(&sys).exists() && std::path::Path::new("/sys/class/net").exists() {
        if std::time::Instant::now() > deadline {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("{} did not appear (is virtio_net in the initramfs?)", init.interface)));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let v4 = Sock::new(libc::AF_INET)?;
    let mut req = ifreq(&init.interface)?;
    req.ifr_ifru.ifru_mtu = init.mtu as i32;
    v4.ioctl(libc::SIOCSIFMTU, &mut req, "setting the MTU")?;
    let mut req = ifreq(&init.interface)?;
    v4.ioctl(libc::SIOCGIFINDEX, &mut req, "finding the interface")?;
    // SAFETY: SIOCGIFINDEX filled the index member.
    let index = unsafe { req.ifr_ifru.ifru_ifindex };
    if let Some(a) = &init.ipv4 {
        let mut req = ifreq(&init.interface)?;
        req.ifr_ifru.ifru_addr = sockaddr_v4(a.address);
        v4.ioctl(libc::SIOCSIFADDR, &mut req, "setting the IPv4 address")?;
        let mask = if a.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(a.prefix.min(32))) };
        let mut req = ifreq(&init.interface)?;
        req.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask));
        v4.ioctl(libc::SIOCSIFNETMASK, &mut req, "setting the IPv4 netmask")?;
    }
    let v6 = match &init.ipv6 {
        Some(a) => {
            // A TUN link answers no neighbour discovery: skip duplicate address detection, or
            // the address stays tentative (unusable) for a second.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/accept_dad", init.interface), "0");
            let s = Sock::new(libc::AF_INET6)?;
            let mut r = libc::in6_ifreq { ifr6_addr: in6(a.address), ifr6_prefixlen: u32::from(a.prefix), ifr6_ifindex: index };
            s.ioctl(libc::SIOCSIFADDR, &mut r, "setting the IPv6 address")?;
            Some(s)
        }
        None => None,
    };
    let mut req = ifreq(&init.interface)?;
    v4.ioctl(libc::SIOCGIFFLAGS, &mut req, "reading the link flags")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    v4.ioctl(libc::SIOCSIFFLAGS, &mut req, "bringing the link up")?;
    if let Some(a) = &init.ipv4 {
        let mut dev: Vec<u8> = init.interface.bytes().chain([0]).collect();
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr_v4(a.gateway),
            rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
            rt_flags: RTF_UP | RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr().cast(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        v4.ioctl(libc::SIOCADDRT, &mut rt, "adding the IPv4 default route")?;
    }
    if let (Some(a), Some(s)) = (&init.ipv6, &v6) {
        let mut rt = In6RtMsg {
            rtmsg_dst: in6(Ipv6Addr::UNSPECIFIED),
            rtmsg_src: in6(Ipv6Addr::UNSPECIFIED),
            rtmsg_gateway: in6(a.gateway),
            rtmsg_type: 0,
            rtmsg_dst_len: 0,
            rtmsg_src_len: 0,
            rtmsg_metric: 1,
            rtmsg_info: 0,
            rtmsg_flags: u32::from(RTF_UP | RTF_GATEWAY),
            rtmsg_ifindex: index,
        };
        s.ioctl(libc::SIOCADDRT, &mut rt, "adding the IPv6 default route")?;
    }
    // Unprivileged ping (ICMP datagram sockets) for every user, as Docker does: the echo
    // still goes through the shim's policy like any other flow.
    let _ = std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647");
    write_resolv_conf(&init.nameservers)
}

/// `/etc/resolv.conf` naming the gateway, replacing whatever the image had there (a symlink
/// included: it is removed, never followed).
fn write_resolv_conf(nameservers: &[IpAddr]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if nameservers.is_empty() {
        return Ok(());
    }
    let path = std::path::Path::new("/etc/resolv.conf");
    let _ = std::fs::create_dir_all("/etc");
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() || m.file_type().is_symlink() => std::fs::remove_file(path).map_err(|e| io::Error::new(e.kind(), format!("replacing /etc/resolv.conf: {e}")))?,
        _ => {}
    }
    let mut text = String::from("# written by the orchestrator's agent: the gateway answers DNS for this sandbox\n");
    for ns in nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    text.push_str("options edns0\n");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).custom_flags(libc::O_NOFOLLOW).open(path)?;
    f.write_all(text.as_bytes())
}
