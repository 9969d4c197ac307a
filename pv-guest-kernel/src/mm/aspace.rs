//! Address spaces: an L4 table whose upper-half guest slots are shared with a template
//! (the kernel's bootstrap L4), and whose other slots get tables on demand.
//!
//! ```text
//! L4 slot   0..=255    owned: L3/L2/L1 tables created by `map`, freed by `destroy`
//!         256..=271    the hypervisor's (filled in by it when the L4 is validated)
//!         272..=511    copied from the template if present there (the kernel, its
//!                      start-of-day map, shared_info), shared, never written; the
//!                      others are owned
//! ```
//!
//! Every table is made as the hypervisor requires: a free frame is zeroed through its
//! writable mapping, that mapping is made read-only, then the table is hooked into its
//! parent (or, for the L4, pinned). `destroy` undoes it bottom-up: unhook (one batch per
//! parent), make writable, free; then unpin the L4. Data frames are never owned: the
//! caller maps and keeps track of them.

use abi::mm::MmuUpdate;
use abi::{Errno, Mfn};

use super::pt::{self, Level, ENTRIES};
use super::{locate, Frame, FrameSource, Mmu, PhysMap};
use crate::hv::pt_update;

/// First guest slot of the upper half.
const UPPER_FIRST: usize = abi::layout::HYPERVISOR_L4_LAST + 1;

/// Entry writes collected before one `set_ptes`.
const BATCH: usize = 64;

/// An address space built by this kernel.
#[derive(Debug)]
pub struct AddressSpace {
    l4: Frame,
    template: Mfn,
    /// Bit set: the L4 slot was copied from the template (not owned).
    shared: [u64; ENTRIES / 64],
}

/// Zeroes a frame through its writable mapping.
fn zero(frame: &Frame) {
    // SAFETY: frames come from `FrameSource::alloc_frame`, whose contract says the frame
    // is unused by anything else and mapped writable at `va`; 4096 bytes is one frame.
    unsafe { core::ptr::write_bytes(frame.va as *mut u8, 0, abi::PAGE_SIZE) };
}

impl AddressSpace {
    /// A new address space: an L4 with the present upper-half guest entries (slots
    /// 272..=511) of `template` copied, made read-only and pinned. Nothing is mapped in
    /// the other slots yet.
    pub fn create<M: Mmu, F: FrameSource>(
        mmu: &mut M,
        frames: &mut F,
        template: Mfn,
    ) -> Result<AddressSpace, Errno> {
        let l4 = frames.alloc_frame().ok_or(Errno::ENOMEM)?;
        zero(&l4);
        let mut shared = [0u64; ENTRIES / 64];
        for slot in UPPER_FIRST..ENTRIES {
            let Some(e) = frames.read_entry(template, slot) else {
                frames.free_frame(l4);
                return Err(Errno::EINVAL);
            };
            if pt::is_present(e) {
                // SAFETY: the frame is ours and still writable (see `zero`); slot < 512.
                unsafe { (l4.va as *mut u64).add(slot).write_volatile(e) };
                shared[slot / 64] |= 1 << (slot % 64);
            }
        }
        // SAFETY: nothing else uses the new frame (see `zero`); from now on it is only
        // written through the hypervisor.
        if let Err(e) = unsafe { mmu.make_readonly(l4.va) } {
            frames.free_frame(l4);
            return Err(e);
        }
        if let Err(e) = mmu.pin(Level::L4, l4.mfn) {
            let _ = Self::give_back(mmu, frames, l4);
            return Err(e);
        }
        Ok(AddressSpace {
            l4,
            template,
            shared,
        })
    }

    /// Returns a frame that is no table any more (never hooked, or unhooked): writable
    /// again, then to the allocator. If it cannot be made writable it is leaked rather
    /// than handed out read-only.
    fn give_back<M: Mmu, F: FrameSource>(
        mmu: &mut M,
        frames: &mut F,
        f: Frame,
    ) -> Result<(), Errno> {
        mmu.make_writable(f.va)?;
        frames.free_frame(f);
        Ok(())
    }

