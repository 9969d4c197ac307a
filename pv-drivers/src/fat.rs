//! A FAT32 filesystem over any [`BlockDevice`]: mount, create / write / read / delete
//! files, make and list directories, unmount; and [`format_fat32`], a small `mkfs.fat`
//! for RAM disks and fresh images.
//!
//! The filesystem code is the maintained `embedded-sdmmc` crate (no_std, no alloc,
//! FAT16/FAT32 read and write). `fatfs` 0.3.6 does not fit: without `std` it needs
//! `core_io`, which builds only on old nightly compilers. This module owns the seam:
//! - [`SdmmcDevice`] adapts a [`BlockDevice`] (`&mut self`, any sector count) to the
//!   crate's device trait (`&self`, 512-byte blocks, `u32` block numbers);
//! - `embedded-sdmmc` only opens volumes listed in an MBR partition table, but
//!   `mkfs.fat` on a whole disk (what issue 8's host images are) makes a "superfloppy"
//!   with the FAT boot sector in sector 0. For such a disk the adaptor shows the crate a
//!   synthetic MBR in block 0 with one partition covering the disk from block 1, and
//!   shifts every other block by one. Nothing is ever written to that synthetic block;
//! - [`FatFs`] wraps the crate's volume manager with path-based calls returning
//!   [`FsError`].
//!
//! Limits (the crate's): 8.3 names for files and directories created here (long names
//! are listed by their short alias), files up to 4 GiB - 1, 512-byte sectors. Writes
//! go through to the device a block at a time; put a
//! [`RequestQueue`](crate::blockdev::queue::RequestQueue) underneath to merge them.
//! Timestamps are a fixed date: guests have no wall clock yet.
//!
//! The disk is the guest's own (served by its backend), so it is trusted as much as the
//! backend is; a malformed volume is reported as [`FsError::Format`] where the crate
//! detects it.

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;
use core::ops::ControlFlow;

use embedded_sdmmc::{
    Block, BlockCount, BlockIdx, Mode, RawDirectory, RawVolume, TimeSource, Timestamp, VolumeIdx,
    VolumeManager,
};

use crate::blockdev::{BlockDevice, BlockError};

#[cfg(test)]
mod tests;

/// The only sector size supported (the crate's block size).
pub const SECTOR_SIZE: u32 = 512;

/// Why a filesystem operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsError {
    /// The block device failed.
    Device(BlockError),
    /// The volume is not a FAT volume this code understands.
    Format(&'static str),
    /// No such file or directory.
    NotFound,
    /// The name already exists.
    Exists,
    /// Not a valid 8.3 name or path.
    BadName,
    /// A directory where a file was expected, or the other way round.
    WrongKind,
    /// Deleting a directory that still has entries.
    NotEmpty,
    /// No free cluster left.
    DiskFull,
    /// The device is read-only.
    ReadOnly,
    /// The device or request is outside what this code supports (e.g. 4096-byte
    /// sectors, a disk too small for FAT32).
    Unsupported(&'static str),
    /// Anything else the filesystem code reported.
    Fs(String),
}

impl core::fmt::Display for FsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FsError::Device(e) => write!(f, "device: {e}"),
            FsError::Format(s) => write!(f, "bad volume: {s}"),
            FsError::NotFound => f.write_str("not found"),
            FsError::Exists => f.write_str("already exists"),
            FsError::BadName => f.write_str("bad name"),
            FsError::WrongKind => f.write_str("wrong kind (file vs directory)"),
            FsError::NotEmpty => f.write_str("directory not empty"),
            FsError::DiskFull => f.write_str("disk full"),
            FsError::ReadOnly => f.write_str("read-only"),
            FsError::Unsupported(s) => write!(f, "unsupported: {s}"),
            FsError::Fs(s) => write!(f, "filesystem: {s}"),
        }
    }
}

impl From<BlockError> for FsError {
    fn from(e: BlockError) -> Self {
        match e {
            BlockError::ReadOnly => FsError::ReadOnly,
            e => FsError::Device(e),
        }
    }
}

