//! Grant tables (Xen's v1 ABI): how a domain lets another domain map or copy one of its
//! frames, and the `grant_table_op(cmd, args, count)` (hypercall 20) argument structures.
//!
//! A domain's grant table is an array of 8-byte [`GrantEntryV1`] in frames it owns and
//! maps read-write (obtained with [`GNTTABOP_SETUP_TABLE`]). To grant frame `F` to domain
//! `D`: write `domid = D`, `frame = F`, then (after a write barrier) `flags =
//! GTF_permit_access [| GTF_readonly]`. While the grantee has it mapped or is copying, the
//! hypervisor keeps `GTF_reading`/`GTF_writing` set; revoking = a compare-and-swap of
//! `flags` to 0 that succeeds only while both are clear. The hypervisor side is
//! `hv-core/src/grant.rs`. (The hypercall itself is wired up by the split-driver work.)

/// Entry type bits (`flags & 3`): not a grant.
pub const GTF_INVALID: u16 = 0;
/// Entry type: `domid` may map or copy `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `[GUEST]` the grantee may only read.
pub const GTF_READONLY: u16 = 1 << 2;
/// `[HV]` the frame is mapped or being copied for reading.
pub const GTF_READING: u16 = 1 << 3;
/// `[HV]` the frame is mapped or being copied for writing.
pub const GTF_WRITING: u16 = 1 << 4;

/// One v1 grant entry (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantEntryV1 {
    /// `[GUEST]` type and permission bits; `[HV]` the in-use bits.
    pub flags: u16,
    /// `[GUEST]` the domain allowed to use it.
    pub domid: u16,
    /// `[GUEST]` the frame granted (a machine frame for our non-translated guests).
    pub frame: u32,
}
const _: () = assert!(core::mem::size_of::<GrantEntryV1>() == 8);

/// Map a grant ([`GnttabMapGrantRef`]).
pub const GNTTABOP_MAP_GRANT_REF: u64 = 0;
/// Unmap a grant ([`GnttabUnmapGrantRef`]).
pub const GNTTABOP_UNMAP_GRANT_REF: u64 = 1;
/// Allocate the caller's table frames ([`GnttabSetupTable`]).
pub const GNTTABOP_SETUP_TABLE: u64 = 2;
/// Copy between granted frames ([`GnttabCopy`]).
pub const GNTTABOP_COPY: u64 = 5;
/// Query the table size ([`GnttabQuerySize`]).
pub const GNTTABOP_QUERY_SIZE: u64 = 6;

/// `map_grant_ref` flag: map for CPU access at `host_addr`.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `map_grant_ref` flag: read-only mapping.
pub const GNTMAP_READONLY: u32 = 1 << 2;

/// `GNTTABOP_MAP_GRANT_REF` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabMapGrantRef {
    /// `[GUEST]` virtual address to map at (its L1 entry must exist and be empty).
    pub host_addr: u64,
    /// `[GUEST]` `GNTMAP_*`.
    pub flags: u32,
    /// `[GUEST]` the grant reference.
    pub gref: u32,
    /// `[GUEST]` the granting domain.
    pub dom: u16,
    /// `[HV]` `GNTST_*`.
    pub status: i16,
    /// `[HV]` handle for unmapping.
    pub handle: u32,
    /// `[HV]` machine address of the frame (device mappings).
    pub dev_bus_addr: u64,
}
const _: () = assert!(core::mem::size_of::<GnttabMapGrantRef>() == 32);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, status) == 18);
const _: () = assert!(core::mem::offset_of!(GnttabMapGrantRef, handle) == 20);

/// `GNTTABOP_UNMAP_GRANT_REF` (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabUnmapGrantRef {
    /// `[GUEST]` where it was mapped.
    pub host_addr: u64,
    /// `[GUEST]` device address (unused).
    pub dev_bus_addr: u64,
    /// `[GUEST]` the handle from the map.
    pub handle: u32,
    /// `[HV]` `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<GnttabUnmapGrantRef>() == 24);

/// `GNTTABOP_SETUP_TABLE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabSetupTable {
    /// `[GUEST]` `DOMID_SELF`.
    pub dom: u16,
    /// Padding.
    pub _pad: u16,
    /// `[GUEST]` frames wanted.
    pub nr_frames: u32,
    /// `[HV]` `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad2: [u16; 3],
    /// `[GUEST]` pointer to `nr_frames` u64s receiving the table's machine frames.
    pub frame_list: u64,
}
const _: () = assert!(core::mem::size_of::<GnttabSetupTable>() == 24);

/// `GNTTABOP_QUERY_SIZE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabQuerySize {
    /// `[GUEST]` `DOMID_SELF`.
    pub dom: u16,
    /// Padding.
    pub _pad: u16,
    /// `[HV]` frames in use.
    pub nr_frames: u32,
    /// `[HV]` most frames allowed.
    pub max_nr_frames: u32,
    /// `[HV]` `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<GnttabQuerySize>() == 16);

