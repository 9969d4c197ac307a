//! The frame table: one entry per machine frame saying who owns it, and the frame
//! allocator built on it.
//!
//! Invariants:
//! - A frame is `Free` only if nothing (hypervisor or domain) uses it; only free frames
//!   are handed out by [`FrameTable::alloc`].
//! - Frames that are not RAM, or hold the hypervisor image, boot modules or the frame
//!   table itself, are `Reserved` and never allocated or freed.
//! - Every frame a domain uses (its memory, its page tables, its shared_info) is owned by
//!   that domain here, independent of anything the domain itself can write (a P2M is
//!   guest-writable and therefore never trusted for teardown). Destroying a domain frees
//!   exactly the frames this table says it owns ([`FrameTable::release_domain`]).
//!
//! - Each frame also has a page type ([`PageType`]), a type count, a general reference
//!   count and a pinned bit; [`crate::mm`] maintains them and states their invariants:
//!   a frame is mapped writable anywhere only while its type is `Writable`; a page-table
//!   frame is only ever mapped read-only; types change only at type count zero; a frame
//!   is freed only when both counts are zero.

use abi::{DomId, Errno, Mfn};

/// Who a frame belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Not RAM, or never to be allocated (hypervisor image, modules, this table).
    Reserved,
    /// Available.
    Free,
    /// Allocated to the hypervisor itself.
    Hypervisor,
    /// Allocated to a domain.
    Domain(DomId),
    /// Belonged to a domain that has died, but other domains still hold references;
    /// freed when the last reference goes ([`crate::mm`]).
    Zombie(DomId),
}

/// What a frame is currently used as (Xen's page types). A frame's type can change only
/// while its type count is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageType {
    /// No current use.
    None,
    /// Mapped writable somewhere (type count = number of writable mappings).
    Writable,
    /// An L1 page table (type count = parent L2 entries + pins).
    L1,
    /// An L2 page table.
    L2,
    /// An L3 page table.
    L3,
    /// An L4 page table (type count includes base-pointer loads).
    L4,
    /// A descriptor table (GDT/LDT); reserved for later use.
    SegDesc,
}

impl PageType {
    /// The page-table level (1..=4), if this is a page-table type.
    pub const fn level(self) -> Option<u32> {
        match self {
            PageType::L1 => Some(1),
            PageType::L2 => Some(2),
            PageType::L3 => Some(3),
            PageType::L4 => Some(4),
            _ => None,
        }
    }
    /// The page-table type of `level` (1..=4).
    pub const fn table(level: u32) -> PageType {
        match level {
            1 => PageType::L1,
            2 => PageType::L2,
            3 => PageType::L3,
            _ => PageType::L4,
        }
    }
}

/// Per-frame bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Current owner.
    pub owner: Owner,
    /// Current type.
    pub ptype: PageType,
    /// Pinned (holds one type and one general reference).
    pub pinned: bool,
    /// Uses in the current type.
    pub type_count: u32,
    /// All uses: every present entry pointing at it, pins, base-pointer loads.
    pub ref_count: u32,
}

impl FrameInfo {
    /// The state of every frame before the memory map is read.
    pub const RESERVED: FrameInfo = FrameInfo {
        owner: Owner::Reserved,
        ptype: PageType::None,
        pinned: false,
        type_count: 0,
        ref_count: 0,
    };

    fn fresh(owner: Owner) -> FrameInfo {
        FrameInfo {
            owner,
            ..FrameInfo::RESERVED
        }
    }

    /// True if nothing uses the frame.
    pub fn unused(&self) -> bool {
        self.ref_count == 0 && self.type_count == 0 && !self.pinned
    }
}

/// Errors from frame-table operations. All are hypervisor bugs or exhaustion, never
/// caused directly by guest input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// No free frame left.
    OutOfMemory,
    /// The frame number is beyond the table.
    OutOfRange(Mfn),
    /// The frame is not owned by the one freeing it (double free or wrong owner).
    NotOwned(Mfn),
}

impl From<FrameError> for Errno {
    fn from(e: FrameError) -> Errno {
        match e {
            FrameError::OutOfMemory => Errno::ENOMEM,
            FrameError::OutOfRange(_) | FrameError::NotOwned(_) => Errno::EINVAL,
        }
    }
}

/// The frame table over machine frames `[0, entries.len())`.
pub struct FrameTable<'a> {
    entries: &'a mut [FrameInfo],
    free: usize,
    /// Where the next allocation search starts (keeps allocation O(1) amortised).
    hint: usize,
    /// Which non-RAM frames are device memory (set once the memory map is known).
    iomem: crate::iomem::IoMem,
}

impl<'a> FrameTable<'a> {
    /// A table whose frames are all `Reserved`; mark RAM free with [`Self::add_free_range`].
    pub fn new(entries: &'a mut [FrameInfo]) -> Self {
        entries.fill(FrameInfo::RESERVED);
        FrameTable {
            entries,
            free: 0,
            hint: 0,
            iomem: crate::iomem::IoMem::NONE,
        }
    }

