//! Thin wrappers over privileged x86_64 instructions. Every `unsafe` here is one
//! instruction whose effect is stated in its SAFETY comment; callers get safe functions
//! only where the effect cannot break memory safety.

use x86_64::instructions::port::Port;
use x86_64::registers::model_specific::Msr;

/// Writes a byte to an I/O port. Safe: port output cannot violate memory safety (the
/// ports used are the serial port, the PIC and QEMU's debug-exit device).
pub fn outb(port: u16, v: u8) {
    // SAFETY: I/O-port writes have no effect on memory the compiler knows about.
    unsafe { Port::<u8>::new(port).write(v) }
}

/// Writes a dword to an I/O port.
pub fn outl(port: u16, v: u32) {
    // SAFETY: as for `outb`.
    unsafe { Port::<u32>::new(port).write(v) }
}

/// Writes a word to an I/O port (dom0's devices, through emulation).
pub fn outw(port: u16, v: u16) {
    // SAFETY: as for `outb`; the port policy in `hv::emul` keeps the hypervisor's own
    // devices out of reach.
    unsafe { Port::<u16>::new(port).write(v) }
}

/// Reads a word from an I/O port.
pub fn inw(port: u16) -> u16 {
    // SAFETY: port reads have no effect on memory the compiler knows about.
    unsafe { Port::<u16>::new(port).read() }
}

/// Reads a dword from an I/O port.
pub fn inl(port: u16) -> u32 {
    // SAFETY: port reads have no effect on memory the compiler knows about.
    unsafe { Port::<u32>::new(port).read() }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    // SAFETY: reading the serial/PIC ports has no effect on memory.
    unsafe { Port::<u8>::new(port).read() }
}

/// Reads a model-specific register.
pub fn rdmsr(msr: u32) -> u64 {
    // SAFETY: only architectural MSRs that exist on every x86_64 CPU are read.
    unsafe { Msr::new(msr).read() }
}

/// Writes a model-specific register.
///
/// # Safety
/// The caller must ensure the new value keeps the CPU in a state the hypervisor expects
/// (e.g. a valid syscall entry point).
pub unsafe fn wrmsr(msr: u32, v: u64) {
    // SAFETY: delegated to the caller.
    unsafe { Msr::new(msr).write(v) }
}

/// Current CR2 (faulting linear address of the last #PF).
pub fn cr2() -> u64 {
    x86_64::registers::control::Cr2::read_raw()
}

/// Current CR3 (physical address of the active L4, plus flags).
pub fn cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe {
        core::arch::asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Loads CR3.
///
/// # Safety
/// `l4_maddr` must be the machine address of a valid L4 that maps the hypervisor (slots
/// 256..=271 identical to the hypervisor's own), or the next instruction fetch faults.
pub unsafe fn set_cr3(l4_maddr: u64) {
    // SAFETY: delegated to the caller.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) l4_maddr, options(nostack, preserves_flags)) };
}

/// Reads CR4.
pub fn cr4() -> u64 {
    x86_64::registers::control::Cr4::read_raw()
}

/// Writes CR4.
///
/// # Safety
/// Only feature-enable bits the hypervisor is prepared for may change.
pub unsafe fn set_cr4(v: u64) {
    // SAFETY: delegated to the caller.
    unsafe { core::arch::asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// CPUID leaf/subleaf -> (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Stops the CPU for good (interrupts off).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: cli; hlt only stops this CPU.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}
