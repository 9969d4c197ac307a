//! The PV platform: the M2P, [`PvPhys`] (tables read through the start-of-day map),
//! [`PvMmu`] (page-table operations as hypercalls) and [`PvFrames`] (the page allocator
//! over free pfns, with ballooning).
//!
//! Converting a machine frame to something the kernel can read: `M2P[mfn]` gives the pfn,
//! the P2M must map that pfn back to the same mfn (otherwise the frame is not ours), and
//! the pfn's start-of-day mapping is at [`mem::pfn_to_va`]. Every bootstrap page table
//! and every frame the allocator hands out are inside the start-of-day map, and it lives
//! in the kernel's L4 slot, which every [`crate::mm::AddressSpace`] shares, so this
//! works in whichever address space is current.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::mm::{
    MachphysMapping, MmuUpdate, INVALID_M2P_ENTRY, INVALID_P2M_ENTRY, MMU_BATCH_MAX, UVMF_INVLPG,
};
use abi::start_info::StartInfo;
use abi::{Errno, Mfn, Pfn, PAGE_SIZE};

use super::pool::{bitmap_words, PagePool};
use super::pt::{self, Level};
use super::{BatchError, Frame, FrameSource, Mmu, PhysMap};
use crate::{hv, mem};

static M2P_START: AtomicU64 = AtomicU64::new(0);
/// Entries of the M2P readable at `M2P_START` (0: not queried yet or unavailable).
static M2P_ENTRIES: AtomicU64 = AtomicU64::new(0);

/// `XENMEM_MACHPHYS_MAPPING`, remembered for [`m2p`] (queried once).
pub fn machphys() -> Result<MachphysMapping, Errno> {
    let m = hv::machphys_mapping()?;
    let by_size = m.v_end.saturating_sub(m.v_start) / 8;
    let entries = by_size.min(m.max_mfn.saturating_add(1));
    M2P_START.store(m.v_start, Ordering::Relaxed);
    M2P_ENTRIES.store(entries, Ordering::Relaxed);
    Ok(m)
}

/// Tells [`m2p`] where the M2P is without asking the hypervisor: the native platform
/// builds its own M2P (bare hardware), or finds the hypervisor's at the ABI's fixed
/// address (trapped mode, which makes no hypercalls).
pub fn set_m2p_window(start: u64, entries: u64) {
    M2P_START.store(start, Ordering::Relaxed);
    M2P_ENTRIES.store(entries, Ordering::Relaxed);
}

/// Forgets what [`machphys`] remembered (host runs: each fake has its own M2P).
#[cfg(not(target_os = "none"))]
pub(crate) fn forget_machphys() {
    M2P_START.store(0, Ordering::Relaxed);
    M2P_ENTRIES.store(0, Ordering::Relaxed);
}

/// Number of machine frames the M2P covers (0 if it is unavailable).
pub fn m2p_len() -> u64 {
    if M2P_ENTRIES.load(Ordering::Relaxed) == 0 {
        let _ = machphys();
    }
    M2P_ENTRIES.load(Ordering::Relaxed)
}

/// `M2P[mfn]`, the raw value (may be [`INVALID_M2P_ENTRY`] or another domain's pfn);
/// `None` if `mfn` is beyond the table or the M2P is unavailable.
pub fn m2p(mfn: Mfn) -> Option<u64> {
    if mfn.0 >= m2p_len() {
        return None;
    }
    let addr = M2P_START.load(Ordering::Relaxed) + mfn.0 * 8;
    // SAFETY: the hypervisor maps the M2P read-only in every address space for
    // `[v_start, v_end)`, and `mfn` is below both the entries that range holds and
    // `max_mfn + 1` (see `machphys`). Volatile: the hypervisor updates it.
    Some(unsafe { (addr as *const u64).read_volatile() })
}

/// The pfn of `mfn` if it is this domain's: the M2P names a pfn below `nr_pages` whose
/// P2M entry is `mfn`.
pub fn mfn_to_pfn(mfn: Mfn) -> Option<Pfn> {
    let pfn = m2p(mfn).filter(|&p| p != INVALID_M2P_ENTRY)?;
    (mem::p2m_mfn(Pfn(pfn)) == Some(mfn)).then_some(Pfn(pfn))
}