    /// The L4 frame.
    pub fn l4(&self) -> Frame {
        self.l4
    }

    /// The template the kernel slots were copied from.
    pub fn template(&self) -> Mfn {
        self.template
    }

    /// True if L4 slot `slot` is this space's own (not shared, not the hypervisor's).
    pub fn owns_slot(&self, slot: usize) -> bool {
        slot < ENTRIES
            && !pt::is_hypervisor_slot(slot)
            && self.shared[slot / 64] & (1 << (slot % 64)) == 0
    }

    /// True if this is the current address space.
    pub fn is_current(&self, mmu: &impl Mmu) -> bool {
        mmu.base() == self.l4.mfn
    }

    fn check_va(&self, va: u64) -> Result<(), Errno> {
        pt::check_guest_va(va)?;
        if !self.owns_slot(Level::L4.index(va)) {
            return Err(Errno::EPERM);
        }
        Ok(())
    }

    /// [`pt::check_guest_range`], and every L4 slot the range touches is owned.
    fn check_range(&self, va: u64, n: u64) -> Result<(), Errno> {
        pt::check_guest_range(va, n)?;
        if n == 0 {
            return Ok(());
        }
        let last = va + (n - 1) * abi::PAGE_SIZE as u64;
        if (Level::L4.index(va)..=Level::L4.index(last)).all(|slot| self.owns_slot(slot)) {
            Ok(())
        } else {
            Err(Errno::EPERM)
        }
    }

    /// The table below entry `idx` of `table` (a table of `level`), created if missing.
    fn ensure_child<M: Mmu, F: FrameSource>(
        mmu: &mut M,
        frames: &mut F,
        table: Mfn,
        idx: usize,
    ) -> Result<Mfn, Errno> {
        let e = frames.read_entry(table, idx).ok_or(Errno::EINVAL)?;
        if pt::is_present(e) {
            return Ok(pt::entry_mfn(e));
        }
        let t = frames.alloc_frame().ok_or(Errno::ENOMEM)?;
        zero(&t);
        // SAFETY: nothing else uses the new frame (see `zero`).
        if let Err(err) = unsafe { mmu.make_readonly(t.va) } {
            frames.free_frame(t);
            return Err(err);
        }
        let hook = pt::table_entry(t.mfn);
        // SAFETY: fills an empty entry of one of our own tables: no existing mapping
        // changes, and the new table maps nothing yet.
        if let Err(err) = unsafe { mmu.set_pte(pt::entry_maddr(table, idx), hook) } {
            let _ = Self::give_back(mmu, frames, t);
            return Err(err);
        }
        Ok(t.mfn)
    }

    /// The L1 table for `va`, creating the L3/L2/L1 tables on the way as needed.
    fn ensure_l1<M: Mmu, F: FrameSource>(
        &mut self,
        mmu: &mut M,
        frames: &mut F,
        va: u64,
    ) -> Result<Mfn, Errno> {
        let mut table = self.l4.mfn;
        for level in [Level::L4, Level::L3, Level::L2] {
            table = Self::ensure_child(mmu, frames, table, level.index(va))?;
        }
        Ok(table)
    }

    /// Maps `mfn` at `va` (4 KiB, user, no-execute, writable if `writable`). `EEXIST` if
    /// `va` is already mapped (unmap first), `EPERM` for a shared or hypervisor slot,
    /// `EINVAL` for a bad address, `ENOMEM` when no frame is left for a table; the
    /// hypervisor's error if it refuses the entry (e.g. `EINVAL` for a page table mapped
    /// writable, `EPERM` for a frame that is not ours).
    pub fn map<M: Mmu, F: FrameSource>(
        &mut self,
        mmu: &mut M,
        frames: &mut F,
        va: u64,
        mfn: Mfn,
        writable: bool,
    ) -> Result<(), Errno> {
        self.map_pte(mmu, frames, va, pt::leaf_entry(mfn, writable))
    }

