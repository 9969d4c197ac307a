//! `test=console-echo lines=N`: console input for dom0. Binds VIRQ_CONSOLE, says it is
//! ready, then reads what is typed on the serial console (`console_io(Read)`), sleeping
//! on VIRQ_CONSOLE whenever nothing is buffered, and echoes each line as
//! `dom0: read: <line>` until it has N lines (3) or a line `quit`.

use alloc::string::String;
use alloc::vec::Vec;

use pv_guest_kernel::abi::event_channel::VIRQ_CONSOLE;
use pv_guest_kernel::abi::hypercall::ShutdownReason;
use pv_guest_kernel::xtf::Checker;
use pv_guest_kernel::{events, hv, println};

pub fn run(lines: u64) -> ! {
    let mut c = Checker::new();
    let port = match events::bind_virq(VIRQ_CONSOLE, events::note) {
        Ok(p) => p,
        Err(e) => pv_guest_kernel::xtf::error(format_args!("bind VIRQ_CONSOLE: {e}")),
    };
    println!("dom0: console input: ready");
    let mut line: Vec<u8> = Vec::new();
    let (mut got, mut bytes, mut wakeups) = (0u64, 0usize, 0u64);
    let mut quit = false;
    while got < lines && !quit {
        let mut buf = [0u8; 64];
        let n = match hv::console_read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                c.fail("console_read", e);
                break;
            }
        };
        if n == 0 {
            if let Err(e) = events::wait_any(&[port]) {
                c.fail("wait for VIRQ_CONSOLE", e);
                break;
            }
            wakeups += 1;
            continue;
        }
        bytes += n;
        for &b in &buf[..n] {
            if b != b'\n' && b != b'\r' {
                line.push(b);
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            println!("dom0: read: {text}");
            quit |= text == "quit";
            got += 1;
            line.clear();
        }
    }
    println!("dom0: {got} lines, {bytes} bytes, {wakeups} VIRQ_CONSOLE wake-ups");
    // Input typed before dom0 first looks is read without waiting; VIRQ_CONSOLE was
    // raised for it all the same (its port fired or is pending), which is what this
    // checks.
    c.check(
        "VIRQ_CONSOLE announced the input",
        wakeups > 0 || events::has_fired(port) || events::is_pending(port),
    );
    c.check_eq(
        "a domU-style read of nothing returns 0",
        Ok(0),
        hv::console_read(&mut []),
    );
    let ok = c.report();
    hv::shutdown(if ok {
        ShutdownReason::Poweroff
    } else {
        ShutdownReason::Crash
    })
}