/// The frame behind pfn `pfn` (`None` if out of range or ballooned out).
pub fn frame_of_pfn(pfn: Pfn) -> Option<Frame> {
    let mfn = mem::p2m_mfn(pfn)?;
    Some(Frame {
        pfn,
        mfn,
        va: mem::pfn_to_va(pfn),
    })
}

/// Reads this domain's frames through the M2P and the start-of-day map.
#[derive(Clone, Copy, Debug, Default)]
pub struct PvPhys;

// SAFETY: `frame_of` only returns frames whose M2P and P2M entries agree, i.e. frames of
// this domain, at their start-of-day VA, which the builder maps (read-only for page
// tables, read-write otherwise) for the domain's whole life; the kernel only unmaps
// start-of-day pages it gave back (ballooning), whose P2M entries are invalid first.
unsafe impl PhysMap for PvPhys {
    fn frame_of(&self, mfn: Mfn) -> Option<Frame> {
        frame_of_pfn(mfn_to_pfn(mfn)?)
    }
}

/// Page-table operations as hypercalls on the default path.
///
/// Batches of entry writes become one `mmu_update` per [`MMU_BATCH_MAX`] entries; leaf
/// changes by virtual address are `update_va_mapping` with `UVMF_INVLPG`; pins, unpins,
/// base-pointer switches and flushes are `mmuext_op`. It tracks the current base pointer
/// (the bootstrap L4 at first), so every switch must go through it.
#[derive(Debug)]
pub struct PvMmu {
    base: Mfn,
}

impl PvMmu {
    /// The MMU of a kernel still on its bootstrap tables: the base is the L4 at
    /// `si.pt_base`. `None` if `pt_base` is not in the start-of-day map.
    pub fn new(si: &StartInfo) -> Option<PvMmu> {
        Some(PvMmu { base: boot_l4(si)? })
    }

    /// Where the L1 entry for `va` lives in the current address space.
    pub fn leaf(&self, va: u64) -> Option<super::Leaf> {
        super::walk(&PvPhys, self.base, va)
    }
}

/// The machine frame of the bootstrap L4 (`start_info.pt_base`).
pub fn boot_l4(si: &StartInfo) -> Option<Mfn> {
    mem::p2m_mfn(mem::va_to_pfn(si.pt_base, si.nr_pages)?)
}

impl Mmu for PvMmu {
    unsafe fn set_ptes(&mut self, updates: &[MmuUpdate]) -> Result<(), BatchError> {
        let mut done = 0;
        for chunk in updates.chunks(MMU_BATCH_MAX as usize) {
            // SAFETY: forwarded from this function's contract.
            unsafe { hv::mmu_update(chunk) }.map_err(|e| BatchError {
                done: done + e.done,
                err: e.err,
            })?;
            done += chunk.len();
        }
        Ok(())
    }

    unsafe fn set_va_pte(&mut self, va: u64, val: u64) -> Result<(), Errno> {
        // SAFETY: forwarded from this function's contract.
        unsafe { hv::update_va_mapping(va, val, UVMF_INVLPG) }
    }

    fn va_pte(&self, va: u64) -> Option<u64> {
        self.leaf(va).map(|l| l.pte)
    }

    fn pin(&mut self, level: Level, mfn: Mfn) -> Result<(), Errno> {
        hv::pin_table(level, mfn)
    }

    fn unpin(&mut self, mfn: Mfn) -> Result<(), Errno> {
        hv::unpin_table(mfn)
    }

    unsafe fn new_baseptr(&mut self, mfn: Mfn) -> Result<(), Errno> {
        // SAFETY: forwarded from this function's contract.
        unsafe { hv::new_baseptr(mfn) }?;
        self.base = mfn;
        Ok(())
    }

    fn base(&self) -> Mfn {
        self.base
    }

    fn flush_tlb(&mut self) -> Result<(), Errno> {
        hv::tlb_flush_local()
    }

    fn invlpg(&mut self, va: u64) -> Result<(), Errno> {
        hv::invlpg_local(va)
    }
}