impl From<embedded_sdmmc::Error<BlockError>> for FsError {
    fn from(e: embedded_sdmmc::Error<BlockError>) -> Self {
        use embedded_sdmmc::Error as E;
        match e {
            E::DeviceError(d) => d.into(),
            E::FormatError(s) => FsError::Format(s),
            E::NoSuchVolume => FsError::Format("no FAT volume"),
            E::FilenameError(_) => FsError::BadName,
            E::NotFound => FsError::NotFound,
            E::FileAlreadyExists | E::DirAlreadyExists => FsError::Exists,
            E::OpenedDirAsFile | E::OpenedFileAsDir => FsError::WrongKind,
            E::DeleteNonEmptyDir => FsError::NotEmpty,
            E::DiskFull | E::NotEnoughSpace => FsError::DiskFull,
            E::ReadOnly => FsError::ReadOnly,
            E::BadBlockSize(_) => FsError::Unsupported("sector size"),
            other => FsError::Fs(alloc::format!("{other:?}")),
        }
    }
}

/// A [`BlockDevice`] as the crate's block device (see the module doc for the
/// synthetic MBR of a superfloppy).
pub struct SdmmcDevice<D: BlockDevice> {
    dev: RefCell<D>,
    /// 1 when block 0 is the synthetic MBR, 0 when the disk has its own.
    shift: u32,
    /// Device sectors visible (capped at what `u32` block numbers reach).
    sectors: u32,
}

const PARTITION_FAT32_LBA: u8 = 0x0c;
const PARTITION_FAT16_LBA: u8 = 0x0e;

impl<D: BlockDevice> SdmmcDevice<D> {
    /// Wraps `dev`; reads its sector 0 to see whether it is a superfloppy.
    pub fn new(mut dev: D) -> Result<Self, FsError> {
        if dev.sector_size() != SECTOR_SIZE {
            return Err(FsError::Unsupported("sector size other than 512"));
        }
        // Block numbers are u32 in the crate, plus one for the synthetic MBR.
        let sectors = u32::try_from(dev.sectors().min(u64::from(u32::MAX - 1)))
            .map_err(|_| FsError::Unsupported("disk size"))?;
        if sectors == 0 {
            return Err(FsError::Format("empty disk"));
        }
        let mut s0 = [0u8; 512];
        dev.read(0, &mut s0)?;
        let shift = u32::from(superfloppy_type(&s0).is_some());
        Ok(SdmmcDevice {
            dev: RefCell::new(dev),
            shift,
            sectors,
        })
    }

    /// True if the disk has no partition table (a whole-disk FAT volume).
    pub fn is_superfloppy(&self) -> bool {
        self.shift == 1
    }

    /// The device back.
    pub fn into_inner(self) -> D {
        self.dev.into_inner()
    }

    fn synthetic_mbr(&self, block: &mut Block) -> Result<(), BlockError> {
        let mut s0 = [0u8; 512];
        self.dev.borrow_mut().read(0, &mut s0)?;
        block.contents.fill(0);
        let ty = superfloppy_type(&s0).unwrap_or(PARTITION_FAT32_LBA);
        let e = &mut block.contents[446..462];
        e[4] = ty;
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        e[12..16].copy_from_slice(&self.sectors.to_le_bytes());
        block.contents[510] = 0x55;
        block.contents[511] = 0xaa;
        Ok(())
    }
}

/// The partition type a whole-disk FAT boot sector in `s0` calls for, or `None` if
/// sector 0 is not a FAT boot sector (so presumably an MBR).
fn superfloppy_type(s0: &[u8; 512]) -> Option<u8> {
    let jump = s0[0] == 0xeb || s0[0] == 0xe9;
    let signed = s0[510] == 0x55 && s0[511] == 0xaa;
    let bps = u16::from_le_bytes([s0[11], s0[12]]);
    if !(jump && signed && bps == 512) {
        return None;
    }
    if &s0[82..90] == b"FAT32   " {
        Some(PARTITION_FAT32_LBA)
    } else if &s0[54..59] == b"FAT16" || &s0[54..59] == b"FAT12" {
        Some(PARTITION_FAT16_LBA)
    } else {
        None
    }
}

impl<D: BlockDevice> embedded_sdmmc::BlockDevice for SdmmcDevice<D> {
    type Error = BlockError;

    fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), BlockError> {
        for (i, b) in blocks.iter_mut().enumerate() {
            let idx = u64::from(start.0) + i as u64;
            if self.shift == 1 && idx == 0 {
                self.synthetic_mbr(b)?;
            } else {
                let sector = idx - u64::from(self.shift);
                self.dev.borrow_mut().read(sector, &mut b.contents)?;
            }
        }
        Ok(())
    }

    fn write(&self, blocks: &[Block], start: BlockIdx) -> Result<(), BlockError> {
        if self.shift == 1 && start.0 == 0 {
            // The synthetic MBR does not exist on the disk: never write it.
            return Err(BlockError::OutOfRange);
        }
        let sector = u64::from(start.0 - self.shift);
        let mut dev = self.dev.borrow_mut();
        if blocks.len() == 1 {
            return dev.write(sector, &blocks[0].contents);
        }
        let mut buf = Vec::with_capacity(blocks.len() * 512);
        for b in blocks {
            buf.extend_from_slice(&b.contents);
        }
        dev.write(sector, &buf)
    }

    fn num_blocks(&self) -> Result<BlockCount, BlockError> {
        Ok(BlockCount(self.sectors + self.shift))
    }
}

/// The timestamp every entry gets (2026-01-01 00:00:00): guests have no wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct FixedClock;

impl TimeSource for FixedClock {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp {
            year_since_1970: 56,
            zero_indexed_month: 0,
            zero_indexed_day: 0,
            hours: 0,
            minutes: 0,
            seconds: 0,
        }
    }
}

/// One directory entry as [`FatFs::list`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntryInfo {
    /// The 8.3 name, `NAME.EXT`.
    pub name: String,
    /// Size in bytes (0 for directories).
    pub size: u32,
    /// True for a subdirectory (including `.` and `..`).
    pub is_dir: bool,
}

type Manager<D> = VolumeManager<SdmmcDevice<D>, FixedClock, 8, 4, 1>;

/// Where a mounted FAT32 volume keeps its tables, in device sectors (read from its boot
/// sector at mount, checked against the device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    /// First sector of the volume (0 for a superfloppy, the partition start otherwise).
    start: u64,
    fat_start: u64,
    fat_sectors: u64,
    fats: u64,
    /// Data clusters (valid cluster numbers are 2..clusters + 2).
    clusters: u32,
    fsinfo: u64,
}

impl Layout {
    fn read<D: BlockDevice>(dev: &mut D, superfloppy: bool) -> Result<Layout, FsError> {
        let mut b = [0u8; 512];
        let start = if superfloppy {
            0
        } else {
            dev.read(0, &mut b)?;
            u64::from(u32::from_le_bytes([b[454], b[455], b[456], b[457]]))
        };
        dev.read(start, &mut b)?;
        let le16 = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
        let le32 = |o: usize| u64::from(u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]));
        let spc = u64::from(b[13]);
        let reserved = le16(14);
        let fats = u64::from(b[16]);
        let fat_sectors = le32(36);
        let total = le32(32);
        // What FAT32 requires of its BPB (and what the crate's own arithmetic relies on:
        // it prefers the 16-bit total and FAT size when they are non-zero, and
        // subtracts without checking).
        if le16(11) != 512
            || !spc.is_power_of_two()
            || reserved == 0
            || fats == 0
            || le16(17) != 0
            || le16(19) != 0
            || le16(22) != 0
            || le16(42) != 0
            || &b[510..512] != b"\x55\xaa"
        {
            return Err(FsError::Format("not a FAT32 volume"));
        }
        let data_start = reserved + fats * fat_sectors;
        if data_start >= total {
            return Err(FsError::Format("FAT32 geometry does not fit the disk"));
        }
        let clusters = total.saturating_sub(data_start) / spc;
        if clusters < u64::from(MIN_FAT32_CLUSTERS)
            || fat_sectors * 128 < clusters + 2
            || start + total > dev.sectors()
        {
            return Err(FsError::Format("FAT32 geometry does not fit the disk"));
        }
        Ok(Layout {
            start,
            fat_start: start + reserved,
            fat_sectors,
            fats,
            clusters: clusters as u32,
            fsinfo: start + le16(48),
        })
    }

    /// Marks the cluster chain from `first` free in every FAT; returns how many were
    /// freed. Stops at the end of the chain, a free or out-of-range entry, or after
    /// `clusters` steps (a looping chain), so a damaged FAT cannot make it run forever.
    fn free_chain<D: BlockDevice>(&self, dev: &mut D, first: u32) -> Result<u32, FsError> {
        let mut freed = 0;
        let mut c = first;
        let mut buf = [0u8; 512];
        while (2..self.clusters + 2).contains(&c) && freed < self.clusters {
            let off = u64::from(c) * 4;
            let sector = off / 512;
            let at = (off % 512) as usize;
            dev.read(self.fat_start + sector, &mut buf)?;
            let next =
                u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) & 0x0fff_ffff;
            if next == 0 {
                break;
            }
            // Keep the top four bits (reserved) as they are.
            let top = buf[at + 3] & 0xf0;
            buf[at..at + 4].copy_from_slice(&[0, 0, 0, top]);
            for f in 0..self.fats {
                dev.write(self.fat_start + f * self.fat_sectors + sector, &buf)?;
            }
            freed += 1;
            c = next;
        }
        Ok(freed)
    }

    /// Counts free clusters in the first FAT and writes the count (and the first free
    /// cluster as the next-free hint) into the FSInfo sector.
    fn rewrite_fsinfo<D: BlockDevice>(&self, dev: &mut D) -> Result<(), FsError> {
        let mut free = 0u32;
        let mut first_free = u32::MAX;
        let mut buf = alloc::vec![0u8; 64 * 512];
        let last = u64::from(self.clusters) + 2;
        let mut s = 0;
        while s < self.fat_sectors && s * 128 < last {
            let n = (self.fat_sectors - s).min(64);
            let chunk = &mut buf[..n as usize * 512];
            dev.read(self.fat_start + s, chunk)?;
            for (i, e) in chunk.chunks_exact(4).enumerate() {
                let c = s * 128 + i as u64;
                if (2..last).contains(&c)
                    && u32::from_le_bytes([e[0], e[1], e[2], e[3]]) & 0x0fff_ffff == 0
                {
                    free += 1;
                    if first_free == u32::MAX {
                        first_free = c as u32;
                    }
                }
            }
            s += n;
        }
        let mut fi = [0u8; 512];
        dev.read(self.fsinfo, &mut fi)?;
        if fi[0..4] != 0x4161_5252u32.to_le_bytes() || fi[484..488] != 0x6141_7272u32.to_le_bytes()
        {
            // No (valid) FSInfo sector: nothing to keep up to date.
            return Ok(());
        }
        fi[488..492].copy_from_slice(&free.to_le_bytes());
        fi[492..496].copy_from_slice(&first_free.to_le_bytes());
        dev.write(self.fsinfo, &fi)?;
        Ok(())
    }
}

