//! The shared-info page from the guest's side: atomic access to the fields both the
//! hypervisor and this kernel write (vCPU 0's upcall flags and pending selector, the
//! event-channel bitmaps, `cr2`, time and the wall clock). Layout: [`abi::shared_info`].
//!
//! No Rust reference to the page (or to a [`SharedInfo`]) is ever formed: every field
//! is reached through a raw pointer and read or written as an atomic, or, for the
//! seqlock-protected time records, with volatile reads checked against the version.
//!
//! Why that is sound on this hypervisor: there is one CPU, and the hypervisor writes the
//! page only while the guest is stopped (on a hypercall, an exception or an interrupt),
//! so its plain stores never overlap an access of ours; to the guest they look like
//! stores by another thread that happened between two of its instructions.

use core::mem::offset_of;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, Ordering};

use abi::shared_info::{SharedInfo, VcpuInfo, VcpuTimeInfo};

/// Words of the 2-level pending and mask bitmaps (64 ports each).
pub const EVTCHN_WORDS: usize = 64;

/// A handle on a mapped shared-info page (copyable; the page lives for the whole boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedPage {
    base: NonNull<SharedInfo>,
}

/// The time fields of a [`VcpuTimeInfo`] read consistently (seqlock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeSnapshot {
    /// The version the fields were read under (even).
    pub version: u32,
    /// TSC at the hypervisor's last update.
    pub tsc_timestamp: u64,
    /// System time (ns since boot) at `tsc_timestamp`.
    pub system_time: u64,
    /// pvclock multiplier.
    pub tsc_to_system_mul: u32,
    /// pvclock shift.
    pub tsc_shift: i8,
}

/// The wall clock at system time 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallBase {
    /// Seconds since the Unix epoch (`wc_sec_hi << 32 | wc_sec`).
    pub secs: u64,
    /// Nanoseconds.
    pub nanos: u32,
}

const VCPU0: usize = offset_of!(SharedInfo, vcpu_info);
const TIME: usize = VCPU0 + offset_of!(VcpuInfo, time);

impl SharedPage {
    /// A handle on the page at `ptr`.
    ///
    /// # Safety
    /// `ptr` must be null (then `None`) or point to this domain's shared-info page (or a
    /// page standing in for it), mapped readable and writable, page aligned, for the rest
    /// of the kernel's life, and no Rust reference may cover it.
    pub unsafe fn new(ptr: *mut SharedInfo) -> Option<SharedPage> {
        let base = NonNull::new(ptr)?;
        (base.as_ptr() as usize)
            .is_multiple_of(abi::PAGE_SIZE)
            .then_some(SharedPage { base })
    }

    /// The page the builder mapped for this domain (`start_info.shared_info_va`); `None`
    /// before the runtime started or if the address is unusable.
    pub fn get() -> Option<SharedPage> {
        let si = crate::rt::start_info()?;
        let va = si.shared_info_va;
        if !abi::layout::is_canonical(va) || abi::layout::is_hypervisor_va(va) {
            return None;
        }
        // SAFETY: the start_info contract of `rt::start`: the builder mapped this
        // domain's shared-info page read-write at `shared_info_va` for the domain's
        // life (on the host: a leaked page of the fake), and the runtime never forms a
        // reference to it.
        unsafe { SharedPage::new(va as *mut SharedInfo) }
    }

    /// The page's address.
    pub fn as_ptr(self) -> *mut SharedInfo {
        self.base.as_ptr()
    }

    fn at(self, offset: usize) -> *mut u8 {
        debug_assert!(offset < abi::PAGE_SIZE);
        // SAFETY: offsets are field offsets inside the (one-page) structure.
        unsafe { self.base.as_ptr().cast::<u8>().add(offset) }
    }

