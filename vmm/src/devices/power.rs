//! The hardware-reduced ACPI power port: the FADT names this one I/O port as the sleep
//! control, sleep status and reset register. Writing S5 with SLP_EN powers the VM off; writing
//! the reset value reboots it, which we report rather than perform (a sandbox does not reboot).

use crate::acpi::{RESET_VALUE, S5_SLEEP_TYPE, SLEEP_ENABLE};
use crate::bus::BusDevice;
use crate::ExitReason;

pub struct PowerPort;

impl BusDevice for PowerPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<ExitReason> {
        match data.first().copied()? {
            RESET_VALUE => Some(ExitReason::Reboot),
            v if v & SLEEP_ENABLE != 0 && (v >> 2) & 0x7 == S5_SLEEP_TYPE => Some(ExitReason::PowerOff),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_reset_reboots_other_values_do_nothing() {
        let mut p = PowerPort;
        assert!(matches!(p.write(0, &[(S5_SLEEP_TYPE << 2) | SLEEP_ENABLE]), Some(ExitReason::PowerOff)));
        assert!(matches!(p.write(0, &[RESET_VALUE]), Some(ExitReason::Reboot)));
        assert!(p.write(0, &[S5_SLEEP_TYPE << 2]).is_none());
        assert!(p.write(0, &[]).is_none());
    }
}
