//! Routes vCPU port and memory exits to devices by address range. Reads of nothing return
//! all ones and writes to nothing are dropped, as on real hardware; the guest can probe freely.

use crate::ExitReason;
use std::sync::{Arc, Mutex};

/// A device on the port or memory bus. `offset` is relative to its base.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Returns an exit reason when the write ends the VM (power-off, reset).
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason>;
}

type Entry = (u64, u64, Arc<Mutex<dyn BusDevice>>);

#[derive(Default)]
pub struct Bus {
    pio: Vec<Entry>,
    mmio: Vec<Entry>,
}

fn find(entries: &[Entry], addr: u64) -> Option<(u64, &Arc<Mutex<dyn BusDevice>>)> {
    entries.iter().find(|(base, len, _)| addr >= *base && addr - base < *len).map(|(base, _, d)| (addr - base, d))
}

impl Bus {
    pub fn add_pio(&mut self, base: u16, len: u16, dev: Arc<Mutex<dyn BusDevice>>) {
        self.pio.push((u64::from(base), u64::from(len), dev));
    }

    pub fn add_mmio(&mut self, base: u64, len: u64, dev: Arc<Mutex<dyn BusDevice>>) {
        self.mmio.push((base, len, dev));
    }

    fn read(entries: &[Entry], addr: u64, data: &mut [u8]) {
        match find(entries, addr) {
            Some((offset, dev)) => dev.lock().unwrap_or_else(|p| p.into_inner()).read(offset, data),
            None => data.fill(0xff),
        }
    }

    fn write(entries: &[Entry], addr: u64, data: &[u8]) -> Option<ExitReason> {
        let (offset, dev) = find(entries, addr)?;
        dev.lock().unwrap_or_else(|p| p.into_inner()).write(offset, data)
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        Self::read(&self.pio, u64::from(port), data)
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) -> Option<ExitReason> {
        Self::write(&self.pio, u64::from(port), data)
    }

    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        Self::read(&self.mmio, addr, data)
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> Option<ExitReason> {
        Self::write(&self.mmio, addr, data)
    }
}
