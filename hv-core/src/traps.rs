//! Virtual exceptions, two ways:
//!
//! - **Xen-style** (a guest that registered a trap table): bounce frames on the guest
//!   stack ([`bounce`]) and the `iret` hypercall that undoes them ([`iret`]); layout and
//!   semantics are documented for guests in [`abi::vcpu`].
//! - **Native** (a guest that loaded a virtual IDT with `lidt` and registered no trap
//!   table): the 16-byte gate is read from the virtual IDT ([`read_gate`]) and a
//!   hardware-format frame is pushed ([`push_hw_frame`]), exactly what the CPU pushes for
//!   an exception or interrupt without a privilege change; the guest returns with its
//!   own `iretq` (ring 3 to ring 3 needs no hypervisor).
//!
//! Everything is written and read through [`GuestMem`], so a guest with a bad stack or
//! IDT gets an error (and is crashed or sent a fault by the caller), never a hypervisor
//! fault.

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

/// RFLAGS bits the CPU clears when it delivers through an IDT gate (TF, NT, RF; IF is
/// the *virtual* IF, handled by the caller).
pub const GATE_CLEARED_FLAGS: u64 = (1 << 8) | (1 << 14) | (1 << 16);

/// A usable 64-bit IDT gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Handler address (canonical).
    pub target: u64,
    /// Trap gate (type 0xF: IF unchanged) rather than interrupt gate (0xE: IF cleared).
    pub trap: bool,
}

/// Why a gate cannot be used; the CPU raises `#GP(vector * 8 + 2)` for each (a
/// not-present gate is `#NP` on hardware; reported as `#GP` here, see `hv::native`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateError {
    /// `16 * vector + 15` is beyond the IDT limit.
    BeyondLimit,
    /// The gate's 16 bytes cannot be read through the guest's page tables.
    Unreadable,
    /// P bit clear.
    NotPresent,
    /// Type other than 0xE (interrupt gate) or 0xF (trap gate).
    BadType,
    /// Target offset not canonical.
    NonCanonical,
}

impl GateError {
    /// Short description for logs.
    pub const fn name(self) -> &'static str {
        match self {
            GateError::BeyondLimit => "beyond the IDT limit",
            GateError::Unreadable => "IDT not readable",
            GateError::NotPresent => "gate not present",
            GateError::BadType => "not an interrupt or trap gate",
            GateError::NonCanonical => "non-canonical handler",
        }
    }
}

/// Reads and checks the gate for `vector` in the virtual IDT at `base`/`limit` (from
/// `lidt`). The selector, IST and DPL fields are ignored: there is no privilege change
/// and no stack switch, and the frame always carries the guest's real selectors.
pub fn read_gate<M: MachineMemory>(
    gm: &mut GuestMem<'_, M>,
    base: u64,
    limit: u16,
    vector: u8,
) -> Result<Gate, GateError> {
    let off = 16 * u64::from(vector);
    if off + 15 > u64::from(limit) {
        return Err(GateError::BeyondLimit);
    }
    let mut g = [0u8; 16];
    gm.read(base.wrapping_add(off), &mut g)
        .map_err(|_| GateError::Unreadable)?;
    let attr = g[5];
    if attr & 0x80 == 0 {
        return Err(GateError::NotPresent);
    }
    let trap = match attr & 0xf {
        0xe => false,
        0xf => true,
        _ => return Err(GateError::BadType),
    };
    let target = u64::from(u16::from_le_bytes([g[0], g[1]]))
        | u64::from(u16::from_le_bytes([g[6], g[7]])) << 16
        | u64::from(u32::from_le_bytes([g[8], g[9], g[10], g[11]])) << 32;
    if !abi::layout::is_canonical(target) {
        return Err(GateError::NonCanonical);
    }
    Ok(Gate { target, trap })
}

