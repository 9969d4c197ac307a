//! Hypercall ABI scenarios: hostile arguments, multicall, and the second entry path.

use tests::{Scenario, TestResult};

/// Unknown numbers and sub-ops, bad pointers (hypervisor, unmapped, non-canonical, past
/// the end, read-only) and huge lengths each get their exact error code, and the guest
/// survives all of them.
#[test]
fn bad_numbers_pointers_and_lengths_get_exact_errors() {
    let outcome = Scenario::new("hypercall-badptr").guest("test=badptr").run();
    outcome
        .assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_contains("[d1] ok: hypercall 1000 -> -38 (ENOSYS)")
        .assert_contains("(hypervisor region) -> -14 (EFAULT)")
        .assert_contains("(non-canonical) -> -14 (EFAULT)")
        .assert_contains("(running past the end of memory) -> -14 (EFAULT)")
        .assert_contains("bytes -> -7 (E2BIG)")
        .assert_contains("into the read-only L4 at pt_base -> -14 (EFAULT)")
        .assert_contains("with reason 2 -> -22 (EINVAL)")
        .expect(!outcome.serial.contains("FAIL:"), "no failed check")
        .expect(!outcome.serial.contains("crashed"), "nothing crashed");
}

/// One multicall batch with mixed calls reports exact per-entry results.
#[test]
fn multicall_reports_per_entry_results() {
    let outcome = Scenario::new("hypercall-multicall")
        .guest("test=multicall")
        .run();
    outcome
        .assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_contains("[d1] multicall: this line was written by entry 0 of a batch")
        .assert_contains("entry 2: hypercall 999 -> -38 (ENOSYS)")
        .assert_contains("entry 4: nested multicall -> -22 (EINVAL)")
        .assert_contains("entry 5: console_io write at 0x1000 -> -14 (EFAULT)")
        .assert_contains("entry 7: xen_version(PageSize) -> 4096");
}

/// `int 0x82` reaches the same table as `syscall`.
#[test]
fn int82_path_agrees_with_syscall() {
    Scenario::new("hypercall-int82")
        .guest("test=int82")
        .run()
        .assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_contains("[d1] int82: this line was written through int 0x82");
}
