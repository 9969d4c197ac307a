//! Virtual exceptions and the event upcall: entry stubs, the trap table, a registry of
//! Rust handlers, the default handler (an oops) and the way back (`iret`).
//!
//! # How an exception reaches Rust
//! The hypervisor bounces an exception (or an event upcall) onto the current stack
//! ([`abi::vcpu`]): `rcx`, `r11`, the error code (for vectors that have one), then `rip`,
//! `cs` (upcall mask saved in bits 32..=39), `rflags`, `rsp`, `ss`, and jumps to the
//! vector's stub. The stub pops rcx and r11 back into their registers, pushes a zero
//! error code if the CPU provides none (so every frame looks the same) and the vector
//! number, and jumps to a common part that saves every general-purpose register and a
//! `cr2` slot, aligns the stack and calls Rust with a pointer to the resulting
//! [`ExceptionFrame`]:
//!
//! ```text
//!  low  cr2 r15 r14 r13 r12 r11 r10 r9 r8 rbp rdi rsi rdx rcx rbx rax  vector error_code
//!       rip cs rflags rsp ss   high  (the bounce frame's upper part)
//! ```
//!
//! Rust looks up the vector's [`Handler`]; it may change any saved register (typically
//! `rip`, to skip the faulting instruction, or `rax`) and returns [`Resume::Return`], or
//! [`Resume::Unhandled`] to fall through to [`oops`]. The common part then restores the
//! registers from the (possibly modified) frame, drops vector and error code, pushes the
//! rest of an [`abi::vcpu::IretFrame`] (`flags` = 0, rcx, r11, rax) over rip..ss and
//! calls `iret`, which restores rax, rcx, r11, rip, rflags, rsp and the upcall mask
//! (from `rflags.IF`, i.e. as it was when the exception hit).
//!
//! Events: #PF is entered with upcalls masked ([`abi::vcpu::TI_MASK_EVENTS`]) so that
//! an upcall cannot overwrite `vcpu_info.cr2` before the handler read it (Rust copies it
//! into [`ExceptionFrame::cr2`] first thing); other exceptions keep the mask as it was.
//! The event upcall uses the same path with the pseudo-vector [`UPCALL_VECTOR`] and goes
//! to [`crate::events`].
//!
//! Handlers run on the interrupted stack, below the 128-byte red zone the hypervisor
//! leaves (the kernel itself is built without a red zone). A fault inside a handler nests
//! the same way. Direction flag: cleared before Rust runs.
//!
//! On the host (`cargo test`) there are no stubs: [`init`] registers placeholder
//! addresses with the fake hypervisor, and [`dispatch`] can be called directly.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use abi::hypercall::ShutdownReason;
use abi::vcpu::{TrapInfo, FLAT_USER_CS, TI_MASK_EVENTS};
use abi::Errno;

use crate::shared::SharedPage;
use crate::{hv, println};

/// #DE: divide error.
pub const DE: u8 = 0;
/// #DB: debug.
pub const DB: u8 = 1;
/// #BP: breakpoint (`int3`; a trap: `rip` is already past the instruction).
pub const BP: u8 = 3;
/// #OF: overflow (`into`, invalid in 64-bit mode).
pub const OF: u8 = 4;
/// #BR: bound range (`bound`, invalid in 64-bit mode).
pub const BR: u8 = 5;
/// #UD: invalid opcode.
pub const UD: u8 = 6;
/// #NM: device not available.
pub const NM: u8 = 7;
/// #TS: invalid TSS.
pub const TS: u8 = 10;
/// #NP: segment not present.
pub const NP: u8 = 11;
/// #SS: stack-segment fault.
pub const SS: u8 = 12;
/// #GP: general protection (privileged instructions in ring 3: error code 0).
pub const GP: u8 = 13;
/// #PF: page fault (address in [`ExceptionFrame::cr2`]; the error code's user bit is
/// cleared by the hypervisor: to the guest kernel every fault is a kernel fault).
pub const PF: u8 = 14;
/// #MF: x87 floating-point error.
pub const MF: u8 = 16;
/// #AC: alignment check.
pub const AC: u8 = 17;
/// #XM: SIMD floating-point error.
pub const XM: u8 = 19;

