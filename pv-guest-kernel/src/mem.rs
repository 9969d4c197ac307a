//! The domain's memory as the builder left it: where it ends, the start-of-day map
//! (pfn N at `GUEST_VIRT_BASE + N * 4096`), the P2M list, and a page-granular bump
//! allocator over the free memory after the start-of-day region.
//!
//! The bump allocator ([`alloc_slice`]) and the page allocator of [`crate::mm::pv`] share
//! that free memory: the page allocator takes what is left with [`take_scratch`] when it
//! is created, after which [`alloc_slice`] returns `None`.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::layout::{GUEST_VIRT_BASE, GUEST_VIRT_MAX_BYTES};
use abi::mm::INVALID_P2M_ENTRY;
use abi::start_info::StartInfo;
use abi::{Mfn, Pfn, PAGE_SIZE};

/// One past the last byte of the domain's mapped memory:
/// `GUEST_VIRT_BASE + nr_pages * 4096` (memory is capped at
/// [`GUEST_VIRT_MAX_BYTES`]; a domain filling all 2 GiB ends at the top of the address
/// space, which wraps to 0).
pub fn memory_end(si: &StartInfo) -> u64 {
    let bytes = si
        .nr_pages
        .saturating_mul(PAGE_SIZE as u64)
        .min(GUEST_VIRT_MAX_BYTES);
    GUEST_VIRT_BASE.wrapping_add(bytes)
}

/// The start-of-day virtual address of `pfn`: `GUEST_VIRT_BASE + pfn * 4096` (wrapping;
/// only meaningful for `pfn < nr_pages`).
pub const fn pfn_to_va(pfn: Pfn) -> u64 {
    GUEST_VIRT_BASE.wrapping_add(pfn.0.wrapping_mul(PAGE_SIZE as u64))
}

/// The pfn whose start-of-day mapping contains `va`, if `va` lies in the start-of-day
/// region of a domain with `nr_pages` pages.
pub fn va_to_pfn(va: u64, nr_pages: u64) -> Option<Pfn> {
    let pfn = va.checked_sub(GUEST_VIRT_BASE)? / PAGE_SIZE as u64;
    (pfn < nr_pages).then_some(Pfn(pfn))
}

/// The address of P2M entry `pfn`, if the runtime has started, `pfn < nr_pages` and the
/// list is usable.
fn p2m_slot(pfn: u64) -> Option<*mut u64> {
    let si = crate::rt::start_info()?;
    if pfn >= si.nr_pages || si.mfn_list == 0 || si.mfn_list % 8 != 0 {
        return None;
    }
    let addr = si.mfn_list.checked_add(pfn.checked_mul(8)?)?;
    Some(addr as *mut u64)
}

/// The machine frame of `pfn` from the P2M list the builder provided, or `None` if
/// `pfn >= nr_pages` or there is no usable list. A ballooned-out pfn reads as
/// `Some(Mfn(INVALID_P2M_ENTRY))`; see [`p2m_mfn`].
pub fn p2m_entry(pfn: u64) -> Option<Mfn> {
    let p = p2m_slot(pfn)?;
    // SAFETY: the start_info registered by `rt::start` describes this domain (its
    // contract): `mfn_list` is the VA of `nr_pages` mapped, readable u64s, and
    // `pfn < nr_pages`. A volatile read forms no reference.
    Some(Mfn(unsafe { p.read_volatile() }))
}

/// [`p2m_entry`], except that a ballooned-out pfn is `None`.
pub fn p2m_mfn(pfn: Pfn) -> Option<Mfn> {
    p2m_entry(pfn.0).filter(|m| m.0 != INVALID_P2M_ENTRY)
}

/// Sets P2M entry `pfn` to `mfn` (`INVALID_P2M_ENTRY` for a ballooned-out pfn). False if
/// there is no such entry. The P2M is the guest's own data: this tells the hypervisor
/// nothing (the M2P is updated with `mmu_update(MMU_MACHPHYS_UPDATE)`).
pub fn set_p2m_entry(pfn: Pfn, mfn: Mfn) -> bool {
    match p2m_slot(pfn.0) {
        Some(p) => {
            // SAFETY: as in `p2m_entry`, and the list is mapped writable (it is ordinary
            // domain memory); this module is its only accessor and forms no references.
            unsafe { p.write_volatile(mfn.0) };
            true
        }
        None => false,
    }
}

