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
        let Some(f) = self.frames.info_mut(mfn) else { return };
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
        self.mem.read_u64(table.maddr() + 8 * i).ok_or(Errno::EFAULT)
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
        if e & PTE_P == 0 {
            return;
        }
        let target = entry_mfn(e);
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
        Ok(if f.type_count > 0 { f.ptype.level() } else { None })
    }

    /// Writes `new` into the entry at machine address `pte_maddr` of one of `actor`'s page
    /// tables, after validating it; releases what the old entry held. A frame that is the
    /// actor's but not a live table (and not a descriptor table) gets a plain write.
    pub fn update_entry(&mut self, pte_maddr: u64, new: u64, actor: Actor) -> Result<(), Errno> {
        if pte_maddr % 8 != 0 {
            return Err(Errno::EINVAL);
        }
        let table = Mfn::containing(pte_maddr);
        let index = (pte_maddr % 4096) / 8;
        let Some(level) = self.table_level(table, actor)? else {
            let f = self.frames.info(table).ok_or(Errno::EINVAL)?;
            if f.ptype == PageType::SegDesc && f.type_count > 0 {
                return Err(Errno::EINVAL);
            }
            return if self.mem.write_u64(pte_maddr, new) { Ok(()) } else { Err(Errno::EFAULT) };
        };
        if is_hv_slot(level, index) {
            return Err(Errno::EPERM);
        }
        let new = if new & PTE_P != 0 { new | PTE_US } else { new };
        let old = self.mem.read_u64(pte_maddr).ok_or(Errno::EFAULT)?;
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
        self.frames.free(mfn, Owner::Domain(actor.dom)).map_err(Errno::from)
    }

    /// Drops every reference a dying domain holds on its own structures: its base
    /// pointer and all its pins (cascading through its tables).
    pub fn drop_domain_refs(&mut self, dom: DomId, base: Option<Mfn>) {
        if let Some(l4) = base {
            self.put_base(l4);
        }
        let pinned: usize = self.frames.iter().filter(|(_, f)| f.owner == Owner::Domain(dom) && f.pinned).count();
        // Unpin in passes (the iterator borrows the table); each pass unpins one frame.
        for _ in 0..pinned {
            let next = self.frames.iter().find(|(_, f)| f.owner == Owner::Domain(dom) && f.pinned).map(|(m, _)| m);
            match next {
                Some(m) => {
                    let _ = self.unpin(m, Actor { dom, privileged: false });
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
pub fn audit(frames: &FrameTable<'_>, mem: &impl MachineMemory, bases: &[Mfn]) -> Result<(), AuditError> {
    let n = frames.len();
    let mut tc = std::vec![0u32; n];
    let mut rc = std::vec![0u32; n];
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
        let Some(level) = (if f.type_count > 0 { f.ptype.level() } else { None }) else { continue };
        for i in 0..ENTRIES {
            if is_hv_slot(level, i) {
                continue;
            }
            let e = mem.read_u64(mfn.maddr() + 8 * i).unwrap_or(0);
            if e & PTE_P == 0 {
                continue;
            }
            let t = entry_mfn(e);
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
            return Err(AuditError { mfn, what: "counts", expected: (tc[i], rc[i]), found: (f.type_count, f.ref_count) });
        }
        if let Some(t) = expect_type[i] {
            if f.ptype != t {
                return Err(AuditError { mfn, what: "type", expected: (tc[i], rc[i]), found: (f.type_count, f.ref_count) });
            }
        }
        if f.type_count == 0 && f.ptype.level().is_some() {
            return Err(AuditError { mfn, what: "table type at count 0", expected: (0, 0), found: (0, f.ref_count) });
        }
    }
    Ok(())
}

/// Index of `va` in its level-`level` table (re-exported for callers walking tables).
pub fn index_of(va: u64, level: u32) -> usize {
    table_index(va, level)
}