/// The vectors the hypervisor delivers to guest handlers; others crash the domain.
pub const DELIVERABLE: [u8; 15] = [DE, DB, BP, OF, BR, UD, NM, TS, NP, SS, GP, PF, MF, AC, XM];

/// Pseudo-vector of the event upcall in [`ExceptionFrame::vector`].
pub const UPCALL_VECTOR: u64 = 0x100;

/// #PF error-code bits.
pub mod pf {
    /// The page was present (a protection fault).
    pub const PRESENT: u64 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// Ring 3 (never set in what guests see; see [`super::PF`]).
    pub const USER: u64 = 1 << 2;
    /// A reserved bit was set in a page-table entry.
    pub const RSVD: u64 = 1 << 3;
    /// An instruction fetch.
    pub const FETCH: u64 = 1 << 4;
}

/// True if the CPU pushes an error code for `vector` (and so the bounce frame has one).
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

/// True if the hypervisor delivers `vector` to a guest handler.
pub const fn is_deliverable(vector: u8) -> bool {
    matches!(
        vector,
        0 | 1 | 3 | 4 | 5 | 6 | 7 | 10 | 11 | 12 | 13 | 14 | 16 | 17 | 19
    )
}

/// Mnemonic of an exception vector (`"#PF"`), `"upcall"`, or `"?"`.
pub const fn vector_name(vector: u64) -> &'static str {
    if vector == UPCALL_VECTOR {
        return "upcall";
    }
    if vector > 255 {
        return "?";
    }
    match abi::vcpu::exception_name(vector as u8) {
        Some(name) => name,
        None => "?",
    }
}

/// The interrupted context as the entry stubs save it (see the module docs for the
/// layout). Handlers may change any field but `vector` and `error_code` (which are
/// dropped on the way back) and `cs`/`ss` (ignored by `iret`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExceptionFrame {
    /// #PF: the faulting address (copied from `vcpu_info.cr2` on entry); else 0.
    pub cr2: u64,
    /// Saved r15.
    pub r15: u64,
    /// Saved r14.
    pub r14: u64,
    /// Saved r13.
    pub r13: u64,
    /// Saved r12.
    pub r12: u64,
    /// Saved r11.
    pub r11: u64,
    /// Saved r10.
    pub r10: u64,
    /// Saved r9.
    pub r9: u64,
    /// Saved r8.
    pub r8: u64,
    /// Saved rbp.
    pub rbp: u64,
    /// Saved rdi.
    pub rdi: u64,
    /// Saved rsi.
    pub rsi: u64,
    /// Saved rdx.
    pub rdx: u64,
    /// Saved rcx.
    pub rcx: u64,
    /// Saved rbx.
    pub rbx: u64,
    /// Saved rax.
    pub rax: u64,
    /// Exception vector, or [`UPCALL_VECTOR`].
    pub vector: u64,
    /// The error code (0 for vectors without one).
    pub error_code: u64,
    /// Where the interrupted code resumes (faults: the faulting instruction; traps such
    /// as #BP: the next one).
    pub rip: u64,
    /// Code selector; bits 32..=39 hold the upcall mask at the time of the bounce.
    pub cs: u64,
    /// Flags; `IF` is the inverse of the saved upcall mask (restored by `iret`).
    pub rflags: u64,
    /// The interrupted stack pointer.
    pub rsp: u64,
    /// Stack selector.
    pub ss: u64,
}
const _: () = assert!(core::mem::size_of::<ExceptionFrame>() == 23 * 8);
const _: () = assert!(core::mem::offset_of!(ExceptionFrame, rax) == 15 * 8);
const _: () = assert!(core::mem::offset_of!(ExceptionFrame, rip) == 18 * 8);