/// Extents per reservation hypercall in [`PvFrames::balloon_out`] / `balloon_in`.
const BALLOON_CHUNK: usize = 64;

/// The page allocator of a PV kernel: every free pfn after the start-of-day region (what
/// is left of [`mem::alloc_slice`]'s scratch region when it is created).
pub struct PvFrames {
    pool: PagePool<'static>,
}

impl PvFrames {
    /// Takes the rest of the scratch region (its bitmaps come from the front of it).
    /// `None` if the region is not in the start-of-day map (e.g. on the host) or empty.
    /// Create it once: a second one finds nothing left.
    pub fn from_start_info(si: &StartInfo) -> Option<PvFrames> {
        // Nothing is taken unless the free region is in the start-of-day map.
        mem::va_to_pfn(si.first_free_va, si.nr_pages)?;
        let left = mem::scratch_left() / PAGE_SIZE as u64;
        let words = bitmap_words(left);
        let free = mem::alloc_slice(words, 0u64)?;
        let ballooned = mem::alloc_slice(words, 0u64)?;
        let (start, end) = mem::take_scratch(u64::MAX);
        let first = mem::va_to_pfn(start, si.nr_pages)?;
        if start % PAGE_SIZE as u64 != 0 || end <= start {
            return None;
        }
        let len = (end - start) / PAGE_SIZE as u64;
        mem::va_to_pfn(end - 1, si.nr_pages)?;
        Some(PvFrames {
            pool: PagePool::new(first, len, free, ballooned)?,
        })
    }

