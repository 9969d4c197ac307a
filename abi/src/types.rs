//! Typed frame numbers and ids.
//!
//! Machine frames (`Mfn`, what page tables contain) and pseudo-physical frames (`Pfn`,
//! the guest's contiguous view, translated by its P2M) are different types so they cannot
//! be mixed without an explicit lookup.

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// The only page size guests deal with.
pub const PAGE_SIZE: usize = 1 << PAGE_SHIFT;

/// A machine frame number: physical address >> 12, as seen by the hardware.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mfn(pub u64);

/// A pseudo-physical frame number: an index into a domain's own contiguous memory.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u64);

impl Mfn {
    /// The machine address of the first byte of this frame.
    pub const fn maddr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
    /// The frame containing machine address `maddr`.
    pub const fn containing(maddr: u64) -> Mfn {
        Mfn(maddr >> PAGE_SHIFT)
    }
}

impl Pfn {
    /// The pseudo-physical address of the first byte of this frame.
    pub const fn paddr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
}

impl core::fmt::Debug for Mfn {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "mfn:{:#x}", self.0)
    }
}

impl core::fmt::Debug for Pfn {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "pfn:{:#x}", self.0)
    }
}

/// A domain id. Domain 0 is the privileged control domain.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DomId(pub u16);

impl DomId {
    /// The privileged control domain.
    pub const DOM0: DomId = DomId(0);
    /// "The calling domain" in hypercall arguments (Xen's `DOMID_SELF`).
    pub const SELF: DomId = DomId(0x7FF0);
    /// No domain (Xen's `DOMID_INVALID`).
    pub const INVALID: DomId = DomId(0x7FF4);
    /// Largest id a real domain can have; ids above are special.
    pub const MAX_REAL: DomId = DomId(0x7FEF);
}

impl core::fmt::Display for DomId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "d{}", self.0)
    }
}