    fn byte(self, offset: usize) -> &'static AtomicU8 {
        // SAFETY: `at` is inside the page, which stays mapped for the kernel's life
        // (`new`'s contract); every access to it is atomic or, for the hypervisor, never
        // concurrent with ours (module docs). AtomicU8 needs no alignment.
        unsafe { AtomicU8::from_ptr(self.at(offset)) }
    }

    fn word(self, offset: usize) -> &'static AtomicU64 {
        debug_assert!(offset.is_multiple_of(8));
        // SAFETY: as in `byte`; the page is page aligned and `offset` a multiple of 8,
        // so the pointer is aligned for AtomicU64.
        unsafe { AtomicU64::from_ptr(self.at(offset).cast::<u64>()) }
    }

    fn word32(self, offset: usize) -> &'static AtomicU32 {
        debug_assert!(offset.is_multiple_of(4));
        // SAFETY: as in `word`, 4-byte aligned.
        unsafe { AtomicU32::from_ptr(self.at(offset).cast::<u32>()) }
    }

    /// vCPU 0's `evtchn_upcall_pending`: set by the hypervisor, cleared by the guest.
    pub fn upcall_pending(self) -> &'static AtomicU8 {
        self.byte(VCPU0 + offset_of!(VcpuInfo, evtchn_upcall_pending))
    }

    /// vCPU 0's `evtchn_upcall_mask`: the virtual interrupt flag (non-zero: masked).
    pub fn upcall_mask(self) -> &'static AtomicU8 {
        self.byte(VCPU0 + offset_of!(VcpuInfo, evtchn_upcall_mask))
    }

    /// vCPU 0's `evtchn_pending_sel`: one bit per pending word.
    pub fn pending_sel(self) -> &'static AtomicU64 {
        self.word(VCPU0 + offset_of!(VcpuInfo, evtchn_pending_sel))
    }

    /// vCPU 0's `cr2`: the address of the last page fault bounced to the guest.
    pub fn cr2(self) -> u64 {
        self.word(VCPU0 + offset_of!(VcpuInfo, cr2))
            .load(Ordering::Relaxed)
    }

    /// Word `word` (< [`EVTCHN_WORDS`]) of `evtchn_pending`.
    ///
    /// # Panics
    /// If `word` is out of range.
    pub fn evtchn_pending(self, word: usize) -> &'static AtomicU64 {
        assert!(word < EVTCHN_WORDS);
        self.word(offset_of!(SharedInfo, evtchn_pending) + 8 * word)
    }

    /// Word `word` (< [`EVTCHN_WORDS`]) of `evtchn_mask`.
    ///
    /// # Panics
    /// If `word` is out of range.
    pub fn evtchn_mask(self, word: usize) -> &'static AtomicU64 {
        assert!(word < EVTCHN_WORDS);
        self.word(offset_of!(SharedInfo, evtchn_mask) + 8 * word)
    }

    /// vCPU 0's time record, read consistently: retried while the version is odd (an
    /// update in progress) or changed during the read (the hypervisor refreshed it, e.g.
    /// because we were preempted in the middle).
    pub fn time(self) -> TimeSnapshot {
        let version = self.word32(TIME + offset_of!(VcpuTimeInfo, version));
        let p = self.at(TIME).cast::<VcpuTimeInfo>();
        loop {
            let v1 = version.load(Ordering::Acquire);
            if v1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            // SAFETY: `p` is the aligned time record inside the page (see `byte`); a
            // volatile copy forms no reference, and a torn copy is detected below.
            let t = unsafe { p.read_volatile() };
            fence(Ordering::Acquire);
            if version.load(Ordering::Relaxed) == v1 {
                return TimeSnapshot {
                    version: v1,
                    tsc_timestamp: t.tsc_timestamp,
                    system_time: t.system_time,
                    tsc_to_system_mul: t.tsc_to_system_mul,
                    tsc_shift: t.tsc_shift,
                };
            }
        }
    }

    /// The wall clock at system time 0 (`wc_*`, read under `wc_version`).
    pub fn wall_base(self) -> WallBase {
        let version = self.word32(offset_of!(SharedInfo, wc_version));
        let sec = self.word32(offset_of!(SharedInfo, wc_sec));
        let nsec = self.word32(offset_of!(SharedInfo, wc_nsec));
        let sec_hi = self.word32(offset_of!(SharedInfo, wc_sec_hi));
        loop {
            let v1 = version.load(Ordering::Acquire);
            if v1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let base = WallBase {
                secs: u64::from(sec_hi.load(Ordering::Relaxed)) << 32
                    | u64::from(sec.load(Ordering::Relaxed)),
                nanos: nsec.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if version.load(Ordering::Relaxed) == v1 {
                return base;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    fn page() -> SharedPage {
        let p: &'static mut Page = Box::leak(Box::new(Page([0; 4096])));
        // SAFETY: a leaked, page-aligned host page nobody else references.
        unsafe { SharedPage::new(p as *mut Page as *mut SharedInfo) }.unwrap()
    }

    #[test]
    fn field_offsets_match_the_abi() {
        let s = page();
        let base = s.as_ptr() as usize;
        assert_eq!(s.upcall_pending().as_ptr() as usize - base, 0);
        assert_eq!(s.upcall_mask().as_ptr() as usize - base, 1);
        assert_eq!(s.pending_sel().as_ptr() as usize - base, 8);
        assert_eq!(s.evtchn_pending(1).as_ptr() as usize - base, 2048 + 8);
        assert_eq!(s.evtchn_mask(63).as_ptr() as usize - base, 2560 + 8 * 63);
        assert_eq!(TIME, 32);
    }

    #[test]
    fn time_and_wall_clock_reads() {
        let s = page();
        let b = s.as_ptr() as *mut u8;
        // SAFETY: offsets inside the leaked page.
        unsafe {
            (b.add(32) as *mut u32).write(4);
            (b.add(40) as *mut u64).write(1000);
            (b.add(48) as *mut u64).write(77);
            (b.add(56) as *mut u32).write(1 << 31);
            b.add(60).write(1);
            (b.add(3072) as *mut u32).write(2);
            (b.add(3076) as *mut u32).write(5);
            (b.add(3080) as *mut u32).write(6);
            (b.add(3084) as *mut u32).write(1);
        }
        assert_eq!(
            s.time(),
            TimeSnapshot {
                version: 4,
                tsc_timestamp: 1000,
                system_time: 77,
                tsc_to_system_mul: 1 << 31,
                tsc_shift: 1,
            }
        );
        assert_eq!(
            s.wall_base(),
            WallBase {
                secs: (1 << 32) | 5,
                nanos: 6
            }
        );
    }

    #[test]
    fn misaligned_or_null_pages_are_refused() {
        // SAFETY: null and a misaligned pointer are refused before any use.
        unsafe {
            assert!(SharedPage::new(core::ptr::null_mut()).is_none());
            assert!(SharedPage::new(0x1008 as *mut SharedInfo).is_none());
        }
    }
}
