//! Memory management for PV kernels: page tables under the hypervisor's rules
//! ([`abi::mm`]), address spaces, a page allocator and ballooning.
//!
//! The layers, bottom up:
//!
//! - [`pt`]: page-table arithmetic (levels, indices, entry values); portable.
//! - [`Mmu`]: the platform operations on page tables: write entries (batched), change
//!   the leaf entry of a virtual address, pin/unpin, switch base pointer, TLB
//!   maintenance. The seed of a `pv_ops`-style interface: [`pv::PvMmu`] implements it
//!   with hypercalls; a native kernel would write the tables and `cr3` directly.
//! - [`PhysMap`] / [`FrameSource`]: how the kernel reads a table given its machine frame,
//!   and where new frames come from. [`pv::PvPhys`] reads tables through the M2P and the
//!   start-of-day map; [`pv::PvFrames`] allocates from a [`pool::PagePool`] over the free
//!   pfns after `start_info.first_free_va`, and balloons pages out and in.
//! - [`AddressSpace`]: an L4 with the kernel's upper-half slots shared, the rest built on
//!   demand; map, unmap, switch to, destroy.
//! - [`ptwr`]: direct stores into L1 tables through their read-only mappings (the
//!   hypervisor traps, validates and applies them).
//!
//! The rules every layer follows (the hypervisor enforces them, see [`abi::mm`]): a
//! frame becomes a table only when nothing maps it writable, so a new table is zeroed
//! through its start-of-day mapping, that mapping is made read-only, and only then is the
//! table hooked into its parent or pinned; a table given back is first unhooked/unpinned,
//! then its start-of-day mapping is made writable again.
//!
//! Host tests: [`pt`], [`pool`] and [`AddressSpace`] run on the host, the latter against
//! a simulated MMU that applies the hypervisor's type rules (`sim`, test-only). The PV
//! implementations need the real hypervisor (M2P, page tables, ptwr); they are exercised
//! by the `memory`, `mm-hostile` and `ptwr-bad` test programs.

pub mod aspace;
pub mod pool;
pub mod pt;
pub mod ptwr;
pub mod pv;
#[cfg(test)]
mod sim;

use abi::mm::{pte, MmuUpdate};
use abi::{Errno, Mfn, Pfn};

pub use crate::hv::BatchError;
pub use aspace::AddressSpace;
use pt::Level;

/// A frame of this domain: its pseudo-physical and machine numbers, and a virtual address
/// through which the kernel reaches it (for PV kernels its start-of-day mapping, which is
/// read-only while the frame is a page table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Pseudo-physical frame number.
    pub pfn: Pfn,
    /// Machine frame number (what page-table entries hold).
    pub mfn: Mfn,
    /// Where the kernel maps it.
    pub va: u64,
}

/// Platform page-table operations.
///
/// Entries are named by machine address (`maddr`, 8-byte aligned, of a table the kernel
/// owns) and hold machine frame numbers. Implementations apply the updates in order and
/// stop at the first failure.
pub trait Mmu {
    /// Writes the entries `updates` (each an `MMU_NORMAL_PT_UPDATE`: `ptr` = the entry's
    /// machine address, `val` = the new value) in order. Any length: implementations
    /// split long batches. On failure, the entries before `done` were written.
    ///
    /// # Safety
    /// No entry written may remove or redirect a mapping Rust code still relies on.
    unsafe fn set_ptes(&mut self, updates: &[MmuUpdate]) -> Result<(), BatchError>;

