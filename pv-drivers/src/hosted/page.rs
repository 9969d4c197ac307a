//! Host memory standing in for guest frames.
//!
//! A [`SharedPage`] is only an address and may be held by "another domain" (thread)
//! after the owner frees the page, exactly as a buggy or hostile peer could keep using
//! a frame. So hosted pages are never returned to the allocator: they are leaked once
//! (`'static`) and recycled through a free list, zeroed on reuse. A stale handle then
//! reads or writes a live page of the pool (the hosted grant table is what refuses the
//! misuse), never freed memory.

use std::sync::Mutex;
use std::vec::Vec;

use abi::ring::SharedPage;
use abi::PAGE_SIZE;
use core::cell::UnsafeCell;

/// One 4 KiB, 4 KiB-aligned page of host memory, accessed only through volatile and
/// atomic operations (by the ring code) once handed out.
#[repr(C, align(4096))]
pub struct HostPage(UnsafeCell<[u8; PAGE_SIZE]>);

// SAFETY: the contents are only ever accessed through raw pointers with volatile or
// atomic operations (ring code, `zero`), which is what concurrent sharing needs.
#[allow(unsafe_code)]
unsafe impl Sync for HostPage {}

impl core::fmt::Debug for HostPage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HostPage({:p})", self.ptr())
    }
}

static FREE: Mutex<Vec<&'static HostPage>> = Mutex::new(Vec::new());

impl HostPage {
    /// A zeroed page, from the free list or freshly leaked.
    pub fn alloc() -> &'static HostPage {
        let recycled = FREE.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match recycled {
            Some(p) => {
                p.zero();
                p
            }
            None => Box::leak(Box::new(HostPage(UnsafeCell::new([0; PAGE_SIZE])))),
        }
    }

    /// Returns a page to the free list. Stale handles may still touch it (see the module
    /// docs): that is safe, merely wrong, as with real frames.
    pub fn free(page: &'static HostPage) {
        FREE.lock().unwrap_or_else(|e| e.into_inner()).push(page);
    }

    /// The page's address.
    pub fn ptr(&self) -> *mut u8 {
        self.0.get().cast()
    }

    /// A ring handle to the page.
    pub fn shared(&'static self) -> SharedPage {
        // SAFETY: the page is `'static` (never deallocated: module docs), 4096-aligned,
        // and its contents are never accessed through Rust references, only through
        // ring handles and `zero`'s volatile writes.
        #[allow(unsafe_code)]
        unsafe {
            SharedPage::new(self.ptr())
        }
    }

    fn zero(&self) {
        for i in 0..PAGE_SIZE / 8 {
            // SAFETY: in bounds of the page, 8-aligned; volatile (other handles may
            // exist, see the module docs).
            #[allow(unsafe_code)]
            unsafe {
                self.ptr().cast::<u64>().add(i).write_volatile(0)
            };
        }
    }
}
