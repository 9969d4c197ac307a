//! The data-integrity workload (issue 8, item 4): a seeded pseudo-random pattern
//! written over a region of a disk, flushed, read back and verified, with one checksum
//! a host can recompute from the image file after QEMU exits.
//!
//! One implementation for both sides: the guest program (`test=integrity`) writes and
//! verifies with it, and the host harness (`tests::disk`) recomputes the same bytes and
//! checksum, so the two cannot drift apart.
//!
//! The pattern is the byte stream of xorshift64* seeded through splitmix64, each 64-bit
//! output stored little-endian; byte `i` of a region is byte `i` of the stream. The
//! checksum is 64-bit FNV-1a over the region's bytes.

use alloc::vec::Vec;

use super::{BlockDevice, BlockError};

/// The pattern's byte stream for one seed.
#[derive(Clone, Debug)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    /// The stream for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Pattern {
        // splitmix64: spreads small seeds over the whole state.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Pattern {
            // xorshift's state must not be 0.
            state: if z == 0 { 0x2545_f491_4f6c_dd1d } else { z },
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            if self.used == 8 {
                if buf.len() - i >= 8 {
                    // Whole words straight into the buffer.
                    let w = self.next_word();
                    buf[i..i + 8].copy_from_slice(&w);
                    i += 8;
                    continue;
                }
                self.word = self.next_word();
                self.used = 0;
            }
            buf[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
    }
}

/// 64-bit FNV-1a, fed incrementally.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The checksum so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The first `bytes` bytes of the pattern for `seed`.
pub fn pattern(seed: u64, bytes: usize) -> Vec<u8> {
    let mut v = alloc::vec![0u8; bytes];
    Pattern::new(seed).fill(&mut v);
    v
}

/// The FNV-1a checksum of [`pattern`]`(seed, bytes)`, computed in pieces (no large
/// allocation).
pub fn pattern_fnv(seed: u64, bytes: u64) -> u64 {
    let mut p = Pattern::new(seed);
    let mut f = Fnv::default();
    let mut buf = [0u8; 4096];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        f.update(&buf[..n]);
        left -= n as u64;
    }
    f.value()
}

/// What a verification found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Bytes read.
    pub bytes: u64,
    /// FNV-1a of the bytes read (equals [`pattern_fnv`] iff the data is intact, barring
    /// a collision).
    pub fnv: u64,
    /// Sectors whose content differs from the pattern.
    pub bad_sectors: u64,
    /// The first such sector (absolute sector number).
    pub first_bad: Option<u64>,
}

impl Verified {
    /// True if every sector matched.
    pub fn intact(&self) -> bool {
        self.bad_sectors == 0
    }
}

/// Checks a region's geometry: `bytes` must be whole sectors inside the device, and
/// `chunk_bytes` a non-zero whole number of sectors.
fn check_region<D: BlockDevice>(
    dev: &D,
    sector: u64,
    bytes: u64,
    chunk_bytes: usize,
) -> Result<(), BlockError> {
    let ss = u64::from(dev.sector_size());
    if ss == 0
        || !bytes.is_multiple_of(ss)
        || chunk_bytes == 0
        || !(chunk_bytes as u64).is_multiple_of(ss)
    {
        return Err(BlockError::Misaligned);
    }
    let end = sector
        .checked_add(bytes / ss)
        .ok_or(BlockError::OutOfRange)?;
    if end > dev.sectors() {
        return Err(BlockError::OutOfRange);
    }
    Ok(())
}

/// Writes the pattern for `seed` over `bytes` bytes from `sector`, in writes of
/// `chunk_bytes`, then flushes; returns the pattern's checksum.
pub fn write_pattern<D: BlockDevice>(
    dev: &mut D,
    sector: u64,
    bytes: u64,
    seed: u64,
    chunk_bytes: usize,
) -> Result<u64, BlockError> {
    check_region(dev, sector, bytes, chunk_bytes)?;
    let ss = u64::from(dev.sector_size());
    let mut p = Pattern::new(seed);
    let mut f = Fnv::default();
    let mut buf = alloc::vec![0u8; chunk_bytes];
    let mut done = 0u64;
    while done < bytes {
        let n = (bytes - done).min(chunk_bytes as u64) as usize;
        p.fill(&mut buf[..n]);
        f.update(&buf[..n]);
        dev.write(sector + done / ss, &buf[..n])?;
        done += n as u64;
    }
    dev.flush()?;
    Ok(f.value())
}

