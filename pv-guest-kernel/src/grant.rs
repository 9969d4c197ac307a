//! This domain's side of grant tables: its own table as a granter ([`GrantEntries`],
//! [`RefAllocator`]) and the virtual-address slots where it maps other domains' grants
//! ([`ForeignSlots`]). Portable and host-tested; [`crate::platform`] wires them to the
//! hypercalls.
//!
//! # The entry protocol (v1, see [`abi::grant_table`] and `hv-core/src/grant.rs`)
//!
//! - **Grant**: write `domid` and `frame`, then publish `flags = GTF_permit_access
//!   [| GTF_readonly]` with a release store, so the hypervisor (which reads flags, then
//!   the rest) never sees a valid entry with stale contents.
//! - **Revoke**: while the hypervisor has the frame mapped or is copying, it keeps
//!   `GTF_reading`/`GTF_writing` set in the same `flags` word. Revoking is one
//!   compare-and-swap of `flags` from a value without those bits to 0: if the
//!   hypervisor sets a bit between our read and the swap, the swap fails and we look
//!   again; if a bit is set we report `EBUSY` and leave the entry valid. So a revoke can
//!   never pull a frame from under a mapping (no race with a concurrent map).
//!
//! The entries are shared with the hypervisor and read by it at any time, so they are
//! only ever accessed through atomics, never Rust references to plain integers.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, Ordering};

use abi::grant_table::{
    GNTTAB_NR_RESERVED_ENTRIES, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY, GTF_WRITING,
};
use abi::{DomId, Errno};

/// How often [`GrantEntries::revoke`] retries when the hypervisor keeps changing the
/// entry's in-use bits under it (it then reports `EBUSY`).
pub const REVOKE_RETRIES: u32 = 16;

/// Grant entry bits that say the grantee is using the frame.
const IN_USE: u16 = GTF_READING | GTF_WRITING;

/// A view of this domain's v1 grant entries (`nr` entries of 8 bytes at `base`).
pub struct GrantEntries {
    base: NonNull<u8>,
    nr: u32,
}

// SAFETY: an address plus a length; all accesses are atomic (the constructor's contract
// already allows concurrent access by the hypervisor).
unsafe impl Send for GrantEntries {}
// SAFETY: as for `Send`: shared use only performs atomic accesses.
unsafe impl Sync for GrantEntries {}

impl GrantEntries {
    /// The entries at `base`.
    ///
    /// # Safety
    /// `base` points to `nr * 8` bytes, 8-byte aligned, mapped writable for the life of
    /// the view, accessed by nothing else in this program but atomics (the hypervisor
    /// may change them at any time).
    pub unsafe fn new(base: NonNull<u8>, nr: u32) -> GrantEntries {
        debug_assert!((base.as_ptr() as usize).is_multiple_of(8));
        GrantEntries { base, nr }
    }

    /// Number of entries.
    pub fn len(&self) -> u32 {
        self.nr
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.nr == 0
    }

    fn entry(&self, gref: u32) -> Result<*mut u8, Errno> {
        if gref >= self.nr {
            return Err(Errno::EINVAL);
        }
        // SAFETY: gref < nr keeps the offset inside the table (constructor contract).
        Ok(unsafe { self.base.as_ptr().add(gref as usize * 8) })
    }

    fn flags(&self, gref: u32) -> Result<&AtomicU16, Errno> {
        let p = self.entry(gref)?;
        // SAFETY: in the table, 8-byte aligned entry (so 2-byte aligned flags), only
        // accessed atomically (constructor contract).
        Ok(unsafe { AtomicU16::from_ptr(p.cast()) })
    }

    /// The entry's `flags` word now (type, permission and the hypervisor's in-use bits).
    pub fn flags_of(&self, gref: u32) -> Result<u16, Errno> {
        Ok(self.flags(gref)?.load(Ordering::Acquire))
    }

    /// (domid, frame) of the entry now.
    pub fn target_of(&self, gref: u32) -> Result<(DomId, u32), Errno> {
        let p = self.entry(gref)?;
        // SAFETY: as in `flags`, at offsets 2 (u16) and 4 (u32) of an 8-aligned entry.
        let (d, f) = unsafe {
            (
                AtomicU16::from_ptr(p.add(2).cast()),
                AtomicU32::from_ptr(p.add(4).cast()),
            )
        };
        Ok((DomId(d.load(Ordering::Acquire)), f.load(Ordering::Acquire)))
    }

