//! The native implementation of the platform layer: real instructions, real devices.
//!
//! On bare hardware these execute as written (the kernel runs in ring 0). Under the
//! hypervisor ([`Mode::Trapped`](super::Mode::Trapped)) the kernel runs in ring 3 and
//! each privileged instruction raises #GP and is emulated (`hv-core/src/emulate.rs`):
//! the interrupt flag becomes the vCPU's virtual IF, `hlt` blocks the vCPU, the PIC and
//! PIT are virtual devices, `mov cr3` is validated like a new-base-pointer operation,
//! stores into read-only page tables go through the writable-page-table path.
//!
//! What x86 does *not* trap, and how this code avoids depending on it:
//! - `pushf` in ring 3 shows the real IF (always set under the hypervisor), not the
//!   virtual one, and `popf` silently ignores IF: so the kernel never reads IF back
//!   from the flags; it keeps a software copy ([`irq_save`]) next to every `cli`/`sti`.
//! - `iretq` and `popfq` in ring 3 do not restore IF either: so the interrupt return
//!   path executes `sti` itself when the interrupted context had interrupts enabled
//!   (and returns with `popfq; ret`, see the IDT stubs).
//! - `sgdt`/`sidt`/`smsw`/`str` return the hypervisor's values in ring 3: the kernel
//!   never reads its descriptor tables back; it remembers what it loaded.

// The boot path only exists on bare metal; its layout arithmetic is host-tested.
#[cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]
pub mod boot;
pub mod uart;

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use abi::hypercall::ShutdownReason;
use abi::Errno;

use crate::traps::ExceptionFrame;

pub use boot::{NATIVE_M2P_VA, PHYS_BASE};

/// Timer interrupts per second (PIT channel 0, rate generator).
pub const TICK_HZ: u64 = 1000;
/// The PIT's input clock.
const PIT_HZ: u64 = 1_193_182;
/// Vector of PIC IRQ 0 (the PIC is remapped past the exceptions).
pub const IRQ_BASE: u8 = 0x20;
/// QEMU's isa-debug-exit device (exit status `2 * value + 1`).
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// The software copy of IF (see the module docs for why `pushf` cannot be used).
static IRQS_ON: AtomicBool = AtomicBool::new(false);
static TICKS: AtomicU64 = AtomicU64::new(0);
static INITIALISED: AtomicBool = AtomicBool::new(false);

/// `cli`, and the software copy.
pub fn irq_disable() {
    cpu::cli();
    IRQS_ON.store(false, Ordering::SeqCst);
}

/// `sti`, and the software copy.
pub fn irq_enable() {
    IRQS_ON.store(true, Ordering::SeqCst);
    cpu::sti();
}

/// Disables interrupts; returns whether they were enabled.
pub fn irq_save() -> bool {
    let was = IRQS_ON.load(Ordering::SeqCst);
    irq_disable();
    was
}

/// Timer ticks so far.
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// Time since boot from the tick count.
pub fn now_ns() -> u64 {
    ticks() * (1_000_000_000 / TICK_HZ)
}

/// Halts until the tick count says `deadline_ns` has passed.
pub fn sleep_until(deadline_ns: u64) {
    let was = irq_save();
    while now_ns() < deadline_ns {
        // `sti; hlt` as one step: no tick can slip in between and be slept through.
        IRQS_ON.store(true, Ordering::SeqCst);
        cpu::sti_hlt();
        irq_disable();
    }
    if was {
        irq_enable();
    }
}

/// Ends the run through QEMU's isa-debug-exit (under the hypervisor: ends the domain).
pub fn shutdown(reason: ShutdownReason) -> ! {
    let v = match reason {
        ShutdownReason::Poweroff => 0x10,
        _ => 0x11,
    };
    loop {
        cpu::outb(DEBUG_EXIT_PORT, v);
        cpu::cli();
        cpu::hlt();
    }
}

