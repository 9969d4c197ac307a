//! COM1 (16550 at port 0x3f8), polled: the native console. Under the hypervisor the
//! same port is its virtual UART, whose transmit register feeds the domain's console.

use super::cpu::{inb, outb};

const COM1: u16 = 0x3f8;

/// 115200 8N1, FIFOs on, interrupts off.
pub fn init() {
    for (off, v) in [
        (1, 0x00),
        (3, 0x80),
        (0, 0x01),
        (1, 0x00),
        (3, 0x03),
        (2, 0xc7),
        (4, 0x03),
    ] {
        outb(COM1 + off, v);
    }
}

/// Writes bytes as they are, waiting for the transmitter before each.
pub fn write(bytes: &[u8]) {
    for &b in bytes {
        // Line status bit 5: transmit holding register empty. Bounded wait: a missing
        // UART must not hang the kernel.
        for _ in 0..100_000 {
            if inb(COM1 + 5) & 0x20 != 0 {
                break;
            }
        }
        outb(COM1, b);
    }
}
