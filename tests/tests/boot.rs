//! Boot scenarios: the whole stack (hypervisor, dom0, PV guests) under QEMU.
//!
//! Each test boots its own QEMU through the harness in `tests/src`; they may run in
//! parallel. Logs: `target/scenario-logs/<scenario name>.log`.

use tests::{Scenario, TestResult};

/// Happy path: dom0 without arguments and one guest that says hello and passes.
#[test]
fn boot_dom0_and_hello_guest() {
    let outcome = Scenario::new("boot-hello").guest("test=hello").run();
    outcome
        .assert_hv_success()
        .assert_line_starting("[hv] cpu: long mode, NX on")
        .assert_line_starting("[hv] d0: built (privileged)")
        .assert_line_starting("[hv] d1: built 16 MiB")
        .assert_result("[d0] ", TestResult::Success)
        .assert_result("[d1] ", TestResult::Success)
        .assert_contains("[d0] privileged: yes")
        .assert_contains("[d0] modules: 2")
        .assert_contains("[d1] hello from domain 1")
        .assert_contains("[hv] d0 ended: poweroff")
        .assert_contains("[hv] d1 ended: poweroff")
        .assert_all_domains_ended()
        .assert_contains("all domains ended: d0 poweroff, d1 poweroff -> exit success");
    // Yields interleave the domains: d1's ticks and dom0's output are not in one block.
    let lines: Vec<&str> = outcome.lines().collect();
    let first_tick = lines.iter().position(|l| l.starts_with("[d1] tick 1"));
    let last_d0 = lines.iter().rposition(|l| l.starts_with("[d0] "));
    outcome.expect(
        matches!((first_tick, last_d0), (Some(t), Some(d)) if t < d),
        "round-robin on yield: d1 ran before dom0 finished",
    );
}

/// Several guests at once, each with its own memory and domain id.
#[test]
fn three_guests_run_side_by_side() {
    let outcome = Scenario::new("boot-three-guests")
        .guest("test=hello")
        .guest("test=hello yields=3")
        .guest("test=spin yields=30")
        .run();
    outcome.assert_hv_success();
    for d in 1..=3 {
        outcome.assert_result(&format!("[d{d}] "), TestResult::Success);
    }
    outcome.assert_contains("[d2] hello from domain 2");
}

/// An exception inside the hypervisor prints a register dump and fails the run.
#[test]
fn hypervisor_fault_dumps_registers_and_fails() {
    let outcome = Scenario::new("hv-fault")
        .hv_args("selftest=hv-fault")
        .guest("test=hello")
        .run();
    outcome
        .assert_hv_failure()
        .assert_line_starting("[hv] FATAL: hypervisor exception 14 (#PF)")
        .assert_contains("cr2 0x10")
        .assert_line_starting("[hv]   rax ")
        .assert_line_starting("[hv]   r12 ")
        .expect(!outcome.has_line_starting("[d0] "), "no domain ran");
}

/// The harness's power cut (`kill_after`, used by the block scenarios): QEMU dies with
/// SIGKILL right after the trigger, before the guest can finish.
#[test]
fn kill_after_cuts_the_power_at_the_trigger() {
    let out = Scenario::new("harness-kill-after")
        .guest("test=spin yields=1000000")
        .kill_after("[d1] tick 20")
        .run();
    out.expect(
        out.killed && out.status.is_none(),
        "killed on purpose, no exit status",
    );
    out.expect(!out.timed_out, "not a timeout");
    out.expect(
        !out.serial.contains("[d1] Test result"),
        "the guest did not get to finish",
    );
}
