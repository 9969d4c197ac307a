//! The one API through which the hypervisor reads and writes guest memory.
//!
//! Every guest pointer in a hypercall is untrusted. [`GuestMem`] takes a guest virtual
//! address and length and:
//! - rejects lengths above the caller's bound (`E2BIG`) before looking at the address,
//! - rejects ranges that wrap, are non-canonical, or touch the hypervisor's region (`EFAULT`),
//! - translates every page with a software walk of the guest's own page tables, requiring
//!   present + user (+ writable for writes) at every level (`EFAULT` otherwise),
//! - checks the *whole* range before copying anything, so a failed copy has no partial
//!   effect,
//! - copies through [`MachineMemory`], so no hypervisor fault is possible.

use crate::mem::MachineMemory;
use crate::paging::{translate, Access};
use crate::pod::Pod;
use abi::{Errno, Mfn, PAGE_SIZE};

/// Guest memory as seen through one address space (one L4).
pub struct GuestMem<'m, M: MachineMemory> {
    mem: &'m mut M,
    l4: Mfn,
}

impl<'m, M: MachineMemory> GuestMem<'m, M> {
    /// Accessor for the address space rooted at `l4`.
    pub fn new(mem: &'m mut M, l4: Mfn) -> Self {
        GuestMem { mem, l4 }
    }

    /// Checks that `[va, va+len)` is accessible for `access`, and calls `each(maddr,
    /// offset, chunk_len)` for every page-sized piece *after* the whole range checked out.
    fn for_each_chunk(
        &mut self,
        va: u64,
        len: usize,
        access: Access,
        mut each: impl FnMut(&mut M, u64, usize, usize) -> bool,
    ) -> Result<(), Errno> {
        if len == 0 {
            return Ok(());
        }
        let last = va.checked_add(len as u64 - 1).ok_or(Errno::EFAULT)?;
        if !abi::layout::is_canonical(last) || (va as i64 >> 47) != (last as i64 >> 47) {
            return Err(Errno::EFAULT);
        }
        // Pass 1: validate every page.
        let mut page = va & !(PAGE_SIZE as u64 - 1);
        while page <= last {
            translate(self.mem, self.l4, page.max(va), access)?;
            match page.checked_add(PAGE_SIZE as u64) {
                Some(p) => page = p,
                None => break,
            }
        }
        // Pass 2: copy. The tables cannot change in between (the guest is not running).
        let mut off = 0usize;
        while off < len {
            let cur = va + off as u64;
            let in_page = PAGE_SIZE - (cur as usize & (PAGE_SIZE - 1));
            let n = in_page.min(len - off);
            let maddr = translate(self.mem, self.l4, cur, access)?;
            if !each(self.mem, maddr, off, n) {
                return Err(Errno::EFAULT);
            }
            off += n;
        }
        Ok(())
    }

    /// Copies `buf.len()` bytes from guest `va`. `max` bounds the length (`E2BIG`).
    pub fn read(&mut self, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.for_each_chunk(va, buf.len(), Access::Read, |mem, maddr, off, n| {
            mem.read(maddr, &mut buf[off..off + n])
        })
    }

    /// Copies `data` to guest `va` (every page must be mapped writable).
    pub fn write(&mut self, va: u64, data: &[u8]) -> Result<(), Errno> {
        self.for_each_chunk(va, data.len(), Access::Write, |mem, maddr, off, n| {
            mem.write(maddr, &data[off..off + n])
        })
    }

    /// Checks `[va, va+len)` is readable without copying; `len` must be `<= max`.
    pub fn check_readable(&mut self, va: u64, len: u64, max: u64) -> Result<(), Errno> {
        let len = bounded(len, max)?;
        self.for_each_chunk(va, len, Access::Read, |_, _, _, _| true)
    }

    /// Reads `[va, va+len)` in chunks of at most `CHUNK` bytes after checking the whole
    /// range, calling `sink` on each; `len` must be `<= max`.
    pub fn read_chunks<const CHUNK: usize>(
        &mut self,
        va: u64,
        len: u64,
        max: u64,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), Errno> {
        let len = bounded(len, max)?;
        self.for_each_chunk(va, len, Access::Read, |_, _, _, _| true)?;
        let mut buf = [0u8; CHUNK];
        let mut off = 0usize;
        while off < len {
            let n = CHUNK.min(len - off);
            self.read(va + off as u64, &mut buf[..n])?;
            sink(&buf[..n]);
            off += n;
        }
        Ok(())
    }

