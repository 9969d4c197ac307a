//! COM1 (16550 UART at 0x3f8): the console every line of output goes through.

use super::cpu::{inb, outb};
use crate::console::ConsoleSink;

const COM1: u16 = 0x3f8;

/// Programs COM1 for 115200 8N1, FIFOs on, interrupts off (we poll).
pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB
    outb(COM1, 0x01); // divisor 1 = 115200
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0xc7); // FIFO on, cleared, 14-byte threshold
    outb(COM1 + 4, 0x03); // DTR | RTS
}

fn put(b: u8) {
    // Bounded wait for the transmit holding register: a missing UART must not hang us.
    for _ in 0..100_000 {
        if inb(COM1 + 5) & 0x20 != 0 {
            break;
        }
    }
    outb(COM1, b);
}

/// The serial port as a console sink.
pub struct Serial;

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            put(b);
        }
        Ok(())
    }
}

impl ConsoleSink for Serial {
    fn read_input(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() && inb(COM1 + 5) & 1 != 0 {
            buf[n] = inb(COM1);
            n += 1;
        }
        n
    }
}

/// `[hv] ` + formatted line, straight to the port (for boot and fatal paths).
#[macro_export]
macro_rules! hvlog {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::arch::x86_64::serial::Serial, "[hv] ");
        let _ = writeln!($crate::arch::x86_64::serial::Serial, $($arg)*);
    }};
}
