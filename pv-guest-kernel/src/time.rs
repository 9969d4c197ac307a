//! Time: system time from the pvclock record, the wall clock, one-shot timers and sleep.
//!
//! # Reading the clock
//! [`now_ns`] needs no hypercall: it reads vCPU 0's time record (seqlock, see
//! [`crate::shared::SharedPage::time`]) and the TSC, and computes
//! `system_time + scale(tsc - tsc_timestamp)` ([`scale_delta`], Xen's pvclock formula).
//! The hypervisor refreshes the record whenever it schedules the domain in. The result
//! is clamped so it never goes backwards ([`now_ns_raw`] is the unclamped value).
//!
//! The wall clock is `shared_info.wc_*` (the time of day at system time 0) plus
//! [`now_ns`]: [`wallclock`].
//!
//! # Timers and sleeping
//! There is one one-shot timer per vCPU (`set_timer_op`), which raises `VIRQ_TIMER`.
//! [`init`] binds that VIRQ; a [`Timer`] programs it (keeping an earlier deadline armed
//! by an outer timer) and cancels it when dropped. The hypervisor may fire a timer up to
//! its slop (50 us) early, so nothing trusts the event itself: waiters compare
//! [`now_ns`] with their deadline and re-arm ([`Timer::poll`]) until it has passed.
//! [`sleep`] blocks ([`crate::events::wait_for`]) until then, costing no CPU.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use abi::event_channel::VIRQ_TIMER;
use abi::Errno;

use crate::shared::{SharedPage, TimeSnapshot};
use crate::{events, hv};

/// Nanoseconds per millisecond.
pub const NS_PER_MS: u64 = 1_000_000;
/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// `((delta << shift) * mul) >> 32` with a negative `shift` shifting right: TSC ticks
/// to nanoseconds with the pvclock parameters.
pub const fn scale_delta(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift >= 0 {
        delta << shift
    } else {
        delta >> (-shift)
    };
    ((d as u128 * mul as u128) >> 32) as u64
}

/// System time at TSC value `tsc` from the record `t`.
pub const fn system_time_at(t: &TimeSnapshot, tsc: u64) -> u64 {
    t.system_time.wrapping_add(scale_delta(
        tsc.saturating_sub(t.tsc_timestamp),
        t.tsc_to_system_mul,
        t.tsc_shift,
    ))
}

/// Reads the time-stamp counter.
#[cfg(target_os = "none")]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` only reads the time-stamp counter; it is allowed in ring 3 (the
    // hypervisor leaves CR4.TSD clear) and touches no memory.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads the time-stamp counter (host: the fake hypervisor's virtual TSC).
#[cfg(not(target_os = "none"))]
pub fn rdtsc() -> u64 {
    crate::host::fake_tsc()
}

/// System time (ns since boot) straight from the pvclock record and the TSC; 0 if
/// there is no shared-info page. May step back by a few ns when the record is refreshed
/// (the hypervisor's exact clock and the pvclock scale differ slightly); see [`now_ns`].
pub fn now_ns_raw() -> u64 {
    let Some(s) = SharedPage::get() else { return 0 };
    loop {
        let t = s.time();
        let tsc = rdtsc();
        // The TSC must be read under the same version as the record it is applied to.
        if s.time().version == t.version {
            return system_time_at(&t, tsc);
        }
    }
}

static LAST_NOW: AtomicU64 = AtomicU64::new(0);

/// System time in ns since boot, never less than a value returned before.
pub fn now_ns() -> u64 {
    let t = now_ns_raw();
    let prev = LAST_NOW.fetch_max(t, Ordering::Relaxed);
    prev.max(t)
}

/// A time of day: seconds and nanoseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct WallClock {
    /// Seconds since 1970-01-01 00:00:00 UTC.
    pub secs: u64,
    /// Nanoseconds (< 1e9).
    pub nanos: u32,
}

impl WallClock {
    /// `base` plus `ns` nanoseconds.
    pub const fn add_ns(self, ns: u64) -> WallClock {
        let total = self.nanos as u64 + ns % NS_PER_SEC;
        WallClock {
            secs: self.secs + ns / NS_PER_SEC + total / NS_PER_SEC,
            nanos: (total % NS_PER_SEC) as u32,
        }
    }

    /// Nanoseconds since the epoch (saturating).
    pub const fn as_ns(self) -> u64 {
        self.secs
            .saturating_mul(NS_PER_SEC)
            .saturating_add(self.nanos as u64)
    }
}

