//! The domU kernel: XTF-style test programs.
//!
//! The command line (space-separated `key=value`) selects a program with `test=<name>`
//! (default `hello`); see [`programs::PROGRAMS`] for the list. Every program ends with
//! exactly one `Test result: ...` line and a shutdown (poweroff on success, crash
//! otherwise), except the `crash-*` programs, `ptwr-bad` and `trap-bad-stack`, which
//! must be killed by the hypervisor before they print a result, and `trap-oops`, which
//! must end in the runtime's oops (if any of them survives it prints
//! `Test result: FAILURE (survived)`).
#![cfg_attr(target_os = "none", no_std, no_main)]

extern crate alloc;

mod programs;

use pv_guest_kernel::abi::start_info::StartInfo;

pv_guest_kernel::entry!(kmain);

fn kmain(si: &'static StartInfo) -> ! {
    programs::run(si)
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "pv-guest-kernel is a bare-metal PV kernel for x86_64-unknown-none; it runs under the \
         hypervisor (cargo xtask run), not on the host"
    );
    std::process::exit(1);
}
