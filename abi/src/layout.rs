//! The virtual-address layout shared by every PV address space.
//!
//! x86_64 4-level paging splits the address space into 512 L4 slots of 512 GiB. The
//! hypervisor owns slots 256..=271 (`0xffff_8000_0000_0000..0xffff_8800_0000_0000`, the
//! same range Xen reserves) in *every* address space, mapped supervisor-only: guests run
//! in ring 3, so they can neither read nor write it. Everything else belongs to the guest.
//!
//! Start of day: the domain builder maps all of a domain's pseudo-physical memory
//! contiguously at [`GUEST_VIRT_BASE`] (pfn N at `GUEST_VIRT_BASE + N * 4096`); guest
//! kernels are linked there.

/// First address of the hypervisor's reserved region.
pub const HYPERVISOR_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// One past the last address of the hypervisor's reserved region.
pub const HYPERVISOR_VIRT_END: u64 = 0xffff_8800_0000_0000;
/// First L4 slot reserved for the hypervisor.
pub const HYPERVISOR_L4_FIRST: usize = 256;
/// Last L4 slot reserved for the hypervisor (inclusive).
pub const HYPERVISOR_L4_LAST: usize = 271;

/// Where the domain builder maps pfn 0 of every domain, and where guest kernels link.
/// (The top 2 GiB, like Linux's `__START_KERNEL_map`.)
pub const GUEST_VIRT_BASE: u64 = 0xffff_ffff_8000_0000;
/// Upper bound of a domain's start-of-day mapping: its memory must fit in the top 2 GiB.
pub const GUEST_VIRT_MAX_BYTES: u64 = 1 << 31;

/// True if `va` is a canonical x86_64 address (bits 63..47 all equal).
pub const fn is_canonical(va: u64) -> bool {
    let top = (va as i64) >> 47;
    top == 0 || top == -1
}

/// True if `va` lies in the hypervisor's reserved region.
pub const fn is_hypervisor_va(va: u64) -> bool {
    va >= HYPERVISOR_VIRT_START && va < HYPERVISOR_VIRT_END
}

/// True if `va` is an address a guest may use: canonical and outside the hypervisor's
/// region.
pub const fn is_guest_va(va: u64) -> bool {
    is_canonical(va) && !is_hypervisor_va(va)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_boundaries() {
        assert!(is_canonical(0));
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(!is_canonical(0xffff_7fff_ffff_ffff));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(is_canonical(u64::MAX));
    }

    #[test]
    fn hypervisor_region_is_l4_slots_256_to_271() {
        assert_eq!(
            (HYPERVISOR_VIRT_START >> 39) & 511,
            HYPERVISOR_L4_FIRST as u64
        );
        assert_eq!(
            ((HYPERVISOR_VIRT_END - 1) >> 39) & 511,
            HYPERVISOR_L4_LAST as u64
        );
        assert!(is_hypervisor_va(HYPERVISOR_VIRT_START));
        assert!(!is_hypervisor_va(HYPERVISOR_VIRT_END));
        assert!(!is_hypervisor_va(GUEST_VIRT_BASE));
        assert_eq!(GUEST_VIRT_BASE.wrapping_add(GUEST_VIRT_MAX_BYTES), 0);
    }
}
