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

/// The last two bytes of the canonical lower half: a `syscall` there returns to
/// 0x8000_0000_0000, which is not canonical.
const LAST_TWO_BYTES: u64 = 0x7fff_ffff_fffe;

/// `crash-noncanonical`: maps an executable page at the very top of the lower half, puts a
/// `syscall` (a null hypercall) in its last two bytes and jumps there. The return address
/// is non-canonical: the hypervisor must end this domain, not fault itself on `iretq`.
pub fn noncanonical(env: &Env) -> ! {
    use pv_guest_kernel::abi::mm::pte;
    use pv_guest_kernel::mm::pv::{PvFrames, PvMmu};
    use pv_guest_kernel::mm::{AddressSpace, FrameSource, Mmu};
    let si = env.si;
    let (Some(mut mmu), Some(mut frames)) = (PvMmu::new(si), PvFrames::from_start_info(si)) else {
        xtf::error("no MMU or page allocator")
    };
    let boot = mmu.base();
    let Ok(mut space) = AddressSpace::create(&mut mmu, &mut frames, boot) else {
        xtf::error("address space")
    };
    let Some(code) = frames.alloc_frame() else {
        xtf::error("no frame")
    };
    // SAFETY: a fresh frame of ours, mapped writable at its start-of-day address.
    unsafe {
        let p = (code.va + 0xffe) as *mut u8;
        p.write_volatile(0x0f);
        p.add(1).write_volatile(0x05); // syscall
    }
    let page = LAST_TWO_BYTES & !0xfff;
    let entry = code.mfn.maddr() | pte::P | pte::US | pte::A; // executable, read-only
    if let Err(e) = space.map_pte(&mut mmu, &mut frames, page, entry) {
        xtf::error(format_args!("map the code page: {e}"));
    }
    // SAFETY: the kernel's own slots are shared by the new space.
    if let Err(e) = unsafe { space.switch_to(&mut mmu) } {
        xtf::error(format_args!("switch: {e}"));
    }
    attempt(
        "execute syscall at 0x7ffffffffffe (it returns to a non-canonical rip)",
        || ops::jump(LAST_TWO_BYTES),
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

    /// Jumps to `to` with `rax` = the `xen_version` hypercall number (a null hypercall
    /// if what is there is a `syscall`); does not come back.
    pub fn jump(to: u64) {
        // SAFETY: a deliberate one-way jump into the test's code page; the hypervisor
        // ends the domain there.
        unsafe {
            asm!(
                "jmp {to}",
                to = in(reg) to,
                in("rax") 17u64,
                in("rdi") 0u64,
                options(noreturn)
            )
        }
    }
}

#[cfg(not(target_os = "none"))]
mod ops {
    //! Host stand-ins: nothing happens.
    pub fn read(_addr: u64) {}
    pub fn ud2() {}
    pub fn int3() {}
    pub fn read_dr7() {}
    pub fn jump(_to: u64) {}
}
