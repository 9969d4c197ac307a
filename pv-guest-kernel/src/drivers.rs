//! [`PvPlatform`]: the split-driver framework's [`Platform`] for PV kernels (dom0 and
//! domUs), on hypercalls.
//!
//! What it owns, set up once by [`PvPlatform::new`]:
//! - the **page allocator** ([`PvFrames`]: every free start-of-day page left after the
//!   heap; the heap is set up first if nothing did yet, so `alloc` keeps working);
//! - **this domain's grant table** as a granter: `GNTTABOP_SETUP_TABLE` reports its
//!   frames, which are mapped read-write into foreign slots and driven through
//!   [`GrantEntries`] (publish with release ordering; revoke by compare-and-swap that
//!   fails with `EBUSY` while the grantee maps or copies) and a [`RefAllocator`] (refs
//!   from [`GNTTAB_NR_RESERVED_ENTRIES`]; below are the builder's console and xenstore
//!   grants);
//! - the **foreign-mapping area**: [`ForeignSlots`] over pages taken from the allocator
//!   and ballooned out, so their L1 entries exist (in the bootstrap tables) and are
//!   empty, which is what `GNTTABOP_MAP_GRANT_REF` with `GNTMAP_host_map` needs. The
//!   frames go back to the hypervisor; the addresses stay reserved.
//!
//! Event channels go through [`crate::events`] with [`events::note`] as the handler of
//! every port bound here: a driver loop waits with [`PvPlatform::wait_any`] (or
//! [`events::wait_any`]) and then does its work outside upcall context.
//!
//! One per kernel: it takes the rest of the free memory. Exercised under the real
//! hypervisor by the `grant-*` test programs and dom0's `test=` modes.

use alloc::vec::Vec;

use abi::grant_table::GNTTAB_NR_RESERVED_ENTRIES;
use abi::hypercall::DomainInfo;
use abi::mm::UVMF_INVLPG;
use abi::ring::SharedPage;
use abi::start_info::StartInfo;
use abi::{DomId, Errno, Mfn, Pfn, PAGE_SIZE};
use pv_drivers::platform::{GrantRef, MappedGrant, OwnPage, Platform, Port};

use crate::grant::{ForeignSlots, GrantEntries, RefAllocator};
use crate::mm::pt::leaf_entry;
use crate::mm::pv::{frame_of_pfn, PvFrames, PvMmu};
use crate::{events, heap, hv, mem};

/// A ring page the domain builder set up for this domU (xenstore or console), seen
/// from the domU: the page in its start-of-day map and its port (unbound for dom0 until
/// dom0 binds it), with [`events::note`] installed as the port's handler.
pub struct BootRing {
    /// The page.
    pub page: SharedPage,
    /// The event-channel port.
    pub port: Port,
    /// The page's machine frame (what dom0 sees in `DomainInfo`).
    pub mfn: Mfn,
}

fn boot_ring(mfn: Mfn, port: Port) -> Option<BootRing> {
    if mfn.0 == 0 || port == 0 {
        return None;
    }
    let pfn = crate::mm::pv::mfn_to_pfn(mfn)?;
    let va = mem::pfn_to_va(pfn);
    events::init().ok()?;
    events::set_handler(port, Some(events::note)).ok()?;
    Some(BootRing {
        // SAFETY: the builder's page, mapped read-write at its start-of-day address for
        // the domain's life; the caller uses it through the ring code only (one handle:
        // call this once per ring).
        page: unsafe { SharedPage::new(va as usize as *mut u8) },
        port,
        mfn,
    })
}

/// This domU's xenstore page and port (`start_info.store_mfn` / `store_evtchn`); `None`
/// for dom0 or if the builder gave none. Call once.
pub fn store_ring(si: &StartInfo) -> Option<BootRing> {
    boot_ring(si.store_mfn, si.store_evtchn)
}

/// This domU's console page and port (`start_info.console_mfn` / `console_evtchn`).
/// Call once.
pub fn console_ring(si: &StartInfo) -> Option<BootRing> {
    boot_ring(si.console_mfn, si.console_evtchn)
}

/// Foreign-mapping slots [`PvPlatform::new`] reserves.
pub const DEFAULT_FOREIGN_SLOTS: usize = 64;
/// Grant-table frames it sets up (512 entries each).
pub const GRANT_TABLE_FRAMES: usize = 1;

/// The guest kernel's [`Platform`].
pub struct PvPlatform {
    domid: DomId,
    mmu: PvMmu,
    frames: PvFrames,
    table: GrantEntries,
    table_frames: [u64; GRANT_TABLE_FRAMES],
    refs: RefAllocator,
    slots: ForeignSlots,
}

