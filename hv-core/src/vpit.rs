//! A virtual 8254 programmable interval timer (ports `0x40..=0x43`, plus the inert
//! system-control port `0x61`) for unprivileged domains running a native kernel. The
//! real PIT belongs to the hypervisor; a domain programs this model through emulated
//! `in`/`out` (`hv/emul.rs`), channel 0's output drives IRQ 0 of the domain's virtual
//! PIC ([`crate::vpic`]), and its next edge is a per-vCPU timer deadline the
//! hypervisor's timer machinery (`hv/vcpu.rs`) waits for.
//!
//! Time is the hypervisor's system time (ns since boot) passed in by the caller; the
//! counter runs at [`PIT_HZ`] (1.193182 MHz) from the moment the count is written, so a
//! read of the current count is computed, never stored. Pure: any port traffic gives a
//! defined state and no panic.
//!
//! # Channel 0
//!
//! | access | effect |
//! |---|---|
//! | `0x43` control word, channel 0, access mode 1/2/3 (lobyte / hibyte / lobyte then hibyte) | sets mode and access mode, stops the counter until a count is written (latches and flip-flops reset). Modes 6/7 are aliases of 2/3; BCD (bit 0) is recorded but counting is binary |
//! | `0x43` control word, channel 0, access mode 0 | counter latch command: the current count is frozen for the next read(s) (a second latch before the read is ignored, as on hardware) |
//! | `0x43` read-back command (`0b11xxxxxx`) selecting channel 0 | latches the count (bit 5 clear) and/or the status byte (bit 4 clear; read first) |
//! | `0x40` write | the count in the access mode; a complete count (reload 0 = 65536) starts counting now |
//! | `0x40` read | latched status, else latched count, else the live count, in the access mode |
//!
//! | mode | IRQ 0 edges | count read |
//! |---|---|---|
//! | 0 (interrupt on terminal count), 4 | once, `reload` ticks after the write | `reload - elapsed`, wrapping through 0 like the real counter |
//! | 2 (rate generator), 3 (square wave) | every `reload` ticks | mode 2: `reload - elapsed % reload`; mode 3: counts down by two twice per period |
//! | 1, 5 (gate-triggered) | never (channel 0's gate never rises) | `reload` |
//!
//! **Coalescing**: [`Vpit::expire`] raises *one* IRQ 0 however many periods passed since
//! the last one (the vCPU may not have run, or may have kept the previous one pending),
//! and the next deadline is the first period boundary after `now`. A guest that counts
//! ticks for its clock loses the missed ones; it should read a clock (TSC, or the PIT
//! count) instead, as tickless kernels do.
//!
//! Channels 1 and 2 and port `0x61` are inert: writes are ignored, reads give 0 (so
//! nothing that polls the speaker gate or channel 2's output will ever see it change).
//! A new count written while a periodic mode runs takes effect at once (the real chip
//! waits for the current period to end).

/// The PIT input clock.
pub const PIT_HZ: u64 = 1_193_182;

const NS_PER_S: u128 = 1_000_000_000;

/// PIT ticks in `ns` nanoseconds (rounded down).
pub fn ticks(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(PIT_HZ) / NS_PER_S) as u64
}

/// The nanoseconds until `t` ticks have passed (rounded up, so that `ticks(ns_of(t)) >= t`).
pub fn ns_of(t: u64) -> u64 {
    let ns = (u128::from(t) * NS_PER_S).div_ceil(u128::from(PIT_HZ));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// How the count is transferred through the data port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Lo,
    Hi,
    LoHi,
}

/// Channel 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Channel {
    mode: u8,
    bcd: bool,
    access: Access,
    /// Reload value, 1..=65536.
    reload: u32,
    /// System time at which the current count was loaded; `None` while stopped.
    start: Option<u64>,
    /// Next IRQ 0 edge (system time), if one is due.
    next_irq: Option<u64>,
    /// Low byte of a lobyte/hibyte count being written.
    write_lo: Option<u8>,
    /// The next read in lobyte/hibyte mode returns the high byte.
    read_hi: bool,
    latched_count: Option<u16>,
    latched_status: Option<u8>,
}

