//! x86_64 4-level page tables as the hypervisor sees them: entry bits, software walks of
//! guest tables, and building tables in machine memory.
//!
//! Walks read page-table entries through [`MachineMemory`], never through the MMU, so a
//! malformed or hostile table can only produce an error, never a hypervisor fault.

use crate::mem::MachineMemory;
use abi::{Errno, Mfn};

/// Present.
pub const PTE_P: u64 = 1 << 0;
/// Writable.
pub const PTE_RW: u64 = 1 << 1;
/// User (ring 3) accessible. Guests run in ring 3, so every guest mapping has it and the
/// hypervisor's never does.
pub const PTE_US: u64 = 1 << 2;
/// Accessed.
pub const PTE_A: u64 = 1 << 5;
/// Dirty.
pub const PTE_D: u64 = 1 << 6;
/// Large page (in L2/L3 entries).
pub const PTE_PS: u64 = 1 << 7;
/// Global.
pub const PTE_G: u64 = 1 << 8;
/// No-execute.
pub const PTE_NX: u64 = 1 << 63;
/// The machine-address bits of an entry.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Index of `va` in the table at `level` (4 = L4 ... 1 = L1).
pub const fn table_index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 511) as usize
}

/// Access being checked by a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read by the hypervisor on the guest's behalf.
    Read,
    /// Write by the hypervisor on the guest's behalf.
    Write,
}

/// Translates guest virtual address `va` in the address space rooted at `l4` to a machine
/// address, as a ring-3 access of kind `access` would: every level must be present and
/// user-accessible, and writable for writes. Large pages (2 MiB, 1 GiB) are honoured.
/// Any failure, including an entry pointing outside RAM, is `EFAULT`.
pub fn translate(mem: &impl MachineMemory, l4: Mfn, va: u64, access: Access) -> Result<u64, Errno> {
    if !abi::layout::is_guest_va(va) {
        return Err(Errno::EFAULT);
    }
    let allowed = |pte: u64| pte & PTE_US != 0 && (access == Access::Read || pte & PTE_RW != 0);
    walk(mem, l4, va, allowed)
        .map(|(maddr, _)| maddr)
        .ok_or(Errno::EFAULT)
}

/// Walks the tables rooted at `l4` for `va` without any permission check (hypervisor
/// internal use: the M2P mapping, tests). Returns (machine address, leaf entry).
pub fn walk_raw(mem: &impl MachineMemory, l4: Mfn, va: u64) -> Option<(u64, u64)> {
    walk(mem, l4, va, |_| true)
}

/// The one page walk: every level's entry must be present and pass `allowed`; large
/// pages (2 MiB, 1 GiB) end the walk. Returns (machine address, leaf entry).
fn walk(
    mem: &impl MachineMemory,
    l4: Mfn,
    va: u64,
    allowed: impl Fn(u64) -> bool,
) -> Option<(u64, u64)> {
    let mut table = l4.maddr();
    for level in (1..=4).rev() {
        let pte = mem.read_u64(table + 8 * table_index(va, level) as u64)?;
        if pte & PTE_P == 0 || !allowed(pte) {
            return None;
        }
        if level == 1 || ((level == 2 || level == 3) && pte & PTE_PS != 0) {
            let size_mask = (1u64 << (12 + 9 * (level - 1))) - 1;
            return Some(((pte & PTE_ADDR_MASK & !size_mask) | (va & size_mask), pte));
        }
        table = pte & PTE_ADDR_MASK;
    }
    None
}

/// The machine address of the L1 entry that maps `va` in the tree rooted at `l4`: every
/// upper level must be present (large pages have no L1 entry). `EINVAL` otherwise.
pub fn l1_entry_maddr(mem: &impl MachineMemory, l4: Mfn, va: u64) -> Result<u64, Errno> {
    if !abi::layout::is_guest_va(va) {
        return Err(Errno::EINVAL);
    }
    let mut table = l4.maddr();
    for level in (2..=4).rev() {
        let pte = mem
            .read_u64(table + 8 * table_index(va, level) as u64)
            .ok_or(Errno::EINVAL)?;
        if pte & PTE_P == 0 || pte & PTE_PS != 0 {
            return Err(Errno::EINVAL);
        }
        table = pte & PTE_ADDR_MASK;
    }
    Ok(table + 8 * table_index(va, 1) as u64)
}

