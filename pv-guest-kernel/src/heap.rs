//! The kernel heap: `alloc` (`Box`, `Vec`, `BTreeMap`, ...) for PV kernels.
//!
//! A linked-list allocator ([`linked_list_allocator`]) over whole pages taken once from
//! the start-of-day free memory ([`mem::take_scratch`], the region the page allocator
//! [`crate::mm::pv::PvFrames`] takes the rest of). On `x86_64-unknown-none` it is the
//! `#[global_allocator]`, so dom0, the domU kernel and `pv-drivers` code running in them
//! can use `alloc`. It never grows: its size is fixed when it is set up.
//!
//! Setting it up, whichever comes first:
//! - `heap_kib=N` on the kernel's command line: [`rt::start`](crate::rt) calls
//!   [`init_from_cmdline`] before `main`, so the heap is reserved before any page
//!   allocator takes the free memory;
//! - [`init`]`(kib)`, explicitly (e.g. before creating [`crate::mm::pv::PvFrames`]);
//! - lazily, on the first allocation: [`DEFAULT_HEAP_KIB`] (or what is left, if less).
//!
//! Running out of heap is a panic naming the request and the heap's use (the runtime's
//! panic handler prints it and crashes the domain): kernels size the heap instead of
//! handling allocation failure. Allocation masks upcalls while it holds the heap's lock,
//! so an event handler may allocate without deadlocking against the code it interrupted.

use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, Ordering};

use abi::PAGE_SIZE;

use crate::mem;

/// Heap size when nothing else was asked for (1 MiB).
pub const DEFAULT_HEAP_KIB: u64 = 1024;

/// Why the heap could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeapError {
    /// It already exists (its size cannot change).
    AlreadyInitialised,
    /// Size 0 asked for, or no free memory left to take.
    NoMemory,
}

/// How the heap is used, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes the heap manages (0: not set up).
    pub size: usize,
    /// Bytes allocated now.
    pub used: usize,
}

const UNINIT: u8 = 0;
const BUSY: u8 = 1;
const READY: u8 = 2;

/// A heap over one region, set up at most once. Portable: the host tests use it over a
/// leaked buffer; the kernel has one global instance over start-of-day memory.
pub struct KernelHeap {
    state: AtomicU8,
    heap: linked_list_allocator::LockedHeap,
}

impl Default for KernelHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl KernelHeap {
    /// A heap that manages nothing yet.
    pub const fn new() -> KernelHeap {
        KernelHeap {
            state: AtomicU8::new(UNINIT),
            heap: linked_list_allocator::LockedHeap::empty(),
        }
    }

    /// True once a region was given to it.
    pub fn is_ready(&self) -> bool {
        self.state.load(Ordering::Acquire) == READY
    }

    /// Gives the heap `[start, start + len)`.
    ///
    /// # Safety
    /// The range must be mapped writable, exclusively for this heap, for the rest of the
    /// program's life.
    pub unsafe fn init_region(&self, start: *mut u8, len: usize) -> Result<(), HeapError> {
        if len == 0 || start.is_null() {
            return Err(HeapError::NoMemory);
        }
        self.state
            .compare_exchange(UNINIT, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| HeapError::AlreadyInitialised)?;
        // SAFETY: the region is exclusively the heap's (this function's contract), and
        // the state machine above lets exactly one caller initialise it.
        unsafe { self.heap.lock().init(start, len) };
        self.state.store(READY, Ordering::Release);
        Ok(())
    }

    /// Allocates; `None` if the heap is not set up or has no room.
    pub fn try_alloc(&self, layout: Layout) -> Option<NonNull<u8>> {
        if !self.is_ready() {
            return None;
        }
        crate::events::without_irqs(|| self.heap.lock().allocate_first_fit(layout).ok())
    }

    /// Frees what [`KernelHeap::try_alloc`] returned.
    ///
    /// # Safety
    /// `ptr` came from this heap's `try_alloc` with the same `layout` and is not used
    /// afterwards.
    pub unsafe fn free(&self, ptr: NonNull<u8>, layout: Layout) {
        crate::events::without_irqs(|| {
            // SAFETY: forwarded from this function's contract.
            unsafe { self.heap.lock().deallocate(ptr, layout) }
        })
    }

    /// Size and use.
    pub fn stats(&self) -> HeapStats {
        if !self.is_ready() {
            return HeapStats::default();
        }
        crate::events::without_irqs(|| {
            let h = self.heap.lock();
            HeapStats {
                size: h.size(),
                used: h.used(),
            }
        })
    }

    /// Takes `kib` KiB (rounded up to pages; less if less is left) from the start-of-day
    /// free memory and gives them to this heap. Returns the heap's size in bytes.
    pub fn init_from_scratch(&self, kib: u64) -> Result<usize, HeapError> {
        if self.state.load(Ordering::Acquire) != UNINIT {
            return Err(HeapError::AlreadyInitialised);
        }
        let pages = pages_for_kib(kib);
        if pages == 0 {
            return Err(HeapError::NoMemory);
        }
        let (start, end) = mem::take_scratch(pages);
        if end <= start {
            return Err(HeapError::NoMemory);
        }
        let len = (end - start) as usize;
        // SAFETY: `take_scratch` hands the range out once, for the rest of the kernel's
        // life; `init_scratch`'s contract says it is mapped writable and unused.
        unsafe { self.init_region(start as usize as *mut u8, len) }?;
        Ok(len)
    }
}

