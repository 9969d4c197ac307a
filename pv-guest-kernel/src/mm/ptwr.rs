//! Writable page tables: updating an L1 entry with an ordinary store through the table's
//! read-only mapping. The store faults; the hypervisor decodes it (8- or 4-byte `mov`,
//! `xchg`, `lock cmpxchg`), validates the new entry as `mmu_update` would and applies it,
//! then resumes after the instruction. A store that fails validation is delivered as a
//! page fault, which kills the domain while guests have no trap handlers.
//!
//! Each primitive is one specific instruction (inline assembly), so the hypervisor's
//! decoder sees exactly what the name says. The TLB is not flushed: invalidate the
//! virtual address the entry maps afterwards (e.g. [`crate::mm::Mmu::invlpg`]).
//!
//! On the host these are plain memory operations.

/// Stores `val` to the entry at `entry_va` with one 8-byte `mov`.
///
/// # Safety
/// `entry_va` must be the 8-byte aligned address of an L1 entry of this domain (through
/// its read-only mapping), and the mapping change must not break memory Rust relies on.
pub unsafe fn store(entry_va: u64, val: u64) {
    #[cfg(target_os = "none")]
    // SAFETY: the caller's contract; the store is trapped and emulated by the hypervisor
    // (or kills the domain). `nostack`: no stack use.
    unsafe {
        core::arch::asm!("mov qword ptr [{p}], {v}", p = in(reg) entry_va, v = in(reg) val, options(nostack));
    }
    #[cfg(not(target_os = "none"))]
    // SAFETY: on the host the caller passes a writable u64.
    unsafe {
        (entry_va as *mut u64).write_volatile(val)
    };
}

/// Stores `val` to the low 4 bytes of the entry at `entry_va` with one 4-byte `mov`
/// (the high half stays).
///
/// # Safety
/// As for [`store`].
pub unsafe fn store_low32(entry_va: u64, val: u32) {
    #[cfg(target_os = "none")]
    // SAFETY: as in `store`.
    unsafe {
        core::arch::asm!("mov dword ptr [{p}], {v:e}", p = in(reg) entry_va, v = in(reg) val, options(nostack));
    }
    #[cfg(not(target_os = "none"))]
    // SAFETY: as in `store`.
    unsafe {
        (entry_va as *mut u32).write_volatile(val)
    };
}

/// Exchanges the entry at `entry_va` with `val` (`xchg`, implicitly locked); returns the
/// old value.
///
/// # Safety
/// As for [`store`].
pub unsafe fn exchange(entry_va: u64, val: u64) -> u64 {
    #[cfg(target_os = "none")]
    {
        let mut v = val;
        // SAFETY: as in `store`.
        unsafe {
            core::arch::asm!("xchg qword ptr [{p}], {v}", p = in(reg) entry_va, v = inout(reg) v, options(nostack));
        }
        v
    }
    #[cfg(not(target_os = "none"))]
    {
        let p = entry_va as *mut u64;
        // SAFETY: as in `store`.
        unsafe {
            let old = p.read_volatile();
            p.write_volatile(val);
            old
        }
    }
}

/// `lock cmpxchg`: if the entry at `entry_va` equals `old`, replaces it with `new`.
/// Returns the value found (equal to `old` on success).
///
/// # Safety
/// As for [`store`].
pub unsafe fn compare_exchange(entry_va: u64, old: u64, new: u64) -> u64 {
    #[cfg(target_os = "none")]
    {
        let found: u64;
        // SAFETY: as in `store`. cmpxchg uses rax for the expected/found value.
        unsafe {
            core::arch::asm!(
                "lock cmpxchg qword ptr [{p}], {n}",
                p = in(reg) entry_va,
                n = in(reg) new,
                inlateout("rax") old => found,
                options(nostack),
            );
        }
        found
    }
    #[cfg(not(target_os = "none"))]
    {
        let p = entry_va as *mut u64;
        // SAFETY: as in `store`.
        unsafe {
            let cur = p.read_volatile();
            if cur == old {
                p.write_volatile(new);
            }
            cur
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_semantics() {
        let mut e = 0x1111_2222_3333_4444u64;
        let p = &mut e as *mut u64 as u64;
        // SAFETY: `p` is a live local u64.
        unsafe {
            store(p, 5);
            assert_eq!(e, 5);
            store(p, 0x7_0000_0005);
            store_low32(p, 0xaaaa_bbbb);
            assert_eq!(e, 0x7_aaaa_bbbb, "the high half stays");
            assert_eq!(exchange(p, 9), 0x7_aaaa_bbbb);
            assert_eq!(compare_exchange(p, 8, 1), 9);
            assert_eq!(e, 9);
            assert_eq!(compare_exchange(p, 9, 1), 9);
        }
        assert_eq!(e, 1);
    }
}