/// RFLAGS.IF: set in a saved frame if upcalls were enabled.
pub const RFLAGS_IF: u64 = 1 << 9;
/// RFLAGS.TF: single-step.
pub const RFLAGS_TF: u64 = 1 << 8;
/// RFLAGS.AC: alignment check.
pub const RFLAGS_AC: u64 = 1 << 18;

impl ExceptionFrame {
    /// True if upcalls were masked when the exception hit (what `iret` will restore).
    pub fn events_were_masked(&self) -> bool {
        (self.cs >> 32) & 0xff != 0
    }

    /// True for the event upcall, false for an exception.
    pub fn is_upcall(&self) -> bool {
        self.vector == UPCALL_VECTOR
    }

    /// Resumes `len` bytes further (skips a faulting instruction of that length).
    pub fn skip(&mut self, len: u64) {
        self.rip = self.rip.wrapping_add(len);
    }
}

impl fmt::Display for ExceptionFrame {
    /// One line: `vector 14 (#PF) at rip 0x..., error code 0x2, cr2 0x..., events
    /// enabled`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vector {} ({}) at rip {:#x}, error code {:#x}",
            self.vector,
            vector_name(self.vector),
            self.rip,
            self.error_code
        )?;
        if self.vector == u64::from(PF) {
            write!(f, ", cr2 {:#x}", self.cr2)?;
        }
        let events = if self.events_were_masked() {
            "masked"
        } else {
            "enabled"
        };
        write!(f, ", events {events}")
    }
}

/// What a handler wants done next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Return to the context the (possibly modified) frame describes.
    Return,
    /// Not handled: run the default handler ([`oops`]).
    Unhandled,
}

/// A Rust exception handler.
pub type Handler = fn(&mut ExceptionFrame) -> Resume;

/// Vectors a handler can be registered for (the architectural exceptions).
const NR_VECTORS: usize = 32;

/// Registered handlers, as `Handler as usize` (0: none). Atomics, because exceptions
/// can arrive at any point of the code that changes them.
static HANDLERS: [AtomicUsize; NR_VECTORS] = [const { AtomicUsize::new(0) }; NR_VECTORS];
/// Exceptions taken per vector (handled or not).
static COUNTS: [AtomicU64; NR_VECTORS] = [const { AtomicU64::new(0) }; NR_VECTORS];

fn decode_handler(raw: usize) -> Option<Handler> {
    // SAFETY: HANDLERS only ever holds 0 or a value `h as usize` of a `Handler` `h`
    // (`set_handler`), and function pointers round-trip through usize on x86_64.
    (raw != 0).then(|| unsafe { core::mem::transmute::<usize, Handler>(raw) })
}

/// Sets (or with `None` removes) the handler of `vector`; returns the previous one.
/// `EINVAL` for a vector the hypervisor never delivers.
pub fn set_handler(vector: u8, handler: Option<Handler>) -> Result<Option<Handler>, Errno> {
    if !is_deliverable(vector) {
        return Err(Errno::EINVAL);
    }
    let raw = handler.map_or(0, |h| h as usize);
    Ok(decode_handler(
        HANDLERS[vector as usize].swap(raw, Ordering::SeqCst),
    ))
}

/// The handler of `vector`, if any.
pub fn handler(vector: u8) -> Option<Handler> {
    HANDLERS
        .get(vector as usize)
        .and_then(|h| decode_handler(h.load(Ordering::SeqCst)))
}

