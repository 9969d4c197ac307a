//! Machine memory: the seam between portable logic and the hardware.
//!
//! Portable code never dereferences a machine address. It asks a [`MachineMemory`] to
//! read or write bytes at a machine address, and the implementation refuses anything
//! outside RAM it manages (returning `None`/`false`), so a guest-influenced address can
//! never make the hypervisor touch MMIO, its own image, or unmapped memory.
//!
//! On bare metal the implementation is the hypervisor's direct map of RAM
//! (`arch::x86_64::directmap`); in host tests it is [`TestMemory`].

use abi::{Mfn, PAGE_SIZE};

/// Byte-granular access to machine memory. Accesses must not cross a frame boundary.
pub trait MachineMemory {
    /// Reads `buf.len()` bytes at `maddr`. Returns false (and leaves `buf` unspecified)
    /// if the range is not RAM managed by this memory or crosses a frame boundary.
    fn read(&self, maddr: u64, buf: &mut [u8]) -> bool;
    /// Writes `data` at `maddr`; false if the range is not managed RAM or crosses a frame.
    fn write(&mut self, maddr: u64, data: &[u8]) -> bool;

    /// Reads a little-endian u64 (e.g. a page-table entry).
    fn read_u64(&self, maddr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(maddr, &mut b).then(|| u64::from_le_bytes(b))
    }
    /// Writes a little-endian u64.
    fn write_u64(&mut self, maddr: u64, v: u64) -> bool {
        self.write(maddr, &v.to_le_bytes())
    }
    /// Fills a whole frame with zeroes.
    fn zero_frame(&mut self, mfn: Mfn) -> bool {
        let zeros = [0u8; 512];
        (0..PAGE_SIZE / 512).all(|i| self.write(mfn.maddr() + (i * 512) as u64, &zeros))
    }
}

/// True if `[maddr, maddr+len)` stays within one frame.
pub fn within_one_frame(maddr: u64, len: usize) -> bool {
    let off = (maddr & (PAGE_SIZE as u64 - 1)) as usize;
    len <= PAGE_SIZE - off
}

/// Host-side machine memory: frames `[0, n)` backed by a `Vec`.
#[cfg(not(target_os = "none"))]
pub struct TestMemory {
    bytes: std::vec::Vec<u8>,
}

#[cfg(not(target_os = "none"))]
impl TestMemory {
    /// `frames` zeroed frames starting at machine frame 0.
    pub fn new(frames: usize) -> Self {
        TestMemory {
            bytes: std::vec![0; frames * PAGE_SIZE],
        }
    }
}

#[cfg(not(target_os = "none"))]
impl MachineMemory for TestMemory {
    fn read(&self, maddr: u64, buf: &mut [u8]) -> bool {
        let Ok(start) = usize::try_from(maddr) else {
            return false;
        };
        if !within_one_frame(maddr, buf.len()) {
            return false;
        }
        match self.bytes.get(start..start.saturating_add(buf.len())) {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
    fn write(&mut self, maddr: u64, data: &[u8]) -> bool {
        let Ok(start) = usize::try_from(maddr) else {
            return false;
        };
        if !within_one_frame(maddr, data.len()) {
            return false;
        }
        match self.bytes.get_mut(start..start.saturating_add(data.len())) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_out_of_range_and_frame_crossing() {
        let mut m = TestMemory::new(2);
        assert!(m.write_u64(8, 0xdead));
        assert_eq!(m.read_u64(8), Some(0xdead));
        assert_eq!(m.read_u64(2 * 4096), None);
        assert_eq!(m.read_u64(4092), None, "crosses a frame");
        assert!(!m.write(u64::MAX - 3, &[1, 2]));
        assert!(m.zero_frame(Mfn(1)));
        assert!(!m.zero_frame(Mfn(2)));
    }
}