/// Pages that hold `kib` KiB.
pub const fn pages_for_kib(kib: u64) -> u64 {
    kib.saturating_mul(1024).div_ceil(PAGE_SIZE as u64)
}

/// The kernel's heap (the global allocator on bare metal).
static HEAP: KernelHeap = KernelHeap::new();

/// Sets up the kernel heap with `kib` KiB of start-of-day free memory (see the module
/// docs). Returns its size in bytes.
pub fn init(kib: u64) -> Result<usize, HeapError> {
    HEAP.init_from_scratch(kib)
}

/// `heap_kib=N` on the command line: [`init`]`(N)`; without it, nothing (the heap is then
/// set up lazily). A bad value or a failure is printed, not fatal.
pub fn init_from_cmdline(cmdline: &crate::cmdline::Cmdline<'_>) {
    match cmdline.get_u64("heap_kib") {
        Ok(None) => {}
        Ok(Some(kib)) => {
            if let Err(e) = init(kib) {
                crate::println!("heap: heap_kib={kib}: {e:?}");
            }
        }
        Err(e) => crate::println!("heap: {e}"),
    }
}

/// Size and use of the kernel heap.
pub fn stats() -> HeapStats {
    HEAP.stats()
}

/// The global allocator: [`HEAP`], set up lazily with [`DEFAULT_HEAP_KIB`].
#[cfg(target_os = "none")]
struct GlobalHeap;

#[cfg(target_os = "none")]
#[global_allocator]
static GLOBAL: GlobalHeap = GlobalHeap;

#[cfg(target_os = "none")]
// SAFETY: blocks come from `KernelHeap`, which hands each byte out once and aligns as
// asked (linked_list_allocator); `dealloc` returns them with the same layout.
unsafe impl core::alloc::GlobalAlloc for GlobalHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !HEAP.is_ready() {
            // Lazy set-up; losing a race with another initialiser is fine.
            let _ = HEAP.init_from_scratch(DEFAULT_HEAP_KIB);
        }
        match HEAP.try_alloc(layout) {
            Some(p) => p.as_ptr(),
            None => {
                let s = HEAP.stats();
                panic!(
                    "heap: out of memory: {} bytes (align {}) requested, {} of {} bytes in \
                     use (size it with heap_kib=)",
                    layout.size(),
                    layout.align(),
                    s.used,
                    s.size
                );
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `GlobalAlloc::dealloc`'s contract: `ptr` came from `alloc` above
            // with this layout.
            unsafe { HEAP.free(p, layout) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Region([u8; 16384]);

    fn heap() -> &'static KernelHeap {
        let h: &'static KernelHeap = Box::leak(Box::new(KernelHeap::new()));
        let r: &'static mut Region = Box::leak(Box::new(Region([0; 16384])));
        // SAFETY: a leaked buffer nothing else references.
        unsafe { h.init_region(r.0.as_mut_ptr(), r.0.len()) }.unwrap();
        h
    }

    #[test]
    fn allocates_frees_and_counts() {
        let h = heap();
        assert_eq!(h.stats().size, 16384);
        let l = Layout::from_size_align(1000, 64).unwrap();
        let a = h.try_alloc(l).unwrap();
        assert_eq!(a.as_ptr() as usize % 64, 0);
        let b = h.try_alloc(l).unwrap();
        assert_ne!(a, b);
        assert!(h.stats().used >= 2000);
        // SAFETY: both from this heap with `l`.
        unsafe {
            h.free(a, l);
            h.free(b, l);
        }
        assert_eq!(h.stats().used, 0);
    }

    #[test]
    fn runs_out_instead_of_overrunning() {
        let h = heap();
        let big = Layout::from_size_align(16385, 8).unwrap();
        assert!(h.try_alloc(big).is_none());
        let l = Layout::from_size_align(4096, 8).unwrap();
        let mut got = vec![];
        while let Some(p) = h.try_alloc(l) {
            got.push(p);
            assert!(got.len() <= 4, "more than the region holds");
        }
        assert!(!got.is_empty());
        // SAFETY: from this heap with `l`.
        unsafe { h.free(got.pop().unwrap(), l) };
        assert!(h.try_alloc(l).is_some(), "freed memory is reused");
    }

    #[test]
    fn set_up_once() {
        let h = heap();
        let mut other = [0u8; 64];
        // SAFETY: refused before the region is touched.
        let r = unsafe { h.init_region(other.as_mut_ptr(), other.len()) };
        assert_eq!(r, Err(HeapError::AlreadyInitialised));
        let fresh = KernelHeap::new();
        assert_eq!(fresh.stats(), HeapStats::default());
        assert!(fresh.try_alloc(Layout::new::<u64>()).is_none());
        // SAFETY: refused (empty).
        let r = unsafe { fresh.init_region(other.as_mut_ptr(), 0) };
        assert_eq!(r, Err(HeapError::NoMemory));
    }

    #[test]
    fn kib_to_pages() {
        assert_eq!(pages_for_kib(0), 0);
        assert_eq!(pages_for_kib(1), 1);
        assert_eq!(pages_for_kib(4), 1);
        assert_eq!(pages_for_kib(5), 2);
        assert_eq!(pages_for_kib(DEFAULT_HEAP_KIB), 256);
        assert_eq!(pages_for_kib(u64::MAX), u64::MAX / 4096 + 1);
    }
}
