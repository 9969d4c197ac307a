//! Direct paging: page types, reference counts and page-table validation.
//!
//! Guests build their own page tables out of machine frames. This module is what makes
//! that safe. Every frame carries (in [`FrameTable`]) an owner, a [`PageType`], a type
//! count, a general reference count and a pinned bit, with these invariants:
//!
//! 1. **Writable only while typed writable.** A present L1 entry with RW set holds one
//!    `Writable` type reference on its target; a frame's type changes only at type count
//!    0, so a frame that is mapped writable anywhere cannot become a page table, and a
//!    page table (type L1..L4, count > 0) can never gain a writable mapping.
//! 2. **Tables are validated before use.** Taking the first type reference of level N on a
//!    frame validates all 512 entries ([`Mm::get_type`] -> `validate`): each present
//!    entry must reference a frame the domain may use, of the right lower-level type,
//!    without reserved bits or large pages; L4 slots 256..=271 are overwritten with the
//!    hypervisor's entries. Each present entry of a validated table holds one general
//!    reference (and for L2..L4 one type reference of the next level) on its target.
//! 3. **Counts are exact.** A frame's type count = pins + base-pointer loads + parent
//!    entries (tables) or writable mappings (data); its reference count = pins +
//!    base-pointer loads + every present entry pointing at it. [`audit`] recomputes both
//!    from a full scan; the property tests compare.
//! 4. **Types change only at count zero; tables are devalidated at count zero.** Dropping
//!    the last type reference of a table releases every reference its entries hold (which
//!    may cascade down the levels) and resets its type to `None`.
//! 5. **Freed only when unused.** A domain gives a frame back (decrease reservation) only
//!    if both counts are zero; a dying domain's frames still referenced by others become
//!    zombies until the last reference goes.
//!
//! Bounded work: validation charges one unit per entry against a per-hypercall budget
//! ([`VALIDATION_BUDGET`]); exceeding it fails the operation with `EAGAIN` after undoing
//! everything it did, so a guest must reference very large fresh trees bottom-up (pin
//! lower levels first), as Xen advises. Recursion depth is at most 4: entries only
//! reference the next lower level, so there are no linear (recursive) page tables.

use crate::frame_table::{FrameTable, Owner, PageType};
use crate::mem::MachineMemory;
use crate::paging::{table_index, PTE_ADDR_MASK, PTE_P, PTE_PS, PTE_RW, PTE_US};
use abi::layout::{HYPERVISOR_L4_FIRST, HYPERVISOR_L4_LAST};
use abi::mm::pte::RESERVED_HIGH;
use abi::{DomId, Errno, Mfn};

/// Page-table entries one hypercall may validate.
pub const VALIDATION_BUDGET: u64 = 1 << 16;

/// Entries per table.
const ENTRIES: u64 = 512;

/// The identity used for permission checks: who acts, and what they may map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Actor {
    /// The domain whose tables are being changed.
    pub dom: DomId,
    /// Privileged domains may map other domains' data frames.
    pub privileged: bool,
}

/// Page-type and reference-count operations over a frame table and machine memory.
pub struct Mm<'x, 'f, M: MachineMemory> {
    /// Frame bookkeeping.
    pub frames: &'x mut FrameTable<'f>,
    /// Machine memory (to read and write table entries).
    pub mem: &'x mut M,
    /// The hypervisor's L4 entries for slots 256..=271.
    pub hv_l4e: &'x [u64; crate::builder::HV_L4_SLOTS],
    /// Remaining validation work for this hypercall.
    pub budget: &'x mut u64,
}

fn entry_mfn(e: u64) -> Mfn {
    Mfn((e & PTE_ADDR_MASK) >> 12)
}

fn is_hv_slot(level: u32, index: u64) -> bool {
    level == 4 && (HYPERVISOR_L4_FIRST as u64..=HYPERVISOR_L4_LAST as u64).contains(&index)
}

impl<'x, 'f, M: MachineMemory> Mm<'x, 'f, M> {
    /// Takes one general reference on `mfn` for `actor`. `data` allows a privileged actor
    /// to reference another domain's frame (only data frames, never tables).
    pub fn get_ref(&mut self, mfn: Mfn, actor: Actor, data: bool) -> Result<(), Errno> {
        let f = self.frames.info_mut(mfn).ok_or(Errno::EINVAL)?;
        let allowed = match f.owner {
            Owner::Domain(d) => d == actor.dom || (data && actor.privileged),
            _ => false,
        };
        if !allowed {
            return Err(Errno::EPERM);
        }
        f.ref_count = f.ref_count.checked_add(1).ok_or(Errno::EBUSY)?;
        Ok(())
    }

    /// Drops one general reference.
    pub fn put_ref(&mut self, mfn: Mfn) {
        self.frames.put_ref(mfn);
    }

