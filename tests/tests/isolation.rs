//! Fault isolation: a guest that faults is killed alone; its frames are freed; the other
//! domains run to a clean shutdown; the run's verdict reports the crash.

use tests::{Outcome, Scenario, TestResult};

fn crash_with_partner(name: &str, test: &str) -> Outcome {
    Scenario::new(format!("isolation-{name}"))
        .guest(format!("test={test}"))
        .guest("test=spin yields=40")
        .run()
}

fn assert_isolated(o: &Outcome, crash_line: &str) {
    o.assert_hv_failure()
        .assert_line_starting(crash_line)
        .assert_line_starting("[hv] d1 registers: rax ")
        .assert_contains("[hv] d1 ended: crash (killed on")
        // 4096 pages of memory, shared_info, and the grant-table frame holding the
        // builder's xenstore and console grants.
        .assert_contains("4098 frames freed")
        .assert_result("[d0] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success)
        .assert_contains("[hv] d2 ended: poweroff")
        .assert_contains("[hv] d0 ended: poweroff")
        .expect(
            o.result_of("[d1] ").is_none(),
            "the crashing guest never reported a result",
        )
        .assert_all_domains_ended();
    // d2 kept running after d1 died.
    let lines: Vec<&str> = o.lines().collect();
    let crash = lines.iter().position(|l| l.starts_with(crash_line));
    let d2_done = lines.iter().position(|l| l.starts_with("[d2] Test result"));
    o.expect(
        matches!((crash, d2_done), (Some(c), Some(d)) if c < d),
        "d2 finished after d1 crashed",
    );
}

#[test]
fn null_dereference_kills_only_that_guest() {
    let o = crash_with_partner("null", "crash-null");
    assert_isolated(&o, "[hv] d1 crashed: vector 14 (#PF)");
    o.assert_contains("cr2 0x0");
}

#[test]
fn ud2_kills_only_that_guest() {
    assert_isolated(
        &crash_with_partner("ud", "crash-ud"),
        "[hv] d1 crashed: vector 6 (#UD)",
    );
}

#[test]
fn int3_kills_only_that_guest() {
    assert_isolated(
        &crash_with_partner("int3", "crash-int3"),
        "[hv] d1 crashed: vector 3 (#BP)",
    );
}

#[test]
fn privileged_instruction_kills_only_that_guest() {
    assert_isolated(
        &crash_with_partner("priv", "crash-priv"),
        "[hv] d1 crashed: vector 13 (#GP)",
    );
}

/// A `syscall` in the last bytes of the lower half returns to a non-canonical rip, on
/// which the hypervisor's `iretq` would fault in ring 0: only that guest may die.
#[test]
fn a_non_canonical_return_address_kills_only_that_guest() {
    let o = crash_with_partner("noncanonical", "crash-noncanonical");
    assert_isolated(
        &o,
        "[hv] d1 crashed: would resume at non-canonical rip 0x800000000000",
    );
}

#[test]
fn touching_the_hypervisor_kills_only_that_guest() {
    let o = crash_with_partner("hv-read", "crash-hv");
    assert_isolated(&o, "[hv] d1 crashed: vector 14 (#PF)");
    o.assert_contains("cr2 0xffff830000100000");
}

/// A guest panic goes through its panic handler to `shutdown(crash)`.
#[test]
fn guest_panic_shuts_down_with_reason_crash() {
    let o = crash_with_partner("panic", "crash-panic");
    o.assert_hv_failure()
        .assert_line_starting("[d1] panic: ")
        .assert_contains("[hv] d1 ended: crash; 4098 frames freed")
        .assert_result("[d2] ", TestResult::Success)
        .assert_contains("all domains ended: d0 poweroff, d1 crash, d2 poweroff -> exit failure");
}