/// A mounted FAT32 volume (the first partition, or the whole disk).
///
/// Two gaps of `embedded-sdmmc` 0.10 are closed here, because `fsck.fat` reports them:
/// deleting an entry does not free its clusters (so [`FatFs::delete`] frees the chain
/// itself, with the volume closed so that the crate's block cache cannot hold a stale
/// FAT sector), and its FSInfo free count drifts (so [`FatFs::unmount`] recounts it).
pub struct FatFs<D: BlockDevice> {
    /// `None` only if re-opening the volume after a delete failed: every call then
    /// reports [`FsError::Device`]`(`[`BlockError::Disconnected`]`)`.
    state: Option<(Manager<D>, RawVolume)>,
    layout: Layout,
}

/// Splits `a/b/c` (leading `/` allowed) into its components; empty components refused.
fn components(path: &str) -> Result<Vec<&str>, FsError> {
    let p = path.strip_prefix('/').unwrap_or(path);
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = p.split('/').collect();
    if parts.iter().any(|c| c.is_empty()) {
        return Err(FsError::BadName);
    }
    Ok(parts)
}

impl<D: BlockDevice> FatFs<D> {
    /// Mounts the FAT32 volume on `dev` (a whole-disk volume, or the first partition).
    pub fn mount(dev: D) -> Result<Self, FsError> {
        let sd = SdmmcDevice::new(dev)?;
        let superfloppy = sd.is_superfloppy();
        let layout = Layout::read(&mut *sd.dev.borrow_mut(), superfloppy)?;
        let vm = VolumeManager::new_with_limits(sd, FixedClock, 0);
        let vol = vm.open_raw_volume(VolumeIdx(0))?;
        Ok(FatFs {
            state: Some((vm, vol)),
            layout,
        })
    }

    fn parts(&mut self) -> Result<(&mut Manager<D>, RawVolume), FsError> {
        match &mut self.state {
            Some((vm, vol)) => Ok((vm, *vol)),
            None => Err(FsError::Device(BlockError::Disconnected)),
        }
    }

