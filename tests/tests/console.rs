//! Issue 7 on the real hypervisor: dom0 runs xenstored and the PV console backend
//! (`xenstored=1`), guests connect their consoles through the xenbus handshake and print
//! through their console rings; dom0 prints each line as `[domN] ...` (with the
//! hypervisor's unprefixed `console_io(WriteLine)`), routes keyboard input, survives a
//! hostile xenstore client, releases every domain and powers off.

use tests::{Outcome, Scenario, TestResult};

fn ring_lines(o: &Outcome, d: u16) -> Vec<String> {
    o.lines_of(&format!("[dom{d}] "))
        .into_iter()
        .map(str::to_string)
        .collect()
}

fn hello(d: u16, lines: std::ops::RangeInclusive<u32>) -> Vec<String> {
    lines
        .map(|k| format!("console-ring: hello from domain {d} line {k}"))
        .collect()
}

#[test]
fn two_guests_handshake_print_reconnect_and_take_input() {
    let o = Scenario::new("console-two-guests")
        .dom0("xenstored=1 console_to=2")
        .guest("test=console lines=3 reconnect=1")
        .guest("test=console lines=3 echo=2")
        .input_after(
            "[dom2] console-ring: ready for input",
            "hello ring\r\nsecond line\n",
        )
        .run();
    o.assert_hv_success()
        .assert_all_domains_ended()
        .assert_result("[d0] ", TestResult::Success)
        .assert_result("[d1] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success)
        // The handshake, as the guests read it back from xenstore.
        .assert_contains("[d0] xenstored: introduced d1 (generation 0")
        .assert_contains("[d0] xenstored: introduced d2 (generation 0")
        .assert_contains("[d1] console: device console/0, backend d0")
        .assert_contains("[d1] console: connected (frontend Connected, backend Connected)")
        .assert_contains("[d2] console: connected (frontend Connected, backend Connected)")
        .assert_contains("[d1] console: closed (frontend Closed, backend ")
        .assert_contains("[d1] console: reconnected (frontend Connected, backend Connected)")
        .assert_contains("[d2] console: echoed 2 input lines")
        // dom0 let go of everything and the frames came back.
        .assert_contains("[d0] xenstored: released d1 (ended)")
        .assert_contains("[d0] xenstored: released d2 (ended)")
        .assert_contains("[d0] ok: every foreign mapping released")
        .assert_contains("[hv] free frames back to the boot baseline")
        .expect(!o.serial.contains("FAIL:"), "no failed check")
        .expect(
            !o.serial.contains("[d0] [dom"),
            "ring lines carry no hypervisor prefix",
        );
    // Every line through the ring, exactly and in order per domain.
    assert_eq!(ring_lines(&o, 1), hello(1, 1..=6), "{}", o.report());
    let mut want2 = hello(2, 1..=3);
    want2.extend(
        [
            "console-ring: ready for input",
            "console-ring: echo: hello ring",
            "console-ring: echo: second line",
        ]
        .map(String::from),
    );
    assert_eq!(ring_lines(&o, 2), want2, "{}", o.report());
}

#[test]
fn a_hostile_xenstore_client_is_refused_and_dropped_others_keep_printing() {
    let o = Scenario::new("console-hostile")
        .dom0("xenstored=1")
        .guest("test=console lines=20")
        .guest("test=xs-hostile peer=1")
        .run();
    o.assert_hv_success()
        .assert_result("[d0] ", TestResult::Success)
        .assert_result("[d1] ", TestResult::Success)
        .assert_result("[d2] ", TestResult::Success)
        .assert_contains("[d2] xs-hostile: read d1's console device: Err(EACCES)")
        .assert_contains("[d2] xs-hostile: write into dom0's home: Err(EACCES)")
        .assert_contains("[d2] xs-hostile: flood refused at Some((")
        .assert_contains("[d2] xs-hostile: garbage header written: Ok(16)")
        .assert_contains("[d0] xenstored: d2 connection dropped: BadHeader(")
        .assert_contains("[d0] xenstored: released d2 (ended)")
        .assert_contains("[d0] ok: every foreign mapping released")
        .assert_contains("[hv] free frames back to the boot baseline")
        .expect(!o.serial.contains("panic"), "nobody panics")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
    assert_eq!(ring_lines(&o, 1), hello(1, 1..=20), "{}", o.report());
    assert!(ring_lines(&o, 2).is_empty(), "d2 never had a console line");
}

#[test]
fn bulk_output_through_the_ring_arrives_whole() {
    let o = Scenario::new("console-bulk")
        .dom0("xenstored=1")
        .guest("test=console lines=1 bytes=65536")
        .run();
    o.assert_hv_success()
        .assert_result("[d0] ", TestResult::Success)
        .assert_result("[d1] ", TestResult::Success)
        .assert_line_starting("[d1] console: 65536 bytes through the ring in ");
    let bulk: Vec<String> = ring_lines(&o, 1)
        .into_iter()
        .filter(|l| l.starts_with("bulk "))
        .collect();
    assert_eq!(bulk.len(), 1024, "{}", o.report());
    for (i, l) in bulk.iter().enumerate() {
        assert_eq!(l, &format!("bulk {i:08} {}", "y".repeat(63 - 14)));
    }
}

#[test]
fn grant_map_unmap_and_copy_of_a_page_are_measured() {
    let o = Scenario::new("grantperf")
        .guest("test=grantperf n=100")
        .run();
    o.assert_hv_success()
        .assert_result("[d1] ", TestResult::Success)
        .assert_line_starting("[d1] bench: name=grant_map_unmap_4k unit=cycles batch=1 n=100 ")
        .assert_line_starting("[d1] bench: name=grant_copy_4k unit=cycles batch=1 n=100 ");
    for name in ["grant_map_unmap_4k", "grant_copy_4k"] {
        let median = o.number_after(&format!("[d1] bench: name={name} "), "median=");
        assert!(median.is_some_and(|m| m > 0), "{name}: {median:?}");
    }
}

/// A guest rebuilt by the hypervisor (`max_restarts`): dom0 releases the old instance
/// and introduces the new generation, whose console connects afresh.
#[test]
fn a_rebuilt_guest_is_released_and_introduced_again() {
    let o = Scenario::new("console-rebuild")
        .hv_args("max_restarts=1")
        .dom0("xenstored=1")
        .guest("test=console lines=2 reboots=1")
        .run();
    o.assert_hv_success()
        .assert_contains("[hv] d1 restarting (generation 1)")
        .assert_contains("[d0] xenstored: introduced d1 (generation 0")
        .assert_contains("[d0] xenstored: released d1 (rebuilt)")
        .assert_contains("[d0] xenstored: introduced d1 (generation 1")
        .assert_contains("[d0] xenstored: released d1 (ended)")
        .assert_contains("[d0] ok: every foreign mapping released")
        .assert_contains("[hv] free frames back to the boot baseline")
        .expect(!o.serial.contains("FAIL:"), "no failed check");
    let mut want = hello(1, 1..=2);
    want.extend(hello(1, 1..=2));
    assert_eq!(ring_lines(&o, 1), want, "{}", o.report());
}
