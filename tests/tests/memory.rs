//! Direct paging under QEMU: a guest manages its own page tables, address spaces and
//! reservation through the validated protocol; hostile requests are refused with exact
//! errors; a bad direct page-table write kills only that guest; and building and
//! tearing domains down repeatedly returns every frame.

use tests::{Scenario, TestResult};

/// Two address spaces, mapping/unmapping, switching, freeing, ballooning down and up,
/// writable page tables (mov, xchg, lock cmpxchg): all through the hypervisor.
#[test]
fn guest_manages_its_memory_through_the_protocol() {
    let o = Scenario::new("memory").guest("test=memory").run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_contains("[hv] free frames back to the boot baseline")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
}

/// Every hostile request from the list gets its exact error, the guest and the
/// others stay healthy, and nothing leaks.
#[test]
fn hostile_memory_requests_are_refused() {
    let o = Scenario::new("mm-hostile")
        .guest("test=mm-hostile")
        .guest("test=memory")
        .run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success)
        .assert_result("[d0] ", TestResult::Success)
        .assert_contains("[hv] free frames back to the boot baseline")
        .expect(!o.serial.contains("FAIL:"), "no failed check")
        .expect(!o.serial.contains("crashed"), "nobody crashed");
}

/// A direct store into an L1 table that would map the hypervisor is refused and kills
/// the guest; its partner keeps running.
#[test]
fn bad_writable_page_table_store_kills_only_that_guest() {
    let o = Scenario::new("ptwr-bad")
        .guest("test=ptwr-bad")
        .guest("test=spin yields=40")
        .run();
    o.assert_hv_failure()
        .assert_line_starting("[hv] d1 ptwr: write at ")
        .assert_contains("refused: EPERM")
        .assert_line_starting("[hv] d1 crashed: vector 14 (#PF)")
        .assert_result("[d2] ", TestResult::Success)
        .assert_contains("[hv] free frames back to the boot baseline")
        .expect(o.result_of("[d1] ").is_none(), "d1 never reported a result");
}

/// The memory test rebooted (rebuilt from its module) three times next to a dom0 that
/// outlives it: the free-frame count returns exactly to the boot baseline.
#[test]
fn repeated_create_and_teardown_returns_every_frame() {
    let o = Scenario::new("memory-reboots")
        .hv_args("max_restarts=3")
        .dom0("yields=400")
        .guest("test=memory reboots=3")
        .run();
    o.assert_hv_success()
        .assert_contains("[hv] d1 restarting (generation 3)")
        .assert_contains("cmdline \"test=memory reboots=3 generation=3\"")
        .assert_contains("[hv] free frames back to the boot baseline")
        .assert_contains("all domains ended: d0 poweroff, d1 poweroff -> exit success");
    o.expect(
        o.lines_of("[d1] ")
            .iter()
            .filter(|l| l.starts_with("Test result: SUCCESS"))
            .count()
            == 4,
        "four generations passed",
    );
}

/// The page-table update paths the lab measures all work from a guest (the figures are
/// printed, not asserted: benchmarks are `cargo xtask bench`).
#[test]
fn update_paths_for_measurement_work() {
    let o = Scenario::new("mmperf")
        .icount(true)
        .guest("test=mmperf")
        .guest("test=nullcall n=1000")
        .run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success)
        .assert_line_starting("[d1] mmperf: mmu_update batch 512: ")
        .assert_line_starting("[d1] mmperf: trapped direct store");
}