impl PvPlatform {
    /// [`PvPlatform::with_slots`] with [`DEFAULT_FOREIGN_SLOTS`].
    pub fn new(si: &StartInfo) -> Result<PvPlatform, Errno> {
        Self::with_slots(si, DEFAULT_FOREIGN_SLOTS)
    }

    /// Sets everything up (see the module docs) with `slots` foreign-mapping slots (at
    /// most [`crate::grant::MAX_FOREIGN_SLOTS`]; [`GRANT_TABLE_FRAMES`] of them hold the
    /// grant table). `ENOMEM` if the free memory is gone (another allocator took it).
    pub fn with_slots(si: &StartInfo, slots: usize) -> Result<PvPlatform, Errno> {
        if heap::stats().size == 0 {
            // Reserve the heap before the page allocator takes everything.
            let _ = heap::init(heap::DEFAULT_HEAP_KIB);
        }
        let slots = slots.clamp(GRANT_TABLE_FRAMES + 1, crate::grant::MAX_FOREIGN_SLOTS);
        let domid = hv::domain_id()?;
        let mut mmu = PvMmu::new(si).ok_or(Errno::EINVAL)?;
        let mut frames = PvFrames::from_start_info(si).ok_or(Errno::ENOMEM)?;
        // The foreign area: consecutive pages, given back so their PTEs are empty.
        let first = frames.alloc_contiguous(slots as u64).ok_or(Errno::ENOMEM)?;
        let pfns: Vec<Pfn> = (0..slots as u64).map(|i| Pfn(first.pfn.0 + i)).collect();
        // SAFETY: the pages were just allocated and nothing uses them.
        let given = unsafe { frames.balloon_out(&mut mmu, &pfns) }?;
        if given != slots {
            return Err(Errno::ENOMEM);
        }
        let mut slots = ForeignSlots::new(first.va, slots);

        let mut table_frames = [0u64; GRANT_TABLE_FRAMES];
        hv::gnttab_setup_table(&mut table_frames)?;
        let table_va = slots.alloc()?;
        for (i, &mfn) in table_frames.iter().enumerate() {
            let va = if i == 0 { table_va } else { slots.alloc()? };
            debug_assert_eq!(va, table_va + (i * PAGE_SIZE) as u64);
            // SAFETY: `va` is a foreign slot: it maps nothing Rust relies on.
            unsafe { hv::update_va_mapping(va, leaf_entry(Mfn(mfn), true), UVMF_INVLPG) }?;
        }
        let nr = (GRANT_TABLE_FRAMES as u32) * abi::grant_table::GRANT_ENTRIES_PER_FRAME;
        let base = core::ptr::NonNull::new(table_va as usize as *mut u8).ok_or(Errno::EFAULT)?;
        // SAFETY: the table frames are mapped read-write at `table_va..` for the rest of
        // the kernel's life (the slots are never freed) and only this view touches them.
        let table = unsafe { GrantEntries::new(base, nr) };
        events::init()?;
        Ok(PvPlatform {
            domid,
            mmu,
            frames,
            table,
            table_frames,
            refs: RefAllocator::new(nr),
            slots,
        })
    }

    /// The page allocator (for pages not shared through the platform).
    pub fn frames(&mut self) -> &mut PvFrames {
        &mut self.frames
    }

    /// The MMU the platform uses.
    pub fn mmu(&mut self) -> &mut PvMmu {
        &mut self.mmu
    }

    /// This domain's grant entries (e.g. to look at the in-use bits).
    pub fn grant_entries(&self) -> &GrantEntries {
        &self.table
    }

    /// Machine frames of this domain's grant table.
    pub fn grant_table_frames(&self) -> &[u64] {
        &self.table_frames
    }

    /// Foreign-mapping slots in use (grant mappings plus the table itself).
    pub fn slots_in_use(&self) -> usize {
        self.slots.in_use()
    }

    /// Grants `peer` access to machine frame `mfn` of this domain.
    pub fn grant_frame(
        &mut self,
        peer: DomId,
        mfn: Mfn,
        readonly: bool,
    ) -> Result<GrantRef, Errno> {
        let gref = self.refs.alloc().ok_or(Errno::ENOSPC)?;
        if let Err(e) = self.table.publish(gref, peer, mfn.0, readonly) {
            let _ = self.refs.free(gref);
            return Err(e);
        }
        Ok(GrantRef(gref))
    }