/// Pushes the hardware frame of an exception or interrupt taken without a privilege
/// change and redirects `regs` to `target`: the stack pointer is aligned down to 16,
/// then SS, RSP, RFLAGS, CS, RIP and the error code (if any) are pushed, as the CPU does
/// in 64-bit mode. CS/SS are the guest's real selectors ([`FLAT_USER_CS`]/
/// [`FLAT_USER_SS`]); RFLAGS.IF in the image is `virtual_if`. TF, NT and RF are cleared
/// for the handler (the caller clears the virtual IF for an interrupt gate). No red zone
/// is skipped: hardware does not know about one. On error `regs` is unchanged.
pub fn push_hw_frame<M: MachineMemory>(
    gm: &mut GuestMem<'_, M>,
    regs: &mut VcpuRegs,
    target: u64,
    error_code: Option<u64>,
    virtual_if: bool,
) -> Result<(), Errno> {
    let top = regs.rsp & !15;
    let rflags = (regs.rflags & !RFLAGS_IF) | if virtual_if { RFLAGS_IF } else { 0 };
    let mut words = [0u64; 6];
    let mut n = 0;
    for w in error_code
        .into_iter()
        .chain([regs.rip, FLAT_USER_CS, rflags, regs.rsp, FLAT_USER_SS])
    {
        words[n] = w;
        n += 1;
    }
    let sp = top.checked_sub(8 * n as u64).ok_or(Errno::EFAULT)?;
    let mut bytes = [0u8; 48];
    for (i, w) in words[..n].iter().enumerate() {
        bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    gm.write(sp, &bytes[..8 * n])?;
    regs.rsp = sp;
    regs.rip = target;
    regs.rflags &= !GATE_CLEARED_FLAGS;
    Ok(())
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

    /// A 64-bit gate: `target`, selector 0x10, attribute byte `attr`.
    fn gate(target: u64, attr: u8) -> [u8; 16] {
        let mut g = [0u8; 16];
        g[0..2].copy_from_slice(&(target as u16).to_le_bytes());
        g[2..4].copy_from_slice(&0x10u16.to_le_bytes());
        g[5] = attr;
        g[6..8].copy_from_slice(&((target >> 16) as u16).to_le_bytes());
        g[8..12].copy_from_slice(&((target >> 32) as u32).to_le_bytes());
        g
    }

    #[test]
    fn gates_are_read_and_checked_like_hardware() {
        let mut mem = stack();
        let mut gm = GuestMem::new(&mut mem, Mfn(1));
        let idt = B + 1024;
        let h = 0xffff_ffff_8010_2345u64;
        gm.write(idt + 16 * 14, &gate(h, 0x8e)).unwrap();
        gm.write(idt + 16 * 3, &gate(h, 0xef)).unwrap(); // trap gate, DPL 3
        gm.write(idt + 16 * 5, &gate(h, 0x0e)).unwrap(); // not present
        gm.write(idt + 16 * 6, &gate(h, 0x8c)).unwrap(); // call gate
        gm.write(idt + 16 * 7, &gate(0x0000_8000_0000_0000, 0x8e))
            .unwrap();
        let lim = 16 * 32 - 1;
        assert_eq!(
            read_gate(&mut gm, idt, lim, 14),
            Ok(Gate {
                target: h,
                trap: false
            })
        );
        assert_eq!(
            read_gate(&mut gm, idt, lim, 3),
            Ok(Gate {
                target: h,
                trap: true
            })
        );
        assert_eq!(read_gate(&mut gm, idt, lim, 5), Err(GateError::NotPresent));
        assert_eq!(read_gate(&mut gm, idt, lim, 6), Err(GateError::BadType));
        assert_eq!(
            read_gate(&mut gm, idt, lim, 7),
            Err(GateError::NonCanonical)
        );
        // The whole 16-byte gate must be inside the limit.
        assert_eq!(
            read_gate(&mut gm, idt, 16 * 14 + 14, 14),
            Err(GateError::BeyondLimit)
        );
        assert!(read_gate(&mut gm, idt, 16 * 14 + 15, 14).is_ok());
        // Gate 255 lies on the next (unmapped) page.
        assert_eq!(
            read_gate(&mut gm, idt, 0xffff, 255),
            Err(GateError::Unreadable)
        );
        // An IDT in unmapped or hypervisor memory.
        for base in [0u64, B + 4096, 0xffff_8000_0000_0000, u64::MAX - 8] {
            assert_eq!(
                read_gate(&mut gm, base, 0xffff, 14),
                Err(GateError::Unreadable),
                "{base:#x}"
            );
        }
    }

    #[test]
    fn hardware_frames_are_aligned_and_carry_the_virtual_if() {
        let mut mem = stack();
        let mut gm = GuestMem::new(&mut mem, Mfn(1));
        let mut r = VcpuRegs {
            rip: 0x1234,
            rsp: B + 4000 - 8, // not 16-aligned
            rflags: 0x202 | (1 << 8) | (1 << 10) | (1 << 14),
            ..Default::default()
        };
        let orig = r;
        push_hw_frame(&mut gm, &mut r, 0x5678, Some(0x2a), false).unwrap();
        assert_eq!(r.rip, 0x5678);
        assert_eq!(r.rsp, ((B + 4000 - 8) & !15) - 48);
        let mut words = [0u8; 48];
        gm.read(r.rsp, &mut words).unwrap();
        let w = |i: usize| u64::from_le_bytes(words[8 * i..8 * i + 8].try_into().unwrap());
        assert_eq!(
            [w(0), w(1), w(2), w(4), w(5)],
            [0x2a, 0x1234, FLAT_USER_CS, orig.rsp, FLAT_USER_SS]
        );
        assert_eq!(
            w(3),
            orig.rflags & !RFLAGS_IF,
            "image IF = virtual IF (clear)"
        );
        assert_eq!(r.rflags & GATE_CLEARED_FLAGS, 0);
        assert_ne!(r.rflags & (1 << 10), 0, "DF is not cleared by a gate");
        // Without an error code, virtual IF set.
        let mut r2 = orig;
        push_hw_frame(&mut gm, &mut r2, 0x5678, None, true).unwrap();
        assert_eq!(r2.rsp, ((B + 4000 - 8) & !15) - 40);
        let mut f = [0u8; 8];
        gm.read(r2.rsp + 16, &mut f).unwrap();
        assert_ne!(u64::from_le_bytes(f) & RFLAGS_IF, 0);
        // A stack that is not mapped writable: error, registers unchanged.
        for rsp in [0u64, 0x20, B + 20, 0xffff_8300_0000_1000] {
            let mut r3 = VcpuRegs {
                rsp,
                rip: 9,
                ..Default::default()
            };
            assert!(push_hw_frame(&mut gm, &mut r3, 1, Some(0), true).is_err());
            assert_eq!((r3.rsp, r3.rip), (rsp, 9));
        }
    }
}
