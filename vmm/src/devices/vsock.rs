//! virtio-vsock with exactly one service: the guest agent connects from the guest to the host
//! (CID 2) on `AGENT_PORT`, and the connection is bridged to a Unix socket whose other end the
//! shim holds. Anything else (another port, a second connection, datagrams, a wrong CID) is
//! answered with RST, so the guest can reach nothing on the host through this device.
//!
//! Credit flow (virtio spec 5.10.6.3): we never send the guest more than it has buffer for,
//! and a guest that sends us more than our advertised buffer is reset, so the bytes we hold for
//! a slow host reader are bounded by `BUF_ALLOC`.

use super::virtio::{Activation, Poller, VirtioDevice, TOKEN_STOP, VIRTIO_F_VERSION_1};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

const TYPE_VSOCK: u32 = 19;
pub const HOST_CID: u64 = 2;
pub const AGENT_PORT: u32 = 1024;
const HDR_LEN: usize = 44;
const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_BOTH: u32 = 3;
/// Our receive buffer as advertised to the guest.
const BUF_ALLOC: u32 = 256 << 10;
/// Largest payload we put in one packet.
const MAX_PKT: usize = 64 << 10;
const QUEUE_SIZE: u16 = 256;
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;

pub struct Vsock {
    guest_cid: u64,
    /// The host end of the agent connection, until the guest connects.
    host_end: Option<UnixStream>,
    /// Told once when the agent connects (boot-to-agent measurements).
    connected: Option<std::sync::mpsc::Sender<std::time::Instant>>,
    /// Called once when the guest closes the agent connection and everything it sent has
    /// reached the host: the agent's way of ending the VM (it cannot call reboot(2) itself).
    on_agent_closed: Option<Box<dyn FnOnce() + Send>>,
}

