//! Issue 5: one pv_ops guest kernel, three ways. The same `tasks` program (tasks with
//! their own address spaces, context switches, demand paging, page-table churn, timers
//! and sleeping) runs natively on the bare machine, paravirtualized under the
//! hypervisor, and natively under the hypervisor with every privileged operation trapped
//! and emulated.

use std::time::Duration;

use tests::{Scenario, TestResult};

#[test]
fn tasks_native_on_bare_machine() {
    let out = Scenario::new("pvops-native")
        .native("test=tasks")
        .icount(true)
        .timeout(Duration::from_secs(60))
        .run();
    out.assert_hv_success()
        .assert_line_starting("tasks: platform native")
        .assert_result("", TestResult::Success);
    // Bare metal: no hypervisor lines at all.
    out.expect(!out.has_line_starting("[hv]"), "no hypervisor ran");
}

#[test]
fn tasks_paravirtualized() {
    Scenario::new("pvops-pv")
        .guest("test=tasks")
        .run()
        .assert_hv_success()
        .assert_line_starting("[d1] tasks: platform pv")
        .assert_result("[d1]", TestResult::Success)
        .assert_all_domains_ended();
}
