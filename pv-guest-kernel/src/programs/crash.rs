//! `crash-*`: each does something the hypervisor must kill the domain for, after saying
//! what. Surviving is a failure. On the host the faulting instructions are not executed
//! (so the programs report survival there).

use pv_guest_kernel::{println, xtf};

use super::Env;

/// An address inside the hypervisor's region (supervisor-only for guests).
const HV_ADDR: u64 = 0xffff_8300_0010_0000;

fn attempt(what: &str, op: fn()) -> ! {
    println!("about to {what}");
    op();
    xtf::failure("survived")
}

pub fn null(_env: &Env) -> ! {
    attempt("read from address 0", || ops::read(0))
}

pub fn ud(_env: &Env) -> ! {
    attempt("execute ud2", ops::ud2)
}

pub fn int3(_env: &Env) -> ! {
    attempt("execute int3", ops::int3)
}

pub fn privileged(_env: &Env) -> ! {
    // hlt, cli, out... are emulated now (trap-and-emulate); reading a debug register is
    // privileged and deliberately not emulated, so it still ends in #GP.
    attempt(
        "read dr7 in ring 3 (privileged, not emulated)",
        ops::read_dr7,
    )
}

pub fn hv(_env: &Env) -> ! {
    attempt(
        "read from the hypervisor region at 0xffff830000100000",
        || ops::read(HV_ADDR),
    )
}

pub fn panic(_env: &Env) -> ! {
    println!("about to panic");
    panic!("deliberate panic (crash-panic test)")
}

#[cfg(target_os = "none")]
mod ops {
    use core::arch::asm;

    /// Loads 8 bytes from `addr` into a scratch register.
    pub fn read(addr: u64) {
        // SAFETY: a deliberate fault: the load targets memory the domain cannot access, so
        // the hypervisor kills the domain. Should it complete, it only wrote a scratch
        // register the asm declares as an output.
        unsafe {
            asm!("mov {tmp}, qword ptr [{addr}]", addr = in(reg) addr, tmp = out(reg) _, options(nostack, readonly))
        };
    }

    pub fn ud2() {
        // SAFETY: a deliberate #UD; if it were somehow skipped, no state changed.
        unsafe { asm!("ud2", options(nostack, nomem)) };
    }

    pub fn int3() {
        // SAFETY: a deliberate #BP; if it returned, no state changed.
        unsafe { asm!("int3", options(nostack, nomem)) };
    }

    pub fn read_dr7() {
        // SAFETY: a deliberate #GP (debug registers are privileged and we run in ring 3);
        // if it returned, only a scratch register changed.
        unsafe { asm!("mov {}, dr7", out(reg) _, options(nostack, nomem)) };
    }
}

#[cfg(not(target_os = "none"))]
mod ops {
    //! Host stand-ins: nothing happens.
    pub fn read(_addr: u64) {}
    pub fn ud2() {}
    pub fn int3() {}
    pub fn read_dr7() {}
}
