//! A page allocator over a range of pseudo-physical frames: one bit per page for "free",
//! one for "ballooned out" (given back to the hypervisor, no machine frame behind it).
//!
//! Each pfn of the range is in exactly one state:
//!
//! ```text
//!            alloc / alloc_contiguous / alloc_specific
//!   Free  ---------------------------------------------->  Allocated
//!         <----------------------------------------------
//!                              free
//!   Allocated --mark_ballooned--> Ballooned --take_ballooned--> Allocated
//! ```
//!
//! The pool only does the bookkeeping; unmapping, the reservation hypercalls and the P2M
//! are [`crate::mm::pv`]'s job. Portable and host-tested; the bitmaps are borrowed, so
//! the kernel can place them in memory it carved out at boot.

use abi::Pfn;

/// Why a pool operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The pfn is not in the pool's range.
    OutOfRange,
    /// The pfn is free (double free, or balloon of a free page).
    NotAllocated,
    /// The pfn is ballooned out.
    Ballooned,
}

/// The bookkeeping for pfns `[first, first + len)`.
pub struct PagePool<'a> {
    first: u64,
    len: u64,
    /// Bit set: free.
    free: &'a mut [u64],
    /// Bit set: ballooned out.
    ballooned: &'a mut [u64],
    nr_free: u64,
    nr_ballooned: u64,
    /// Where the next search starts (a word index).
    hint: usize,
}

/// u64 words needed for a bitmap of `len` pages.
pub const fn bitmap_words(len: u64) -> usize {
    len.div_ceil(64) as usize
}

impl<'a> PagePool<'a> {
    /// A pool of `len` pfns from `first`, all free, with bitmaps in `free` and
    /// `ballooned` (at least [`bitmap_words`]`(len)` words each; their contents are
    /// overwritten). `None` if a bitmap is too small.
    pub fn new(
        first: Pfn,
        len: u64,
        free: &'a mut [u64],
        ballooned: &'a mut [u64],
    ) -> Option<Self> {
        let words = bitmap_words(len);
        if free.len() < words || ballooned.len() < words {
            return None;
        }
        let (free, ballooned) = (&mut free[..words], &mut ballooned[..words]);
        free.fill(u64::MAX);
        if !len.is_multiple_of(64) {
            // Bits past the end are never free.
            free[words - 1] = (1u64 << (len % 64)) - 1;
        }
        ballooned.fill(0);
        Some(PagePool {
            first: first.0,
            len,
            free,
            ballooned,
            nr_free: len,
            nr_ballooned: 0,
            hint: 0,
        })
    }

    /// The first pfn of the range.
    pub fn first(&self) -> Pfn {
        Pfn(self.first)
    }

    /// Number of pfns in the range.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True if the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if `pfn` is in the range.
    pub fn contains(&self, pfn: Pfn) -> bool {
        pfn.0 >= self.first && pfn.0 - self.first < self.len
    }

    /// Free pages.
    pub fn nr_free(&self) -> u64 {
        self.nr_free
    }

    /// Ballooned-out pages.
    pub fn nr_ballooned(&self) -> u64 {
        self.nr_ballooned
    }

    /// Allocated pages (neither free nor ballooned).
    pub fn nr_allocated(&self) -> u64 {
        self.len - self.nr_free - self.nr_ballooned
    }

    fn bit(&self, pfn: Pfn) -> Result<(usize, u64), PoolError> {
        if !self.contains(pfn) {
            return Err(PoolError::OutOfRange);
        }
        let i = pfn.0 - self.first;
        Ok(((i / 64) as usize, 1u64 << (i % 64)))
    }

    /// True if `pfn` is in the range and free.
    pub fn is_free(&self, pfn: Pfn) -> bool {
        self.bit(pfn).is_ok_and(|(w, b)| self.free[w] & b != 0)
    }

    /// True if `pfn` is in the range and ballooned out.
    pub fn is_ballooned(&self, pfn: Pfn) -> bool {
        self.bit(pfn).is_ok_and(|(w, b)| self.ballooned[w] & b != 0)
    }

    /// Allocates one page (lowest free pfn at or after the last allocation, wrapping).
    pub fn alloc(&mut self) -> Option<Pfn> {
        if self.nr_free == 0 {
            return None;
        }
        let words = self.free.len();
        for k in 0..words {
            let w = (self.hint + k) % words;
            let bits = self.free[w];
            if bits != 0 {
                let b = bits.trailing_zeros() as u64;
                self.free[w] &= !(1 << b);
                self.nr_free -= 1;
                self.hint = w;
                return Some(Pfn(self.first + w as u64 * 64 + b));
            }
        }
        None
    }

    /// Allocates `pfn` itself if it is free.
    pub fn alloc_specific(&mut self, pfn: Pfn) -> bool {
        match self.bit(pfn) {
            Ok((w, b)) if self.free[w] & b != 0 => {
                self.free[w] &= !b;
                self.nr_free -= 1;
                true
            }
            _ => false,
        }
    }

    /// Allocates `n` consecutive pages (lowest fit); returns the first. `n == 0` is `None`.
    pub fn alloc_contiguous(&mut self, n: u64) -> Option<Pfn> {
        if n == 0 || n > self.nr_free {
            return None;
        }
        let mut run = 0;
        for i in 0..self.len {
            let pfn = Pfn(self.first + i);
            if self.is_free(pfn) {
                run += 1;
                if run == n {
                    let start = self.first + i + 1 - n;
                    for p in start..=self.first + i {
                        let taken = self.alloc_specific(Pfn(p));
                        debug_assert!(taken);
                    }
                    return Some(Pfn(start));
                }
            } else {
                run = 0;
            }
        }
        None
    }