/// One side of a [`GnttabCopy`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabCopyPtr {
    /// `[GUEST]` a grant reference (with `GNTCOPY_*_gref`) or a machine frame.
    pub u: u64,
    /// `[GUEST]` the domain.
    pub domid: u16,
    /// `[GUEST]` offset in the frame.
    pub offset: u16,
    /// Padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<GnttabCopyPtr>() == 16);

/// `GnttabCopy::flags`: `source.u` is a grant reference.
pub const GNTCOPY_SOURCE_GREF: u16 = 1;
/// `GnttabCopy::flags`: `dest.u` is a grant reference.
pub const GNTCOPY_DEST_GREF: u16 = 2;

/// `GNTTABOP_COPY` (40 bytes): copy `len` bytes, never crossing a page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GnttabCopy {
    /// `[GUEST]` source.
    pub source: GnttabCopyPtr,
    /// `[GUEST]` destination.
    pub dest: GnttabCopyPtr,
    /// `[GUEST]` bytes.
    pub len: u16,
    /// `[GUEST]` `GNTCOPY_*`.
    pub flags: u16,
    /// `[HV]` `GNTST_*`.
    pub status: i16,
    /// Padding.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<GnttabCopy>() == 40);

/// Grant ref of the console ring page the domain builder grants to dom0 (Xen's
/// `GNTTAB_RESERVED_CONSOLE`).
pub const GNTTAB_RESERVED_CONSOLE: u32 = 0;
/// Grant ref of the xenstore ring page the domain builder grants to dom0 (Xen's
/// `GNTTAB_RESERVED_XENSTORE`).
pub const GNTTAB_RESERVED_XENSTORE: u32 = 1;
/// Refs below this are reserved for the toolstack (Xen's `GNTTAB_NR_RESERVED_ENTRIES`):
/// a guest's own allocator starts here.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
/// v1 entries per table frame.
pub const GRANT_ENTRIES_PER_FRAME: u32 = 512;

/// `GNTST_okay`.
pub const GNTST_OKAY: i16 = 0;
/// `GNTST_general_error`.
pub const GNTST_GENERAL_ERROR: i16 = -1;
/// `GNTST_bad_domain`.
pub const GNTST_BAD_DOMAIN: i16 = -2;
/// `GNTST_bad_gntref`.
pub const GNTST_BAD_GNTREF: i16 = -3;
/// `GNTST_bad_handle`.
pub const GNTST_BAD_HANDLE: i16 = -4;
/// `GNTST_bad_virt_addr`.
pub const GNTST_BAD_VIRT_ADDR: i16 = -5;
/// `GNTST_permission_denied`.
pub const GNTST_PERMISSION_DENIED: i16 = -8;
/// `GNTST_bad_page`.
pub const GNTST_BAD_PAGE: i16 = -9;
/// `GNTST_bad_copy_arg`.
pub const GNTST_BAD_COPY_ARG: i16 = -10;
/// `GNTST_eagain`.
pub const GNTST_EAGAIN: i16 = -12;
/// `GNTST_no_space` (out of maptrack handles).
pub const GNTST_NO_SPACE: i16 = -13;

/// The errno a kernel reports for a failed grant operation's `GNTST_*` status (`Ok` for
/// `GNTST_okay`): bad domain `ESRCH`, bad ref `EINVAL`, bad handle `EBADF`, bad virtual
/// address `EFAULT`, permission denied / bad page `EPERM`, no space `ENOSPC`, eagain
/// `EAGAIN`, anything else `EIO`.
pub const fn gntst_result(status: i16) -> Result<(), crate::Errno> {
    use crate::Errno;
    Err(match status {
        GNTST_OKAY => return Ok(()),
        GNTST_BAD_DOMAIN => Errno::ESRCH,
        GNTST_BAD_GNTREF | GNTST_BAD_COPY_ARG => Errno::EINVAL,
        GNTST_BAD_HANDLE => Errno::EBADF,
        GNTST_BAD_VIRT_ADDR => Errno::EFAULT,
        GNTST_PERMISSION_DENIED | GNTST_BAD_PAGE => Errno::EPERM,
        GNTST_NO_SPACE => Errno::ENOSPC,
        GNTST_EAGAIN => Errno::EAGAIN,
        _ => Errno::EIO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Errno;

    #[test]
    fn status_to_errno() {
        assert_eq!(gntst_result(GNTST_OKAY), Ok(()));
        assert_eq!(gntst_result(GNTST_BAD_DOMAIN), Err(Errno::ESRCH));
        assert_eq!(gntst_result(GNTST_BAD_GNTREF), Err(Errno::EINVAL));
        assert_eq!(gntst_result(GNTST_PERMISSION_DENIED), Err(Errno::EPERM));
        assert_eq!(gntst_result(GNTST_GENERAL_ERROR), Err(Errno::EIO));
        assert_eq!(gntst_result(i16::MIN), Err(Errno::EIO));
        assert_eq!(gntst_result(5), Err(Errno::EIO));
    }
}
