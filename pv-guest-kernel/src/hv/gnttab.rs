//! Typed wrappers of `grant_table_op` (hypercall 20, [`abi::grant_table`]).
//!
//! Each operation takes an array of its `#[repr(C)]` argument structures; the
//! hypervisor writes each element's `status` (`GNTST_*`) and outputs back. The typed
//! forms here do one element and turn the status into an [`Errno`] with
//! [`gntst_result`]. Mapping and unmapping change what a virtual address maps, so they
//! are `unsafe`; the raw form [`Path::grant_table_op_raw`] is for hostile tests.

use abi::grant_table::{
    gntst_result, GnttabCopy, GnttabMapGrantRef, GnttabQuerySize, GnttabSetupTable,
    GnttabUnmapGrantRef, GNTMAP_HOST_MAP, GNTMAP_READONLY, GNTTABOP_COPY, GNTTABOP_MAP_GRANT_REF,
    GNTTABOP_QUERY_SIZE, GNTTABOP_SETUP_TABLE, GNTTABOP_UNMAP_GRANT_REF,
};
use abi::{DomId, Errno, HypercallNr, Mfn};

use super::{decode_unit, default_path, Path};

/// Frames a grant table may have at most here (the hypervisor's limit).
pub const MAX_GRANT_FRAMES: usize = 4;

/// The argument structures: plain integers, every bit pattern valid.
trait GnttabArg: Copy {}
impl GnttabArg for GnttabMapGrantRef {}
impl GnttabArg for GnttabUnmapGrantRef {}
impl GnttabArg for GnttabSetupTable {}
impl GnttabArg for GnttabQuerySize {}
impl GnttabArg for GnttabCopy {}

impl Path {
    /// `grant_table_op(cmd, args, count)` with raw arguments; the raw result.
    ///
    /// # Safety
    /// See [`Path::call`]: the hypervisor reads and writes `count` elements at `args`,
    /// and a map or unmap changes the mapping at each element's `host_addr`.
    pub unsafe fn grant_table_op_raw(self, cmd: u64, args: u64, count: u64) -> i64 {
        // SAFETY: forwarded from this function's contract.
        unsafe { self.call(HypercallNr::GrantTableOp as u64, [cmd, args, count, 0, 0]) }
    }

    /// One element of `cmd`; the hypercall's own result (not the element's status).
    ///
    /// # Safety
    /// For maps and unmaps: as [`Path::grant_table_op_raw`] for `arg.host_addr`.
    unsafe fn gnttab_one<T: GnttabArg>(self, cmd: u64, arg: &mut T) -> Result<(), Errno> {
        let ptr = arg as *mut T as u64;
        // SAFETY: the hypervisor reads and writes one `T` at `ptr`, a live exclusive
        // borrow of a plain-integer structure; the rest is this function's contract.
        let ret = unsafe { self.grant_table_op_raw(cmd, ptr, 1) };
        // SAFETY: `arg` is live; volatile so the hypervisor's writes are seen.
        *arg = unsafe { (arg as *const T).read_volatile() };
        decode_unit(ret)
    }