/// The timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vpit {
    ch0: Channel,
}

impl Default for Vpit {
    fn default() -> Self {
        Self::new()
    }
}

impl Vpit {
    /// Reset state: channel 0 stopped (mode 0, lobyte/hibyte, reload 65536), no IRQ.
    pub const fn new() -> Vpit {
        Vpit {
            ch0: Channel {
                mode: 0,
                bcd: false,
                access: Access::LoHi,
                reload: 65536,
                start: None,
                next_irq: None,
                write_lo: None,
                read_hi: false,
                latched_count: None,
                latched_status: None,
            },
        }
    }

    /// Whether `port` belongs to the timer (`0x40..=0x43` and `0x61`).
    pub const fn owns(port: u16) -> bool {
        matches!(port, 0x40..=0x43 | 0x61)
    }

    /// When channel 0's output next raises IRQ 0 (system time, ns).
    pub fn deadline(&self) -> Option<u64> {
        self.ch0.next_irq
    }

    /// If the deadline has passed at `now`, consumes it and returns true (raise IRQ 0
    /// once); a periodic mode re-arms for the first period boundary after `now`.
    pub fn expire(&mut self, now: u64) -> bool {
        let c = &mut self.ch0;
        let (Some(due), Some(start)) = (c.next_irq, c.start) else {
            return false;
        };
        if due > now {
            return false;
        }
        c.next_irq = if matches!(c.mode, 2 | 3) {
            let reload = u64::from(c.reload);
            let periods = ticks(now.saturating_sub(start)) / reload;
            Some(start.saturating_add(ns_of((periods + 1).saturating_mul(reload))))
        } else {
            None
        };
        true
    }

    /// The count the counter holds at `now`.
    fn count(&self, now: u64) -> u16 {
        let c = &self.ch0;
        let reload = u64::from(c.reload);
        let Some(start) = c.start else {
            return reload as u16;
        };
        let e = ticks(now.saturating_sub(start));
        let v = match c.mode {
            0 | 4 => reload.wrapping_sub(e),
            2 => reload - e % reload,
            3 => {
                let half = reload.div_ceil(2);
                reload - 2 * (e % half)
            }
            _ => reload,
        };
        v as u16
    }

    fn status(&self, now: u64) -> u8 {
        let c = &self.ch0;
        let out = match (c.mode, c.start) {
            (0 | 4, Some(s)) => ticks(now.saturating_sub(s)) >= u64::from(c.reload),
            (2 | 3, Some(_)) => true,
            _ => false,
        };
        let access = match c.access {
            Access::Lo => 1,
            Access::Hi => 2,
            Access::LoHi => 3,
        };
        (u8::from(out) << 7)
            | (u8::from(c.start.is_none()) << 6)
            | (access << 4)
            | (c.mode << 1)
            | u8::from(c.bcd)
    }

    /// A byte read from `port` at system time `now`.
    pub fn read(&mut self, port: u16, now: u64) -> u8 {
        if port != 0x40 {
            return 0; // channels 1/2, the control port (write-only) and 0x61: inert
        }
        if let Some(s) = self.ch0.latched_status.take() {
            return s;
        }
        let value = self.ch0.latched_count.unwrap_or_else(|| self.count(now));
        let c = &mut self.ch0;
        let (byte, done) = match c.access {
            Access::Lo => (value as u8, true),
            Access::Hi => ((value >> 8) as u8, true),
            Access::LoHi if !c.read_hi => {
                c.read_hi = true;
                (value as u8, false)
            }
            Access::LoHi => {
                c.read_hi = false;
                ((value >> 8) as u8, true)
            }
        };
        if done {
            c.latched_count = None;
        }
        byte
    }

