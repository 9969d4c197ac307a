//! DMA memory for dom0's device drivers.
//!
//! A device reads and writes *machine* addresses, and a multi-page buffer must be
//! contiguous in machine memory, but dom0's pseudo-physical pages are only contiguous
//! in pfn space. So at start of day dom0 looks in its own P2M for a run of pages whose
//! machine frames are consecutive ([`find_machine_contiguous`]) and keeps it as the
//! [`DmaArena`]: page allocations from it are contiguous in both spaces, and the device
//! address of an arena byte is plain arithmetic. Buffers outside the arena that are not
//! machine-contiguous are bounced through arena pages (`crate::virtio`'s `share`), like
//! Linux's swiotlb.
//!
//! Portable and host-tested; the target glue lives in `crate::virtio`.

use pv_guest_kernel::abi::{Errno, Pfn};
use pv_guest_kernel::mm::pool::PagePool;

/// Page size.
pub const PAGE: u64 = 4096;

/// The first `n` consecutive pfns in `[first, first + len)` whose machine frames (from
/// `p2m`; `None` = no frame) are consecutive too. Returns the first pfn and its mfn.
pub fn find_machine_contiguous(
    p2m: impl Fn(u64) -> Option<u64>,
    first: u64,
    len: u64,
    n: u64,
) -> Option<(u64, u64)> {
    if n == 0 {
        return None;
    }
    let mut run: Option<(u64, u64)> = None; // (start pfn, start mfn)
    for pfn in first..first.checked_add(len)? {
        let mfn = p2m(pfn);
        run = match (run, mfn) {
            (Some((s, m)), Some(x)) if x == m + (pfn - s) => Some((s, m)),
            (_, Some(x)) => Some((pfn, x)),
            (_, None) => None,
        };
        if let Some((s, m)) = run {
            if pfn + 1 - s == n {
                return Some((s, m));
            }
        }
    }
    None
}

/// Pages contiguous in pfn, virtual and machine space, handed out page-granular.
pub struct DmaArena<'a> {
    /// Virtual address of the first page.
    va: u64,
    /// Machine address of the first page.
    maddr: u64,
    /// Bookkeeping, in arena page numbers `0..len`.
    pool: PagePool<'a>,
}

impl<'a> DmaArena<'a> {
    /// An arena of `pool.len()` pages at `va` (virtual) and `maddr` (machine); `pool`
    /// must number its pages from 0.
    pub fn new(va: u64, maddr: u64, pool: PagePool<'a>) -> Option<Self> {
        (va.is_multiple_of(PAGE) && maddr.is_multiple_of(PAGE) && pool.first() == Pfn(0))
            .then_some(DmaArena { va, maddr, pool })
    }

    /// Bytes covered.
    pub fn len(&self) -> u64 {
        self.pool.len() * PAGE
    }

    /// True if the arena has no pages.
    pub fn is_empty(&self) -> bool {
        self.pool.is_empty()
    }

    /// Free pages.
    pub fn nr_free(&self) -> u64 {
        self.pool.nr_free()
    }

    /// `pages` contiguous pages: (machine address, virtual address).
    pub fn alloc(&mut self, pages: u64) -> Option<(u64, u64)> {
        let p = self.pool.alloc_contiguous(pages)?;
        Some((self.maddr + p.0 * PAGE, self.va + p.0 * PAGE))
    }

    /// Returns `pages` pages at machine address `maddr` (as returned by [`Self::alloc`]).
    /// Every page is checked first: nothing is freed unless all are allocated arena pages.
    pub fn free(&mut self, maddr: u64, pages: u64) -> Result<(), Errno> {
        let off = maddr.checked_sub(self.maddr).ok_or(Errno::EINVAL)?;
        if !off.is_multiple_of(PAGE) || pages == 0 {
            return Err(Errno::EINVAL);
        }
        let first = off / PAGE;
        let end = first.checked_add(pages).ok_or(Errno::EINVAL)?;
        if end > self.pool.len() || (first..end).any(|p| self.pool.is_free(Pfn(p))) {
            return Err(Errno::EINVAL);
        }
        for p in first..end {
            self.pool.free(Pfn(p)).map_err(|_| Errno::EINVAL)?;
        }
        Ok(())
    }

    /// The machine address of `[va, va + len)` if it lies inside the arena.
    pub fn maddr_of(&self, va: u64, len: u64) -> Option<u64> {
        let off = va.checked_sub(self.va)?;
        (off.checked_add(len)? <= self.len()).then_some(self.maddr + off)
    }

    /// The virtual address of machine address `maddr` if it lies inside the arena.
    pub fn va_of(&self, maddr: u64) -> Option<u64> {
        let off = maddr.checked_sub(self.maddr)?;
        (off < self.len()).then_some(self.va + off)
    }
}

