//! `clock`, `hog` and `sleeper`: time from the guest's side.
//!
//! - `clock`: the pvclock record, a monotonic clock across many reads and reschedules,
//!   sleeps of several lengths (blocked, woken by `VIRQ_TIMER`), timer cancellation,
//!   a timed wait, and the wall clock.
//! - `hog`: CPU-bound for `ms=N` (2000) ms of system time, reading the clock (TSC and
//!   the time record, no hypercall) in its loop; reports iterations and how much of the
//!   time it was descheduled (for scheduler-weight experiments).
//! - `sleeper`: one `sleep(ms=N)` (1000): the domain is blocked all that time, which
//!   should cost it no CPU (see the hypervisor's `cpu time` in its end-of-domain line).

use core::sync::atomic::{AtomicU64, Ordering};

use pv_guest_kernel::shared::SharedPage;
use pv_guest_kernel::time::{self, Timer, NS_PER_MS};
use pv_guest_kernel::xtf::{self, Checker};
use pv_guest_kernel::{events, hv, println};

use super::Env;

/// 2020-01-01 00:00:00 UTC.
const Y2020: u64 = 1_577_836_800;
/// Slack allowed on top of a sleep's length (scheduling, TCG).
const SLEEP_SLACK_NS: u64 = 50 * NS_PER_MS;

pub fn clock(env: &Env) -> ! {
    let mut c = Checker::new();
    let Some(s) = SharedPage::get() else {
        xtf::error("no shared_info page")
    };
    let t = s.time();
    println!(
        "clock: pvclock version {}, system_time {} ns at tsc {}, mul {:#x}, shift {}",
        t.version, t.system_time, t.tsc_timestamp, t.tsc_to_system_mul, t.tsc_shift
    );
    c.check(
        "the time record is published (even version > 0, mul != 0)",
        t.version > 0 && t.version % 2 == 0 && t.tsc_to_system_mul != 0,
    );
    // 1e9 ticks last X ns: the TSC runs at 1e12 / X MHz.
    let ns = time::scale_delta(1_000_000_000, t.tsc_to_system_mul, t.tsc_shift);
    let mhz = 1_000_000_000_000 / ns.max(1);
    println!("clock: TSC ~{mhz} MHz according to the pvclock scale");

    monotonic(&mut c, env.cmdline.u64_or("reads", 100_000));
    sleeps(&mut c);
    timers(&mut c);
    wall_clock(&mut c);
    c.finish()
}

fn monotonic(c: &mut Checker, reads: u64) {
    let first = time::now_ns_raw();
    let mut prev = first;
    let (mut back, mut max_back) = (0u64, 0u64);
    for _ in 0..reads {
        let t = time::now_ns_raw();
        if t < prev {
            back += 1;
            max_back = max_back.max(prev - t);
        }
        prev = t;
    }
    println!(
        "clock: {reads} reads over {} us: {back} steps back (largest {max_back} ns)",
        (prev - first) / 1000
    );
    c.check_eq("the raw clock never steps back", 0, back);
    c.check("the clock advances", prev > first);
    // Across reschedules the record is re-published; still monotonic.
    let mut bad = 0;
    for _ in 0..50 {
        let a = time::now_ns_raw();
        let _ = hv::sched_yield();
        let b = time::now_ns_raw();
        bad += u32::from(b < a);
    }
    c.check_eq("monotonic across 50 yields", 0, bad);
}

/// Sleeps `ms` and returns how long it took (ns of system time).
fn timed_sleep(c: &mut Checker, ms: u64) -> u64 {
    let t0 = time::now_ns();
    if let Err(e) = time::sleep_ms(ms) {
        c.fail(format_args!("sleep({ms} ms)"), e);
    }
    time::now_ns() - t0
}

fn sleeps(c: &mut Checker) {
    match time::init() {
        Ok(port) => println!("clock: VIRQ_TIMER bound to port {port}"),
        Err(e) => xtf::error(format_args!("bind VIRQ_TIMER: {e}")),
    }
    let (ev0, blocks0) = (time::timer_events(), events::blocks());
    let dt = timed_sleep(c, 10);
    println!("clock: sleep(10 ms) took {} us", dt / 1000);
    c.check(
        "sleep(10 ms) takes >= 10 ms and < 60 ms",
        (10 * NS_PER_MS..60 * NS_PER_MS).contains(&dt),
    );
    for ms in [1, 3, 25, 50, 0] {
        let dt = timed_sleep(c, ms);
        println!("clock: sleep({ms} ms) took {} us", dt / 1000);
        c.check(
            format_args!("sleep({ms} ms) takes >= {ms} ms and < {ms} ms + 50 ms"),
            (ms * NS_PER_MS..ms * NS_PER_MS + SLEEP_SLACK_NS).contains(&dt),
        );
    }
    let (ev, blocks) = (time::timer_events() - ev0, events::blocks() - blocks0);
    println!("clock: 6 sleeps: {ev} timer events, {blocks} blocks");
    c.check("the sleeps were woken by VIRQ_TIMER", ev >= 5);
    c.check(
        "the sleeps blocked rather than spun (few blocks per sleep)",
        (5..=6 * 8).contains(&blocks),
    );
}

static SPIN_EVENTS: AtomicU64 = AtomicU64::new(0);

