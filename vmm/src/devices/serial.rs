//! COM1: vm-superio's 8250 UART, its output appended to the sandbox's console log (bounded),
//! its interrupt an irqfd on IRQ 4. The console is also how a kernel panic is recognised: the
//! kernel prints "Kernel panic" before it resets.

use crate::bus::BusDevice;
use crate::ExitReason;
use std::io::Write;
use std::sync::{Arc, Mutex};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The console log: written up to `limit` bytes, then only scanned. Keeps the last lines so a
/// panic message can be reported.
pub struct ConsoleSink {
    file: Option<std::fs::File>,
    written: u64,
    limit: u64,
    line: Vec<u8>,
    pub panic: Arc<Mutex<Option<String>>>,
}

impl ConsoleSink {
    pub fn new(file: Option<std::fs::File>, limit: u64) -> ConsoleSink {
        ConsoleSink { file, written: 0, limit, line: Vec::new(), panic: Arc::new(Mutex::new(None)) }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = &mut self.file {
            if self.written < self.limit {
                let n = buf.len().min((self.limit - self.written) as usize);
                let _ = f.write_all(&buf[..n]);
                self.written += n as u64;
            }
        }
        for &b in buf {
            if b == b'\n' || self.line.len() >= 512 {
                let text = String::from_utf8_lossy(&self.line).trim().to_string();
                if text.contains("Kernel panic") {
                    let mut p = self.panic.lock().unwrap_or_else(|p| p.into_inner());
                    if p.is_none() {
                        *p = Some(text);
                    }
                }
                self.line.clear();
            } else {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct SerialPort(pub Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleSink>);

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        if let Some(b) = data.first() {
            let _ = self.0.write(offset as u8, *b);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_is_bounded_and_panics_are_noticed() {
        let dir = std::env::temp_dir().join(format!("vmm-console-{}", std::process::id()));
        let file = std::fs::File::create(&dir).unwrap();
        let mut sink = ConsoleSink::new(Some(file), 16);
        sink.write_all(b"hello world, this is long\n").unwrap();
        sink.write_all(b"[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n").unwrap();
        assert_eq!(std::fs::read(&dir).unwrap(), b"hello world, thi");
        assert!(sink.panic.lock().unwrap().as_deref().unwrap().contains("Attempted to kill init"));
        let _ = std::fs::remove_file(&dir);
    }
}
