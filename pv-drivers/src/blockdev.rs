//! The guest's block-device layer: the [`BlockDevice`] contract every disk implements
//! (blkfront, a RAM disk, a file on the host), the [`BlockError`]s it reports, a sparse
//! in-memory disk ([`MemDisk`]) and the request queue above them ([`queue`]).
//!
//! The trait is the seam between the PV block frontend (which turns these calls into
//! blkif requests over grant-referenced rings) and everything above it (the request
//! queue, the FAT filesystem in [`crate::fat`], the integrity workload). It is
//! deliberately synchronous and sector-addressed, like blkif itself: a call completes
//! when the device has answered. Durability is only promised by [`BlockDevice::flush`]
//! (blkif's write barrier / flush-diskcache): a completed flush means every write that
//! completed before it is on stable storage.
//!
//! Every range is checked by [`check_io`] before a device touches memory, so a caller's
//! bad sector number or buffer length is an error, never a panic or an access past the
//! end.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;

pub mod integrity;
pub mod queue;

#[cfg(test)]
mod tests;

/// Why a block operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// The device (or the backend behind it) reported an I/O error (blkif `BLKIF_RSP_ERROR`).
    IoError,
    /// The request reaches past the last sector (or its end overflows).
    OutOfRange,
    /// A write or flush to a read-only device.
    ReadOnly,
    /// The buffer is not a whole number of sectors.
    Misaligned,
    /// The operation is not supported by this device (blkif `BLKIF_RSP_EOPNOTSUPP`).
    Unsupported,
    /// The device went away (backend closed, frontend disconnected).
    Disconnected,
}

impl core::fmt::Display for BlockError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            BlockError::IoError => "I/O error",
            BlockError::OutOfRange => "sector range past the end of the device",
            BlockError::ReadOnly => "device is read-only",
            BlockError::Misaligned => "buffer is not a whole number of sectors",
            BlockError::Unsupported => "operation not supported",
            BlockError::Disconnected => "device disconnected",
        })
    }
}

impl core::error::Error for BlockError {}

/// A disk: `sectors()` sectors of `sector_size()` bytes.
///
/// On a read-only device `write` fails with [`BlockError::ReadOnly`]; `flush` has
/// nothing to do and succeeds.
///
/// `read`/`write` move whole sectors: `buf.len()` must be a multiple of
/// `sector_size()` (else [`BlockError::Misaligned`]) and `sector + buf.len() /
/// sector_size()` at most `sectors()` (else [`BlockError::OutOfRange`]). A zero-length
/// buffer is a no-op. `flush` completes once every write completed before it is durable.
pub trait BlockDevice {
    /// Capacity in sectors.
    fn sectors(&self) -> u64;
    /// Bytes per sector (512 or 4096 for blkif; never 0).
    fn sector_size(&self) -> u32;
    /// Reads `buf.len() / sector_size()` sectors starting at `sector`.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Writes `buf.len() / sector_size()` sectors starting at `sector`.
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Makes every completed write durable (a write barrier).
    fn flush(&mut self) -> Result<(), BlockError>;

    /// True if writes and flushes are refused (xenstore's `mode = r`).
    fn readonly(&self) -> bool {
        false
    }

    /// Capacity in bytes (saturating).
    fn capacity_bytes(&self) -> u64 {
        self.sectors().saturating_mul(u64::from(self.sector_size()))
    }
}

impl<D: BlockDevice + ?Sized> BlockDevice for &mut D {
    fn sectors(&self) -> u64 {
        (**self).sectors()
    }
    fn sector_size(&self) -> u32 {
        (**self).sector_size()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        (**self).read(sector, buf)
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        (**self).write(sector, buf)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        (**self).flush()
    }
    fn readonly(&self) -> bool {
        (**self).readonly()
    }
}

impl<D: BlockDevice + ?Sized> BlockDevice for Box<D> {
    fn sectors(&self) -> u64 {
        (**self).sectors()
    }
    fn sector_size(&self) -> u32 {
        (**self).sector_size()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        (**self).read(sector, buf)
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        (**self).write(sector, buf)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        (**self).flush()
    }
    fn readonly(&self) -> bool {
        (**self).readonly()
    }
}

