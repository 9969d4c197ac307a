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

#[test]
fn tasks_trapped_under_the_hypervisor() {
    let out = Scenario::new("pvops-trapped")
        .guest("test=tasks pvops=native")
        .run();
    out.assert_hv_success()
        .assert_line_starting("[d1] tasks: platform trapped")
        .assert_result("[d1]", TestResult::Success)
        // It ended through the virtual debug-exit port, having made no hypercall: every
        // privileged operation was trapped and emulated.
        .assert_contains("[hv] d1 wrote 0x10 to the debug-exit port 0xf4: poweroff")
        .assert_line_starting("[hv] d1 ended: poweroff;")
        .assert_all_domains_ended();
    let ended = out.lines_of("[hv] d1 ended:");
    out.expect(
        ended.len() == 1 && ended[0].contains(" frames freed, 0 hypercalls served"),
        "the trapped kernel made no hypercall",
    );
    out.expect(
        !out.serial.contains("[d1] ?"),
        "the UART's divisor latch byte is not printed",
    );
}

#[test]
fn workload_suite_in_all_three_modes() {
    let native = Scenario::new("pvops-workload-native")
        .native("test=workload reps=1")
        .icount(true)
        .timeout(Duration::from_secs(90))
        .run();
    native
        .assert_hv_success()
        .assert_result("", TestResult::Success);
    let pv = Scenario::new("pvops-workload-pv")
        .guest("test=workload reps=1")
        .icount(true)
        .timeout(Duration::from_secs(90))
        .run();
    pv.assert_hv_success()
        .assert_result("[d1]", TestResult::Success);
    let trapped = Scenario::new("pvops-workload-trapped")
        .guest("test=workload reps=1 pvops=native")
        .icount(true)
        .timeout(Duration::from_secs(90))
        .run();
    trapped
        .assert_hv_success()
        .assert_result("[d1]", TestResult::Success);
    for kind in ["cpu", "timer", "switch", "churn"] {
        let name = format!("bench: name=wl-{kind}");
        let n = native.number_after(&name, "median=");
        let p = pv.number_after(&format!("[d1] {name}"), "median=");
        let t = trapped.number_after(&format!("[d1] {name}"), "median=");
        native.expect(n.is_some_and(|v| v > 0), format!("native {kind} figure"));
        pv.expect(p.is_some_and(|v| v > 0), format!("pv {kind} figure"));
        trapped.expect(t.is_some_and(|v| v > 0), format!("trapped {kind} figure"));
    }
    // Pure compute is the same code on the same CPU: the path lengths agree closely.
    let (n, p) = (
        native
            .number_after("bench: name=wl-cpu", "median=")
            .unwrap_or(0),
        pv.number_after("[d1] bench: name=wl-cpu", "median=")
            .unwrap_or(u64::MAX),
    );
    native.expect(
        p.abs_diff(n) * 100 < n,
        format!("cpu: native {n} vs pv {p} within 1%"),
    );
}
