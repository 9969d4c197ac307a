//! Page-table arithmetic: levels, indices, entry values. Portable and host-tested; nothing
//! here touches memory or the hypervisor.
//!
//! Entries hold **machine** frame numbers ([`Mfn`]); the hypervisor forces the user bit
//! on, so every constructor here sets it too (what you write is what you read back).

use abi::layout::{HYPERVISOR_L4_FIRST, HYPERVISOR_L4_LAST};
use abi::mm::pte::{self, A, ADDR_MASK, D, NX, P, RW, US};
use abi::mm::{MMUEXT_PIN_L1_TABLE, MMUEXT_PIN_L2_TABLE, MMUEXT_PIN_L3_TABLE, MMUEXT_PIN_L4_TABLE};
use abi::{Errno, Mfn, PAGE_SIZE};

/// Entries per table.
pub const ENTRIES: usize = 512;
/// Bytes per entry.
pub const ENTRY_SIZE: u64 = 8;

/// A page-table level (L4 is the root).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Maps 4 KiB pages.
    L1 = 1,
    /// Points at L1 tables.
    L2 = 2,
    /// Points at L2 tables.
    L3 = 3,
    /// The root.
    L4 = 4,
}

impl Level {
    /// Root first: L4, L3, L2, L1.
    pub const TOP_DOWN: [Level; 4] = [Level::L4, Level::L3, Level::L2, Level::L1];

    /// The number: 1..=4.
    pub const fn number(self) -> u32 {
        self as u32
    }

    /// The bit position of this level's index in a virtual address (12, 21, 30, 39).
    pub const fn shift(self) -> u32 {
        12 + 9 * (self as u32 - 1)
    }

    /// Bytes one entry of this level covers (4 KiB, 2 MiB, 1 GiB, 512 GiB).
    pub const fn entry_span(self) -> u64 {
        1 << self.shift()
    }

    /// The index of `va` in a table of this level.
    pub const fn index(self, va: u64) -> usize {
        ((va >> self.shift()) & (ENTRIES as u64 - 1)) as usize
    }

    /// The level the entries of this level point at (`None` for L1).
    pub const fn child(self) -> Option<Level> {
        match self {
            Level::L4 => Some(Level::L3),
            Level::L3 => Some(Level::L2),
            Level::L2 => Some(Level::L1),
            Level::L1 => None,
        }
    }

    /// The `MMUEXT_PIN_Ln_TABLE` command for this level.
    pub const fn pin_cmd(self) -> u32 {
        match self {
            Level::L1 => MMUEXT_PIN_L1_TABLE,
            Level::L2 => MMUEXT_PIN_L2_TABLE,
            Level::L3 => MMUEXT_PIN_L3_TABLE,
            Level::L4 => MMUEXT_PIN_L4_TABLE,
        }
    }
}

/// The four indices of `va`: `[l4, l3, l2, l1]`.
pub const fn indices(va: u64) -> [usize; 4] {
    [
        Level::L4.index(va),
        Level::L3.index(va),
        Level::L2.index(va),
        Level::L1.index(va),
    ]
}

/// The canonical virtual address with indices `[l4, l3, l2, l1]` (offset 0); indices are
/// taken modulo 512.
pub const fn va_of(idx: [usize; 4]) -> u64 {
    let raw = ((idx[0] as u64 & 511) << 39)
        | ((idx[1] as u64 & 511) << 30)
        | ((idx[2] as u64 & 511) << 21)
        | ((idx[3] as u64 & 511) << 12);
    // Sign-extend bit 47.
    (((raw << 16) as i64) >> 16) as u64
}

/// Machine address of entry `idx` of the table in frame `table`.
pub const fn entry_maddr(table: Mfn, idx: usize) -> u64 {
    table.maddr() + idx as u64 * ENTRY_SIZE
}

/// Splits an entry's machine address into (table frame, index). `None` if it is not
/// 8-byte aligned.
pub const fn split_entry_maddr(maddr: u64) -> Option<(Mfn, usize)> {
    if !maddr.is_multiple_of(ENTRY_SIZE) {
        return None;
    }
    Some((
        Mfn::containing(maddr),
        ((maddr % PAGE_SIZE as u64) / ENTRY_SIZE) as usize,
    ))
}

/// True if the entry is present.
pub const fn is_present(e: u64) -> bool {
    e & P != 0
}

/// True if the entry is writable.
pub const fn is_writable(e: u64) -> bool {
    e & RW != 0
}

/// The frame an entry points at.
pub const fn entry_mfn(e: u64) -> Mfn {
    Mfn((e & ADDR_MASK) >> abi::PAGE_SHIFT)
}

/// An entry in an L2..L4 table pointing at the next-level table `mfn`: present, writable
/// (the leaf decides), user, accessed.
pub const fn table_entry(mfn: Mfn) -> u64 {
    (mfn.maddr() & ADDR_MASK) | P | RW | US | A
}

/// An L1 entry mapping data frame `mfn`: present, user, accessed, no-execute; writable
/// (and dirty) if `writable`.
pub const fn leaf_entry(mfn: Mfn, writable: bool) -> u64 {
    let base = (mfn.maddr() & ADDR_MASK) | P | US | A | NX;
    if writable {
        base | RW | D
    } else {
        base
    }
}

/// The bits that say what an entry maps and how (frame, present, writable), ignoring the
/// accessed/dirty bits the CPU sets and the user bit the hypervisor forces.
pub const fn essential(e: u64) -> u64 {
    e & (ADDR_MASK | P | RW | NX | pte::PS)
}

/// True if L4 slot `slot` belongs to the hypervisor.
pub const fn is_hypervisor_slot(slot: usize) -> bool {
    slot >= HYPERVISOR_L4_FIRST && slot <= HYPERVISOR_L4_LAST
}

