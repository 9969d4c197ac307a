//! Time hardware: the TSC (calibrated against the PIT), the local APIC timer (one-shot,
//! the hypervisor's only interrupt source: preemption and guest timers), and the CMOS
//! real-time clock (wall-clock time at boot).
//!
//! The APIC registers are memory-mapped at 0xfee00000, reached through the direct map;
//! boot marks that 2 MiB page uncacheable before the first access.

use super::cpu::{inb, outb};
use super::DIRECTMAP_BASE;
use core::sync::atomic::{AtomicU64, Ordering};

/// Vector of the APIC timer interrupt.
pub const TIMER_VECTOR: u8 = 0x20;
/// Vector the APIC uses for spurious interrupts.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const APIC_PHYS: u64 = 0xfee0_0000;
const REG_EOI: u64 = 0xb0;
const REG_SVR: u64 = 0xf0;
const REG_LVT_TIMER: u64 = 0x320;
const REG_INITIAL: u64 = 0x380;
const REG_CURRENT: u64 = 0x390;
const REG_DIVIDE: u64 = 0x3e0;

/// APIC timer ticks per second (divide-by-16), measured at boot.
static APIC_HZ: AtomicU64 = AtomicU64::new(0);

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads a counter; no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn apic_write(reg: u64, v: u32) {
    // SAFETY: an APIC register inside the (uncacheable) direct-mapped APIC page.
    unsafe { core::ptr::write_volatile((DIRECTMAP_BASE + APIC_PHYS + reg) as *mut u32, v) }
}

fn apic_read(reg: u64) -> u32 {
    // SAFETY: as for `apic_write`.
    unsafe { core::ptr::read_volatile((DIRECTMAP_BASE + APIC_PHYS + reg) as *const u32) }
}

/// Busy-waits `ms` milliseconds on PIT channel 2 (mode 0, gate through port 0x61).
fn pit_wait_ms(ms: u32) {
    let count = (1_193_182u32 * ms / 1000).min(0xffff) as u16;
    let gate = inb(0x61);
    outb(0x61, (gate & !0x02) | 0x01); // speaker off, gate on
    outb(0x43, 0b1011_0000); // channel 2, lo/hi byte, mode 0
    outb(0x42, count as u8);
    outb(0x42, (count >> 8) as u8);
    // Restart the count by toggling the gate.
    let g = inb(0x61);
    outb(0x61, g & !0x01);
    outb(0x61, g | 0x01);
    for _ in 0..100_000_000u64 {
        if inb(0x61) & 0x20 != 0 {
            break;
        }
    }
}

/// Measures the TSC frequency against the PIT (10 ms).
pub fn calibrate_tsc() -> u64 {
    let t0 = rdtsc();
    pit_wait_ms(10);
    (rdtsc() - t0) * 100
}

/// Enables the local APIC, masks its timer, and measures the timer's rate.
pub fn init_apic(tsc_hz: u64) {
    apic_write(REG_SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    apic_write(REG_DIVIDE, 0b0011); // divide by 16
    apic_write(REG_LVT_TIMER, 1 << 16); // masked
    apic_write(REG_INITIAL, u32::MAX);
    let t0 = rdtsc();
    let wait = tsc_hz / 100;
    while rdtsc() - t0 < wait {}
    let elapsed = u64::from(u32::MAX - apic_read(REG_CURRENT));
    apic_write(REG_INITIAL, 0);
    APIC_HZ.store((elapsed * 100).max(1000), Ordering::Relaxed);
    apic_write(REG_LVT_TIMER, u32::from(TIMER_VECTOR)); // one-shot, unmasked
}

/// APIC timer rate, for logs.
pub fn apic_hz() -> u64 {
    APIC_HZ.load(Ordering::Relaxed)
}

/// Programs a one-shot interrupt `ns` nanoseconds from now (None: stop the timer).
pub fn arm(ns: Option<u64>) {
    let Some(ns) = ns else {
        apic_write(REG_INITIAL, 0);
        return;
    };
    let hz = u128::from(APIC_HZ.load(Ordering::Relaxed));
    let ticks = (u128::from(ns) * hz / 1_000_000_000).clamp(1, u128::from(u32::MAX)) as u32;
    apic_write(REG_INITIAL, ticks);
}

/// Acknowledges the current interrupt.
pub fn eoi() {
    apic_write(REG_EOI, 0);
}

fn cmos(reg: u8) -> u8 {
    outb(0x70, reg);
    inb(0x71)
}

/// Wall-clock seconds since 1970 from the CMOS RTC.
pub fn read_rtc() -> u64 {
    for _ in 0..1_000_000 {
        if cmos(0x0a) & 0x80 == 0 {
            break; // no update in progress
        }
    }
    let status_b = cmos(0x0b);
    let bcd = |v: u8| {
        if status_b & 0x04 == 0 {
            (v & 0x0f) + (v >> 4) * 10
        } else {
            v
        }
    };
    let (s, m, h) = (bcd(cmos(0x00)), bcd(cmos(0x02)), bcd(cmos(0x04) & 0x7f));
    let (d, mo, y) = (bcd(cmos(0x07)), bcd(cmos(0x08)), bcd(cmos(0x09)));
    crate::time::unix_time(
        2000 + u64::from(y),
        u64::from(mo),
        u64::from(d),
        u64::from(h),
        u64::from(m),
        u64::from(s),
    )
}
