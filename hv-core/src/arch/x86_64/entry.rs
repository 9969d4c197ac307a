//! Entry and exit: the hypervisor's only ways in from a guest and back out.
//!
//! Every entry from ring 3 (exception, `int 0x82`, `syscall`) builds the same
//! [`TrapFrame`] at the top of the hypervisor stack: the CPU (or the syscall stub) pushes
//! the `iretq` frame, the per-vector stub pushes an error code (0 if the CPU had none)
//! and the vector, and `trap_common` pushes the GPRs. Rust gets `&mut TrapFrame`, may
//! replace its contents (that is a context switch), and `trap_return` pops it and
//! `iretq`s. `syscall` uses pseudo-vector [`SYSCALL_VECTOR`]; the return is always
//! `iretq` (no `sysret`: it has the non-canonical-RCX pitfall), except for the lab's
//! reference below.
//!
//! **Measurement-lab reference** (docs/benchmarking.md): the first two instructions of
//! `syscall_entry` send hypercall [`abi::HypercallNr::BenchNull`] to `syscall_bench_null`,
//! which switches to the hypervisor stack, saves and restores all fifteen GPRs as
//! `trap_common` does, returns 0 and leaves with `sysretq`: an empty handler, the floor
//! of a hypercall round trip. It returns through the ordinary path instead when `rcx`
//! (the resume rip) is not canonical, since `sysretq` would then fault in ring 0. Its
//! last instructions run in ring 0 on the guest's stack (as every `sysretq` path does);
//! with IF clear only an NMI or #MC could arrive there, and neither is expected on this
//! platform (both are fatal anywhere in ring 0 today).
//!
//! One CPU, so the hypervisor stack and the syscall scratch slot are single globals.

/// Pseudo-vector recorded for entries through `syscall`.
pub const SYSCALL_VECTOR: u64 = 0x100;

/// Register state saved on every entry, in stack order (lowest address first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}
const _: () = assert!(core::mem::size_of::<TrapFrame>() == 22 * 8);
const _: () = assert!(core::mem::offset_of!(TrapFrame, vector) == 15 * 8);
const _: () = assert!(core::mem::offset_of!(TrapFrame, rip) == 17 * 8);

/// Vectors for which the CPU pushes an error code.
pub const fn has_error_code(v: u8) -> bool {
    matches!(v, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

core::arch::global_asm!(
    r#"
    /* The general registers in TrapFrame order (r15 ends up lowest). */
    .macro SAVE_GPRS
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    .endm
    .macro RESTORE_GPRS
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    .endm

    .section .bss.hvstack, "aw", @nobits
    .balign 16
    .global hv_stack_bottom
hv_stack_bottom:
    .skip 65536
    .global hv_stack_top
hv_stack_top:
    .balign 16
df_stack_bottom:
    .skip 16384
    .global df_stack_top
df_stack_top:
    .balign 8
syscall_user_rsp:
    .skip 8

    .text
    .balign 16
    .global trap_stubs
trap_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp trap_common
    .set vec, vec + 1
    .endr

    .balign 16
    .global syscall_entry
syscall_entry:
    /* rcx = guest rip, r11 = guest rflags, IF already cleared by SFMASK */
    cmp ${bench_null}, %rax
    je syscall_bench_null
syscall_ordinary:
    mov %rsp, syscall_user_rsp(%rip)
    lea hv_stack_top(%rip), %rsp
    pushq $0x23
    pushq syscall_user_rsp(%rip)
    pushq %r11
    pushq $0x2b
    pushq %rcx
    pushq $0
    pushq $0x100
    jmp trap_common

    /* Lab reference: an empty hypercall handler with a full GPR save/restore. */
syscall_bench_null:
    mov %rsp, syscall_user_rsp(%rip)
    lea hv_stack_top(%rip), %rsp
    SAVE_GPRS
    RESTORE_GPRS
    mov syscall_user_rsp(%rip), %rsp
    /* rcx canonical? (bits 63..47 all equal): rax = (rcx >> 47) + 1 must be 0 or 1 */
    mov %rcx, %rax
    sar $47, %rax
    add $1, %rax
    cmp $1, %rax
    ja 1f
    xor %eax, %eax
    sysretq
1:  mov ${bench_null}, %eax
    jmp syscall_ordinary

trap_common:
    SAVE_GPRS
    cld
    mov %rsp, %rdi
    call trap_dispatch
    .global trap_return
trap_return:
    RESTORE_GPRS
    add $16, %rsp
    iretq

    .global enter_frame
enter_frame:
    mov %rdi, %rsp
    jmp trap_return
"#,
    bench_null = const abi::HypercallNr::BenchNull as u32,
    options(att_syntax)
);

extern "C" {
    fn enter_frame(frame: *const TrapFrame) -> !;
}

/// Address of the first trap stub; stub `n` is at `trap_stubs_base() + 16 * n`.
pub fn trap_stubs_base() -> u64 {
    let v: u64;
    // SAFETY: computes a symbol address; no memory access.
    unsafe {
        core::arch::asm!("lea {}, [rip + trap_stubs]", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Address of the syscall entry point (for LSTAR).
pub fn syscall_entry_addr() -> u64 {
    let v: u64;
    // SAFETY: computes a symbol address; no memory access.
    unsafe {
        core::arch::asm!("lea {}, [rip + syscall_entry]", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Top of the hypervisor stack (TSS.RSP0).
pub fn hv_stack_top() -> u64 {
    let v: u64;
    // SAFETY: computes a symbol address; no memory access.
    unsafe {
        core::arch::asm!("lea {}, [rip + hv_stack_top]", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Top of the double-fault stack (IST1).
pub fn df_stack_top() -> u64 {
    let v: u64;
    // SAFETY: computes a symbol address; no memory access.
    unsafe {
        core::arch::asm!("lea {}, [rip + df_stack_top]", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Starts executing a guest from `frame`, abandoning the current stack.
///
/// The frame is copied to the top of the hypervisor stack (where every later entry from
/// ring 3 will put its frame) and popped from there.
pub fn enter(frame: &TrapFrame) -> ! {
    let slot = (hv_stack_top() - core::mem::size_of::<TrapFrame>() as u64) as *mut TrapFrame;
    // SAFETY: `slot` is the top of the hypervisor stack, reserved for exactly this frame
    // and not otherwise in use (we are on the boot stack); it is 16-byte aligned.
    unsafe {
        slot.write(*frame);
        enter_frame(slot)
    }
}
