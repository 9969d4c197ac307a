//! Time: converting TSC ticks to nanoseconds of system time, and the pvclock parameters
//! published to guests.
//!
//! The TSC is calibrated once at boot (by the arch layer, against the PIT). System time is
//! nanoseconds since boot. Guests get Xen's pvclock scale, `ns = ((delta << shift) *
//! mul) / 2^32` with `shift` in -31..=31 and `mul` a 32-bit fraction, so they can read the
//! clock without a hypercall.

/// TSC-to-nanoseconds conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// TSC frequency in Hz.
    pub tsc_hz: u64,
    /// TSC value at system time 0.
    pub boot_tsc: u64,
    /// pvclock multiplier.
    pub mul: u32,
    /// pvclock shift.
    pub shift: i8,
}

impl Clock {
    /// A clock for a TSC running at `tsc_hz` (clamped to at least 1 MHz), zero at `boot_tsc`.
    pub fn new(tsc_hz: u64, boot_tsc: u64) -> Clock {
        let tsc_hz = tsc_hz.max(1_000_000);
        let (mul, shift) = pvclock_scale(tsc_hz);
        Clock {
            tsc_hz,
            boot_tsc,
            mul,
            shift,
        }
    }

    /// System time (ns) at TSC value `tsc` (exact; guests use the pvclock scale, which
    /// agrees to within a few parts per billion).
    pub fn ns(&self, tsc: u64) -> u64 {
        let delta = u128::from(tsc.saturating_sub(self.boot_tsc));
        (delta * 1_000_000_000 / u128::from(self.tsc_hz)) as u64
    }

    /// The TSC value at system time `ns` (for programming timers).
    pub fn tsc_at(&self, ns: u64) -> u64 {
        let ticks = (u128::from(ns) * u128::from(self.tsc_hz) / 1_000_000_000) as u64;
        self.boot_tsc.wrapping_add(ticks)
    }
}

/// Computes `(mul, shift)` so that `scale_delta(ticks)` ~ `ticks * 1e9 / hz`.
pub fn pvclock_scale(hz: u64) -> (u32, i8) {
    // Find shift so that the fraction 1e9 / (hz << shift)... expressed as mul/2^32 lies
    // in [0.5, 1): mul = 1e9 * 2^32 / (hz * 2^shift).
    let mut shift: i8 = 0;
    let ns: u128 = 1_000_000_000;
    let mut hz_s: u128 = u128::from(hz);
    while ns > hz_s && shift < 31 {
        hz_s <<= 1;
        shift += 1;
    }
    while ns * 2 <= hz_s && shift > -31 {
        hz_s >>= 1;
        shift -= 1;
    }
    let mul = ((ns << 32) / hz_s.max(1)).min(u128::from(u32::MAX)) as u32;
    (mul, shift)
}

/// `((delta << shift) * mul) >> 32`, with a negative shift shifting right.
pub fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift >= 0 {
        delta << shift
    } else {
        delta >> (-shift)
    };
    ((u128::from(d) * u128::from(mul)) >> 32) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_common_frequencies_accurately() {
        for hz in [
            1_000_000u64,
            100_000_000,
            1_000_000_000,
            2_600_000_000,
            3_999_999_999,
        ] {
            let c = Clock::new(hz, 1000);
            for secs in [0u64, 1, 7, 3600] {
                let tsc = 1000 + hz * secs;
                let ns = c.ns(tsc);
                let want = secs * 1_000_000_000;
                let err = ns.abs_diff(want);
                assert!(
                    err <= want / 1_000_000 + 2,
                    "hz {hz} secs {secs}: {ns} vs {want}"
                );
            }
            let t = c.tsc_at(5_000_000);
            assert!(c.ns(t).abs_diff(5_000_000) <= 2);
        }
    }
}

/// Seconds since 1970-01-01 for a UTC civil date (days-from-civil, proleptic Gregorian).
pub fn unix_time(year: u64, month: u64, day: u64, h: u64, m: u64, s: u64) -> u64 {
    let (y, mo) = if month <= 2 {
        (year as i64 - 1, month as i64 + 9)
    } else {
        (year as i64, month as i64 - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (days.max(0) as u64) * 86_400 + h * 3600 + m * 60 + s
}

#[cfg(test)]
mod civil_tests {
    use super::unix_time;

    #[test]
    fn known_dates() {
        assert_eq!(unix_time(1970, 1, 1, 0, 0, 0), 0);
        assert_eq!(unix_time(2000, 3, 1, 0, 0, 0), 951_868_800);
        assert_eq!(unix_time(2026, 11, 22, 2, 15, 17), 1_795_313_717);
    }
}
