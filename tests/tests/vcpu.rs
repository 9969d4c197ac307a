//! The virtual CPU under QEMU: virtual exceptions and demand paging, a fault while
//! delivering a fault, time and sleeping, event channels (hostile use and interdomain
//! ping-pong), and the preemptive weighted-fair scheduler.
//!
//! Timing-dependent scenarios run with `-icount shift=0,sleep=off` so they are
//! deterministic (rdtsc counts instructions; idle time is skipped).

use std::time::Duration;
use tests::{Scenario, TestResult};

#[test]
fn virtual_exceptions_and_demand_paging() {
    let o = Scenario::new("vcpu-traps").guest("test=traps").run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .expect(!o.serial.contains("FAIL:"), "no failed check");
}

#[test]
fn a_fault_while_delivering_a_fault_crashes_only_that_domain() {
    for (name, arg) in [
        ("unmapped", "where=unmapped"),
        ("readonly", "where=readonly"),
        ("hv", "where=hv"),
    ] {
        let o = Scenario::new(format!("vcpu-bad-stack-{name}"))
            .guest(format!("test=trap-bad-stack {arg}"))
            .guest("test=spin yields=40")
            .run();
        o.assert_hv_failure()
            .assert_line_starting(
                "[hv] d1 crashed: cannot deliver vector 6 to its handler: bad guest stack",
            )
            .assert_result("[d2] ", TestResult::Success)
            .assert_contains("[hv] free frames back to the boot baseline")
            .expect(o.result_of("[d1] ").is_none(), "d1 never reported a result");
    }
}

#[test]
fn clock_and_sleep() {
    let o = Scenario::new("vcpu-clock")
        .icount(true)
        .guest("test=clock")
        .run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success);
}

#[test]
fn hostile_event_channel_use_is_refused() {
    let o = Scenario::new("vcpu-evtchn-hostile")
        .guest("test=evtchn-hostile")
        .guest("test=evdemo")
        .run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success)
        .expect(!o.serial.contains("FAIL:"), "no failed check");
}

/// Interdomain ping-pong between two guests over an event channel, both blocking between
/// events.
#[test]
fn interdomain_ping_pong() {
    let o = Scenario::new("vcpu-pingpong")
        .icount(true)
        .guest("test=pingpong role=server peer=2 rounds=1000")
        .guest("test=pingpong role=client peer=1 rounds=1000")
        .run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success)
        .assert_line_starting("[d2] pingpong: 1000 round trips, median ");
}

/// Two CPU-bound guests with weights 1:2 share the CPU within 10% of 1:2 (hypervisor's
/// accounting and the guests' own iteration counts), without yielding: preemption.
#[test]
fn weighted_fair_share_between_cpu_bound_guests() {
    let o = Scenario::new("vcpu-weights")
        .icount(true)
        .timeout(Duration::from_secs(120))
        .guest("test=hog ms=1000 weight=256")
        .guest("test=hog ms=1000 weight=512")
        .run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success);
    let (c1, c2) = (o.cpu_time_us(1).unwrap_or(0), o.cpu_time_us(2).unwrap_or(0));
    let (i1, i2) = (
        o.number_after("[d1] ", "hog: ").unwrap_or(0),
        o.number_after("[d2] ", "hog: ").unwrap_or(0),
    );
    let within = |a: u64, b: u64| a > 0 && (b as f64 / a as f64 - 2.0).abs() <= 0.2;
    o.expect(
        within(c1, c2),
        format!("cpu time {c1} us : {c2} us is not within 10% of 1:2"),
    );
    o.expect(
        within(i1, i2),
        format!("iterations {i1} : {i2} are not within 10% of 1:2"),
    );
}

/// A blocked guest costs (almost) no CPU while a hog runs next to it.
#[test]
fn a_blocked_guest_costs_no_cpu() {
    let o = Scenario::new("vcpu-sleeper")
        .icount(true)
        .timeout(Duration::from_secs(120))
        .guest("test=sleeper ms=1000")
        .guest("test=hog ms=1000")
        .run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success);
    let (sleeper, hog) = (
        o.cpu_time_us(1).unwrap_or(u64::MAX),
        o.cpu_time_us(2).unwrap_or(0),
    );
    o.expect(
        sleeper * 100 < hog,
        format!("sleeper used {sleeper} us of CPU next to the hog's {hog} us"),
    );
}
