//! The guest's link as smoltcp sees it (IP packets from a TUN device, Ethernet frames from
//! virtio-net): frames the stack chose to hand to smoltcp wait in a
//! queue (the classifier reads the fd, not smoltcp), and smoltcp's frames are written straight
//! to the fd. A write the fd refuses (full) is dropped and counted: TCP retransmits.

use crate::stats::Stats;
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

pub struct FrameDevice {
    pub fd: Arc<OwnedFd>,
    pub rx: VecDeque<Vec<u8>>,
    pub mtu: usize,
    pub medium: crate::Medium,
    pub stats: Arc<Stats>,
    scratch: Vec<u8>,
}

impl FrameDevice {
    pub fn new(fd: Arc<OwnedFd>, mtu: usize, medium: crate::Medium, stats: Arc<Stats>) -> FrameDevice {
        FrameDevice { fd, rx: VecDeque::new(), mtu, medium, stats, scratch: vec![0; mtu + crate::ETHERNET_HEADER] }
    }
}

/// Writes one frame to the guest; false when the fd would not take it.
pub fn write_frame(fd: &OwnedFd, frame: &[u8], stats: &Stats) -> bool {
    // SAFETY: writing `frame.len()` bytes from a live slice to an fd we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    if n < 0 {
        stats.add(&stats.tx_dropped, 1);
        return false;
    }
    stats.add(&stats.rx_packets, 1);
    stats.add(&stats.rx_bytes, frame.len() as u64);
    true
}

pub struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

pub struct TxToken<'a> {
    fd: &'a OwnedFd,
    scratch: &'a mut Vec<u8>,
    stats: &'a Stats,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.scratch.len() < len {
            self.scratch.resize(len, 0);
        }
        let r = f(&mut self.scratch[..len]);
        write_frame(self.fd, &self.scratch[..len], self.stats);
        r
    }
}

impl phy::Device for FrameDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxToken(frame), TxToken { fd: &self.fd, scratch: &mut self.scratch, stats: &self.stats }))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { fd: &self.fd, scratch: &mut self.scratch, stats: &self.stats })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        match self.medium {
            crate::Medium::Ip => {
                caps.medium = Medium::Ip;
                caps.max_transmission_unit = self.mtu;
            }
            crate::Medium::Ethernet => {
                caps.medium = Medium::Ethernet;
                caps.max_transmission_unit = self.mtu + crate::ETHERNET_HEADER;
            }
        }
        // The guest's kernel computed these; verifying them again protects nobody but the
        // guest itself. What we send is always summed.
        let mut sums = ChecksumCapabilities::default();
        sums.ipv4 = Checksum::Tx;
        sums.tcp = Checksum::Tx;
        sums.udp = Checksum::Tx;
        sums.icmpv4 = Checksum::Tx;
        sums.icmpv6 = Checksum::Tx;
        caps.checksum = sums;
        caps
    }
}