    /// Wraps entries that already hold state (host tests that keep the entries between
    /// operations). Recounts the free frames.
    #[cfg(test)]
    pub fn from_existing(entries: &'a mut [FrameInfo]) -> Self {
        let free = entries.iter().filter(|e| e.owner == Owner::Free).count();
        FrameTable {
            entries,
            free,
            hint: 0,
            iomem: crate::iomem::IoMem::NONE,
        }
    }

    /// Number of frames covered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if the table covers no frames.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Marks `[start, end)` as free RAM (clamped to the table). Frames already reserved
    /// by [`Self::reserve_range`] stay reserved only if reserved *after* this call.
    pub fn add_free_range(&mut self, start: Mfn, end: Mfn) {
        let end = (end.0 as usize).min(self.entries.len());
        for i in (start.0 as usize).min(end)..end {
            if self.entries[i].owner == Owner::Reserved {
                self.entries[i] = FrameInfo::fresh(Owner::Free);
                self.free += 1;
            }
        }
    }

    /// Marks `[start, end)` reserved (clamped), whatever it was.
    pub fn reserve_range(&mut self, start: Mfn, end: Mfn) {
        let end = (end.0 as usize).min(self.entries.len());
        for i in (start.0 as usize).min(end)..end {
            if self.entries[i].owner == Owner::Free {
                self.free -= 1;
            }
            self.entries[i].owner = Owner::Reserved;
        }
    }

    /// Free frames.
    pub fn free_count(&self) -> usize {
        self.free
    }

    /// Owner of `mfn`, `None` if beyond the table.
    pub fn owner(&self, mfn: Mfn) -> Option<Owner> {
        self.entries
            .get(usize::try_from(mfn.0).ok()?)
            .map(|f| f.owner)
    }

    /// Allocates one frame for `owner`. The caller zeroes it if needed.
    pub fn alloc(&mut self, owner: Owner) -> Result<Mfn, FrameError> {
        debug_assert!(matches!(owner, Owner::Hypervisor | Owner::Domain(_)));
        let n = self.entries.len();
        for k in 0..n {
            let i = (self.hint + k) % n;
            if self.entries[i].owner == Owner::Free {
                self.entries[i] = FrameInfo::fresh(owner);
                self.free -= 1;
                self.hint = (i + 1) % n;
                return Ok(Mfn(i as u64));
            }
        }
        Err(FrameError::OutOfMemory)
    }

    /// Allocates `count` physically contiguous frames for `owner` (boot-time use).
    pub fn alloc_contiguous(&mut self, owner: Owner, count: usize) -> Result<Mfn, FrameError> {
        let n = self.entries.len();
        let mut run = 0;
        for i in 0..n {
            if self.entries[i].owner == Owner::Free {
                run += 1;
                if run == count {
                    let start = i + 1 - count;
                    for e in &mut self.entries[start..=i] {
                        *e = FrameInfo::fresh(owner);
                    }
                    self.free -= count;
                    return Ok(Mfn(start as u64));
                }
            } else {
                run = 0;
            }
        }
        Err(FrameError::OutOfMemory)
    }

    /// Returns a frame owned by `owner` to the free pool.
    pub fn free(&mut self, mfn: Mfn, owner: Owner) -> Result<(), FrameError> {
        let e = usize::try_from(mfn.0)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
            .ok_or(FrameError::OutOfRange(mfn))?;
        if e.owner != owner {
            return Err(FrameError::NotOwned(mfn));
        }
        *e = FrameInfo::fresh(Owner::Free);
        self.free += 1;
        Ok(())
    }

    /// Frees every frame owned by `dom` that nothing references; frames still referenced
    /// (by other domains' mappings) become zombies, freed by the last
    /// [`FrameTable::put_ref`]. Returns (freed, zombies). The caller must already have
    /// dropped the domain's own references (its tables, pins, base pointer) and stopped
    /// running on its page tables.
    pub fn release_domain(&mut self, dom: DomId) -> (usize, usize) {
        let (mut n, mut z) = (0, 0);
        for e in self.entries.iter_mut() {
            if e.owner == Owner::Domain(dom) {
                if e.ref_count == 0 {
                    *e = FrameInfo::fresh(Owner::Free);
                    n += 1;
                } else {
                    e.owner = Owner::Zombie(dom);
                    e.pinned = false;
                    z += 1;
                }
            }
        }
        self.free += n;
        (n, z)
    }

    /// Per-frame info, `None` beyond the table.
    pub fn info(&self, mfn: Mfn) -> Option<&FrameInfo> {
        self.entries.get(usize::try_from(mfn.0).ok()?)
    }

    /// Sets which non-RAM frames are device memory (boot, from the memory map).
    pub fn set_iomem(&mut self, iomem: crate::iomem::IoMem) {
        self.iomem = iomem;
    }