    /// Writes one entry: [`Mmu::set_ptes`] of one update.
    ///
    /// # Safety
    /// As for [`Mmu::set_ptes`].
    unsafe fn set_pte(&mut self, maddr: u64, val: u64) -> Result<(), Errno> {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.set_ptes(&[crate::hv::pt_update(maddr, val)]) }.map_err(|e| e.err)
    }

    /// Sets the leaf entry that maps `va` in the current address space to `val` and
    /// invalidates `va`'s TLB entry.
    ///
    /// # Safety
    /// The old mapping of `va` must not be relied upon by Rust code.
    unsafe fn set_va_pte(&mut self, va: u64, val: u64) -> Result<(), Errno>;

    /// The leaf entry that maps `va` in the current address space (`Some(0)` if the L1
    /// table exists but the entry is empty; `None` if there is no L1 table for `va`).
    fn va_pte(&self, va: u64) -> Option<u64>;

    /// Drops write access to the page at `va` (current address space). `ENOENT` if `va`
    /// is not mapped.
    ///
    /// # Safety
    /// Rust code must not write the page through `va` afterwards (for a page that
    /// becomes a page table, such a write would be taken as a page-table update).
    unsafe fn make_readonly(&mut self, va: u64) -> Result<(), Errno> {
        let e = self
            .va_pte(va)
            .filter(|&e| pt::is_present(e))
            .ok_or(Errno::ENOENT)?;
        // SAFETY: same frame, fewer rights: every access but writes (excluded by this
        // function's contract) keeps working.
        unsafe { self.set_va_pte(va, e & !pte::RW) }
    }

    /// Gives write access to the page at `va` back (refused while the frame is a page
    /// table). `ENOENT` if `va` is not mapped.
    fn make_writable(&mut self, va: u64) -> Result<(), Errno> {
        let e = self
            .va_pte(va)
            .filter(|&e| pt::is_present(e))
            .ok_or(Errno::ENOENT)?;
        // SAFETY: same frame, more rights: nothing that worked before stops working.
        unsafe { self.set_va_pte(va, e | pte::RW | pte::D) }
    }

    /// Pins `mfn` as a table of `level`: validates it and keeps it typed until unpinned.
    fn pin(&mut self, level: Level, mfn: Mfn) -> Result<(), Errno>;

    /// Drops the pin on `mfn`.
    fn unpin(&mut self, mfn: Mfn) -> Result<(), Errno>;

    /// Switches to the address space whose L4 is `mfn`.
    ///
    /// # Safety
    /// Everything Rust code relies on must be mapped the same way in the new space.
    unsafe fn new_baseptr(&mut self, mfn: Mfn) -> Result<(), Errno>;

    /// The L4 of the current address space.
    fn base(&self) -> Mfn;

    /// Flushes the whole (non-global) TLB.
    fn flush_tlb(&mut self) -> Result<(), Errno>;

    /// Invalidates the TLB entry of `va`.
    fn invlpg(&mut self, va: u64) -> Result<(), Errno>;
}

/// How the kernel reaches its own frames, given their machine numbers.
///
/// # Safety
/// A [`Frame`] returned by [`PhysMap::frame_of`] must belong to this domain and stay
/// mapped readable at `va` (the default [`PhysMap::read_entry`] reads through it).
pub unsafe trait PhysMap {
    /// The frame with machine number `mfn`, if it is this domain's.
    fn frame_of(&self, mfn: Mfn) -> Option<Frame>;

    /// Entry `idx` of the table in frame `table` (read through its mapping); `None` if
    /// the frame is not this domain's or `idx >= 512`.
    fn read_entry(&self, table: Mfn, idx: usize) -> Option<u64> {
        if idx >= pt::ENTRIES {
            return None;
        }
        let f = self.frame_of(table)?;
        let p = (f.va + idx as u64 * pt::ENTRY_SIZE) as *const u64;
        // SAFETY: by the trait's contract `f.va` maps the frame readable; `idx < 512`
        // keeps the aligned 8-byte read inside it. Page tables change under us (the
        // hypervisor writes them), hence volatile.
        Some(unsafe { p.read_volatile() })
    }
}

/// Where new frames come from.
///
/// # Safety
/// [`FrameSource::alloc_frame`] must return a frame nothing else uses, mapped writable at
/// its `va`, until it is given back with [`FrameSource::free_frame`].
pub unsafe trait FrameSource: PhysMap {
    /// A free frame, mapped writable at its `va`; its contents are unspecified.
    fn alloc_frame(&mut self) -> Option<Frame>;

    /// Gives back a frame from [`FrameSource::alloc_frame`], mapped writable again.
    fn free_frame(&mut self, frame: Frame);
}

/// Where the L1 entry for a virtual address lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The L1 table.
    pub table: Frame,
    /// Index of the entry in it.
    pub index: usize,
    /// Machine address of the entry.
    pub maddr: u64,
    /// Virtual address of the entry (through the table's read-only mapping).
    pub entry_va: u64,
    /// The entry's value when looked up.
    pub pte: u64,
}

/// The entry at `level` for `va` in the tables rooted at `l4`: (table frame, index,
/// value). `None` if a table above `level` is missing or not this domain's.
pub fn locate(phys: &impl PhysMap, l4: Mfn, va: u64, level: Level) -> Option<(Mfn, usize, u64)> {
    let mut table = l4;
    for l in Level::TOP_DOWN {
        let idx = l.index(va);
        let e = phys.read_entry(table, idx)?;
        if l == level {
            return Some((table, idx, e));
        }
        if !pt::is_present(e) || e & pte::PS != 0 {
            return None;
        }
        table = pt::entry_mfn(e);
    }
    None
}

/// The L1 entry for `va` in the tables rooted at `l4` (even if it is empty); `None` if
/// there is no L1 table for `va`.
pub fn walk(phys: &impl PhysMap, l4: Mfn, va: u64) -> Option<Leaf> {
    let (table, index, pte) = locate(phys, l4, va, Level::L1)?;
    let table = phys.frame_of(table)?;
    Some(Leaf {
        table,
        index,
        maddr: pt::entry_maddr(table.mfn, index),
        entry_va: table.va + index as u64 * pt::ENTRY_SIZE,
        pte,
    })
}