/// Whether `[va, va + len)` is machine-contiguous given `translate` (virtual page ->
/// machine frame); returns its machine address if so.
pub fn contiguous_maddr(translate: impl Fn(u64) -> Option<u64>, va: u64, len: u64) -> Option<u64> {
    if len == 0 {
        return None;
    }
    let first_page = va / PAGE;
    let last_page = va.checked_add(len - 1)? / PAGE;
    let mfn0 = translate(first_page * PAGE)?;
    for (i, page) in (first_page..=last_page).enumerate() {
        if translate(page * PAGE)? != mfn0 + i as u64 {
            return None;
        }
    }
    Some(mfn0 * PAGE + va % PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use pv_guest_kernel::mm::pool::bitmap_words;

    fn arena(pages: u64) -> DmaArena<'static> {
        let w = bitmap_words(pages);
        let pool = PagePool::new(
            Pfn(0),
            pages,
            Box::leak(vec![0u64; w].into_boxed_slice()),
            Box::leak(vec![0u64; w].into_boxed_slice()),
        )
        .unwrap();
        DmaArena::new(0xffff_ffff_8100_0000, 0x20_0000, pool).unwrap()
    }

    #[test]
    fn finds_the_first_machine_contiguous_run() {
        // pfn -> mfn: 10..14 scattered, then 14..20 contiguous from mfn 0x500.
        let p2m = |pfn: u64| match pfn {
            10 => Some(0x900),
            11 => Some(0x901),
            12 => None,
            13 => Some(0x300),
            14..20 => Some(0x500 + pfn - 14),
            _ => Some(0x7000 + 2 * pfn),
        };
        assert_eq!(find_machine_contiguous(p2m, 10, 10, 2), Some((10, 0x900)));
        assert_eq!(find_machine_contiguous(p2m, 10, 10, 4), Some((14, 0x500)));
        assert_eq!(find_machine_contiguous(p2m, 10, 10, 6), Some((14, 0x500)));
        assert_eq!(find_machine_contiguous(p2m, 10, 10, 7), None);
        assert_eq!(find_machine_contiguous(p2m, 10, 10, 0), None);
        assert_eq!(find_machine_contiguous(p2m, u64::MAX, 2, 1), None);
    }

    #[test]
    fn arena_addresses_and_frees_are_checked() {
        let mut a = arena(8);
        let (m, v) = a.alloc(3).unwrap();
        assert_eq!((m, v), (0x20_0000, 0xffff_ffff_8100_0000));
        assert_eq!(a.maddr_of(v + 100, 8000), Some(m + 100));
        assert_eq!(a.maddr_of(v + 8 * PAGE - 1, 2), None, "runs past the end");
        assert_eq!(a.maddr_of(v - 1, 1), None);
        assert_eq!(a.va_of(m + 5), Some(v + 5));
        assert_eq!(a.va_of(m + 8 * PAGE), None);
        assert_eq!(a.alloc(6), None, "only 5 left");
        assert_eq!(a.free(m + 1, 1), Err(Errno::EINVAL), "misaligned");
        assert_eq!(a.free(m, 4), Err(Errno::EINVAL), "page 3 is free");
        assert_eq!(a.nr_free(), 5, "a refused free changes nothing");
        assert_eq!(a.free(m - PAGE, 1), Err(Errno::EINVAL));
        assert_eq!(a.free(m, u64::MAX), Err(Errno::EINVAL));
        a.free(m, 3).unwrap();
        assert_eq!(a.free(m, 1), Err(Errno::EINVAL), "double free");
        assert_eq!(a.alloc(8), Some((m, v)));
    }

    #[test]
    fn contiguity_of_arbitrary_buffers() {
        let t = |va: u64| {
            Some(match va / PAGE {
                0 => 7,
                1 => 8,
                2 => 3,
                _ => 100,
            })
        };
        assert_eq!(contiguous_maddr(t, 100, 4000), Some(7 * PAGE + 100));
        assert_eq!(contiguous_maddr(t, 4000, 1000), Some(7 * PAGE + 4000));
        assert_eq!(contiguous_maddr(t, 4000, 5000), None, "page 2 jumps back");
        assert_eq!(contiguous_maddr(t, 0, 0), None);
        assert_eq!(contiguous_maddr(t, u64::MAX, 2), None);
    }

    proptest! {
        /// Allocations never overlap and always translate inside the arena.
        #[test]
        fn allocations_are_disjoint(sizes in proptest::collection::vec(1u64..5, 1..20)) {
            let mut a = arena(32);
            let mut held: Vec<(u64, u64)> = Vec::new();
            for (i, n) in sizes.into_iter().enumerate() {
                if i % 3 == 2 && !held.is_empty() {
                    let (m, n) = held.remove(0);
                    prop_assert_eq!(a.free(m, n), Ok(()));
                }
                if let Some((m, v)) = a.alloc(n) {
                    prop_assert_eq!(a.maddr_of(v, n * PAGE), Some(m));
                    for &(m2, n2) in &held {
                        prop_assert!(m + n * PAGE <= m2 || m2 + n2 * PAGE <= m);
                    }
                    held.push((m, n));
                }
            }
        }
    }
}