    /// Whether `mfn` is device memory a privileged domain may map without references:
    /// permitted by the memory map ([`crate::iomem::IoMem::permits`]) *and* never a frame
    /// this table could hand out (beyond the table, or `Reserved`, which never changes
    /// after boot). A pure function of boot-time state, so `mm` taking and dropping
    /// references always agree on it.
    pub fn is_iomem(&self, mfn: Mfn) -> bool {
        self.iomem.permits(mfn.0) && self.info(mfn).is_none_or(|f| f.owner == Owner::Reserved)
    }

    /// Mutable per-frame info, `None` beyond the table.
    pub fn info_mut(&mut self, mfn: Mfn) -> Option<&mut FrameInfo> {
        self.entries.get_mut(usize::try_from(mfn.0).ok()?)
    }

    /// Drops one general reference; a zombie frame whose last reference goes is freed.
    pub fn put_ref(&mut self, mfn: Mfn) {
        let Some(e) = self.info_mut(mfn) else { return };
        debug_assert!(e.ref_count > 0, "reference count underflow on {mfn:?}");
        e.ref_count = e.ref_count.saturating_sub(1);
        if e.ref_count == 0 && matches!(e.owner, Owner::Zombie(_)) {
            *e = FrameInfo::fresh(Owner::Free);
            self.free += 1;
        }
    }

    /// Iterates over `(mfn, info)` for every frame.
    pub fn iter(&self) -> impl Iterator<Item = (Mfn, &FrameInfo)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| (Mfn(i as u64), e))
    }

    /// Frames owned by `dom`.
    pub fn count_owned(&self, dom: DomId) -> usize {
        self.entries
            .iter()
            .filter(|e| e.owner == Owner::Domain(dom))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(entries: &mut [FrameInfo]) -> FrameTable<'_> {
        let mut t = FrameTable::new(entries);
        t.add_free_range(Mfn(0), Mfn(entries_len(&t)));
        t
    }
    fn entries_len(t: &FrameTable<'_>) -> u64 {
        t.len() as u64
    }

    #[test]
    fn reserved_frames_are_never_allocated() {
        let mut e = vec![FrameInfo::RESERVED; 16];
        let mut t = FrameTable::new(&mut e);
        t.add_free_range(Mfn(4), Mfn(100)); // clamped to 16
        t.reserve_range(Mfn(8), Mfn(10));
        assert_eq!(t.free_count(), 10);
        let mut got = vec![];
        while let Ok(m) = t.alloc(Owner::Hypervisor) {
            got.push(m.0);
        }
        got.sort();
        assert_eq!(got, vec![4, 5, 6, 7, 10, 11, 12, 13, 14, 15]);
        assert_eq!(t.alloc(Owner::Hypervisor), Err(FrameError::OutOfMemory));
    }

    #[test]
    fn double_free_and_wrong_owner_are_refused() {
        let mut e = vec![FrameInfo::RESERVED; 4];
        let mut t = table(&mut e);
        let d1 = Owner::Domain(DomId(1));
        let m = t.alloc(d1).unwrap();
        assert_eq!(
            t.free(m, Owner::Domain(DomId(2))),
            Err(FrameError::NotOwned(m))
        );
        assert_eq!(t.free(m, d1), Ok(()));
        assert_eq!(t.free(m, d1), Err(FrameError::NotOwned(m)));
        assert_eq!(t.free(Mfn(99), d1), Err(FrameError::OutOfRange(Mfn(99))));
        assert_eq!(
            t.free(Mfn(u64::MAX), d1),
            Err(FrameError::OutOfRange(Mfn(u64::MAX)))
        );
    }

    #[test]
    fn contiguous_allocation_skips_holes() {
        let mut e = vec![FrameInfo::RESERVED; 32];
        let mut t = table(&mut e);
        t.reserve_range(Mfn(3), Mfn(4));
        let m = t.alloc_contiguous(Owner::Hypervisor, 8).unwrap();
        assert_eq!(m, Mfn(4));
        assert_eq!(t.free_count(), 32 - 1 - 8);
        assert!(t.alloc_contiguous(Owner::Hypervisor, 30).is_err());
    }

    proptest! {
        /// Any interleaving of allocations and domain releases conserves frames and
        /// never hands out a frame twice.
        #[test]
        fn conservation(ops in proptest::collection::vec((0u16..4, any::<bool>()), 1..200)) {
            let mut e = vec![FrameInfo::RESERVED; 64];
            let mut t = table(&mut e);
            let mut live: std::collections::HashMap<u64, u16> = Default::default();
            for (dom, release) in ops {
                if release {
                    let (n, _) = t.release_domain(DomId(dom));
                    let before = live.len();
                    live.retain(|_, d| *d != dom);
                    prop_assert_eq!(before - live.len(), n);
                } else if let Ok(m) = t.alloc(Owner::Domain(DomId(dom))) {
                    prop_assert!(live.insert(m.0, dom).is_none(), "frame handed out twice");
                }
                prop_assert_eq!(t.free_count() + live.len(), 64);
                for d in 0..4 {
                    prop_assert_eq!(t.count_owned(DomId(d)), live.values().filter(|x| **x == d).count());
                }
            }
        }
    }
}
