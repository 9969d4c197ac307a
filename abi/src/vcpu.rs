//! The virtual CPU: virtual exceptions, event upcalls, `iret`, time and timers.
//!
//! # Virtual exceptions and upcalls (Xen's x86_64 PV model)
//! `set_trap_table(table)` (hypercall 0) registers handlers: an array of [`TrapInfo`]
//! ended by an entry whose `address` is 0 (at most 256 entries; a null `table` clears
//! them). `set_callbacks(event, failsafe, syscall)` (hypercall 4) registers the event
//! upcall entry point (the other two are accepted and unused for now).
//!
//! When the guest takes an exception it has a handler for (#DE, #DB, #BP, #OF, #BR, #UD,
//! #NM, #TS, #NP, #SS, #GP, #PF, #MF, #AC, #XM), or when an event is pending, unmasked
//! and an event callback is registered, the hypervisor pushes a *bounce frame* on the
//! guest's current stack (below a 128-byte red zone, 16-byte aligned) and continues at
//! the handler:
//!
//! ```text
//! rsp + 0   rcx          (the guest's rcx and r11: the handler pops them first, after
//! rsp + 8   r11           which the stack looks like a hardware exception frame)
//! rsp + 16  error code   (exceptions that have one; absent for upcalls and others)
//! ...       rip, cs, rflags, rsp, ss   of the interrupted context
//! ```
//!
//! `cs` bits 32..=39 hold the upcall mask at the time of the bounce and `rflags.IF` is
//! its inverse. An upcall, and an exception whose [`TrapInfo::flags`] has
//! [`TI_MASK_EVENTS`], sets the upcall mask on entry. For #PF the faulting address is in
//! `vcpu_info.cr2` and the error code's user bit is cleared (the guest kernel runs in
//! ring 3; every fault is a kernel fault to it). If the frame cannot be written (bad
//! stack) or there is no handler, the domain is crashed.
//!
//! To return, the guest builds an [`IretFrame`] at its stack pointer (push `flags`, then
//! rcx, r11, rax over the interrupted rip..ss) and calls `iret` (hypercall 23), which
//! restores rax, r11, rcx, rip, rflags, rsp, and the upcall mask from `rflags.IF`; it
//! does not return to the caller.
//!
//! # Time
//! `vcpu_info.time` ([`crate::shared_info::VcpuTimeInfo`]) is updated seqlock-style
//! (odd `version` = in progress): system time in ns since boot =
//! `system_time + (((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul) >> 32`
//! (a negative `tsc_shift` shifts right). `shared_info.wc_*` is the wall clock at system
//! time 0. `set_timer_op(deadline_ns)` (hypercall 15) arms a one-shot timer that raises
//! `VIRQ_TIMER` at that system time (0 cancels; a deadline in the past fires at once).
//!
//! # Blocking
//! `sched_op(Block)` unmasks events and sleeps until one is pending (returns at once if
//! one already is). `sched_op(Poll, &SchedPoll)` sleeps until one of the listed ports is
//! pending or the timeout (absolute system time, 0 = none) passes; it does not unmask.

/// One virtual trap-table entry (Xen's `trap_info`, 16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrapInfo {
    /// `[GUEST]` exception vector.
    pub vector: u8,
    /// `[GUEST]` bits 0-1: privilege allowed to `int n` into it; bit 2: [`TI_MASK_EVENTS`].
    pub flags: u8,
    /// `[GUEST]` code selector (ignored: guests run with the flat ring-3 selector).
    pub cs: u16,
    /// Padding.
    pub _pad: u32,
    /// `[GUEST]` handler address; 0 ends the table.
    pub address: u64,
}
const _: () = assert!(core::mem::size_of::<TrapInfo>() == 16);

/// `TrapInfo::flags`: set the upcall mask when entering this handler.
pub const TI_MASK_EVENTS: u8 = 1 << 2;

/// The frame `iret` consumes at the guest stack pointer (Xen's `iret_context`, 72 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IretFrame {
    /// Restored rax.
    pub rax: u64,
    /// Restored r11.
    pub r11: u64,
    /// Restored rcx.
    pub rcx: u64,
    /// Flags (bit 8 `VGCF_in_syscall` is accepted and ignored).
    pub flags: u64,
    /// Resume address.
    pub rip: u64,
    /// Code selector (ignored).
    pub cs: u64,
    /// Restored rflags (IF = 1 unmasks upcalls).
    pub rflags: u64,
    /// Restored stack pointer.
    pub rsp: u64,
    /// Stack selector (ignored).
    pub ss: u64,
}
const _: () = assert!(core::mem::size_of::<IretFrame>() == 72);

/// `sched_op(Poll, &SchedPoll)` argument (Xen's `sched_poll`, 24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedPoll {
    /// `[GUEST]` pointer to `nr_ports` u32 ports.
    pub ports: u64,
    /// `[GUEST]` number of ports (1..=128).
    pub nr_ports: u32,
    /// Padding.
    pub _pad: u32,
    /// `[GUEST]` absolute system-time deadline in ns (0: none).
    pub timeout: u64,
}
const _: () = assert!(core::mem::size_of::<SchedPoll>() == 24);

/// Most ports one poll may wait on.
pub const SCHED_POLL_MAX_PORTS: u32 = 128;

/// Offset of `vcpu_info[0].arch.cr2` in shared_info.
pub const VCPU0_CR2_OFFSET: u64 = 16;

/// Code selector of guest code (ring 3, 64-bit), as it appears in bounce frames.
pub const FLAT_USER_CS: u64 = 0x2b;
/// Stack selector of guest code (ring 3), as it appears in bounce frames.
pub const FLAT_USER_SS: u64 = 0x23;

/// The conventional mnemonic of an x86 exception vector (`"#PF"`), or `None` for vectors
/// that are not architectural exceptions.
pub const fn exception_name(vector: u8) -> Option<&'static str> {
    Some(match vector {
        0 => "#DE",
        1 => "#DB",
        2 => "NMI",
        3 => "#BP",
        4 => "#OF",
        5 => "#BR",
        6 => "#UD",
        7 => "#NM",
        8 => "#DF",
        10 => "#TS",
        11 => "#NP",
        12 => "#SS",
        13 => "#GP",
        14 => "#PF",
        16 => "#MF",
        17 => "#AC",
        18 => "#MC",
        19 => "#XM",
        20 => "#VE",
        21 => "#CP",
        _ => return None,
    })
}