    /// Returns an allocated page.
    pub fn free(&mut self, pfn: Pfn) -> Result<(), PoolError> {
        let (w, b) = self.bit(pfn)?;
        if self.free[w] & b != 0 {
            return Err(PoolError::NotAllocated);
        }
        if self.ballooned[w] & b != 0 {
            return Err(PoolError::Ballooned);
        }
        self.free[w] |= b;
        self.nr_free += 1;
        Ok(())
    }

    /// Records that allocated page `pfn` was given back to the hypervisor.
    pub fn mark_ballooned(&mut self, pfn: Pfn) -> Result<(), PoolError> {
        let (w, b) = self.bit(pfn)?;
        if self.free[w] & b != 0 {
            return Err(PoolError::NotAllocated);
        }
        if self.ballooned[w] & b != 0 {
            return Err(PoolError::Ballooned);
        }
        self.ballooned[w] |= b;
        self.nr_ballooned += 1;
        Ok(())
    }

    /// Takes a ballooned-out pfn (lowest first) to be populated again: it becomes
    /// allocated (free it once it has a frame again, or [`PagePool::mark_ballooned`] it
    /// back if populating failed).
    pub fn take_ballooned(&mut self) -> Option<Pfn> {
        if self.nr_ballooned == 0 {
            return None;
        }
        let (w, bits) = self
            .ballooned
            .iter()
            .copied()
            .enumerate()
            .find(|&(_, bits)| bits != 0)?;
        let b = bits.trailing_zeros() as u64;
        self.ballooned[w] &= !(1 << b);
        self.nr_ballooned -= 1;
        Some(Pfn(self.first + w as u64 * 64 + b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn pool(first: u64, len: u64) -> PagePool<'static> {
        let w = bitmap_words(len);
        let free = Box::leak(vec![0; w].into_boxed_slice());
        let ball = Box::leak(vec![0; w].into_boxed_slice());
        PagePool::new(Pfn(first), len, free, ball).unwrap()
    }

    #[test]
    fn allocates_every_page_once() {
        let mut p = pool(100, 130);
        let mut seen = BTreeSet::new();
        while let Some(pfn) = p.alloc() {
            assert!((100..230).contains(&pfn.0), "{pfn:?}");
            assert!(seen.insert(pfn.0), "{pfn:?} twice");
        }
        assert_eq!(seen.len(), 130);
        assert_eq!((p.nr_free(), p.nr_allocated()), (0, 130));
        assert_eq!(p.free(Pfn(150)), Ok(()));
        assert_eq!(p.free(Pfn(150)), Err(PoolError::NotAllocated));
        assert_eq!(p.free(Pfn(99)), Err(PoolError::OutOfRange));
        assert_eq!(p.free(Pfn(230)), Err(PoolError::OutOfRange));
        assert_eq!(p.alloc(), Some(Pfn(150)));
        assert_eq!(p.alloc(), None);
    }

    #[test]
    fn small_bitmaps_are_refused() {
        let mut a = [0u64; 1];
        let mut b = [0u64; 2];
        assert!(PagePool::new(Pfn(0), 65, &mut a, &mut b).is_none());
        let mut a = [0u64; 2];
        let p = PagePool::new(Pfn(0), 65, &mut a, &mut b).unwrap();
        assert_eq!(p.nr_free(), 65);
        assert!(PagePool::new(Pfn(0), 0, &mut [], &mut []).is_some_and(|p| p.is_empty()));
    }

    #[test]
    fn contiguous_and_specific() {
        let mut p = pool(0, 200);
        assert!(p.alloc_specific(Pfn(3)));
        assert!(!p.alloc_specific(Pfn(3)));
        assert!(!p.alloc_specific(Pfn(200)));
        assert_eq!(p.alloc_contiguous(3), Some(Pfn(0)));
        assert_eq!(p.alloc_contiguous(2), Some(Pfn(4)));
        // Crosses a word boundary.
        assert!(p.alloc_specific(Pfn(70)));
        assert_eq!(p.alloc_contiguous(64), Some(Pfn(6)));
        assert_eq!(p.alloc_contiguous(100), Some(Pfn(71)));
        assert_eq!(p.alloc_contiguous(100), None);
        assert_eq!(p.alloc_contiguous(0), None);
        assert_eq!(p.nr_free(), 200 - 1 - 3 - 2 - 1 - 64 - 100);
    }

    #[test]
    fn balloon_bookkeeping() {
        let mut p = pool(10, 64);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_eq!(p.mark_ballooned(Pfn(40)), Err(PoolError::NotAllocated));
        assert_eq!(p.mark_ballooned(a), Ok(()));
        assert_eq!(p.mark_ballooned(a), Err(PoolError::Ballooned));
        assert_eq!(p.free(a), Err(PoolError::Ballooned));
        assert!(p.is_ballooned(a) && !p.is_free(a));
        assert_eq!(p.mark_ballooned(b), Ok(()));
        assert_eq!(
            (p.nr_ballooned(), p.nr_allocated(), p.nr_free()),
            (2, 0, 62)
        );
        // The allocator never hands out ballooned pages.
        let mut n = 0;
        while let Some(pfn) = p.alloc() {
            assert!(pfn != a && pfn != b);
            n += 1;
        }
        assert_eq!(n, 62);
        assert_eq!(p.take_ballooned(), Some(a.min(b)));
        assert_eq!(p.take_ballooned(), Some(a.max(b)));
        assert_eq!(p.take_ballooned(), None);
        assert_eq!(p.free(a), Ok(()));
        assert_eq!(p.nr_ballooned(), 0);
    }
}
