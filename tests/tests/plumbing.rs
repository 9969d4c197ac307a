//! The bare-metal plumbing the split-driver framework stands on: the kernel heap, the
//! guest kernel's `Platform` (grants, foreign mappings, event channels), xenstore and
//! console bootstrap for domUs (the builder's store/console pages, dom0's domain
//! enumeration and VIRQ_DOM_EXC), and console input for dom0.

use tests::{Scenario, TestResult};

#[test]
fn kernel_heap_serves_alloc() {
    let o = Scenario::new("plumb-heap")
        .guest("test=heap")
        .guest("test=heap heap_kib=512")
        .run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success)
        .assert_contains("[d1] heap: 1048576 bytes")
        .assert_contains("[d2] heap: 524288 bytes")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
}

#[test]
fn heap_exhaustion_is_a_clear_panic() {
    let o = Scenario::new("plumb-heap-oom")
        .guest("test=heap heap_kib=256 oom=1")
        .run();
    o.assert_hv_failure()
        .assert_contains("[d1] heap: 8 checks passed, 0 failed")
        .assert_line_starting("[d1] panic: ")
        .assert_contains("heap: out of memory: 65536 bytes (align 1) requested")
        .assert_contains("[hv] d1 ended: crash")
        .assert_contains("[hv] free frames back to the boot baseline")
        .expect(o.result_of("[d1] ").is_none(), "d1 never reported a result");
}

#[test]
fn platform_grants_maps_and_rings_within_one_domain() {
    let o = Scenario::new("plumb-grant-self")
        .guest("test=grant-self")
        .run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_contains("[d1] grant-self: 200 ring round trips")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
}

#[test]
fn dom0_finds_domus_maps_their_store_pages_and_serves_rings_over_grants() {
    let o = Scenario::new("plumb-ring")
        .dom0("test=ring-backend maps=100")
        .guest("test=ring-front rounds=500")
        .guest("test=ring-front rounds=300")
        .run();
    o.assert_hv_success()
        .assert_result("[d0] ", TestResult::Success)
        .assert_result("[d1] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success)
        .assert_contains("[d0] dom0: d1 state 0 store mfn ")
        .assert_contains("[d0] dom0: d1: served 500 requests")
        .assert_contains("[d0] dom0: d2: served 300 requests")
        .assert_contains("[d1] ring-front: store mfn ")
        .assert_contains("[hv] free frames back to the boot baseline")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
}

#[test]
fn dom0_reads_console_input() {
    let long = "x".repeat(100);
    let o = Scenario::new("plumb-console-input")
        .dom0("test=console-echo lines=4")
        .input_after(
            "[d0] dom0: console input: ready",
            format!("hello\nworld 42\n{long}\nquit\n"),
        )
        .run();
    o.assert_hv_success()
        .assert_result("[d0] ", TestResult::Success)
        .assert_contains("[d0] dom0: read: hello\n")
        .assert_contains("[d0] dom0: read: world 42\n")
        .assert_contains(&format!("[d0] dom0: read: {long}\n"))
        .assert_contains("[d0] dom0: read: quit\n")
        .assert_contains("[d0] dom0: 4 lines, 121 bytes");
}
