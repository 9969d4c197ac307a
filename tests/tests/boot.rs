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
        .assert_line_starting("[d0] ")
        .assert_result("[d1] ", TestResult::Success)
        .assert_all_domains_ended();
}
