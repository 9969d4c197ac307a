//! Raw hypercall entry: one `hypercall5` per entry path, nothing else.
//!
//! Convention ([`abi::hypercall`]): `rax` = number, `rdi`, `rsi`, `rdx`, `r10`, `r8` =
//! arguments 1..5, result in `rax` (`>= 0` success, `-errno` failure). `syscall` clobbers
//! `rcx` and `r11`; the hypervisor preserves every other register. The `int 0x82` path
//! uses the same registers and the same table; it is declared with the same clobbers so
//! both paths are interchangeable (and a hypervisor sharing its return path between them
//! cannot break us).
//!
//! On the host (`cargo test`) no instruction is executed: calls go to the fake hypervisor
//! in [`crate::host`] (or return `-ENOSYS` when none is installed).
//!
//! Use the typed, safe layer in [`crate::hv`] unless you need deliberately bad arguments.

/// Which instruction enters the hypervisor.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// `syscall`: the fast, default path.
    Syscall = 0,
    /// `int 0x82` ([`abi::hypercall::HYPERCALL_INT_VECTOR`]): the second, measurable path.
    Int82 = 1,
}

impl Path {
    /// Both paths.
    pub const ALL: [Path; 2] = [Path::Syscall, Path::Int82];

    /// Name for logs: `"syscall"` or `"int 0x82"`.
    pub const fn name(self) -> &'static str {
        match self {
            Path::Syscall => "syscall",
            Path::Int82 => "int 0x82",
        }
    }

    /// Issues hypercall `nr` with arguments `args` through this path and returns the raw
    /// result (decode it with [`abi::Errno::from_ret`]). This is the escape hatch for
    /// deliberately bad arguments.
    ///
    /// # Safety
    /// The hypervisor reads and writes guest memory through pointer arguments exactly as
    /// hypercall `nr` specifies. Every pointer that refers to this domain's memory must be
    /// valid for those accesses for the duration of the call, and memory the hypervisor
    /// writes must not be covered by a live Rust shared reference (nor hold values whose
    /// invariants the written bytes could break). Pointers outside the domain's memory
    /// (unmapped, hypervisor region, non-canonical, read-only pages for writes) are fine:
    /// the hypervisor must refuse them with `-EFAULT`.
    #[inline(always)]
    pub unsafe fn call(self, nr: u64, args: [u64; 5]) -> i64 {
        let [a1, a2, a3, a4, a5] = args;
        match self {
            // SAFETY: forwarded from this function's contract.
            Path::Syscall => unsafe { syscall::hypercall5(nr, a1, a2, a3, a4, a5) },
            // SAFETY: forwarded from this function's contract.
            Path::Int82 => unsafe { int82::hypercall5(nr, a1, a2, a3, a4, a5) },
        }
    }
}

/// The `syscall` entry path.
pub mod syscall {
    /// Hypercall `nr` with five arguments through `syscall`; returns the raw `rax`.
    ///
    /// # Safety
    /// See [`super::Path::call`].
    #[inline(always)]
    pub unsafe fn hypercall5(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
        #[cfg(target_os = "none")]
        {
            let ret: i64;
            // SAFETY: `syscall` enters the hypervisor, which per the ABI returns to the next
            // instruction with the result in rax, clobbering only rcx and r11 (declared) and
            // never touching our stack (`nostack`). Its memory accesses through pointer
            // arguments are covered by the caller's contract; the asm is not `nomem`, so the
            // compiler assumes memory may be read and written.
            unsafe {
                core::arch::asm!(
                    "syscall",
                    inlateout("rax") nr as i64 => ret,
                    in("rdi") a1,
                    in("rsi") a2,
                    in("rdx") a3,
                    in("r10") a4,
                    in("r8") a5,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            ret
        }
        #[cfg(not(target_os = "none"))]
        {
            crate::host::dispatch(super::Path::Syscall, nr, [a1, a2, a3, a4, a5])
        }
    }
}

/// The `int 0x82` entry path.
pub mod int82 {
    /// Hypercall `nr` with five arguments through `int 0x82`; returns the raw `rax`.
    ///
    /// # Safety
    /// See [`super::Path::call`].
    #[inline(always)]
    pub unsafe fn hypercall5(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
        #[cfg(target_os = "none")]
        {
            let ret: i64;
            // SAFETY: `int 0x82` enters the hypervisor through its DPL-3 gate; the CPU
            // switches to the hypervisor's stack, so ours is untouched (`nostack`). Per the
            // ABI it returns with the result in rax; rcx and r11 are declared clobbered as
            // for `syscall`. Memory effects are covered by the caller's contract; the asm is
            // not `nomem`.
            unsafe {
                core::arch::asm!(
                    "int 0x82",
                    inlateout("rax") nr as i64 => ret,
                    in("rdi") a1,
                    in("rsi") a2,
                    in("rdx") a3,
                    in("r10") a4,
                    in("r8") a5,
                    lateout("rcx") _,
                    lateout("r11") _,
                    options(nostack),
                );
            }
            ret
        }
        #[cfg(not(target_os = "none"))]
        {
            crate::host::dispatch(super::Path::Int82, nr, [a1, a2, a3, a4, a5])
        }
    }
}