    /// A byte write to `port` at system time `now`.
    pub fn write(&mut self, port: u16, v: u8, now: u64) {
        match port {
            0x40 => self.write_count(v, now),
            0x43 => self.write_control(v, now),
            _ => {} // channels 1/2 and 0x61: inert
        }
    }

    fn write_control(&mut self, v: u8, now: u64) {
        let channel = v >> 6;
        if channel == 3 {
            // Read-back: bit 1 selects channel 0; bit 5 clear latches the count, bit 4
            // clear the status.
            if v & 0x02 != 0 {
                if v & 0x20 == 0 && self.ch0.latched_count.is_none() {
                    self.ch0.latched_count = Some(self.count(now));
                }
                if v & 0x10 == 0 && self.ch0.latched_status.is_none() {
                    self.ch0.latched_status = Some(self.status(now));
                }
            }
            return;
        }
        if channel != 0 {
            return;
        }
        let access = match (v >> 4) & 3 {
            0 => {
                if self.ch0.latched_count.is_none() {
                    self.ch0.latched_count = Some(self.count(now));
                }
                return;
            }
            1 => Access::Lo,
            2 => Access::Hi,
            _ => Access::LoHi,
        };
        let mode = match (v >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        };
        self.ch0 = Channel {
            mode,
            bcd: v & 1 != 0,
            access,
            ..Vpit::new().ch0
        };
    }

