//! Virtual exceptions: bounce frames on the guest stack and the `iret` that undoes them.
//!
//! Layout and semantics are documented for guests in [`abi::vcpu`]. Everything is written
//! and read through [`GuestMem`], so a guest with a bad stack gets an error (and is
//! crashed by the caller), never a hypervisor fault.

use crate::domain::VcpuRegs;
use crate::guest_mem::GuestMem;
use crate::mem::MachineMemory;
use abi::vcpu::{IretFrame, FLAT_USER_CS, FLAT_USER_SS};
use abi::Errno;

/// RFLAGS bits cleared on entry to a handler: TF, DF, NT, RF, AC.
pub const HANDLER_CLEARED_FLAGS: u64 = (1 << 8) | (1 << 10) | (1 << 14) | (1 << 16) | (1 << 18);

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;
/// Bytes below the interrupted stack pointer left untouched (the SysV red zone).
pub const RED_ZONE: u64 = 128;

/// Pushes a bounce frame for `handler` on the guest stack and redirects `regs` to it.
/// `saved_mask` is the upcall mask at the time of the event (recorded in `cs` and as
/// `!rflags.IF`). On error `regs` is unchanged.
pub fn bounce<M: MachineMemory>(
    gm: &mut GuestMem<'_, M>,
    regs: &mut VcpuRegs,
    handler: u64,
    error_code: Option<u64>,
    saved_mask: bool,
) -> Result<(), Errno> {
    let top = regs.rsp.wrapping_sub(RED_ZONE) & !15;
    let rflags = if saved_mask {
        regs.rflags & !RFLAGS_IF
    } else {
        regs.rflags | RFLAGS_IF
    };
    let cs = FLAT_USER_CS | (u64::from(saved_mask) << 32);
    let mut words = [0u64; 8];
    let mut n = 0;
    for w in [regs.rcx, regs.r11].into_iter().chain(error_code).chain([
        regs.rip,
        cs,
        rflags,
        regs.rsp,
        FLAT_USER_SS,
    ]) {
        words[n] = w;
        n += 1;
    }
    let size = 8 * n as u64;
    let sp = top.checked_sub(size).ok_or(Errno::EFAULT)?;
    let mut bytes = [0u8; 64];
    for (i, w) in words[..n].iter().enumerate() {
        bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    gm.write(sp, &bytes[..8 * n])?;
    regs.rsp = sp;
    regs.rip = handler;
    // The handler starts clean, like a hardware interrupt gate (and Xen's bounce): no
    // single-stepping into it, no nested-task, resume or alignment-check flags, DF clear.
    // The interrupted values stay in the frame for iret.
    regs.rflags &= !HANDLER_CLEARED_FLAGS;
    Ok(())
}

/// Performs `iret`: restores the interrupted context from the [`IretFrame`] at the guest
/// stack pointer. Returns the upcall mask the guest asked for (`!rflags.IF`).
pub fn iret<M: MachineMemory>(
    gm: &mut GuestMem<'_, M>,
    regs: &mut VcpuRegs,
) -> Result<bool, Errno> {
    let f: IretFrame = gm.read_obj(regs.rsp)?;
    if !abi::layout::is_canonical(f.rip) || !abi::layout::is_canonical(f.rsp) {
        return Err(Errno::EINVAL);
    }
    regs.rax = f.rax;
    regs.r11 = f.r11;
    regs.rcx = f.rcx;
    regs.rip = f.rip;
    regs.rflags = f.rflags;
    regs.rsp = f.rsp;
    Ok(f.rflags & RFLAGS_IF == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::TestMemory;
    use crate::paging::{map_4k, PTE_RW, PTE_US};
    use crate::pod::Pod;
    use abi::layout::GUEST_VIRT_BASE as B;
    use abi::Mfn;

    fn stack() -> TestMemory {
        let mut mem = TestMemory::new(16);
        let mut next = 2u64;
        let mut alloc = || {
            next += 1;
            Ok(Mfn(next - 1))
        };
        map_4k(&mut mem, Mfn(1), B, Mfn(10), PTE_US | PTE_RW, &mut alloc).unwrap();
        mem
    }

    #[test]
    fn bounce_then_iret_round_trips() {
        let mut mem = stack();
        let mut gm = GuestMem::new(&mut mem, Mfn(1));
        let orig = VcpuRegs {
            rip: 0x1111,
            rsp: B + 4000,
            rcx: 7,
            r11: 8,
            rax: 9,
            rflags: 0x202,
            ..Default::default()
        };
        let mut r = orig;
        bounce(&mut gm, &mut r, 0x2222, Some(0xe), false).unwrap();
        assert_eq!(r.rip, 0x2222);
        assert_eq!(r.rsp % 8, 0);
        let mut words = [0u8; 64];
        gm.read(r.rsp, &mut words).unwrap();
        let w = |i: usize| u64::from_le_bytes(words[8 * i..8 * i + 8].try_into().unwrap());
        assert_eq!(
            [w(0), w(1), w(2), w(3), w(4)],
            [7, 8, 0xe, 0x1111, FLAT_USER_CS]
        );
        assert_eq!(
            [w(5) & RFLAGS_IF, w(6), w(7)],
            [RFLAGS_IF, B + 4000, FLAT_USER_SS]
        );
        assert_eq!(
            (r.rsp + 8 * 8) % 16,
            0,
            "hardware-like frame ends 16-aligned"
        );
        // The guest handler pops rcx, r11 and the error code, then builds the iret frame
        // (rax, r11, rcx, flags) over rip..ss and calls iret.
        let frame_base = r.rsp + 24 - 32;
        let f = IretFrame {
            rax: 9,
            r11: 8,
            rcx: 7,
            flags: 0,
            rip: 0x1111,
            cs: FLAT_USER_CS,
            rflags: 0x202,
            rsp: B + 4000,
            ss: FLAT_USER_SS,
        };
        gm.write(frame_base, f.as_bytes()).unwrap();
        let mut back = VcpuRegs {
            rsp: frame_base,
            ..Default::default()
        };
        assert_eq!(iret(&mut gm, &mut back), Ok(false));
        assert_eq!(
            (back.rip, back.rsp, back.rax, back.rcx, back.r11),
            (0x1111, B + 4000, 9, 7, 8)
        );
    }

    #[test]
    fn handlers_start_without_trap_flag() {
        let mut mem = stack();
        let mut gm = GuestMem::new(&mut mem, Mfn(1));
        let mut r = VcpuRegs {
            rip: 1,
            rsp: B + 4000,
            rflags: 0x202 | (1 << 8) | (1 << 10),
            ..Default::default()
        };
        bounce(&mut gm, &mut r, 0x2222, None, false).unwrap();
        assert_eq!(
            r.rflags & HANDLER_CLEARED_FLAGS,
            0,
            "TF and DF cleared for the handler"
        );
        let mut f = [0u8; 8];
        gm.read(r.rsp + 32, &mut f).unwrap();
        assert_ne!(
            u64::from_le_bytes(f) & (1 << 8),
            0,
            "the frame keeps the interrupted TF"
        );
    }

    #[test]
    fn bad_stacks_are_errors_not_faults() {
        let mut mem = stack();
        let mut gm = GuestMem::new(&mut mem, Mfn(1));
        for rsp in [
            0u64,
            0x1000,
            B + 50,
            0xffff_8300_0000_1000,
            0x0000_8000_0000_0040,
        ] {
            let mut r = VcpuRegs {
                rsp,
                rip: 5,
                ..Default::default()
            };
            assert_eq!(
                bounce(&mut gm, &mut r, 0x2222, None, true),
                Err(Errno::EFAULT),
                "{rsp:#x}"
            );
            assert_eq!((r.rsp, r.rip), (rsp, 5), "unchanged on failure");
            if rsp != B + 50 {
                assert_eq!(iret(&mut gm, &mut r), Err(Errno::EFAULT));
            }
        }
        // Upcall-style frame with the mask saved.
        let mut r = VcpuRegs {
            rsp: B + 4000,
            rflags: 0x202,
            ..Default::default()
        };
        bounce(&mut gm, &mut r, 0x3333, None, true).unwrap();
        let mut cs = [0u8; 8];
        gm.read(r.rsp + 24, &mut cs).unwrap();
        assert_eq!(u64::from_le_bytes(cs) >> 32, 1);
    }
}
