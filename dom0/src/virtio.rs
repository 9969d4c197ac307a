//! Target glue between `virtio-drivers` and the PV world (x86_64-unknown-none only): the
//! crate's [`Hal`] implemented over dom0's DMA arena ([`crate::dma`]), the device's BARs
//! mapped uncached through the hypervisor's device-memory (`iomem`) permission, real
//! port I/O for PCI configuration (the crate's `alloc` feature,
//! for indirect descriptor lists, comes from the kernel heap).
//!
//! Everything the device is given is a machine address: arena pages translate by
//! arithmetic, other machine-contiguous buffers through the P2M, and anything else is
//! bounced through arena pages (`share`/`unshare`).

use crate::dma::{contiguous_maddr, find_machine_contiguous, DmaArena, PAGE};
use crate::pci::PortIo;
use core::ptr::NonNull;
use pv_guest_kernel::abi::mm::{pte, UVMF_INVLPG};
use pv_guest_kernel::abi::{Errno, Pfn};
use pv_guest_kernel::hv;
use pv_guest_kernel::mm::pool::{bitmap_words, PagePool};
use pv_guest_kernel::mm::pv::{frame_of_pfn, PvFrames};
use pv_guest_kernel::{mem, rt};
use spin::Mutex;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

extern crate alloc;

/// The DMA arena (set once by [`setup`]).
static ARENA: Mutex<Option<DmaArena<'static>>> = Mutex::new(None);

/// Mapped MMIO regions: (machine address, length, virtual address); length 0 = unused.
static MMIO: Mutex<[(u64, u64, u64); 8]> = Mutex::new([(0, 0, 0); 8]);

/// Live bounce buffers: (arena machine address, pages); pages 0 = unused.
static BOUNCES: Mutex<[(u64, u64); 64]> = Mutex::new([(0, 0); 64]);

/// Real port I/O. In ring 3 with IOPL 0 each access traps; the hypervisor emulates it
/// against the real port for dom0 (and refuses everyone else).
#[derive(Clone, Copy)]
pub struct Ports;

impl PortIo for Ports {
    fn inl(&self, port: u16) -> u32 {
        let v: u32;
        // SAFETY: port input has no memory effects; the hypervisor decides what it reaches.
        unsafe {
            core::arch::asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack))
        };
        v
    }

    fn outl(&self, port: u16, value: u32) {
        // SAFETY: as `inl`; dom0 only writes PCI configuration ports through this.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack))
        };
    }
}

/// Takes `arena_pages` machine-contiguous pages from `frames` for the DMA arena. The
/// crate's `alloc` needs go to the kernel heap ([`pv_guest_kernel::heap`]). Call once.
pub fn setup(frames: &mut PvFrames, arena_pages: u64) -> Result<(), &'static str> {
    let n = arena_pages;
    let pool = frames.pool();
    let (first, len) = (pool.first().0, pool.len());
    let free = |pfn: u64| pool.is_free(Pfn(pfn));
    let (pfn, mfn) = find_machine_contiguous(
        |p| free(p).then(|| mem::p2m_mfn(Pfn(p)).map(|m| m.0)).flatten(),
        first,
        len,
        n,
    )
    .ok_or("no machine-contiguous run of free pages")?;
    for p in pfn..pfn + n {
        if !frames.pool_mut().alloc_specific(Pfn(p)) {
            return Err("arena page already taken");
        }
    }
    let va = frame_of_pfn(Pfn(pfn)).ok_or("arena not mapped")?.va;
    let words = bitmap_words(arena_pages);
    let bits = alloc::vec![0u64; 2 * words].leak();
    let (f, b) = bits.split_at_mut(words);
    let pool = PagePool::new(Pfn(0), arena_pages, f, b).ok_or("arena bitmaps")?;
    let arena = DmaArena::new(va, mfn * PAGE, pool).ok_or("arena alignment")?;
    *ARENA.lock() = Some(arena);
    Ok(())
}

/// Maps the device memory `[maddr, maddr + len)` (a BAR) uncached at fresh virtual
/// addresses: pages are taken from `frames` and their start-of-day mappings repointed at
/// the device's frames (the hypervisor checks the `iomem` permission). Returns the VA of
/// `maddr`.
pub fn map_mmio(frames: &mut PvFrames, maddr: u64, len: u64) -> Result<u64, Errno> {
    let base = maddr & !(PAGE - 1);
    let pages = (maddr - base + len).div_ceil(PAGE);
    let f = frames.alloc_contiguous(pages).ok_or(Errno::ENOMEM)?;
    for i in 0..pages {
        let val = (base + i * PAGE) | pte::P | pte::RW | pte::US | pte::PCD | pte::PWT;
        // SAFETY: the VA belongs to pages just allocated, which nothing else uses; they
        // now show the device instead of RAM.
        unsafe { hv::update_va_mapping(f.va + i * PAGE, val, UVMF_INVLPG)? };
    }
    let mut t = MMIO.lock();
    let slot = t.iter_mut().find(|s| s.1 == 0).ok_or(Errno::ENOSPC)?;
    *slot = (base, pages * PAGE, f.va);
    Ok(f.va + (maddr - base))
}