    fn write_count(&mut self, v: u8, now: u64) {
        let c = &mut self.ch0;
        let value = match c.access {
            Access::Lo => u32::from(v),
            Access::Hi => u32::from(v) << 8,
            Access::LoHi => match c.write_lo.take() {
                None => {
                    c.write_lo = Some(v);
                    if matches!(c.mode, 0 | 4) {
                        // Writing the first byte stops a one-shot count.
                        c.start = None;
                        c.next_irq = None;
                    }
                    return;
                }
                Some(lo) => u32::from(lo) | u32::from(v) << 8,
            },
        };
        c.reload = if value == 0 { 65536 } else { value };
        c.start = Some(now);
        c.next_irq = match c.mode {
            0 | 2 | 3 | 4 => Some(now.saturating_add(ns_of(u64::from(c.reload)))),
            _ => None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn program(p: &mut Vpit, control: u8, count: u16, now: u64) {
        p.write(0x43, control, now);
        p.write(0x40, count as u8, now);
        p.write(0x40, (count >> 8) as u8, now);
    }

    fn read16(p: &mut Vpit, now: u64) -> u16 {
        let lo = p.read(0x40, now);
        let hi = p.read(0x40, now);
        u16::from_le_bytes([lo, hi])
    }

    #[test]
    fn conversions_round_trip() {
        assert_eq!(ticks(1_000_000_000), PIT_HZ);
        assert_eq!(ticks(ns_of(1193)), 1193);
        assert!(ticks(ns_of(1193) - 1) < 1193);
        assert_eq!(ns_of(1193), 999_848, "1193 ticks ~ 1 ms");
        assert_eq!(ns_of(u64::MAX), u64::MAX, "saturates, no overflow");
    }

    #[test]
    fn mode2_periodic_1khz_with_coalescing() {
        let mut p = Vpit::new();
        assert_eq!(p.deadline(), None);
        program(&mut p, 0x34, 1193, 1_000); // ch0, lo/hi, mode 2
        let period = ns_of(1193);
        assert_eq!(p.deadline(), Some(1_000 + period));
        assert!(!p.expire(1_000 + period - 1));
        assert!(p.expire(1_000 + period));
        assert_eq!(p.deadline(), Some(1_000 + ns_of(2 * 1193)));
        // The vCPU did not run for 10 periods: one IRQ, next deadline after now.
        let late = 1_000 + ns_of(12 * 1193) + 5;
        assert!(p.expire(late));
        assert_eq!(p.deadline(), Some(1_000 + ns_of(13 * 1193)));
        assert!(!p.expire(late), "coalesced into one");
    }

    #[test]
    fn mode0_one_shot_and_reload_zero_is_65536() {
        let mut p = Vpit::new();
        program(&mut p, 0x30, 0, 0); // mode 0, count 0 = 65536
        assert_eq!(p.deadline(), Some(ns_of(65536)));
        assert!(p.expire(ns_of(65536)));
        assert_eq!(p.deadline(), None, "one-shot");
        assert!(!p.expire(u64::MAX));
        // The count keeps counting down through zero.
        program(&mut p, 0x30, 100, 0);
        assert_eq!(read16(&mut p, ns_of(40)), 60);
        assert_eq!(read16(&mut p, ns_of(101)), 0xffff);
    }

    #[test]
    fn counter_latch_and_read_back() {
        let mut p = Vpit::new();
        program(&mut p, 0x34, 1000, 0);
        // Live count after 250 ticks.
        assert_eq!(read16(&mut p, ns_of(250)), 750);
        // Latch at 300 ticks; reading later still gives the latched value.
        p.write(0x43, 0x00, ns_of(300));
        p.write(0x43, 0x00, ns_of(400)); // a second latch before reading is ignored
        assert_eq!(read16(&mut p, ns_of(900)), 700);
        assert_eq!(read16(&mut p, ns_of(900)), 100, "latch released");
        // Mode 2 wraps at the reload value.
        assert_eq!(read16(&mut p, ns_of(1250)), 750);
        // Read-back: status then count.
        p.write(0x43, 0b1100_0010, ns_of(1500));
        assert_eq!(p.read(0x40, 0), 0b1011_0100, "out high, lo/hi, mode 2");
        assert_eq!(read16(&mut p, ns_of(5000)), 500);
        // Lobyte-only access mode.
        program(&mut p, 0x16, 0, 0); // ch0, lobyte, mode 3 (count written below)
        p.write(0x40, 200, 0);
        assert_eq!(p.read(0x40, ns_of(10)), 180, "mode 3 counts by two");
        assert_eq!(p.read(0x40, ns_of(110)), 200 - 2 * 10);
    }

    #[test]
    fn control_word_stops_the_counter_and_other_channels_are_inert() {
        let mut p = Vpit::new();
        program(&mut p, 0x34, 1193, 0);
        p.write(0x43, 0x34, 10);
        assert_eq!(p.deadline(), None, "stopped until a count is written");
        p.write(0x43, 0xb6, 10); // channel 2, mode 3
        p.write(0x42, 0x12, 10);
        p.write(0x61, 0x03, 10);
        assert_eq!(
            (p.read(0x42, 10), p.read(0x61, 10), p.read(0x43, 10)),
            (0, 0, 0)
        );
        assert_eq!(p.deadline(), None);
        // Gate-triggered modes never fire.
        program(&mut p, 0x32, 100, 0);
        assert_eq!(p.deadline(), None);
    }

    proptest! {
        /// Any traffic at any times: no panic; a deadline, if any, lies ahead of the last
        /// expiry; expire never reports twice for the same instant in one-shot modes.
        #[test]
        fn garbage_programming_is_harmless(ops in proptest::collection::vec((0u8..4, any::<u8>(), any::<u64>()), 0..100)) {
            let mut p = Vpit::new();
            for (op, v, t) in ops {
                match op {
                    0 => p.write(0x43, v, t),
                    1 => p.write(0x40 + u16::from(v % 4), v, t),
                    2 => { let _ = p.read(0x40 + u16::from(v % 4), t); let _ = p.read(0x61, t); }
                    _ => {
                        if p.expire(t) {
                            if let Some(d) = p.deadline() {
                                prop_assert!(d > t || d == u64::MAX);
                            }
                        }
                    }
                }
            }
        }
    }
}