    /// The driver-loop wait: [`events::wait_any`].
    pub fn wait_any(&self, ports: &[Port]) -> Result<Port, Errno> {
        events::wait_any(ports)
    }

    /// Maps machine frame `mfn` of *this* domain (e.g. the builder's store or console
    /// page, or a grant-table frame) into a foreign slot, read-write. For frames outside
    /// the start-of-day map.
    pub fn map_own_frame(&mut self, mfn: Mfn) -> Result<SharedPage, Errno> {
        let va = self.slots.alloc()?;
        // SAFETY: `va` is a free foreign slot: it maps nothing Rust relies on.
        if let Err(e) = unsafe { hv::update_va_mapping(va, leaf_entry(mfn, true), UVMF_INVLPG) } {
            let _ = self.slots.free(va);
            return Err(e);
        }
        // SAFETY: the slot maps the frame read-write until `unmap_own_frame`; callers use
        // it only through the ring code's atomic/volatile accesses.
        Ok(unsafe { SharedPage::new(va as usize as *mut u8) })
    }

    /// Undoes [`PvPlatform::map_own_frame`].
    pub fn unmap_own_frame(&mut self, page: SharedPage) -> Result<(), Errno> {
        let va = page.as_ptr() as u64;
        self.slots.index_of(va).ok_or(Errno::EINVAL)?;
        // SAFETY: the page handle is consumed: nothing uses the mapping any more.
        unsafe { hv::update_va_mapping(va, 0, UVMF_INVLPG) }?;
        self.slots.free(va)
    }

    /// dom0: maps domU `info`'s xenstore page (grant ref `info.store_gref`, read-write)
    /// and binds its store port; returns the mapping and dom0's local port.
    pub fn connect_store(&mut self, info: &DomainInfo) -> Result<(MappedGrant, Port), Errno> {
        self.connect_ring(info.domid, info.store_mfn, info.store_gref, info.store_port)
    }

    /// dom0: the same for domU `info`'s console page.
    pub fn connect_console(&mut self, info: &DomainInfo) -> Result<(MappedGrant, Port), Errno> {
        self.connect_ring(
            info.domid,
            info.console_mfn,
            info.console_gref,
            info.console_port,
        )
    }

    fn connect_ring(
        &mut self,
        domid: u16,
        mfn: u64,
        gref: u32,
        port: u32,
    ) -> Result<(MappedGrant, Port), Errno> {
        if mfn == 0 || port == 0 {
            return Err(Errno::ENOENT);
        }
        let dom = DomId(domid);
        let m = self.map_grant(dom, GrantRef(gref), false)?;
        match self.bind_interdomain(dom, port) {
            Ok(local) => Ok((m, local)),
            Err(e) => {
                let _ = self.unmap_grant(m);
                Err(e)
            }
        }
    }

    /// True if one of our allocated grant refs still names machine frame `mfn`.
    fn still_granted(&self, mfn: u64) -> bool {
        (GNTTAB_NR_RESERVED_ENTRIES..self.table.len()).any(|g| {
            self.refs.is_allocated(g)
                && self.table.flags_of(g).is_ok_and(|f| f != 0)
                && self
                    .table
                    .target_of(g)
                    .is_ok_and(|(_, f)| u64::from(f) == mfn)
        })
    }
}

impl Platform for PvPlatform {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn alloc_page(&mut self) -> Result<OwnPage, Errno> {
        let pfn = self.frames.pool_mut().alloc().ok_or(Errno::ENOMEM)?;
        let Some(f) = frame_of_pfn(pfn) else {
            let _ = self.frames.pool_mut().free(pfn);
            return Err(Errno::ENOMEM);
        };
        let p = f.va as usize as *mut u8;
        // SAFETY: a page the pool just handed us, mapped read-write at its start-of-day
        // address; a volatile fill forms no reference.
        unsafe {
            for i in 0..PAGE_SIZE {
                p.add(i).write_volatile(0);
            }
        }
        Ok(OwnPage {
            // SAFETY: ours until `free_page`; shared users go through the ring code.
            page: unsafe { SharedPage::new(p) },
            frame: pfn.0,
        })
    }

    fn free_page(&mut self, page: OwnPage) {
        let pfn = Pfn(page.frame);
        // A page a grant still names must never be reused: keep it out of the pool.
        if let Some(mfn) = mem::p2m_mfn(pfn) {
            if self.still_granted(mfn.0) {
                crate::println!(
                    "platform: page pfn {:#x} freed while still granted: leaked",
                    pfn.0
                );
                return;
            }
        }
        let _ = self.frames.pool_mut().free(pfn);
    }