    /// `GNTTABOP_SETUP_TABLE` for this domain: grows its table to `frames.len()` frames
    /// (at most [`MAX_GRANT_FRAMES`]) and writes their machine frames to `frames`.
    pub fn gnttab_setup_table(self, frames: &mut [u64]) -> Result<(), Errno> {
        if frames.len() > MAX_GRANT_FRAMES {
            return Err(Errno::E2BIG);
        }
        let mut op = GnttabSetupTable {
            dom: DomId::SELF.0,
            nr_frames: frames.len() as u32,
            frame_list: frames.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: the hypervisor writes `nr_frames` u64s to `frame_list`, the live
        // exclusive slice `frames`; no mapping changes.
        unsafe { self.gnttab_one(GNTTABOP_SETUP_TABLE, &mut op) }?;
        gntst_result(op.status)
    }

    /// `GNTTABOP_QUERY_SIZE` for this domain: (frames in use, most frames allowed).
    pub fn gnttab_query_size(self) -> Result<(u32, u32), Errno> {
        let mut op = GnttabQuerySize {
            dom: DomId::SELF.0,
            ..Default::default()
        };
        // SAFETY: reads and writes `op` only.
        unsafe { self.gnttab_one(GNTTABOP_QUERY_SIZE, &mut op) }?;
        gntst_result(op.status)?;
        Ok((op.nr_frames, op.max_nr_frames))
    }

    /// `GNTTABOP_MAP_GRANT_REF`: maps `granter`'s grant `gref` at `host_addr` (whose L1
    /// entry must exist and be empty). Returns the handle for the unmap.
    ///
    /// # Safety
    /// Nothing may rely on what `host_addr` maps (it must map nothing).
    pub unsafe fn gnttab_map(
        self,
        host_addr: u64,
        granter: DomId,
        gref: u32,
        readonly: bool,
    ) -> Result<u32, Errno> {
        let mut op = GnttabMapGrantRef {
            host_addr,
            flags: GNTMAP_HOST_MAP | if readonly { GNTMAP_READONLY } else { 0 },
            gref,
            dom: granter.0,
            ..Default::default()
        };
        // SAFETY: forwarded from this function's contract.
        unsafe { self.gnttab_one(GNTTABOP_MAP_GRANT_REF, &mut op) }?;
        gntst_result(op.status)?;
        Ok(op.handle)
    }

    /// `GNTTABOP_UNMAP_GRANT_REF` of mapping `handle` at `host_addr`.
    ///
    /// # Safety
    /// Nothing may use the page at `host_addr` any more.
    pub unsafe fn gnttab_unmap(self, host_addr: u64, handle: u32) -> Result<(), Errno> {
        let mut op = GnttabUnmapGrantRef {
            host_addr,
            handle,
            ..Default::default()
        };
        // SAFETY: forwarded from this function's contract.
        unsafe { self.gnttab_one(GNTTABOP_UNMAP_GRANT_REF, &mut op) }?;
        gntst_result(op.status)
    }

    /// `GNTTABOP_COPY` of one element (`op.status` is written back).
    pub fn gnttab_copy(self, op: &mut GnttabCopy) -> Result<(), Errno> {
        // SAFETY: a copy goes through the hypervisor's checked frame access and changes
        // no mapping; it writes only `op` (and granted frames, never Rust-owned memory
        // the caller did not grant or name by frame).
        unsafe { self.gnttab_one(GNTTABOP_COPY, op) }?;
        gntst_result(op.status)
    }
}

/// [`Path::grant_table_op_raw`] on the default path.
///
/// # Safety
/// See [`Path::grant_table_op_raw`].
pub unsafe fn grant_table_op_raw(cmd: u64, args: u64, count: u64) -> i64 {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().grant_table_op_raw(cmd, args, count) }
}

/// [`Path::gnttab_setup_table`] on the default path.
pub fn gnttab_setup_table(frames: &mut [u64]) -> Result<(), Errno> {
    default_path().gnttab_setup_table(frames)
}

/// [`Path::gnttab_query_size`] on the default path.
pub fn gnttab_query_size() -> Result<(u32, u32), Errno> {
    default_path().gnttab_query_size()
}

/// [`Path::gnttab_map`] on the default path.
///
/// # Safety
/// See [`Path::gnttab_map`].
pub unsafe fn gnttab_map(
    host_addr: u64,
    granter: DomId,
    gref: u32,
    readonly: bool,
) -> Result<u32, Errno> {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().gnttab_map(host_addr, granter, gref, readonly) }
}

/// [`Path::gnttab_unmap`] on the default path.
///
/// # Safety
/// See [`Path::gnttab_unmap`].
pub unsafe fn gnttab_unmap(host_addr: u64, handle: u32) -> Result<(), Errno> {
    // SAFETY: forwarded from this function's contract.
    unsafe { default_path().gnttab_unmap(host_addr, handle) }
}

/// [`Path::gnttab_copy`] on the default path.
pub fn gnttab_copy(op: &mut GnttabCopy) -> Result<(), Errno> {
    default_path().gnttab_copy(op)
}

/// A [`GnttabCopy`] from this domain's frame `src` (at `src_off`) into `granter`'s grant
/// `gref` (at `dst_off`), `len` bytes.
pub fn copy_to_grant(
    src: Mfn,
    src_off: u16,
    granter: DomId,
    gref: u32,
    dst_off: u16,
    len: u16,
) -> GnttabCopy {
    use abi::grant_table::{GnttabCopyPtr, GNTCOPY_DEST_GREF};
    GnttabCopy {
        source: GnttabCopyPtr {
            u: src.0,
            domid: DomId::SELF.0,
            offset: src_off,
            _pad: 0,
        },
        dest: GnttabCopyPtr {
            u: u64::from(gref),
            domid: granter.0,
            offset: dst_off,
            _pad: 0,
        },
        len,
        flags: GNTCOPY_DEST_GREF,
        status: 0,
        _pad: 0,
    }
}