impl fmt::Display for WallClock {
    /// `2026-04-14 12:34:56.789 UTC`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.secs / 86_400);
        let s = self.secs % 86_400;
        write!(
            f,
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
            s / 3600,
            s / 60 % 60,
            s % 60,
            self.nanos / 1_000_000
        )
    }
}

/// The proleptic Gregorian date (year, month 1..=12, day 1..=31) of day `days` since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub const fn civil_from_days(days: u64) -> (u64, u32, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

/// The wall clock at system time 0 (`shared_info.wc_*`).
pub fn wallclock_base() -> WallClock {
    SharedPage::get().map_or(WallClock::default(), |s| {
        let b = s.wall_base();
        WallClock {
            secs: b.secs,
            nanos: b.nanos,
        }
    })
}

/// The time of day now: [`wallclock_base`] + [`now_ns`].
pub fn wallclock() -> WallClock {
    wallclock_base().add_ns(now_ns())
}

/// Forgets the timer binding and the clock's high-water mark (host runs: each fake
/// starts from scratch).
#[cfg(not(target_os = "none"))]
pub(crate) fn forget() {
    TIMER_PORT.store(0, Ordering::Release);
    PROGRAMMED.store(0, Ordering::Relaxed);
    LAST_NOW.store(0, Ordering::Relaxed);
}

/// The port `VIRQ_TIMER` is bound to (0: not yet).
static TIMER_PORT: AtomicU32 = AtomicU32::new(0);
/// The deadline the one-shot timer is programmed for (0: none).
static PROGRAMMED: AtomicU64 = AtomicU64::new(0);
/// `VIRQ_TIMER` events handled.
static TIMER_EVENTS: AtomicU64 = AtomicU64::new(0);
/// Period of the periodic tick (0: none), see [`set_periodic`].
static PERIOD: AtomicU64 = AtomicU64::new(0);

/// Binds `VIRQ_TIMER` (once; also registers the event callback). Returns its port.
pub fn init() -> Result<u32, Errno> {
    match TIMER_PORT.load(Ordering::Acquire) {
        0 => {
            let port = events::bind_virq(VIRQ_TIMER, on_timer)?;
            TIMER_PORT.store(port, Ordering::Release);
            Ok(port)
        }
        port => Ok(port),
    }
}

/// The `VIRQ_TIMER` port, if [`init`] bound it.
pub fn timer_port() -> Option<u32> {
    match TIMER_PORT.load(Ordering::Acquire) {
        0 => None,
        p => Some(p),
    }
}

/// `VIRQ_TIMER` events so far.
pub fn timer_events() -> u64 {
    TIMER_EVENTS.load(Ordering::Relaxed)
}

/// The deadline the hardware timer is programmed for, if any.
pub fn programmed() -> Option<u64> {
    match PROGRAMMED.load(Ordering::Relaxed) {
        0 => None,
        d => Some(d),
    }
}

/// `VIRQ_TIMER` handler: a timer that fired early (within the hypervisor's slop) is
/// re-armed; otherwise the one-shot is spent.
fn on_timer(_port: u32) {
    TIMER_EVENTS.fetch_add(1, Ordering::Relaxed);
    let d = PROGRAMMED.load(Ordering::Relaxed);
    if d != 0 && now_ns() < d {
        let _ = hv::set_timer_op(d);
    } else {
        PROGRAMMED.store(0, Ordering::Relaxed);
        let period = PERIOD.load(Ordering::Relaxed);
        if period != 0 {
            let _ = program(now_ns().saturating_add(period));
        }
    }
}

/// A periodic tick every `period_ns` (0 stops it), built on the one-shot timer: each
/// expiry with nothing else programmed re-arms it. What a native kernel's PIT does; a PV
/// kernel only needs it to compare like with like (Xen has `VCPUOP_set_periodic_timer`
/// for the same purpose).
pub fn set_periodic(period_ns: u64) -> Result<(), Errno> {
    init()?;
    PERIOD.store(period_ns, Ordering::Relaxed);
    if period_ns != 0 && PROGRAMMED.load(Ordering::Relaxed) == 0 {
        program(now_ns().saturating_add(period_ns))?;
    }
    Ok(())
}

/// Programs the one-shot timer (0 cancels), with upcalls masked so the handler sees a
/// consistent [`PROGRAMMED`].
fn program(deadline: u64) -> Result<(), Errno> {
    events::without_irqs(|| {
        PROGRAMMED.store(deadline, Ordering::Relaxed);
        hv::set_timer_op(deadline)
    })
}

/// A one-shot timer for a deadline in system time: armed when created, cancelled when
/// dropped (an outer timer's earlier deadline stays armed meanwhile and is re-armed
/// afterwards).
#[derive(Debug)]
#[must_use = "the timer is cancelled when dropped"]
pub struct Timer {
    deadline: u64,
    prev: u64,
}