static SCRATCH_NEXT: AtomicU64 = AtomicU64::new(0);
static SCRATCH_END: AtomicU64 = AtomicU64::new(0);

/// Hands `[start, end)` (rounded inward to pages) to [`alloc_slice`]. `end == 0` means
/// the top of the address space. Forgets any earlier region.
///
/// # Safety
/// The range must be mapped writable and used by nothing else for the rest of the
/// kernel's life; slices already handed out must not be in use any more.
pub unsafe fn init_scratch(start: u64, end: u64) {
    let page = PAGE_SIZE as u64;
    let end = if end == 0 { u64::MAX } else { end };
    let start = start.checked_next_multiple_of(page).unwrap_or(u64::MAX);
    let end = end - end % page;
    SCRATCH_END.store(end.max(start), Ordering::Relaxed);
    SCRATCH_NEXT.store(start, Ordering::Relaxed);
}

/// Takes up to `max_pages` pages from the start of what is left of the scratch region,
/// for the caller's exclusive use for the rest of the kernel's life; returns the range
/// `[start, end)` (empty when nothing is left).
pub fn take_scratch(max_pages: u64) -> (u64, u64) {
    let end = SCRATCH_END.load(Ordering::Relaxed);
    let max = max_pages.saturating_mul(PAGE_SIZE as u64);
    let mut taken = 0;
    let start = SCRATCH_NEXT
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
            taken = (end - next).min(max);
            Some(next + taken)
        })
        .unwrap_or(end);
    (start, start + taken)
}

/// Bytes left for [`alloc_slice`].
pub fn scratch_left() -> u64 {
    SCRATCH_END.load(Ordering::Relaxed) - SCRATCH_NEXT.load(Ordering::Relaxed)
}

/// Allocates `n` values initialised to `init` in fresh, page-aligned, whole pages of
/// free memory, for the rest of the kernel's life (there is no free). `None` when the
/// memory is exhausted or the runtime has not started.
///
/// # Panics
/// If `T` needs an alignment above the page size.
pub fn alloc_slice<T: Copy>(n: usize, init: T) -> Option<&'static mut [T]> {
    assert!(core::mem::align_of::<T>() <= PAGE_SIZE);
    let bytes = n.checked_mul(core::mem::size_of::<T>())?;
    let len = (bytes.div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE) as u64;
    let end = SCRATCH_END.load(Ordering::Relaxed);
    let start = SCRATCH_NEXT
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
            next.checked_add(len).filter(|&new| new <= end)
        })
        .ok()?;
    let p = start as usize as *mut T;
    for i in 0..n {
        // SAFETY: [start, start + len) was just taken from the scratch region, which
        // `init_scratch`'s contract says is mapped writable and unused; the bump pointer
        // hands each byte out once. `p` is page aligned, hence aligned for `T`, and
        // `i < n` keeps the write inside the allocation.
        unsafe { p.add(i).write(init) };
    }
    // SAFETY: all `n` elements were initialised above; the memory is exclusively ours
    // (see above) for the rest of the kernel's life.
    Some(unsafe { core::slice::from_raw_parts_mut(p, n) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_of_day_conversions() {
        assert_eq!(pfn_to_va(Pfn(3)), GUEST_VIRT_BASE + 0x3000);
        assert_eq!(va_to_pfn(GUEST_VIRT_BASE + 0x3fff, 4), Some(Pfn(3)));
        assert_eq!(va_to_pfn(GUEST_VIRT_BASE + 0x4000, 4), None);
        assert_eq!(va_to_pfn(GUEST_VIRT_BASE - 1, 4), None);
        assert_eq!(va_to_pfn(0x1000, 4), None);
    }

    #[test]
    fn memory_end_arithmetic() {
        let mut si = StartInfo::new();
        si.nr_pages = 256;
        assert_eq!(memory_end(&si), 0xffff_ffff_8010_0000);
        si.nr_pages = 1 << 19; // exactly 2 GiB
        assert_eq!(memory_end(&si), 0);
        si.nr_pages = u64::MAX;
        assert_eq!(memory_end(&si), 0);
    }
}