    /// [`AddressSpace::map`] with a raw L1 entry value (a non-present value is refused).
    pub fn map_pte<M: Mmu, F: FrameSource>(
        &mut self,
        mmu: &mut M,
        frames: &mut F,
        va: u64,
        pte: u64,
    ) -> Result<(), Errno> {
        self.check_va(va)?;
        if !pt::is_present(pte) {
            return Err(Errno::EINVAL);
        }
        let maddr = self.empty_leaf(mmu, frames, va)?;
        // SAFETY: fills an empty entry: no mapping Rust relies on changes.
        unsafe { mmu.set_pte(maddr, pte) }
    }

    /// The machine address of the (empty) L1 entry for `va`, creating the tables on the
    /// way as needed; `EEXIST` if `va` is mapped.
    fn empty_leaf<M: Mmu, F: FrameSource>(
        &mut self,
        mmu: &mut M,
        frames: &mut F,
        va: u64,
    ) -> Result<u64, Errno> {
        let l1 = self.ensure_l1(mmu, frames, va)?;
        let idx = Level::L1.index(va);
        if pt::is_present(frames.read_entry(l1, idx).ok_or(Errno::EINVAL)?) {
            return Err(Errno::EEXIST);
        }
        Ok(pt::entry_maddr(l1, idx))
    }