    /// The bookkeeping.
    pub fn pool(&self) -> &PagePool<'static> {
        &self.pool
    }

    /// The bookkeeping, for direct use (e.g. `alloc_contiguous`).
    pub fn pool_mut(&mut self) -> &mut PagePool<'static> {
        &mut self.pool
    }

    /// Allocates `n` pages with consecutive pfns (hence consecutive start-of-day VAs);
    /// returns the first frame.
    pub fn alloc_contiguous(&mut self, n: u64) -> Option<Frame> {
        let first = self.pool.alloc_contiguous(n)?;
        frame_of_pfn(first)
    }

    /// Gives the allocated pages `pfns` back to the hypervisor, in order: each is
    /// unmapped from the start-of-day map, the frames are released with
    /// `decrease_reservation`, their P2M entries become [`INVALID_P2M_ENTRY`] and the
    /// pool marks them ballooned. Returns how many were given back (the first ones of
    /// `pfns`); the hypervisor stops at the first frame still in use, which is mapped
    /// back, as are those after it, and stays allocated. `Err` only if the very first
    /// page was refused (or a pfn is not an allocated page of the pool: `EINVAL`).
    ///
    /// # Safety
    /// Nothing may use the pages any more: their start-of-day mappings disappear.
    pub unsafe fn balloon_out(&mut self, mmu: &mut impl Mmu, pfns: &[Pfn]) -> Result<usize, Errno> {
        let mut total = 0;
        for chunk in pfns.chunks(BALLOON_CHUNK) {
            let mut mfns = [0u64; BALLOON_CHUNK];
            let mut unmapped = 0;
            let mut failure = None;
            for (i, &pfn) in chunk.iter().enumerate() {
                let allocated = self.pool.contains(pfn)
                    && !self.pool.is_free(pfn)
                    && !self.pool.is_ballooned(pfn);
                let Some(f) = frame_of_pfn(pfn).filter(|_| allocated) else {
                    failure = Some(Errno::EINVAL);
                    break;
                };
                // SAFETY: the caller gave the page up (this function's contract).
                if let Err(e) = unsafe { mmu.set_va_pte(f.va, 0) } {
                    failure = Some(e);
                    break;
                }
                mfns[i] = f.mfn.0;
                unmapped += 1;
            }
            let released = match unmapped {
                0 => 0,
                _ => match hv::decrease_reservation(&mfns[..unmapped]) {
                    Ok(n) => n.min(unmapped),
                    Err(e) => {
                        failure = Some(e);
                        0
                    }
                },
            };
            for (i, &pfn) in chunk[..unmapped].iter().enumerate() {
                if i < released {
                    mem::set_p2m_entry(pfn, Mfn(INVALID_P2M_ENTRY));
                    let marked = self.pool.mark_ballooned(pfn);
                    debug_assert!(marked.is_ok());
                } else {
                    // Still ours: map it back where it was.
                    // SAFETY: the VA was unmapped above and nothing uses it.
                    let _ = unsafe {
                        mmu.set_va_pte(mem::pfn_to_va(pfn), pt::leaf_entry(Mfn(mfns[i]), true))
                    };
                }
            }
            total += released;
            if released < chunk.len() {
                if total == 0 {
                    return Err(failure.unwrap_or(Errno::EBUSY));
                }
                return Ok(total);
            }
        }
        Ok(total)
    }

    /// Populates up to `out.len()` ballooned-out pfns again: new frames from
    /// `increase_reservation`, the P2M, the M2P (one `mmu_update` of
    /// `MMU_MACHPHYS_UPDATE`s) and a writable start-of-day mapping for each. The pfns
    /// land in `out[..n]`, allocated (use them, then free them to the pool). `Ok(0)` if
    /// nothing is ballooned out; `ENOMEM` if the hypervisor gave nothing.
    pub fn balloon_in(&mut self, mmu: &mut impl Mmu, out: &mut [Pfn]) -> Result<usize, Errno> {
        let mut total = 0;
        while total < out.len() {
            let mut pfns = [Pfn(0); BALLOON_CHUNK];
            let mut n = 0;
            while n < BALLOON_CHUNK && total + n < out.len() {
                match self.pool.take_ballooned() {
                    Some(p) => {
                        pfns[n] = p;
                        n += 1;
                    }
                    None => break,
                }
            }
            if n == 0 {
                break;
            }
            let mut mfns = [0u64; BALLOON_CHUNK];
            let got = match hv::increase_reservation(&mut mfns[..n]) {
                Ok(got) => got.min(n),
                Err(e) => {
                    self.reballoon(&pfns[..n]);
                    return if total == 0 { Err(e) } else { Ok(total) };
                }
            };
            self.reballoon(&pfns[got..n]);
            let mut m2p = [MmuUpdate::default(); BALLOON_CHUNK];
            for i in 0..got {
                mem::set_p2m_entry(pfns[i], Mfn(mfns[i]));
                m2p[i] = hv::machphys_update(Mfn(mfns[i]), pfns[i].0);
            }
            // SAFETY: M2P updates change no mapping.
            unsafe { hv::mmu_update(&m2p[..got]) }.map_err(|e| e.err)?;
            for i in 0..got {
                let va = mem::pfn_to_va(pfns[i]);
                // SAFETY: the VA was unmapped (ballooned out); nothing uses it.
                unsafe { mmu.set_va_pte(va, pt::leaf_entry(Mfn(mfns[i]), true)) }?;
                out[total + i] = pfns[i];
            }
            total += got;
            if got < n {
                break;
            }
        }
        Ok(total)
    }

    fn reballoon(&mut self, pfns: &[Pfn]) {
        for &p in pfns {
            let r = self.pool.mark_ballooned(p);
            debug_assert!(r.is_ok());
        }
    }
}

// SAFETY: as for `PvPhys`, to which it delegates.
unsafe impl PhysMap for PvFrames {
    fn frame_of(&self, mfn: Mfn) -> Option<Frame> {
        PvPhys.frame_of(mfn)
    }
}

// SAFETY: the pool hands each free pfn of the scratch region out once; that region was
// taken for this allocator's exclusive use and is mapped writable at start of day. Frames
// given back must be writable again (the trait's contract for `free_frame`).
unsafe impl FrameSource for PvFrames {
    fn alloc_frame(&mut self) -> Option<Frame> {
        let pfn = self.pool.alloc()?;
        match frame_of_pfn(pfn) {
            Some(f) => Some(f),
            None => {
                let _ = self.pool.free(pfn);
                None
            }
        }
    }

    fn free_frame(&mut self, frame: Frame) {
        let r = self.pool.free(frame.pfn);
        debug_assert!(r.is_ok(), "free of {:?}: {r:?}", frame.pfn);
    }
}