    /// Grants `peer` access to machine frame `frame` through entry `gref`, which must be
    /// unused (`EBUSY` otherwise; frames beyond 32 bits: `ERANGE`).
    pub fn publish(&self, gref: u32, peer: DomId, frame: u64, readonly: bool) -> Result<(), Errno> {
        let frame = u32::try_from(frame).map_err(|_| Errno::ERANGE)?;
        let flags = self.flags(gref)?;
        if flags.load(Ordering::Acquire) != 0 {
            return Err(Errno::EBUSY);
        }
        let p = self.entry(gref)?;
        // SAFETY: as in `target_of`.
        unsafe {
            AtomicU16::from_ptr(p.add(2).cast()).store(peer.0, Ordering::Relaxed);
            AtomicU32::from_ptr(p.add(4).cast()).store(frame, Ordering::Relaxed);
        }
        let f = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        // Release: domid and frame are visible before the entry becomes valid.
        flags.store(f, Ordering::Release);
        Ok(())
    }

    /// Revokes entry `gref`: `EBUSY` (entry left valid) while the grantee maps or copies
    /// it. Revoking an unused entry succeeds.
    pub fn revoke(&self, gref: u32) -> Result<(), Errno> {
        let flags = self.flags(gref)?;
        for _ in 0..REVOKE_RETRIES {
            let f = flags.load(Ordering::Acquire);
            if f & IN_USE != 0 {
                return Err(Errno::EBUSY);
            }
            if flags
                .compare_exchange(f, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(Errno::EBUSY)
    }
}

/// Refs of a table with up to this many entries (4 frames).
pub const MAX_REFS: u32 = 2048;

/// Which grant refs this domain has handed out. Refs below
/// [`GNTTAB_NR_RESERVED_ENTRIES`] are the toolstack's and never allocated.
pub struct RefAllocator {
    used: [u64; (MAX_REFS / 64) as usize],
    nr: u32,
}

impl RefAllocator {
    /// Refs `GNTTAB_NR_RESERVED_ENTRIES..nr` (capped at [`MAX_REFS`]) available.
    pub fn new(nr: u32) -> RefAllocator {
        let mut used = [0; (MAX_REFS / 64) as usize];
        used[0] = (1u64 << GNTTAB_NR_RESERVED_ENTRIES) - 1;
        RefAllocator {
            used,
            nr: nr.min(MAX_REFS),
        }
    }

    /// A free ref (lowest first), now allocated.
    pub fn alloc(&mut self) -> Option<u32> {
        for (w, word) in self.used.iter_mut().enumerate() {
            if *word != u64::MAX {
                let bit = (!*word).trailing_zeros();
                let r = w as u32 * 64 + bit;
                if r >= self.nr {
                    return None;
                }
                *word |= 1 << bit;
                return Some(r);
            }
        }
        None
    }

    /// True if `gref` is allocated (reserved refs never are).
    pub fn is_allocated(&self, gref: u32) -> bool {
        gref >= GNTTAB_NR_RESERVED_ENTRIES
            && gref < self.nr
            && self.used[(gref / 64) as usize] & (1 << (gref % 64)) != 0
    }

    /// Frees `gref`; `EINVAL` if it is not allocated.
    pub fn free(&mut self, gref: u32) -> Result<(), Errno> {
        if !self.is_allocated(gref) {
            return Err(Errno::EINVAL);
        }
        self.used[(gref / 64) as usize] &= !(1 << (gref % 64));
        Ok(())
    }
}

/// Most slots a [`ForeignSlots`] manages.
pub const MAX_FOREIGN_SLOTS: usize = 256;

/// A run of page-sized virtual addresses whose L1 entries exist and are empty, where
/// grants (and this domain's grant-table frames) are mapped. Only bookkeeping: which
/// slot is in use.
pub struct ForeignSlots {
    base: u64,
    n: usize,
    used: [u64; MAX_FOREIGN_SLOTS / 64],
}

impl ForeignSlots {
    /// `n` (at most [`MAX_FOREIGN_SLOTS`]) slots from `base` (page aligned).
    pub fn new(base: u64, n: usize) -> ForeignSlots {
        ForeignSlots {
            base,
            n: n.min(MAX_FOREIGN_SLOTS),
            used: [0; MAX_FOREIGN_SLOTS / 64],
        }
    }

    /// Slots in all.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Slots in use.
    pub fn in_use(&self) -> usize {
        self.used.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// A free slot's address, now in use; `ENOSPC` when all are.
    pub fn alloc(&mut self) -> Result<u64, Errno> {
        for i in 0..self.n {
            let (w, b) = (i / 64, 1u64 << (i % 64));
            if self.used[w] & b == 0 {
                self.used[w] |= b;
                return Ok(self.base + (i as u64) * abi::PAGE_SIZE as u64);
            }
        }
        Err(Errno::ENOSPC)
    }

    /// The slot index of `va`, if `va` is the start of one of our slots.
    pub fn index_of(&self, va: u64) -> Option<usize> {
        let off = va.checked_sub(self.base)?;
        let i = (off / abi::PAGE_SIZE as u64) as usize;
        (off.is_multiple_of(abi::PAGE_SIZE as u64) && i < self.n).then_some(i)
    }

    /// Frees the slot at `va`; `EINVAL` if it is not an in-use slot.
    pub fn free(&mut self, va: u64) -> Result<(), Errno> {
        let i = self.index_of(va).ok_or(Errno::EINVAL)?;
        let (w, b) = (i / 64, 1u64 << (i % 64));
        if self.used[w] & b == 0 {
            return Err(Errno::EINVAL);
        }
        self.used[w] &= !b;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::grant_table::GRANT_ENTRIES_PER_FRAME;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    fn table() -> GrantEntries {
        let p: &'static mut Page = Box::leak(Box::new(Page([0; 4096])));
        // SAFETY: a leaked page only this view accesses.
        unsafe { GrantEntries::new(NonNull::from(&mut p.0).cast(), GRANT_ENTRIES_PER_FRAME) }
    }

    /// What the hypervisor does when it pins an entry for a mapping.
    fn hv_set(t: &GrantEntries, gref: u32, bits: u16) {
        t.flags(gref).unwrap().fetch_or(bits, Ordering::SeqCst);
    }

    fn hv_clear(t: &GrantEntries, gref: u32, bits: u16) {
        t.flags(gref).unwrap().fetch_and(!bits, Ordering::SeqCst);
    }

    #[test]
    fn publish_writes_target_then_flags() {
        let t = table();
        t.publish(9, DomId(0), 0x1234, false).unwrap();
        assert_eq!(t.flags_of(9), Ok(GTF_PERMIT_ACCESS));
        assert_eq!(t.target_of(9), Ok((DomId(0), 0x1234)));
        t.publish(10, DomId(3), 7, true).unwrap();
        assert_eq!(t.flags_of(10), Ok(GTF_PERMIT_ACCESS | GTF_READONLY));
        // The raw little-endian layout the hypervisor reads.
        let raw = |g: u32| {
            let mut b = [0u8; 8];
            for (i, x) in b.iter_mut().enumerate() {
                // SAFETY: inside the leaked page.
                *x = unsafe { t.entry(g).unwrap().add(i).read_volatile() };
            }
            u64::from_le_bytes(b)
        };
        assert_eq!(raw(9), 1 | (0x1234 << 32));
        assert_eq!(raw(10), 5 | (3 << 16) | (7 << 32));
    }

    #[test]
    fn publish_refuses_busy_entries_bad_refs_and_frames() {
        let t = table();
        t.publish(8, DomId(1), 1, false).unwrap();
        assert_eq!(t.publish(8, DomId(1), 2, false), Err(Errno::EBUSY));
        assert_eq!(t.target_of(8), Ok((DomId(1), 1)), "unchanged");
        assert_eq!(t.publish(512, DomId(1), 1, false), Err(Errno::EINVAL));
        assert_eq!(t.publish(11, DomId(1), 1 << 32, false), Err(Errno::ERANGE));
        assert_eq!(t.flags_of(11), Ok(0));
    }

    #[test]
    fn revoke_is_refused_while_mapped_or_copied() {
        let t = table();
        t.publish(8, DomId(0), 5, false).unwrap();
        hv_set(&t, 8, GTF_READING | GTF_WRITING);
        assert_eq!(t.revoke(8), Err(Errno::EBUSY));
        assert_eq!(
            t.flags_of(8).unwrap() & GTF_PERMIT_ACCESS,
            GTF_PERMIT_ACCESS,
            "still valid"
        );
        hv_clear(&t, 8, GTF_WRITING);
        assert_eq!(t.revoke(8), Err(Errno::EBUSY), "read-only mapping left");
        hv_clear(&t, 8, GTF_READING);
        assert_eq!(t.revoke(8), Ok(()));
        assert_eq!(t.flags_of(8), Ok(0));
        assert_eq!(t.revoke(8), Ok(()), "revoking an unused entry is harmless");
        assert_eq!(t.revoke(4096), Err(Errno::EINVAL));
    }

    #[test]
    fn revoke_never_wins_against_a_concurrent_map() {
        // A "hypervisor" thread pins and unpins while we revoke: every successful revoke
        // must leave flags 0, i.e. the pin never lands after a revoke succeeded on an
        // entry that the pinner then believes valid.
        let t = std::sync::Arc::new(table());
        for round in 0..200u32 {
            t.publish(8, DomId(0), round.into(), false).unwrap();
            let t2 = t.clone();
            let pinner = std::thread::spawn(move || {
                let f = t2.flags(8).unwrap();
                // Xen's pin: CAS from a valid entry to valid|reading.
                let cur = f.load(Ordering::Acquire);
                cur & GTF_PERMIT_ACCESS != 0
                    && f.compare_exchange(
                        cur,
                        cur | GTF_READING,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
            });
            let revoked = t.revoke(8).is_ok();
            let pinned = pinner.join().unwrap();
            if pinned {
                // The pin holds: either our revoke saw it (EBUSY) or it came after the
                // revoke, when the entry was already 0 (the CAS above then fails).
                assert!(!revoked, "round {round}: revoked under a mapping");
                hv_clear(&t, 8, GTF_READING);
                t.revoke(8).unwrap();
            }
            assert_eq!(t.flags_of(8), Ok(0));
        }
    }

    #[test]
    fn ref_allocator_skips_reserved_and_reuses() {
        let mut r = RefAllocator::new(70);
        assert_eq!(r.alloc(), Some(8));
        assert_eq!(r.alloc(), Some(9));
        assert!(!r.is_allocated(1));
        assert_eq!(r.free(1), Err(Errno::EINVAL), "reserved");
        assert_eq!(r.free(8), Ok(()));
        assert_eq!(r.free(8), Err(Errno::EINVAL), "double free");
        assert_eq!(r.alloc(), Some(8));
        let mut n = 2;
        while r.alloc().is_some() {
            n += 1;
        }
        assert_eq!(n, 70 - 8);
        assert_eq!(r.free(70), Err(Errno::EINVAL));
        assert_eq!(r.free(69), Ok(()));
        assert_eq!(r.alloc(), Some(69));
    }

    #[test]
    fn foreign_slots() {
        let mut s = ForeignSlots::new(0x10_0000, 3);
        assert_eq!(s.alloc(), Ok(0x10_0000));
        assert_eq!(s.alloc(), Ok(0x10_1000));
        assert_eq!(s.alloc(), Ok(0x10_2000));
        assert_eq!(s.alloc(), Err(Errno::ENOSPC));
        assert_eq!(s.in_use(), 3);
        assert_eq!(s.free(0x10_1001), Err(Errno::EINVAL), "not a slot start");
        assert_eq!(s.free(0x10_3000), Err(Errno::EINVAL), "beyond");
        assert_eq!(s.free(0x0f_f000), Err(Errno::EINVAL), "below");
        assert_eq!(s.free(0x10_1000), Ok(()));
        assert_eq!(s.free(0x10_1000), Err(Errno::EINVAL), "double free");
        assert_eq!(s.alloc(), Ok(0x10_1000));
    }
}