    /// Maps `mfns[i]` at `va + i * 4096`, creating tables as needed and writing the L1
    /// entries in batches. Stops at the first error (`EEXIST` if a page is already
    /// mapped); the pages before it stay mapped.
    pub fn map_range<M: Mmu, F: FrameSource>(
        &mut self,
        mmu: &mut M,
        frames: &mut F,
        va: u64,
        mfns: &[Mfn],
        writable: bool,
    ) -> Result<(), Errno> {
        self.check_range(va, mfns.len() as u64)?;
        let mut batch = [MmuUpdate::default(); BATCH];
        let mut n = 0;
        let mut result = Ok(());
        for (i, &mfn) in mfns.iter().enumerate() {
            let va = va + (i * abi::PAGE_SIZE) as u64;
            let step = self
                .empty_leaf(mmu, frames, va)
                .map(|maddr| pt_update(maddr, pt::leaf_entry(mfn, writable)));
            match step {
                Ok(u) => {
                    batch[n] = u;
                    n += 1;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            if n == BATCH {
                // SAFETY: every entry in the batch was empty (checked above).
                unsafe { mmu.set_ptes(&batch) }?;
                n = 0;
            }
        }
        // SAFETY: as above.
        unsafe { mmu.set_ptes(&batch[..n]) }?;
        result
    }

    /// Removes the mapping of `va`; returns the old entry (`None` if nothing was mapped).
    /// Tables are kept (until [`AddressSpace::destroy`]).
    ///
    /// # Safety
    /// If this is the current address space, Rust code must not rely on the mapping.
    pub unsafe fn unmap<M: Mmu, F: FrameSource>(
        &mut self,
        mmu: &mut M,
        frames: &mut F,
        va: u64,
    ) -> Result<Option<u64>, Errno> {
        self.check_va(va)?;
        let Some((l1, idx, old)) = locate(frames, self.l4.mfn, va, Level::L1) else {
            return Ok(None);
        };
        if !pt::is_present(old) {
            return Ok(None);
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { mmu.set_pte(pt::entry_maddr(l1, idx), 0) }?;
        if self.is_current(mmu) {
            mmu.invlpg(va)?;
        }
        Ok(Some(old))
    }

    /// Unmaps the `n` pages from `va` (batched); returns how many were mapped.
    ///
    /// # Safety
    /// As for [`AddressSpace::unmap`].
    pub unsafe fn unmap_range<M: Mmu, F: FrameSource>(
        &mut self,
        mmu: &mut M,
        frames: &mut F,
        va: u64,
        n: u64,
    ) -> Result<u64, Errno> {
        self.check_range(va, n)?;
        let mut batch = [MmuUpdate::default(); BATCH];
        let mut k = 0;
        let mut unmapped = 0;
        for i in 0..n {
            let va = va + i * abi::PAGE_SIZE as u64;
            if let Some((l1, idx, old)) = locate(frames, self.l4.mfn, va, Level::L1) {
                if pt::is_present(old) {
                    batch[k] = pt_update(pt::entry_maddr(l1, idx), 0);
                    k += 1;
                    unmapped += 1;
                }
            }
            if k == BATCH {
                // SAFETY: forwarded from this function's contract.
                unsafe { mmu.set_ptes(&batch) }?;
                k = 0;
            }
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { mmu.set_ptes(&batch[..k]) }?;
        if unmapped > 0 && self.is_current(mmu) {
            mmu.flush_tlb()?;
        }
        Ok(unmapped)
    }

    /// The leaf entry mapping `va` in this space, if present (software walk).
    pub fn translate(&self, phys: &impl PhysMap, va: u64) -> Option<u64> {
        locate(phys, self.l4.mfn, va, Level::L1)
            .map(|(_, _, e)| e)
            .filter(|&e| pt::is_present(e))
    }

    /// The entry at `level` for `va`: (its machine address, its value); `None` if a table
    /// above `level` does not exist.
    pub fn entry(&self, phys: &impl PhysMap, level: Level, va: u64) -> Option<(u64, u64)> {
        locate(phys, self.l4.mfn, va, level).map(|(t, i, e)| (pt::entry_maddr(t, i), e))
    }

    /// Calls `f` for every table this space owns: the L4 first, then each subtree
    /// top-down. Tables that are not this domain's frames are skipped.
    pub fn for_each_table(&self, phys: &impl PhysMap, f: &mut dyn FnMut(Level, Frame)) {
        f(Level::L4, self.l4);
        self.visit(phys, self.l4.mfn, Level::L4, f);
    }

    fn visit(
        &self,
        phys: &impl PhysMap,
        table: Mfn,
        level: Level,
        f: &mut dyn FnMut(Level, Frame),
    ) {
        let Some(child) = level.child() else { return };
        for idx in 0..ENTRIES {
            if level == Level::L4 && !self.owns_slot(idx) {
                continue;
            }
            let Some(e) = phys.read_entry(table, idx) else {
                return;
            };
            if !pt::is_present(e) {
                continue;
            }
            if let Some(frame) = phys.frame_of(pt::entry_mfn(e)) {
                f(child, frame);
                self.visit(phys, frame.mfn, child, f);
            }
        }
    }

    /// Makes this the current address space.
    ///
    /// # Safety
    /// Rust code must not rely on mappings of the current space outside the shared
    /// kernel slots (they are replaced by this space's).
    pub unsafe fn switch_to<M: Mmu>(&self, mmu: &mut M) -> Result<(), Errno> {
        // SAFETY: the kernel slots are the template's (copied at creation), the rest is
        // covered by this function's contract.
        unsafe { mmu.new_baseptr(self.l4.mfn) }
    }

    /// Tears the space down: switches to the template first if this space is current,
    /// unhooks every owned table bottom-up (one `set_ptes` batch per group of siblings),
    /// makes each writable again and frees it, then unpins the L4 and frees it. On error
    /// the tables not yet freed are leaked.
    ///
    /// # Safety
    /// Rust code must not rely on any mapping of this space outside the shared kernel
    /// slots.
    pub unsafe fn destroy<M: Mmu, F: FrameSource>(
        self,
        mmu: &mut M,
        frames: &mut F,
    ) -> Result<(), Errno> {
        if self.is_current(mmu) {
            // SAFETY: the template's kernel slots are the ones this space shares; the rest
            // is covered by this function's contract.
            unsafe { mmu.new_baseptr(self.template) }?;
        }
        self.release_children(mmu, frames, self.l4.mfn, Level::L4)?;
        mmu.unpin(self.l4.mfn)?;
        Self::give_back(mmu, frames, self.l4)
    }

    /// Frees the tables below `table` (of `level`), deepest first.
    fn release_children<M: Mmu, F: FrameSource>(
        &self,
        mmu: &mut M,
        frames: &mut F,
        table: Mfn,
        level: Level,
    ) -> Result<(), Errno> {
        let Some(child) = level.child() else {
            return Ok(());
        };
        let owned = |idx: usize| level != Level::L4 || self.owns_slot(idx);
        // Children's children first, while every entry is still in place.
        if child != Level::L1 {
            for idx in (0..ENTRIES).filter(|&i| owned(i)) {
                let e = frames.read_entry(table, idx).ok_or(Errno::EINVAL)?;
                if pt::is_present(e) {
                    self.release_children(mmu, frames, pt::entry_mfn(e), child)?;
                }
            }
        }
        // Then unhook the children in batches and give each back.
        const GROUP: usize = 32;
        let mut batch = [MmuUpdate::default(); GROUP];
        let mut kids = [Mfn(0); GROUP];
        let mut n = 0;
        for idx in (0..ENTRIES).filter(|&i| owned(i)) {
            let e = frames.read_entry(table, idx).ok_or(Errno::EINVAL)?;
            if !pt::is_present(e) {
                continue;
            }
            batch[n] = pt_update(pt::entry_maddr(table, idx), 0);
            kids[n] = pt::entry_mfn(e);
            n += 1;
            if n == GROUP {
                Self::unhook(mmu, frames, &batch, &kids)?;
                n = 0;
            }
        }
        Self::unhook(mmu, frames, &batch[..n], &kids[..n])
    }

    fn unhook<M: Mmu, F: FrameSource>(
        mmu: &mut M,
        frames: &mut F,
        batch: &[MmuUpdate],
        kids: &[Mfn],
    ) -> Result<(), Errno> {
        // SAFETY: `destroy`'s contract: nothing relies on this space's own mappings, and
        // it is not current (switched away first).
        unsafe { mmu.set_ptes(batch) }?;
        for &kid in kids {
            let f = frames.frame_of(kid).ok_or(Errno::EINVAL)?;
            Self::give_back(mmu, frames, f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::sim::Sim;
    use super::*;
    use abi::mm::pte;

    const A: u64 = 0x4000_0000;
    const B: u64 = 0x7000_0000;

    #[test]
    fn create_copies_the_kernel_slots_and_pins() {
        let sim = Sim::new(64);
        let (mut mmu, mut frames) = sim.parts();
        let before = sim.free_frames();
        let s = AddressSpace::create(&mut mmu, &mut frames, sim.boot_l4()).unwrap();
        assert_eq!(sim.free_frames(), before - 1);
        assert!(sim.is_pinned(s.l4().mfn));
        assert!(!sim.writable(s.l4().mfn));
        assert_eq!(
            frames.read_entry(s.l4().mfn, 511),
            frames.read_entry(sim.boot_l4(), 511)
        );
        assert!(!s.owns_slot(511) && !s.owns_slot(256) && s.owns_slot(0) && s.owns_slot(300));
        assert!(!s.is_current(&mmu));
        // SAFETY: the sim maps nothing Rust uses.
        unsafe { s.destroy(&mut mmu, &mut frames) }.unwrap();
        assert_eq!(sim.free_frames(), before);
        sim.assert_clean();
    }

    #[test]
    fn map_builds_tables_and_destroy_releases_everything() {
        let sim = Sim::new(128);
        let (mut mmu, mut frames) = sim.parts();
        let before = sim.free_frames();
        let data = frames.alloc_frame().unwrap();
        let mut a = AddressSpace::create(&mut mmu, &mut frames, sim.boot_l4()).unwrap();
        let mut b = AddressSpace::create(&mut mmu, &mut frames, sim.boot_l4()).unwrap();
        a.map(&mut mmu, &mut frames, A, data.mfn, true).unwrap();
        b.map(&mut mmu, &mut frames, B, data.mfn, false).unwrap();
        // L4 + L3 + L2 + L1 each.
        let count = |s: &AddressSpace| {
            let mut n = [0; 5];
            s.for_each_table(&frames, &mut |l, _| n[l.number() as usize] += 1);
            n
        };
        assert_eq!(count(&a), [0, 1, 1, 1, 1]);
        assert_eq!(a.translate(&frames, A).map(pt::entry_mfn), Some(data.mfn));
        assert_eq!(a.translate(&frames, B), None);
        assert_eq!(b.translate(&frames, B).map(|e| e & pte::RW), Some(0));
        assert_eq!(sim.mappings(data.mfn), (1, 1));
        // Already mapped; shared, hypervisor and bad addresses.
        assert_eq!(
            a.map(&mut mmu, &mut frames, A, data.mfn, true),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            a.map(
                &mut mmu,
                &mut frames,
                abi::layout::GUEST_VIRT_BASE,
                data.mfn,
                true
            ),
            Err(Errno::EPERM)
        );
        assert_eq!(
            a.map(&mut mmu, &mut frames, 0xffff_8000_0000_0000, data.mfn, true),
            Err(Errno::EPERM)
        );
        assert_eq!(
            a.map(&mut mmu, &mut frames, A + 8, data.mfn, true),
            Err(Errno::EINVAL)
        );
        // A table frame may not be mapped writable, but read-only is fine.
        let l1 = a
            .entry(&frames, Level::L2, A)
            .map(|(_, e)| pt::entry_mfn(e))
            .unwrap();
        assert_eq!(
            a.map(&mut mmu, &mut frames, A + 0x1000, l1, true),
            Err(Errno::EINVAL)
        );
        a.map(&mut mmu, &mut frames, A + 0x1000, l1, false).unwrap();

        // SAFETY: the sim maps nothing Rust uses.
        unsafe {
            a.switch_to(&mut mmu).unwrap();
            assert!(a.is_current(&mmu));
            a.destroy(&mut mmu, &mut frames).unwrap();
        }
        assert_eq!(mmu.base(), sim.boot_l4());
        assert_eq!(sim.mappings(data.mfn), (0, 1));
        // SAFETY: as above.
        unsafe { b.destroy(&mut mmu, &mut frames) }.unwrap();
        assert_eq!(sim.mappings(data.mfn), (0, 0));
        frames.free_frame(data);
        assert_eq!(sim.free_frames(), before);
        sim.assert_clean();
    }

    #[test]
    fn ranges_cross_table_boundaries_and_batch() {
        let sim = Sim::new(1200);
        let (mut mmu, mut frames) = sim.parts();
        let before = sim.free_frames();
        let mut s = AddressSpace::create(&mut mmu, &mut frames, sim.boot_l4()).unwrap();
        let data: Vec<Frame> = (0..600).map(|_| frames.alloc_frame().unwrap()).collect();
        let mfns: Vec<Mfn> = data.iter().map(|f| f.mfn).collect();
        // 1 MiB below a 1 GiB boundary: crosses L1, L2 and L3 boundaries.
        let base = 0x3ff0_0000;
        let calls = sim.set_pte_calls();
        s.map_range(&mut mmu, &mut frames, base, &mfns, true)
            .unwrap();
        let tables = {
            let mut n = [0; 5];
            s.for_each_table(&frames, &mut |l, _| n[l.number() as usize] += 1);
            n
        };
        assert_eq!(
            tables,
            [0, 2, 2, 1, 1],
            "one L2 and one L1 on each side of 1 GiB"
        );
        // 600 leaf entries in batches of 64, plus one call per new table.
        assert_eq!(sim.set_pte_calls() - calls, 600usize.div_ceil(BATCH) + 5);
        for (i, f) in data.iter().enumerate() {
            let va = base + (i * abi::PAGE_SIZE) as u64;
            assert_eq!(s.translate(&frames, va).map(pt::entry_mfn), Some(f.mfn));
        }
        // A range running into the shared kernel slot is refused before anything changes.
        let calls = sim.set_pte_calls();
        let edge = pt::va_of([510, 511, 511, 511]);
        assert_eq!(
            s.map_range(&mut mmu, &mut frames, edge, &mfns[..2], true),
            Err(Errno::EPERM)
        );
        // SAFETY: the sim maps nothing Rust uses.
        let r = unsafe { s.unmap_range(&mut mmu, &mut frames, edge, 2) };
        assert_eq!(r, Err(Errno::EPERM));
        assert_eq!(sim.set_pte_calls(), calls);
        // Overlapping range: the first page is mapped already.
        assert_eq!(
            s.map_range(&mut mmu, &mut frames, base, &mfns[..1], true),
            Err(Errno::EEXIST)
        );
        // SAFETY: the sim maps nothing Rust uses.
        let n = unsafe { s.unmap_range(&mut mmu, &mut frames, base - 0x1000, 602) }.unwrap();
        assert_eq!(n, 600);
        assert!(data.iter().all(|f| sim.mappings(f.mfn) == (0, 0)));
        // SAFETY: as above.
        assert_eq!(unsafe { s.unmap(&mut mmu, &mut frames, base) }, Ok(None));
        s.map(&mut mmu, &mut frames, base, mfns[0], true).unwrap();
        // SAFETY: as above.
        let old = unsafe { s.unmap(&mut mmu, &mut frames, base) }.unwrap();
        assert_eq!(old.map(pt::entry_mfn), Some(mfns[0]));
        // SAFETY: as above.
        unsafe { s.destroy(&mut mmu, &mut frames) }.unwrap();
        for f in data {
            frames.free_frame(f);
        }
        assert_eq!(sim.free_frames(), before);
        sim.assert_clean();
    }

    #[test]
    fn running_out_of_frames_leaves_nothing_behind() {
        // L4 + three tables fit; the L1 does not.
        let sim = Sim::new(4);
        let (mut mmu, mut frames) = sim.parts();
        let data = frames.alloc_frame().unwrap();
        let mut s = AddressSpace::create(&mut mmu, &mut frames, sim.boot_l4()).unwrap();
        assert_eq!(
            s.map(&mut mmu, &mut frames, A, data.mfn, true),
            Err(Errno::ENOMEM)
        );
        // SAFETY: the sim maps nothing Rust uses.
        unsafe { s.destroy(&mut mmu, &mut frames) }.unwrap();
        frames.free_frame(data);
        assert_eq!(sim.free_frames(), 4);
        sim.assert_clean();
    }

    #[test]
    fn refused_entries_free_the_new_table() {
        let sim = Sim::new(16);
        let (mut mmu, mut frames) = sim.parts();
        let mut s = AddressSpace::create(&mut mmu, &mut frames, sim.boot_l4()).unwrap();
        let before = sim.free_frames();
        // A frame that is not ours: the tables are built, the leaf is refused.
        assert_eq!(
            s.map(&mut mmu, &mut frames, A, Mfn(0x100), true),
            Err(Errno::EPERM)
        );
        assert_eq!(sim.free_frames(), before - 3);
        // A failing hook (the sim refuses the next set_pte) gives the table back.
        sim.fail_next_set_pte(Errno::EINVAL);
        assert_eq!(
            s.map(&mut mmu, &mut frames, 0x80_0000_0000, Mfn(0x100), true),
            Err(Errno::EINVAL)
        );
        assert_eq!(sim.free_frames(), before - 3);
        // SAFETY: the sim maps nothing Rust uses.
        unsafe { s.destroy(&mut mmu, &mut frames) }.unwrap();
        sim.assert_clean();
    }
}