/// Stores a page-table entry through its (read-only) mapping.
///
/// # Safety
/// `entry_va` maps an entry of one of this kernel's page tables; the caller vouches for
/// the mapping change.
pub unsafe fn store_pte(entry_va: u64, val: u64) {
    // SAFETY: forwarded; the same store a PV kernel uses for writable page tables.
    unsafe { crate::mm::ptwr::store(entry_va, val) }
}

/// `invlpg`.
pub fn invlpg(va: u64) {
    cpu::invlpg(va);
}

/// `mov cr3`.
///
/// # Safety
/// The new tables must map everything Rust code relies on as the old ones did.
pub unsafe fn write_cr3(maddr: u64) {
    // SAFETY: forwarded from this function's contract.
    unsafe { cpu::write_cr3(maddr) }
}

/// Sets up the IDT, the PIC (remapped to [`IRQ_BASE`], only IRQ 0 unmasked) and PIT
/// channel 0 at [`TICK_HZ`], then enables interrupts. Idempotent.
pub fn init() -> Result<(), Errno> {
    if INITIALISED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    // Stores into read-only page-table pages must go through (the bare-hardware
    // trampoline already cleared WP; under the hypervisor this is emulated and makes it
    // apply such stores for us).
    cpu::clear_cr0_wp();
    idt::load();
    // 8259 pair: ICW1 (edge, cascade, ICW4), ICW2 vector bases, ICW3 wiring, ICW4 8086.
    for (port, v) in [
        (0x20, 0x11),
        (0xa0, 0x11),
        (0x21, IRQ_BASE),
        (0xa1, IRQ_BASE + 8),
        (0x21, 0x04),
        (0xa1, 0x02),
        (0x21, 0x01),
        (0xa1, 0x01),
        (0x21, 0xfe), // only IRQ 0
        (0xa1, 0xff),
    ] {
        cpu::outb(port, v);
    }
    // PIT channel 0, lobyte/hibyte, mode 2 (rate generator).
    let reload = (PIT_HZ / TICK_HZ) as u16;
    cpu::outb(0x43, 0x34);
    cpu::outb(0x40, reload as u8);
    cpu::outb(0x40, (reload >> 8) as u8);
    irq_enable();
    Ok(())
}

/// Unmasks (or masks) IRQ 0, the tick, at the PIC.
pub fn set_tick(on: bool) {
    cpu::outb(0x21, if on { 0xfe } else { 0xff });
}

/// Called by the IDT stubs for every exception and interrupt.
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
extern "C" fn native_trap_entry(frame: &mut ExceptionFrame) {
    IRQS_ON.store(false, Ordering::SeqCst);
    let v = frame.vector;
    if v == u64::from(IRQ_BASE) {
        TICKS.fetch_add(1, Ordering::Relaxed);
        cpu::outb(0x20, 0x20); // EOI
    } else if v > u64::from(IRQ_BASE) && v < u64::from(IRQ_BASE) + 16 {
        // Masked lines only show up as spurious IRQ 7 / 15: no EOI for those.
    } else {
        if v == u64::from(crate::traps::PF) {
            frame.cr2 = cpu::read_cr2();
        }
        crate::traps::dispatch(frame);
    }
    // The stub executes `sti` on the way back if the frame had IF set.
    IRQS_ON.store(
        frame.rflags & crate::traps::RFLAGS_IF != 0,
        Ordering::SeqCst,
    );
}

#[cfg_attr(not(target_os = "none"), allow(dead_code))]
mod idt {
    //! The IDT: vectors 0-31 (exceptions) and 32-47 (PIC), one stub each, a common part
    //! that builds an [`ExceptionFrame`](crate::traps::ExceptionFrame) exactly like the
    //! PV stubs do.
    //!
    //! The way back avoids `iretq`: the interrupted context is on the same privilege
    //! level (no stack switch), so the stub writes rax, rflags and rip just below the
    //! interrupted rsp (the kernel has no red zone), switches to it and does `pop rax;
    //! popfq; ret`, after an explicit `sti` if the interrupted code had IF set (`popfq`,
    //! like `iretq`, cannot change IF in ring 3 under the hypervisor). Why not `iretq`:
    //! QEMU's TCG performs `iretq`'s stack reads as supervisor accesses, so with SMAP on
    //! (the hypervisor enables it) an `iretq` executed in ring 3 from a user-mapped
    //! stack faults; on hardware it would not. `ret` has no such problem and costs less.