    /// Opens the directory `components` names (the root for none). The caller closes it.
    fn open_dir(
        vm: &mut Manager<D>,
        vol: RawVolume,
        comps: &[&str],
    ) -> Result<RawDirectory, FsError> {
        let mut dir = vm.open_root_dir(vol)?;
        for c in comps {
            let next = vm.open_dir(dir, *c);
            vm.close_dir(dir)?;
            dir = next?;
        }
        Ok(dir)
    }

    /// Runs `f` on the parent directory of `path` and its last component.
    fn in_parent<R>(
        &mut self,
        path: &str,
        f: impl FnOnce(&mut Manager<D>, RawDirectory, &str) -> Result<R, FsError>,
    ) -> Result<R, FsError> {
        let comps = components(path)?;
        let (name, parent) = comps.split_last().ok_or(FsError::BadName)?;
        let (vm, vol) = self.parts()?;
        let dir = Self::open_dir(vm, vol, parent)?;
        let r = f(vm, dir, name);
        let closed = vm.close_dir(dir);
        let r = r?;
        closed?;
        Ok(r)
    }

    fn put(&mut self, path: &str, data: &[u8], mode: Mode) -> Result<(), FsError> {
        self.in_parent(path, |vm, dir, name| {
            let file = vm.open_file_in_dir(dir, name, mode)?;
            let w = vm.write(file, data);
            let c = vm.close_file(file);
            w?;
            c?;
            Ok(())
        })
    }

    /// Creates `path` holding `data`; fails with [`FsError::Exists`] if it exists.
    pub fn create_file(&mut self, path: &str, data: &[u8]) -> Result<(), FsError> {
        self.put(path, data, Mode::ReadWriteCreate)
    }

    /// Creates or replaces `path` with `data`.
    pub fn write_file(&mut self, path: &str, data: &[u8]) -> Result<(), FsError> {
        self.put(path, data, Mode::ReadWriteCreateOrTruncate)
    }

    /// Appends `data` to `path`, creating it if needed.
    pub fn append_file(&mut self, path: &str, data: &[u8]) -> Result<(), FsError> {
        self.put(path, data, Mode::ReadWriteCreateOrAppend)
    }