/// Writes a mapping of `va` to `target` (flags `flags`) into the tree rooted at `l4`,
/// creating intermediate tables with `new_table` (which must return a zeroed frame).
/// Intermediate entries get `P|RW|US`; restrictions live in the leaf.
pub fn map_4k(
    mem: &mut impl MachineMemory,
    l4: Mfn,
    va: u64,
    target: Mfn,
    flags: u64,
    new_table: &mut dyn FnMut() -> Result<Mfn, Errno>,
) -> Result<(), Errno> {
    let mut table = l4.maddr();
    for level in (2..=4).rev() {
        let slot = table + 8 * table_index(va, level) as u64;
        let pte = mem.read_u64(slot).ok_or(Errno::EFAULT)?;
        table = if pte & PTE_P != 0 {
            if pte & PTE_PS != 0 {
                return Err(Errno::EEXIST);
            }
            pte & PTE_ADDR_MASK
        } else {
            let t = new_table()?;
            if !mem.zero_frame(t) {
                return Err(Errno::EFAULT);
            }
            if !mem.write_u64(slot, t.maddr() | PTE_P | PTE_RW | PTE_US) {
                return Err(Errno::EFAULT);
            }
            t.maddr()
        };
    }
    let slot = table + 8 * table_index(va, 1) as u64;
    if !mem.write_u64(slot, (target.maddr() & PTE_ADDR_MASK) | flags | PTE_P) {
        return Err(Errno::EFAULT);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::TestMemory;
    use abi::layout::GUEST_VIRT_BASE;

    fn setup() -> (TestMemory, Mfn, u64) {
        let mut mem = TestMemory::new(64);
        let l4 = Mfn(1);
        let mut next = 2u64;
        let mut alloc = || {
            next += 1;
            Ok(Mfn(next - 1))
        };
        map_4k(
            &mut mem,
            l4,
            GUEST_VIRT_BASE,
            Mfn(40),
            PTE_RW | PTE_US,
            &mut alloc,
        )
        .unwrap();
        map_4k(
            &mut mem,
            l4,
            GUEST_VIRT_BASE + 0x1000,
            Mfn(41),
            PTE_US,
            &mut alloc,
        )
        .unwrap();
        map_4k(
            &mut mem,
            l4,
            GUEST_VIRT_BASE + 0x2000,
            Mfn(42),
            PTE_RW,
            &mut alloc,
        )
        .unwrap();
        (mem, l4, next)
    }

    #[test]
    fn walk_checks_present_user_and_write() {
        let (mem, l4, used) = setup();
        assert_eq!(used, 5, "one L3, one L2, one L1");
        let b = GUEST_VIRT_BASE;
        assert_eq!(
            translate(&mem, l4, b + 0x123, Access::Write),
            Ok(40 * 4096 + 0x123)
        );
        assert_eq!(
            translate(&mem, l4, b + 0x1008, Access::Read),
            Ok(41 * 4096 + 8)
        );
        assert_eq!(
            translate(&mem, l4, b + 0x1008, Access::Write),
            Err(Errno::EFAULT),
            "read-only"
        );
        assert_eq!(
            translate(&mem, l4, b + 0x2000, Access::Read),
            Err(Errno::EFAULT),
            "supervisor"
        );
        assert_eq!(
            translate(&mem, l4, b + 0x3000, Access::Read),
            Err(Errno::EFAULT),
            "not present"
        );
        assert_eq!(
            translate(&mem, l4, 0x1000, Access::Read),
            Err(Errno::EFAULT)
        );
        assert_eq!(
            translate(&mem, l4, 0x0000_8000_0000_0000, Access::Read),
            Err(Errno::EFAULT)
        );
        assert_eq!(
            translate(&mem, l4, 0xffff_8300_0000_0000, Access::Read),
            Err(Errno::EFAULT)
        );
    }

    #[test]
    fn entries_pointing_outside_ram_fault() {
        let (mut mem, l4, _) = setup();
        // Corrupt the L4 entry to point far outside memory.
        let slot = l4.maddr() + 8 * table_index(GUEST_VIRT_BASE, 4) as u64;
        mem.write_u64(slot, 0x7_0000_0000 | PTE_P | PTE_US | PTE_RW);
        assert_eq!(
            translate(&mem, l4, GUEST_VIRT_BASE, Access::Read),
            Err(Errno::EFAULT)
        );
    }

    #[test]
    fn large_pages_are_translated() {
        let mut mem = TestMemory::new(8);
        let l4 = Mfn(1);
        let va = GUEST_VIRT_BASE;
        mem.write_u64(
            l4.maddr() + 8 * table_index(va, 4) as u64,
            Mfn(2).maddr() | PTE_P | PTE_US,
        );
        mem.write_u64(
            Mfn(2).maddr() + 8 * table_index(va, 3) as u64,
            Mfn(3).maddr() | PTE_P | PTE_US,
        );
        mem.write_u64(
            Mfn(3).maddr() + 8 * table_index(va, 2) as u64,
            0x4000_0000 | PTE_P | PTE_US | PTE_PS,
        );
        assert_eq!(
            translate(&mem, l4, va + 0x12_3456, Access::Read),
            Ok(0x4012_3456)
        );
        assert_eq!(
            translate(&mem, l4, va + 0x12_3456, Access::Write),
            Err(Errno::EFAULT)
        );
    }
}
