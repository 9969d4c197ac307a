//! GDT, TSS, IDT and the syscall MSRs.
//!
//! GDT layout (fixed by `syscall`/`sysret` selector arithmetic: STAR[47:32] = 0x08,
//! STAR[63:48] = 0x18):
//!
//! | sel | descriptor |
//! |---|---|
//! | 0x08 | ring-0 64-bit code |
//! | 0x10 | ring-0 data |
//! | 0x18 | (unused 32-bit user code slot) |
//! | 0x20 | ring-3 data (guest `ss` = 0x23) |
//! | 0x28 | ring-3 64-bit code (guest `cs` = 0x2b) |
//! | 0x30 | TSS (16 bytes) |
//!
//! The IDT sends every vector to its stub in `entry.rs`. All gates are interrupt gates
//! (IF cleared on entry) with DPL 0, except #BP (so `int3` in a guest is a #BP, not a
//! #GP) and the hypercall vector 0x82, which ring 3 may invoke. #DF runs on IST1.

use super::cpu::wrmsr;
use super::entry::{df_stack_top, hv_stack_top, syscall_entry_addr, trap_stubs_base};
use core::cell::UnsafeCell;

/// Guest code selector (RPL 3).
pub const USER_CS: u64 = 0x2b;
/// Guest stack selector (RPL 3).
pub const USER_SS: u64 = 0x23;
const TSS_SEL: u16 = 0x30;

/// 64-bit TSS.
#[repr(C, packed(4))]
struct Tss {
    _r0: u32,
    rsp: [u64; 3],
    _r1: u64,
    ist: [u64; 7],
    _r2: u64,
    _r3: u16,
    iomap_base: u16,
}
const _: () = assert!(core::mem::size_of::<Tss>() == 104);

#[repr(C)]
#[derive(Clone, Copy)]
struct IdtEntry {
    off_lo: u16,
    sel: u16,
    ist: u8,
    attr: u8,
    off_mid: u16,
    off_hi: u32,
    _r: u32,
}
const _: () = assert!(core::mem::size_of::<IdtEntry>() == 16);

/// Memory the CPU itself reads and writes (it sets the TSS busy bit in the GDT).
struct CpuShared<T>(UnsafeCell<T>);
// SAFETY: one CPU; written only during single-threaded init, afterwards only by the CPU.
unsafe impl<T> Sync for CpuShared<T> {}

#[repr(align(16))]
struct Aligned<T>(T);

static GDT: CpuShared<Aligned<[u64; 8]>> = CpuShared(UnsafeCell::new(Aligned([0; 8])));
static TSS: CpuShared<Aligned<Tss>> = CpuShared(UnsafeCell::new(Aligned(Tss {
    _r0: 0,
    rsp: [0; 3],
    _r1: 0,
    ist: [0; 7],
    _r2: 0,
    _r3: 0,
    iomap_base: 104, // no I/O bitmap: every port access from ring 3 faults
})));
static IDT: CpuShared<Aligned<[IdtEntry; 256]>> = CpuShared(UnsafeCell::new(Aligned(
    [IdtEntry {
        off_lo: 0,
        sel: 0,
        ist: 0,
        attr: 0,
        off_mid: 0,
        off_hi: 0,
        _r: 0,
    }; 256],
)));

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

/// Installs GDT, TSS, IDT and the syscall MSRs. Call once, early, with interrupts off.
pub fn init() {
    let tss_addr = TSS.0.get() as u64;
    // SAFETY: single-threaded init; nothing else references TSS/GDT/IDT yet.
    unsafe {
        let tss = &mut (*TSS.0.get()).0;
        tss.rsp[0] = hv_stack_top();
        tss.ist[0] = df_stack_top();

        let gdt = &mut (*GDT.0.get()).0;
        gdt[1] = 0x00af_9a00_0000_ffff; // ring-0 code, L
        gdt[2] = 0x00cf_9200_0000_ffff; // ring-0 data
        gdt[3] = 0; // placeholder for sysret's 32-bit code slot
        gdt[4] = 0x00cf_f200_0000_ffff; // ring-3 data
        gdt[5] = 0x00af_fa00_0000_ffff; // ring-3 code, L
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        gdt[6] = (limit & 0xffff)
            | ((tss_addr & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((tss_addr >> 24) & 0xff) << 56);
        gdt[7] = tss_addr >> 32;

        let idt = &mut (*IDT.0.get()).0;
        let base = trap_stubs_base();
        for (v, e) in idt.iter_mut().enumerate() {
            let h = base + 16 * v as u64;
            let dpl3 = v == 3 || v == abi::hypercall::HYPERCALL_INT_VECTOR as usize;
            *e = IdtEntry {
                off_lo: h as u16,
                sel: 0x08,
                ist: if v == 8 { 1 } else { 0 },
                attr: if dpl3 { 0xee } else { 0x8e },
                off_mid: (h >> 16) as u16,
                off_hi: (h >> 32) as u32,
                _r: 0,
            };
        }

        let gdtp = Pointer {
            limit: 8 * 8 - 1,
            base: GDT.0.get() as u64,
        };
        let idtp = Pointer {
            limit: 256 * 16 - 1,
            base: IDT.0.get() as u64,
        };
        core::arch::asm!(
            "lgdt [{g}]",
            "lidt [{i}]",
            "mov ax, 0x10",
            "mov ds, ax",
            "mov es, ax",
            "mov ss, ax",
            "push 0x08",
            "lea rax, [rip + 2f]",
            "push rax",
            "retfq",
            "2:",
            "ltr {t:x}",
            g = in(reg) &gdtp,
            i = in(reg) &idtp,
            t = in(reg) TSS_SEL,
            out("rax") _,
        );

        // syscall: EFER.SCE, entry point, selectors, and RFLAGS bits cleared on entry
        // (IF, TF, DF, AC, NT).
        let efer = super::cpu::rdmsr(0xC000_0080);
        wrmsr(0xC000_0080, efer | 1);
        wrmsr(0xC000_0081, (0x18u64 << 48) | (0x08u64 << 32));
        wrmsr(0xC000_0082, syscall_entry_addr());
        wrmsr(0xC000_0084, 0x0004_4700);
    }
}