    /// The whole content of `path`.
    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>, FsError> {
        self.in_parent(path, |vm, dir, name| {
            let file = vm.open_file_in_dir(dir, name, Mode::ReadOnly)?;
            let mut out = Vec::new();
            let r = (|| -> Result<(), FsError> {
                out.reserve(vm.file_length(file)? as usize);
                let mut buf = [0u8; 4096];
                while !vm.file_eof(file)? {
                    let n = vm.read(file, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                Ok(())
            })();
            let c = vm.close_file(file);
            r?;
            c?;
            Ok(out)
        })
    }

    /// The size of the file `path`, in bytes.
    pub fn file_size(&mut self, path: &str) -> Result<u32, FsError> {
        self.in_parent(path, |vm, dir, name| {
            let e = vm.find_directory_entry(dir, name)?;
            if e.attributes.is_directory() {
                return Err(FsError::WrongKind);
            }
            Ok(e.size)
        })
    }

    /// Deletes the file (or empty directory) `path` and frees its clusters.
    pub fn delete(&mut self, path: &str) -> Result<(), FsError> {
        let cluster = self.in_parent(path, |vm, dir, name| {
            let e = vm.find_directory_entry(dir, name)?;
            // The crate keeps cluster numbers private: read them from the on-disk entry
            // (the crate writes through, so the device holds what its cache holds).
            let off = e.entry_offset as usize;
            if off > 512 - 32 {
                return Err(FsError::Format("directory entry offset"));
            }
            let mut b = Block::new();
            vm.device(|sd| {
                embedded_sdmmc::BlockDevice::read(sd, core::slice::from_mut(&mut b), e.entry_block)
            })?;
            let d = &b.contents[off..off + 32];
            let cluster = u32::from(u16::from_le_bytes([d[20], d[21]])) << 16
                | u32::from(u16::from_le_bytes([d[26], d[27]]));
            vm.delete_entry_in_dir(dir, name)?;
            Ok(cluster)
        })?;
        if cluster < 2 {
            return Ok(());
        }
        // Close the volume so the crate's cached block and cluster hints are dropped,
        // free the chain on the device, open the volume again.
        let (vm, vol) = self
            .state
            .take()
            .ok_or(FsError::Device(BlockError::Disconnected))?;
        vm.close_volume(vol)?;
        let (sd, _) = vm.free();
        let freed = self.layout.free_chain(&mut *sd.dev.borrow_mut(), cluster);
        let vm = VolumeManager::new_with_limits(sd, FixedClock, 0);
        let vol = vm.open_raw_volume(VolumeIdx(0))?;
        self.state = Some((vm, vol));
        freed.map(|_| ())
    }

    /// Makes the directory `path` (its parent must exist).
    pub fn mkdir(&mut self, path: &str) -> Result<(), FsError> {
        self.in_parent(path, |vm, dir, name| {
            vm.make_dir_in_dir(dir, name)?;
            Ok(())
        })
    }

    /// The entries of directory `path` (`""` or `"/"` for the root), without the
    /// volume label.
    pub fn list(&mut self, path: &str) -> Result<Vec<DirEntryInfo>, FsError> {
        let comps = components(path)?;
        let (vm, vol) = self.parts()?;
        let dir = Self::open_dir(vm, vol, &comps)?;
        let mut out = Vec::new();
        let r = vm.iterate_dir(dir, |e| {
            if !e.attributes.is_volume() && !e.attributes.is_lfn() {
                out.push(DirEntryInfo {
                    name: e.name.to_string(),
                    size: e.size,
                    is_dir: e.attributes.is_directory(),
                });
            }
            ControlFlow::Continue(())
        });
        let c = vm.close_dir(dir);
        r?;
        c?;
        Ok(out)
    }

    /// Closes the volume, writes the FSInfo sector's free count (recounted from the
    /// FAT), flushes the device and returns it.
    pub fn unmount(mut self) -> Result<D, FsError> {
        let (vm, vol) = self
            .state
            .take()
            .ok_or(FsError::Device(BlockError::Disconnected))?;
        vm.close_volume(vol)?;
        let (sd, _) = vm.free();
        let mut dev = sd.into_inner();
        if !dev.readonly() {
            self.layout.rewrite_fsinfo(&mut dev)?;
        }
        dev.flush()?;
        Ok(dev)
    }
}

/// What [`format_fat32`] made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FatGeometry {
    /// Sectors per cluster.
    pub sectors_per_cluster: u32,
    /// Sectors per FAT (there are two).
    pub fat_sectors: u32,
    /// Data clusters.
    pub clusters: u32,
    /// First sector of the data area (cluster 2, the root directory).
    pub data_start: u32,
}

/// Reserved sectors before the first FAT (boot sector, FSInfo, backups at 6 and 7).
const RESERVED: u32 = 32;
/// The fewest clusters a FAT32 volume may have (fewer makes it FAT16 by definition).
const MIN_FAT32_CLUSTERS: u32 = 65525;

/// Computes a FAT32 layout for `sectors` 512-byte sectors (Microsoft's cluster-size
/// table and FAT-size formula, then checked).
pub fn fat32_geometry(sectors: u64) -> Result<FatGeometry, FsError> {
    let total = u32::try_from(sectors).map_err(|_| FsError::Unsupported("disk over 2 TiB"))?;
    let spc: u32 = match total {
        0..=532_480 => 1,
        532_481..=16_777_216 => 8,
        16_777_217..=33_554_432 => 16,
        33_554_433..=67_108_864 => 32,
        _ => 64,
    };
    let avail = total.saturating_sub(RESERVED);
    let per = (256 * spc + 2) / 2;
    let mut fat = avail.div_ceil(per);
    // The FAT must hold an entry for every cluster plus the two reserved ones.
    loop {
        let data = avail
            .checked_sub(2 * fat)
            .ok_or(FsError::Unsupported("disk too small for FAT32"))?;
        let clusters = data / spc;
        if fat * 128 >= clusters + 2 {
            if clusters < MIN_FAT32_CLUSTERS {
                return Err(FsError::Unsupported("disk too small for FAT32"));
            }
            return Ok(FatGeometry {
                sectors_per_cluster: spc,
                fat_sectors: fat,
                clusters,
                data_start: RESERVED + 2 * fat,
            });
        }
        fat += 1;
    }
}

/// Writes an empty FAT32 volume over the whole of `dev` (no partition table, like
/// `mkfs.fat -F 32 DISK`), with volume label `label` (up to 11 characters: A-Z, 0-9,
/// space, `_`, `-`) and serial number `volume_id`, then flushes. Needs at least about
/// 33 MiB (FAT32's minimum of 65525 clusters).
pub fn format_fat32<D: BlockDevice>(
    dev: &mut D,
    label: &str,
    volume_id: u32,
) -> Result<FatGeometry, FsError> {
    if dev.sector_size() != SECTOR_SIZE {
        return Err(FsError::Unsupported("sector size other than 512"));
    }
    if dev.readonly() {
        return Err(FsError::ReadOnly);
    }
    if label.len() > 11
        || !label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b" _-".contains(&b))
    {
        return Err(FsError::BadName);
    }
    let g = fat32_geometry(dev.sectors())?;
    let total = dev.sectors() as u32;
    let mut label11 = [b' '; 11];
    if label.is_empty() {
        label11.copy_from_slice(b"NO NAME    ");
    } else {
        label11[..label.len()].copy_from_slice(label.as_bytes());
    }