fn timers(c: &mut Checker) {
    // A timer dropped before its deadline never fires. (Let anything already pending
    // through first.)
    events::irq_enable();
    events::irq_disable();
    let ev = time::timer_events();
    match Timer::after(2 * NS_PER_MS) {
        Ok(t) => drop(t),
        Err(e) => c.fail("Timer::after(2 ms)", e),
    }
    c.check_eq(
        "no timer programmed after the drop",
        None,
        time::programmed(),
    );
    events::irq_enable();
    let until = time::now_ns() + 6 * NS_PER_MS;
    while time::now_ns() < until {
        core::hint::spin_loop();
    }
    events::irq_disable();
    SPIN_EVENTS.store(time::timer_events() - ev, Ordering::Relaxed);
    c.check_eq(
        "a dropped Timer never fires (6 ms with events enabled)",
        0,
        SPIN_EVENTS.load(Ordering::Relaxed),
    );

    // A timed wait for something that never happens times out on time.
    let t0 = time::now_ns();
    let met = time::wait_timeout(|| false, 5 * NS_PER_MS);
    let dt = time::now_ns() - t0;
    println!(
        "clock: wait_timeout(never, 5 ms) -> {met:?} after {} us",
        dt / 1000
    );
    c.check_eq("wait_timeout(never, 5 ms) times out", Ok(false), met);
    c.check(
        "... after >= 5 ms and < 55 ms",
        (5 * NS_PER_MS..5 * NS_PER_MS + SLEEP_SLACK_NS).contains(&dt),
    );
    // A deadline already in the past: returns at once.
    let t0 = time::now_ns();
    let r = time::sleep_until(t0.saturating_sub(NS_PER_MS));
    c.check_eq("sleep_until(the past) returns", Ok(()), r);
    c.check("... at once (< 5 ms)", time::now_ns() - t0 < 5 * NS_PER_MS);
}

fn wall_clock(c: &mut Checker) {
    let base = time::wallclock_base();
    let (w1, n1) = (time::wallclock(), time::now_ns());
    println!("clock: wall clock {w1} (at system time 0: {} s)", base.secs);
    c.check("the wall clock is after 2020-01-01", w1.secs >= Y2020);
    let off = w1.as_ns().abs_diff(base.add_ns(n1).as_ns());
    c.check(
        format_args!("wall clock = base + now_ns (off by {off} ns)"),
        off < NS_PER_MS,
    );
    let _ = time::sleep_ms(20);
    let (w2, n2) = (time::wallclock(), time::now_ns());
    let (dw, dn) = (w2.as_ns() - w1.as_ns(), n2 - n1);
    println!(
        "clock: over a 20 ms sleep the wall clock moved {} us, system time {} us",
        dw / 1000,
        dn / 1000
    );
    c.check(
        "the wall clock advances with system time (within 1 ms)",
        dw.abs_diff(dn) < NS_PER_MS,
    );
}

pub fn hog(env: &Env) -> ! {
    let mut c = Checker::new();
    let ms = env.cmdline.u64_or("ms", 2000);
    let weight = env.cmdline.get("weight").unwrap_or("256 (default)");
    println!("hog: spinning for {ms} ms of system time (weight {weight})");
    // Gaps between two clock reads longer than this count as time descheduled.
    const GAP_NS: u64 = 200_000;
    let start = time::now_ns();
    let end = start + ms * NS_PER_MS;
    let (mut iterations, mut away, mut gaps, mut longest) = (0u64, 0u64, 0u64, 0u64);
    let mut prev = start;
    loop {
        iterations += 1;
        let now = time::now_ns();
        let gap = now - prev;
        if gap > GAP_NS {
            away += gap;
            gaps += 1;
            longest = longest.max(gap);
        }
        prev = now;
        if now >= end {
            break;
        }
    }
    let elapsed = prev - start;
    println!("hog: {iterations} iterations in {} ms", elapsed / NS_PER_MS);
    println!(
        "hog: descheduled {gaps} times, {} ms in all (longest {} us): ran ~{}% of the time",
        away / NS_PER_MS,
        longest / 1000,
        (elapsed - away) * 100 / elapsed.max(1)
    );
    c.check("ran for the requested time", elapsed >= ms * NS_PER_MS);
    c.check("made progress", iterations > 0);
    c.finish()
}

pub fn sleeper(env: &Env) -> ! {
    let mut c = Checker::new();
    let ms = env.cmdline.u64_or("ms", 1000);
    println!("sleeper: sleeping {ms} ms in one sleep()");
    let (ev0, up0, bl0) = (time::timer_events(), events::upcalls(), events::blocks());
    let t0 = time::now_ns();
    let r = time::sleep_ms(ms);
    let dt = time::now_ns() - t0;
    println!(
        "sleeper: woke after {} us: {} timer events, {} upcalls, {} blocks",
        dt / 1000,
        time::timer_events() - ev0,
        events::upcalls() - up0,
        events::blocks() - bl0
    );
    c.check_eq("sleep", Ok(()), r);
    c.check(
        format_args!("slept >= {ms} ms and < {ms} ms + 50 ms"),
        (ms * NS_PER_MS..ms * NS_PER_MS + SLEEP_SLACK_NS).contains(&dt),
    );
    c.finish()
}