/// How many exceptions of `vector` were taken so far.
pub fn count(vector: u8) -> u64 {
    COUNTS
        .get(vector as usize)
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

/// Runs the handler of `frame.vector` (or [`oops`] if there is none or it declines).
/// The entry stubs call this for every exception; host tests may call it directly.
pub fn dispatch(frame: &mut ExceptionFrame) {
    if let Some(c) = COUNTS.get(frame.vector as usize) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    let handled = u8::try_from(frame.vector)
        .ok()
        .and_then(handler)
        .is_some_and(|h| h(frame) == Resume::Return);
    if !handled {
        oops(frame);
    }
}

/// The default handler, a kernel oops: prints the frame (`oops: vector 6 (#UD) at rip
/// ...`, then the registers) and shuts the domain down with reason crash.
pub fn oops(frame: &ExceptionFrame) -> ! {
    static OOPSING: AtomicBool = AtomicBool::new(false);
    if OOPSING.swap(true, Ordering::Relaxed) {
        // An oops while reporting one: do not try to print again.
        hv::shutdown(ShutdownReason::Crash);
    }
    let f = frame;
    println!("oops: {f}");
    // Four registers a line: console lines are at most 160 bytes.
    let regs = [
        ("rax", f.rax, "rbx", f.rbx, "rcx", f.rcx, "rdx", f.rdx),
        ("rsi", f.rsi, "rdi", f.rdi, "rbp", f.rbp, "rsp", f.rsp),
        ("r8", f.r8, "r9", f.r9, "r10", f.r10, "r11", f.r11),
        ("r12", f.r12, "r13", f.r13, "r14", f.r14, "r15", f.r15),
    ];
    for (a, va, b, vb, c, vc, d, vd) in regs {
        println!("oops: {a} {va:#x} {b} {vb:#x} {c} {vc:#x} {d} {vd:#x}");
    }
    println!("oops: rflags {:#x} cs {:#x}", f.rflags, f.cs);
    hv::shutdown(ShutdownReason::Crash)
}

/// Called by the common stub for every bounce (exceptions and upcalls), with events
/// masked for #PF and upcalls.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
extern "C" fn trap_entry(frame: &mut ExceptionFrame) {
    if frame.is_upcall() {
        crate::events::handle_upcall();
        return;
    }
    if frame.vector == u64::from(PF) {
        // Read before anything can fault again (an upcall cannot: #PF masks them).
        frame.cr2 = SharedPage::get().map_or(0, |s| s.cr2());
    }
    dispatch(frame);
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Registers the trap table: every [`DELIVERABLE`] vector goes to its entry stub (#PF
/// with [`TI_MASK_EVENTS`]; #BP and #OF allowed from ring 3 as `int3`/`into`). Vectors
/// without a Rust handler end in [`oops`]. Idempotent.
pub fn init() -> Result<(), Errno> {
    if INSTALLED.load(Ordering::Acquire) {
        return Ok(());
    }
    let mut table = [TrapInfo::default(); DELIVERABLE.len() + 1];
    for (t, &v) in table.iter_mut().zip(DELIVERABLE.iter()) {
        let dpl = if v == BP || v == OF { 3 } else { 0 };
        let mask = if v == PF { TI_MASK_EVENTS } else { 0 };
        *t = TrapInfo {
            vector: v,
            flags: dpl | mask,
            cs: FLAT_USER_CS as u16,
            _pad: 0,
            address: stubs::exception_entry(v),
        };
    }
    // SAFETY: every address is one of the entry stubs below, which handle a bounce
    // frame as the ABI describes and return with iret; the table ends with a zero entry.
    unsafe { hv::set_trap_table(&table) }?;
    INSTALLED.store(true, Ordering::Release);
    Ok(())
}

/// Forgets that the trap table was registered (host runs: each fake starts empty).
/// Handlers stay registered.
#[cfg(not(target_os = "none"))]
pub(crate) fn forget() {
    INSTALLED.store(false, Ordering::Release);
}

/// The entry point to register as the event callback (`set_callbacks`; see
/// [`crate::events::init`]).
pub fn upcall_entry() -> u64 {
    stubs::upcall_entry()
}

/// The entry half shared by the PV and the native exception stubs (assembly text): saves
/// every general register and a zero `cr2` slot, which makes the [`ExceptionFrame`] on the
/// stack, and prepares the call to Rust: `rdi` = the frame, `rbx` = the frame (callee-saved,
/// to find it again), `rsp` 16-aligned, DF clear (SysV).
#[doc(hidden)]
#[macro_export]
macro_rules! exception_frame_save {
    () => {
        "push rax\npush rbx\npush rcx\npush rdx\npush rsi\npush rdi\npush rbp\npush r8\npush r9\n\
         push r10\npush r11\npush r12\npush r13\npush r14\npush r15\npush 0\n\
         mov rdi, rsp\nmov rbx, rsp\nand rsp, -16\ncld"
    };
}

/// The matching restore of the general registers (the `cr2` slot already skipped).
#[doc(hidden)]
#[macro_export]
macro_rules! exception_frame_restore {
    () => {
        "pop r15\npop r14\npop r13\npop r12\npop r11\npop r10\npop r9\npop r8\npop rbp\n\
         pop rdi\npop rsi\npop rdx\npop rcx\npop rbx\npop rax"
    };
}

#[cfg(target_os = "none")]
mod stubs {
    //! The entry stubs (see the module docs of [`super`]).

    use super::{trap_entry, UPCALL_VECTOR};

    core::arch::global_asm!(
        r#"
        .pushsection .text.pv_traps, "ax", @progbits

        // One stub per vector: restore rcx/r11 from the bounce frame, make the error
        // code uniform, push the vector, go to the common part.
        .macro PV_TRAP_STUB vec, err
        .globl __pv_trap_entry_\vec
        .type __pv_trap_entry_\vec, @function
        __pv_trap_entry_\vec:
            pop rcx
            pop r11
        .if \err == 0
            push 0
        .endif
            push \vec
            jmp __pv_trap_common
        .size __pv_trap_entry_\vec, . - __pv_trap_entry_\vec
        .endm

        PV_TRAP_STUB 0, 0
        PV_TRAP_STUB 1, 0
        PV_TRAP_STUB 3, 0
        PV_TRAP_STUB 4, 0
        PV_TRAP_STUB 5, 0
        PV_TRAP_STUB 6, 0
        PV_TRAP_STUB 7, 0
        PV_TRAP_STUB 10, 1
        PV_TRAP_STUB 11, 1
        PV_TRAP_STUB 12, 1
        PV_TRAP_STUB 13, 1
        PV_TRAP_STUB 14, 1
        PV_TRAP_STUB 16, 0
        PV_TRAP_STUB 17, 1
        PV_TRAP_STUB 19, 0
        PV_TRAP_STUB {upcall}, 0

        // Stack on entry: vector, error code, rip, cs, rflags, rsp, ss.
        .type __pv_trap_common, @function
        __pv_trap_common:
"#,
        exception_frame_save!(),
        r#"
            call {entry}
            mov rsp, rbx
            add rsp, 8              // cr2
"#,
        exception_frame_restore!(),
        r#"
            add rsp, 16             // vector, error code: now at rip
            // iret frame: rax, r11, rcx, flags, then rip..ss as they are.
            push 0
            push rcx
            push r11
            push rax
            mov eax, {iret}
            syscall                 // iret: does not return
            ud2
        .size __pv_trap_common, . - __pv_trap_common

        .popsection
        "#,
        entry = sym trap_entry,
        upcall = const UPCALL_VECTOR,
        iret = const abi::HypercallNr::Iret as u32,
    );

    extern "C" {
        fn __pv_trap_entry_0();
        fn __pv_trap_entry_1();
        fn __pv_trap_entry_3();
        fn __pv_trap_entry_4();
        fn __pv_trap_entry_5();
        fn __pv_trap_entry_6();
        fn __pv_trap_entry_7();
        fn __pv_trap_entry_10();
        fn __pv_trap_entry_11();
        fn __pv_trap_entry_12();
        fn __pv_trap_entry_13();
        fn __pv_trap_entry_14();
        fn __pv_trap_entry_16();
        fn __pv_trap_entry_17();
        fn __pv_trap_entry_19();
        fn __pv_trap_entry_256();
    }

    /// The stub of deliverable vector `v` (0 for others).
    pub fn exception_entry(v: u8) -> u64 {
        let f: unsafe extern "C" fn() = match v {
            0 => __pv_trap_entry_0,
            1 => __pv_trap_entry_1,
            3 => __pv_trap_entry_3,
            4 => __pv_trap_entry_4,
            5 => __pv_trap_entry_5,
            6 => __pv_trap_entry_6,
            7 => __pv_trap_entry_7,
            10 => __pv_trap_entry_10,
            11 => __pv_trap_entry_11,
            12 => __pv_trap_entry_12,
            13 => __pv_trap_entry_13,
            14 => __pv_trap_entry_14,
            16 => __pv_trap_entry_16,
            17 => __pv_trap_entry_17,
            19 => __pv_trap_entry_19,
            _ => return 0,
        };
        f as usize as u64
    }

    /// The upcall stub.
    pub fn upcall_entry() -> u64 {
        let f: unsafe extern "C" fn() = __pv_trap_entry_256;
        f as usize as u64
    }

    const _: () = assert!(UPCALL_VECTOR == 256, "the stub name above");
}

#[cfg(not(target_os = "none"))]
mod stubs {
    //! Host: no stubs; distinct placeholder addresses for the fake hypervisor (in the
    //! lower half, where its checks accept them), never jumped to.

    const PLACEHOLDER: u64 = 0x7000_0000_0000;

    pub fn exception_entry(v: u8) -> u64 {
        if super::is_deliverable(v) {
            PLACEHOLDER + 16 * u64::from(v)
        } else {
            0
        }
    }

    pub fn upcall_entry() -> u64 {
        PLACEHOLDER + 16 * super::UPCALL_VECTOR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_tables_agree() {
        for v in 0..=255u8 {
            assert_eq!(is_deliverable(v), DELIVERABLE.contains(&v), "{v}");
            assert_eq!(stubs::exception_entry(v) != 0, is_deliverable(v), "{v}");
        }
        assert!(has_error_code(PF) && has_error_code(GP) && has_error_code(AC));
        assert!(!has_error_code(UD) && !has_error_code(BP) && !has_error_code(DE));
        assert_eq!(vector_name(14), "#PF");
        assert_eq!(vector_name(UPCALL_VECTOR), "upcall");
    }

    fn skip_two(f: &mut ExceptionFrame) -> Resume {
        f.skip(2);
        f.rax = 42;
        Resume::Return
    }

    #[test]
    fn handlers_are_registered_dispatched_and_may_change_the_frame() {
        assert_eq!(set_handler(8, Some(skip_two)), Err(Errno::EINVAL));
        assert_eq!(set_handler(32, Some(skip_two)), Err(Errno::EINVAL));
        let before = count(XM);
        let old = set_handler(XM, Some(skip_two)).unwrap();
        assert!(handler(XM).is_some());
        let mut f = ExceptionFrame {
            vector: u64::from(XM),
            rip: 0x1000,
            cs: FLAT_USER_CS | 1 << 32,
            ..Default::default()
        };
        dispatch(&mut f);
        assert_eq!((f.rip, f.rax), (0x1002, 42));
        assert_eq!(count(XM), before + 1);
        assert!(f.events_were_masked());
        let expected: Handler = skip_two;
        assert_eq!(
            set_handler(XM, old).unwrap().map(|h| h as usize),
            Some(expected as usize)
        );
    }

    #[test]
    fn frame_display() {
        let f = ExceptionFrame {
            vector: 14,
            rip: 0x10,
            error_code: 2,
            cr2: 0xdead_0000,
            ..Default::default()
        };
        assert_eq!(
            f.to_string(),
            "vector 14 (#PF) at rip 0x10, error code 0x2, cr2 0xdead0000, events enabled"
        );
    }
}