impl Vsock {
    pub fn new(guest_cid: u64, host_end: UnixStream, connected: std::sync::mpsc::Sender<std::time::Instant>, on_agent_closed: Box<dyn FnOnce() + Send>) -> Vsock {
        Vsock { guest_cid, host_end: Some(host_end), connected: Some(connected), on_agent_closed: Some(on_agent_closed) }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn queue_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::block::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data)
    }
    fn activate(&mut self, ctx: Activation) -> std::io::Result<JoinHandle<()>> {
        // A reset driver re-activates; the agent's host end is handed over only once.
        let host_end = self.host_end.take();
        let connected = self.connected.take();
        let on_agent_closed = self.on_agent_closed.take();
        let guest_cid = self.guest_cid;
        std::thread::Builder::new().name("virtio-vsock".into()).spawn(move || {
            let mut m = Muxer { guest_cid, host_end, connected, on_agent_closed, conn: None, control: VecDeque::new(), rx_starved: false };
            m.serve(ctx)
        })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Header {
    fn parse(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap_or([0; 2]));
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    fn bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

struct Conn {
    guest_port: u32,
    stream: UnixStream,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes we sent to the guest.
    tx_cnt: u32,
    /// Payload bytes from the guest that reached the host stream.
    fwd_cnt: u32,
    fwd_cnt_told: u32,
    /// Guest bytes the host reader has not taken yet (≤ BUF_ALLOC).
    pending: VecDeque<u8>,
    host_eof: bool,
    guest_done_sending: bool,
}

impl Conn {
    fn peer_credit(&self) -> usize {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight) as usize
    }
}

pub(crate) struct Muxer {
    guest_cid: u64,
    host_end: Option<UnixStream>,
    connected: Option<std::sync::mpsc::Sender<std::time::Instant>>,
    on_agent_closed: Option<Box<dyn FnOnce() + Send>>,
    conn: Option<Conn>,
    /// Header-only packets waiting for an rx buffer (responses, credit updates, resets).
    control: VecDeque<Header>,
    /// The host has data but the guest gave us no rx buffer: wait for the rx queue.
    rx_starved: bool,
}

const TOKEN_RX: u64 = RXQ as u64;
const TOKEN_TX: u64 = TXQ as u64;
const TOKEN_EV: u64 = EVQ as u64;
const TOKEN_STREAM: u64 = 100;

impl Muxer {
    /// A muxer whose agent end is `host_end`, outside any VM (the fuzz targets).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn detached(guest_cid: u64, host_end: UnixStream) -> Muxer {
        Muxer { guest_cid, host_end: Some(host_end), connected: None, on_agent_closed: None, conn: None, control: VecDeque::new(), rx_starved: false }
    }

    /// Moves what the guest sent on to the host stream (the serve loop's step after tx).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn flush(&mut self) {
        self.flush_to_host();
    }

    fn serve(&mut self, mut ctx: Activation) {
        crate::seccomp::apply_device_filter();
        let Ok(poller) = Poller::for_activation(&ctx) else { return };
        let mut watched: Option<(i32, EventSet)> = None;
        loop {
            let mem: &GuestMemoryMmap = &ctx.mem;
            let (rxq, rest) = ctx.queues.split_at_mut(1);
            let mut used = self.process_tx(mem, &mut rest[0]);
            self.flush_to_host();
            used |= self.process_rx(mem, &mut rxq[0]);
            if used {
                ctx.interrupt.signal_used();
            }
            // Watch the host stream for what we can act on now.
            let want = self.conn.as_ref().map(|c| {
                let mut ev = EventSet::empty();
                if !c.host_eof && !self.rx_starved && c.peer_credit() > 0 {
                    ev |= EventSet::IN;
                }
                if !c.pending.is_empty() {
                    ev |= EventSet::OUT;
                }
                (c.stream.as_raw_fd(), ev)
            });
            if want != watched {
                if let Some((fd, _)) = watched {
                    poller.remove(fd);
                }
                if let Some((fd, ev)) = want {
                    if !ev.is_empty() {
                        let _ = poller.add(fd, TOKEN_STREAM, ev);
                    }
                }
                watched = want.filter(|(_, ev)| !ev.is_empty());
            }
            let Ok(tokens) = poller.wait(-1) else { return };
            for t in tokens {
                match t {
                    TOKEN_STOP => return,
                    TOKEN_RX => {
                        let _ = ctx.queue_events[RXQ].read();
                        self.rx_starved = false;
                    }
                    TOKEN_TX => {
                        let _ = ctx.queue_events[TXQ].read();
                    }
                    TOKEN_EV => {
                        let _ = ctx.queue_events[EVQ].read();
                    }
                    _ => {}
                }
            }
        }
    }

    fn reply(&self, to: &Header, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            kind: TYPE_STREAM,
            op,
            buf_alloc: BUF_ALLOC,
            ..Default::default()
        }
    }

    /// A header-only packet from the host's agent port to the guest's end of the connection.
    fn agent_header(guest_cid: u64, guest_port: u32, op: u16) -> Header {
        Header { src_cid: HOST_CID, dst_cid: guest_cid, src_port: AGENT_PORT, dst_port: guest_port, kind: TYPE_STREAM, op, ..Default::default() }
    }

    fn reset_conn(&mut self) {
        if let Some(c) = self.conn.take() {
            let h = Self::agent_header(self.guest_cid, c.guest_port, OP_RST);
            self.control.push_back(h);
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Packets from the guest. Returns whether any buffer was used.
    pub(crate) fn process_tx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if let Ok(mut reader) = Reader::new(mem, chain) {
                let mut raw = [0u8; HDR_LEN];
                if reader.read_exact(&mut raw).is_ok() {
                    let hdr = Header::parse(&raw);
                    self.packet_from_guest(&hdr, &mut reader);
                }
            }
            if queue.add_used(mem, head, 0).is_err() {
                return used;
            }
            used = true;
        }
        used
    }

    fn packet_from_guest(&mut self, hdr: &Header, payload: &mut Reader<'_>) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID || hdr.kind != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.control.push_back(self.reply(hdr, OP_RST));
            }
            return;
        }
        let ours = self.conn.as_ref().is_some_and(|c| c.guest_port == hdr.src_port) && hdr.dst_port == AGENT_PORT;
        if let (true, Some(c)) = (ours, self.conn.as_mut()) {
            c.peer_buf_alloc = hdr.buf_alloc;
            c.peer_fwd_cnt = hdr.fwd_cnt;
        }
        match hdr.op {
            OP_REQUEST => {
                if hdr.dst_port == AGENT_PORT && self.conn.is_none() {
                    if let Some(stream) = self.host_end.take() {
                        let _ = stream.set_nonblocking(true);
                        self.conn = Some(Conn {
                            guest_port: hdr.src_port,
                            stream,
                            peer_buf_alloc: hdr.buf_alloc,
                            peer_fwd_cnt: hdr.fwd_cnt,
                            tx_cnt: 0,
                            fwd_cnt: 0,
                            fwd_cnt_told: 0,
                            pending: VecDeque::new(),
                            host_eof: false,
                            guest_done_sending: false,
                        });
                        self.control.push_back(self.reply(hdr, OP_RESPONSE));
                        if let Some(tx) = self.connected.take() {
                            let _ = tx.send(std::time::Instant::now());
                        }
                        return;
                    }
                }
                self.control.push_back(self.reply(hdr, OP_RST));
            }
            OP_RW if ours => {
                let len = (hdr.len as usize).min(payload.available_bytes());
                let Some(c) = self.conn.as_mut() else { return };
                if c.pending.len() + len > BUF_ALLOC as usize || c.guest_done_sending {
                    tracing::warn!("vsock: the guest ignored our credit; resetting the connection");
                    self.reset_conn();
                    return;
                }
                let mut buf = vec![0u8; len];
                if payload.read_exact(&mut buf).is_ok() {
                    c.pending.extend(buf);
                }
            }
            OP_CREDIT_UPDATE if ours => {}
            OP_CREDIT_REQUEST if ours => {
                let h = self.reply(hdr, OP_CREDIT_UPDATE);
                self.control.push_back(h);
            }
            OP_SHUTDOWN if ours => {
                if let Some(c) = self.conn.as_mut() {
                    c.guest_done_sending = true;
                    if hdr.flags & SHUTDOWN_BOTH == SHUTDOWN_BOTH {
                        self.flush_to_host();
                        self.agent_closed();
                    }
                }
            }
            OP_RST if ours => self.agent_closed(),
            OP_RST => {}
            _ => self.control.push_back(self.reply(hdr, OP_RST)),
        }
    }

    /// The guest closed the agent connection: deliver what is left (bounded wait: the host end
    /// is a local socket), close it, and tell the VM.
    fn agent_closed(&mut self) {
        if let Some(c) = self.conn.take() {
            let _ = c.stream.set_nonblocking(false);
            let _ = c.stream.set_write_timeout(Some(std::time::Duration::from_secs(2)));
            let (a, b) = c.pending.as_slices();
            let _ = (&c.stream).write_all(a).and_then(|_| (&c.stream).write_all(b));
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            let h = Self::agent_header(self.guest_cid, c.guest_port, OP_RST);
            self.control.push_back(h);
        }
        if let Some(f) = self.on_agent_closed.take() {
            f();
        }
    }

    /// Moves what the guest sent into the host stream, as far as the host reader takes it.
    fn flush_to_host(&mut self) {
        let Some(c) = self.conn.as_mut() else { return };
        while !c.pending.is_empty() {
            let (front, _) = c.pending.as_slices();
            match (&c.stream).write(front) {
                Ok(0) => break,
                Ok(n) => {
                    c.pending.drain(..n);
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => break,
                Err(_) => {
                    // The host end is gone: the shim went away.
                    self.reset_conn();
                    return;
                }
            }
        }
        if c.pending.is_empty() && c.guest_done_sending {
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
        }
        if c.fwd_cnt.wrapping_sub(c.fwd_cnt_told) >= BUF_ALLOC / 4 {
            let h = Self::agent_header(self.guest_cid, c.guest_port, OP_CREDIT_UPDATE);
            self.control.push_back(h);
        }
    }

    /// Packets to the guest: control first, then host data within the guest's credit.
    pub(crate) fn process_rx(&mut self, mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
        let mut used = false;
        loop {
            let has_data = self.conn.as_ref().is_some_and(|c| !c.host_eof && c.peer_credit() > 0);
            if self.control.is_empty() && !has_data {
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let Ok(mut writer) = Writer::new(mem, chain) else {
                if queue.add_used(mem, head, 0).is_err() {
                    break;
                }
                used = true;
                continue;
            };
            if writer.available_bytes() < HDR_LEN {
                let _ = queue.add_used(mem, head, 0);
                used = true;
                continue;
            }
            let written = if let Some(mut h) = self.control.pop_front() {
                self.stamp(&mut h);
                writer.write_all(&h.bytes()).map(|_| HDR_LEN).unwrap_or(0)
            } else {
                match self.data_packet(&mut writer) {
                    Some(n) => n,
                    None => {
                        // Nothing to read after all: give the buffer back.
                        queue.go_to_previous_position();
                        break;
                    }
                }
            };
            if queue.add_used(mem, head, written as u32).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    /// Fills in our current credit on a packet about the agent connection.
    fn stamp(&mut self, h: &mut Header) {
        h.buf_alloc = BUF_ALLOC;
        if let Some(c) = self.conn.as_mut() {
            if h.dst_port == c.guest_port {
                h.fwd_cnt = c.fwd_cnt;
                c.fwd_cnt_told = c.fwd_cnt;
            }
        }
    }

    /// Reads host data into one rx buffer. None when the host has nothing right now.
    fn data_packet(&mut self, writer: &mut Writer<'_>) -> Option<usize> {
        let guest_cid = self.guest_cid;
        let c = self.conn.as_mut()?;
        let room = (writer.available_bytes() - HDR_LEN).min(c.peer_credit()).min(MAX_PKT);
        let mut buf = vec![0u8; room];
        let (op, n, flags) = match (&c.stream).read(&mut buf) {
            Ok(0) => {
                c.host_eof = true;
                (OP_SHUTDOWN, 0, SHUTDOWN_BOTH)
            }
            Ok(n) => (OP_RW, n, 0),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => return None,
            Err(_) => {
                c.host_eof = true;
                (OP_SHUTDOWN, 0, SHUTDOWN_BOTH)
            }
        };
        let h = Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: AGENT_PORT,
            dst_port: c.guest_port,
            len: n as u32,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: c.fwd_cnt,
        };
        c.fwd_cnt_told = c.fwd_cnt;
        c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
        writer.write_all(&h.bytes()).ok()?;
        writer.write_all(&buf[..n]).ok()?;
        Some(HDR_LEN + n)
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
    const GUEST: u64 = 3;

    fn muxer() -> (Muxer, UnixStream) {
        let (host_end, shim_end) = UnixStream::pair().unwrap();
        (Muxer { guest_cid: GUEST, host_end: Some(host_end), connected: None, on_agent_closed: None, conn: None, control: VecDeque::new(), rx_starved: false }, shim_end)
    }

    fn guest_packet(mem: &GuestMemoryMmap, m: &mut Muxer, h: Header, payload: &[u8]) {
        let vq = MockSplitQueue::new(mem, 16);
        mem.write_slice(&h.bytes(), GuestAddress(0x8000)).unwrap();
        mem.write_slice(payload, GuestAddress(0x9000)).unwrap();
        let mut descs = vec![RawDescriptor::from(SplitDescriptor::new(0x8000, HDR_LEN as u32, if payload.is_empty() { 0 } else { F_NEXT }, 1))];
        if !payload.is_empty() {
            descs.push(RawDescriptor::from(SplitDescriptor::new(0x9000, payload.len() as u32, 0, 0)));
        }
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(m.process_tx(mem, &mut q));
    }

    /// Offers one rx buffer and returns what the device put in it.
    fn guest_receive(mem: &GuestMemoryMmap, m: &mut Muxer) -> Option<(Header, Vec<u8>)> {
        let vq = MockSplitQueue::new(mem, 16);
        vq.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(0x20000, 4096, F_WRITE, 0))]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        m.process_rx(mem, &mut q);
        let used = vq.used().idx().load();
        if used == 0 {
            return None;
        }
        let mut raw = [0u8; HDR_LEN];
        mem.read_slice(&mut raw, GuestAddress(0x20000)).unwrap();
        let h = Header::parse(&raw);
        let mut data = vec![0u8; h.len as usize];
        mem.read_slice(&mut data, GuestAddress(0x20000 + HDR_LEN as u64)).unwrap();
        Some((h, data))
    }

    fn from_guest(op: u16, port: u32, len: u32) -> Header {
        Header { src_cid: GUEST, dst_cid: HOST_CID, src_port: 5000, dst_port: port, len, kind: TYPE_STREAM, op, buf_alloc: 65536, fwd_cnt: 0, flags: 0 }
    }

    #[test]
    fn agent_connection_is_bridged_both_ways() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (mut m, mut shim) = muxer();
        guest_packet(&mem, &mut m, from_guest(OP_REQUEST, AGENT_PORT, 0), &[]);
        let (h, _) = guest_receive(&mem, &mut m).unwrap();
        assert_eq!((h.op, h.dst_port, h.src_port), (OP_RESPONSE, 5000, AGENT_PORT));

        guest_packet(&mem, &mut m, from_guest(OP_RW, AGENT_PORT, 5), b"hello");
        m.flush_to_host();
        let mut got = [0u8; 5];
        shim.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");

        shim.write_all(b"world").unwrap();
        let (h, data) = guest_receive(&mem, &mut m).unwrap();
        assert_eq!((h.op, data.as_slice()), (OP_RW, &b"world"[..]));

        // The shim closing its end becomes a shutdown for the guest.
        drop(shim);
        let (h, _) = guest_receive(&mem, &mut m).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    }

    #[test]
    fn other_ports_second_connections_and_wrong_cids_are_reset() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (mut m, _shim) = muxer();
        guest_packet(&mem, &mut m, from_guest(OP_REQUEST, 22, 0), &[]);
        assert_eq!(guest_receive(&mem, &mut m).unwrap().0.op, OP_RST);
        guest_packet(&mem, &mut m, from_guest(OP_REQUEST, AGENT_PORT, 0), &[]);
        assert_eq!(guest_receive(&mem, &mut m).unwrap().0.op, OP_RESPONSE);
        let mut second = from_guest(OP_REQUEST, AGENT_PORT, 0);
        second.src_port = 6000;
        guest_packet(&mem, &mut m, second, &[]);
        assert_eq!(guest_receive(&mem, &mut m).unwrap().0.op, OP_RST);
        let mut spoofed = from_guest(OP_RW, AGENT_PORT, 1);
        spoofed.src_cid = 77;
        guest_packet(&mem, &mut m, spoofed, b"x");
        assert_eq!(guest_receive(&mem, &mut m).unwrap().0.op, OP_RST);
    }

    #[test]
    fn a_guest_that_ignores_credit_is_reset_and_memory_stays_bounded() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (mut m, _shim_not_reading) = muxer();
        guest_packet(&mem, &mut m, from_guest(OP_REQUEST, AGENT_PORT, 0), &[]);
        let _ = guest_receive(&mem, &mut m);
        let chunk = vec![7u8; 60 << 10];
        for _ in 0..8 {
            guest_packet(&mem, &mut m, from_guest(OP_RW, AGENT_PORT, chunk.len() as u32), &chunk);
            m.flush_to_host();
            if m.conn.is_none() {
                break;
            }
            assert!(m.conn.as_ref().unwrap().pending.len() <= BUF_ALLOC as usize);
        }
        assert!(m.conn.is_none(), "the connection must be reset once the guest overruns its credit");
    }

    #[test]
    fn we_never_send_beyond_the_guest_credit() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (mut m, mut shim) = muxer();
        let mut req = from_guest(OP_REQUEST, AGENT_PORT, 0);
        req.buf_alloc = 10;
        guest_packet(&mem, &mut m, req, &[]);
        let _ = guest_receive(&mem, &mut m);
        shim.write_all(&[1u8; 100]).unwrap();
        let (h, data) = guest_receive(&mem, &mut m).unwrap();
        assert_eq!((h.op, data.len()), (OP_RW, 10));
        assert!(guest_receive(&mem, &mut m).is_none(), "no credit left");
        let mut update = from_guest(OP_CREDIT_UPDATE, AGENT_PORT, 0);
        update.buf_alloc = 10;
        update.fwd_cnt = 10;
        guest_packet(&mem, &mut m, update, &[]);
        assert_eq!(guest_receive(&mem, &mut m).unwrap().1.len(), 10);
    }

    #[test]
    fn truncated_and_garbage_packets_never_panic() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (mut m, _shim) = muxer();
        let vq = MockSplitQueue::new(&mem, 16);
        vq.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(0x8000, 10, 0, 0))]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        m.process_tx(&mem, &mut q);
        let mut lie = from_guest(OP_RW, AGENT_PORT, u32::MAX);
        guest_packet(&mem, &mut m, from_guest(OP_REQUEST, AGENT_PORT, 0), &[]);
        lie.len = u32::MAX;
        guest_packet(&mem, &mut m, lie, b"abc");
        let vq = MockSplitQueue::new(&mem, 16);
        vq.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(0xfff_0000, 4096, F_WRITE, 0))]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        m.process_rx(&mem, &mut q);
    }
}