    let mut boot = [0u8; 512];
    boot[0..3].copy_from_slice(&[0xeb, 0x58, 0x90]);
    boot[3..11].copy_from_slice(b"PVH-RS  ");
    boot[11..13].copy_from_slice(&512u16.to_le_bytes());
    boot[13] = g.sectors_per_cluster as u8;
    boot[14..16].copy_from_slice(&(RESERVED as u16).to_le_bytes());
    boot[16] = 2; // FATs
    boot[21] = 0xf8; // media: fixed disk
    boot[24..26].copy_from_slice(&32u16.to_le_bytes()); // sectors per track
    boot[26..28].copy_from_slice(&64u16.to_le_bytes()); // heads
    boot[32..36].copy_from_slice(&total.to_le_bytes());
    boot[36..40].copy_from_slice(&g.fat_sectors.to_le_bytes());
    boot[44..48].copy_from_slice(&2u32.to_le_bytes()); // root directory cluster
    boot[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
    boot[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
    boot[64] = 0x80; // drive number
    boot[66] = 0x29; // extended boot signature: the next three fields are valid
    boot[67..71].copy_from_slice(&volume_id.to_le_bytes());
    boot[71..82].copy_from_slice(&label11);
    boot[82..90].copy_from_slice(b"FAT32   ");
    boot[510] = 0x55;
    boot[511] = 0xaa;

    let mut fsinfo = [0u8; 512];
    fsinfo[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    fsinfo[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    // Free clusters: all but the root directory's; next free: the one after it.
    fsinfo[488..492].copy_from_slice(&(g.clusters - 1).to_le_bytes());
    fsinfo[492..496].copy_from_slice(&3u32.to_le_bytes());
    fsinfo[508..512].copy_from_slice(&0xaa55_0000u32.to_le_bytes());

    // Zero the reserved area, both FATs and the root directory's cluster first.
    let zero_end = u64::from(g.data_start + g.sectors_per_cluster);
    let zeros = alloc::vec![0u8; 64 * 512];
    let mut s = 0u64;
    while s < zero_end {
        let n = (zero_end - s).min(64);
        dev.write(s, &zeros[..n as usize * 512])?;
        s += n;
    }
    dev.write(0, &boot)?;
    dev.write(1, &fsinfo)?;
    dev.write(6, &boot)?;
    dev.write(7, &fsinfo)?;

    let mut fat0 = [0u8; 512];
    fat0[0..4].copy_from_slice(&0x0fff_fff8u32.to_le_bytes()); // media descriptor entry
    fat0[4..8].copy_from_slice(&0x0fff_ffffu32.to_le_bytes()); // clean, no errors
    fat0[8..12].copy_from_slice(&0x0fff_ffffu32.to_le_bytes()); // root: end of chain
    dev.write(u64::from(RESERVED), &fat0)?;
    dev.write(u64::from(RESERVED + g.fat_sectors), &fat0)?;

    if label11 != *b"NO NAME    " {
        let mut root = [0u8; 512];
        root[0..11].copy_from_slice(&label11);
        root[11] = 0x08; // volume label
                         // The fixed date, as the crate's clock gives it to every other entry.
        let date: u16 = ((2026 - 1980) << 9) | (1 << 5) | 1;
        root[22..24].copy_from_slice(&0u16.to_le_bytes());
        root[24..26].copy_from_slice(&date.to_le_bytes());
        dev.write(u64::from(g.data_start), &root)?;
    }
    dev.flush()?;
    Ok(g)
}