/// Contiguous DMA pages from the arena: (machine address, virtual address).
pub fn dma_pages(pages: u64) -> Option<(u64, u64)> {
    let (m, v) = ARENA.lock().as_mut()?.alloc(pages)?;
    // SAFETY: freshly allocated arena pages, mapped writable, used by nobody else.
    unsafe { core::ptr::write_bytes(v as *mut u8, 0, (pages * PAGE) as usize) };
    Some((m, v))
}

/// Returns pages from [`dma_pages`].
pub fn free_dma_pages(maddr: u64, pages: u64) -> Result<(), Errno> {
    ARENA
        .lock()
        .as_mut()
        .ok_or(Errno::EINVAL)?
        .free(maddr, pages)
}

/// Free arena pages.
pub fn dma_free_pages() -> u64 {
    ARENA.lock().as_ref().map_or(0, |a| a.nr_free())
}

/// The machine frame behind a start-of-day virtual page.
fn translate(va: u64) -> Option<u64> {
    let si = rt::start_info()?;
    mem::p2m_mfn(mem::va_to_pfn(va, si.nr_pages)?).map(|m| m.0)
}

/// The [`Hal`] for dom0's virtio drivers.
pub struct PvHal;

// SAFETY: dma_alloc returns zeroed, page-aligned arena pages nobody else uses until
// dma_dealloc; mmio_phys_to_virt only returns mappings made by `map_mmio`; share returns
// the machine address of the buffer itself or of a bounce copy.
unsafe impl Hal for PvHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let (m, v) = dma_pages(pages as u64).expect("dom0 DMA arena exhausted");
        (m, NonNull::new(v as *mut u8).expect("arena VA is not null"))
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        match free_dma_pages(paddr, pages as u64) {
            Ok(()) => 0,
            Err(e) => -(e as i32),
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let t = MMIO.lock();
        let va = t
            .iter()
            .find(|&&(m, l, _)| l != 0 && paddr >= m && paddr + size as u64 <= m + l)
            .map(|&(m, _, v)| v + (paddr - m))
            .expect("MMIO region was not mapped by map_mmio");
        NonNull::new(va as *mut u8).expect("MMIO VA is not null")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let (va, len) = (buffer.as_ptr() as *mut u8 as u64, buffer.len() as u64);
        if let Some(m) = ARENA.lock().as_ref().and_then(|a| a.maddr_of(va, len)) {
            return m;
        }
        if let Some(m) = contiguous_maddr(translate, va, len) {
            return m;
        }
        // Not machine-contiguous: bounce.
        let pages = len.div_ceil(PAGE);
        let (m, bva) = dma_pages(pages).expect("dom0 DMA arena exhausted (bounce)");
        if direction != BufferDirection::DeviceToDriver {
            // SAFETY: the caller guarantees `buffer` is valid for reads of `len` bytes;
            // the bounce pages are ours and at least `len` long.
            unsafe {
                core::ptr::copy_nonoverlapping(va as *const u8, bva as *mut u8, len as usize)
            };
        }
        let mut b = BOUNCES.lock();
        let slot = b
            .iter_mut()
            .find(|s| s.1 == 0)
            .expect("too many bounce buffers");
        *slot = (m, pages);
        m
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let mut b = BOUNCES.lock();
        let Some(slot) = b.iter_mut().find(|s| s.1 != 0 && s.0 == paddr) else {
            return; // shared in place
        };
        let (m, pages) = *slot;
        *slot = (0, 0);
        drop(b);
        if direction != BufferDirection::DriverToDevice {
            if let Some(bva) = ARENA.lock().as_ref().and_then(|a| a.va_of(m)) {
                // SAFETY: the caller guarantees `buffer` is valid for writes of its
                // length, which the bounce pages cover (they were sized from it).
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        bva as *const u8,
                        buffer.as_ptr() as *mut u8,
                        buffer.len(),
                    )
                };
            }
        }
        let _ = free_dma_pages(m, pages);
    }
}

/// `EVTCHNOP_bind_pirq`: binds legacy line `pirq` to a new port of ours (dom0 only).
pub fn bind_pirq(pirq: u32) -> Result<u32, Errno> {
    let mut b = pv_guest_kernel::abi::event_channel::EvtchnBindPirq {
        pirq,
        flags: 0,
        port: 0,
    };
    let ptr = &mut b as *mut _ as u64;
    // SAFETY: the hypervisor reads and writes the 12-byte structure at `ptr`, a live
    // exclusive borrow of plain integers.
    let ret = unsafe {
        hv::default_path()
            .event_channel_op_raw(pv_guest_kernel::abi::event_channel::EVTCHNOP_BIND_PIRQ, ptr)
    };
    Errno::from_ret(ret)?;
    // SAFETY: `b` is live; a volatile read sees what the hypervisor wrote.
    Ok(unsafe { core::ptr::read_volatile(&b) }.port)
}

/// `PHYSDEVOP_eoi`: the device was serviced; the hypervisor unmasks the line.
pub fn pirq_eoi(pirq: u32) -> Result<(), Errno> {
    use pv_guest_kernel::abi::physdev::{PhysdevEoi, PHYSDEVOP_EOI};
    let e = PhysdevEoi { irq: pirq };
    // SAFETY: the hypervisor only reads the 4-byte structure at the pointer.
    let ret = unsafe {
        hv::default_path().call(
            pv_guest_kernel::abi::HypercallNr::PhysdevOp as u64,
            [PHYSDEVOP_EOI, &e as *const _ as u64, 0, 0, 0],
        )
    };
    Errno::from_ret(ret).map(|_| ())
}