/// Checks that `va` can be mapped by a guest: canonical, page aligned, outside the
/// hypervisor's region. `EINVAL` for the first two, `EPERM` for the last.
pub fn check_guest_va(va: u64) -> Result<(), Errno> {
    if !abi::layout::is_canonical(va) || !va.is_multiple_of(PAGE_SIZE as u64) {
        return Err(Errno::EINVAL);
    }
    if abi::layout::is_hypervisor_va(va) {
        return Err(Errno::EPERM);
    }
    Ok(())
}

/// Checks that the `n` pages from `va` can all be mapped by a guest: [`check_guest_va`]
/// for the first and the last page, and no crossing of the canonical hole in between. `n == 0` is fine.
pub fn check_guest_range(va: u64, n: u64) -> Result<(), Errno> {
    check_guest_va(va)?;
    if n == 0 {
        return Ok(());
    }
    let last = (n - 1)
        .checked_mul(PAGE_SIZE as u64)
        .and_then(|off| va.checked_add(off))
        .ok_or(Errno::EINVAL)?;
    check_guest_va(last)?;
    if region(va) != region(last) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// 0: lower half, 1: upper half. (The hypervisor's region starts the upper half, so a
/// range that passes [`check_guest_va`] at both ends cannot contain it.)
const fn region(va: u64) -> u8 {
    (va >> 63) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::layout::GUEST_VIRT_BASE;

    #[test]
    fn indices_round_trip() {
        for va in [
            0u64,
            0x4000_0000,
            0x7000_0000,
            0x3fff_f000,
            0x0000_7fff_ffff_f000,
            GUEST_VIRT_BASE,
            GUEST_VIRT_BASE - 4096,
            0xffff_8000_0000_0000,
            0xffff_ffff_ffff_f000,
        ] {
            assert_eq!(va_of(indices(va)), va, "{va:#x}");
        }
        assert_eq!(indices(GUEST_VIRT_BASE), [511, 510, 0, 0]);
        assert_eq!(indices(GUEST_VIRT_BASE - 4096), [511, 509, 511, 511]);
        assert_eq!(indices(0x4000_0000), [0, 1, 0, 0]);
        assert_eq!(indices(0x7000_0000), [0, 1, 384, 0]);
        assert_eq!(va_of([256, 0, 0, 0]), abi::layout::HYPERVISOR_VIRT_START);
        assert_eq!(Level::L2.entry_span(), 2 << 20);
        assert_eq!(Level::L4.child(), Some(Level::L3));
        assert_eq!(Level::L1.child(), None);
    }

    #[test]
    fn entries() {
        let m = Mfn(0x1234);
        assert_eq!(entry_maddr(m, 3), 0x123_4018);
        assert_eq!(split_entry_maddr(0x123_4018), Some((m, 3)));
        assert_eq!(split_entry_maddr(0x123_4019), None);
        let t = table_entry(m);
        assert!(is_present(t) && is_writable(t));
        assert_eq!(entry_mfn(t), m);
        assert_eq!(t & US, US);
        let ro = leaf_entry(m, false);
        assert!(is_present(ro) && !is_writable(ro));
        assert_eq!(ro & NX, NX);
        assert_eq!(entry_mfn(leaf_entry(m, true)), m);
        assert_eq!(essential(ro | D | A | US), essential(ro));
        // No reserved bits ever set by the constructors.
        assert_eq!(t & pte::RESERVED_HIGH, 0);
        assert_eq!(leaf_entry(Mfn(u64::MAX), true) & pte::RESERVED_HIGH, 0);
        assert_eq!(leaf_entry(m, true) & pte::PS, 0);
    }

    #[test]
    fn pin_commands() {
        assert_eq!(Level::L1.pin_cmd(), 0);
        assert_eq!(Level::L4.pin_cmd(), 3);
    }

    #[test]
    fn guest_va_checks() {
        assert_eq!(check_guest_va(0x4000_0000), Ok(()));
        assert_eq!(check_guest_va(0x4000_0008), Err(Errno::EINVAL));
        assert_eq!(check_guest_va(0x0000_8000_0000_0000), Err(Errno::EINVAL));
        assert_eq!(check_guest_va(0xffff_8000_0000_0000), Err(Errno::EPERM));
        assert_eq!(check_guest_va(0xffff_87ff_ffff_f000), Err(Errno::EPERM));
        assert_eq!(check_guest_va(0xffff_8800_0000_0000), Ok(()));
        assert!(is_hypervisor_slot(256) && is_hypervisor_slot(271));
        assert!(!is_hypervisor_slot(255) && !is_hypervisor_slot(272));
    }

    #[test]
    fn guest_ranges() {
        assert_eq!(check_guest_range(0x4000_0000, 0), Ok(()));
        assert_eq!(check_guest_range(0x4000_0000, 600), Ok(()));
        // Ends exactly at the top of the lower half / of the address space.
        assert_eq!(check_guest_range(0x0000_7fff_fffe_0000, 32), Ok(()));
        assert_eq!(check_guest_range(0xffff_ffff_fffe_0000, 32), Ok(()));
        assert_eq!(
            check_guest_range(0x0000_7fff_fffe_0000, 33),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            check_guest_range(0xffff_ffff_fffe_0000, 33),
            Err(Errno::EINVAL)
        );
        // Starts in the hypervisor's region.
        assert_eq!(
            check_guest_range(0xffff_87ff_ffff_f000, 2),
            Err(Errno::EPERM)
        );
        assert_eq!(check_guest_range(0, u64::MAX), Err(Errno::EINVAL));
    }
}