/// Reads `bytes` bytes from `sector` in reads of `chunk_bytes` and compares them with
/// the pattern for `seed`, sector by sector.
pub fn verify_pattern<D: BlockDevice>(
    dev: &mut D,
    sector: u64,
    bytes: u64,
    seed: u64,
    chunk_bytes: usize,
) -> Result<Verified, BlockError> {
    check_region(dev, sector, bytes, chunk_bytes)?;
    let ss = dev.sector_size() as usize;
    let mut p = Pattern::new(seed);
    let mut f = Fnv::default();
    let mut got = alloc::vec![0u8; chunk_bytes];
    let mut want = alloc::vec![0u8; chunk_bytes];
    let mut v = Verified {
        bytes,
        fnv: 0,
        bad_sectors: 0,
        first_bad: None,
    };
    let mut done = 0u64;
    while done < bytes {
        let n = (bytes - done).min(chunk_bytes as u64) as usize;
        let at = sector + done / ss as u64;
        dev.read(at, &mut got[..n])?;
        p.fill(&mut want[..n]);
        f.update(&got[..n]);
        for (i, (g, w)) in got[..n].chunks(ss).zip(want[..n].chunks(ss)).enumerate() {
            if g != w {
                v.bad_sectors += 1;
                v.first_bad.get_or_insert(at + i as u64);
            }
        }
        done += n as u64;
    }
    v.fnv = f.value();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::queue::RequestQueue;
    use crate::blockdev::MemDisk;

    #[test]
    fn the_stream_is_the_same_whatever_the_pieces() {
        let whole = pattern(42, 1000);
        let mut p = Pattern::new(42);
        let mut parts = alloc::vec![0u8; 1000];
        let (a, rest) = parts.split_at_mut(3);
        let (b, c) = rest.split_at_mut(517);
        p.fill(a);
        p.fill(b);
        p.fill(c);
        assert_eq!(parts, whole);
        assert_ne!(pattern(43, 64), pattern(42, 64));
        assert_ne!(pattern(0, 64), alloc::vec![0u8; 64]);
        let mut f = Fnv::default();
        f.update(&whole);
        assert_eq!(f.value(), pattern_fnv(42, 1000));
    }

    #[test]
    fn known_values_pin_the_definition() {
        // FNV-1a of "a" (the published test vector) and the pattern's first bytes:
        // changing either breaks the host's comparison with older images.
        let mut f = Fnv::default();
        f.update(b"a");
        assert_eq!(f.value(), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(pattern_fnv(1, 0), 0xcbf2_9ce4_8422_2325);
        // The first word for seed 1 (computed independently of this code).
        assert_eq!(pattern(1, 8), 0x4b46_a55d_f361_1b9bu64.to_le_bytes());
    }

    #[test]
    fn write_then_verify_through_the_queue_and_detect_corruption() {
        let mut q = RequestQueue::new(MemDisk::new(4096, 512), 88);
        let fnv = write_pattern(&mut q, 100, 1 << 20, 7, 64 << 10).unwrap();
        assert_eq!(fnv, pattern_fnv(7, 1 << 20));
        let v = verify_pattern(&mut q, 100, 1 << 20, 7, 60 << 10).unwrap();
        assert!(v.intact());
        assert_eq!(v.fnv, fnv);
        // One flipped byte: found, at the right sector, and the checksum differs.
        let (mut disk, r) = q.into_inner();
        r.unwrap();
        assert_eq!(disk.flushes(), 1);
        let mut s = [0u8; 512];
        disk.read(1000, &mut s).unwrap();
        s[17] ^= 1;
        disk.write(1000, &s).unwrap();
        let v = verify_pattern(&mut disk, 100, 1 << 20, 7, 64 << 10).unwrap();
        assert_eq!((v.bad_sectors, v.first_bad), (1, Some(1000)));
        assert_ne!(v.fnv, fnv);
        // Another seed is all wrong.
        let v = verify_pattern(&mut disk, 100, 1 << 20, 8, 64 << 10).unwrap();
        assert_eq!(v.bad_sectors, 2048);
    }

    #[test]
    fn bad_regions_are_refused() {
        let mut d = MemDisk::new(64, 512);
        assert_eq!(
            write_pattern(&mut d, 0, 100, 1, 512),
            Err(BlockError::Misaligned)
        );
        assert_eq!(
            write_pattern(&mut d, 0, 512, 1, 0),
            Err(BlockError::Misaligned)
        );
        assert_eq!(
            write_pattern(&mut d, 0, 512, 1, 700),
            Err(BlockError::Misaligned)
        );
        assert_eq!(
            write_pattern(&mut d, 60, 8 * 512, 1, 512),
            Err(BlockError::OutOfRange)
        );
        assert_eq!(
            verify_pattern(&mut d, u64::MAX, 512, 1, 512),
            Err(BlockError::OutOfRange)
        );
        assert_eq!(d.stored_sectors(), 0, "nothing written");
    }
}