impl Timer {
    /// Arms a timer for system time `deadline_ns` ([`init`] is called if needed). A
    /// deadline that has already passed arms nothing: the timer is born expired.
    pub fn at(deadline_ns: u64) -> Result<Timer, Errno> {
        init()?;
        let deadline = deadline_ns.max(1);
        let prev = PROGRAMMED.load(Ordering::Relaxed);
        if deadline > now_ns() {
            program(if prev != 0 {
                prev.min(deadline)
            } else {
                deadline
            })?;
        }
        Ok(Timer { deadline, prev })
    }

    /// Arms a timer `ns` nanoseconds from now.
    pub fn after(ns: u64) -> Result<Timer, Errno> {
        Timer::at(now_ns().saturating_add(ns))
    }

    /// The deadline.
    pub fn deadline(&self) -> u64 {
        self.deadline
    }

    /// True once the deadline has passed.
    pub fn expired(&self) -> bool {
        now_ns() >= self.deadline
    }

    /// For wait loops: true if expired; otherwise makes sure the hardware timer will
    /// fire by the deadline (re-arming after an early or foreign expiry) and returns
    /// false.
    pub fn poll(&self) -> bool {
        if self.expired() {
            return true;
        }
        let p = PROGRAMMED.load(Ordering::Relaxed);
        if p == 0 || p > self.deadline {
            let _ = program(self.deadline);
        }
        false
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let keep = if self.prev > now_ns() { self.prev } else { 0 };
        if PROGRAMMED.load(Ordering::Relaxed) != keep {
            let _ = program(keep);
        }
    }
}

/// Blocks until system time `deadline_ns`.
pub fn sleep_until(deadline_ns: u64) -> Result<(), Errno> {
    let t = Timer::at(deadline_ns)?;
    events::wait_for(|| t.poll())
}

/// Blocks for at least `ns` nanoseconds.
pub fn sleep(ns: u64) -> Result<(), Errno> {
    sleep_until(now_ns().saturating_add(ns))
}

/// Blocks for at least `ms` milliseconds.
pub fn sleep_ms(ms: u64) -> Result<(), Errno> {
    sleep(ms.saturating_mul(NS_PER_MS))
}

/// Blocks until `cond()` (checked as in [`events::wait_for`]) or until `ns` nanoseconds
/// have passed. Returns whether `cond` became true.
pub fn wait_timeout(mut cond: impl FnMut() -> bool, ns: u64) -> Result<bool, Errno> {
    let t = Timer::after(ns)?;
    let mut met = false;
    events::wait_for(|| {
        met = cond();
        met || t.poll()
    })?;
    if !met {
        // `cond` runs with upcalls masked: on a slow (or stalled) host the deadline can
        // pass before an event that is already pending has been handled. Let pending
        // upcalls in once and look again, so such an event still counts.
        let was = events::irq_save();
        events::irq_enable();
        events::irq_disable();
        met = cond();
        events::irq_restore(was);
    }
    Ok(met)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvclock_scaling() {
        // 1 GHz: mul 2^31 with shift 1.
        assert_eq!(scale_delta(1_000, 1 << 31, 1), 1_000);
        // 2 GHz: mul 2^31, shift 0 -> half.
        assert_eq!(scale_delta(1_000, 1 << 31, 0), 500);
        // Negative shift.
        assert_eq!(scale_delta(4_000, 1 << 31, -2), 500);
        // Large deltas do not overflow.
        assert_eq!(scale_delta(u64::MAX >> 1, 1 << 31, 1), u64::MAX >> 1);
        let t = TimeSnapshot {
            version: 2,
            tsc_timestamp: 1_000,
            system_time: 5_000,
            tsc_to_system_mul: 1 << 31,
            tsc_shift: 1,
        };
        assert_eq!(system_time_at(&t, 1_500), 5_500);
        assert_eq!(
            system_time_at(&t, 900),
            5_000,
            "a TSC before the stamp: no underflow"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(18_262), (2020, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let w = WallClock {
            secs: 1_577_836_800 + 3_723,
            nanos: 45_000_000,
        };
        assert_eq!(w.to_string(), "2020-01-01 01:02:03.045 UTC");
        assert_eq!(
            w.add_ns(1_960_000_000),
            WallClock {
                secs: 1_577_836_800 + 3_725,
                nanos: 5_000_000
            }
        );
        assert_eq!(WallClock { secs: 2, nanos: 7 }.as_ns(), 2_000_000_007);
    }
}