    /// Fetches up to 15 instruction bytes at `rip`, stopping at the first page that
    /// cannot be read: returns the buffer and how many bytes were read. The bytes are
    /// untrusted; a short fetch means the instruction runs into unreadable memory.
    pub fn fetch_insn(&mut self, rip: u64) -> ([u8; 15], usize) {
        let mut bytes = [0u8; 15];
        let mut n = 0;
        while n < bytes.len() {
            let at = rip.wrapping_add(n as u64);
            let chunk = (bytes.len() - n).min(PAGE_SIZE - (at as usize & (PAGE_SIZE - 1)));
            if self.read(at, &mut bytes[n..n + chunk]).is_err() {
                break;
            }
            n += chunk;
        }
        (bytes, n)
    }

    /// Reads one ABI structure (at most 256 bytes) from `va`.
    pub fn read_obj<T: Pod>(&mut self, va: u64) -> Result<T, Errno> {
        let mut buf = [0u8; 256];
        let bytes = buf
            .get_mut(..core::mem::size_of::<T>())
            .ok_or(Errno::E2BIG)?;
        self.read(va, bytes)?;
        T::from_bytes(bytes).ok_or(Errno::EFAULT)
    }

    /// Writes one ABI structure to `va`.
    pub fn write_obj<T: Pod>(&mut self, va: u64, v: &T) -> Result<(), Errno> {
        self.write(va, v.as_bytes())
    }
}

/// `len` as usize if it is `<= max`, else `E2BIG`.
pub fn bounded(len: u64, max: u64) -> Result<usize, Errno> {
    if len > max {
        return Err(Errno::E2BIG);
    }
    usize::try_from(len).map_err(|_| Errno::E2BIG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::TestMemory;
    use crate::paging::{map_4k, PTE_RW, PTE_US};
    use abi::layout::GUEST_VIRT_BASE as B;
    use proptest::prelude::*;

    /// Pages 0..4 of the guest at B: 0,1,2 writable (mfn 40..42), 3 read-only (mfn 43).
    fn space() -> TestMemory {
        let mut mem = TestMemory::new(64);
        let mut next = 2u64;
        let mut alloc = || {
            next += 1;
            Ok(Mfn(next - 1))
        };
        for i in 0..4u64 {
            let flags = if i == 3 { PTE_US } else { PTE_US | PTE_RW };
            map_4k(
                &mut mem,
                Mfn(1),
                B + i * 4096,
                Mfn(40 + i),
                flags,
                &mut alloc,
            )
            .unwrap();
        }
        mem
    }

    #[test]
    fn copies_across_pages() {
        let mut mem = space();
        let mut g = GuestMem::new(&mut mem, Mfn(1));
        let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
        g.write(B + 100, &data).unwrap();
        let mut back = vec![0u8; 6000];
        g.read(B + 100, &mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn failed_write_has_no_partial_effect() {
        let mut mem = space();
        let mut g = GuestMem::new(&mut mem, Mfn(1));
        // Runs from writable page 2 into read-only page 3.
        assert_eq!(g.write(B + 3 * 4096 - 4, &[0xAA; 8]), Err(Errno::EFAULT));
        let mut b = [0u8; 4];
        g.read(B + 3 * 4096 - 4, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn hostile_addresses() {
        let mut mem = space();
        let mut g = GuestMem::new(&mut mem, Mfn(1));
        let mut b = [0u8; 16];
        for va in [
            0u64,
            0x1000,
            0x0000_8000_0000_0000,
            0xffff_8300_0010_0000,
            B + 4 * 4096,
            u64::MAX - 3,
        ] {
            assert_eq!(g.read(va, &mut b), Err(Errno::EFAULT), "{va:#x}");
        }
        assert_eq!(g.write(B + 3 * 4096, &b), Err(Errno::EFAULT), "read-only");
        assert_eq!(
            g.read(B + 4 * 4096 - 8, &mut b),
            Err(Errno::EFAULT),
            "runs off the end"
        );
        assert_eq!(g.check_readable(B, u64::MAX, 1 << 20), Err(Errno::E2BIG));
        assert_eq!(g.check_readable(B, 4096 * 4, 1 << 20), Ok(()));
        assert_eq!(g.check_readable(B, 0, 0), Ok(()));
    }

    proptest! {
        /// No address/length combination panics, and success implies the whole range
        /// lies inside the four mapped pages.
        #[test]
        fn never_panics_and_only_succeeds_inside(va in any::<u64>(), len in 0u64..20000) {
            let mut mem = space();
            let mut g = GuestMem::new(&mut mem, Mfn(1));
            let r = g.check_readable(va, len, 1 << 20);
            if r.is_ok() && len > 0 {
                prop_assert!(va >= B && va + len <= B + 4 * 4096);
            }
        }

        #[test]
        fn near_the_mapping(off in 0u64..(6 * 4096), len in 1u64..9000) {
            let mut mem = space();
            let mut g = GuestMem::new(&mut mem, Mfn(1));
            let va = B - 4096 + off;
            let inside = va >= B && va + len <= B + 4 * 4096;
            prop_assert_eq!(g.check_readable(va, len, 1 << 20).is_ok(), inside);
        }
    }
}