    fn grant_access(
        &mut self,
        peer: DomId,
        page: &OwnPage,
        readonly: bool,
    ) -> Result<GrantRef, Errno> {
        let mfn = mem::p2m_mfn(Pfn(page.frame)).ok_or(Errno::EINVAL)?;
        self.grant_frame(peer, mfn, readonly)
    }

    fn end_access(&mut self, gref: GrantRef) -> Result<(), Errno> {
        if !self.refs.is_allocated(gref.0) {
            return Err(Errno::EINVAL);
        }
        self.table.revoke(gref.0)?;
        self.refs.free(gref.0)
    }

    fn map_grant(
        &mut self,
        peer: DomId,
        gref: GrantRef,
        readonly: bool,
    ) -> Result<MappedGrant, Errno> {
        let va = self.slots.alloc()?;
        // SAFETY: `va` is a free foreign slot (empty PTE): nothing relies on it.
        match unsafe { hv::gnttab_map(va, peer, gref.0, readonly) } {
            Ok(handle) => Ok(MappedGrant {
                // SAFETY: mapped until `unmap_grant`; accessed through the ring code.
                page: unsafe { SharedPage::new(va as usize as *mut u8) },
                handle,
            }),
            Err(e) => {
                let _ = self.slots.free(va);
                Err(e)
            }
        }
    }

    fn unmap_grant(&mut self, mapped: MappedGrant) -> Result<(), Errno> {
        let va = mapped.page.as_ptr() as u64;
        self.slots.index_of(va).ok_or(Errno::EINVAL)?;
        // SAFETY: the handle is consumed, so nothing uses the page any more.
        unsafe { hv::gnttab_unmap(va, mapped.handle) }?;
        self.slots.free(va)
    }

    fn alloc_unbound(&mut self, remote: DomId) -> Result<Port, Errno> {
        events::alloc_unbound(remote, events::note)
    }

    fn bind_interdomain(&mut self, remote: DomId, remote_port: Port) -> Result<Port, Errno> {
        events::bind_interdomain(remote, remote_port, events::note)
    }

    fn close_port(&mut self, port: Port) -> Result<(), Errno> {
        events::close(port)?;
        events::take_fired(port);
        Ok(())
    }

    fn notify(&mut self, port: Port) -> Result<(), Errno> {
        events::send(port)
    }
}

/// The rendezvous the plumbing scenarios use before xenstore exists: a domU writes the
/// grant ref and port of a ring (and of a data page) into the first 16 bytes of its
/// xenstore page, magic last; dom0, which maps that page, reads them. Everything read is
/// the peer's and untrusted (the hypervisor checks refs and ports); a torn or garbage
/// record is just `None` or a failing map.
pub mod rendezvous {
    use core::sync::atomic::{AtomicU32, Ordering};

    use abi::ring::SharedPage;

    /// `"RNDV"` once the record is complete.
    pub const MAGIC: u32 = 0x5644_4e52;

    /// What a domU publishes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Record {
        /// Grant ref of the ring page (granted to dom0).
        pub ring_gref: u32,
        /// The domU's unbound port for the ring (remote dom0).
        pub ring_port: u32,
        /// Grant ref of a data page dom0 maps and unmaps repeatedly.
        pub data_gref: u32,
    }

    fn word(page: &SharedPage, i: usize) -> &AtomicU32 {
        // SAFETY: i < 4 keeps the word inside the page (4096 bytes, page aligned), which
        // the handle's contract keeps mapped; only atomics touch these bytes.
        unsafe { AtomicU32::from_ptr(page.as_ptr().add(4 * (i % 4)).cast()) }
    }

    /// Publishes `r` (fields first, magic last with release ordering).
    pub fn publish(page: &SharedPage, r: Record) {
        word(page, 1).store(r.ring_gref, Ordering::Relaxed);
        word(page, 2).store(r.ring_port, Ordering::Relaxed);
        word(page, 3).store(r.data_gref, Ordering::Relaxed);
        word(page, 0).store(MAGIC, Ordering::Release);
    }

    /// The record, once the magic is there.
    pub fn read(page: &SharedPage) -> Option<Record> {
        (word(page, 0).load(Ordering::Acquire) == MAGIC).then(|| Record {
            ring_gref: word(page, 1).load(Ordering::Relaxed),
            ring_port: word(page, 2).load(Ordering::Relaxed),
            data_gref: word(page, 3).load(Ordering::Relaxed),
        })
    }

    /// Clears the magic (dom0, once it has read the record).
    pub fn consume(page: &SharedPage) {
        word(page, 0).store(0, Ordering::Release);
    }
}