/// Checks one request against a device's geometry; returns the number of sectors.
///
/// The shared validator for every implementation (and for blkfront before it builds a
/// request): whole sectors, no overflow, nothing past the end.
pub fn check_io(
    sectors: u64,
    sector_size: u32,
    sector: u64,
    len: usize,
) -> Result<u64, BlockError> {
    if sector_size == 0 {
        return Err(BlockError::Misaligned);
    }
    let ss = sector_size as usize;
    if !len.is_multiple_of(ss) {
        return Err(BlockError::Misaligned);
    }
    let count = (len / ss) as u64;
    let end = sector.checked_add(count).ok_or(BlockError::OutOfRange)?;
    if end > sectors || (count == 0 && sector > sectors) {
        return Err(BlockError::OutOfRange);
    }
    Ok(count)
}

/// A sparse RAM disk: only sectors holding a non-zero byte use memory, so a 64 MiB
/// FAT32 volume with a few files costs little more than its metadata. Unwritten sectors
/// read as zeros, like a fresh sparse image file.
#[derive(Clone, Debug)]
pub struct MemDisk {
    sectors: u64,
    sector_size: u32,
    readonly: bool,
    data: BTreeMap<u64, Box<[u8]>>,
    flushes: u64,
}

impl MemDisk {
    /// A zeroed disk of `sectors` sectors of `sector_size` bytes (must be non-zero).
    pub fn new(sectors: u64, sector_size: u32) -> MemDisk {
        assert!(sector_size != 0, "MemDisk: sector size 0");
        MemDisk {
            sectors,
            sector_size,
            readonly: false,
            data: BTreeMap::new(),
            flushes: 0,
        }
    }

    /// A disk holding `image` (its length rounded down to whole sectors).
    pub fn from_image(image: &[u8], sector_size: u32) -> MemDisk {
        let ss = sector_size as usize;
        let mut d = MemDisk::new((image.len() / ss) as u64, sector_size);
        for (i, chunk) in image.chunks_exact(ss).enumerate() {
            d.store(i as u64, chunk);
        }
        d
    }

    /// Makes the disk refuse writes and flushes (or accept them again).
    pub fn set_readonly(&mut self, readonly: bool) {
        self.readonly = readonly;
    }

    /// The whole disk as one image (for tests and host tools; allocates its full size).
    pub fn to_image(&self) -> alloc::vec::Vec<u8> {
        let mut v = alloc::vec![0u8; self.capacity_bytes() as usize];
        let ss = self.sector_size as usize;
        for (&s, d) in &self.data {
            let off = s as usize * ss;
            v[off..off + ss].copy_from_slice(d);
        }
        v
    }

    /// Sectors holding non-zero data (the memory it uses, in sectors).
    pub fn stored_sectors(&self) -> usize {
        self.data.len()
    }

    /// Completed flushes.
    pub fn flushes(&self) -> u64 {
        self.flushes
    }

    fn store(&mut self, sector: u64, chunk: &[u8]) {
        if chunk.iter().all(|&b| b == 0) {
            self.data.remove(&sector);
        } else if let Some(d) = self.data.get_mut(&sector) {
            d.copy_from_slice(chunk);
        } else {
            self.data.insert(sector, chunk.into());
        }
    }
}

impl BlockDevice for MemDisk {
    fn sectors(&self) -> u64 {
        self.sectors
    }
    fn sector_size(&self) -> u32 {
        self.sector_size
    }
    fn readonly(&self) -> bool {
        self.readonly
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_io(self.sectors, self.sector_size, sector, buf.len())?;
        let ss = self.sector_size as usize;
        for (i, chunk) in buf.chunks_exact_mut(ss).enumerate() {
            match self.data.get(&(sector + i as u64)) {
                Some(d) => chunk.copy_from_slice(d),
                None => chunk.fill(0),
            }
        }
        Ok(())
    }
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.readonly {
            return Err(BlockError::ReadOnly);
        }
        check_io(self.sectors, self.sector_size, sector, buf.len())?;
        let ss = self.sector_size as usize;
        for (i, chunk) in buf.chunks_exact(ss).enumerate() {
            self.store(sector + i as u64, chunk);
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        // A read-only disk has nothing to make durable: flushing it succeeds.
        self.flushes += 1;
        Ok(())
    }
}
