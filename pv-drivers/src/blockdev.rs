//! The block-device seam between a filesystem and whatever provides sectors (blkfront
//! in a guest, a RAM disk in tests).
//!
//! Minimal on purpose: whole sectors addressed from 0, synchronous calls, and `flush`
//! as the durability point (everything written before a successful `flush` survives a
//! crash of the guest or of the machine's power).

/// Why a block operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// The sector range leaves the device, or the buffer is not whole sectors.
    OutOfRange,
    /// The device is read-only.
    ReadOnly,
    /// The device (backend) reported an I/O error.
    Io,
    /// The device does not support the operation.
    Unsupported,
    /// The device is not connected (the backend went away).
    Disconnected,
}

/// A device of fixed-size sectors.
pub trait BlockDevice {
    /// Size in sectors of [`Self::sector_size`] bytes.
    fn sectors(&self) -> u64;
    /// Bytes per sector.
    fn sector_size(&self) -> u32;
    /// Reads `buf.len()` bytes (whole sectors) from `sector` on.
    ///
    /// # Errors
    ///
    /// See [`BlockError`].
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Writes `buf` (whole sectors) from `sector` on.
    ///
    /// # Errors
    ///
    /// See [`BlockError`].
    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Makes every completed write durable.
    ///
    /// # Errors
    ///
    /// See [`BlockError`].
    fn flush(&mut self) -> Result<(), BlockError>;
}