    #[cfg(target_os = "none")]
    core::arch::global_asm!(
        r#"
        .pushsection .text.native_traps, "ax", @progbits
        .macro NATIVE_STUB vec, err
        .balign 16
        __native_trap_\vec:
        .if \err == 0
            push 0
        .endif
            push \vec
            jmp __native_trap_common
        .endm

        .globl __native_trap_table
        __native_trap_table:
        .irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47
        NATIVE_STUB \v, 0
        .endr
        .irp v, 8,10,11,12,13,14,17,21,29,30
        NATIVE_STUB \v, 1
        .endr

        __native_trap_common:
"#,
        crate::exception_frame_save!(),
        r#"
            call {entry}
            mov rsp, rbx
            // Return without iretq (see `idt`'s docs): put rax, rflags and rip just below
            // the interrupted rsp, keep that address in the cr2 slot.
            mov rcx, [rsp + 144]    // rip
            mov rdx, [rsp + 160]    // rflags
            mov rsi, [rsp + 168]    // interrupted rsp
            mov rdi, [rsp + 120]    // rax
            mov [rsi - 8], rcx
            mov [rsi - 16], rdx
            mov [rsi - 24], rdi
            sub rsi, 24
            mov [rsp], rsi
            add rsp, 8
"#,
        crate::exception_frame_restore!(),
        r#"
            add rsp, 16             // vector, error code
            mov rsp, [rsp - 144]    // the interrupted stack, at [rax, rflags, rip]
            // IF is not restored by popfq in ring 3 (under the hypervisor): sti first if
            // the interrupted code had it set. Any interrupt taken here nests below.
            test byte ptr [rsp + 9], 2
            jz 1f
            sti
        1:
            pop rax
            popfq
            ret
        .popsection
        "#,
        entry = sym super::native_trap_entry,
    );

    /// The stub of each vector, by vector number.
    #[cfg(target_os = "none")]
    fn stub(v: u8) -> u64 {
        extern "C" {
            static __native_trap_table: u8;
        }
        // Stubs are 16 bytes apart, in the order of the two .irp lists above.
        const ORDER: [u8; 48] = [
            0, 1, 2, 3, 4, 5, 6, 7, 9, 15, 16, 18, 19, 20, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
            34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 8, 10, 11, 12, 13, 14, 17, 21,
            29, 30,
        ];
        let i = ORDER.iter().position(|&o| o == v).unwrap_or(0) as u64;
        // Only the symbol's address is used.
        (&raw const __native_trap_table as u64) + 16 * i
    }

    /// 16-byte interrupt gates.
    #[repr(C, align(16))]
    struct Idt([u64; 2 * 48]);

    static mut IDT: Idt = Idt([0; 96]);

    /// Fills the IDT (interrupt gates, ring-0 code selector 0x08) and loads it.
    pub fn load() {
        #[cfg(target_os = "none")]
        {
            let base = &raw mut IDT;
            for v in 0..48u8 {
                let a = stub(v);
                let lo = (a & 0xffff)
                    | (0x08 << 16)
                    | (0x8e00 << 32) // present, DPL 0, 64-bit interrupt gate
                    | ((a >> 16) & 0xffff) << 48;
                let hi = a >> 32;
                // SAFETY: single-threaded init before interrupts are enabled; in
                // bounds (48 gates of two words).
                unsafe {
                    (*base).0[2 * v as usize] = lo;
                    (*base).0[2 * v as usize + 1] = hi;
                }
            }
            let ptr = x86_idtr(base as u64, 48 * 16 - 1);
            // SAFETY: the table is static and filled; every gate points at a stub.
            unsafe { core::arch::asm!("lidt [{}]", in(reg) &ptr, options(nostack)) };
        }
    }

