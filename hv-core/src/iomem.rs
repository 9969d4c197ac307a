//! I/O memory permission: which machine frames that are *not* RAM dom0 may map.
//!
//! A device-driver domain needs the device's MMIO (a PCI BAR, say) in its page tables.
//! Xen grants this per domain with `DOMCTL_iomem_permission`; here the rule is fixed at
//! boot and applies to privileged domains only (see [`crate::mm`]): a frame is device
//! memory iff
//!
//! - no byte of it lies in a RAM range of the boot memory map (so never RAM the
//!   hypervisor manages, hence never another domain's frame or the hypervisor's own:
//!   those all come from RAM ranges), and
//! - it is not one of the interrupt-controller pages the hypervisor drives itself
//!   (local APIC, IOAPIC, HPET: [`HYPERVISOR_MMIO`]), and
//! - it is below the architectural physical-address limit.
//!
//! Such a mapping holds no reference: device memory has no owner, no type and is never
//! freed, so `mm` neither takes nor drops counts for it (the predicate is a pure function
//! of boot-time data, so taking and dropping always agree). The hypervisor never copies
//! through these frames itself ([`crate::mem::MachineMemory`] refuses non-RAM).

/// RAM ranges remembered (the boot memory map rarely has more than a handful).
pub const MAX_RAM_RANGES: usize = 32;

/// Frames (4 KiB) the hypervisor keeps for itself even though they are not RAM: the
/// local APIC (0xfee00000), the IOAPIC (0xfec00000) and the HPET (0xfed00000).
pub const HYPERVISOR_MMIO: [u64; 3] = [0xfee00, 0xfec00, 0xfed00];

/// Machine frames beyond this are not addressable (52-bit physical addresses).
pub const MFN_LIMIT: u64 = 1 << 40;

/// The permission set: everything that is not RAM and not [`HYPERVISOR_MMIO`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoMem {
    ram: [(u64, u64); MAX_RAM_RANGES],
    n: usize,
    /// Until the memory map is known nothing is device memory.
    known: bool,
}

impl Default for IoMem {
    fn default() -> Self {
        Self::NONE
    }
}

impl IoMem {
    /// No frame is device memory (the state before boot fills in the memory map).
    pub const NONE: IoMem = IoMem {
        ram: [(0, 0); MAX_RAM_RANGES],
        n: 0,
        known: false,
    };

    /// Builds the set from the boot memory map's RAM ranges, as byte ranges
    /// `[start, end)` exactly as reported (not rounded: a frame partly RAM is RAM).
    /// `None` if there are more than [`MAX_RAM_RANGES`] ranges: then no frame is
    /// device memory rather than some RAM wrongly being one.
    pub fn from_ram_ranges(ranges: &[(u64, u64)]) -> Option<IoMem> {
        if ranges.len() > MAX_RAM_RANGES {
            return None;
        }
        let mut s = IoMem {
            known: true,
            ..Self::NONE
        };
        for &(a, b) in ranges {
            if b > a {
                s.ram[s.n] = (a, b);
                s.n += 1;
            }
        }
        Some(s)
    }

    /// Whether `mfn` is device memory a privileged domain may map.
    pub fn permits(&self, mfn: u64) -> bool {
        if !self.known || mfn >= MFN_LIMIT || HYPERVISOR_MMIO.contains(&mfn) {
            return false;
        }
        let (start, end) = (mfn << 12, (mfn + 1) << 12);
        !self.ram[..self.n]
            .iter()
            .any(|&(a, b)| start < b && a < end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// QEMU pc with 512 MiB: low RAM, high RAM (the BIOS area is a hole).
    fn qemu() -> IoMem {
        IoMem::from_ram_ranges(&[(0, 0x9fc00), (0x10_0000, 0x1ffe_0000)]).unwrap()
    }

    #[test]
    fn device_memory_is_the_non_ram_non_hypervisor_frames() {
        let m = qemu();
        assert!(m.permits(0xfebd0), "a PCI BAR below 4 GiB");
        assert!(m.permits(0x0080_0000), "a 64-bit BAR above 4 GiB");
        assert!(m.permits(0xb8), "VGA text memory");
        assert!(!m.permits(0x0), "low RAM");
        assert!(!m.permits(0x9f), "a frame partly RAM counts as RAM");
        assert!(!m.permits(0x100), "RAM at 1 MiB (the hypervisor image)");
        assert!(!m.permits(0x1ffdf), "the last RAM frame");
        assert!(m.permits(0x1ffe0), "just past RAM");
        for f in HYPERVISOR_MMIO {
            assert!(!m.permits(f), "hypervisor MMIO {f:#x}");
        }
        assert!(!m.permits(MFN_LIMIT));
        assert!(!m.permits(u64::MAX));
    }

    #[test]
    fn nothing_before_the_memory_map_or_when_it_does_not_fit() {
        assert!(!IoMem::NONE.permits(0xfebd0));
        let many = [(0u64, 0x1000u64); MAX_RAM_RANGES + 1];
        assert_eq!(IoMem::from_ram_ranges(&many), None);
    }

    proptest! {
        /// No frame overlapping any RAM range is ever device memory.
        #[test]
        fn never_ram(ranges in proptest::collection::vec((0u64..1 << 34, 1u64..1 << 24), 0..8),
                     probe in 0u64..1 << 22) {
            let rs: Vec<(u64, u64)> = ranges.iter().map(|&(a, l)| (a, a + l)).collect();
            let m = IoMem::from_ram_ranges(&rs).unwrap();
            let overlaps = rs.iter().any(|&(a, b)| probe << 12 < b && a < (probe + 1) << 12);
            if overlaps || HYPERVISOR_MMIO.contains(&probe) {
                prop_assert!(!m.permits(probe));
            } else {
                prop_assert!(m.permits(probe));
            }
        }
    }
}
