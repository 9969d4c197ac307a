//! The machine-to-physical (M2P) table: one u64 per machine frame, the pseudo-physical
//! frame a domain uses it as (or `INVALID_M2P_ENTRY`).
//!
//! The hypervisor owns it and writes it (domain builder, reservation changes, and
//! `MMU_MACHPHYS_UPDATE` for frames the caller owns); every guest can read it at
//! [`abi::mm::M2P_VIRT_START`] through a read-only, user-accessible mapping in the
//! hypervisor's L4 slot 256 ([`M2p::build_mapping`]).

use crate::frame_table::{FrameTable, Owner};
use crate::mem::MachineMemory;
use crate::paging::{PTE_NX, PTE_P, PTE_RW, PTE_US};
use abi::mm::{INVALID_M2P_ENTRY, M2P_VIRT_START};
use abi::{Errno, Mfn, PAGE_SIZE};

/// The table: `frames` contiguous machine frames starting at `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct M2p {
    base: Mfn,
    frames: u64,
    /// Number of machine frames covered.
    pub max_mfn: u64,
}

impl M2p {
    /// Allocates and fills (all invalid) a table covering `frames.len()` machine frames.
    pub fn new(mem: &mut impl MachineMemory, frames: &mut FrameTable<'_>) -> Result<M2p, Errno> {
        let max_mfn = frames.len() as u64;
        let n = (max_mfn * 8).div_ceil(PAGE_SIZE as u64).max(1);
        let base = frames
            .alloc_contiguous(Owner::Hypervisor, n as usize)
            .map_err(Errno::from)?;
        let m2p = M2p {
            base,
            frames: n,
            max_mfn,
        };
        let invalid = [0xffu8; 512];
        for f in 0..n {
            for k in 0..8 {
                if !mem.write(Mfn(base.0 + f).maddr() + k * 512, &invalid) {
                    return Err(Errno::EFAULT);
                }
            }
        }
        Ok(m2p)
    }

    fn slot(&self, mfn: Mfn) -> Option<u64> {
        (mfn.0 < self.max_mfn).then(|| self.base.maddr() + mfn.0 * 8)
    }

    /// Records `M2P[mfn] = pfn`.
    pub fn set(&self, mem: &mut impl MachineMemory, mfn: Mfn, pfn: u64) {
        if let Some(a) = self.slot(mfn) {
            mem.write_u64(a, pfn);
        }
    }

    /// Marks `mfn` as having no pseudo-physical frame.
    pub fn invalidate(&self, mem: &mut impl MachineMemory, mfn: Mfn) {
        self.set(mem, mfn, INVALID_M2P_ENTRY);
    }

    /// `M2P[mfn]`.
    pub fn get(&self, mem: &impl MachineMemory, mfn: Mfn) -> u64 {
        self.slot(mfn)
            .and_then(|a| mem.read_u64(a))
            .unwrap_or(INVALID_M2P_ENTRY)
    }

    /// One past the last virtual address of the guest-visible table.
    pub fn v_end(&self) -> u64 {
        M2P_VIRT_START + self.max_mfn * 8
    }

    /// Builds page tables mapping the table read-only and user-accessible at
    /// `M2P_VIRT_START`; returns the L4 entry for slot 256. Tables come from `frames`
    /// (owned by the hypervisor) and are never writable by guests.
    pub fn build_mapping(
        &self,
        mem: &mut impl MachineMemory,
        frames: &mut FrameTable<'_>,
    ) -> Result<u64, Errno> {
        let mut alloc = || frames.alloc(Owner::Hypervisor).map_err(Errno::from);
        let l3 = alloc()?;
        mem.zero_frame(l3);
        let mut l2: Option<(u64, Mfn)> = None;
        let mut l1: Option<(u64, Mfn)> = None;
        for f in 0..self.frames {
            let va = M2P_VIRT_START + f * PAGE_SIZE as u64;
            let (i3, i2, i1) = ((va >> 30) & 511, (va >> 21) & 511, (va >> 12) & 511);
            let l2m = match l2 {
                Some((k, m)) if k == i3 => m,
                _ => {
                    let m = alloc()?;
                    mem.zero_frame(m);
                    mem.write_u64(l3.maddr() + 8 * i3, m.maddr() | PTE_P | PTE_RW | PTE_US);
                    l2 = Some((i3, m));
                    m
                }
            };
            let key = (i3 << 9) | i2;
            let l1m = match l1 {
                Some((k, m)) if k == key => m,
                _ => {
                    let m = alloc()?;
                    mem.zero_frame(m);
                    mem.write_u64(l2m.maddr() + 8 * i2, m.maddr() | PTE_P | PTE_RW | PTE_US);
                    l1 = Some((key, m));
                    m
                }
            };
            // Read-only at the leaf: guests read the M2P, only the hypervisor writes it
            // (through its direct map).
            mem.write_u64(
                l1m.maddr() + 8 * i1,
                Mfn(self.base.0 + f).maddr() | PTE_P | PTE_US | PTE_NX,
            );
        }
        Ok(l3.maddr() | PTE_P | PTE_RW | PTE_US)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame_table::FrameInfo;
    use crate::mem::TestMemory;
    use crate::paging::{translate, Access};

    #[test]
    fn readable_not_writable_by_guests() {
        let mut mem = TestMemory::new(2048);
        let mut e = vec![FrameInfo::RESERVED; 2048];
        let mut ft = FrameTable::new(&mut e);
        ft.add_free_range(Mfn(8), Mfn(2048));
        let m2p = M2p::new(&mut mem, &mut ft).unwrap();
        assert_eq!(m2p.get(&mem, Mfn(5)), INVALID_M2P_ENTRY);
        m2p.set(&mut mem, Mfn(600), 42);
        assert_eq!(m2p.get(&mem, Mfn(600)), 42);
        assert_eq!(m2p.get(&mem, Mfn(1 << 40)), INVALID_M2P_ENTRY);
        let l4e = m2p.build_mapping(&mut mem, &mut ft).unwrap();
        let l4 = Mfn(1);
        mem.write_u64(l4.maddr() + 8 * 256, l4e);
        // The guest-side walk refuses hypervisor addresses outright; check the mapping
        // itself by walking without that filter.
        let va = M2P_VIRT_START + 600 * 8;
        assert_eq!(
            translate(&mem, l4, va, Access::Read),
            Err(Errno::EFAULT),
            "guest_mem never touches it"
        );
        let pa = crate::paging::walk_raw(&mem, l4, va).unwrap();
        assert_eq!(mem.read_u64(pa.0), Some(42));
        assert_eq!(pa.1 & PTE_RW, 0, "leaf is read-only");
        assert_ne!(pa.1 & PTE_US, 0, "leaf is user-readable");
    }
}