    /// The 10-byte `lidt` operand.
    #[cfg(target_os = "none")]
    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }

    #[cfg(target_os = "none")]
    fn x86_idtr(base: u64, limit: u16) -> Idtr {
        Idtr { limit, base }
    }
}

/// Thin wrappers over the privileged instructions (no-ops on the host, where the
/// native platform is never selected).
pub(crate) mod cpu {
    #[cfg(target_os = "none")]
    use core::arch::asm;

    /// `cli`.
    pub fn cli() {
        // SAFETY: changes only the interrupt flag.
        #[cfg(target_os = "none")]
        unsafe {
            asm!("cli", options(nomem, nostack))
        };
    }

    /// `sti`.
    pub fn sti() {
        // SAFETY: changes only the interrupt flag.
        #[cfg(target_os = "none")]
        unsafe {
            asm!("sti", options(nomem, nostack))
        };
    }

    /// `sti; hlt`: waits for the next interrupt with no window between the two.
    pub fn sti_hlt() {
        // SAFETY: waits for an interrupt; the handler preserves every register.
        #[cfg(target_os = "none")]
        unsafe {
            asm!("sti", "hlt", options(nomem, nostack))
        };
    }

    /// `hlt`.
    pub fn hlt() {
        // SAFETY: as for `sti_hlt`.
        #[cfg(target_os = "none")]
        unsafe {
            asm!("hlt", options(nomem, nostack))
        };
    }

    /// `out dx, al`.
    pub fn outb(port: u16, v: u8) {
        // SAFETY: the ports this module uses are the legacy PC devices (PIC, PIT, COM1,
        // debug exit), which have no memory effects.
        #[cfg(target_os = "none")]
        unsafe {
            asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack))
        };
        #[cfg(not(target_os = "none"))]
        let _ = (port, v);
    }

    /// `in al, dx`.
    pub fn inb(port: u16) -> u8 {
        #[cfg(target_os = "none")]
        {
            let v: u8;
            // SAFETY: as for `outb`.
            unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
            v
        }
        #[cfg(not(target_os = "none"))]
        {
            let _ = port;
            0x60
        }
    }

    /// Clears `CR0.WP` (`mov rax, cr0; and; mov cr0, rax`).
    pub fn clear_cr0_wp() {
        // SAFETY: WP only decides whether ring-0 stores honour read-only mappings; the
        // kernel relies on them going through (see `store_pte`).
        #[cfg(target_os = "none")]
        unsafe {
            asm!(
                "mov {t}, cr0",
                "and {t}, {mask}",
                "mov cr0, {t}",
                t = out(reg) _,
                mask = in(reg) !(1u64 << 16),
                options(nostack)
            )
        };
    }

    /// `mov rax, cr2`.
    pub fn read_cr2() -> u64 {
        #[cfg(target_os = "none")]
        {
            let v: u64;
            // SAFETY: reads a control register.
            unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack)) };
            v
        }
        #[cfg(not(target_os = "none"))]
        0
    }

    /// `mov cr3, rax`.
    ///
    /// # Safety
    /// See [`super::write_cr3`].
    pub unsafe fn write_cr3(v: u64) {
        // SAFETY: forwarded from this function's contract.
        #[cfg(target_os = "none")]
        unsafe {
            asm!("mov cr3, {}", in(reg) v, options(nostack))
        };
        #[cfg(not(target_os = "none"))]
        let _ = v;
    }

    /// `invlpg [va]`.
    pub fn invlpg(va: u64) {
        // SAFETY: only drops a TLB entry.
        #[cfg(target_os = "none")]
        unsafe {
            asm!("invlpg [{}]", in(reg) va, options(nostack))
        };
        #[cfg(not(target_os = "none"))]
        let _ = va;
    }
}