    /// Takes one type reference of type `t`, validating the frame if it becomes a table.
    pub fn get_type(&mut self, mfn: Mfn, t: PageType, actor: Actor) -> Result<(), Errno> {
        let f = self.frames.info_mut(mfn).ok_or(Errno::EINVAL)?;
        if f.type_count > 0 {
            if f.ptype != t {
                return Err(Errno::EINVAL);
            }
            f.type_count = f.type_count.checked_add(1).ok_or(Errno::EBUSY)?;
            return Ok(());
        }
        // Count zero: the type may change. Mark it in use *before* validating, so a table
        // that (directly or not) references itself sees a conflict, not a fresh frame.
        f.ptype = t;
        f.type_count = 1;
        if let Some(level) = t.level() {
            if let Err(e) = self.validate(mfn, level, actor) {
                if let Some(f) = self.frames.info_mut(mfn) {
                    f.type_count = 0;
                    f.ptype = PageType::None;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Drops one type reference; a table whose count reaches zero is devalidated.
    pub fn put_type(&mut self, mfn: Mfn) {
        let Some(f) = self.frames.info_mut(mfn) else {
            return;
        };
        debug_assert!(f.type_count > 0, "type count underflow on {mfn:?}");
        f.type_count = f.type_count.saturating_sub(1);
        if f.type_count > 0 {
            return;
        }
        let t = f.ptype;
        f.ptype = PageType::None;
        if let Some(level) = t.level() {
            self.devalidate(mfn, level);
        }
    }

    fn read_entry(&self, table: Mfn, i: u64) -> Result<u64, Errno> {
        self.mem
            .read_u64(table.maddr() + 8 * i)
            .ok_or(Errno::EFAULT)
    }

    /// Validates every entry of `table` as a level-`level` table, taking the references
    /// its present entries need; on failure undoes the entries already done.
    fn validate(&mut self, table: Mfn, level: u32, actor: Actor) -> Result<(), Errno> {
        for i in 0..ENTRIES {
            if *self.budget == 0 {
                self.undo(table, level, i);
                return Err(Errno::EAGAIN);
            }
            *self.budget -= 1;
            if is_hv_slot(level, i) {
                let v = self.hv_l4e[(i as usize) - HYPERVISOR_L4_FIRST];
                if !self.mem.write_u64(table.maddr() + 8 * i, v) {
                    self.undo(table, level, i);
                    return Err(Errno::EFAULT);
                }
                continue;
            }
            let r = self.read_entry(table, i).and_then(|e| {
                let fixed = if e & PTE_P != 0 { e | PTE_US } else { e };
                self.get_entry_refs(fixed, level, actor)?;
                if fixed != e && !self.mem.write_u64(table.maddr() + 8 * i, fixed) {
                    self.put_entry_refs(fixed, level);
                    return Err(Errno::EFAULT);
                }
                Ok(())
            });
            if let Err(e) = r {
                self.undo(table, level, i);
                return Err(e);
            }
        }
        Ok(())
    }

    fn undo(&mut self, table: Mfn, level: u32, upto: u64) {
        for j in 0..upto {
            if is_hv_slot(level, j) {
                continue;
            }
            if let Ok(e) = self.read_entry(table, j) {
                self.put_entry_refs(e, level);
            }
        }
    }

    fn devalidate(&mut self, table: Mfn, level: u32) {
        self.undo(table, level, ENTRIES);
    }

    /// Checks one entry destined for a level-`level` table and takes its references.
    pub fn get_entry_refs(&mut self, e: u64, level: u32, actor: Actor) -> Result<(), Errno> {
        if e & PTE_P == 0 {
            return Ok(());
        }
        if e & RESERVED_HIGH != 0 || e & PTE_PS != 0 {
            // Bits 52..62 are reserved here; PS means a large page in L2/L3 (rejected:
            // not supported) and PAT in L1 (rejected: guests get write-back memory).
            return Err(Errno::EINVAL);
        }
        let target = entry_mfn(e);
        if level == 1 && actor.privileged && self.frames.is_iomem(target) {
            // Device memory (`iomem`): a privileged domain may map it, writable and
            // uncached included; it has no owner and no counts. Anyone else falls
            // through to the ownership checks below, which refuse it.
            return Ok(());
        }
        if level == 1 {
            self.get_ref(target, actor, true)?;
            if e & PTE_RW != 0 {
                if let Err(err) = self.get_type(target, PageType::Writable, actor) {
                    self.put_ref(target);
                    return Err(err);
                }
            }
        } else {
            self.get_ref(target, actor, false)?;
            if let Err(err) = self.get_type(target, PageType::table(level - 1), actor) {
                self.put_ref(target);
                return Err(err);
            }
        }
        Ok(())
    }

    /// Releases the references an entry of a level-`level` table holds.
    pub fn put_entry_refs(&mut self, e: u64, level: u32) {
        // A grant mapping's references belong to its maptrack handle (`grant.rs`), not to
        // the entry; such entries only exist in L1 tables.
        if e & PTE_P == 0 || (level == 1 && e & crate::grant::PTE_GNTTAB != 0) {
            return;
        }
        let target = entry_mfn(e);
        if level == 1 && self.frames.is_iomem(target) {
            return; // device memory: no references were taken
        }
        if level > 1 || e & PTE_RW != 0 {
            self.put_type(target);
        }
        self.put_ref(target);
    }

    /// The level of the live page table `table` owned by `actor`, or `None` if the frame
    /// is the actor's but not a live table. Errors for frames beyond RAM or not owned.
    pub fn table_level(&self, table: Mfn, actor: Actor) -> Result<Option<u32>, Errno> {
        let f = self.frames.info(table).ok_or(Errno::EINVAL)?;
        if f.owner != Owner::Domain(actor.dom) {
            return Err(Errno::EPERM);
        }
        Ok(if f.type_count > 0 {
            f.ptype.level()
        } else {
            None
        })
    }

    /// Writes `new` into the entry at machine address `pte_maddr` of one of `actor`'s page
    /// tables, after validating it; releases what the old entry held. A frame that is the
    /// actor's but not a live table (and not a descriptor table) gets a plain write.
    pub fn update_entry(&mut self, pte_maddr: u64, new: u64, actor: Actor) -> Result<(), Errno> {
        if !pte_maddr.is_multiple_of(8) {
            return Err(Errno::EINVAL);
        }
        let table = Mfn::containing(pte_maddr);
        let index = (pte_maddr % 4096) / 8;
        let Some(level) = self.table_level(table, actor)? else {
            let f = self.frames.info(table).ok_or(Errno::EINVAL)?;
            if f.ptype == PageType::SegDesc && f.type_count > 0 {
                return Err(Errno::EINVAL);
            }
            return if self.mem.write_u64(pte_maddr, new) {
                Ok(())
            } else {
                Err(Errno::EFAULT)
            };
        };
        if is_hv_slot(level, index) {
            return Err(Errno::EPERM);
        }
        let new = if new & PTE_P != 0 { new | PTE_US } else { new };
        let old = self.mem.read_u64(pte_maddr).ok_or(Errno::EFAULT)?;
        if level == 1 && old & PTE_P != 0 && old & crate::grant::PTE_GNTTAB != 0 {
            // Grant mappings are removed only by unmapping the grant.
            return Err(Errno::EPERM);
        }
        self.get_entry_refs(new, level, actor)?;
        if !self.mem.write_u64(pte_maddr, new) {
            self.put_entry_refs(new, level);
            return Err(Errno::EFAULT);
        }
        self.put_entry_refs(old, level);
        Ok(())
    }

    /// Pins `mfn` as a level-`level` table.
    pub fn pin(&mut self, mfn: Mfn, level: u32, actor: Actor) -> Result<(), Errno> {
        let f = self.frames.info(mfn).ok_or(Errno::EINVAL)?;
        if f.owner != Owner::Domain(actor.dom) {
            return Err(Errno::EPERM);
        }
        if f.pinned {
            return Err(Errno::EINVAL);
        }
        self.get_ref(mfn, actor, false)?;
        if let Err(e) = self.get_type(mfn, PageType::table(level), actor) {
            self.put_ref(mfn);
            return Err(e);
        }
        if let Some(f) = self.frames.info_mut(mfn) {
            f.pinned = true;
        }
        Ok(())
    }

    /// Removes the pin from `mfn`.
    pub fn unpin(&mut self, mfn: Mfn, actor: Actor) -> Result<(), Errno> {
        let f = self.frames.info_mut(mfn).ok_or(Errno::EINVAL)?;
        if f.owner != Owner::Domain(actor.dom) {
            return Err(Errno::EPERM);
        }
        if !f.pinned {
            return Err(Errno::EINVAL);
        }
        f.pinned = false;
        self.put_type(mfn);
        self.put_ref(mfn);
        Ok(())
    }

    /// Takes the references a base-pointer (CR3) load of `l4` holds.
    pub fn get_base(&mut self, l4: Mfn, actor: Actor) -> Result<(), Errno> {
        self.get_ref(l4, actor, false)?;
        if let Err(e) = self.get_type(l4, PageType::L4, actor) {
            self.put_ref(l4);
            return Err(e);
        }
        Ok(())
    }

    /// Drops a base-pointer reference.
    pub fn put_base(&mut self, l4: Mfn) {
        self.put_type(l4);
        self.put_ref(l4);
    }

    /// Gives an unused frame back to the free pool (decrease reservation).
    pub fn release_frame(&mut self, mfn: Mfn, actor: Actor) -> Result<(), Errno> {
        let f = self.frames.info(mfn).ok_or(Errno::EINVAL)?;
        if f.owner != Owner::Domain(actor.dom) {
            return Err(Errno::EPERM);
        }
        if !f.unused() {
            return Err(Errno::EBUSY);
        }
        self.frames
            .free(mfn, Owner::Domain(actor.dom))
            .map_err(Errno::from)
    }

    /// Drops every reference a dying domain holds on its own structures: its base
    /// pointer and all its pins (cascading through its tables).
    pub fn drop_domain_refs(&mut self, dom: DomId, base: Option<Mfn>) {
        if let Some(l4) = base {
            self.put_base(l4);
        }
        let pinned: usize = self
            .frames
            .iter()
            .filter(|(_, f)| f.owner == Owner::Domain(dom) && f.pinned)
            .count();
        // Unpin in passes (the iterator borrows the table); each pass unpins one frame.
        for _ in 0..pinned {
            let next = self
                .frames
                .iter()
                .find(|(_, f)| f.owner == Owner::Domain(dom) && f.pinned)
                .map(|(m, _)| m);
            match next {
                Some(m) => {
                    let _ = self.unpin(
                        m,
                        Actor {
                            dom,
                            privileged: false,
                        },
                    );
                }
                None => break,
            }
        }
    }
}

/// A mismatch found by `audit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditError {
    /// The frame.
    pub mfn: Mfn,
    /// What is wrong.
    pub what: &'static str,
    /// Expected and found values.
    pub expected: (u32, u32),
    /// Found (type_count, ref_count).
    pub found: (u32, u32),
}

/// Recomputes every type and reference count from a full scan of all live page tables,
/// pins and base pointers (`bases`), and checks the type invariants (host only: it
/// needs a heap; the property tests use it).
#[cfg(not(target_os = "none"))]
pub fn audit(
    frames: &FrameTable<'_>,
    mem: &impl MachineMemory,
    bases: &[Mfn],
) -> Result<(), AuditError> {
    audit_with(frames, mem, bases, &Default::default())
}

/// [`audit`] plus references held outside page tables, as `mfn -> (type refs, general
/// refs)` (what [`crate::grant::audit`] returns for grant tables and mappings).
#[cfg(not(target_os = "none"))]
pub fn audit_with(
    frames: &FrameTable<'_>,
    mem: &impl MachineMemory,
    bases: &[Mfn],
    extra: &std::collections::BTreeMap<Mfn, (u32, u32)>,
) -> Result<(), AuditError> {
    let n = frames.len();
    let mut tc = std::vec![0u32; n];
    let mut rc = std::vec![0u32; n];
    for (m, &(t, r)) in extra {
        if let (Some(x), Some(y)) = (tc.get_mut(m.0 as usize), rc.get_mut(m.0 as usize)) {
            *x += t;
            *y += r;
        }
    }
    let mut expect_type = std::vec![None::<PageType>; n];
    let bump = |v: &mut [u32], m: Mfn| {
        if let Some(x) = v.get_mut(m.0 as usize) {
            *x += 1;
        }
    };
    for (mfn, f) in frames.iter() {
        if f.pinned {
            bump(&mut tc, mfn);
            bump(&mut rc, mfn);
        }
        let Some(level) = (if f.type_count > 0 {
            f.ptype.level()
        } else {
            None
        }) else {
            continue;
        };
        for i in 0..ENTRIES {
            if is_hv_slot(level, i) {
                continue;
            }
            let e = mem.read_u64(mfn.maddr() + 8 * i).unwrap_or(0);
            if e & PTE_P == 0 || (level == 1 && e & crate::grant::PTE_GNTTAB != 0) {
                continue; // counted by the grant tables' own audit
            }
            let t = entry_mfn(e);
            if level == 1 && frames.is_iomem(t) {
                continue; // device memory holds no counts
            }
            bump(&mut rc, t);
            if level > 1 {
                bump(&mut tc, t);
                expect_type[t.0 as usize] = Some(PageType::table(level - 1));
            } else if e & PTE_RW != 0 {
                bump(&mut tc, t);
                expect_type[t.0 as usize] = Some(PageType::Writable);
            }
        }
    }
    for &b in bases {
        bump(&mut tc, b);
        bump(&mut rc, b);
        expect_type[b.0 as usize] = Some(PageType::L4);
    }
    for (mfn, f) in frames.iter() {
        let i = mfn.0 as usize;
        if (f.type_count, f.ref_count) != (tc[i], rc[i]) {
            return Err(AuditError {
                mfn,
                what: "counts",
                expected: (tc[i], rc[i]),
                found: (f.type_count, f.ref_count),
            });
        }
        if let Some(t) = expect_type[i] {
            if f.ptype != t {
                return Err(AuditError {
                    mfn,
                    what: "type",
                    expected: (tc[i], rc[i]),
                    found: (f.type_count, f.ref_count),
                });
            }
        }
        if f.type_count == 0 && f.ptype.level().is_some() {
            return Err(AuditError {
                mfn,
                what: "table type at count 0",
                expected: (0, 0),
                found: (0, f.ref_count),
            });
        }
    }
    Ok(())
}

/// Index of `va` in its level-`level` table (re-exported for callers walking tables).
pub fn index_of(va: u64, level: u32) -> usize {
    table_index(va, level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame_table::FrameInfo;
    use crate::mem::TestMemory;
    use crate::paging::PTE_NX;
    use proptest::prelude::*;

    const A: Actor = Actor {
        dom: DomId(1),
        privileged: false,
    };
    const B: Actor = Actor {
        dom: DomId(2),
        privileged: false,
    };
    const P: Actor = Actor {
        dom: DomId(0),
        privileged: true,
    };
    const HV_L4E: [u64; crate::builder::HV_L4_SLOTS] = {
        let mut e = [0u64; crate::builder::HV_L4_SLOTS];
        e[6] = 0x1000 | PTE_P | PTE_RW; // supervisor-only
        e
    };

    struct World {
        mem: TestMemory,
        entries: Vec<FrameInfo>,
        budget: u64,
    }

    impl World {
        /// 64 frames; frames 8.. are owned: 8..24 by A, 24..40 by B, 40..56 by P.
        fn new() -> World {
            let mut w = World {
                mem: TestMemory::new(64),
                entries: vec![FrameInfo::RESERVED; 64],
                budget: u64::MAX,
            };
            let mut ft = FrameTable::new(&mut w.entries);
            ft.add_free_range(Mfn(8), Mfn(64));
            for (dom, range) in [(A.dom, 8..24), (B.dom, 24..40), (P.dom, 40..56)] {
                for _ in range {
                    ft.alloc(Owner::Domain(dom)).unwrap();
                }
            }
            w
        }
        fn with<R>(&mut self, f: impl FnOnce(&mut Mm<'_, '_, TestMemory>) -> R) -> R {
            let mut ft = FrameTableView::new(&mut self.entries);
            let mut mm = Mm {
                frames: &mut ft.0,
                mem: &mut self.mem,
                hv_l4e: &HV_L4E,
                budget: &mut self.budget,
            };
            f(&mut mm)
        }
        fn info(&mut self, m: u64) -> FrameInfo {
            self.entries[m as usize]
        }
        fn audit(&mut self, bases: &[Mfn]) {
            let ft = FrameTableView::new(&mut self.entries);
            if let Err(e) = audit(&ft.0, &self.mem, bases) {
                panic!("audit failed: {e:?}");
            }
        }
        fn poke(&mut self, table: u64, index: u64, val: u64) {
            self.mem.write_u64(table * 4096 + index * 8, val);
        }
    }

    /// Re-wraps existing entries without resetting them (tests only).
    struct FrameTableView<'a>(FrameTable<'a>);
    impl<'a> FrameTableView<'a> {
        /// Frames 0..4 are RAM reserved by the hypervisor, 4..8 a hole (device memory),
        /// 8..64 RAM; frames from 64 on are beyond the table (device memory too).
        fn new(entries: &'a mut [FrameInfo]) -> Self {
            let mut ft = FrameTable::from_existing(entries);
            ft.set_iomem(
                crate::iomem::IoMem::from_ram_ranges(&[(0, 4 * 4096), (8 * 4096, 64 * 4096)])
                    .unwrap(),
            );
            FrameTableView(ft)
        }
    }

    fn e(mfn: u64, flags: u64) -> u64 {
        (mfn << 12) | flags | PTE_P | PTE_US
    }

    /// A's tree: L4 8 -> L3 9 -> L2 10 -> L1 11 -> data 12 (RW), 13 (RO), and 11 mapped
    /// read-only by itself (a table may be mapped read-only).
    fn tree(w: &mut World) {
        w.poke(8, 1, e(9, PTE_RW));
        w.poke(9, 0, e(10, PTE_RW));
        w.poke(10, 0, e(11, PTE_RW));
        w.poke(11, 0, e(12, PTE_RW));
        w.poke(11, 1, e(13, 0));
        w.poke(11, 2, e(11, PTE_NX));
    }

    #[test]
    fn pinning_a_tree_types_and_counts_everything() {
        let mut w = World::new();
        tree(&mut w);
        w.with(|mm| mm.pin(Mfn(8), 4, A)).unwrap();
        w.audit(&[]);
        assert_eq!(w.info(8).ptype, PageType::L4);
        assert_eq!(w.info(11).ptype, PageType::L1);
        assert_eq!(
            (w.info(11).type_count, w.info(11).ref_count),
            (1, 2),
            "L2 entry + its own RO mapping"
        );
        assert_eq!(w.info(12).ptype, PageType::Writable);
        assert_eq!(w.info(13).ptype, PageType::None);
        assert_eq!(
            w.mem.read_u64(8 * 4096 + 8 * 262),
            Some(HV_L4E[6]),
            "hypervisor slot installed"
        );
        // Unpinning devalidates the whole tree.
        w.with(|mm| mm.unpin(Mfn(8), A)).unwrap();
        w.audit(&[]);
        for m in 8..24 {
            assert!(w.info(m).unused(), "frame {m} still in use");
        }
    }

    #[test]
    fn hostile_updates_are_refused() {
        let mut w = World::new();
        tree(&mut w);
        w.with(|mm| mm.pin(Mfn(8), 4, A)).unwrap();
        let l1 = 11 * 4096;
        let cases: &[(u64, u64, Actor, Errno, &str)] = &[
            (
                l1 + 8 * 5,
                e(11, PTE_RW),
                A,
                Errno::EINVAL,
                "own L1 mapped writable",
            ),
            (
                l1 + 8 * 5,
                e(8, PTE_RW),
                A,
                Errno::EINVAL,
                "own L4 mapped writable",
            ),
            (
                l1 + 8 * 5,
                e(30, 0),
                A,
                Errno::EPERM,
                "another domain's frame",
            ),
            (
                l1 + 8 * 5,
                e(2, 0),
                A,
                Errno::EPERM,
                "a hypervisor/reserved frame",
            ),
            (
                l1 + 8 * 5,
                e(1 << 30, 0),
                A,
                Errno::EINVAL,
                "a frame beyond RAM",
            ),
            (
                l1 + 8 * 5,
                e(13, 1 << 52),
                A,
                Errno::EINVAL,
                "reserved bit 52",
            ),
            (l1 + 8 * 5, e(13, PTE_PS), A, Errno::EINVAL, "PAT bit in L1"),
            (
                10 * 4096 + 8,
                e(14, PTE_PS),
                A,
                Errno::EINVAL,
                "large page in L2",
            ),
            (
                10 * 4096 + 8,
                e(10, 0),
                A,
                Errno::EINVAL,
                "L2 pointing at an L2",
            ),
            (
                8 * 4096 + 8 * 3,
                e(8, 0),
                A,
                Errno::EINVAL,
                "L4 pointing at itself",
            ),
            (
                8 * 4096 + 8 * 256,
                e(14, 0),
                A,
                Errno::EPERM,
                "hypervisor L4 slot",
            ),
            (
                8 * 4096 + 8 * 271,
                0,
                A,
                Errno::EPERM,
                "clearing a hypervisor L4 slot",
            ),
            (
                l1 + 8 * 5,
                e(13, 0),
                B,
                Errno::EPERM,
                "writing another domain's table",
            ),
            (l1 + 4, e(13, 0), A, Errno::EINVAL, "misaligned entry"),
            ((1 << 30) * 4096, 0, A, Errno::EINVAL, "table beyond RAM"),
        ];
        for &(ptr, val, who, err, what) in cases {
            assert_eq!(
                w.with(|mm| mm.update_entry(ptr, val, who)),
                Err(err),
                "{what}"
            );
            w.audit(&[]);
        }
        // Privileged dom0 may map A's data frame, but not use A's frame as a table.
        w.poke(41, 0, 0);
        w.with(|mm| mm.pin(Mfn(41), 1, P)).unwrap();
        assert_eq!(
            w.with(|mm| mm.update_entry(41 * 4096, e(13, PTE_RW), P)),
            Ok(())
        );
        assert_eq!(
            w.with(|mm| mm.update_entry(41 * 4096 + 8, e(11, PTE_RW), P)),
            Err(Errno::EINVAL),
            "A's L1 writable"
        );
        w.audit(&[]);
        // A frame mapped writable cannot become a table; a table in use cannot be freed.
        assert_eq!(w.with(|mm| mm.pin(Mfn(12), 1, A)), Err(Errno::EINVAL));
        assert_eq!(
            w.with(|mm| mm.pin(Mfn(13), 1, A)),
            Err(Errno::EINVAL),
            "mapped writable by dom0 now"
        );
        assert_eq!(
            w.with(|mm| mm.pin(Mfn(8), 4, A)),
            Err(Errno::EINVAL),
            "already pinned"
        );
        assert_eq!(
            w.with(|mm| mm.unpin(Mfn(9), A)),
            Err(Errno::EINVAL),
            "not pinned"
        );
        assert_eq!(w.with(|mm| mm.unpin(Mfn(8), B)), Err(Errno::EPERM));
        assert_eq!(w.with(|mm| mm.release_frame(Mfn(11), A)), Err(Errno::EBUSY));
        assert_eq!(w.with(|mm| mm.release_frame(Mfn(12), A)), Err(Errno::EBUSY));
        assert_eq!(w.with(|mm| mm.release_frame(Mfn(20), B)), Err(Errno::EPERM));
        assert_eq!(w.with(|mm| mm.release_frame(Mfn(20), A)), Ok(()));
        w.audit(&[]);
    }

    #[test]
    fn entry_updates_move_references() {
        let mut w = World::new();
        tree(&mut w);
        w.with(|mm| mm.pin(Mfn(8), 4, A)).unwrap();
        let slot = 11 * 4096 + 8 * 7;
        w.with(|mm| mm.update_entry(slot, e(14, PTE_RW), A))
            .unwrap();
        assert_eq!(w.info(14).ptype, PageType::Writable);
        w.with(|mm| mm.update_entry(slot, e(14, 0), A)).unwrap();
        assert_eq!((w.info(14).type_count, w.info(14).ref_count), (0, 1));
        // Now 14 is only mapped read-only, so it may become a table.
        w.with(|mm| mm.pin(Mfn(14), 1, A)).unwrap();
        w.audit(&[]);
        // Hook a new L1 (15, fresh) into the L2: validated on first reference.
        w.poke(15, 3, e(16, PTE_RW));
        w.with(|mm| mm.update_entry(10 * 4096 + 8 * 2, e(15, PTE_RW), A))
            .unwrap();
        assert_eq!(w.info(15).ptype, PageType::L1);
        assert_eq!(w.info(16).ptype, PageType::Writable);
        // Unhooking it devalidates it (not pinned) and releases 16.
        w.with(|mm| mm.update_entry(10 * 4096 + 8 * 2, 0, A))
            .unwrap();
        assert!(w.info(15).unused() && w.info(16).unused());
        w.audit(&[]);
        // Base pointer references.
        w.with(|mm| mm.get_base(Mfn(8), A)).unwrap();
        w.audit(&[Mfn(8)]);
        w.with(|mm| mm.unpin(Mfn(8), A)).unwrap();
        assert_eq!(w.info(8).ptype, PageType::L4, "still loaded");
        w.with(|mm| mm.put_base(Mfn(8)));
        w.audit(&[]);
        assert!(w.info(8).unused());
    }

    #[test]
    fn validation_budget_fails_cleanly() {
        let mut w = World::new();
        tree(&mut w);
        w.budget = 1000; // less than the 4 * 512 entries of the tree
        assert_eq!(w.with(|mm| mm.pin(Mfn(8), 4, A)), Err(Errno::EAGAIN));
        w.audit(&[]);
        for m in 8..24 {
            assert!(w.info(m).unused(), "frame {m} left referenced");
        }
        // Bottom-up pinning fits in the same per-call budget.
        for (m, level) in [(11, 1), (10, 2), (9, 3), (8, 4)] {
            w.budget = 1000;
            w.with(|mm| mm.pin(Mfn(m), level, A)).unwrap();
        }
        w.audit(&[]);
    }

    #[test]
    fn dying_domain_drops_everything_and_zombies_survive_foreign_refs() {
        let mut w = World::new();
        tree(&mut w);
        w.with(|mm| mm.pin(Mfn(8), 4, A)).unwrap();
        w.with(|mm| mm.get_base(Mfn(8), A)).unwrap();
        w.poke(41, 0, 0);
        w.with(|mm| mm.pin(Mfn(41), 1, P)).unwrap();
        w.with(|mm| mm.update_entry(41 * 4096, e(13, 0), P))
            .unwrap(); // dom0 maps A's frame 13
        w.with(|mm| mm.drop_domain_refs(A.dom, Some(Mfn(8))));
        let (freed, zombies) = {
            let mut ft = FrameTableView::new(&mut w.entries);
            ft.0.release_domain(A.dom)
        };
        assert_eq!((freed, zombies), (15, 1));
        assert_eq!(w.info(13).owner, Owner::Zombie(A.dom));
        // dom0 unmaps it: the zombie is freed.
        w.with(|mm| mm.update_entry(41 * 4096, 0, P)).unwrap();
        assert_eq!(w.info(13).owner, Owner::Free);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Pin(usize, u64, u32),
        Unpin(usize, u64),
        Update(usize, u64, u64, u64, u64),
        Base(usize, u64),
        Release(usize, u64),
    }

    #[test]
    fn device_memory_is_mappable_by_the_privileged_domain_only() {
        let mut w = World::new();
        // P's tree: L4 40 -> L3 41 -> L2 42 -> L1 43.
        w.poke(40, 1, e(41, PTE_RW));
        w.poke(41, 0, e(42, PTE_RW));
        w.poke(42, 0, e(43, PTE_RW));
        w.with(|mm| mm.pin(Mfn(40), 4, P)).unwrap();
        tree(&mut w);
        w.with(|mm| mm.pin(Mfn(8), 4, A)).unwrap();
        const PCD_PWT: u64 = 0x18;
        let (pl1, al1) = (43 * 4096, 11 * 4096);
        // dom0: a hole frame and a frame beyond RAM, writable and uncached.
        w.with(|mm| mm.update_entry(pl1 + 8, e(5, PTE_RW | PCD_PWT), P))
            .unwrap();
        w.with(|mm| mm.update_entry(pl1 + 16, e(1 << 20, PTE_RW | PCD_PWT), P))
            .unwrap();
        assert_eq!(w.info(5).ref_count, 0, "device memory holds no counts");
        w.audit(&[]);
        // Never the hypervisor's RAM frames, even for dom0.
        assert_eq!(
            w.with(|mm| mm.update_entry(pl1 + 24, e(2, PTE_RW), P)),
            Err(Errno::EPERM)
        );
        // Nor the hypervisor's interrupt controllers.
        assert_eq!(
            w.with(|mm| mm.update_entry(pl1 + 24, e(0xfee00, PTE_RW | PCD_PWT), P)),
            Err(Errno::EINVAL)
        );
        // Nor another domain's page table (RAM rules unchanged).
        assert_eq!(
            w.with(|mm| mm.update_entry(pl1 + 24, e(11, PTE_RW), P)),
            Err(Errno::EINVAL)
        );
        // An unprivileged domain gets none of it.
        assert_eq!(
            w.with(|mm| mm.update_entry(al1 + 8 * 5, e(5, PTE_RW), A)),
            Err(Errno::EPERM)
        );
        assert_eq!(
            w.with(|mm| mm.update_entry(al1 + 8 * 5, e(1 << 20, 0), A)),
            Err(Errno::EINVAL)
        );
        // Unmapping and tearing down leave nothing behind.
        w.with(|mm| mm.update_entry(pl1 + 8, 0, P)).unwrap();
        w.audit(&[]);
        w.with(|mm| mm.drop_domain_refs(P.dom, None));
        w.with(|mm| mm.drop_domain_refs(A.dom, None));
        for (m, f) in w.entries.iter().enumerate() {
            assert!(f.unused(), "frame {m} still used: {f:?}");
        }
    }

    fn actor(i: usize) -> Actor {
        [A, B, P][i % 3]
    }

    fn op() -> impl Strategy<Value = Op> {
        let frame = 8u64..56;
        let flags = prop::sample::select(vec![
            0u64,
            PTE_P,
            PTE_P | PTE_RW,
            PTE_P | PTE_RW | PTE_PS,
            PTE_P | (1 << 52),
        ]);
        let index = prop::sample::select(vec![0u64, 1, 2, 256, 511]);
        prop_oneof![
            1 => (0usize..3, frame.clone(), 1u32..=4).prop_map(|(a, m, l)| Op::Pin(a, m, l)),
            1 => (0usize..3, frame.clone()).prop_map(|(a, m)| Op::Unpin(a, m)),
            4 => (0usize..3, frame.clone(), index, 0u64..68, flags).prop_map(|(a, t, i, m, f)| Op::Update(a, t, i, m, f)),
            1 => (0usize..3, frame.clone()).prop_map(|(a, m)| Op::Base(a, m)),
            1 => (0usize..3, frame).prop_map(|(a, m)| Op::Release(a, m)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Random operations from three domains (one privileged) never break the counts:
        /// after every step a full scan agrees with the frame table; and tearing every
        /// domain down returns every frame to unused.
        #[test]
        fn counts_match_a_full_scan(ops in proptest::collection::vec(op(), 1..60)) {
            let mut w = World::new();
            let mut bases: [Option<Mfn>; 3] = [None; 3];
            for o in ops {
                match o {
                    Op::Pin(a, m, l) => { let _ = w.with(|mm| mm.pin(Mfn(m), l, actor(a))); }
                    Op::Unpin(a, m) => { let _ = w.with(|mm| mm.unpin(Mfn(m), actor(a))); }
                    Op::Update(a, t, i, m, f) => {
                        let _ = w.with(|mm| mm.update_entry(t * 4096 + 8 * i, (m << 12) | f, actor(a)));
                    }
                    Op::Base(a, m) => {
                        let old = bases[a];
                        if w.with(|mm| mm.get_base(Mfn(m), actor(a))).is_ok() {
                            if let Some(o) = old { w.with(|mm| mm.put_base(o)); }
                            bases[a] = Some(Mfn(m));
                        }
                    }
                    Op::Release(a, m) => { let _ = w.with(|mm| mm.release_frame(Mfn(m), actor(a))); }
                }
                let live: Vec<Mfn> = bases.iter().flatten().copied().collect();
                let ft = FrameTableView::new(&mut w.entries);
                prop_assert_eq!(audit(&ft.0, &w.mem, &live), Ok(()));
            }
            for (a, base) in bases.iter().enumerate() {
                let dom = actor(a).dom;
                w.with(|mm| mm.drop_domain_refs(dom, *base));
            }
            for (m, f) in w.entries.iter().enumerate() {
                prop_assert!(f.unused(), "frame {} still used: {:?}", m, f);
            }
        }
    }
}
